//! Deadlines on the downstream HTTP/1 request head and on idle keep-alive connections.
//!
//! Pingora's HTTP/1 server applies its read timeout to each `read()` call, never to the request
//! head as a whole: a client that sends one header line every two seconds keeps its connection,
//! and the task serving it, for as long as it likes (slowloris). Between keep-alive requests it
//! waits 60 s per read, with no setting to change that.
//!
//! [`EdgeApp`] stands in front of the proxy on every listener and wraps each accepted connection
//! in a [`HeadDeadlineStream`]. The stream knows where the connection is in its request cycle
//! and fails a read with `ErrorKind::TimedOut`, which makes Pingora close the connection, when:
//! - the request head has not fully arrived `server.request_header_timeout` (default 30 s) after
//!   the connection was accepted (first request) or after the first byte of the next request
//!   (keep-alive);
//! - (with Pingora) a keep-alive connection has received no byte for
//!   `server.keepalive_timeout` (default 60 s) since its previous request finished: the
//!   gateway sets Pingora's own keep-alive read timeout to it, and this stream arms no second
//!   timer for idle waits.
//!
//! Both are read from the config when a connection is accepted, so a reload applies to new
//! connections. The gateway's hooks mark where a request begins ([`request_started`], once its
//! head is parsed) and ends ([`request_finished`]). In between, reads have no deadline from
//! here: request and response bodies keep Pingora's own per-read timeouts, and an upgraded
//! (WebSocket) connection may stay quiet.
//!
//! What this does not cover:
//! - HTTP/2. A connection whose first bytes are the HTTP/2 preface becomes a tunnel with no
//!   deadline: its streams are multiplexed, so no single request head stands for the
//!   connection. Pingora's HTTP/2 server has its own idle limit for that
//!   (`HttpServerOptions::h2_idle_timeout`, which Loom does not set today).
//! - The TLS handshake, which Pingora completes (within its own 60 s) before the connection
//!   reaches [`EdgeApp`]; the first head's clock starts after it.
//!
//! A request body that the gateway did not read (say, an early error response) is drained by
//! Pingora after the request finished. Those bytes start the next head's clock, so the drain
//! and the next head together must fit in the header timeout; a client still uploading when it
//! runs out loses its connection instead of keeping it alive.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, IO, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::{HttpProxy, Session};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Gateway;
use super::snapshot::GatewayState;
use crate::config::schema::ServerSection;
use crate::observe::metrics;

/// `server.request_header_timeout` when the config leaves it out.
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The start of the HTTP/2 connection preface (RFC 9113, section 3.4); no HTTP/1 request
/// starts with it, so it is enough to tell the two apart.
const HTTP2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Stands in for a deadline too far away to represent, which never comes in practice.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `server.request_header_timeout`, or [`DEFAULT_REQUEST_HEADER_TIMEOUT`].
pub fn request_header_timeout(server: &ServerSection) -> Duration {
    server
        .request_header_timeout
        .map_or(DEFAULT_REQUEST_HEADER_TIMEOUT, |timeout| timeout.0)
}

/// Marks the request on `session`'s connection as begun: its head has arrived, so reads carry
/// no deadline until [`request_finished`]. Called from `early_request_filter`. Does nothing on
/// HTTP/2, on subrequests, or on a connection that did not come through [`EdgeApp`].
pub fn request_started(session: &Session) {
    if let Some(stream) = deadline_stream(session) {
        stream.start_request();
    }
}

/// Marks the request on `session`'s connection as finished: from the next read on, the
/// connection waits for another request under the keep-alive timeout. Called from `logging`.
/// Does nothing where [`request_started`] does nothing.
pub fn request_finished(session: &Session) {
    if let Some(stream) = deadline_stream(session) {
        stream.finish_request();
    }
}

fn deadline_stream(session: &Session) -> Option<&HeadDeadlineStream> {
    // `stream()` is `None` for HTTP/2 and subrequests, which have no connection of their own.
    session
        .as_downstream()
        .stream()
        .and_then(as_deadline_stream)
}

fn as_deadline_stream(stream: &Stream) -> Option<&HeadDeadlineStream> {
    let io: &dyn IO = &**stream;
    io.as_any().downcast_ref::<HeadDeadlineStream>()
}

/// Where a connection is in its request cycle, which decides the deadline its reads get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ConnectionPhase {
    /// Waiting for (the rest of) a request head, under the header deadline.
    AwaitingHead = 0,
    /// Between [`request_started`] and [`request_finished`]: no deadline from here.
    InRequest = 1,
    /// A request just finished; the next read starts the keep-alive idle wait.
    BetweenRequests = 2,
    /// Waiting for the first byte of the next request, under the keep-alive deadline.
    KeepaliveIdle = 3,
    /// HTTP/2: never a deadline from here, whatever the hooks say.
    Tunnel = 4,
}

