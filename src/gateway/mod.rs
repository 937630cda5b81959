//! The gateway's one `ProxyHttp` implementation. Each hook is a few lines that hand the work
//! to a module; read top to bottom it is the life of a request:
//!
//! 1. `early_request_filter`: connection and in-flight accounting, the config snapshot, the
//!    keep-alive limit, the end of the head deadline ([`edge`]).
//! 2. `request_filter`: request id, route match ([`routing`]), the route chain ([`chain`]).
//! 3. `upstream_peer`: pick an endpoint of the route's upstream (hash key, retries, deadline).
//! 4. `upstream_request_filter`: rewritten path, X-Forwarded-*, hop-by-hop removal ([`headers`]).
//! 5. `response_filter`: X-Request-ID on the response.
//!
//! Caching routes and coalescing ([`caching`], on Pingora's cache) answer from the cache
//! between 2 and 3: `request_cache_filter`, `cache_key_callback`, `cache_hit_filter`, and
//! after the upstream's answer `response_cache_filter` and `cache_vary_filter`.
//!
//! The route's chain ([`chain`]: built-in policies from `crate::policy` and Proxy-Wasm plugins,
//! [`plugins`]) runs in `request_filter` (request headers, in chain order),
//! `request_body_filter` (size limits, then plugins), `response_filter` (in reverse order),
//! `response_body_filter`, `response_trailer_filter` and `logging` (access log, `on_log`).
//! 6. `fail_to_connect` / `error_while_proxy` / `fail_to_proxy`: retries and JSON errors ([`errors`]).
//! 7. `logging`: metrics.

pub mod attempts;
pub mod caching;
pub mod chain;
pub mod client_cert;
pub mod context;
pub mod edge;
pub mod errors;
pub mod headers;
pub mod plugins;
pub mod routing;
pub mod snapshot;
pub mod traffic;
pub mod trailers;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::HttpPeer;
use pingora_cache::key::HashBinary;
use pingora_cache::storage::HitHandler;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, RespCacheable};
use pingora_error::{ErrorType, RetryType};

use crate::config::validate::HashKeySource;
use crate::observe::route_metrics::RouteMetrics;
use crate::observe::tracing::request::{RequestTrace, ServerSummary};
use crate::plugin::pipeline::Trailers;
use crate::upstream::UpstreamPool;
use crate::upstream::endpoint::Outcome;
use crate::upstream::retry::RetryCondition;
use context::{ConnectionGuard, InFlightGuard, RequestContext};
use errors::GatewayError;
use snapshot::GatewayState;

/// Idle limit for upgraded (WebSocket) connections, in each direction.
const UPGRADED_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The proxy application shared by every listener.
#[derive(Clone)]
pub struct Gateway {
    pub state: Arc<GatewayState>,
}

