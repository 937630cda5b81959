//! The control service: a Pingora background service that runs active health checks,
//! reloads the config on SIGHUP, when the file changes or when DNS service discovery sees an
//! upstream's addresses move, and reopens the access log files on SIGHUP or SIGUSR1
//! (logrotate).
//!
//! A reload reads and validates the file off the async threads, builds the next snapshot
//! (reusing unchanged upstream pools), runs the first health round of new pools, and only
//! then publishes it. A file that fails validation is logged with every error and changes
//! nothing. Listener and admin addresses cannot change without a restart: such changes are
//! logged and the old sockets keep serving.

pub mod discovery;
pub mod readiness;
pub mod watch;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::ServiceReadyNotifier;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::config;
use crate::gateway::snapshot::{GatewayState, Snapshot};
use crate::observe::{access_log, metrics};
use crate::plugin;
use crate::plugin::registry::PluginSet;
use crate::plugin::runtime::PluginRuntime;
use crate::upstream::UpstreamPool;
use watch::FileWatch;

pub struct ControlService {
    state: Arc<GatewayState>,
    config_path: PathBuf,
    /// The config file's fingerprint from just before the serving config was read.
    loaded_fingerprint: Option<watch::Fingerprint>,
    /// The streaming service's state, when the config has a `stream:` section.
    stream: Option<crate::stream::service::SharedSlot>,
    /// Woken by the DNS service discovery loops when an upstream's addresses moved.
    discovery_changed: Arc<Notify>,
}

impl ControlService {
    pub fn new(
        state: Arc<GatewayState>,
        config_path: PathBuf,
        loaded_fingerprint: Option<watch::Fingerprint>,
        stream: Option<crate::stream::service::SharedSlot>,
    ) -> ControlService {
        ControlService {
            state,
            config_path,
            loaded_fingerprint,
            stream,
            discovery_changed: Arc::new(Notify::new()),
        }
    }

    /// New auth and router settings apply to new streams; starting or stopping the service
    /// takes a restart.
    fn apply_stream(&self, plan: Option<crate::config::stream::StreamPlan>) {
        match (&self.stream, plan) {
            (Some(slot), Some(plan)) => match slot.get() {
                Some(shared) => shared.apply(plan),
                None => log::warn!("stream: reload skipped, the endpoint is not running"),
            },
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                log::warn!("stream: adding or removing the stream section takes a restart")
            }
        }
    }

    /// Reloads the file. `force` rebuilds even when the text is unchanged, so that SIGHUP
    /// re-resolves endpoint host names.
    async fn reload(&self, reason: &str, force: bool, watch: &mut FileWatch) {
        let path = self.config_path.clone();
        // The watcher already holds the fingerprint that triggered this; a SIGHUP refreshed it.
        let current_plugins = Arc::clone(&self.state.current().plugins);
        // Compiling plugins is CPU-heavy: it runs with the parsing, off the async threads.
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = config::load_file(&path)?;
            let plugins = PluginSet::load(&loaded.validated.plugins, Some(&current_plugins))?;
            Ok::<_, Vec<config::ConfigError>>((loaded, plugins))
        })
        .await;
        let loaded = match loaded {
            Ok(Ok((loaded, plugins))) => (loaded, plugins),
            Ok(Err(errors)) => {
                log::error!(
                    "config reload ({reason}) rejected, {} error(s); the previous config keeps serving:",
                    errors.len()
                );
                for error in &errors {
                    log::error!("  {error}");
                }
                count_reload("failure");
                return;
            }
            Err(join_error) => {
                log::error!("config reload ({reason}) failed: {join_error}");
                count_reload("failure");
                return;
            }
        };
        let (loaded, plugins) = loaded;
        let current = self.state.current();
        if loaded.hash == current.config_hash && !force {
            log::info!("config reload ({reason}): file unchanged");
            count_reload("unchanged");
            return;
        }
        log_restart_required(&current, &loaded);
        self.apply_stream(loaded.validated.stream.clone());
        let next = Arc::new(self.state.prepare(loaded, Arc::new(plugins)));
        let new_pools: Vec<Arc<UpstreamPool>> = next
            .upstreams
            .iter()
            .filter(|pool| !current.upstreams.iter().any(|old| Arc::ptr_eq(old, pool)))
            .cloned()
            .collect();
        first_health_rounds(&new_pools).await;
        self.state.publish(Arc::clone(&next));
        for pool in &new_pools {
            spawn_health_loop(pool);
            discovery::spawn_loop(pool, &self.discovery_changed);
        }
        for plugin in next.plugins.iter() {
            if current
                .plugins
                .get(plugin.name())
                .is_none_or(|old| !Arc::ptr_eq(old, plugin))
            {
                self.spawn_plugin_task(plugin);
            }
        }
        for old in &current.upstreams {
            if !next.upstreams.iter().any(|pool| Arc::ptr_eq(pool, old)) {
                old.retire();
            }
        }
        forget_removed_endpoints(&current, &next);
        watch.set_interval(next.reload_interval);
        log::info!(
            "config reload ({reason}) applied: generation {}, {} routes, {} upstreams ({} new or changed)",
            next.generation,
            next.routes.len(),
            next.upstreams.len(),
            new_pools.len()
        );
        count_reload("success");
    }
}

