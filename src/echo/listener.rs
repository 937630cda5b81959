//! Binding listening sockets and accepting connections on them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use super::connection::{self, ServerState};
use super::lifecycle::TaskGuard;

/// Room for a burst of connections from a load test before the kernel refuses them.
const LISTEN_BACKLOG: u32 = 1024;

/// How long to pause after a failed accept; failures such as running out of file descriptors
/// would otherwise spin the loop at full speed.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Binds `address` with `SO_REUSEADDR`, so that the port of a server that was just stopped can
/// be bound again at once, even while its closed connections linger in `TIME_WAIT`.
pub(super) fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections until the server stops, serving each in a task of its own. The listener
/// is closed when this returns.
pub(super) async fn accept_connections(
    listener: TcpListener,
    server: Arc<ServerState>,
    mut task_guard: TaskGuard,
) {
    loop {
        let accepted = tokio::select! {
            () = task_guard.stop_requested() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote_address)) => {
                tokio::spawn(connection::serve(
                    stream,
                    remote_address,
                    Arc::clone(&server),
                    task_guard.clone(),
                ));
            }
            Err(error) => {
                log::warn!("echo server failed to accept a connection: {error}");
                tokio::select! {
                    () = task_guard.stop_requested() => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}
