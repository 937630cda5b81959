//! An upstream's endpoints behind a Pingora `LoadBalancer`, and endpoint selection.
//!
//! Selection skips endpoints that are draining, that the active health check marked down,
//! whose circuit breaker is open, that passive health ejected, that are at their per-endpoint
//! concurrency limit, or that this request already tried. `round_robin`, `weighted`, `random` and the hashes use
//! Pingora's selectors with that filter; `least_conn` and `p2c` choose over our own in-flight
//! counters.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use super::breaker::{CircuitBreaker, Transition};
use super::bulkhead::Bulkhead;
use super::endpoint::{EndpointLease, EndpointState, publish_transition};
use super::outlier::OutlierDetector;
use super::retry::{RetryBudget, RetryCondition};
use crate::config::resilience::FailurePolicy;
use crate::config::schema::{LoadBalancerAlgorithm, UpstreamProtocol};
use crate::config::validate::{HashKeySource, ResolvedEndpoint, UpstreamPlan};
use crate::observe::series::StatusCounters;
use prometheus::IntCounter;

/// Pingora's selectors are distinct types; an enum keeps the rest of the gateway monomorphic.
enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
}

impl Selector {
    fn backends(&self) -> &Backends {
        match self {
            Selector::RoundRobin(balancer) => balancer.backends(),
            Selector::Random(balancer) => balancer.backends(),
            Selector::Consistent(balancer) => balancer.backends(),
        }
    }
}

/// The outcome of choosing an endpoint for one attempt.
pub struct Selection {
    pub lease: EndpointLease,
    pub peer: Box<HttpPeer>,
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectError {
    /// Every endpoint is down, ejected or already tried.
    NoHealthyEndpoint,
    /// Every otherwise usable endpoint has an open circuit breaker.
    AllCircuitsOpen,
    /// Every otherwise usable endpoint is at its concurrency limit.
    Saturated,
}

/// Why one endpoint cannot be chosen right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unselectable {
    /// The active health check counts it as down.
    Unhealthy,
    /// Passive health (outlier detection) took it out for a while.
    Ejected,
    /// Its circuit breaker is open, or half-open with every probe slot taken.
    CircuitOpen,
    /// It is at `max_concurrent_requests_per_endpoint`.
    Saturated,
    /// An admin drained it (`drain: true`): no new requests.
    Draining,
}

impl Unselectable {
    /// The name the admin API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Unselectable::Unhealthy => "unhealthy",
            Unselectable::Ejected => "ejected",
            Unselectable::CircuitOpen => "circuit_open",
            Unselectable::Saturated => "saturated",
            Unselectable::Draining => "draining",
        }
    }
}

impl From<Unselectable> for SelectError {
    fn from(reason: Unselectable) -> SelectError {
        match reason {
            Unselectable::Unhealthy | Unselectable::Ejected | Unselectable::Draining => {
                SelectError::NoHealthyEndpoint
            }
            Unselectable::CircuitOpen => SelectError::AllCircuitsOpen,
            Unselectable::Saturated => SelectError::Saturated,
        }
    }
}

pub struct UpstreamPool {
    pub name: Arc<str>,
    /// The plan this pool was built from; reloads compare it to decide whether to keep the pool.
    pub plan: UpstreamPlan,
    selector: Selector,
    /// The Pingora backend of each endpoint, in config order (health lookups need the exact
    /// backend, weight included).
    backend_list: Vec<Backend>,
    /// Endpoint index by socket address, to map a selected backend back to its config.
    index_by_socket: HashMap<SocketAddr, usize>,
    /// Connection settings shared by every endpoint; cloned per attempt with the address set.
    peer_templates: Vec<HttpPeer>,
    endpoint_states: Vec<EndpointState>,
    /// What the breaker and passive health count as failures.
    failure_policy: FailurePolicy,
    outlier: Option<OutlierDetector>,
    pub budget: Arc<RetryBudget>,
    pub bulkhead: Bulkhead,
    /// Rotates the starting point of `least_conn` scans so ties spread evenly.
    scan_offset: AtomicUsize,
    first_health_round_done: AtomicBool,
    /// Set when a reload dropped this pool: its health loop stops even while requests that
    /// started on the old snapshot still hold it.
    retired: AtomicBool,
    /// `loom_upstream_connections_total{upstream, reused}`: reused and newly opened.
    connections_reused: IntCounter,
    connections_opened: IntCounter,
    /// Pooled connections for plugin callouts to this upstream (`proxy_http_call`,
    /// `proxy_grpc_call`), opened on first use.
    pub callouts: crate::plugin::callout_client::CalloutClients,
}

