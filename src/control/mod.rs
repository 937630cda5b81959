//! The control service: a Pingora background service that starts the first snapshot's
//! health checks, reloads the config on SIGHUP, when the file changes or when DNS service
//! discovery sees an upstream's addresses move, writes automatic canary rollbacks to the
//! config overlay, and reopens the access log files on SIGHUP
//! or SIGUSR1 (logrotate).
//!
//! Reloads go through the [`Reloader`], the same one the admin API changes the config with.
//! Listener and admin addresses cannot change without a restart: such changes are logged and
//! the old sockets keep serving.

pub mod discovery;
pub mod readiness;
pub mod reloader;
pub mod upgrade;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::ServiceReadyNotifier;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};

use crate::observe::access_log;
pub use reloader::{Reloader, first_health_rounds};
use watch::FileWatch;

pub struct ControlService {
    reloader: Arc<Reloader>,
    config_path: PathBuf,
    /// The config file's fingerprint from just before the serving config was read.
    loaded_fingerprint: Option<watch::Fingerprint>,
}

impl ControlService {
    pub fn new(
        reloader: Arc<Reloader>,
        config_path: PathBuf,
        loaded_fingerprint: Option<watch::Fingerprint>,
    ) -> ControlService {
        ControlService {
            reloader,
            config_path,
            loaded_fingerprint,
        }
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
        self.reloader.start().await;
        // Proxy listeners depend on this service: they open once upstreams are checked.
        ready_notifier.notify_ready();
        let snapshot = self.reloader.state().current();
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
        let mut cleanup_every = snapshot.cache_cleanup_interval;
        let mut cleanup = cache_cleanup_timer(cleanup_every);
        drop(snapshot);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = cleanup.tick(), if cleanup_every.is_some() => crate::cache::drop_expired(),
                Some(()) = async { match hangup.as_mut() { Some(stream) => stream.recv().await, None => std::future::pending().await } } => {
                    // Before the reload, which can take seconds: the writers reopen meanwhile.
                    access_log::reopen_all();
                    watch.refresh();
                    self.reloader.reload("SIGHUP", true).await;
                }
                Some(()) = async { match user_signal.as_mut() { Some(stream) => stream.recv().await, None => std::future::pending().await } } => {
                    access_log::reopen_all();
                    log::info!("access logs reopened (SIGUSR1)");
                }
                () = watch.changed(), if watching => {
                    self.reloader.reload("file changed", false).await;
                }
                // An automatic canary rollback is in effect already; this writes it down.
                () = crate::traffic::canary_analysis::rollback_requested() => {
                    for (route, upstream) in crate::traffic::canary_analysis::take_pending_rollbacks() {
                        crate::admin::canary::persist_rollback(&self.reloader, route, upstream).await;
                    }
                }
                // Forced: the file may be unchanged while the names in it resolve elsewhere.
                () = self.reloader.discovery_changed().notified() => {
                    self.reloader.reload("service discovery", true).await;
                }
            }
            // A reload or an admin change may have brought a new `reload.interval` or
            // `cache.cleanup_interval`.
            let snapshot = self.reloader.state().current();
            watch.set_interval(snapshot.reload_interval);
            if snapshot.cache_cleanup_interval != cleanup_every {
                cleanup_every = snapshot.cache_cleanup_interval;
                cleanup = cache_cleanup_timer(cleanup_every);
            }
        }
    }
}

/// Ticks every `cache.cleanup_interval` (first after one interval); an hour when there is
/// no cache, where it is not polled.
fn cache_cleanup_timer(every: Option<std::time::Duration>) -> tokio::time::Interval {
    let period = every.unwrap_or(std::time::Duration::from_secs(3600));
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}
