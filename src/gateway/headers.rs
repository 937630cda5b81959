//! Header handling between client and upstream: request ids and X-Forwarded-*.
//!
//! Hop-by-hop headers: Pingora's `HttpUpstreamRequestPolicy` removes `Connection` and the
//! headers it names, and `Upgrade` except for WebSocket, before `upstream_request_filter`
//! runs; the other standard hop-by-hop fields (Keep-Alive, TE, Transfer-Encoding, ...) are
//! removed here for HTTP/1 upstreams, in one pass ([`strip_hop_by_hop`]).
//! `tests/integration/proxying.rs` checks the result on the wire.

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::prelude::*;

pub const REQUEST_ID: &str = "x-request-id";
/// W3C trace context, written to upstream requests when tracing is on.
pub const TRACEPARENT: &str = "traceparent";

/// Longest client-supplied request id we pass on; longer ones are replaced.
const MAX_REQUEST_ID_LENGTH: usize = 128;

/// Takes the client's X-Request-ID when it is sane, otherwise makes a new one; and whether
/// it was made here (then it is hex digits, which the access log writes without a check).
pub fn request_id(session: &Session) -> (HeaderValue, bool) {
    if let Some(value) = session.req_header().headers.get(X_REQUEST_ID)
        && value.to_str().is_ok()
        && !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LENGTH
    {
        return (value.clone(), false);
    }
    let id = generate_request_id();
    match HeaderValue::from_bytes(&id) {
        Ok(value) => (value, true),
        Err(_) => (HeaderValue::from_static("invalid-request-id"), false),
    }
}

/// A 32-hex-digit id: a random prefix per worker thread plus that thread's counter. Unique
/// without locking or a counter shared between threads (whose cache line every worker would
/// write on every request); two threads share a prefix with a chance of 2^-64.
pub fn generate_request_id() -> [u8; 32] {
    thread_local! {
        static PREFIX_AND_SEQUENCE: std::cell::Cell<(u64, u64)> =
            std::cell::Cell::new((fastrand::u64(..), 0));
    }
    let (prefix, sequence) = PREFIX_AND_SEQUENCE.with(|cell| {
        let (prefix, sequence) = cell.get();
        cell.set((prefix, sequence.wrapping_add(1)));
        (prefix, sequence)
    });
    let mut id = [0u8; 32];
    let bytes = prefix
        .to_be_bytes()
        .into_iter()
        .chain(sequence.to_be_bytes());
    // Two digits per byte from a table: a quarter of the shifts and masks of digit by digit.
    for (pair, byte) in id.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    id
}

/// Each byte's two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
        byte += 1;
    }
    pairs
};

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

/// Header names Loom writes itself, parsed once: an insert through Pingora's
/// `insert_header` re-parses the name (and copies it when it is not a standard one).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID);
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers [`prepare_upstream_request`] may add to a request: room made for them in one go.
pub const UPSTREAM_REQUEST_HEADERS: usize = 6;

/// Runs `edit` on the request's header map itself, with room for `additional` more headers.
///
/// Pingora keeps each header name's original case in a second map, and every
/// `insert_header` parses the name again and updates both maps, growing them when full:
/// about 1,700 instructions per header on a request the client sent with few headers. Loom
/// sends header names in canonical case instead (standard names title-cased, others lower
/// case), as Envoy does; HTTP header names are case-insensitive. After the first call the
/// request has no case map, so later calls and Pingora's own inserts update one map.
///
/// The request-target Pingora keeps when it does not round-trip through the URI (a
/// non-UTF-8 path, for one) and the HTTP/2 end-of-stream flag are carried over.
pub fn edit_request_headers(
    request: &mut RequestHeader,
    additional: usize,
    edit: impl FnOnce(&mut HeaderMap),
) {
    let uri_target = request
        .uri
        .path_and_query()
        .map(|path| path.as_str().as_bytes());
    let raw_target = (Some(request.raw_path()) != uri_target).then(|| request.raw_path().to_vec());
    let send_end_stream = request.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(request, placeholder));
    parts.headers.reserve(additional);
    edit(&mut parts.headers);
    *request = RequestHeader::from(parts);
    if let Some(send_end_stream) = send_end_stream {
        request.set_send_end_stream(send_end_stream);
    }
    if let Some(raw_target) = raw_target {
        // It was parsed from this very text once, so it parses again; on the impossible
        // failure the URI form, which carries the same path, is sent.
        let _ = request.set_raw_path(&raw_target);
    }
}

/// [`edit_request_headers`] for a response, whose parts (status and a plain header map)
/// `edit` gets: the same single map afterwards. A reason phrase other than the status
/// code's standard one is kept.
pub fn edit_response(
    response: &mut ResponseHeader,
    additional: usize,
    edit: impl FnOnce(&mut http::response::Parts),
) {
    // `get_reason_phrase` falls back to the standard phrase; only another one is kept.
    let reason = response
        .get_reason_phrase()
        .filter(|reason| Some(*reason) != response.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(response, placeholder));
    parts.headers.reserve(additional);
    edit(&mut parts);
    *response = ResponseHeader::from(parts);
    if reason.is_some() {
        // It came from a parsed status line, so it is a valid phrase.
        let _ = response.set_reason_phrase(reason.as_deref());
    }
}

