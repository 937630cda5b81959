//! Serving HTTP/1.1 and h2c on one accepted connection.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use super::handler;
use super::lifecycle::{TaskGuard, WeakTaskGuard};

/// What every connection of one server shares.
pub(super) struct ServerState {
    pub(super) instance: Box<str>,
    /// Checked once at start so that no request has to validate it again.
    pub(super) instance_header: HeaderValue,
    /// Sniffs the HTTP/2 preface, so HTTP/1.1 and h2c share the port.
    http: auto::Builder<TokioExecutor>,
}

/// What a request handler needs to know about the connection it arrived on.
pub(super) struct ConnectionContext {
    pub(super) server: Arc<ServerState>,
    pub(super) local_address: SocketAddr,
    pub(super) remote_address: SocketAddr,
    /// Weak because HTTP/2 handlers, which own no socket, must not hold up `stop`.
    pub(super) task_guard: WeakTaskGuard,
}

impl ServerState {
    pub(super) fn new(instance: &str, instance_header: HeaderValue) -> ServerState {
        let mut http = auto::Builder::new(TokioExecutor::new());
        // hyper's default header read timeout needs a timer to take effect.
        http.http1().keep_alive(true).timer(TokioTimer::new());
        ServerState {
            instance: instance.into(),
            instance_header,
            http,
        }
    }
}

/// Serves one connection until the client closes it or the server stops; stopping drops the
/// connection without a graceful close.
pub(super) async fn serve(
    stream: TcpStream,
    remote_address: SocketAddr,
    server: Arc<ServerState>,
    mut task_guard: TaskGuard,
) {
    // Small echo responses should leave at once rather than wait for Nagle's algorithm.
    if let Err(error) = stream.set_nodelay(true) {
        log::debug!("echo server could not set TCP_NODELAY for {remote_address}: {error}");
    }
    let local_address = match stream.local_addr() {
        Ok(address) => address,
        Err(error) => {
            log::debug!("echo server dropped a connection from {remote_address}: {error}");
            return;
        }
    };
    let context = Arc::new(ConnectionContext {
        server: Arc::clone(&server),
        local_address,
        remote_address,
        task_guard: task_guard.downgrade(),
    });
    let service = service_fn(move |request| handler::handle(request, Arc::clone(&context)));
    let connection = server
        .http
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::select! {
        () = task_guard.stop_requested() => {}
        result = connection => {
            if let Err(error) = result {
                log::debug!("echo connection from {remote_address} ended: {error}");
            }
        }
    }
}