impl ConnectionPhase {
    fn from_u8(value: u8) -> ConnectionPhase {
        match value {
            0 => ConnectionPhase::AwaitingHead,
            1 => ConnectionPhase::InRequest,
            2 => ConnectionPhase::BetweenRequests,
            3 => ConnectionPhase::KeepaliveIdle,
            // Only the values above are ever stored; the one phase that cannot cut a
            // connection short is the safe reading of anything else.
            _ => ConnectionPhase::Tunnel,
        }
    }
}

/// What a connection that ran out of time was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    RequestHead,
    KeepaliveIdle,
}

impl Wait {
    /// The `phase` label of `loom_downstream_timeouts_total`.
    fn metric_label(self) -> &'static str {
        match self {
            Wait::RequestHead => "request_header",
            Wait::KeepaliveIdle => "keepalive_idle",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Wait::RequestHead => "request header timeout",
            Wait::KeepaliveIdle => "keep-alive idle timeout",
        }
    }

    fn error(self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, self.message())
    }
}

/// `timeout` after `start`, or [`FAR_FUTURE`] after it when that overflows (a config can
/// ask for any duration).
fn deadline_after(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .or_else(|| start.checked_add(FAR_FUTURE))
        .unwrap_or(start)
}

/// A downstream connection whose reads fail once the request head, or the wait for the next
/// request, takes too long. Everything else goes to the wrapped stream unchanged.
#[derive(Debug)]
pub struct HeadDeadlineStream {
    inner: Stream,
    /// A [`ConnectionPhase`]. Atomic only because the gateway's hooks reach the stream through
    /// the session's shared reference; hooks and reads run one after the other in the
    /// connection's task, so `Relaxed` is enough.
    phase: AtomicU8,
    request_header_timeout: Duration,
    /// When the current request head is due.
    deadline: Instant,
    /// Made by the first read that has to wait, then moved with `reset`: a head that is
    /// already buffered when read, the usual case on keep-alive, never touches the timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// How much of [`HTTP2_PREFACE_START`] the connection's first bytes have matched; `None`
    /// once they decided it is HTTP/1 or HTTP/2.
    preface_bytes_matched: Option<usize>,
    /// The wait that ran out: the connection is finished, so every later read fails the same
    /// way (and is counted only once).
    expired: Option<Wait>,
}

impl HeadDeadlineStream {
    /// Wraps a just-accepted connection: the first request's head is due within
    /// `request_header_timeout` from now.
    pub fn new(inner: Stream, request_header_timeout: Duration) -> HeadDeadlineStream {
        HeadDeadlineStream {
            inner,
            phase: AtomicU8::new(ConnectionPhase::AwaitingHead as u8),
            request_header_timeout,
            deadline: deadline_after(Instant::now(), request_header_timeout),
            timer: None,
            preface_bytes_matched: Some(0),
            expired: None,
        }
    }

    /// The head has arrived and a request is being served: no deadline until it finishes.
    pub(crate) fn start_request(&self) {
        self.enter(ConnectionPhase::InRequest);
    }

    /// The request is done: the next read waits for another one under the keep-alive timeout.
    pub(crate) fn finish_request(&self) {
        self.enter(ConnectionPhase::BetweenRequests);
    }