impl UpstreamPool {
    pub fn new(plan: UpstreamPlan) -> UpstreamPool {
        // round_robin ignores weights (sequential); weighted, random and the hashes use them.
        let ignore_weights = plan.config.load_balancer == LoadBalancerAlgorithm::RoundRobin;
        let backend_list: Vec<Backend> = plan
            .endpoints
            .iter()
            .map(|endpoint| {
                let mut backend = Backend::new(&endpoint.socket.to_string())
                    .unwrap_or_else(|_| unreachable!("a SocketAddr always formats as ip:port"));
                backend.weight = if ignore_weights {
                    1
                } else {
                    // More points per endpoint on the hash ring when Go Loom's `replicas` asks
                    // for them; the shares of the endpoints stay the same.
                    (endpoint.weight as usize).saturating_mul(plan.ring_weight_multiplier as usize)
                };
                backend
            })
            .collect();
        let backends: BTreeSet<Backend> = backend_list.iter().cloned().collect();
        let make_backends = || Backends::new(Static::new(backends.clone()));
        let selector = match plan.config.load_balancer {
            LoadBalancerAlgorithm::RoundRobin | LoadBalancerAlgorithm::Weighted => {
                Selector::RoundRobin(LoadBalancer::from_backends(make_backends()))
            }
            LoadBalancerAlgorithm::Random => {
                Selector::Random(LoadBalancer::from_backends(make_backends()))
            }
            // least_conn and p2c choose over our own counters (see `choose`); the Pingora
            // selector still carries the health state.
            LoadBalancerAlgorithm::ConsistentHash
            | LoadBalancerAlgorithm::IpHash
            | LoadBalancerAlgorithm::LeastConn
            | LoadBalancerAlgorithm::P2c => {
                Selector::Consistent(LoadBalancer::from_backends(make_backends()))
            }
        };
        // Static discovery answers at once, so the first update never waits.
        let update = match &selector {
            Selector::RoundRobin(balancer) => balancer.update().now_or_never(),
            Selector::Random(balancer) => balancer.update().now_or_never(),
            Selector::Consistent(balancer) => balancer.update().now_or_never(),
        };
        if !matches!(update, Some(Ok(()))) {
            log::error!(
                "upstream {}: static endpoint list did not load",
                plan.config.name
            );
        }
        let mut selector = selector;
        if let Some(check) = health::build_check(&plan) {
            set_health_check(&mut selector, check);
        }
        let index_by_socket = plan
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, endpoint)| (endpoint.socket, index))
            .collect();
        let peer_templates = plan
            .endpoints
            .iter()
            .map(|endpoint| peer_template(&plan, endpoint))
            .collect();
        let resilience = &plan.resilience;
        let metrics = metrics::metrics();
        let endpoint_states = plan
            .endpoints
            .iter()
            .map(|endpoint| EndpointState {
                draining: AtomicBool::new(endpoint.drain),
                responses: StatusCounters::new(
                    &metrics.upstream_requests_total,
                    &[&plan.config.name, &endpoint.address],
                ),
                in_flight: Default::default(),
                breaker: resilience
                    .breaker
                    .as_ref()
                    .map(|(settings, _)| CircuitBreaker::new(settings.clone())),
            })
            .collect();
        let failure_policy = resilience
            .breaker
            .as_ref()
            .map(|(_, policy)| policy.clone())
            .unwrap_or_default();
        let outlier = resilience
            .outlier
            .as_ref()
            .map(|settings| OutlierDetector::new(plan.endpoints.len(), settings.clone()));
        let budget = Arc::new(RetryBudget::new(
            resilience.budget_percent,
            resilience.min_retry_concurrency,
        ));
        let bulkhead = Bulkhead::new(
            &plan.config.name,
            resilience.bulkhead.max_concurrent_requests,
            resilience.bulkhead.queue_timeout,
            resilience.bulkhead.max_waiting,
        );
        if resilience.breaker.is_some() {
            for endpoint in &plan.endpoints {
                metrics::set_breaker_state(&plan.config.name, &endpoint.address, 0);
            }
        }
        UpstreamPool {
            name: Arc::from(plan.config.name.as_str()),
            endpoint_states,
            failure_policy,
            outlier,
            budget,
            bulkhead,
            scan_offset: AtomicUsize::new(0),
            first_health_round_done: AtomicBool::new(plan.health.is_none()),
            retired: AtomicBool::new(false),
            connections_reused: metrics
                .upstream_connections_total
                .with_label_values(&[&plan.config.name, "true"]),
            connections_opened: metrics
                .upstream_connections_total
                .with_label_values(&[&plan.config.name, "false"]),
            callouts: Default::default(),
            plan,
            selector,
            backend_list,
            index_by_socket,
            peer_templates,
        }
    }

    pub fn endpoints(&self) -> &[ResolvedEndpoint] {
        &self.plan.endpoints
    }

    /// Whether endpoint `index` is draining now.
    pub fn is_draining(&self, index: usize) -> bool {
        self.endpoint_states
            .get(index)
            .is_some_and(|state| state.draining.load(Ordering::Relaxed))
    }

    /// Takes `plan`'s drain settings; `plan` must be this pool's apart from them
    /// ([`UpstreamPlan::same_but_drain`]).
    pub fn apply_drain(&self, plan: &UpstreamPlan) {
        for (state, endpoint) in self.endpoint_states.iter().zip(&plan.endpoints) {
            state.draining.store(endpoint.drain, Ordering::Relaxed);
        }
    }

    /// Counts an attempt's answer (`status` 0: none) for endpoint `index`.
    pub fn count_response(&self, index: usize, status: u16) {
        if let Some(state) = self.endpoint_states.get(index) {
            state.responses.increment(status);
        }
    }

    /// Counts the connection an attempt went out on.
    pub fn count_connection(&self, reused: bool) {
        if reused {
            self.connections_reused.inc();
        } else {
            self.connections_opened.inc();
        }
    }

    pub fn hash_key_source(&self) -> Option<&HashKeySource> {
        self.plan.hash_key.as_ref()
    }

    /// Picks an endpoint not in `exclude` (a bit set of endpoint indexes already tried) and
    /// takes a lease on it. `key` feeds the hash algorithms and is ignored by the others.
    pub fn select(self: &Arc<Self>, key: &[u8], exclude: u64) -> Result<Selection, SelectError> {
        let now = Instant::now();
        let mut refused = exclude;
        // An endpoint can fill its last probe slot or concurrency slot between the check and
        // the lease; try the next choice then, at most once per endpoint.
        for _ in 0..=self.endpoint_states.len() {
            let Some(index) = self.choose(key, refused, now) else {
                break;
            };
            refused = exclude_index(refused, index);
            let limit = self
                .plan
                .resilience
                .bulkhead
                .max_concurrent_requests_per_endpoint;
            let Some(mut lease) = EndpointLease::try_new(Arc::clone(self), index, limit) else {
                continue;
            };
            if let Some(breaker) = self.endpoint_states[index].breaker.as_ref() {
                let (admission, transition) = breaker.try_acquire(now);
                if let Some(transition) = transition {
                    self.report_transition(index, transition);
                }
                if admission.is_none() {
                    continue;
                }
                lease.set_admission(admission);
            }
            let peer = Box::new(self.peer_templates[index].clone());
            return Ok(Selection { lease, peer });
        }
        // Explained against what the request excluded, not what lost a race just now.
        Err(self.explain_no_choice(exclude, now))
    }

    /// Whether any endpoint could take a request now; the error says why none can. Checked
    /// before a request queues on the bulkhead, so that an outage answers at once.
    pub fn availability(&self) -> Result<(), SelectError> {
        let now = Instant::now();
        let usable = (0..self.endpoint_states.len())
            .any(|index| self.is_healthy(index) && self.admits(index, now).is_ok());
        if usable {
            Ok(())
        } else {
            Err(self.explain_no_choice(0, now))
        }
    }

    /// Whether the endpoint at `index` could be chosen now, by the checks selection makes
    /// (active health first, then [`UpstreamPool::admits`]); for the admin API.
    pub fn selectable(&self, index: usize, now: Instant) -> Result<(), Unselectable> {
        if !self.is_healthy(index) {
            return Err(Unselectable::Unhealthy);
        }
        self.admits(index, now)
    }

    /// Whether `index` may take a request now, apart from active health and exclusion.
    fn admits(&self, index: usize, now: Instant) -> Result<(), Unselectable> {
        let Some(state) = self.endpoint_states.get(index) else {
            return Err(Unselectable::Unhealthy);
        };
        // A draining endpoint counts as down for new requests; the ones it has finish.
        if state.draining.load(Ordering::Relaxed) {
            return Err(Unselectable::Draining);
        }
        if self
            .outlier
            .as_ref()
            .is_some_and(|outlier| outlier.is_ejected(index, now))
        {
            return Err(Unselectable::Ejected);
        }
        if let Some(limit) = self
            .plan
            .resilience
            .bulkhead
            .max_concurrent_requests_per_endpoint
            && state.in_flight.load(Ordering::Relaxed) >= u64::from(limit)
        {
            return Err(Unselectable::Saturated);
        }
        if state
            .breaker
            .as_ref()
            .is_some_and(|breaker| !breaker.is_available(now))
        {
            return Err(Unselectable::CircuitOpen);
        }
        Ok(())
    }

    fn choose(&self, key: &[u8], exclude: u64, now: Instant) -> Option<usize> {
        // Pingora's selectors pass the active-health verdict in; only our own counters
        // choose without it.
        let admissible =
            |index: usize| !is_excluded(exclude, index) && self.admits(index, now).is_ok();
        let usable = |index: usize| admissible(index) && self.is_healthy(index);
        // During an outage nothing is admissible: say so without walking Pingora's ring.
        if !(0..self.endpoint_states.len()).any(admissible) {
            return None;
        }
        // One endpoint: nothing to balance, and every algorithm picks it when it is usable;
        // Pingora's selector would walk its ring to find it (about 1,500 instructions).
        if self.endpoint_states.len() == 1 {
            return usable(0).then_some(0);
        }
        match self.plan.config.load_balancer {
            LoadBalancerAlgorithm::LeastConn => self.least_connections(&usable),
            LoadBalancerAlgorithm::P2c => self.power_of_two_choices(&usable),
            _ => {
                let accept = |backend: &Backend, healthy: bool| {
                    healthy
                        && self
                            .index_by_socket
                            .get(&socket_of(backend))
                            .is_some_and(|index| admissible(*index))
                };
                // Enough iterations to visit every endpoint of a weighted or hashed ring once.
                let max_iterations = 256;
                let backend = match &self.selector {
                    Selector::RoundRobin(balancer) => {
                        balancer.select_with(key, max_iterations, accept)
                    }
                    Selector::Random(balancer) => balancer.select_with(key, max_iterations, accept),
                    Selector::Consistent(balancer) => {
                        balancer.select_with(key, max_iterations, accept)
                    }
                };
                backend.and_then(|backend| self.index_by_socket.get(&socket_of(&backend)).copied())
            }
        }
    }

    /// The most telling reason nothing was usable: open breakers and saturation are reported
    /// only when they are what stands between the request and an otherwise usable endpoint.
    fn explain_no_choice(&self, exclude: u64, now: Instant) -> SelectError {
        let reasons: Vec<SelectError> = (0..self.endpoint_states.len())
            .filter(|index| !is_excluded(exclude, *index) && self.is_healthy(*index))
            .filter_map(|index| self.admits(index, now).err().map(SelectError::from))
            .collect();
        if reasons.is_empty() {
            SelectError::NoHealthyEndpoint
        } else if reasons.contains(&SelectError::Saturated) {
            SelectError::Saturated
        } else if reasons
            .iter()
            .all(|reason| *reason == SelectError::AllCircuitsOpen)
        {
            SelectError::AllCircuitsOpen
        } else {
            SelectError::NoHealthyEndpoint
        }
    }

    /// Fewest requests in flight relative to weight; ties go round the endpoints in turn.
    fn least_connections(&self, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let count = self.endpoint_states.len();
        let start = self.scan_offset.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|step| (start + step) % count)
            .filter(|index| usable(*index))
            .min_by_key(|index| self.load_score(*index))
    }

    /// Two distinct random usable endpoints; the less loaded one wins. Draws at random
    /// (no allocation) and falls back to a scan when unusable endpoints keep coming up.
    fn power_of_two_choices(&self, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let count = self.endpoint_states.len();
        let mut picks: [Option<usize>; 2] = [None, None];
        for _ in 0..count.saturating_mul(2) {
            let candidate = fastrand::usize(..count.max(1));
            if picks[0] == Some(candidate) || !usable(candidate) {
                continue;
            }
            if picks[0].is_none() {
                picks[0] = Some(candidate);
            } else {
                picks[1] = Some(candidate);
                break;
            }
        }
        match picks {
            [Some(first), Some(second)] => {
                Some(if self.load_score(second) < self.load_score(first) {
                    second
                } else {
                    first
                })
            }
            _ => self.least_connections(usable),
        }
    }

    /// In-flight requests per unit of weight, scaled to stay an integer.
    fn load_score(&self, index: usize) -> u64 {
        let in_flight = self.endpoint_states[index]
            .in_flight
            .load(Ordering::Relaxed);
        let weight = u64::from(self.plan.endpoints[index].weight.max(1));
        in_flight.saturating_mul(1_000_000) / weight
    }

    pub fn endpoint_state(&self, index: usize) -> Option<&EndpointState> {
        self.endpoint_states.get(index)
    }

    pub(super) fn counts_as_failure(&self, condition: RetryCondition) -> bool {
        self.failure_policy.counts(condition)
    }

    pub(super) fn report_transition(&self, index: usize, transition: Transition) {
        if let Some(endpoint) = self.plan.endpoints.get(index) {
            publish_transition(&self.name, &endpoint.address, transition);
        }
    }

    pub(super) fn record_passive(&self, index: usize, success: bool, now: Instant) {
        let Some(outlier) = &self.outlier else {
            return;
        };
        if let Some(ejection) = outlier.record(index, success, now) {
            let endpoint = self
                .plan
                .endpoints
                .get(index)
                .map_or("unknown", |endpoint| endpoint.address.as_str());
            log::warn!(
                "upstream {}: endpoint {endpoint} ejected for {:?} (ejection {})",
                self.name,
                ejection.duration,
                ejection.count
            );
            metrics::count_ejection(&self.name, endpoint);
        }
    }

    pub fn outlier(&self) -> Option<&OutlierDetector> {
        self.outlier.as_ref()
    }

    /// Closes an endpoint's breaker and lifts its ejection (admin API). Returns false for an
    /// unknown address.
    pub fn reset_endpoint(&self, address: &str) -> bool {
        let Some(index) = self
            .plan
            .endpoints
            .iter()
            .position(|endpoint| endpoint.address == address)
        else {
            return false;
        };
        if let Some(breaker) = &self.endpoint_states[index].breaker
            && let Some(transition) = breaker.reset(Instant::now())
        {
            self.report_transition(index, transition);
        }
        if let Some(outlier) = &self.outlier {
            outlier.reset(index);
        }
        true
    }

    /// Whether the active health check currently counts this endpoint as healthy.
    pub fn is_healthy(&self, endpoint_index: usize) -> bool {
        // Without active checks nothing changes Pingora's verdict (every backend starts
        // healthy and Loom never disables one there: draining is its own flag), so the
        // lookup, which hashes the backend twice (about 330 instructions, on every
        // selection), is skipped.
        if self.plan.health.is_none() {
            return endpoint_index < self.backend_list.len();
        }
        self.backend_list
            .get(endpoint_index)
            .is_some_and(|backend| self.selector.backends().ready(backend))
    }

    /// Runs one round of active health checks over every endpoint.
    pub async fn run_health_round(&self) {
        if self.plan.health.is_some() {
            self.selector.backends().run_health_check(true).await;
        }
    }

    /// Readiness: set once the first round has run (or timed out) before traffic arrives.
    pub fn mark_first_round_done(&self) {
        self.first_health_round_done.store(true, Ordering::Release);
    }

    /// Exports every endpoint's current health as `loom_upstream_endpoint_healthy`.
    pub fn publish_health_gauges(&self) {
        if self.plan.health.is_none() {
            return;
        }
        for (index, endpoint) in self.plan.endpoints.iter().enumerate() {
            metrics::set_endpoint_health(&self.name, &endpoint.address, self.is_healthy(index));
        }
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub fn first_health_round_done(&self) -> bool {
        self.first_health_round_done.load(Ordering::Acquire)
    }
}

