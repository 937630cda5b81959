//! What the authentication policies (`key_auth`, `basic_auth`, `jwt_auth`) share: the refusal
//! every one of them answers with, and how an identified consumer is handed on (to the rate
//! limits keyed by consumer, and upstream in a header).

use std::sync::Arc;

use http::HeaderName;
use pingora::proxy::Session;

use super::RequestInput;
use super::query::remove_query_parameter;
use crate::gateway::errors::GatewayError;
use crate::observe::metrics;

/// The default header that carries the consumer's name upstream.
pub const DEFAULT_CONSUMER_HEADER: &str = "X-Consumer";

/// A 401 (missing or bad credentials) or 403 (valid but not allowed), counted in
/// `loom_auth_failures_total{route,policy,reason}`. The request is never forwarded.
pub fn refuse(
    input: &RequestInput<'_>,
    policy: &str,
    status: u16,
    reason: &'static str,
    message: impl Into<std::borrow::Cow<'static, str>>,
) -> GatewayError {
    metrics::count_auth_failure(input.route_id, policy, reason);
    let code = if status == 403 {
        "forbidden"
    } else {
        "invalid_credentials"
    };
    GatewayError::new(status, code, message)
}

/// Records `consumer` for the later steps and sends it upstream in `header`, replacing
/// whatever the client sent there.
pub fn set_consumer(
    session: &mut Session,
    input: &mut RequestInput<'_>,
    header: Option<&HeaderName>,
    consumer: &Arc<str>,
) {
    if let Some(header) = header {
        let request = session.req_header_mut();
        match http::HeaderValue::from_str(consumer) {
            Ok(value) => {
                let _ = request.insert_header(header.clone(), value);
            }
            Err(_) => {
                let _ = request.remove_header(header);
            }
        }
    }
    input.state.consumer = Some(Arc::clone(consumer));
}

/// A consumer known when the config loads (a key's owner), with its header value made once.
#[derive(Debug)]
pub struct Consumer {
    name: Arc<str>,
    header_value: Option<http::HeaderValue>,
}

impl Consumer {
    pub fn new(name: &str) -> Consumer {
        Consumer {
            name: Arc::from(name),
            header_value: http::HeaderValue::from_str(name).ok(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    /// The consumer header's value, made once; `None` when the name is not header text.
    pub fn header_value(&self) -> Option<&http::HeaderValue> {
        self.header_value.as_ref()
    }
}

/// Removes every header named `header` that the client sent: a consumer or claim header
/// must come from the gateway, never from the client.
pub fn remove_client_header(session: &mut Session, header: &HeaderName) {
    // One lookup: removing an absent header costs what checking for it would.
    let _ = session.req_header_mut().remove_header(header);
}

/// Removes the query parameter `name` (a credential) from the request, both as the client
/// sent it and from the path the route sends upstream.
pub fn strip_query_credential(session: &mut Session, input: &mut RequestInput<'_>, name: &str) {
    if let Some(stripped) = input
        .upstream_uri
        .as_ref()
        .and_then(|upstream| remove_query_parameter(upstream, name))
    {
        *input.upstream_uri = Some(stripped);
    }
    if let Some(stripped) = remove_query_parameter(&session.req_header().uri, name) {
        session.req_header_mut().set_uri(stripped);
    }
}

/// Parses the `consumer_header` setting: `""` sends no header.
pub fn consumer_header(
    text: Option<&str>,
    report: &mut dyn FnMut(&str, String),
) -> Option<HeaderName> {
    let text = text.unwrap_or(DEFAULT_CONSUMER_HEADER);
    if text.is_empty() {
        return None;
    }
    match super::header_name(text) {
        Ok(name) => Some(name),
        Err(message) => {
            report("consumer_header", message);
            None
        }
    }
}