impl Gateway {
    pub fn new(state: Arc<GatewayState>) -> Gateway {
        Gateway { state }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    // Boxed: Pingora copies its per-request future, which holds the context, into a heap box
    // on every request; with a pointer here the copy is about 2.5 KB smaller (callgrind).
    type CTX = Box<RequestContext>;

    fn new_ctx(&self) -> Box<RequestContext> {
        Box::new(RequestContext::new())
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // Pingora's default response compression, switched on per route by the `compression`
        // policy, with the end its brotli encoder forgets to write.
        modules.add_module(Box::new(crate::policy::compression::LoomCompressionBuilder));
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Box<RequestContext>,
        previous: Box<dyn Any + Send + Sync>,
    ) {
        ctx.connection = previous.downcast::<ConnectionGuard>().ok();
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &Box<RequestContext>,
    ) -> Option<Box<dyn Any + Send + Sync>> {
        // Called with a shared reference, so hand over a fresh guard and let the request's
        // own guard drop: the count stays the same across the handover.
        ctx.connection
            .as_ref()
            .map(|guard| Box::new(ConnectionGuard::reopen(guard.id)) as Box<dyn Any + Send + Sync>)
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Box<RequestContext>,
    ) -> Result<()> {
        // The request head is in: the connection's head deadline no longer applies.
        edge::request_started(session);
        ctx.in_flight = Some(InFlightGuard::enter());
        let snapshot = self.state.current();
        // Pingora's own per-read keep-alive limit (60 s) follows `server.keepalive_timeout`;
        // a connection Pingora already decided to close (`Connection: close`) stays closed.
        if let Some(seconds) = snapshot.keepalive_seconds
            && session.get_keepalive().is_some()
        {
            session.set_keepalive(Some(seconds));
        }
        ctx.snapshot = Some(snapshot);
        // HTTP/2 streams share a connection that Pingora does not expose to us; only
        // HTTP/1 connections are counted (see README).
        if ctx.connection.is_none() && !session.is_http2() {
            ctx.connection = Some(Box::new(ConnectionGuard::open()));
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Box<RequestContext>,
    ) -> Result<bool> {
        let snapshot = ctx.snapshot.take().unwrap_or_else(|| self.state.current());
        (ctx.request_id, ctx.request_id_generated) = headers::request_id(session);
        if let Some(plan) = &snapshot.tracing {
            ctx.trace = RequestTrace::start(plan, &session.req_header().headers);
        }
        let outcome = routing::route_request(&snapshot, session, ctx);
        ctx.snapshot = Some(snapshot);
        match outcome {
            Ok(()) => {
                if chain::request_headers(session, ctx).await?
                    || caching::check_purge(session, ctx).await
                {
                    return Ok(true);
                }
                traffic::request_admitted(session, ctx);
                Ok(false)
            }
            Err(error) => {
                errors::respond(session, &error, &ctx.request_id, true).await;
                ctx.failure = Some(error);
                Ok(true)
            }
        }
    }

    fn request_cache_filter(
        &self,
        session: &mut Session,
        ctx: &mut Box<RequestContext>,
    ) -> Result<()> {
        caching::enable(session, ctx);
        Ok(())
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        ctx: &mut Box<RequestContext>,
    ) -> Result<CacheKey> {
        Ok(caching::key(session, ctx))
    }

    fn is_purge(&self, _session: &Session, ctx: &Box<RequestContext>) -> bool {
        ctx.cache_use == crate::cache::decide::CacheUse::Purge
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut Box<RequestContext>,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(caching::hit(meta, ctx))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        response: &ResponseHeader,
        ctx: &mut Box<RequestContext>,
    ) -> Result<RespCacheable> {
        Ok(caching::cacheable(session, response, ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Box<RequestContext>,
        request: &RequestHeader,
    ) -> Option<HashBinary> {
        caching::variance(meta, request)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Box<RequestContext>,
        error: Option<&Error>,
    ) -> bool {
        caching::serve_stale(ctx, error)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Box<RequestContext>,
    ) -> Result<Box<HttpPeer>> {
        let Some(target) = ctx.target() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer without a route",
            ));
        };
        let pool = Arc::clone(&target.pool);
        let timeouts = target.timeouts;
        let per_try_timeout = target.retry.per_try_timeout;
        // A retry replays the body through `request_body_filter`: the size limits count it
        // afresh.
        ctx.request_body_bytes = 0;
        if let Err(error) = attempts::admit(ctx, &pool).await {
            return Err(self.fail(ctx, error));
        }
        let remaining = match timeouts.total {
            Some(total) => match total.checked_sub(ctx.started.elapsed()) {
                Some(remaining) if !remaining.is_zero() => Some(remaining),
                _ => return Err(self.fail(ctx, GatewayError::gateway_timeout())),
            },
            None => None,
        };
        let mut ip_bytes = [0u8; 16];
        let key = hash_key(session, &pool, &mut ip_bytes);
        let selection = match attempts::choose(ctx, &pool, key) {
            Ok(selection) => selection,
            Err(error) => return Err(self.fail(ctx, error)),
        };
        let endpoint = pool.endpoints().get(selection.lease.endpoint_index());
        if let Some(plugins) = ctx.plugins.as_mut() {
            // Formatted only when a plugin reads `upstream.address` (about 1,600 instructions).
            plugins.facts.upstream_address = endpoint.map(|endpoint| endpoint.socket);
            plugins.facts.upstream_name = Some(Arc::clone(&pool.name));
        }
        if ctx.trace.sampled {
            let address = endpoint.map_or("unknown", |endpoint| endpoint.address.as_str());
            ctx.trace
                .attempt_started(ctx.attempts.saturating_sub(1), &pool.name, address);
        }
        ctx.lease = Some(selection.lease);
        let mut peer = selection.peer;
        // The per-try timeout bounds each attempt; the total deadline bounds them all.
        let remaining = match (remaining, per_try_timeout) {
            (Some(remaining), Some(per_try)) => Some(remaining.min(per_try)),
            (remaining, per_try) => remaining.or(per_try),
        };
        apply_timeouts(&mut peer, &timeouts, remaining);
        if session.is_upgrade_req() {
            // An upgraded connection (WebSocket) is long-lived and may sit idle: the route's
            // read/write timeouts and total deadline are for request/response exchanges.
            peer.options.read_timeout = Some(UPGRADED_IDLE_TIMEOUT);
            peer.options.write_timeout = Some(UPGRADED_IDLE_TIMEOUT);
            ctx.upgraded = true;
        }
        Ok(peer)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Box<RequestContext>,
    ) -> Result<()> {
        if let Some(target) = ctx.target() {
            target.pool.count_connection(reused);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Box<RequestContext>,
    ) -> Result<()> {
        if let Some(uri) = &ctx.upstream_uri {
            upstream_request.set_uri(uri.clone());
        }
        let traceparent = ctx.trace.upstream_traceparent().and_then(|traceparent| {
            let value = http::HeaderValue::from_bytes(&traceparent).ok()?;
            Some((value, ctx.trace.starts_trace))
        });
        let host = ctx
            .route()
            .filter(|route| !route.preserve_host)
            .and_then(|_| {
                let index = ctx.endpoint_index?;
                ctx.target()?.pool.endpoints().get(index)
            })
            .map(|endpoint| endpoint.host_header.clone());
        headers::prepare_upstream_request(
            session,
            upstream_request,
            &ctx.request_id,
            traceparent,
            host,
        );
        traffic::upstream_request(upstream_request, ctx);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<RequestContext>,
    ) -> Result<()> {
        let room = ctx
            .chain_route()
            .map_or(0, |route| route.chain.response_header_room);
        headers::prepare_response(upstream_response, room);
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = status;
        traffic::upstream_response(upstream_response, ctx);
        self.check_deadline(ctx)?;
        let condition = RetryCondition::Status(status);
        if ctx
            .target()
            .is_some_and(|target| target.retry.retries_on(condition))
        {
            attempts::finish(ctx, Outcome::Answered(status));
            if attempts::should_retry(session, ctx, condition) {
                ctx.status_retry = true;
                ctx.failure = Some(GatewayError::new(
                    502,
                    "upstream_status",
                    format!("the upstream answered {status} on every attempt"),
                ));
                let mut error =
                    Error::explain(ErrorType::HTTPStatus(status), "retrying upstream status");
                error.set_retry(true);
                return Err(error);
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<RequestContext>,
    ) -> Result<()> {
        chain::request_body(body, ctx)?;
        plugins::request_body(session, body, end_of_stream, ctx).await?;
        traffic::request_body(body, ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<RequestContext>,
    ) -> Result<()> {
        if !chain::response_headers(session, upstream_response, ctx).await? {
            headers::set_response_request_id(upstream_response, &ctx.request_id);
        }
        caching::response(session, upstream_response, ctx)?;
        traffic::response(upstream_response, ctx)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<RequestContext>,
    ) -> Result<Option<Duration>> {
        plugins::response_body(session, body, end_of_stream, ctx).map(|()| None)
    }

    async fn response_trailer_filter(
        &self,
        session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut Box<RequestContext>,
    ) -> Result<Option<Bytes>> {
        // Pingora only logs an error from this hook and sends the trailers anyway, so a
        // failure is handed to the downstream module, which fails the trailers' write.
        match plugins::response_trailers(session, upstream_trailers, ctx) {
            Ok(Trailers::Keep(released)) if released.is_empty() => Ok(None),
            Ok(Trailers::Keep(released)) => {
                trailers::write_before_trailers(session, ctx.response_body_tasks, released).await?;
                Ok(None)
            }
            Ok(Trailers::Replace(body)) => Ok(Some(body)),
            Err(error) => {
                trailers::fail_trailers(session, error);
                Ok(None)
            }
        }
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<RequestContext>,
    ) -> Result<Option<Duration>> {
        traffic::upstream_response_body(body, ctx);
        self.check_deadline(ctx).map(|()| None)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<RequestContext>,
        mut error: Box<Error>,
    ) -> Box<Error> {
        self.record_attempt(ctx, 0, Some(&error));
        attempts::after_failure(session, ctx, &mut error);
        error
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        error: Box<Error>,
        ctx: &mut Box<RequestContext>,
        client_reused: bool,
    ) -> Box<Error> {
        let mut error = error.more_context(format!("peer: {peer}"));
        let status = if ctx.status_retry {
            ctx.upstream_status
        } else {
            0
        };
        self.record_attempt(ctx, status, Some(&error));
        if std::mem::take(&mut ctx.status_retry) {
            // Our own error from upstream_response_filter: the retry is already decided.
            return error;
        }
        // Pingora marks an error "retry only if the connection was reused" when a pooled
        // keep-alive connection turned out to be dead: the endpoint is fine, so it stays
        // eligible and the attempt counts neither as a failure nor as a retry. Every other
        // error goes through the retry policy.
        let stale_connection = matches!(error.retry, RetryType::ReusedOnly)
            && client_reused
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        if stale_connection {
            error.set_retry(true);
            ctx.lease = None;
            if let Some(index) = ctx.endpoint_index {
                ctx.tried_endpoints &= !(1u64.checked_shl(index as u32).unwrap_or(0));
            }
            ctx.attempts = ctx.attempts.saturating_sub(1);
            ctx.failure = Some(GatewayError::from_proxy_error(&error));
            return error;
        }
        attempts::after_failure(session, ctx, &mut error);
        error
    }

    /// Pingora logs every error that ends a request at ERROR ("Fail to proxy"). An answer Loom
    /// chose after the request phase (a plugin's local response, or a refusal of what the
    /// client sent, such as a body over a plugin's buffer) is no fault of the gateway's: it is
    /// in the access log and the metrics, and would otherwise be an ERROR line per request.
    /// The same goes for every failure Loom answers below 500, which also covers a client that
    /// went away (status 0) and a malformed request (400); upstream failures (5xx) are still
    /// logged.
    fn suppress_error_log(
        &self,
        _session: &Session,
        ctx: &Box<RequestContext>,
        _error: &Error,
    ) -> bool {
        ctx.local_response.is_some()
            || ctx
                .failure
                .as_ref()
                .is_some_and(|failure| failure.status < 500)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut Box<RequestContext>,
    ) -> FailToProxy {
        if let Some(local) = ctx.local_response.as_ref() {
            // A plugin answered after the upstream was connected.
            let status = local.status;
            let local = local.clone();
            plugins::write_local_response(session, &local, &ctx.request_id).await;
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let failure = ctx
            .failure
            .clone()
            .unwrap_or_else(|| GatewayError::from_proxy_error(error));
        // Pingora drops the client connection after a proxy failure whatever we answer, so
        // the response must say so.
        let can_reuse_downstream = errors::respond(session, &failure, &ctx.request_id, false).await;
        let error_code = failure.status;
        ctx.failure = Some(failure);
        FailToProxy {
            error_code,
            can_reuse_downstream,
        }
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&Error>,
        ctx: &mut Box<RequestContext>,
    ) {
        let status = session
            .response_written()
            .map(|response| response.status.as_u16())
            .or_else(|| ctx.failure.as_ref().map(|failure| failure.status))
            .unwrap_or(0);
        let route_metrics: &RouteMetrics = match ctx.route() {
            Some(route) => &route.metrics,
            None => RouteMetrics::unmatched(),
        };
        route_metrics.count_request(&session.req_header().method, status);
        // One clock read for the metric and the access log.
        let elapsed = ctx.started.elapsed();
        route_metrics.duration.observe(elapsed.as_secs_f64());
        route_metrics
            .request_body_bytes
            .inc_by(session.body_bytes_read() as u64);
        route_metrics
            .response_body_bytes
            .inc_by(session.body_bytes_sent() as u64);
        if ctx.upstream_started.is_some() {
            self.record_attempt(ctx, ctx.upstream_status, error);
        }
        if ctx.lease.as_ref().is_some_and(|lease| !lease.is_recorded()) {
            match error.and_then(attempts::classify) {
                Some(condition) => attempts::finish(ctx, Outcome::Failed(condition)),
                None if ctx.upstream_status != 0 => {
                    attempts::finish(ctx, Outcome::Answered(ctx.upstream_status))
                }
                // The client went away before the endpoint answered: no verdict on it.
                None => {}
            }
        }
        ctx.lease = None;
        traffic::request_finished(ctx, status, elapsed);
        caching::request_finished(session, ctx);
        chain::log(session, ctx, status, elapsed);
        plugins::finish(session, ctx);
        if ctx.trace.sampled {
            trace_request(session, ctx, status, error);
        }
        // From here the connection waits for its next request: the idle limit applies.
        edge::request_finished(session);
    }
}

impl Gateway {
    /// Records `error` as the answer and turns it into the error Pingora expects.
    fn fail(&self, ctx: &mut RequestContext, error: GatewayError) -> Box<Error> {
        let pingora_error = error.to_pingora();
        ctx.failure = Some(error);
        pingora_error
    }

    /// Enforces the route's total deadline while the response streams.
    fn check_deadline(&self, ctx: &mut RequestContext) -> Result<()> {
        if ctx.upgraded {
            return Ok(());
        }
        let Some(total) = ctx.target().and_then(|target| target.timeouts.total) else {
            return Ok(());
        };
        if ctx.started.elapsed() > total {
            ctx.failure = Some(GatewayError::gateway_timeout());
            return Error::e_explain(ErrorType::ReadTimedout, "route total timeout exceeded");
        }
        Ok(())
    }

    /// Counts one upstream attempt and its duration; `status` 0 means no response.
    fn record_attempt(&self, ctx: &mut RequestContext, status: u16, error: Option<&Error>) {
        let (Some(target), Some(index), Some(started)) =
            (ctx.target(), ctx.endpoint_index, ctx.upstream_started)
        else {
            return;
        };
        target.pool.count_response(index, status);
        let elapsed = started.elapsed();
        target.upstream_duration.observe(elapsed.as_secs_f64());
        ctx.upstream_elapsed = Some(elapsed);
        ctx.upstream_started = None;
        if ctx.trace.sampled {
            let error = error.map(|error| error.etype().as_str());
            ctx.trace.attempt_finished(status, error);
        }
    }
}

/// Builds and queues the spans of a sampled request.
fn trace_request(session: &Session, ctx: &mut RequestContext, status: u16, error: Option<&Error>) {
    // Taken out so the summary can borrow the rest of the context.
    let mut trace = std::mem::take(&mut ctx.trace);
    let request = session.req_header();
    let route = ctx.route();
    let failure_message = ctx.failure.as_ref().map(|failure| failure.code);
    let summary = ServerSummary {
        method: request.method.as_str(),
        route: route.map_or("none", |route| &route.id),
        route_pattern: route.map(|route| route.config.path.as_str()),
        status,
        client: ctx.client_ip.or_else(|| {
            session
                .client_addr()
                .and_then(|address| address.as_inet())
                .map(|address| address.ip())
        }),
        request_id: ctx.request_id.to_str().unwrap_or_default(),
        host: headers::request_host(request),
        path: request.uri.path(),
        user_agent: request
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|value| value.to_str().ok()),
        protocol: if session.is_http2() {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        },
        started: ctx.started,
        error: failure_message.or_else(|| error.map(|error| error.etype().as_str())),
    };
    trace.finish(&summary);
}

/// The key the hash algorithms choose by; borrows from the request, or from `ip_bytes` for
/// the client IP.
fn hash_key<'a>(
    session: &'a Session,
    pool: &'a UpstreamPool,
    ip_bytes: &'a mut [u8; 16],
) -> &'a [u8] {
    let request = session.req_header();
    match pool.hash_key_source() {
        None => b"",
        Some(HashKeySource::ClientIp) => {
            let ip = session
                .client_addr()
                .and_then(|address| address.as_inet())
                .map(|address| address.ip());
            match ip {
                Some(std::net::IpAddr::V4(ip)) => {
                    ip_bytes[..4].copy_from_slice(&ip.octets());
                    &ip_bytes[..4]
                }
                Some(std::net::IpAddr::V6(ip)) => {
                    ip_bytes.copy_from_slice(&ip.octets());
                    &ip_bytes[..]
                }
                None => b"",
            }
        }
        Some(HashKeySource::Path) => request.uri.path().as_bytes(),
        Some(HashKeySource::Header(name)) => request
            .headers
            .get(name.as_str())
            .map_or(&b""[..], |value| value.as_bytes()),
        Some(HashKeySource::Cookie(name)) => headers::cookie_value(request, name)
            .unwrap_or("")
            .as_bytes(),
    }
}

fn apply_timeouts(
    peer: &mut HttpPeer,
    timeouts: &crate::config::validate::EffectiveTimeouts,
    remaining: Option<Duration>,
) {
    let bounded = |limit: Duration| remaining.map_or(limit, |remaining| limit.min(remaining));
    peer.options.connection_timeout = Some(bounded(timeouts.connect));
    peer.options.total_connection_timeout = Some(bounded(timeouts.connect));
    peer.options.read_timeout = Some(bounded(timeouts.read));
    peer.options.write_timeout = Some(bounded(timeouts.write));
}