impl ControlService {
    /// Ticks, queues and root-context calls of `plugin`, until it is unloaded.
    fn spawn_plugin_task(&self, plugin: &Arc<PluginRuntime>) {
        let state = Arc::clone(&self.state);
        let upstreams = Arc::new(move || state.current().upstreams.clone());
        tokio::spawn(plugin::ticker::run(Arc::downgrade(plugin), upstreams));
    }
}

#[async_trait]
impl BackgroundService for ControlService {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready_notifier: ServiceReadyNotifier,
    ) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(stream) => Some(stream),
            Err(error) => {
                log::error!("cannot listen for SIGHUP, reload on signal disabled: {error}");
                None
            }
        };
        // logrotate's postrotate signal when only the logs should move: no config reload.
        let mut user_signal = match signal(SignalKind::user_defined1()) {
            Ok(stream) => Some(stream),
            Err(error) => {
                log::error!(
                    "cannot listen for SIGUSR1, access log reopen on SIGUSR1 disabled: {error}"
                );
                None
            }
        };
        let snapshot = self.state.current();
        first_health_rounds(&snapshot.upstreams).await;
        for pool in &snapshot.upstreams {
            spawn_health_loop(pool);
            discovery::spawn_loop(pool, &self.discovery_changed);
        }
        for plugin in snapshot.plugins.iter() {
            self.spawn_plugin_task(plugin);
        }
        // Proxy listeners depend on this service: they open once upstreams are checked.
        ready_notifier.notify_ready();
        log::info!(
            "gateway ready: {} routes, {} upstreams",
            snapshot.routes.len(),
            snapshot.upstreams.len()
        );
        let mut watch = FileWatch::new(
            self.config_path.clone(),
            snapshot.reload_interval,
            self.loaded_fingerprint.clone(),
        );
        let watching = snapshot.reload_watch;
        drop(snapshot);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async { match hangup.as_mut() { Some(stream) => stream.recv().await, None => std::future::pending().await } } => {
                    // Before the reload, which can take seconds: the writers reopen meanwhile.
                    access_log::reopen_all();
                    watch.refresh();
                    self.reload("SIGHUP", true, &mut watch).await;
                }
                Some(()) = async { match user_signal.as_mut() { Some(stream) => stream.recv().await, None => std::future::pending().await } } => {
                    access_log::reopen_all();
                    log::info!("access logs reopened (SIGUSR1)");
                }
                () = watch.changed(), if watching => {
                    self.reload("file changed", false, &mut watch).await;
                }
                // Forced: the file may be unchanged while the names in it resolve elsewhere.
                () = self.discovery_changed.notified() => {
                    self.reload("service discovery", true, &mut watch).await;
                }
            }
        }
    }
}

