//! Header handling between client and upstream: request ids and X-Forwarded-*.
//!
//! Hop-by-hop headers (Connection and the headers it names, Keep-Alive, TE, Upgrade except for
//! WebSocket, ...) are removed by Pingora itself before `upstream_request_filter` runs: its
//! default `HttpUpstreamRequestPolicy` strips them, so doing it again here would only cost
//! time. `tests/integration/proxying.rs` checks the result.

use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;
use pingora::prelude::*;

pub const REQUEST_ID: &str = "x-request-id";
/// W3C trace context, written to upstream requests when tracing is on.
pub const TRACEPARENT: &str = "traceparent";

/// Longest client-supplied request id we pass on; longer ones are replaced.
const MAX_REQUEST_ID_LENGTH: usize = 128;

/// Takes the client's X-Request-ID when it is sane, otherwise makes a new one.
pub fn request_id(session: &Session) -> HeaderValue {
    if let Some(value) = session.get_header(REQUEST_ID)
        && value.to_str().is_ok()
        && !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LENGTH
    {
        return value.clone();
    }
    let id = generate_request_id();
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

/// A 32-hex-digit id: a per-process random prefix plus a counter, unique without locking.
pub fn generate_request_id() -> [u8; 32] {
    static PREFIX: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| fastrand::u64(..));
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 32];
    for (index, byte) in id.iter_mut().enumerate() {
        let (word, position) = if index < 16 {
            (*PREFIX, index)
        } else {
            (sequence, index - 16)
        };
        *byte = HEX[((word >> (60 - 4 * position)) & 0xf) as usize];
    }
    id
}

/// The Host the client asked for: HTTP/2's :authority or the Host header.
pub fn request_host(request: &RequestHeader) -> Option<&str> {
    request
        .uri
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| {
            request
                .headers
                .get(http::header::HOST)
                .and_then(|value| value.to_str().ok())
        })
}

/// Sets the X-Forwarded-* and X-Request-ID headers.
pub fn prepare_upstream_request(
    session: &Session,
    upstream_request: &mut RequestHeader,
    request_id: &HeaderValue,
) -> pingora::Result<()> {
    let client_ip = session
        .client_addr()
        .and_then(|address| address.as_inet())
        .map(|address| address.ip().to_string());
    if let Some(client_ip) = client_ip {
        // Several X-Forwarded-For lines form one list (RFC 9110 5.3).
        let mut forwarded_for = String::new();
        for previous in upstream_request
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter(|value| !value.trim().is_empty())
        {
            forwarded_for.push_str(previous.trim());
            forwarded_for.push_str(", ");
        }
        forwarded_for.push_str(&client_ip);
        upstream_request.insert_header("x-forwarded-for", forwarded_for)?;
    }
    let is_tls = session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some());
    upstream_request.insert_header("x-forwarded-proto", if is_tls { "https" } else { "http" })?;
    let request = session.req_header();
    let host = match request.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => request.headers.get(http::header::HOST).cloned(),
    };
    if let Some(host) = host {
        upstream_request.insert_header("x-forwarded-host", host)?;
    }
    upstream_request.insert_header(REQUEST_ID, request_id.clone())?;
    Ok(())
}

/// Removes hop-by-hop headers from the upstream's response.
pub fn clean_response(response: &mut ResponseHeader) {
    for name in ["keep-alive", "proxy-connection"] {
        response.remove_header(name);
    }
}

/// Extracts one cookie's value from the Cookie header(s).
pub fn cookie_value<'a>(request: &'a RequestHeader, name: &str) -> Option<&'a str> {
    request
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}