    pub(crate) fn phase(&self) -> ConnectionPhase {
        ConnectionPhase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Moves to `phase`, except out of `Tunnel`: an HTTP/2 connection stays one.
    fn enter(&self, phase: ConnectionPhase) {
        if self.phase() != ConnectionPhase::Tunnel {
            self.store_phase(phase);
        }
    }

    fn store_phase(&self, phase: ConnectionPhase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Bytes arrived while the connection was waiting for `wait`.
    fn on_bytes_arrived(&mut self, wait: Wait, arrived: &[u8]) {
        match wait {
            Wait::RequestHead => self.match_http2_preface(arrived),
            Wait::KeepaliveIdle => {
                // The next request has begun: its head is due within the header timeout
                // from its first byte.
                self.deadline = deadline_after(Instant::now(), self.request_header_timeout);
                self.preface_bytes_matched = None;
                self.store_phase(ConnectionPhase::AwaitingHead);
            }
        }
    }

    /// Compares the connection's first bytes, which may come over several reads, with the
    /// HTTP/2 preface, and makes the connection a tunnel when they match it.
    fn match_http2_preface(&mut self, arrived: &[u8]) {
        let Some(matched) = self.preface_bytes_matched else {
            return;
        };
        let expected = &HTTP2_PREFACE_START[matched..];
        let compared = arrived.len().min(expected.len());
        if arrived[..compared] != expected[..compared] {
            self.preface_bytes_matched = None;
        } else if matched + compared == HTTP2_PREFACE_START.len() {
            self.preface_bytes_matched = None;
            self.store_phase(ConnectionPhase::Tunnel);
        } else {
            self.preface_bytes_matched = Some(matched + compared);
        }
    }

    /// Called when the inner read would block: waits on the deadline, and fails the read
    /// once it has passed.
    fn poll_deadline(&mut self, context: &mut Context<'_>, wait: Wait) -> Poll<io::Result<()>> {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(context).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Err(self.expire(wait)))
    }

    fn expire(&mut self, wait: Wait) -> io::Error {
        self.expired = Some(wait);
        metrics::count_downstream_timeout(wait.metric_label());
        log::debug!(
            "closing downstream connection {}: {} ({:?})",
            UniqueID::id(&*self.inner),
            wait.message(),
            self.request_header_timeout
        );
        wait.error()
    }
}

impl AsyncRead for HeadDeadlineStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(wait) = this.expired {
            return Poll::Ready(Err(wait.error()));
        }
        let wait = match this.phase() {
            ConnectionPhase::InRequest | ConnectionPhase::Tunnel => {
                return Pin::new(&mut this.inner).poll_read(context, buffer);
            }
            ConnectionPhase::AwaitingHead => Wait::RequestHead,
            ConnectionPhase::BetweenRequests => {
                this.store_phase(ConnectionPhase::KeepaliveIdle);
                Wait::KeepaliveIdle
            }
            ConnectionPhase::KeepaliveIdle => Wait::KeepaliveIdle,
        };
        let filled_before = buffer.filled().len();
        match Pin::new(&mut this.inner).poll_read(context, buffer) {
            Poll::Ready(Ok(())) => {
                let arrived = &buffer.filled()[filled_before..];
                if !arrived.is_empty() {
                    this.on_bytes_arrived(wait, arrived);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            // Only a read that would block looks at the clock, so buffered data is never
            // refused and the timer costs nothing while bytes keep coming.
            Poll::Pending => match wait {
                Wait::RequestHead => this.poll_deadline(context, wait),
                // An idle keep-alive connection is closed by Pingora's own keep-alive read
                // timeout, which the gateway sets from `server.keepalive_timeout`: a second
                // timer here would be armed and cancelled on every keep-alive wait.
                Wait::KeepaliveIdle => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for HeadDeadlineStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(context, buffer)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(context)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// The traits below are what `pingora::protocols::IO` asks for beyond reading and writing;
// each goes to the wrapped stream. They are called on `dyn IO` explicitly so that no
// same-named method of another trait (such as `AsyncWriteExt::shutdown`) can be picked.

#[async_trait]
impl Shutdown for HeadDeadlineStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for HeadDeadlineStream {
    fn id(&self) -> UniqueIDType {
        UniqueID::id(&*self.inner)
    }
}

impl Ssl for HeadDeadlineStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        Ssl::get_ssl(&*self.inner)
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Ssl::get_ssl_digest(&*self.inner)
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        Ssl::selected_alpn_proto(&*self.inner)
    }
}

impl GetTimingDigest for HeadDeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        GetTimingDigest::get_timing_digest(&*self.inner)
    }

    fn get_read_pending_time(&self) -> Duration {
        GetTimingDigest::get_read_pending_time(&*self.inner)
    }

    fn get_write_pending_time(&self) -> Duration {
        GetTimingDigest::get_write_pending_time(&*self.inner)
    }
}

impl GetProxyDigest for HeadDeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        GetProxyDigest::get_proxy_digest(&*self.inner)
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        GetProxyDigest::set_proxy_digest(&mut *self.inner, digest);
    }
}

impl GetSocketDigest for HeadDeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        GetSocketDigest::get_socket_digest(&*self.inner)
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        GetSocketDigest::set_socket_digest(&mut *self.inner, socket_digest);
    }
}

