//! The request's part in the response cache and in coalescing ([`crate::cache`]): Pingora's
//! cache hooks, `PURGE`, `X-Cache` and the counting.

use std::time::SystemTime;

use pingora::prelude::*;
use pingora_cache::CacheOptionOverrides;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, NoCacheReason, RespCacheable};

use super::context::RequestContext;
use super::errors::{self, GatewayError};
use super::headers::request_host;
use crate::cache::decide::{self, CacheUse};

/// The method that removes a URL from the cache.
const PURGE: &str = "PURGE";

pub fn is_purge_method(request: &RequestHeader) -> bool {
    request.method.as_str() == PURGE
}

/// After the chain let a `PURGE` through: when the gateway caches, refused unless the client
/// is in `cache.purge_allowed`. Returns `true` when it answered.
pub async fn check_purge(session: &mut Session, ctx: &mut RequestContext) -> bool {
    // Without a cache, PURGE is an ordinary method, proxied like any other (to a cache
    // behind the gateway, say).
    let caching = ctx
        .snapshot
        .as_deref()
        .is_some_and(|snapshot| snapshot.cache_store.is_some());
    if !caching || !is_purge_method(session.req_header()) {
        return false;
    }
    let allowed = ctx.snapshot.as_deref().is_some_and(|snapshot| {
        // Behind a trusted proxy the client is the one X-Forwarded-For names.
        let client = ctx
            .client_ip
            .or_else(|| crate::policy::client_ip::of_session(session, &snapshot.trusted_proxies));
        snapshot.cache_store.is_some()
            && client.is_some_and(|client| {
                snapshot
                    .purge_allowed
                    .iter()
                    .any(|cidr| cidr.contains(client))
            })
    });
    if allowed {
        ctx.cache_use = CacheUse::Purge;
        return false;
    }
    let error = GatewayError::new(
        403,
        "purge_forbidden",
        "PURGE is allowed only from the addresses in cache.purge_allowed",
    );
    errors::respond(session, &error, &ctx.request_id, true).await;
    ctx.failure = Some(error);
    true
}

/// `request_cache_filter`: switches Pingora's cache on for requests that use it.
pub fn enable(session: &mut Session, ctx: &mut RequestContext) {
    let Some(route) = ctx.route() else {
        return;
    };
    if ctx.cache_use == CacheUse::Purge {
        if let Some(store) = ctx
            .snapshot
            .as_deref()
            .and_then(|snapshot| snapshot.cache_store)
        {
            session.cache.enable(store, None, None, None, None);
        }
        return;
    }
    if let Some(policy) = &route.cache {
        let use_ = decide::cache_use(policy, session.req_header());
        let store = ctx
            .snapshot
            .as_deref()
            .and_then(|snapshot| snapshot.cache_store);
        if let (CacheUse::Cache, Some(store)) = (use_, store) {
            let mut overrides = CacheOptionOverrides::default();
            overrides.wait_timeout = Some(policy.lock_timeout);
            session.cache.enable(
                store,
                None,
                None,
                Some(crate::cache::lock()),
                Some(overrides),
            );
            session.cache.set_max_file_size_bytes(policy.max_entry_size);
        }
        ctx.cache_use = use_;
    } else if let Some(plan) = &route.coalesce
        && decide::coalescible(session.req_header())
    {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(plan.timeout);
        overrides.max_lock_retries = Some(1);
        session.cache.enable(
            crate::cache::coalesce_store(),
            None,
            None,
            Some(crate::cache::lock()),
            Some(overrides),
        );
        session
            .cache
            .set_max_file_size_bytes(plan.max_body as usize);
        ctx.cache_use = CacheUse::Coalesce;
        ctx.coalesce_started = Some(SystemTime::now());
    }
}

/// `cache_key_callback`.
pub fn key(session: &Session, ctx: &RequestContext) -> CacheKey {
    let request = session.req_header();
    let coalesce = ctx
        .route()
        .filter(|_| ctx.cache_use == CacheUse::Coalesce)
        .and_then(|route| route.coalesce.as_ref());
    let scope = decide::KeyScope {
        route: ctx.route().map_or("", |route| &route.id),
        consumer: ctx.policy_state.consumer.as_deref(),
    };
    decide::key(
        request,
        request_host(request).unwrap_or_default(),
        scope,
        coalesce,
    )
}

/// `cache_hit_filter`: a coalesced answer only for the requests that waited for it.
pub fn hit(meta: &CacheMeta, ctx: &RequestContext) -> Option<ForcedFreshness> {
    match (ctx.cache_use, ctx.coalesce_started) {
        (CacheUse::Coalesce, Some(started)) => Some(decide::coalesced_hit(meta, started)),
        _ => None,
    }
}

/// `response_cache_filter`.
pub fn cacheable(
    session: &Session,
    response: &ResponseHeader,
    ctx: &RequestContext,
) -> RespCacheable {
    let Some(route) = ctx.route() else {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("no route"));
    };
    match ctx.cache_use {
        CacheUse::Cache => match &route.cache {
            Some(policy) => decide::cacheable(
                policy,
                response,
                session
                    .req_header()
                    .headers
                    .contains_key(http::header::AUTHORIZATION),
            ),
            None => RespCacheable::Uncacheable(NoCacheReason::Custom("no cache policy")),
        },
        CacheUse::Coalesce => match &route.coalesce {
            Some(plan) => decide::coalesce_cacheable(plan, response),
            None => RespCacheable::Uncacheable(NoCacheReason::Custom("no coalescing")),
        },
        _ => RespCacheable::Uncacheable(NoCacheReason::Custom("not cached")),
    }
}

/// `cache_vary_filter`.
pub fn variance(meta: &CacheMeta, request: &RequestHeader) -> Option<HashBinary> {
    decide::variance(meta, request)
}

/// `should_serve_stale`: within the stored answer's windows (its `stale-while-revalidate`
/// and `stale-if-error`, or the route's defaults), a stale answer is served while it is
/// refreshed in the background, and when the upstream fails or answers 5xx.
pub fn serve_stale(ctx: &RequestContext, error: Option<&Error>) -> bool {
    if ctx.cache_use != CacheUse::Cache {
        return false;
    }
    match error {
        None => true,
        Some(error) => matches!(error.esource(), pingora_error::ErrorSource::Upstream),
    }
}

/// `X-Cache` on the answer, for requests on caching routes.
pub fn response(
    session: &Session,
    response: &mut ResponseHeader,
    ctx: &RequestContext,
) -> Result<()> {
    if let Some(result) = decide::result(ctx.cache_use, session.cache.phase()) {
        response.insert_header("x-cache", result)?;
    }
    Ok(())
}

/// The logging phase: the cache result and coalesced requests are counted.
pub fn request_finished(session: &Session, ctx: &RequestContext) {
    let Some(counters) = ctx
        .route()
        .and_then(|route| route.cache_counters.as_deref())
    else {
        return;
    };
    let phase = session.cache.phase();
    match ctx.cache_use {
        CacheUse::Coalesce if phase == pingora_cache::CachePhase::Hit => counters.coalesced.inc(),
        use_ => {
            if let Some(result) = decide::result(use_, phase) {
                counters.of(result).inc();
            }
        }
    }
}
