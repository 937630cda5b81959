//! Header maps as Proxy-Wasm sees them: Pingora's request and response headers with the
//! Envoy pseudo-headers (`:method :path :authority :scheme`, `:status`) in front, response
//! trailers, and the answer to an http_call or a gRPC call. Writes to a pseudo-header change the request
//! line or status.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use super::{CalloutAnswer, Frame};
use crate::plugin::abi::{MapType, status};

/// The pairs of a map, owned, in wire order.
pub fn pairs(frame: &Frame<'_>, map: MapType) -> Result<Vec<(String, Bytes)>, i32> {
    let mut out = Vec::new();
    match map {
        MapType::RequestHeaders => {
            let request = frame.request.as_ref().ok_or(status::NOT_FOUND)?.get();
            for (name, value) in request_pseudo(request, frame.facts.scheme) {
                out.push((name.to_string(), value));
            }
            push_headers(&mut out, &request.headers);
        }
        MapType::ResponseHeaders => {
            let response = frame.response.as_ref().ok_or(status::NOT_FOUND)?.get();
            out.push((
                ":status".to_string(),
                Bytes::from(response.status.as_u16().to_string()),
            ));
            push_headers(&mut out, &response.headers);
        }
        MapType::ResponseTrailers => {
            let trailers = frame.response_trailers.as_ref().ok_or(status::NOT_FOUND)?;
            push_headers(&mut out, trailers);
        }
        MapType::HttpCallResponseHeaders
        | MapType::HttpCallResponseTrailers
        | MapType::GrpcCallInitialMetadata
        | MapType::GrpcCallTrailingMetadata => {
            out.extend(callout_map(frame, map)?.iter().cloned());
        }
        // Pingora has no request-trailer hook; the map is never available.
        MapType::RequestTrailers => return Err(status::NOT_FOUND),
    }
    Ok(out)
}

/// The pairs of a callout answer's map, when the callback is handed that kind of answer.
fn callout_map<'a>(frame: &Frame<'a>, map: MapType) -> Result<&'a [(String, Bytes)], i32> {
    let answer = frame.callout.ok_or(status::NOT_FOUND)?;
    match (answer, map) {
        (CalloutAnswer::Http(http), MapType::HttpCallResponseHeaders) => Ok(&http.headers),
        (CalloutAnswer::Http(http), MapType::HttpCallResponseTrailers) => Ok(&http.trailers),
        (CalloutAnswer::Grpc(grpc), MapType::GrpcCallInitialMetadata) => Ok(&grpc.initial_metadata),
        (CalloutAnswer::Grpc(grpc), MapType::GrpcCallTrailingMetadata) => {
            Ok(&grpc.trailing_metadata)
        }
        _ => Err(status::NOT_FOUND),
    }
}

/// Number of pairs, without copying values.
pub fn size(frame: &Frame<'_>, map: MapType) -> Result<usize, i32> {
    Ok(match map {
        MapType::RequestHeaders => {
            frame
                .request
                .as_ref()
                .ok_or(status::NOT_FOUND)?
                .get()
                .headers
                .len()
                + 4
        }
        MapType::ResponseHeaders => {
            frame
                .response
                .as_ref()
                .ok_or(status::NOT_FOUND)?
                .get()
                .headers
                .len()
                + 1
        }
        MapType::ResponseTrailers => frame
            .response_trailers
            .as_ref()
            .ok_or(status::NOT_FOUND)?
            .len(),
        MapType::HttpCallResponseHeaders
        | MapType::HttpCallResponseTrailers
        | MapType::GrpcCallInitialMetadata
        | MapType::GrpcCallTrailingMetadata => callout_map(frame, map)?.len(),
        MapType::RequestTrailers => return Err(status::NOT_FOUND),
    })
}

