//! Every error the gateway itself answers, in one JSON shape:
//! `{"error":{"status":503,"code":"no_healthy_upstream","message":"...","request_id":"..."}}`.

use std::borrow::Cow;

use bytes::Bytes;
use pingora::prelude::*;
use pingora_error::{ErrorSource, ErrorType};

/// An error answered by the gateway rather than by an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    /// Stable, machine-readable identifier.
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// Methods for the `Allow` header of a 405.
    pub allow: Option<String>,
    /// Further headers of the answer (`WWW-Authenticate`, `Retry-After`, ...).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl GatewayError {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        GatewayError {
            status,
            code,
            message: message.into(),
            allow: None,
            headers: Vec::new(),
        }
    }

    /// The error with one more header on its answer.
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn route_not_found() -> Self {
        Self::new(404, "route_not_found", "no route matches this request")
    }

    pub fn method_not_allowed(allow: String) -> Self {
        GatewayError {
            allow: Some(allow),
            ..Self::new(
                405,
                "method_not_allowed",
                "the route does not allow this method",
            )
        }
    }

    pub fn no_healthy_upstream(upstream: &str) -> Self {
        Self::new(
            503,
            "no_healthy_upstream",
            format!("upstream \"{upstream}\" has no healthy endpoint"),
        )
    }

    pub fn gateway_timeout() -> Self {
        Self::new(
            504,
            "upstream_timeout",
            "the upstream did not answer in time",
        )
    }

    /// Classifies a Pingora error raised while talking to the upstream or the client.
    /// Status 0 means the client connection is gone and nothing can be written.
    pub fn from_proxy_error(error: &Error) -> Self {
        use ErrorType::*;
        match error.etype() {
            HTTPStatus(status) => Self::new(*status, "http_error", "request failed"),
            ConnectTimedout => Self::new(
                504,
                "upstream_connect_timeout",
                "connecting to the upstream timed out",
            ),
            ReadTimedout | WriteTimedout => Self::gateway_timeout(),
            ConnectRefused | ConnectNoRoute | ConnectError | BindError | ConnectProxyFailure
            | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError => {
                Self::new(
                    502,
                    "upstream_connect_failed",
                    "could not connect to the upstream",
                )
            }
            _ => match error.esource() {
                ErrorSource::Upstream => Self::new(
                    502,
                    "upstream_protocol_error",
                    "the upstream connection failed or sent an invalid response",
                ),
                ErrorSource::Downstream => match error.etype() {
                    ReadError | WriteError | ConnectionClosed => {
                        Self::new(0, "client_closed", "the client went away")
                    }
                    _ => Self::new(400, "bad_request", "the request could not be read"),
                },
                ErrorSource::Internal | ErrorSource::Unset => {
                    Self::new(500, "internal_error", "internal gateway error")
                }
            },
        }
    }

    /// The error as a Pingora error, for hooks that must return `Err`.
    pub fn to_pingora(&self) -> Box<Error> {
        Error::explain(ErrorType::HTTPStatus(self.status), self.message.to_string())
    }

    pub fn body(&self, request_id: &str) -> Bytes {
        let document = serde_json::json!({
            "error": {
                "status": self.status,
                "code": self.code,
                "message": self.message,
                "request_id": request_id,
            }
        });
        Bytes::from(serde_json::to_vec(&document).unwrap_or_default())
    }
}

/// Writes `error` as the response, unless a response has already started (then only the
/// connection can be closed, which Pingora does). `keep_alive` says whether the caller lets
/// the connection be reused; it is also refused when an unread request body is left on the
/// connection. A connection that will close says `Connection: close`, so the client does not
/// send its next request into a closing socket. Returns whether the connection can be reused.
pub async fn respond(
    session: &mut Session,
    error: &GatewayError,
    request_id: &http::HeaderValue,
    keep_alive: bool,
) -> bool {
    if error.status == 0 || session.response_written().is_some() {
        return false;
    }
    let body = error.body(request_id.to_str().unwrap_or_default());
    let Ok(mut header) = ResponseHeader::build(error.status, Some(5)) else {
        return false;
    };
    let header_results = [
        header.insert_header("content-type", "application/json"),
        header.insert_header("content-length", body.len().to_string()),
        header.insert_header("cache-control", "no-store"),
        header.insert_header("x-request-id", request_id.clone()),
    ];
    if header_results.iter().any(Result::is_err) {
        log::debug!("error response header rejected a value");
    }
    if let Some(allow) = &error.allow {
        let _ = header.insert_header("allow", allow.as_str());
    }
    for (name, value) in &error.headers {
        let _ = header.append_header(name.clone(), value.clone());
    }
    // An unread request body would be taken as the next request on this connection.
    let reusable = keep_alive && (session.is_body_empty() || session.is_body_done());
    if !reusable {
        session.set_keepalive(None);
    }
    if let Err(write_error) = session.write_response_header(Box::new(header), false).await {
        log::debug!("could not write error response: {write_error}");
        return false;
    }
    if let Err(write_error) = session.write_response_body(Some(body), true).await {
        log::debug!("could not write error body: {write_error}");
        return false;
    }
    reusable
}
