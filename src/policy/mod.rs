//! Built-in request policies: plain Rust steps of a route's chain, next to Proxy-Wasm plugins.
//!
//! A `plugins:` entry with `type: cors` (or another built-in type) becomes a [`PolicyStep`]: its
//! `config:` is deserialized into that policy's own schema when the config loads (so mistakes
//! are reported with file, line and key like any other), compiled once (origins, CIDRs, header
//! values, path templates), and shared by every request of the snapshot. The gateway walks a
//! route's chain in `crate::gateway::chain`; each step answers with a [`Verdict`].
//!
//! A route without policies pays nothing for them: its chain is empty and the walker returns
//! at once.

pub mod access_log;
pub mod auth;
pub mod basic_auth;
pub mod body_limit;
pub mod client_ip;
pub mod compression;
pub mod concurrency_limit;
pub mod consumer_restriction;
pub mod cors;
pub mod credentials;
pub mod ip_restriction;
pub mod jwks;
pub mod jwt_auth;
pub mod key_auth;
pub mod keyed_hash;
pub mod limit_key;
pub mod mtls_auth;
pub mod query;
pub mod rate_limit;
pub mod security_headers;
pub mod shared_state;
pub mod transform;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pingora::proxy::Session;
use serde::de::DeserializeOwned;

use crate::config::validate::Checker;
use crate::gateway::errors::GatewayError;
use crate::plugin::host::LocalResponse;

/// What a step decided about the request.
#[derive(Debug)]
pub enum Verdict {
    Continue,
    /// A local answer that ends the request (a CORS preflight, for example).
    Respond(LocalResponse),
    /// The request is refused with the gateway's JSON error.
    Fail(GatewayError),
}

/// The built-in types, as written after `type:`.
pub const TYPES: &[&str] = &[
    "cors",
    "security_headers",
    "compression",
    "request_size_limit",
    "transform",
    "ip_restriction",
    "access_log",
    "key_auth",
    "basic_auth",
    "jwt_auth",
    "mtls_auth",
    "consumer_restriction",
    "rate_limit",
    "concurrency_limit",
];

/// One compiled built-in policy.
#[derive(Debug)]
pub enum Policy {
    Cors(cors::Cors),
    SecurityHeaders(security_headers::SecurityHeaders),
    Compression(compression::Compression),
    RequestSizeLimit(body_limit::RequestSizeLimit),
    Transform(transform::Transform),
    IpRestriction(ip_restriction::IpRestriction),
    AccessLog(access_log::AccessLog),
    KeyAuth(key_auth::KeyAuth),
    BasicAuth(basic_auth::BasicAuth),
    JwtAuth(jwt_auth::JwtAuth),
    MtlsAuth(mtls_auth::MtlsAuth),
    ConsumerRestriction(consumer_restriction::ConsumerRestriction),
    RateLimit(rate_limit::RateLimit),
    ConcurrencyLimit(concurrency_limit::ConcurrencyLimit),
}

/// A policy as it sits in a chain: its entry's name and priority.
#[derive(Debug)]
pub struct PolicyStep {
    pub name: String,
    pub priority: i32,
    /// Set for the top-level sections (`cors:`, `access_log:`), which apply to every route.
    pub global: bool,
    pub policy: Policy,
}

/// What the steps of one request hand on to later steps and phases; kept in the request's
/// context. Empty (and allocation-free) until a step sets something.
#[derive(Debug, Default)]
pub struct PolicyState {
    /// Who an auth policy identified; rate and concurrency limits may count by it.
    pub consumer: Option<Arc<str>>,
    /// The budget the rate limits report on the response.
    pub rate_limit: Option<rate_limit::Quota>,
    /// Concurrency slots, given back when the request ends.
    pub concurrency: Vec<concurrency_limit::ConcurrencySlot>,
}