/// One value; repeated headers are joined with ", " as HTTP allows.
pub fn value(frame: &Frame<'_>, map: MapType, key: &str) -> Result<Option<Bytes>, i32> {
    let key = key.to_ascii_lowercase();
    if key.starts_with(':') || map.is_callout_answer() {
        return Ok(pairs(frame, map)?
            .into_iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value));
    }
    let headers = match map {
        MapType::RequestHeaders => {
            &frame
                .request
                .as_ref()
                .ok_or(status::NOT_FOUND)?
                .get()
                .headers
        }
        MapType::ResponseHeaders => {
            &frame
                .response
                .as_ref()
                .ok_or(status::NOT_FOUND)?
                .get()
                .headers
        }
        MapType::ResponseTrailers => frame
            .response_trailers
            .as_deref()
            .ok_or(status::NOT_FOUND)?,
        _ => return Err(status::NOT_FOUND),
    };
    let mut values = headers.get_all(key.as_str()).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let mut joined = first.as_bytes().to_vec();
    for next in values {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(next.as_bytes());
    }
    Ok(Some(Bytes::from(joined)))
}

/// How a write changes the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Add,
    Replace,
    Remove,
}

pub fn write(frame: &mut Frame<'_>, map: MapType, key: &str, value: &[u8], how: Write) -> i32 {
    // Names are lowercased (as Envoy's maps hold them); most already are, and cost no copy.
    let lowered;
    let key = if key.bytes().any(|byte| byte.is_ascii_uppercase()) {
        lowered = key.to_ascii_lowercase();
        lowered.as_str()
    } else {
        key
    };
    match map {
        MapType::RequestHeaders => {
            let Some(request) = frame.request.as_mut() else {
                return status::NOT_FOUND;
            };
            let Some(request) = request.get_mut() else {
                return status::BAD_ARGUMENT;
            };
            let code = if key.starts_with(':') {
                write_request_pseudo(request, key, value, how)
            } else {
                write_header(request, key, value, how)
            };
            if code == status::OK {
                frame.stream.request_headers_written = true;
                frame.stream.request_target_written |= key.starts_with(':') || key == "host";
            }
            code
        }
        MapType::ResponseHeaders => {
            let Some(response) = frame.response.as_mut() else {
                return status::NOT_FOUND;
            };
            let Some(response) = response.get_mut() else {
                return status::BAD_ARGUMENT;
            };
            if key == ":status" {
                if how == Write::Remove {
                    return status::BAD_ARGUMENT;
                }
                return match std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.parse::<u16>().ok())
                {
                    Some(code) if response.set_status(code).is_ok() => status::OK,
                    _ => status::BAD_ARGUMENT,
                };
            }
            if key.starts_with(':') {
                return status::OK;
            }
            write_header(response, key, value, how)
        }
        MapType::ResponseTrailers => {
            let Some(trailers) = frame.response_trailers.as_deref_mut() else {
                return status::NOT_FOUND;
            };
            let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
                return status::BAD_ARGUMENT;
            };
            match how {
                Write::Remove => {
                    trailers.remove(&name);
                }
                Write::Add | Write::Replace => {
                    if !within_limits(trailers.len(), value.len()) {
                        return status::INTERNAL_FAILURE;
                    }
                    let Ok(value) = HeaderValue::from_bytes(value) else {
                        return status::BAD_ARGUMENT;
                    };
                    if how == Write::Add {
                        trailers.append(name, value);
                    } else {
                        trailers.insert(name, value);
                    }
                }
            }
            status::OK
        }
        MapType::RequestTrailers => status::NOT_FOUND,
        // A callout's answer is the plugin's to read, not to change.
        MapType::HttpCallResponseHeaders
        | MapType::HttpCallResponseTrailers
        | MapType::GrpcCallInitialMetadata
        | MapType::GrpcCallTrailingMetadata => status::BAD_ARGUMENT,
    }
}

/// Replaces the whole map with `pairs`.
pub fn replace_all(frame: &mut Frame<'_>, map: MapType, new_pairs: &[(&[u8], &[u8])]) -> i32 {
    let existing: Vec<String> = match pairs(frame, map) {
        Ok(current) => current
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| !name.starts_with(':'))
            .collect(),
        Err(code) => return code,
    };
    for name in existing {
        let code = write(frame, map, &name, b"", Write::Remove);
        if code != status::OK {
            return code;
        }
    }
    for (name, value) in new_pairs {
        let Ok(name) = std::str::from_utf8(name) else {
            return status::BAD_ARGUMENT;
        };
        let how = if name.starts_with(':') {
            Write::Replace
        } else {
            Write::Add
        };
        let code = write(frame, map, name, value, how);
        if code != status::OK {
            return code;
        }
    }
    status::OK
}