fn set_health_check(
    selector: &mut Selector,
    check: Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync>,
) {
    match selector {
        Selector::RoundRobin(balancer) => balancer.set_health_check(check),
        Selector::Random(balancer) => balancer.set_health_check(check),
        Selector::Consistent(balancer) => balancer.set_health_check(check),
    }
}

fn is_excluded(exclude: u64, index: usize) -> bool {
    index < 64 && exclude & (1 << index) != 0
}

/// Marks `index` as tried in an exclusion set for [`UpstreamPool::select`].
pub fn exclude_index(set: u64, index: usize) -> u64 {
    if index < 64 { set | (1 << index) } else { set }
}

fn socket_of(backend: &Backend) -> SocketAddr {
    match &backend.addr {
        pingora::protocols::l4::socket::SocketAddr::Inet(address) => *address,
        // Endpoints are always TCP addresses; a Unix socket cannot come out of the config.
        pingora::protocols::l4::socket::SocketAddr::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
    }
}

fn peer_template(plan: &UpstreamPlan, endpoint: &ResolvedEndpoint) -> HttpPeer {
    let tls = plan.config.tls.as_ref().filter(|tls| tls.enabled);
    let sni = tls
        .and_then(|tls| tls.sni.clone())
        .unwrap_or_else(|| endpoint.host.clone());
    let mut peer = HttpPeer::new(endpoint.socket, tls.is_some(), sni);
    let options = &mut peer.options;
    options.connection_timeout = Some(plan.connect_timeout);
    options.read_timeout = Some(plan.read_timeout);
    options.write_timeout = Some(plan.write_timeout);
    if let Some(tls) = tls {
        options.verify_cert = tls.verify;
        options.verify_hostname = tls.verify;
    }
    options.alpn = match (plan.config.protocol, tls.is_some()) {
        (UpstreamProtocol::Http2, _) => ALPN::H2,
        (UpstreamProtocol::Http1, _) => ALPN::H1,
        (UpstreamProtocol::Auto, true) => ALPN::H2H1,
        (UpstreamProtocol::Auto, false) => ALPN::H1,
    };
    // For HTTP/1 upstreams Loom strips the standard hop-by-hop fields itself, in one pass
    // over the request's names (`gateway::headers::strip_hop_by_hop`); Pingora's stripping
    // removes ten names one by one on every request, about 1,900 instructions. Its handling
    // of `Connection`-nominated fields and of upgrades stays on. HTTP/2 upstreams keep
    // Pingora's whole policy: there `Connection` and `Upgrade` must go too.
    if options.alpn == ALPN::H1 {
        options.http_upstream_request_policy.strip_hop_by_hop = false;
    }
    peer
}

