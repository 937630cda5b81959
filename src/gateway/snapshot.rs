//! The runtime config snapshot: router, routes and upstream pools built from one validated
//! config, swapped atomically on reload. A request loads the current snapshot once and keeps
//! its `Arc` to the end, so requests in flight finish on the config they started with.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use prometheus::Histogram;

use super::chain::RouteChain;
use crate::config::LoadedConfig;
use crate::config::schema::{PrometheusConfig, RouteConfig};
use crate::config::validate::{EffectiveTimeouts, ListenerPlan};
use crate::observe::metrics;
use crate::observe::route_metrics::RouteMetrics;
use crate::plugin::registry::PluginSet;
use crate::policy::client_ip::Cidr;
use crate::router::Router;
use crate::traffic::canary::Canary;
use crate::traffic::shadow::Shadow;
use crate::upstream::UpstreamPool;
use crate::upstream::retry::RetryPolicy;

/// One upstream a route's requests can go to: its own, or a canary target.
pub struct RouteTarget {
    pub pool: Arc<UpstreamPool>,
    /// The route's timeouts over this upstream's.
    pub timeouts: EffectiveTimeouts,
    /// The route's retry policy, or this upstream's.
    pub retry: RetryPolicy,
    /// Pre-resolved `loom_upstream_duration_seconds{upstream}`.
    pub upstream_duration: Histogram,
}

/// What a matched request needs about its route.
pub struct RouteRuntime {
    pub id: Arc<str>,
    /// `id` as the access log writes it.
    pub id_json: crate::observe::access_log::JsonText,
    /// The route's own upstream (the stable version when it has a canary).
    pub upstream: Arc<UpstreamPool>,
    /// Where its requests can go: `targets[0]` is `upstream`, then the canary targets.
    pub targets: Vec<RouteTarget>,
    /// The weighted split among `targets`, when the route has `canary:`.
    pub canary: Option<Canary>,
    /// Requests mirrored to another upstream, when the route has `shadow:`.
    pub shadow: Option<Shadow>,
    /// How the route caches, when it does.
    pub cache: Option<Arc<crate::config::cache::CachePolicy>>,
    /// How identical requests in flight share one upstream request, when they do.
    pub coalesce: Option<crate::config::cache::CoalescePlan>,
    /// The route's `loom_cache_*` series, when it caches or coalesces.
    pub cache_counters: Option<Arc<crate::cache::metrics::RouteCacheCounters>>,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    /// The route's metric handles (requests, duration, bytes), kept across reloads.
    pub metrics: Arc<RouteMetrics>,
    /// The route's built-in policies and plugins, in request order.
    pub chain: RouteChain,
    /// The route as configured, for the admin API.
    pub config: RouteConfig,
    /// `metadata:`, shared with the plugins of every request (Envoy's route metadata).
    pub metadata: Arc<std::collections::BTreeMap<String, String>>,
}

pub struct Snapshot {
    pub generation: u64,
    pub config_path: PathBuf,
    pub config_hash: String,
    pub loaded_at: SystemTime,
    pub router: Router<usize>,
    pub routes: Vec<RouteRuntime>,
    pub upstreams: Vec<Arc<UpstreamPool>>,
    pub plugins: Arc<PluginSet>,
    pub listeners: Vec<ListenerPlan>,
    pub admin_address: Option<std::net::SocketAddr>,
    pub prometheus: PrometheusConfig,
    pub max_request_header_size: usize,
    pub reload_watch: bool,
    pub reload_interval: std::time::Duration,
    /// The process settings this snapshot was loaded with (changes need a restart).
    pub server: crate::config::schema::ServerSection,
    /// `server.trusted_proxies`: whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// `server.keepalive_timeout` in whole seconds (at least 1), when it is set.
    pub keepalive_seconds: Option<u64>,
    /// Some route matches on request headers: a plugin's header write may then change the
    /// route (otherwise only its `:path`, `:authority`, `:method` or `Host` can).
    pub routes_match_headers: bool,
    /// The global access logs, which also record requests no route matched.
    pub global_access_logs: Vec<Arc<crate::policy::PolicyStep>>,
    /// Who may use the admin API, when Go Loom's `admin.auth` or `admin.tokens` is set; a
    /// reload applies it to the next admin request.
    pub admin_auth: Option<crate::admin::auth::AdminAuthPlan>,
    /// `tracing:` when it is on; requests decide sampling with it.
    pub tracing: Option<Arc<crate::observe::tracing::TracingPlan>>,
    /// `metrics.opentelemetry:` when it is on.
    pub metrics_push: Option<crate::observe::metrics_push::MetricsPushPlan>,
    /// The config this snapshot runs (YAML and overlay) in JSON, with its revisions: what the
    /// admin API shows and hands out as `ETag`s.
    pub effective: Arc<crate::config::EffectiveConfig>,
    /// The response cache's store, when some route caches.
    pub cache_store: Option<&'static dyn crate::cache::storage::CacheStore>,
    /// `cache.purge_allowed`: who may send `PURGE`.
    pub purge_allowed: Vec<Cidr>,
    /// `cache.cleanup_interval`, when there is a store.
    pub cache_cleanup_interval: Option<std::time::Duration>,
}

