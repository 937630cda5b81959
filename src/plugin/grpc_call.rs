//! Runs the unary gRPC calls plugins dispatch with `proxy_grpc_call`, over HTTP/2 on the
//! upstream's pooled callout client ([`super::callout_client`]).
//!
//! As with http_calls, the `upstream` argument names a configured upstream. Envoy's C++ SDK
//! passes a serialized `envoy.config.core.v3.GrpcService` there instead of a name: its
//! `envoy_grpc.cluster_name` is taken as the upstream's name.
//!
//! Every failure becomes a gRPC status, as Envoy reports it to `proxy_on_grpc_close`: no
//! such upstream or no endpoint → UNAVAILABLE, the deadline → DEADLINE_EXCEEDED, an HTTP
//! error status → the code the gRPC spec maps it to, a malformed answer → INTERNAL.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::Full;

use super::callout_client::{self, ExchangeError};
use super::http_call::pairs_of;
use crate::upstream::UpstreamPool;

/// Largest response message handed to a plugin.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Used when a plugin passes a zero timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// gRPC status codes the host produces itself.
pub mod code {
    pub const OK: u32 = 0;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// A gRPC call dispatched by a plugin.
#[derive(Debug, Clone)]
pub struct PendingGrpcCall {
    pub token: u32,
    pub upstream: String,
    pub service: String,
    pub method: String,
    /// Initial metadata (request headers), names lower-cased.
    pub metadata: Vec<(String, Bytes)>,
    pub message: Bytes,
    pub timeout: Duration,
}

/// What a gRPC call ended with.
#[derive(Debug, Clone, Default)]
pub struct GrpcCallResponse {
    /// The gRPC status: 0 with a message, anything else without.
    pub status: u32,
    /// `grpc-message`, or why the host failed the call.
    pub status_message: String,
    pub initial_metadata: Vec<(String, Bytes)>,
    /// The response message, without its gRPC frame header.
    pub message: Bytes,
    pub trailing_metadata: Vec<(String, Bytes)>,
}

impl GrpcCallResponse {
    fn failed(status: u32, message: impl Into<String>) -> GrpcCallResponse {
        GrpcCallResponse {
            status,
            status_message: message.into(),
            ..GrpcCallResponse::default()
        }
    }
}

/// The upstream a plugin's `upstream` argument names: a plain name (the Rust and Go SDKs),
/// or a serialized `GrpcService` whose `envoy_grpc.cluster_name` is the name (Envoy's C++
/// SDK).
pub fn upstream_name(argument: &[u8]) -> Option<String> {
    if let Ok(name) = std::str::from_utf8(argument)
        && !name.is_empty()
        && !name.bytes().any(|byte| byte.is_ascii_control())
    {
        return Some(name.to_string());
    }
    // GrpcService { envoy_grpc (1): EnvoyGrpc { cluster_name (1): string } }
    let envoy_grpc = protobuf_field(argument, 1)?;
    let cluster = protobuf_field(envoy_grpc, 1)?;
    let name = std::str::from_utf8(cluster).ok()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The first length-delimited field `number` of a protobuf message.
fn protobuf_field(mut message: &[u8], number: u64) -> Option<&[u8]> {
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        let length = match key & 7 {
            0 => {
                read_varint(&mut message)?;
                continue;
            }
            1 => 8,
            5 => 4,
            2 => usize::try_from(read_varint(&mut message)?).ok()?,
            _ => return None,
        };
        if message.len() < length {
            return None;
        }
        let (value, rest) = message.split_at(length);
        if key >> 3 == number && key & 7 == 2 {
            return Some(value);
        }
        message = rest;
    }
    None
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Runs `call` to its end; every failure is a status.
pub async fn execute(call: &PendingGrpcCall, upstreams: &[Arc<UpstreamPool>]) -> GrpcCallResponse {
    let answer = run(call, upstreams).await;
    if answer.status != code::OK {
        log::debug!(
            "grpc call {} to upstream \"{}\" ended with status {}: {}",
            call.token,
            call.upstream,
            answer.status,
            answer.status_message
        );
    }
    answer
}

async fn run(call: &PendingGrpcCall, upstreams: &[Arc<UpstreamPool>]) -> GrpcCallResponse {
    let Some(pool) = upstreams.iter().find(|pool| *pool.name == *call.upstream) else {
        return GrpcCallResponse::failed(code::UNAVAILABLE, "no such upstream");
    };
    let target = pool
        .callouts
        .for_grpc(&pool.plan)
        .and_then(|client| Ok((client, callout_client::choose(pool)?)));
    let (client, target) = match target {
        Ok(found) => found,
        Err(error) => return GrpcCallResponse::failed(code::UNAVAILABLE, error),
    };
    let timeout = if call.timeout.is_zero() {
        DEFAULT_TIMEOUT
    } else {
        call.timeout
    };
    let request = match build_request(call, &target.origin, timeout) {
        Ok(request) => request,
        Err(error) => return GrpcCallResponse::failed(code::INTERNAL, error),
    };
    match callout_client::exchange(client, target, request, MAX_RESPONSE + 5, timeout).await {
        Ok(answer) => read_answer(&answer.parts, answer.body, answer.trailers.as_ref()),
        Err(ExchangeError::TimedOut) => GrpcCallResponse::failed(
            code::DEADLINE_EXCEEDED,
            format!("no answer within {timeout:?}"),
        ),
        Err(ExchangeError::Failed(error)) => GrpcCallResponse::failed(code::UNAVAILABLE, error),
    }
}

fn build_request(
    call: &PendingGrpcCall,
    origin: &str,
    timeout: Duration,
) -> Result<http::Request<Full<Bytes>>, String> {
    let uri = format!("{origin}/{}/{}", call.service, call.method);
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)));
    for (name, value) in &call.metadata {
        // The host owns the framing headers; pseudo-headers are not metadata.
        if name.starts_with(':')
            || matches!(
                name.as_str(),
                "content-type" | "te" | "grpc-timeout" | "content-length" | "host"
            )
        {
            continue;
        }
        builder = builder.header(name.as_str(), &value[..]);
    }
    let mut framed = BytesMut::with_capacity(5 + call.message.len());
    framed.put_u8(0);
    framed.put_u32(call.message.len() as u32);
    framed.extend_from_slice(&call.message);
    builder
        .body(Full::new(framed.freeze()))
        .map_err(|error| format!("bad request: {error}"))
}