use super::health;
use crate::observe::metrics;

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;

    fn pool(load_balancer: &str, endpoints: &str) -> Arc<UpstreamPool> {
        let text = format!(
            "listeners: [{{name: http, address: \"127.0.0.1:18080\"}}]\nupstreams:\n  - name: pool\n    \
             load_balancer: {load_balancer}\n    endpoints: {endpoints}\n"
        );
        let mut validated = match crate::config::load_text(Path::new("loom.yaml"), &text) {
            Ok(validated) => validated,
            Err(errors) => panic!("{errors:?}"),
        };
        Arc::new(UpstreamPool::new(validated.upstreams.remove(0)))
    }

    #[test]
    fn a_draining_endpoint_gets_no_new_request_under_any_algorithm() {
        let endpoints = "[\"127.0.0.1:3001\", {address: \"127.0.0.1:3002\", weight: 5, drain: true}, \
                         \"127.0.0.1:3003\"]";
        for algorithm in [
            "round_robin",
            "weighted",
            "random",
            "consistent_hash",
            "least_conn",
            "p2c",
        ] {
            let pool = pool(algorithm, endpoints);
            for attempt in 0..200u32 {
                let selection = match pool.select(&attempt.to_le_bytes(), 0) {
                    Ok(selection) => selection,
                    Err(error) => panic!("{algorithm}: {error:?}"),
                };
                assert_ne!(selection.lease.endpoint_index(), 1, "{algorithm}");
            }
        }
        // Every endpoint draining: nothing is available, for the same reason as all down.
        let pool = pool(
            "round_robin",
            "[{address: \"127.0.0.1:3001\", drain: true}]",
        );
        assert_eq!(pool.availability(), Err(SelectError::NoHealthyEndpoint));
        assert!(matches!(
            pool.select(b"", 0),
            Err(SelectError::NoHealthyEndpoint)
        ));
    }
}
