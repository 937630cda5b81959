//! An HTTP echo backend for tests, demos and load tests.
//!
//! The gateway needs a real upstream to talk to, one that reports exactly what arrived so a test
//! can check what the gateway forwarded, and that can be made slow, failing or large on demand.
//! One port serves HTTP/1.1 and h2c (HTTP/2 with prior knowledge), and upgrades HTTP/1.1
//! WebSocket requests.
//!
//! Routes:
//! - `GET /health` → 200 `{"status":"ok","instance":"..."}`.
//! - `/status/{code}` → the given status (100–999, otherwise 400) with the JSON echo.
//! - `/delay/{ms}` → the JSON echo after `ms` milliseconds (capped at one minute).
//! - `/bytes/{n}` → `n` bytes of a repeated pattern (capped at 100 MiB).
//! - any request with `Upgrade: websocket` → a WebSocket that echoes every message.
//! - anything else → 200 with the JSON echo of the request.
//!
//! Every response carries `x-echo-instance`, so a test can tell which backend answered.

mod body;
mod connection;
mod handler;
mod json;
mod lifecycle;
mod listener;
mod responses;
mod routes;
mod websocket;

#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use connection::ServerState;
use lifecycle::Lifecycle;

/// A running echo server listening on one or more addresses.
///
/// Dropping it without calling [`EchoServer::stop`] also stops it, but without waiting for the
/// listeners to close.
#[derive(Debug)]
pub struct EchoServer {
    addresses: Vec<SocketAddr>,
    lifecycle: Lifecycle,
}

impl EchoServer {
    /// Binds every address (port 0 allowed) and serves on the current tokio runtime. `instance`
    /// names this server in responses.
    ///
    /// All addresses are bound before anything is served, so an error leaves nothing running.
    /// Fails with `InvalidInput` when no address is given or when `instance` cannot be sent as
    /// an HTTP header value.
    pub async fn start(addresses: &[SocketAddr], instance: &str) -> io::Result<EchoServer> {
        if addresses.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an echo server needs at least one address to listen on",
            ));
        }
        let instance_header = HeaderValue::from_str(instance).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the echo instance name must be a valid HTTP header value",
            )
        })?;
        let listeners = addresses
            .iter()
            .map(|address| listener::bind(*address))
            .collect::<io::Result<Vec<_>>>()?;
        let bound_addresses = listeners
            .iter()
            .map(tokio::net::TcpListener::local_addr)
            .collect::<io::Result<Vec<_>>>()?;

        let server = Arc::new(ServerState::new(instance, instance_header));
        let (lifecycle, task_guard) = Lifecycle::new();
        for tcp_listener in listeners {
            tokio::spawn(listener::accept_connections(
                tcp_listener,
                Arc::clone(&server),
                task_guard.clone(),
            ));
        }
        Ok(EchoServer {
            addresses: bound_addresses,
            lifecycle,
        })
    }

    /// The real bound addresses, in the order they were given to [`EchoServer::start`].
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Stops accepting and closes all listeners; open connections are dropped too (so that a
    /// test can "kill" a backend and later start a new one on the same address).
    ///
    /// Returns once every listener, connection and WebSocket socket has been closed.
    pub async fn stop(self) {
        self.lifecycle.stop_and_wait().await;
    }
}