#[async_trait]
impl Peek for HeadDeadlineStream {
    /// Pingora peeks for the HTTP/2 preface on h2c listeners before it reads anything, and
    /// the TCP stream's peek waits for the whole preface's length with no timeout of its own;
    /// so the peek gets the head's deadline too, or a client that sends a few bytes and stops
    /// would hold the connection forever. The phase only changes on real reads.
    async fn try_peek(&mut self, buffer: &mut [u8]) -> io::Result<bool> {
        if let Some(wait) = self.expired {
            return Err(wait.error());
        }
        if self.phase() != ConnectionPhase::AwaitingHead {
            return Peek::try_peek(&mut *self.inner, buffer).await;
        }
        let deadline = self.deadline;
        let peeked =
            tokio::time::timeout_at(deadline, Peek::try_peek(&mut *self.inner, buffer)).await;
        match peeked {
            Ok(result) => result,
            Err(_elapsed) => Err(self.expire(Wait::RequestHead)),
        }
    }
}

/// The application of every proxy listener: puts each accepted connection behind a
/// [`HeadDeadlineStream`] and hands it to the gateway's proxy.
pub struct EdgeApp {
    proxy: Arc<HttpProxy<Gateway>>,
    state: Arc<GatewayState>,
}

impl EdgeApp {
    pub fn new(proxy: Arc<HttpProxy<Gateway>>, state: Arc<GatewayState>) -> EdgeApp {
        EdgeApp { proxy, state }
    }
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Only the duration is kept: holding the snapshot for the connection's life would
        // keep an old config alive after reloads.
        let header_timeout = request_header_timeout(&self.state.current().server);
        let stream: Stream = Box::new(HeadDeadlineStream::new(stream, header_timeout));
        // Counted for as long as the connection is served (HTTP/1 and HTTP/2 alike), also when
        // the task is dropped mid-way.
        let _open = OpenConnection::count();
        // For HTTP/1 Pingora serves every keep-alive request of the connection inside this
        // call, on this same stream, so the wrapper sees the whole connection.
        <HttpProxy<Gateway> as ServerApp>::process_new(&self.proxy, stream, shutdown).await
    }

    async fn cleanup(&self) {
        // Sets the proxy's shutdown flag and wakes keep-alive connections parked on a read;
        // without it a graceful shutdown would wait for them.
        <HttpProxy<Gateway> as ServerApp>::cleanup(&*self.proxy).await;
    }
}

/// Keeps `loom_active_connections` counted while a downstream connection is served.
struct OpenConnection;