/// Sets the X-Forwarded-* and X-Request-ID headers, the W3C `traceparent` of this attempt
/// when tracing is on (`starts_trace`: the caller's `tracestate` is dropped), and `host`
/// (the endpoint's address, on routes that do not keep the client's Host).
pub fn prepare_upstream_request(
    session: &Session,
    upstream_request: &mut RequestHeader,
    request_id: &HeaderValue,
    traceparent: Option<(HeaderValue, bool)>,
    host: Option<HeaderValue>,
) {
    let client_ip = session
        .client_addr()
        .and_then(|address| address.as_inet())
        .map(|address| address.ip());
    let is_tls = session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some());
    let request = session.req_header();
    let forwarded_host = match request.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => request.headers.get(http::header::HOST).cloned(),
    };
    // Pingora sets the version to the upstream's before this filter: 1.1 on an HTTP/1
    // connection. An HTTP/2 upstream keeps what HTTP/2 allows (`TE: trailers` for gRPC).
    let upstream_is_http1 = upstream_request.version == http::Version::HTTP_11;
    edit_request_headers(upstream_request, UPSTREAM_REQUEST_HEADERS, |headers| {
        if upstream_is_http1 {
            strip_hop_by_hop(headers);
        }
        if let Some(client_ip) = client_ip {
            // Several X-Forwarded-For lines form one list (RFC 9110 5.3).
            let mut forwarded_for = Vec::with_capacity(crate::ip_text::MAX_IP_TEXT);
            for previous in headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .map(|value| value.as_bytes().trim_ascii())
                .filter(|value| !value.is_empty())
            {
                forwarded_for.extend_from_slice(previous);
                forwarded_for.extend_from_slice(b", ");
            }
            crate::ip_text::push_ip(&mut forwarded_for, client_ip);
            // The client's values were header values already and an address is plain text.
            if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded_for)) {
                headers.insert(X_FORWARDED_FOR, value);
            }
        }
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if is_tls { "https" } else { "http" }),
        );
        if let Some(forwarded_host) = forwarded_host {
            headers.insert(X_FORWARDED_HOST, forwarded_host);
        }
        if let Some(host) = host {
            headers.insert(http::header::HOST, host);
        }
        headers.insert(X_REQUEST_ID, request_id.clone());
        if let Some((traceparent, starts_trace)) = traceparent {
            // The caller's traceparent (forwarded with the other headers) is replaced: the
            // upstream's parent is this attempt.
            headers.insert(HeaderName::from_static(TRACEPARENT), traceparent);
            if starts_trace {
                headers.remove(&TRACESTATE);
            }
        }
    });
}

/// Removes the standard hop-by-hop request fields that Pingora leaves to Loom on HTTP/1
/// upstreams (see `upstream::pool::peer_template`): those RFC 9110 7.6.1 names and Pingora's
/// list (`Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`) other than
/// `Connection`, `Upgrade` and `HTTP2-Settings`, which Pingora's upgrade handling removes or
/// rewrites (WebSocket) before this runs. Requests almost never carry any of them, so the
/// names are scanned once and only a present one is removed. Only for HTTP/1 upstreams:
/// Pingora prepares HTTP/2 ones itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let is_hop_by_hop = |name: &HeaderName| {
        *name == http::header::TE
            || *name == http::header::TRANSFER_ENCODING
            || *name == http::header::TRAILER
            || *name == http::header::PROXY_AUTHORIZATION
            || *name == http::header::PROXY_AUTHENTICATE
            || *name == KEEP_ALIVE
            || *name == PROXY_CONNECTION
    };
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    for name in [
        http::header::TE,
        http::header::TRANSFER_ENCODING,
        http::header::TRAILER,
        http::header::PROXY_AUTHORIZATION,
        http::header::PROXY_AUTHENTICATE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ] {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers from the upstream's response. The response has one header
/// map afterwards (see [`edit_response`]), with room for the request id and `additional`
/// more headers from the route's chain.
pub fn prepare_response(response: &mut ResponseHeader, additional: usize) {
    edit_response(response, additional + 1, |parts| {
        let headers = &mut parts.headers;
        // Both are rare: one look over the names costs less than two hash lookups.
        if headers
            .keys()
            .any(|name| *name == KEEP_ALIVE || *name == PROXY_CONNECTION)
        {
            headers.remove(&KEEP_ALIVE);
            headers.remove(&PROXY_CONNECTION);
        }
    });
}

/// Sets `X-Request-ID` on the client's response, last, so no step of the chain can drop or
/// change it. Done as one edit of the plain header map: Pingora's `insert_header` parses the
/// name again and allocates it on every call (about 850 instructions, against about 400).
pub fn set_response_request_id(response: &mut ResponseHeader, request_id: &HeaderValue) {
    edit_response(response, 1, |parts| {
        parts.headers.insert(X_REQUEST_ID, request_id.clone());
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_the_thread_prefix_and_its_counter_in_hex() {
        let first = generate_request_id();
        let second = generate_request_id();
        for id in [first, second] {
            assert!(
                id.iter()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(byte)),
                "{}",
                String::from_utf8_lossy(&id)
            );
        }
        assert_eq!(first[..16], second[..16], "one prefix per thread");
        let counter = |id: &[u8; 32]| {
            u64::from_str_radix(std::str::from_utf8(&id[16..]).expect("hex"), 16).expect("hex")
        };
        assert_eq!(counter(&second), counter(&first).wrapping_add(1));
        let prefix = std::str::from_utf8(&first[..16]).expect("hex");
        assert_eq!(
            format!("{:016x}", u64::from_str_radix(prefix, 16).expect("hex")),
            prefix
        );
    }
}
