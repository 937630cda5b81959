//! What the cache does with a request and with an answer: whether the request uses the cache
//! (GET and HEAD on a caching route, its path covered, no `bypass_header`, no `Authorization`
//! unless allowed), its key, whether and how long an answer is stored, which request headers
//! it varies on, and what `X-Cache` says.

use std::time::{Duration, SystemTime};

use pingora::http::{RequestHeader, ResponseHeader};
use pingora_cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora_cache::key::HashBinary;
use pingora_cache::{
    CacheKey, CacheMeta, CacheMetaDefaults, CachePhase, ForcedFreshness, NoCacheReason,
    RespCacheable, VarianceBuilder,
};

use crate::config::cache::{CachePolicy, CoalescePlan};

/// How a request uses the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// The route does not cache, or not this request's path.
    #[default]
    Off,
    /// Looked up and, on a miss, possibly stored.
    Cache,
    /// A caching route, but this request skips the cache (`bypass_header`, `Authorization`,
    /// a method other than GET and HEAD).
    Bypass,
    /// Joins an identical request in flight, or leads one (`coalesce:`).
    Coalesce,
    /// An allowed `PURGE`.
    Purge,
}

/// Whether `request` may use `policy`'s cache; `Bypass` when the route caches but not this.
pub fn cache_use(policy: &CachePolicy, request: &RequestHeader) -> CacheUse {
    if !policy.covers(request.uri.path()) {
        return CacheUse::Off;
    }
    let method_allowed = matches!(request.method, http::Method::GET | http::Method::HEAD);
    let bypassed = policy
        .bypass_header
        .as_ref()
        .is_some_and(|name| request.headers.contains_key(name));
    let authorized =
        !policy.cache_authorized && request.headers.contains_key(http::header::AUTHORIZATION);
    if method_allowed && !bypassed && !authorized {
        CacheUse::Cache
    } else {
        CacheUse::Bypass
    }
}

/// Whether `request` may be coalesced: GET and HEAD only, which carry no body.
pub fn coalescible(request: &RequestHeader) -> bool {
    matches!(request.method, http::Method::GET | http::Method::HEAD)
}

/// Whose answer a cache entry is, besides its URL: the route that served it and the consumer
/// an auth policy of that route identified. Several routes may share one URL and be told
/// apart by a header, a query parameter or the client certificate, and an answer may be for
/// one consumer only: neither may be served to a request that another route or consumer
/// would have answered. Kong's proxy cache keys by route and consumer the same way.
#[derive(Debug, Clone, Copy)]
pub struct KeyScope<'a> {
    pub route: &'a str,
    pub consumer: Option<&'a str>,
}

/// The cache key: the host and the request target as the client sent them first (so a purge
/// by URL prefix finds every route's and consumer's answer for it), then the scope, then for
/// coalescing the chosen headers. Host names hold no `/` and targets start with one, so the
/// two cannot run together ambiguously; the scope's names are length-prefixed, and header
/// values hold no newline.
pub fn key(
    request: &RequestHeader,
    host: &str,
    scope: KeyScope<'_>,
    coalesce: Option<&CoalescePlan>,
) -> CacheKey {
    let target = request
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str());
    let consumer = scope.consumer.unwrap_or_default();
    let mut primary =
        Vec::with_capacity(host.len() + target.len() + scope.route.len() + consumer.len() + 40);
    primary.extend_from_slice(host.as_bytes());
    primary.extend_from_slice(target.as_bytes());
    let mut push_named = |label: &str, value: &str| {
        primary.extend_from_slice(label.as_bytes());
        push_decimal(&mut primary, value.len());
        primary.push(b':');
        primary.extend_from_slice(value.as_bytes());
    };
    push_named("\nroute=", scope.route);
    if let Some(consumer) = scope.consumer {
        push_named("\nconsumer=", consumer);
    }
    if let Some(plan) = coalesce {
        for name in &plan.headers {
            primary.push(b'\n');
            primary.extend_from_slice(name.as_str().as_bytes());
            for value in request.headers.get_all(name) {
                primary.push(b'=');
                primary.extend_from_slice(value.as_bytes());
            }
        }
    }
    CacheKey::new(primary, "")
}

