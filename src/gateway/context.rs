//! Per-request state carried through the Pingora hooks.

use std::sync::Arc;
use std::time::Instant;

use super::errors::GatewayError;
use super::snapshot::{RouteRuntime, RouteTarget, Snapshot};
use crate::observe::metrics;
use crate::plugin::host::LocalResponse;
use crate::plugin::pipeline::RequestPlugins;
use crate::upstream::bulkhead::BulkheadPermit;
use crate::upstream::endpoint::EndpointLease;
use crate::upstream::retry::{OwnedRequestInFlight, OwnedRetryInFlight};

pub struct RequestContext {
    pub started: Instant,
    /// The snapshot this request runs on, loaded once in `request_filter`.
    pub snapshot: Option<Arc<Snapshot>>,
    pub route_index: Option<usize>,
    /// The route whose chain this request runs, when plugins moved the request to another
    /// route after that chain's request phase (see `crate::gateway::chain`).
    pub chain_route_index: Option<usize>,
    /// Named path parameters of the matched route, for plugins and rewrites.
    pub path_parameters: Vec<(String, String)>,
    /// Path (and query) sent upstream when it differs from the client's; built once, cloned
    /// (cheaply: shared bytes) for each attempt.
    pub upstream_uri: Option<http::Uri>,
    /// The request is a protocol upgrade (WebSocket): no total deadline, long idle timeout.
    pub upgraded: bool,
    /// Kept as a header value: it is sent upstream and back to the client, and a
    /// `HeaderValue` clone shares its bytes instead of copying them.
    pub request_id: http::HeaderValue,
    /// Whether the gateway made `request_id` (see [`super::headers::request_id`]).
    pub request_id_generated: bool,
    /// Endpoints already tried, as a bit set of endpoint indexes.
    pub tried_endpoints: u64,
    pub attempts: u32,
    pub endpoint_index: Option<usize>,
    pub upstream_started: Option<Instant>,
    /// Status of the upstream's response; 0 until one arrives.
    pub upstream_status: u16,
    /// The error to answer with when the hooks give up.
    pub failure: Option<GatewayError>,
    /// The HTTP/1 connection's id, handed from request to request on it.
    pub connection: Option<Box<ConnectionGuard>>,
    pub in_flight: Option<InFlightGuard>,
    /// The endpoint of the current attempt; its outcome is recorded once, then it is dropped.
    pub lease: Option<EndpointLease>,
    pub bulkhead_permit: Option<BulkheadPermit>,
    /// Counts this request against the upstream's retry budget.
    pub budget_request: Option<OwnedRequestInFlight>,
    /// The retry slot taken when a retry was decided.
    pub budget_retry: Option<OwnedRetryInFlight>,
    /// A retry was decided on the upstream's status: the error Pingora sees is ours.
    pub status_retry: bool,
    /// The route's plugins for this request; only on routes that have plugins.
    pub plugins: Option<Box<RequestPlugins>>,
    /// Response body chunks the plugins' body filter has seen (see `trailers`).
    pub response_body_tasks: u32,
    /// A plugin's answer that must be written by `fail_to_proxy` (the upstream was
    /// already connected when the plugin answered).
    pub local_response: Option<LocalResponse>,
    /// The client as the policies see it (see `crate::policy::client_ip`); set when the
    /// route has a chain.
    pub client_ip: Option<std::net::IpAddr>,
    /// Request body bytes counted by the route's size limits.
    pub request_body_bytes: u64,
    /// How long the last upstream attempt took, for the access log.
    pub upstream_elapsed: Option<std::time::Duration>,
    /// What the route's policies hand on (consumer, rate-limit budget, concurrency slots).
    pub policy_state: crate::policy::PolicyState,
    /// The request's trace ids and, when sampled, what its spans record.
    pub trace: crate::observe::tracing::request::RequestTrace,
    /// Which of the route's upstreams a canary route sent the request to.
    pub canary: Option<crate::traffic::canary::CanaryChoice>,
    /// The request and the primary's answer, when this request is mirrored.
    pub shadow: Option<Box<crate::traffic::shadow::ShadowCapture>>,
    /// How the request uses the response cache or coalescing.
    pub cache_use: crate::cache::decide::CacheUse,
    /// When a coalescible request started (wall clock, to compare with when a shared answer
    /// was complete).
    pub coalesce_started: Option<std::time::SystemTime>,
}

impl RequestContext {
    pub fn new() -> RequestContext {
        RequestContext {
            started: Instant::now(),
            snapshot: None,
            route_index: None,
            chain_route_index: None,
            path_parameters: Vec::new(),
            upstream_uri: None,
            upgraded: false,
            request_id: http::HeaderValue::from_static(""),
            request_id_generated: false,
            tried_endpoints: 0,
            attempts: 0,
            endpoint_index: None,
            upstream_started: None,
            upstream_status: 0,
            failure: None,
            connection: None,
            in_flight: None,
            lease: None,
            bulkhead_permit: None,
            budget_request: None,
            budget_retry: None,
            status_retry: false,
            plugins: None,
            response_body_tasks: 0,
            local_response: None,
            client_ip: None,
            request_body_bytes: 0,
            upstream_elapsed: None,
            policy_state: crate::policy::PolicyState::default(),
            trace: crate::observe::tracing::request::RequestTrace::default(),
            canary: None,
            shadow: None,
            cache_use: crate::cache::decide::CacheUse::Off,
            coalesce_started: None,
        }
    }

    pub fn route(&self) -> Option<&RouteRuntime> {
        let snapshot = self.snapshot.as_ref()?;
        snapshot.routes.get(self.route_index?)
    }

    /// The upstream the request goes to: the route's own, or the canary target chosen for it.
    pub fn target(&self) -> Option<&RouteTarget> {
        let route = self.route()?;
        let index = self.canary.map_or(0, |choice| choice.target);
        route.targets.get(index).or_else(|| route.targets.first())
    }

    /// The route whose chain (policies and plugins) this request runs: the route it matched
    /// first, even when a plugin then moved it to another route's upstream.
    pub fn chain_route(&self) -> Option<&RouteRuntime> {
        let snapshot = self.snapshot.as_ref()?;
        snapshot
            .routes
            .get(self.chain_route_index.or(self.route_index)?)
    }
}

impl Default for RequestContext {
    fn default() -> Self {
        Self::new()
    }
}

/// Names an HTTP/1 connection for plugins; Pingora keeps it with the connection between
/// keep-alive requests (`persist_connection_context`). Connections are counted where they
/// are accepted (`crate::gateway::edge`).
pub struct ConnectionGuard {
    /// Numbers connections for plugins (`connection.id`).
    pub id: u64,
}

static NEXT_CONNECTION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl ConnectionGuard {
    pub fn open() -> ConnectionGuard {
        let id = NEXT_CONNECTION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::reopen(id)
    }

    /// A guard for a connection that already has an id (handed between keep-alive requests).
    pub fn reopen(id: u64) -> ConnectionGuard {
        ConnectionGuard { id }
    }
}

/// Counts one request in flight until dropped.
pub struct InFlightGuard(());

impl InFlightGuard {
    pub fn enter() -> InFlightGuard {
        metrics::metrics().requests_in_flight.inc();
        InFlightGuard(())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        metrics::metrics().requests_in_flight.dec();
    }
}