/// The gRPC spec's mapping of HTTP statuses that carry no gRPC status.
fn status_of_http(status: http::StatusCode) -> u32 {
    match status.as_u16() {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

fn read_answer(
    parts: &http::response::Parts,
    mut body: Bytes,
    trailers: Option<&http::HeaderMap>,
) -> GrpcCallResponse {
    // A trailers-only answer carries its status in the headers.
    let status_headers = trailers
        .filter(|trailers| trailers.contains_key("grpc-status"))
        .unwrap_or(&parts.headers);
    let status = status_headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u32>().ok());
    let Some(status) = status else {
        let status = if parts.status == http::StatusCode::OK {
            code::INTERNAL
        } else {
            status_of_http(parts.status)
        };
        return GrpcCallResponse::failed(
            status,
            format!("HTTP {} without a grpc-status", parts.status.as_u16()),
        );
    };
    let status_message = status_headers
        .get("grpc-message")
        .map(|value| {
            percent_encoding::percent_decode(value.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let initial_metadata = pairs_of(&parts.headers);
    let trailing_metadata = trailers.map(pairs_of).unwrap_or_default();
    let mut answer = GrpcCallResponse {
        status,
        status_message,
        initial_metadata,
        message: Bytes::new(),
        trailing_metadata,
    };
    if status != code::OK {
        return answer;
    }
    if body.len() < 5 {
        answer.status = code::INTERNAL;
        answer.status_message = "the answer holds no message".into();
        return answer;
    }
    let compressed = body.get_u8();
    let length = body.get_u32() as usize;
    if compressed != 0 {
        answer.status = code::INTERNAL;
        answer.status_message = "a compressed message, which was not asked for".into();
    } else if length > MAX_RESPONSE {
        answer.status = code::RESOURCE_EXHAUSTED;
        answer.status_message = format!("a message over {MAX_RESPONSE} bytes");
    } else if body.len() < length {
        answer.status = code::INTERNAL;
        answer.status_message = "a truncated message".into();
    } else {
        answer.message = body.split_to(length);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_is_a_name_or_a_serialized_grpc_service() {
        assert_eq!(upstream_name(b"auth").as_deref(), Some("auth"));
        // GrpcService { envoy_grpc { cluster_name: "auth", authority: "x" } }, with an
        // unrelated varint field (timeout-like) before it.
        let service = [
            0x18, 0x05, 0x0a, 0x09, 0x0a, 0x04, b'a', b'u', b't', b'h', 0x12, 0x01, b'x',
        ];
        assert_eq!(upstream_name(&service).as_deref(), Some("auth"));
        assert_eq!(upstream_name(b""), None);
        assert_eq!(upstream_name(&[0x0a, 0x7f]), None, "truncated");
    }

    fn parts(status: u16, headers: &[(&str, &str)]) -> http::response::Parts {
        let mut builder = http::Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|_| http::Response::new(()).into_parts().0)
    }

    #[test]
    fn answers_are_read_as_grpc_reports_them() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = Bytes::from_static(&[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        let answer = read_answer(&parts(200, &[]), body, Some(&trailers));
        assert_eq!((answer.status, &answer.message[..]), (0, &b"abc"[..]));

        let only = parts(200, &[("grpc-status", "7"), ("grpc-message", "no%20entry")]);
        let answer = read_answer(&only, Bytes::new(), None);
        assert_eq!(answer.status, code::PERMISSION_DENIED);
        assert_eq!(answer.status_message, "no entry");

        let answer = read_answer(&parts(503, &[]), Bytes::new(), None);
        assert_eq!(answer.status, code::UNAVAILABLE);
        let answer = read_answer(&parts(200, &[]), Bytes::new(), Some(&trailers));
        assert_eq!(answer.status, code::INTERNAL, "OK without a message");
        let truncated = Bytes::from_static(&[0, 0, 0, 0, 9, b'a']);
        let answer = read_answer(&parts(200, &[]), truncated, Some(&trailers));
        assert_eq!(answer.status, code::INTERNAL);
    }
}
