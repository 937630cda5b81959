//! An upstream's endpoints behind a Pingora `LoadBalancer`, and endpoint selection.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use crate::config::schema::{LoadBalancerAlgorithm, UpstreamProtocol};
use crate::config::validate::{HashKeySource, ResolvedEndpoint, UpstreamPlan};

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
    pub endpoint_index: usize,
    pub peer: Box<HttpPeer>,
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
    first_health_round_done: AtomicBool,
    /// Set when a reload dropped this pool: its health loop stops even while requests that
    /// started on the old snapshot still hold it.
    retired: AtomicBool,
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
                    endpoint.weight as usize
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
            // least_conn and p2c are rejected by validation until they are implemented.
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
        UpstreamPool {
            name: Arc::from(plan.config.name.as_str()),
            first_health_round_done: AtomicBool::new(plan.health.is_none()),
            retired: AtomicBool::new(false),
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

    pub fn hash_key_source(&self) -> Option<&HashKeySource> {
        self.plan.hash_key.as_ref()
    }

    /// Picks a healthy endpoint not in `exclude` (a bit set of endpoint indexes already tried).
    /// `key` feeds the hash algorithms and is ignored by the others.
    pub fn select(&self, key: &[u8], exclude: u64) -> Option<Selection> {
        let accept = |backend: &Backend, healthy: bool| {
            healthy
                && self
                    .index_by_socket
                    .get(&socket_of(backend))
                    .is_some_and(|index| !is_excluded(exclude, *index))
        };
        // Enough iterations to visit every endpoint of a weighted or hashed ring once.
        let max_iterations = 256;
        let backend = match &self.selector {
            Selector::RoundRobin(balancer) => balancer.select_with(key, max_iterations, accept),
            Selector::Random(balancer) => balancer.select_with(key, max_iterations, accept),
            Selector::Consistent(balancer) => balancer.select_with(key, max_iterations, accept),
        }?;
        let endpoint_index = *self.index_by_socket.get(&socket_of(&backend))?;
        let peer = Box::new(self.peer_templates[endpoint_index].clone());
        Some(Selection {
            endpoint_index,
            peer,
        })
    }

    /// Whether the active health check currently counts this endpoint as healthy.
    pub fn is_healthy(&self, endpoint_index: usize) -> bool {
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
pub fn exclude(set: u64, index: usize) -> u64 {
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
    peer
}

use super::health;
use crate::observe::metrics;
