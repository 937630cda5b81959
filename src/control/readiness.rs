//! Readiness of the proxy listeners, for the admin API's `/ready`.
//!
//! Pingora reports a listening service ready before it has bound its sockets, so this service
//! (started after the listeners) connects to each listener address until all of them accept,
//! then marks the gateway ready. On shutdown it marks it not ready again, so load balancers
//! in front stop sending traffic while the process drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::ServiceReadyNotifier;
use pingora::services::background::BackgroundService;

use crate::gateway::snapshot::GatewayState;

/// How long to wait for the listeners before giving up (and logging why).
const LISTENER_WAIT: Duration = Duration::from_secs(60);

pub struct ListenerReadiness {
    state: Arc<GatewayState>,
    addresses: Vec<SocketAddr>,
}

impl ListenerReadiness {
    /// `addresses` are the listener bind addresses; unspecified IPs are probed on loopback.
    pub fn new(state: Arc<GatewayState>, addresses: Vec<SocketAddr>) -> ListenerReadiness {
        let addresses = addresses
            .into_iter()
            .map(|mut address| {
                if address.ip().is_unspecified() {
                    address.set_ip(if address.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                address
            })
            .collect();
        ListenerReadiness { state, addresses }
    }
}

#[async_trait]
impl BackgroundService for ListenerReadiness {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready_notifier: ServiceReadyNotifier,
    ) {
        ready_notifier.notify_ready();
        let deadline = Instant::now() + LISTENER_WAIT;
        for address in &self.addresses {
            // Retrying a local connect is the only signal Pingora gives that a bind is done.
            while tokio::net::TcpStream::connect(address).await.is_err() {
                if Instant::now() > deadline || *shutdown.borrow() {
                    log::error!(
                        "listener {address} is not accepting connections; /ready stays 503"
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.state.set_listeners_open(true);
        // The stream's UDP port (taken over with SO_REUSEPORT) must serve too before an
        // upgrade counts as done.
        while crate::stream::metrics::installed_readiness() == Some(false) {
            if Instant::now() > deadline || *shutdown.borrow() {
                log::error!("the stream endpoint is not serving; the upgrade is not confirmed");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        crate::control::upgrade::report_serving();
        let _ = shutdown.changed().await;
        self.state.set_listeners_open(false);
    }
}
