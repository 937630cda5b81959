//! The one way the running config changes: reloads (SIGHUP, the file watch, DNS discovery)
//! and the admin API's changes all go through a [`Reloader`], one at a time.
//!
//! Either way the config (the YAML and its overlay) is read and validated off the async
//! threads exactly as `loom -t` does, the next snapshot is built reusing unchanged upstream
//! pools, new pools get their first health round, and only then is the snapshot published.
//! A config that fails validation changes nothing. An admin change also writes the overlay
//! (atomically, before publishing), and its caller gets the outcome back.
//!
//! Holding a lock across the whole of a reload or change (a tokio mutex: it is held across
//! health rounds) serializes them: an admin change's preconditions are checked against the
//! config that the previous change left, so of two writers with the same `If-Match` exactly
//! one wins. Requests never take this lock.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{Mutex, Notify};

use super::discovery;
use crate::config::{self, ConfigError, ConfigSources, EffectiveConfig, LoadedConfig, Overlay};
use crate::gateway::snapshot::{GatewayState, Snapshot};
use crate::observe::metrics;
use crate::plugin;
use crate::plugin::registry::PluginSet;
use crate::plugin::runtime::PluginRuntime;
use crate::upstream::UpstreamPool;

pub struct Reloader {
    state: Arc<GatewayState>,
    config_path: PathBuf,
    /// The streaming service's state, when the config has a `stream:` section.
    stream: Option<crate::stream::service::SharedSlot>,
    /// Woken by the DNS service discovery loops when an upstream's addresses moved.
    discovery_changed: Arc<Notify>,
    serial: Mutex<()>,
    /// The control service's runtime. Health, discovery and plugin loops of new pools run
    /// there whichever service asked for the change, so the admin listener's single thread
    /// never carries them.
    runtime: OnceLock<Handle>,
}

/// What became of a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    /// The config read is the one serving (and the reload was not forced).
    Unchanged,
    /// The config has errors (logged); the previous one keeps serving.
    Rejected,
}

/// Why an admin change was not applied. Nothing changed in any of these cases.
#[derive(Debug)]
pub enum ChangeError<T, E> {
    /// The edit refused itself (a failed precondition, an unknown resource, ...).
    Refused(E),
    /// The config with the change does not validate (`outcome` is what the edit returned),
    /// or the config on disk does not already (`outcome` is `None`).
    Invalid {
        errors: Vec<ConfigError>,
        outcome: Option<T>,
    },
    /// The check could not run or the overlay could not be written.
    Failed(String),
}

/// An applied admin change.
pub struct Applied<T> {
    /// What the edit returned.
    pub outcome: T,
    /// The config as it now runs.
    pub effective: Arc<EffectiveConfig>,
    /// The generation of the snapshot serving it.
    pub generation: u64,
}

impl Reloader {
    pub fn new(
        state: Arc<GatewayState>,
        config_path: PathBuf,
        stream: Option<crate::stream::service::SharedSlot>,
    ) -> Reloader {
        Reloader {
            state,
            config_path,
            stream,
            discovery_changed: Arc::new(Notify::new()),
            serial: Mutex::new(()),
            runtime: OnceLock::new(),
        }
    }

    pub fn state(&self) -> &Arc<GatewayState> {
        &self.state
    }

    /// The YAML config file.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Notified when DNS discovery saw an upstream's addresses move.
    pub fn discovery_changed(&self) -> &Notify {
        &self.discovery_changed
    }

    /// Starts serving the first snapshot: its first health rounds, then its loops. Called
    /// once, from the control service, whose runtime later loops are spawned on. Changes
    /// asked for meanwhile wait for it.
    pub async fn start(&self) {
        let _serial = self.serial.lock().await;
        let _ = self.runtime.set(Handle::current());
        let snapshot = self.state.current();
        first_health_rounds(&snapshot.upstreams).await;
        self.spawn_loops(None, &snapshot, &snapshot.upstreams);
    }

