//! Ways to run the streaming endpoint: as a Pingora background service inside the gateway
//! (its own runtime, started after daemonizing), or on its own as `loom stream -c FILE`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::metrics;
use super::server::StreamServer;
use super::session::StreamShared;
use crate::config::stream::{self as stream_config, StreamPlan};

/// Where the running service's shared state appears, for config reloads.
pub type SharedSlot = Arc<OnceLock<Arc<StreamShared>>>;

pub struct StreamService {
    plan: StreamPlan,
    slot: SharedSlot,
}

impl StreamService {
    pub fn new(plan: StreamPlan) -> (StreamService, SharedSlot) {
        let slot: SharedSlot = Arc::new(OnceLock::new());
        (
            StreamService {
                plan,
                slot: Arc::clone(&slot),
            },
            slot,
        )
    }
}

#[async_trait]
impl BackgroundService for StreamService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let metrics = metrics::installed();
        let server = match StreamServer::bind(self.plan.clone(), Arc::clone(&metrics)) {
            Ok(server) => server,
            Err(error) => {
                log::error!("stream: {error}; message streaming is not running");
                return;
            }
        };
        let _ = self.slot.set(server.shared());
        metrics.ready.store(true, Ordering::Release);
        server
            .serve(async move {
                let _ = shutdown.changed().await;
            })
            .await;
        metrics.ready.store(false, Ordering::Release);
    }
}

/// Checks that the UDP address can be bound, so a taken port is a startup error rather
/// than a log line from a service thread. (A port held by an older loom with SO_REUSEPORT,
/// as during an upgrade, can be bound.)
pub fn check_can_bind(plan: &StreamPlan) -> std::io::Result<()> {
    super::server::bind_udp(plan.address).map(drop)
}

/// `loom stream -c FILE`: the reference server's drop-in replacement. SIGHUP reloads auth
/// and router settings for new streams; SIGINT/SIGTERM stop.
pub fn run_standalone(path: PathBuf, check_only: bool) -> anyhow::Result<()> {
    let plan = match stream_config::load_standalone(&path) {
        Ok(plan) => plan,
        Err(errors) => {
            crate::config::print_errors(&path, &errors);
            anyhow::bail!("invalid config");
        }
    };
    if check_only {
        println!("{}: config is valid", path.display());
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.worker_threads)
        .enable_all()
        .thread_name("loom-stream")
        .build()?;
    runtime.block_on(async move {
        let metrics = metrics::installed();
        let admin_address = plan.admin_address;
        let server = StreamServer::bind(plan, Arc::clone(&metrics))?;
        if let Some(address) = admin_address {
            let bound = super::admin::spawn(address, Arc::clone(&metrics))
                .await
                .map_err(|error| anyhow::anyhow!("admin listener {address}: {error}"))?;
            log::info!("stream: admin on http://{bound} (/metrics, /healthz, /readyz)");
        }
        let shared = server.shared();
        tokio::spawn(reload_on_sighup(path, shared));
        metrics.ready.store(true, Ordering::Release);
        server.serve(shutdown_signal()).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    log::info!("stream: shutting down");
}

async fn reload_on_sighup(path: PathBuf, shared: Arc<StreamShared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangup.recv().await.is_some() {
        let file = path.clone();
        match tokio::task::spawn_blocking(move || stream_config::load_standalone(&file)).await {
            Ok(Ok(plan)) => {
                shared.apply(plan);
                log::info!("stream: {} reloaded", path.display());
            }
            Ok(Err(errors)) => {
                log::error!(
                    "stream: reload of {} rejected, the previous config keeps serving:",
                    path.display()
                );
                for error in errors {
                    log::error!("  {error}");
                }
            }
            Err(error) => log::error!("stream: reload failed: {error}"),
        }
    }
}
