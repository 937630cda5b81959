//! Runs the HTTP calls plugins dispatch with `proxy_http_call`. The `upstream` argument
//! names a configured upstream (Envoy's cluster semantics), so plugins stay portable and can
//! reach only what the config lists; the endpoint is chosen by that upstream's balancer.
//! Calls are plain HTTP/1.1; an upstream with TLS is refused (the call fails).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use super::host::{HttpCallResponse, PendingCall};
use crate::upstream::UpstreamPool;
use crate::upstream::endpoint::Outcome;

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
    if pool.plan.config.tls.is_some() {
        return Err("upstreams with TLS are not supported for http_call".into());
    }
    let selection = pool
        .select(b"", 0)
        .map_err(|error| format!("no endpoint available: {error:?}"))?;
    let mut lease = selection.lease;
    let address = pool
        .endpoints()
        .get(lease.endpoint_index())
        .ok_or("endpoint vanished")?
        .socket;
    let timeout = if call.timeout.is_zero() {
        DEFAULT_TIMEOUT
    } else {
        call.timeout
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect {address}: {error}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|error| format!("handshake: {error}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = build_request(call)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("request: {error}"))?;
        let (parts, body) = response.into_parts();
        let collected = Limited::new(body, MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|error| format!("response body: {error}"))?;
        let trailers = collected.trailers().cloned();
        Ok::<_, String>((parts, collected.to_bytes(), trailers))
    };
    let (parts, body, trailers) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))??;
    lease.record(Outcome::Answered(parts.status.as_u16()));
    let mut headers = Vec::with_capacity(parts.headers.len() + 1);
    headers.push((
        ":status".to_string(),
        Bytes::from(parts.status.as_u16().to_string()),
    ));
    for (name, value) in &parts.headers {
        headers.push((
            name.as_str().to_string(),
            Bytes::copy_from_slice(value.as_bytes()),
        ));
    }
    let trailers = trailers
        .iter()
        .flatten()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect();
    Ok(HttpCallResponse {
        headers,
        body,
        trailers,
    })
}

fn build_request(call: &PendingCall) -> Result<http::Request<Full<Bytes>>, String> {
    let mut builder = http::Request::builder();
    for (name, value) in &call.headers {
        match name.as_str() {
            ":method" => {
                builder = builder
                    .method(http::Method::from_bytes(value).map_err(|_| "bad :method".to_string())?)
            }
            ":path" => {
                builder = builder
                    .uri(http::Uri::try_from(&value[..]).map_err(|_| "bad :path".to_string())?)
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