/// What a request step may read besides the request itself; built by the chain walker from
/// the request's context.
pub struct RequestInput<'a> {
    /// The client: the peer, or the address `X-Forwarded-For` names when the peer is a
    /// trusted proxy (see [`client_ip`]).
    pub client_ip: Option<IpAddr>,
    /// Kept as the header value: most steps never read it as text.
    pub request_id: &'a http::HeaderValue,
    pub route_id: &'a str,
    pub path_parameters: &'a [(String, String)],
    /// The path (and query) sent upstream when it differs from the client's.
    pub upstream_uri: &'a mut Option<http::Uri>,
    pub state: &'a mut PolicyState,
    /// When the request started: read once per request, so steps need no clock read of
    /// their own.
    pub now: Instant,
    /// The step's entry name, for metric labels.
    pub step_name: &'a str,
}

/// What a response step may read.
pub struct ResponseInput<'a> {
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a http::HeaderValue,
    pub route_id: &'a str,
    pub path_parameters: &'a [(String, String)],
    pub state: &'a PolicyState,
}

impl Policy {
    /// The type name, as in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Policy::Cors(_) => "cors",
            Policy::SecurityHeaders(_) => "security_headers",
            Policy::Compression(_) => "compression",
            Policy::RequestSizeLimit(_) => "request_size_limit",
            Policy::Transform(_) => "transform",
            Policy::IpRestriction(_) => "ip_restriction",
            Policy::AccessLog(_) => "access_log",
            Policy::KeyAuth(_) => "key_auth",
            Policy::BasicAuth(_) => "basic_auth",
            Policy::JwtAuth(_) => "jwt_auth",
            Policy::MtlsAuth(_) => "mtls_auth",
            Policy::ConsumerRestriction(_) => "consumer_restriction",
            Policy::RateLimit(_) => "rate_limit",
            Policy::ConcurrencyLimit(_) => "concurrency_limit",
        }
    }

    /// Whether the step has anything to do in the request-headers phase.
    pub fn acts_on_request(&self) -> bool {
        !matches!(self, Policy::SecurityHeaders(_) | Policy::AccessLog(_))
    }

    /// Whether the request step has anything to do for this request: a cheap look before
    /// the step is entered (CORS answers only preflights).
    pub fn acts_on(&self, request: &pingora::http::RequestHeader) -> bool {
        match self {
            Policy::Cors(cors) => cors.acts_on(request),
            _ => true,
        }
    }

    /// Whether the step reads the client's address in the request phase (so the chain
    /// resolves it, trusted proxies included, before the steps run). Conservative: only the
    /// steps known not to read it there say no. The access log reads it after the answer and
    /// resolves it then, when nothing resolved it earlier.
    pub fn uses_client_ip(&self) -> bool {
        !matches!(
            self,
            Policy::Cors(_)
                | Policy::SecurityHeaders(_)
                | Policy::AccessLog(_)
                | Policy::Compression(_)
                | Policy::RequestSizeLimit(_)
                | Policy::KeyAuth(_)
                | Policy::BasicAuth(_)
                | Policy::JwtAuth(_)
                | Policy::MtlsAuth(_)
                | Policy::ConsumerRestriction(_)
        ) && !matches!(self, Policy::RateLimit(limit) if !limit.keys_on_client_ip())
    }

    /// Whether the step has anything to do in the response-headers phase.
    pub fn acts_on_response(&self) -> bool {
        matches!(
            self,
            Policy::Cors(_)
                | Policy::SecurityHeaders(_)
                | Policy::Compression(_)
                | Policy::Transform(_)
        ) || matches!(self, Policy::RateLimit(limit) if limit.writes_headers())
    }

    /// About how many headers the step may add to a response: the gateway makes room for
    /// them once instead of letting the header map grow while the chain runs.
    pub fn response_header_room(&self) -> usize {
        match self {
            Policy::Cors(_) => 4,
            Policy::SecurityHeaders(headers) => headers.header_count(),
            Policy::Compression(_) => 2,
            Policy::Transform(_) => 4,
            // RateLimit-* and X-RateLimit-* (`headers: both`) and Retry-After.
            Policy::RateLimit(limit) if limit.writes_headers() => 7,
            _ => 0,
        }
    }

    /// The verdict of a step that decides without waiting (everything but Basic and JWT
    /// auth and Redis-backed limits); `None` sends the caller to [`Policy::on_request`]. The
    /// walker tries this first: a step's future is built only when the step can wait.
    pub fn on_request_now(
        &self,
        session: &mut Session,
        input: &mut RequestInput<'_>,
    ) -> Option<Verdict> {
        Some(match self {
            Policy::KeyAuth(auth) => auth.on_request(session, input),
            Policy::MtlsAuth(auth) => auth.on_request(session, input),
            Policy::ConsumerRestriction(restriction) => restriction.on_request(input),
            Policy::RateLimit(limit) => return limit.on_request_local(session, input),
            Policy::ConcurrencyLimit(limit) => limit.on_request(session, input),
            Policy::Cors(cors) => cors.on_request(session.req_header()),
            Policy::Compression(compression) => {
                compression.on_request(session);
                Verdict::Continue
            }
            Policy::RequestSizeLimit(limit) => limit.on_request(session.req_header()),
            Policy::Transform(transform) => transform.on_request(session.req_header_mut(), input),
            Policy::IpRestriction(restriction) => restriction.on_request(input.client_ip),
            Policy::SecurityHeaders(_) | Policy::AccessLog(_) => Verdict::Continue,
            Policy::BasicAuth(_) | Policy::JwtAuth(_) => return None,
        })
    }

    /// Async for the steps that may wait (Redis, bcrypt on the blocking pool, a JWKS fetch);
    /// the others never reach an await point.
    pub async fn on_request(&self, session: &mut Session, input: &mut RequestInput<'_>) -> Verdict {
        if let Some(verdict) = self.on_request_now(session, input) {
            return verdict;
        }
        match self {
            Policy::BasicAuth(auth) => auth.on_request(session, input).await,
            Policy::JwtAuth(auth) => auth.on_request(session, input).await,
            Policy::RateLimit(limit) => limit.on_request(session, input).await,
            // `on_request_now` decided every other step.
            _ => Verdict::Continue,
        }
    }

    /// Works on the response's parts: the gateway hands the policies a plain header map
    /// (see [`crate::gateway::headers::edit_response`]), so setting a header parses nothing.
    pub fn on_response(
        &self,
        session: &mut Session,
        response: &mut http::response::Parts,
        input: &ResponseInput<'_>,
    ) {
        match self {
            Policy::Cors(cors) => cors.on_response(session.req_header(), response),
            Policy::SecurityHeaders(headers) => headers.on_response(response),
            Policy::Compression(compression) => compression.on_response(session, response),
            Policy::Transform(transform) => {
                transform.on_response(session.req_header(), response, input)
            }
            Policy::RateLimit(limit) => {
                limit.on_response(response, input.state.rate_limit.as_ref())
            }
            Policy::RequestSizeLimit(_)
            | Policy::IpRestriction(_)
            | Policy::AccessLog(_)
            | Policy::KeyAuth(_)
            | Policy::BasicAuth(_)
            | Policy::JwtAuth(_)
            | Policy::MtlsAuth(_)
            | Policy::ConsumerRestriction(_)
            | Policy::ConcurrencyLimit(_) => {}
        }
    }

    /// The settings as the admin API shows them.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Policy::Cors(cors) => cors.describe(),
            Policy::SecurityHeaders(headers) => headers.describe(),
            Policy::Compression(compression) => compression.describe(),
            Policy::RequestSizeLimit(limit) => limit.describe(),
            Policy::Transform(transform) => transform.describe(),
            Policy::IpRestriction(restriction) => restriction.describe(),
            Policy::AccessLog(log) => log.describe(),
            Policy::KeyAuth(auth) => auth.describe(),
            Policy::BasicAuth(auth) => auth.describe(),
            Policy::JwtAuth(auth) => auth.describe(),
            Policy::MtlsAuth(auth) => auth.describe(),
            Policy::ConsumerRestriction(restriction) => restriction.describe(),
            Policy::RateLimit(limit) => limit.describe(),
            Policy::ConcurrencyLimit(limit) => limit.describe(),
        }
    }
}