/// `value` in decimal, without going through the formatting machinery (this runs for every
/// request of a caching route).
fn push_decimal(out: &mut Vec<u8>, value: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Whether an answer is stored, and its freshness: `Cache-Control` (`s-maxage`, `max-age`,
/// `no-store`, `no-cache`, `private`), then `Expires`, then the route's `default_ttl` for the
/// statuses HTTP lets a cache store without explicit freshness.
pub fn cacheable(
    policy: &CachePolicy,
    response: &ResponseHeader,
    request_authorized: bool,
) -> RespCacheable {
    if response.status == http::StatusCode::PARTIAL_CONTENT {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("partial content"));
    }
    if !policy.cache_set_cookie && response.headers.contains_key(http::header::SET_COOKIE) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    let varies_on_everything = response
        .headers
        .get_all(http::header::VARY)
        .iter()
        .any(|value| {
            value
                .as_bytes()
                .split(|byte| *byte == b',')
                .any(|name| name.trim_ascii() == b"*")
        });
    if varies_on_everything {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("vary: *"));
    }
    let cache_control = CacheControl::from_resp_headers(response);
    // Our defaults only fill in the stale windows; freshness from `default_ttl` is below.
    let defaults = CacheMetaDefaults::new(
        |_| None,
        policy.stale_while_revalidate,
        policy.stale_if_error,
    );
    let authorization_present = request_authorized && !policy.cache_authorized;
    let decided = pingora_cache::filters::resp_cacheable(
        cache_control.as_ref(),
        response.clone(),
        authorization_present,
        &defaults,
    );
    let (RespCacheable::Uncacheable(NoCacheReason::OriginNotCache), Some(ttl)) =
        (&decided, policy.default_ttl)
    else {
        return decided;
    };
    let forbidden = authorization_present
        || cache_control
            .as_ref()
            .is_some_and(|control| control.is_cacheable() == Cacheable::No || control.no_cache());
    if forbidden || !heuristically_cacheable(response.status.as_u16()) {
        return decided;
    }
    let now = SystemTime::now();
    let mut header = response.clone();
    if let Some(control) = &cache_control {
        control.strip_private_headers(&mut header);
    }
    RespCacheable::Cacheable(CacheMeta::new(
        now + ttl,
        now,
        policy.stale_while_revalidate,
        policy.stale_if_error,
        header,
    ))
}

/// RFC 9110 §15.1: the statuses a cache may store without explicit freshness.
fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Coalescing stores every complete answer, for just long enough for the requests waiting
/// on it to read it.
pub fn coalesce_cacheable(plan: &CoalescePlan, response: &ResponseHeader) -> RespCacheable {
    let now = SystemTime::now();
    RespCacheable::Cacheable(CacheMeta::new(
        now + plan.timeout + Duration::from_secs(1),
        now,
        0,
        0,
        response.clone(),
    ))
}