/// Pingora's request and response headers alike (they keep a header-case map, so they are
/// changed through their own methods, not through the `HeaderMap` directly).
trait HeaderTarget {
    /// `name` as the plugin wrote it; false when it is not a valid header name.
    fn append(&mut self, name: bytes::Bytes, value: HeaderValue) -> bool;
    fn insert(&mut self, name: bytes::Bytes, value: HeaderValue) -> bool;
    fn remove(&mut self, name: &str);
    /// Values in the map.
    fn count(&self) -> usize;
}

/// Most header values a plugin may leave in one map, and the longest value it may write:
/// `http::HeaderMap` panics past 32,768 entries, and a plugin must never take the gateway's
/// connection task down with it. Beyond either the write is refused with `INTERNAL_FAILURE`
/// (the SDKs surface it as an error status) and nothing changes.
pub const MAX_PLUGIN_HEADERS: usize = 1024;
pub const MAX_PLUGIN_HEADER_VALUE: usize = 64 * 1024;

/// Whether one more value of `length` bytes fits in a map that holds `count` values.
fn within_limits(count: usize, length: usize) -> bool {
    count < MAX_PLUGIN_HEADERS && length <= MAX_PLUGIN_HEADER_VALUE
}

impl HeaderTarget for pingora::http::RequestHeader {
    fn append(&mut self, name: bytes::Bytes, value: HeaderValue) -> bool {
        self.append_header(name, value).is_ok()
    }
    fn insert(&mut self, name: bytes::Bytes, value: HeaderValue) -> bool {
        self.insert_header(name, value).is_ok()
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
    fn count(&self) -> usize {
        self.headers.len()
    }
}

impl HeaderTarget for pingora::http::ResponseHeader {
    fn append(&mut self, name: bytes::Bytes, value: HeaderValue) -> bool {
        self.append_header(name, value).is_ok()
    }
    fn insert(&mut self, name: bytes::Bytes, value: HeaderValue) -> bool {
        self.insert_header(name, value).is_ok()
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
    fn count(&self) -> usize {
        self.headers.len()
    }
}

fn write_header(target: &mut impl HeaderTarget, key: &str, value: &[u8], how: Write) -> i32 {
    if how == Write::Remove {
        target.remove(key);
        return status::OK;
    }
    if !within_limits(target.count(), value.len()) {
        return status::INTERNAL_FAILURE;
    }
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return status::BAD_ARGUMENT;
    };
    // The name goes to Pingora as the plugin spelled it: Pingora parses it (refusing an
    // invalid one) and keeps that spelling for an HTTP/1 peer. Parsed here as well, or handed
    // over as a `HeaderName` (which Pingora turns back into Title-Case text and parses
    // again), it cost two more passes over the name per write.
    let name = bytes::Bytes::copy_from_slice(key.as_bytes());
    let written = if how == Write::Add {
        target.append(name, value)
    } else {
        target.insert(name, value)
    };
    if written {
        status::OK
    } else {
        status::BAD_ARGUMENT
    }
}

fn write_request_pseudo(
    request: &mut pingora::http::RequestHeader,
    key: &str,
    value: &[u8],
    how: Write,
) -> i32 {
    if how == Write::Remove {
        // Pseudo-headers cannot be removed, only changed; Envoy ignores this too.
        return status::OK;
    }
    match key {
        ":method" => match http::Method::from_bytes(value) {
            Ok(method) => {
                request.set_method(method);
                status::OK
            }
            Err(_) => status::BAD_ARGUMENT,
        },
        ":path" => match http::Uri::try_from(value) {
            Ok(uri) if value.starts_with(b"/") => {
                request.set_uri(uri);
                status::OK
            }
            _ => status::BAD_ARGUMENT,
        },
        ":authority" => match HeaderValue::from_bytes(value) {
            Ok(value) => {
                if request.insert_header(http::header::HOST, value).is_ok() {
                    status::OK
                } else {
                    status::BAD_ARGUMENT
                }
            }
            Err(_) => status::BAD_ARGUMENT,
        },
        // The scheme follows the listener; nothing to change on the request line.
        _ => status::OK,
    }
}

fn request_pseudo(
    request: &pingora::http::RequestHeader,
    scheme: &'static str,
) -> [(&'static str, Bytes); 4] {
    let path = request
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let authority = request
        .uri
        .authority()
        .map(|authority| Bytes::copy_from_slice(authority.as_str().as_bytes()))
        .or_else(|| {
            request
                .headers
                .get(http::header::HOST)
                .map(|host| Bytes::copy_from_slice(host.as_bytes()))
        })
        .unwrap_or_default();
    [
        (":authority", authority),
        (":path", Bytes::copy_from_slice(path.as_bytes())),
        (
            ":method",
            Bytes::copy_from_slice(request.method.as_str().as_bytes()),
        ),
        (
            ":scheme",
            Bytes::from_static(if scheme.is_empty() {
                b"http"
            } else {
                scheme.as_bytes()
            }),
        ),
    ]
}

fn push_headers(out: &mut Vec<(String, Bytes)>, headers: &http::HeaderMap) {
    for (name, value) in headers {
        out.push((
            name.as_str().to_string(),
            Bytes::copy_from_slice(value.as_bytes()),
        ));
    }
}

/// Serializes owned pairs. Values that are not UTF-8 are replaced lossily: the Rust SDK
/// unwraps `String::from_utf8` on every value and would trap on raw bytes.
pub fn serialize(pairs: &[(String, Bytes)]) -> Vec<u8> {
    let cleaned: Vec<(&[u8], std::borrow::Cow<'_, [u8]>)> = pairs
        .iter()
        .map(|(name, value)| {
            let value = match String::from_utf8_lossy(value) {
                std::borrow::Cow::Borrowed(_) => std::borrow::Cow::Borrowed(&value[..]),
                std::borrow::Cow::Owned(text) => std::borrow::Cow::Owned(text.into_bytes()),
            };
            (name.as_bytes(), value)
        })
        .collect();
    crate::plugin::abi::serialize_pairs(cleaned.iter().map(|(name, value)| (*name, &value[..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_header_writes_stop_at_the_limits_instead_of_panicking() {
        let mut request = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        for index in 0..MAX_PLUGIN_HEADERS {
            let code = write_header(&mut request, &format!("x-{index}"), b"v", Write::Add);
            assert_eq!(code, status::OK);
        }
        // Past http's own limit (32,768) this would panic; the gateway refuses much earlier.
        for _ in 0..40_000 {
            let code = write_header(&mut request, "x-more", b"v", Write::Add);
            assert_eq!(code, status::INTERNAL_FAILURE);
        }
        assert_eq!(request.headers.len(), MAX_PLUGIN_HEADERS);
        let mut response = pingora::http::ResponseHeader::build(200, None).unwrap();
        let huge = vec![b'a'; MAX_PLUGIN_HEADER_VALUE + 1];
        assert_eq!(
            write_header(&mut response, "x-huge", &huge, Write::Replace),
            status::INTERNAL_FAILURE
        );
        assert_eq!(
            write_header(&mut response, "x-huge", b"ok", Write::Replace),
            status::OK
        );
    }

    #[test]
    fn plugin_header_names_are_checked_and_kept_as_spelled() {
        let mut response = pingora::http::ResponseHeader::build(200, None).unwrap();
        for bad in ["bad name", "", "x:y", "caf\u{e9}"] {
            assert_eq!(
                write_header(&mut response, bad, b"v", Write::Replace),
                status::BAD_ARGUMENT,
                "{bad:?}"
            );
        }
        assert_eq!(
            write_header(&mut response, "x-bad-value", b"a\r\nb", Write::Add),
            status::BAD_ARGUMENT
        );
        assert!(response.headers.is_empty());
        assert_eq!(
            write_header(&mut response, "X-Plugin-Mark", b"1", Write::Add),
            status::OK
        );
        assert_eq!(
            write_header(&mut response, "x-plugin-mark", b"2", Write::Replace),
            status::OK
        );
        let values: Vec<_> = response.headers.get_all("x-plugin-mark").iter().collect();
        assert_eq!(values, [&HeaderValue::from_static("2")]);
        let mut wire = Vec::new();
        response.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("x-plugin-mark: 2\r\n"), "{wire}");
    }
}
