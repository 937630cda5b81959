//! Runs the HTTP calls plugins dispatch with `proxy_http_call`. The `upstream` argument
//! names a configured upstream (Envoy's cluster semantics), so plugins stay portable and can
//! reach only what the config lists; the endpoint is chosen by that upstream's balancer.
//! Calls travel on the upstream's pooled callout client ([`super::callout_client`]): kept-alive
//! connections, TLS as the upstream configures it, HTTP/2 on `protocol: http2` upstreams.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use super::callout_client::{self, ExchangeError};
use super::host::{HttpCallResponse, PendingCall};
use crate::upstream::UpstreamPool;

/// Largest http_call response body handed to a plugin.
const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;
/// Used when a plugin passes a zero timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `call`; a failure of any kind is an answer with no headers, as the ABI specifies.
pub async fn execute(call: &PendingCall, upstreams: &[Arc<UpstreamPool>]) -> HttpCallResponse {
    match run(call, upstreams).await {
        Ok(response) => response,
        Err(reason) => {
            log::debug!(
                "http_call {} to upstream \"{}\" failed: {reason}",
                call.token,
                call.upstream
            );
            HttpCallResponse::default()
        }
    }
}

async fn run(
    call: &PendingCall,
    upstreams: &[Arc<UpstreamPool>],
) -> Result<HttpCallResponse, String> {
    let pool = upstreams
        .iter()
        .find(|pool| *pool.name == *call.upstream)
        .ok_or_else(|| "no such upstream".to_string())?;
    let client = pool.callouts.for_http_call(&pool.plan)?;
    let target = callout_client::choose(pool)?;
    let timeout = if call.timeout.is_zero() {
        DEFAULT_TIMEOUT
    } else {
        call.timeout
    };
    let request = build_request(call, &target.origin)?;
    let answer = callout_client::exchange(client, target, request, MAX_RESPONSE_BODY, timeout)
        .await
        .map_err(|error| match error {
            ExchangeError::TimedOut => format!("timed out after {timeout:?}"),
            ExchangeError::Failed(reason) => reason,
        })?;
    let status = answer.parts.status.as_u16();
    let mut headers = Vec::with_capacity(answer.parts.headers.len() + 1);
    headers.push((":status".to_string(), Bytes::from(status.to_string())));
    headers.extend(pairs_of(&answer.parts.headers));
    Ok(HttpCallResponse {
        headers,
        body: answer.body,
        trailers: answer.trailers.as_ref().map(pairs_of).unwrap_or_default(),
    })
}

/// A header map as the name-value pairs the ABI hands to plugins.
pub fn pairs_of(headers: &http::HeaderMap) -> Vec<(String, Bytes)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect()
}

fn build_request(call: &PendingCall, origin: &str) -> Result<http::Request<Full<Bytes>>, String> {
    let mut builder = http::Request::builder();
    for (name, value) in &call.headers {
        match name.as_str() {
            ":method" => {
                builder = builder
                    .method(http::Method::from_bytes(value).map_err(|_| "bad :method".to_string())?)
            }
            ":path" => {
                let path = std::str::from_utf8(value).map_err(|_| "bad :path".to_string())?;
                if !path.starts_with('/') {
                    return Err("bad :path".into());
                }
                builder = builder.uri(
                    http::Uri::try_from(format!("{origin}{path}"))
                        .map_err(|_| "bad :path".to_string())?,
                )
            }
            ":authority" => builder = builder.header(http::header::HOST, &value[..]),
            pseudo if pseudo.starts_with(':') => {}
            _ => builder = builder.header(name.as_str(), &value[..]),
        }
    }
    builder
        .body(Full::new(call.body.clone()))
        .map_err(|error| format!("bad request: {error}"))
}