impl OpenConnection {
    fn count() -> OpenConnection {
        metrics::metrics().active_connections.inc();
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::metrics().active_connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::DurationValue;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n";
    const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn wrapped() -> (DuplexStream, HeadDeadlineStream) {
        let (client, server) = tokio::io::duplex(4096);
        let stream = HeadDeadlineStream::new(Box::new(server), HEADER_TIMEOUT);
        (client, stream)
    }

    async fn read_exactly(stream: &mut HeadDeadlineStream, length: usize) -> Vec<u8> {
        let mut received = vec![0; length];
        stream.read_exact(&mut received).await.unwrap();
        received
    }

    async fn read_until_error(stream: &mut HeadDeadlineStream) -> io::Error {
        let mut buffer = [0u8; 64];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) => panic!("the connection ended before any deadline"),
                Ok(_) => continue,
                Err(error) => return error,
            }
        }
    }

    /// Writes `first`, then one header line every two seconds until the reader goes away.
    async fn trickle(mut client: DuplexStream, first: &[u8]) {
        if client.write_all(first).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if client.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return;
            }
        }
    }

    fn assert_between(waited: Duration, at_least: Duration) {
        assert!(
            waited >= at_least && waited < at_least + Duration::from_secs(1),
            "waited {waited:?}, expected {at_least:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_is_cut_off_at_the_header_deadline() {
        let counted_before = metrics::metrics()
            .downstream_timeouts_total
            .with_label_values(&["request_header"])
            .get();
        let accepted = Instant::now();
        let (client, mut stream) = wrapped();
        tokio::spawn(trickle(client, b"GET / HTTP/1.1\r\n"));

        let error = read_until_error(&mut stream).await;
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "request header timeout");
        assert_between(accepted.elapsed(), HEADER_TIMEOUT);
        assert_eq!(stream.phase(), ConnectionPhase::AwaitingHead);

        // The connection is finished: later reads fail too, without counting again.
        let again = read_until_error(&mut stream).await;
        assert_eq!(again.kind(), io::ErrorKind::TimedOut);
        let counted_after = metrics::metrics()
            .downstream_timeouts_total
            .with_label_values(&["request_header"])
            .get();
        assert!(counted_after > counted_before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_request_reads_without_a_deadline() {
        let (mut client, mut stream) = wrapped();
        tokio::spawn(async move {
            // The head comes after a pause, so the head's timer is armed while it waits.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = client.write_all(HEAD).await;
            tokio::time::sleep(HEADER_TIMEOUT * 3).await;
            let _ = client.write_all(b"body").await;
            // Keeps the connection open until the reader is done.
            tokio::time::sleep(HEADER_TIMEOUT * 3).await;
        });

        assert_eq!(read_exactly(&mut stream, HEAD.len()).await, HEAD);
        stream.start_request();
        assert_eq!(stream.phase(), ConnectionPhase::InRequest);
        let started = Instant::now();
        assert_eq!(read_exactly(&mut stream, 4).await, b"body");
        assert!(started.elapsed() >= HEADER_TIMEOUT * 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keepalive_wait_arms_no_timer_here() {
        let (mut client, mut stream) = wrapped();
        client.write_all(HEAD).await.unwrap();
        read_exactly(&mut stream, HEAD.len()).await;
        stream.start_request();
        stream.finish_request();
        assert_eq!(stream.phase(), ConnectionPhase::BetweenRequests);
        // Pingora's keep-alive read timeout closes an idle connection; the stream itself
        // waits without a deadline and arms no timer.
        let mut byte = [0u8; 1];
        let idle = tokio::time::timeout(HEADER_TIMEOUT * 10, stream.read(&mut byte)).await;
        assert!(idle.is_err(), "the idle read ended: {idle:?}");
        assert_eq!(stream.phase(), ConnectionPhase::KeepaliveIdle);
        assert!(stream.timer.is_none());
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_head_is_timed_from_its_first_byte() {
        let (mut client, mut stream) = wrapped();
        client.write_all(HEAD).await.unwrap();
        read_exactly(&mut stream, HEAD.len()).await;
        stream.start_request();
        stream.finish_request();
        let finished = Instant::now();
        let first_byte_after = Duration::from_secs(5);
        tokio::spawn(async move {
            tokio::time::sleep(first_byte_after).await;
            trickle(client, b"GET /next HTTP/1.1\r\n").await;
        });

        let error = read_until_error(&mut stream).await;
        assert_eq!(error.to_string(), "request header timeout");
        assert_between(finished.elapsed(), first_byte_after + HEADER_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn the_http2_preface_turns_the_connection_into_a_tunnel() {
        let (mut client, mut stream) = wrapped();
        client.write_all(HTTP2_PREFACE).await.unwrap();
        // Three bytes a read, so the preface is recognised across several of them.
        let mut piece = [0u8; 3];
        let mut received = 0;
        while received < HTTP2_PREFACE.len() {
            received += stream.read(&mut piece).await.unwrap();
        }
        assert_eq!(stream.phase(), ConnectionPhase::Tunnel);

        tokio::spawn(async move {
            tokio::time::sleep(HEADER_TIMEOUT * 3).await;
            let _ = client.write_all(b"frame").await;
            tokio::time::sleep(HEADER_TIMEOUT * 3).await;
        });
        assert_eq!(read_exactly(&mut stream, 5).await, b"frame");
        // The hooks cannot take a tunnel back to HTTP/1 phases.
        stream.start_request();
        stream.finish_request();
        assert_eq!(stream.phase(), ConnectionPhase::Tunnel);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_only_starts_like_the_preface_keeps_its_deadline() {
        let (mut client, mut stream) = wrapped();
        client.write_all(b"PRI * HTTP/1.1\r\n").await.unwrap();
        read_exactly(&mut stream, 16).await;
        assert_eq!(stream.phase(), ConnectionPhase::AwaitingHead);
        assert!(stream.preface_bytes_matched.is_none());
        drop(client);
    }

    #[tokio::test]
    async fn the_hooks_find_the_wrapper_behind_a_boxed_stream() {
        let (_client, server) = tokio::io::duplex(64);
        let wrapped: Stream = Box::new(HeadDeadlineStream::new(Box::new(server), HEADER_TIMEOUT));
        assert!(as_deadline_stream(&wrapped).is_some());

        let (_client, plain) = tokio::io::duplex(64);
        let plain: Stream = Box::new(plain);
        assert!(as_deadline_stream(&plain).is_none());
    }

    #[test]
    fn the_timeouts_default_when_the_config_leaves_them_out() {
        let defaults = ServerSection::default();
        assert_eq!(
            request_header_timeout(&defaults),
            DEFAULT_REQUEST_HEADER_TIMEOUT
        );

        let configured = ServerSection {
            request_header_timeout: Some(DurationValue(Duration::from_secs(5))),
            ..ServerSection::default()
        };
        assert_eq!(request_header_timeout(&configured), Duration::from_secs(5));
    }
}