/// The variance key from the stored answer's `Vary` and this request's headers.
pub fn variance(meta: &CacheMeta, request: &RequestHeader) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    let mut names: Vec<String> = Vec::new();
    for value in meta.headers().get_all(http::header::VARY) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for name in text.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for name in names {
        let value: Vec<u8> = request
            .headers
            .get_all(name.as_str())
            .iter()
            .flat_map(|value| value.as_bytes().iter().copied().chain([b',']))
            .collect();
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// A coalesced answer is served only to requests that started before it was complete (they
/// waited for it); a later request fetches anew and becomes the next leader.
pub fn coalesced_hit(meta: &CacheMeta, request_started: SystemTime) -> ForcedFreshness {
    if request_started <= meta.updated() {
        ForcedFreshness::ForceFresh
    } else {
        ForcedFreshness::ForceMiss
    }
}

/// `X-Cache` and the metric's result for a request that used the cache.
pub fn result(use_: CacheUse, phase: CachePhase) -> Option<&'static str> {
    match use_ {
        CacheUse::Bypass => Some("BYPASS"),
        CacheUse::Cache => Some(match phase {
            CachePhase::Hit => "HIT",
            CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
            CachePhase::Expired => "EXPIRED",
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
            CachePhase::Bypass | CachePhase::Disabled(_) => "BYPASS",
            _ => "MISS",
        }),
        CacheUse::Off | CacheUse::Coalesce | CacheUse::Purge => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(default_ttl: Option<u64>) -> CachePolicy {
        CachePolicy {
            default_ttl: default_ttl.map(Duration::from_secs),
            stale_while_revalidate: 5,
            stale_if_error: 60,
            included_paths: Vec::new(),
            excluded_paths: vec!["/private/".into()],
            bypass_header: Some(http::HeaderName::from_static("x-no-cache")),
            max_entry_size: 1 << 20,
            lock_timeout: Duration::from_secs(5),
            cache_authorized: false,
            cache_set_cookie: false,
        }
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut response = ResponseHeader::build(status, None).unwrap();
        for (name, value) in headers {
            response.append_header(name.to_string(), *value).unwrap();
        }
        response
    }

    fn fresh_for(decided: RespCacheable) -> Option<u64> {
        match decided {
            RespCacheable::Cacheable(meta) => Some(
                meta.fresh_until()
                    .duration_since(meta.created())
                    .unwrap_or_default()
                    .as_secs(),
            ),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn freshness_comes_from_the_origin_then_the_default() {
        let with_default = policy(Some(30));
        let without = policy(None);
        let fresh =
            |policy: &CachePolicy, status: u16, headers: &[(&str, &str)], authorized: bool| {
                fresh_for(cacheable(policy, &response(status, headers), authorized))
            };
        assert_eq!(
            fresh(
                &with_default,
                200,
                &[("cache-control", "max-age=100")],
                false
            ),
            Some(100)
        );
        assert_eq!(fresh(&with_default, 200, &[], false), Some(30));
        assert_eq!(fresh(&without, 200, &[], false), None);
        assert_eq!(
            fresh(&with_default, 200, &[("cache-control", "no-store")], false),
            None
        );
        assert_eq!(
            fresh(&with_default, 200, &[("cache-control", "private")], false),
            None
        );
        assert_eq!(fresh(&with_default, 500, &[], false), None);
        assert_eq!(
            fresh(&with_default, 200, &[("set-cookie", "a=1")], false),
            None
        );
        assert_eq!(
            fresh(&with_default, 200, &[("vary", "Accept, *")], false),
            None
        );
        // A request with credentials: only what the origin marks public.
        assert_eq!(fresh(&with_default, 200, &[], true), None);
        assert_eq!(
            fresh(
                &with_default,
                200,
                &[("cache-control", "public, max-age=10")],
                true
            ),
            Some(10)
        );
    }

    #[test]
    fn requests_use_the_cache_only_when_allowed() {
        let policy = policy(Some(30));
        let request = |method: &str, path: &str, headers: &[(&str, &str)]| {
            let mut request = RequestHeader::build(method, path.as_bytes(), None).unwrap();
            for (name, value) in headers {
                request.append_header(name.to_string(), *value).unwrap();
            }
            request
        };
        assert_eq!(
            cache_use(&policy, &request("GET", "/a", &[])),
            CacheUse::Cache
        );
        assert_eq!(
            cache_use(&policy, &request("HEAD", "/a", &[])),
            CacheUse::Cache
        );
        assert_eq!(
            cache_use(&policy, &request("POST", "/a", &[])),
            CacheUse::Bypass
        );
        assert_eq!(
            cache_use(&policy, &request("GET", "/a", &[("x-no-cache", "1")])),
            CacheUse::Bypass
        );
        assert_eq!(
            cache_use(
                &policy,
                &request("GET", "/a", &[("authorization", "Bearer x")])
            ),
            CacheUse::Bypass
        );
        assert_eq!(
            cache_use(&policy, &request("GET", "/private/a", &[])),
            CacheUse::Off
        );
    }

    #[test]
    fn keys_hold_host_target_and_chosen_headers() {
        let mut request = RequestHeader::build("GET", b"/a?b=1", None).unwrap();
        request.append_header("x-tenant", "t1").unwrap();
        let scope = KeyScope {
            route: "api",
            consumer: None,
        };
        assert_eq!(
            key(&request, "example.com", scope, None).primary_key(),
            b"example.com/a?b=1\nroute=3:api"
        );
        let alice = KeyScope {
            consumer: Some("alice"),
            ..scope
        };
        let long_route = "r".repeat(1234);
        let long = KeyScope {
            route: &long_route,
            consumer: None,
        };
        assert!(
            key(&request, "example.com", long, None)
                .primary_key()
                .starts_with(b"example.com/a?b=1\nroute=1234:rrr")
        );
        assert_eq!(
            key(&request, "example.com", alice, None).primary_key(),
            b"example.com/a?b=1\nroute=3:api\nconsumer=5:alice"
        );
        let plan = CoalescePlan {
            headers: vec![http::HeaderName::from_static("x-tenant")],
            timeout: Duration::from_secs(1),
            max_body: 1024,
        };
        assert_eq!(
            key(&request, "example.com", scope, Some(&plan)).primary_key(),
            b"example.com/a?b=1\nroute=3:api\nx-tenant=t1"
        );
    }
}