impl Snapshot {
    /// Builds a snapshot, reusing `previous`'s pool for every upstream whose plan is
    /// unchanged so its health state and connections carry over.
    pub fn build(
        loaded: LoadedConfig,
        plugins: Arc<PluginSet>,
        previous: Option<&Snapshot>,
        generation: u64,
    ) -> Snapshot {
        let validated = loaded.validated;
        let upstreams: Vec<Arc<UpstreamPool>> = validated
            .upstreams
            .into_iter()
            .map(|plan| {
                previous
                    .and_then(|snapshot| {
                        // A pool whose plan is unchanged, or changed only in which endpoints
                        // drain, keeps serving (with its breakers, ejections and health).
                        let reused = snapshot
                            .upstreams
                            .iter()
                            .find(|pool| pool.plan == plan)
                            .or_else(|| {
                                snapshot
                                    .upstreams
                                    .iter()
                                    .find(|pool| pool.plan.same_but_drain(&plan))
                            })?;
                        reused.apply_drain(&plan);
                        Some(Arc::clone(reused))
                    })
                    .unwrap_or_else(|| Arc::new(UpstreamPool::new(plan)))
            })
            .collect();
        let routes: Vec<RouteRuntime> = validated
            .routes
            .into_iter()
            .map(|plan| {
                let id: Arc<str> = Arc::from(plan.config.id.as_str());
                let previous_route = previous
                    .and_then(|snapshot| snapshot.routes.iter().find(|route| route.id == id));
                let upstream = Arc::clone(&upstreams[plan.upstream_index]);
                let target = |pool: &Arc<UpstreamPool>, timeouts: EffectiveTimeouts| RouteTarget {
                    pool: Arc::clone(pool),
                    timeouts,
                    retry: plan
                        .retry
                        .clone()
                        .unwrap_or_else(|| pool.plan.resilience.retry.clone()),
                    upstream_duration: metrics::upstream_duration(&pool.name),
                };
                let mut targets = vec![target(&upstream, plan.timeouts)];
                let canary = plan.canary.as_ref().map(|canary| {
                    for canary_target in &canary.targets {
                        targets.push(target(
                            &upstreams[canary_target.upstream_index],
                            canary_target.timeouts,
                        ));
                    }
                    let names = targets
                        .iter()
                        .map(|target| Arc::clone(&target.pool.name))
                        .collect();
                    Canary::new(
                        &id,
                        canary,
                        names,
                        previous_route.and_then(|route| route.canary.as_ref()),
                    )
                });
                let shadow = plan.shadow.as_ref().map(|shadow| {
                    Shadow::new(
                        &id,
                        shadow,
                        Arc::clone(&upstreams[shadow.upstream_index]),
                        previous_route.and_then(|route| route.shadow.as_ref()),
                    )
                });
                let cache_counters = (plan.cache.is_some() || plan.coalesce.is_some())
                    .then(|| Arc::new(crate::cache::metrics::RouteCacheCounters::new(&id)));
                RouteRuntime {
                    metrics: RouteMetrics::for_route(&id),
                    id_json: crate::observe::access_log::JsonText::new(&id),
                    id,
                    upstream,
                    targets,
                    canary,
                    shadow,
                    cache_counters,
                    cache: plan.cache.clone(),
                    coalesce: plan.coalesce.clone(),
                    strip_prefix: plan.config.strip_prefix,
                    preserve_host: plan.config.preserve_host,
                    chain: RouteChain::build(&plan.chain, &plugins),
                    metadata: Arc::new(plan.config.metadata.clone()),
                    config: plan.config.clone(),
                }
            })
            .collect();
        let routes_match_headers = routes.iter().any(|route| !route.config.headers.is_empty());
        Snapshot {
            generation,
            config_path: loaded.path,
            config_hash: loaded.hash,
            loaded_at: SystemTime::now(),
            router: validated.router,
            routes,
            upstreams,
            plugins,
            listeners: validated.listeners,
            admin_address: validated.admin_address,
            prometheus: validated.file.metrics.prometheus,
            max_request_header_size: validated.max_request_header_size,
            reload_watch: validated.file.reload.watch,
            reload_interval: validated.file.reload.interval.0,
            keepalive_seconds: validated
                .file
                .server
                .keepalive_timeout
                .map(|timeout| timeout.0.as_secs().max(1)),
            routes_match_headers,
            global_access_logs: validated
                .global_policies
                .iter()
                .filter(|step| {
                    matches!(&step.policy, crate::policy::Policy::AccessLog(log) if log.is_enabled())
                })
                .inspect(|step| {
                    if let crate::policy::Policy::AccessLog(log) = &step.policy {
                        log.open();
                    }
                })
                .cloned()
                .collect(),
            server: validated.file.server,
            trusted_proxies: validated.trusted_proxies,
            admin_auth: validated.admin_auth,
            tracing: validated.tracing.map(Arc::new),
            metrics_push: validated.metrics_push,
            effective: loaded.effective,
            cache_store: validated.cache_store.as_ref().map(crate::cache::store),
            purge_allowed: validated
                .cache_store
                .as_ref()
                .map(|plan| plan.purge_allowed.clone())
                .unwrap_or_default(),
            cache_cleanup_interval: validated
                .cache_store
                .as_ref()
                .map(|plan| plan.cleanup_interval),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.upstreams
            .iter()
            .all(|pool| pool.first_health_round_done())
    }
}

/// State shared by the proxy, the admin API and the control service.
pub struct GatewayState {
    current: ArcSwap<Snapshot>,
    next_generation: AtomicU64,
    /// Every proxy listener accepts connections (and the process is not shutting down).
    listeners_open: AtomicBool,
    pub started_at: Instant,
}

impl GatewayState {
    pub fn new(loaded: LoadedConfig, plugins: Arc<PluginSet>) -> GatewayState {
        metrics::metrics().config_generation.set(1);
        GatewayState {
            current: ArcSwap::from_pointee(Snapshot::build(loaded, plugins, None, 1)),
            next_generation: AtomicU64::new(2),
            listeners_open: AtomicBool::new(false),
            started_at: Instant::now(),
        }
    }

    /// The snapshot new requests use. Lock-free.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds the next snapshot from `loaded`, reusing unchanged pools of the current one.
    /// It is not visible to requests until [`GatewayState::publish`].
    pub fn prepare(&self, loaded: LoadedConfig, plugins: Arc<PluginSet>) -> Snapshot {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        Snapshot::build(loaded, plugins, Some(&self.current.load()), generation)
    }

    pub fn set_listeners_open(&self, open: bool) {
        self.listeners_open.store(open, Ordering::Release);
    }

    pub fn listeners_open(&self) -> bool {
        self.listeners_open.load(Ordering::Acquire)
    }

    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        metrics::metrics()
            .config_generation
            .set(snapshot.generation as i64);
        self.current.store(snapshot);
    }
}
