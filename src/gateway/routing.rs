//! The routing step of `request_filter`: path normalisation, header-size limit, route match,
//! path parameters and `strip_prefix`.

use std::borrow::Cow;

use pingora::prelude::*;

use super::client_cert::identity_of;
use super::context::RequestContext;
use super::errors::GatewayError;
use super::headers::request_host;
use super::snapshot::Snapshot;
use crate::router::{MatchOutcome, RequestView, normalize_path, strip_static_prefix};

/// Finds the route for the request and records it in `ctx`.
pub fn route_request(
    snapshot: &Snapshot,
    session: &Session,
    ctx: &mut RequestContext,
) -> Result<(), GatewayError> {
    let request = session.req_header();
    if header_block_size(request) > snapshot.max_request_header_size {
        return Err(GatewayError::new(
            431,
            "request_header_fields_too_large",
            "the request headers are larger than the gateway accepts",
        ));
    }
    check_host(session, request)?;
    let raw_path = request.uri.path();
    let path = normalize_path(raw_path).map_err(|error| {
        GatewayError::new(
            400,
            "invalid_path",
            format!("invalid request path: {error}"),
        )
    })?;
    let query = request.uri.query();
    let header_lookup = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    // Looked up at most once, and only if a candidate route has a `client_certificate`
    // condition.
    let certificate = std::cell::OnceCell::new();
    let certificate_lookup = || certificate.get_or_init(|| identity_of(session)).as_deref();
    let view = RequestView {
        // With a cache, a PURGE names a cached URL: it goes where a GET of that URL goes.
        method: if snapshot.cache_store.is_some() && super::caching::is_purge_method(request) {
            "GET"
        } else {
            request.method.as_str()
        },
        host: request_host(request),
        path: &path,
        query,
        headers: &header_lookup,
        client_certificate: &certificate_lookup,
    };
    let matched = match snapshot.router.match_request(&view) {
        MatchOutcome::Matched(matched) => matched,
        MatchOutcome::MethodNotAllowed { allow } => {
            return Err(GatewayError::method_not_allowed(allow));
        }
        MatchOutcome::NotFound => return Err(GatewayError::route_not_found()),
    };
    let route_index = *matched.value;
    ctx.route_index = Some(route_index);
    ctx.path_parameters = matched
        .params
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let strip = snapshot
        .routes
        .get(route_index)
        .is_some_and(|route| route.strip_prefix);
    let upstream_path = rewritten_path(raw_path, &path, strip, matched.static_prefix_len);
    if let Some(mut new_path) = upstream_path {
        if let Some(query) = query {
            new_path.push('?');
            new_path.push_str(query);
        }
        // The path came out of normalisation and the query out of a parsed URI, so this only
        // fails on a bug; answer 400 rather than forward something else.
        let uri = http::Uri::from_maybe_shared(bytes::Bytes::from(new_path)).map_err(|_| {
            GatewayError::new(400, "invalid_path", "the rewritten path is not a valid URI")
        })?;
        ctx.upstream_uri = Some(uri);
    }
    Ok(())
}

/// The path the upstream gets instead of `raw_path`, or `None` when it gets `raw_path` as
/// sent: `path` (the normalised `raw_path`) without the route's static prefix when the route
/// has `strip_prefix`, or just `path` when normalising changed it. The query is not included.
// `path` stays a `Cow` because being `Owned` is how normalisation says it changed the path,
// which spares comparing the two on every request.
#[allow(clippy::ptr_arg)]
pub fn rewritten_path(
    raw_path: &str,
    path: &Cow<'_, str>,
    strip_prefix: bool,
    static_prefix_len: usize,
) -> Option<String> {
    if strip_prefix {
        match strip_static_prefix(path, static_prefix_len) {
            Cow::Borrowed(unchanged) if unchanged.len() == raw_path.len() => None,
            stripped => Some(stripped.into_owned()),
        }
    } else if matches!(path, Cow::Owned(_)) {
        Some(path.to_string())
    } else {
        None
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request must carry exactly one `Host` (HTTP/2 has `:authority`,
/// HTTP/1.0 may omit it).
fn check_host(session: &Session, request: &RequestHeader) -> Result<(), GatewayError> {
    if session.is_http2() || request.version != http::Version::HTTP_11 {
        return Ok(());
    }
    let mut hosts = request.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), None) => Ok(()),
        (None, _) => Err(GatewayError::new(
            400,
            "missing_host",
            "an HTTP/1.1 request needs a Host header",
        )),
        (Some(_), Some(_)) => Err(GatewayError::new(
            400,
            "duplicate_host",
            "the request has more than one Host header",
        )),
    }
}

/// Bytes of the header block as the client sent it (names, values and separators).
fn header_block_size(request: &RequestHeader) -> usize {
    request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}
