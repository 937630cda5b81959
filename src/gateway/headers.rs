//! Header handling between client and upstream: request ids, X-Forwarded-*, hop-by-hop
//! removal.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;
use pingora::prelude::*;

pub const REQUEST_ID: &str = "x-request-id";

/// Longest client-supplied request id we pass on; longer ones are replaced.
const MAX_REQUEST_ID_LENGTH: usize = 128;

/// Headers that describe one hop and must not be forwarded (RFC 9110 7.6.1). `connection`
/// and `upgrade` are handled separately because WebSocket upgrades need them.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
];

/// Takes the client's X-Request-ID when it is sane, otherwise makes a new one.
pub fn request_id(session: &Session) -> HeaderValue {
    if let Some(value) = session.get_header(REQUEST_ID)
        && value.to_str().is_ok()
        && !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LENGTH
    {
        return value.clone();
    }
    HeaderValue::from_str(&generate_request_id())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

/// A 32-hex-digit id: a per-process random prefix plus a counter, unique without locking.
pub fn generate_request_id() -> String {
    static PREFIX: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| fastrand::u64(..));
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = String::with_capacity(32);
    let _ = write!(id, "{:016x}{:016x}", *PREFIX, sequence);
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

/// Sets the X-Forwarded-* and X-Request-ID headers and removes hop-by-hop headers.
pub fn prepare_upstream_request(
    session: &Session,
    upstream_request: &mut RequestHeader,
    request_id: &HeaderValue,
) -> pingora::Result<()> {
    let is_upgrade = session.is_upgrade_req();
    remove_hop_by_hop(upstream_request, is_upgrade);

    let client_ip = session
        .client_addr()
        .and_then(|address| address.as_inet())
        .map(|address| address.ip().to_string());
    if let Some(client_ip) = client_ip {
        let forwarded_for = match upstream_request
            .headers
            .get("x-forwarded-for")
            .and_then(|value| value.to_str().ok())
        {
            Some(previous) if !previous.is_empty() => format!("{previous}, {client_ip}"),
            _ => client_ip,
        };
        upstream_request.insert_header("x-forwarded-for", forwarded_for)?;
    }
    let is_tls = session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some());
    upstream_request.insert_header("x-forwarded-proto", if is_tls { "https" } else { "http" })?;
    if let Some(host) = request_host(session.req_header()) {
        let host = HeaderValue::from_str(host).ok();
        if let Some(host) = host {
            upstream_request.insert_header("x-forwarded-host", host)?;
        }
    }
    upstream_request.insert_header(REQUEST_ID, request_id.clone())?;
    Ok(())
}

fn remove_hop_by_hop(request: &mut RequestHeader, is_upgrade: bool) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<String> = request
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| {
            !name.is_empty() && name != "upgrade" && name != "keep-alive" && name != "close"
        })
        .collect();
    for name in named {
        request.remove_header(name.as_str());
    }
    for name in HOP_BY_HOP {
        if *name == "te" && is_trailers_only(request) {
            continue;
        }
        request.remove_header(*name);
    }
    if !is_upgrade {
        request.remove_header("upgrade");
        request.remove_header("connection");
    }
}

/// `TE: trailers` is the one TE value that must reach gRPC servers.
fn is_trailers_only(request: &RequestHeader) -> bool {
    request
        .headers
        .get("te")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("trailers"))
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