/// Runs the first health round of `pools` concurrently, each bounded by its own timeout
/// times its unhealthy threshold so a black-holed endpoint cannot stall a reload.
async fn first_health_rounds(pools: &[Arc<UpstreamPool>]) {
    let rounds = pools.iter().map(|pool| {
        // One probe can take connect + TLS + read, each bounded by the probe timeout.
        let bound = pool.plan.health.as_ref().map_or(Duration::ZERO, |health| {
            let probes = u32::try_from(health.unhealthy_threshold)
                .unwrap_or(u32::MAX)
                .saturating_add(1);
            health.timeout.saturating_mul(3).saturating_mul(probes)
        });
        async move {
            // The first round may take several probes to reach a threshold, so run rounds
            // until the threshold could have been met (healthy endpoints stay healthy).
            let rounds = pool
                .plan
                .health
                .as_ref()
                .map_or(1, |health| health.unhealthy_threshold.max(1));
            let work = async {
                for _ in 0..rounds {
                    pool.run_health_round().await;
                }
            };
            if tokio::time::timeout(bound.saturating_add(Duration::from_secs(1)), work)
                .await
                .is_err()
            {
                log::warn!("upstream {}: first health check round timed out", pool.name);
            }
            pool.mark_first_round_done();
            pool.publish_health_gauges();
        }
    });
    futures_util::future::join_all(rounds).await;
}

/// Checks `pool` every interval for as long as some snapshot still uses it.
fn spawn_health_loop(pool: &Arc<UpstreamPool>) {
    let Some(interval) = pool.plan.health.as_ref().map(|health| health.interval) else {
        return;
    };
    let weak = Arc::downgrade(pool);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(pool) = weak.upgrade().filter(|pool| !pool.is_retired()) else {
                break;
            };
            pool.run_health_round().await;
            pool.publish_health_gauges();
        }
    });
}

fn forget_removed_endpoints(current: &Snapshot, next: &Snapshot) {
    let labels = |snapshot: &Snapshot| -> HashSet<(String, String)> {
        snapshot
            .upstreams
            .iter()
            .flat_map(|pool| {
                pool.endpoints()
                    .iter()
                    .map(|endpoint| (pool.name.to_string(), endpoint.address.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let kept = labels(next);
    for (upstream, endpoint) in labels(current).difference(&kept) {
        metrics::forget_endpoint(upstream, endpoint);
    }
    for pool in &current.upstreams {
        if !next.upstreams.iter().any(|kept| kept.name == pool.name) {
            metrics::forget_upstream(&pool.name);
        }
    }
}

/// Logs changes that a reload cannot apply to running sockets and processes.
fn log_restart_required(current: &Snapshot, next: &config::LoadedConfig) {
    let listeners = |plans: &[config::validate::ListenerPlan]| -> Vec<String> {
        plans
            .iter()
            .map(|listener| {
                format!(
                    "{} {} {:?} {:?}",
                    listener.name, listener.address, listener.protocol, listener.tls
                )
            })
            .collect()
    };
    if listeners(&current.listeners) != listeners(&next.validated.listeners) {
        log::warn!(
            "listener changes need a restart (or a zero-downtime upgrade with -u) to take effect; current listeners keep serving"
        );
    }
    if current.admin_address != next.validated.admin_address {
        log::warn!("admin address change needs a restart to take effect");
    }
    // These server keys are read per connection or per request, so a reload applies them.
    let process_settings = |server: &crate::config::schema::ServerSection| {
        let mut server = server.clone();
        server.request_header_timeout = None;
        server.keepalive_timeout = None;
        server.trusted_proxies.clear();
        server.max_request_header_size = None;
        server
    };
    if process_settings(&current.server) != process_settings(&next.validated.file.server) {
        log::warn!("server section changes need a restart to take effect");
    }
    if current.reload_watch != next.validated.file.reload.watch {
        log::warn!("reload.watch changes need a restart to take effect");
    }
}

fn count_reload(result: &str) {
    metrics::metrics()
        .config_reloads_total
        .with_label_values(&[result])
        .inc();
}