    /// Reloads the config files. `force` rebuilds even when the text is unchanged, so that
    /// SIGHUP re-resolves endpoint host names.
    pub async fn reload(&self, reason: &str, force: bool) -> ReloadOutcome {
        let _serial = self.serial.lock().await;
        let path = self.config_path.clone();
        let current_plugins = Arc::clone(&self.state.current().plugins);
        // Compiling plugins is CPU-heavy: it runs with the parsing, off the async threads.
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = config::load_file(&path)?;
            let plugins = load_plugins(&loaded, &current_plugins)?;
            Ok::<_, Vec<ConfigError>>((loaded, plugins))
        })
        .await;
        match loaded {
            Ok(Ok((loaded, plugins))) => {
                if self.apply(loaded, plugins, reason, force).await {
                    ReloadOutcome::Applied
                } else {
                    ReloadOutcome::Unchanged
                }
            }
            Ok(Err(errors)) => {
                log::error!(
                    "config reload ({reason}) rejected, {} error(s); the previous config keeps serving:",
                    errors.len()
                );
                for error in &errors {
                    log::error!("  {error}");
                }
                count_reload("failure");
                ReloadOutcome::Rejected
            }
            Err(join_error) => {
                log::error!("config reload ({reason}) failed: {join_error}");
                count_reload("failure");
                ReloadOutcome::Rejected
            }
        }
    }

    /// Changes the overlay and applies the result. `edit` gets the config as it is on disk
    /// now (YAML and overlay merged) and returns the new overlay, or refuses; the new config
    /// is then validated as `loom -t` would, the overlay written, and the snapshot published.
    pub async fn change<T, E, F>(
        &self,
        reason: &str,
        edit: F,
    ) -> Result<Applied<T>, ChangeError<T, E>>
    where
        F: FnOnce(&EffectiveConfig) -> Result<(Overlay, T), E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let _serial = self.serial.lock().await;
        let path = self.config_path.clone();
        let current_plugins = Arc::clone(&self.state.current().plugins);
        let prepared = tokio::task::spawn_blocking(move || {
            let broken = |errors| ChangeError::Invalid {
                errors,
                outcome: None,
            };
            let mut sources = ConfigSources::read(&path).map_err(broken)?;
            let before = config::inspect(&sources).map_err(broken)?;
            let (overlay, outcome) = edit(&before).map_err(ChangeError::Refused)?;
            let text = overlay.render();
            let unchanged = sources.overlay.as_deref() == Some(text.as_str());
            sources.overlay = Some(text);
            let checked = config::load_sources(&sources).and_then(|loaded| {
                let plugins = load_plugins(&loaded, &current_plugins)?;
                Ok((loaded, plugins))
            });
            let (loaded, plugins) = match checked {
                Ok(checked) => checked,
                Err(errors) => {
                    return Err(ChangeError::Invalid {
                        errors,
                        outcome: Some(outcome),
                    });
                }
            };
            if !unchanged && let Some(text) = &sources.overlay {
                config::atomic_file::replace_with_backup(&sources.overlay_path, text.as_bytes())
                    .map_err(|error| {
                        ChangeError::Failed(format!(
                            "cannot write {}: {error}",
                            sources.overlay_path.display()
                        ))
                    })?;
            }
            Ok((loaded, plugins, outcome))
        })
        .await;
        let (loaded, plugins, outcome) = match prepared {
            Ok(result) => result?,
            Err(join_error) => return Err(ChangeError::Failed(join_error.to_string())),
        };
        let effective = Arc::clone(&loaded.effective);
        self.apply(loaded, plugins, reason, false).await;
        Ok(Applied {
            outcome,
            effective,
            generation: self.state.current().generation,
        })
    }

    /// Publishes `loaded` unless it is the serving config and `force` is off. Returns whether
    /// a new snapshot was published.
    async fn apply(
        &self,
        loaded: LoadedConfig,
        plugins: PluginSet,
        reason: &str,
        force: bool,
    ) -> bool {
        let current = self.state.current();
        if loaded.hash == current.config_hash && !force {
            log::info!("config reload ({reason}): file unchanged");
            count_reload("unchanged");
            return false;
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
        self.spawn_loops(Some(&current), &next, &new_pools);
        for old in &current.upstreams {
            if !next.upstreams.iter().any(|pool| Arc::ptr_eq(pool, old)) {
                old.retire();
            }
        }
        forget_removed_endpoints(&current, &next);
        log::info!(
            "config reload ({reason}) applied: generation {}, {} routes, {} upstreams ({} new or changed)",
            next.generation,
            next.routes.len(),
            next.upstreams.len(),
            new_pools.len()
        );
        count_reload("success");
        true
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

    /// Health and discovery loops of `new_pools`, and tasks of the plugins `previous` did
    /// not have.
    fn spawn_loops(
        &self,
        previous: Option<&Snapshot>,
        next: &Snapshot,
        new_pools: &[Arc<UpstreamPool>],
    ) {
        let _runtime = self.runtime.get().map(Handle::enter);
        for pool in new_pools {
            spawn_health_loop(pool);
            discovery::spawn_loop(pool, &self.discovery_changed);
        }
        for plugin in next.plugins.iter() {
            let known = previous
                .and_then(|previous| previous.plugins.get(plugin.name()))
                .is_some_and(|old| Arc::ptr_eq(old, plugin));
            if !known {
                spawn_plugin_task(&self.state, plugin);
            }
        }
    }
}

/// Loads `loaded`'s plugins, reusing unchanged ones; errors point into the overlay when the
/// plugin came from it.
fn load_plugins(loaded: &LoadedConfig, current: &PluginSet) -> Result<PluginSet, Vec<ConfigError>> {
    PluginSet::load(&loaded.validated.plugins, Some(current)).map_err(|mut errors| {
        loaded.remap_errors(&mut errors);
        errors
    })
}

/// Ticks, queues and root-context calls of `plugin`, until it is unloaded.
fn spawn_plugin_task(state: &Arc<GatewayState>, plugin: &Arc<PluginRuntime>) {
    let state = Arc::clone(state);
    let upstreams = Arc::new(move || state.current().upstreams.clone());
    tokio::spawn(plugin::ticker::run(Arc::downgrade(plugin), upstreams));
}

/// Runs the first health round of `pools` concurrently, each bounded by its own timeout
/// times its unhealthy threshold so a black-holed endpoint cannot stall a reload.
pub async fn first_health_rounds(pools: &[Arc<UpstreamPool>]) {
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
fn log_restart_required(current: &Snapshot, next: &LoadedConfig) {
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