/// Compiles the built-in policy `kind` named `name` from the `config:` node at `key_path`
/// (absent: the policy's defaults). Errors are recorded in `checker`; `None` when there were
/// any.
pub(crate) fn compile(
    checker: &mut Checker,
    name: &str,
    kind: &str,
    key_path: &str,
) -> Option<Policy> {
    let before = checker.error_count();
    let policy = match kind {
        "cors" => read(checker, key_path).and_then(|config| {
            cors::Cors::compile(config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::Cors)
        }),
        "security_headers" => read(checker, key_path).and_then(|config| {
            security_headers::SecurityHeaders::compile(config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::SecurityHeaders)
        }),
        "compression" => read(checker, key_path).and_then(|config| {
            compression::Compression::compile(config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::Compression)
        }),
        "request_size_limit" | "body_limit" => read(checker, key_path).and_then(|config| {
            body_limit::RequestSizeLimit::compile(config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::RequestSizeLimit)
        }),
        "transform" => read(checker, key_path).and_then(|config| {
            transform::Transform::compile(config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::Transform)
        }),
        "ip_restriction" => read(checker, key_path).and_then(|config| {
            ip_restriction::IpRestriction::compile(config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::IpRestriction)
        }),
        "access_log" => read(checker, key_path).and_then(|config| {
            let base_dir = checker.base_dir().to_path_buf();
            access_log::AccessLog::compile(config, &base_dir, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::AccessLog)
        }),
        "key_auth" => read(checker, key_path).and_then(|config| {
            key_auth::KeyAuth::compile(config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::KeyAuth)
        }),
        "basic_auth" => read(checker, key_path).and_then(|config| {
            let base_dir = checker.base_dir().to_path_buf();
            basic_auth::BasicAuth::compile(config, &base_dir, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::BasicAuth)
        }),
        "jwt_auth" => read(checker, key_path).and_then(|config| {
            let base_dir = checker.base_dir().to_path_buf();
            jwt_auth::JwtAuth::compile(config, &base_dir, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::JwtAuth)
        }),
        "mtls_auth" => read(checker, key_path).and_then(|config| {
            mtls_auth::MtlsAuth::compile(config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::MtlsAuth)
        }),
        "consumer_restriction" => read(checker, key_path).and_then(|config| {
            consumer_restriction::ConsumerRestriction::compile(config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::ConsumerRestriction)
        }),
        "rate_limit" => read(checker, key_path).and_then(|config| {
            rate_limit::RateLimit::compile(name, config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::RateLimit)
        }),
        "concurrency_limit" => read(checker, key_path).and_then(|config| {
            concurrency_limit::ConcurrencyLimit::compile(name, config, &mut |field, message| {
                checker.error(format!("{key_path}.{field}"), message)
            })
            .map(Policy::ConcurrencyLimit)
        }),
        _ => None,
    };
    if checker.error_count() > before {
        None
    } else {
        policy
    }
}

/// The policy's config at `key_path`, or its defaults when the key is absent or empty.
fn read<T: DeserializeOwned + Default>(checker: &mut Checker, key_path: &str) -> Option<T> {
    if checker.is_absent_or_null(key_path) {
        return Some(T::default());
    }
    checker.deserialize(key_path)
}

/// A JSON error answer built by a policy, in the gateway's one error shape.
pub fn local_answer(status: u16, headers: Vec<(String, Bytes)>, body: Bytes) -> LocalResponse {
    LocalResponse::new(status, headers, body)
}

/// Parses a header value written in the config; the message names what was wrong.
pub(crate) fn header_value(text: &str) -> Result<http::HeaderValue, String> {
    http::HeaderValue::from_str(text).map_err(|_| format!("\"{text}\" is not a valid header value"))
}

/// Parses a header name written in the config.
pub(crate) fn header_name(text: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("\"{text}\" is not a valid header name"))
}

/// Request headers of a request, for unit tests of single policies.
#[cfg(test)]
pub(crate) fn test_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> pingora::http::RequestHeader {
    let mut request = pingora::http::RequestHeader::build(method, path.as_bytes(), None).unwrap();
    for (name, value) in headers {
        request.append_header(name.to_string(), *value).unwrap();
    }
    request
}
