//! The streaming endpoint: one UDP socket, one QUIC endpoint, and per connection either raw
//! Loom streams (ALPN `loom/1`) or HTTP/3 requests (ALPN `h3`, `POST /stream`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::io::{StreamReader, StreamWriter};
use super::metrics::StreamMetrics;
use super::reader::FrameReader;
use super::session::{self, Peer, StreamShared, Transport};
use super::tls;
use crate::config::stream::StreamPlan;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot bind UDP {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("QUIC setup failed: {0}")]
    Setup(String),
}

pub struct StreamServer {
    endpoint: quinn::Endpoint,
    shared: Arc<StreamShared>,
}

/// Binds the UDP socket with SO_REUSEPORT: during a `loom -u` upgrade the new process binds
/// the port while the old one still holds it. (Connections the old process held end with
/// it; Loom clients reconnect.)
pub fn bind_udp(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        // `[::]` serves IPv4 too, as Go's ":4242" does.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&address.into())?;
    Ok(socket.into())
}

fn transport_config(plan: &StreamPlan) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(plan.keep_alive));
    if let Ok(idle) = quinn::IdleTimeout::try_from(plan.idle_timeout) {
        transport.max_idle_timeout(Some(idle));
    }
    transport.max_concurrent_bidi_streams(
        quinn::VarInt::from_u64(plan.max_streams_per_connection).unwrap_or(quinn::VarInt::MAX),
    );
    // The stream window is what a producer may send beyond what the server has read, and so
    // what can pile up in quinn's reassembly buffer, split by lost packets, towards the 1,024
    // pieces at which quinn aborts the connection ("too many gaps"). It is kept small; the
    // producer read-ahead (`stream::producer`) keeps the pipe full from the server's side.
    let window = |bytes: u64| quinn::VarInt::from_u64(bytes).unwrap_or(quinn::VarInt::MAX);
    transport.stream_receive_window(window(plan.stream_receive_window));
    transport.receive_window(window(plan.connection_receive_window));
    transport.send_window(32 << 20);
    transport
}

impl StreamServer {
    /// Builds TLS and binds the UDP socket; call inside a Tokio runtime.
    pub fn bind(
        plan: StreamPlan,
        metrics: Arc<StreamMetrics>,
    ) -> Result<StreamServer, ServerError> {
        let tls = tls::server_config(&plan.tls)?;
        if tls.self_signed {
            log::warn!(
                "stream: no certificate configured; generated a self-signed one, SHA-256 fingerprint {}",
                tls.fingerprint
            );
        } else {
            log::info!(
                "stream: certificate SHA-256 fingerprint {}",
                tls.fingerprint
            );
        }
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::clone(&tls.config))
            .map_err(|error| ServerError::Setup(error.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(Arc::new(transport_config(&plan)));
        let bind_error = |source| ServerError::Bind {
            address: plan.address,
            source,
        };
        let socket = bind_udp(plan.address).map_err(bind_error)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| ServerError::Setup("no async runtime for QUIC".into()))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(bind_error)?;
        Ok(StreamServer {
            endpoint,
            shared: Arc::new(StreamShared::new(plan, metrics)),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn shared(&self) -> Arc<StreamShared> {
        Arc::clone(&self.shared)
    }

    /// Serves until `shutdown` completes, then closes every connection.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let address = self.local_addr().ok();
        log::info!(
            "stream: serving Loom v4 on udp {} (ALPN loom/1 and h3)",
            address
                .map(|address| address.to_string())
                .unwrap_or_default()
        );
        let sweeper = tokio::spawn(sweep_rooms(Arc::clone(&self.shared)));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    tokio::spawn(handle_connection(incoming, Arc::clone(&self.shared)));
                }
                () = &mut shutdown => break,
            }
        }
        sweeper.abort();
        self.endpoint.close(
            quinn::VarInt::from_u32(super::codes::SHUTDOWN as u32),
            b"shutdown",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

async fn sweep_rooms(shared: Arc<StreamShared>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let settings = shared.settings.load();
        shared.rooms.sweep(settings.router.room_idle_timeout);
        shared.errors.sweep(settings.router.protocol_error_window);
    }
}

struct ConnectionGauge(prometheus::IntGauge);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn handle_connection(incoming: quinn::Incoming, shared: Arc<StreamShared>) {
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            log::debug!("stream: handshake failed: {error}");
            return;
        }
    };
    let protocol = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    let transport = match protocol.as_deref() {
        Some(tls::ALPN_H3) => Transport::H3,
        _ => Transport::Quic,
    };
    let gauge = shared
        .metrics
        .connections
        .with_label_values(&[transport.label()]);
    gauge.inc();
    let _gauge = ConnectionGauge(gauge);
    let peer = Arc::new(Peer {
        address: connection.remote_address().ip().to_canonical(),
        certificate_name: tls::peer_common_name(&connection),
        rooms: std::sync::Mutex::new(Vec::new()),
    });
    let watched = connection.clone();
    let metrics = Arc::clone(&shared.metrics);
    match transport {
        Transport::Quic => serve_raw(connection, shared, Arc::clone(&peer)).await,
        Transport::H3 => serve_h3(connection, shared, Arc::clone(&peer)).await,
    }
    report_close(&watched, transport, &peer, &metrics);
}

/// Counts a connection that ended in an error, and logs transport errors at WARN: a QUIC
/// stack that aborts a connection (for example quinn's "too many gaps in stream buffer")
/// loses whatever its streams had in flight, so it must never pass unnoticed.
fn report_close(
    connection: &quinn::Connection,
    transport: Transport,
    peer: &Peer,
    metrics: &StreamMetrics,
) {
    use quinn::ConnectionError;
    let Some(reason) = connection.close_reason() else {
        return;
    };
    let kind = match &reason {
        ConnectionError::TransportError(_) => "transport_error",
        ConnectionError::ConnectionClosed(close)
            if close.error_code != quinn::TransportErrorCode::NO_ERROR =>
        {
            "peer_transport_error"
        }
        ConnectionError::TimedOut => "timed_out",
        ConnectionError::Reset => "reset",
        ConnectionError::VersionMismatch => "version_mismatch",
        // Closed by the application on either side, or by a clean transport close.
        _ => return,
    };
    metrics
        .connection_errors
        .with_label_values(&[transport.label(), kind])
        .inc();
    let address = connection.remote_address();
    let rooms = peer.rooms_joined();
    match kind {
        "transport_error" | "peer_transport_error" | "version_mismatch" => log::warn!(
            "stream: {} connection from {address} (rooms {rooms}) closed by a transport error: {reason}",
            transport.label()
        ),
        _ => log::info!(
            "stream: {} connection from {address} (rooms {rooms}) ended: {reason}",
            transport.label()
        ),
    }
}

async fn serve_raw(connection: quinn::Connection, shared: Arc<StreamShared>, peer: Arc<Peer>) {
    while let Ok((send, receive)) = connection.accept_bi().await {
        let shared = Arc::clone(&shared);
        let peer = Arc::clone(&peer);
        tokio::spawn(async move {
            let limits = shared.settings.load().router.limits.clone();
            let reader = FrameReader::new(StreamReader::Quic(receive), limits);
            let writer = StreamWriter::Quic(send);
            session::run(&shared, Transport::Quic, reader, writer, &peer).await;
        });
    }
}

async fn serve_h3(connection: quinn::Connection, shared: Arc<StreamShared>, peer: Arc<Peer>) {
    let mut h3_connection: h3::server::Connection<h3_quinn::Connection, Bytes> =
        match h3::server::builder()
            .build(h3_quinn::Connection::new(connection))
            .await
        {
            Ok(h3_connection) => h3_connection,
            Err(error) => {
                log::debug!("stream: HTTP/3 setup failed: {error}");
                return;
            }
        };
    loop {
        let resolver = match h3_connection.accept().await {
            Ok(Some(resolver)) => resolver,
            Ok(None) | Err(_) => break,
        };
        let shared = Arc::clone(&shared);
        let peer = Arc::clone(&peer);
        tokio::spawn(async move {
            let Ok((request, mut stream)) = resolver.resolve_request().await else {
                return;
            };
            // Go's ServeMux, as in the reference: unknown paths 404, other methods 405.
            let status = if request.uri().path() != "/stream" {
                Some(StatusCode::NOT_FOUND)
            } else if request.method() != Method::POST {
                Some(StatusCode::METHOD_NOT_ALLOWED)
            } else {
                None
            };
            if let Some(status) = status {
                if let Ok(response) = http::Response::builder().status(status).body(()) {
                    let _ = stream.send_response(response).await;
                }
                let _ = stream.finish().await;
                return;
            }
            let (send, receive) = stream.split();
            let limits = shared.settings.load().router.limits.clone();
            let reader = FrameReader::new(StreamReader::H3Server(receive), limits);
            let writer = StreamWriter::H3Server(send);
            session::run(&shared, Transport::H3, reader, writer, &peer).await;
        });
    }
}
