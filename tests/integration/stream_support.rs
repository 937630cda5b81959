//! Harness for the streaming tests: the real stream server on 127.0.0.1:0 in this process,
//! clients from `loom::stream::client`, and raw QUIC/HTTP/3 exchanges for invalid input.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use loom::config::stream::load_standalone_text;
use loom::stream::client::{ClientOptions, ClientTransport, Consumer, Producer};
use loom::stream::metrics::StreamMetrics;
use loom::stream::room::RoomStatus;
use loom::stream::server::StreamServer;
use loom::stream::session::StreamShared;
use loom::stream::tls::{self, ClientTlsOptions};

/// A hello from a client named "raw" (fields under 128 bytes).
pub fn hello(role: u8, room: &str, token: &str) -> Vec<u8> {
    let mut out = b"LOOM\x04".to_vec();
    out.push(role);
    for field in ["raw", room, token] {
        out.push(field.len() as u8);
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// Producer streams that break the protocol, by name: four bad hellos (the server answers
/// before reading on) and two bad first messages after a valid hello. Every one gets 400
/// over HTTP/3 and FIN + STOP_SENDING over raw QUIC.
pub fn malformed_producer_streams(room: &str, token: &str) -> Vec<(&'static str, Vec<u8>)> {
    let valid = hello(b'P', room, token);
    let mut bad_magic = valid.clone();
    bad_magic[3] = b'X';
    let mut bad_version = valid.clone();
    bad_version[4] = 3;
    let mut bad_role = valid.clone();
    bad_role[5] = b'X';
    let mut long_name = b"LOOM\x04P\x81\x01".to_vec();
    long_name.extend_from_slice(&[b'n'; 129]);
    for field in [room, token] {
        long_name.push(field.len() as u8);
        long_name.extend_from_slice(field.as_bytes());
    }
    let mut empty_key = valid.clone();
    empty_key.push(0);
    let mut big_chunk = valid;
    big_chunk.extend_from_slice(b"\x01k\x00\x00\x81\x80\x08");
    vec![
        ("bad magic", bad_magic),
        ("bad version", bad_version),
        ("role X", bad_role),
        ("name of 129 bytes", long_name),
        ("empty key", empty_key),
        ("chunk of 131073 bytes", big_chunk),
    ]
}

pub struct StreamUnderTest {
    pub address: SocketAddr,
    pub shared: Arc<StreamShared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StreamUnderTest {
    /// Starts a server with `yaml` (the standalone schema, no `server:`) on 127.0.0.1:0.
    pub async fn start(yaml: &str) -> StreamUnderTest {
        StreamUnderTest::start_with("", yaml).await
    }

    /// Like `start`, with extra `server:` keys (indented by two spaces).
    pub async fn start_with(server_keys: &str, yaml: &str) -> StreamUnderTest {
        let text =
            format!("server:\n  addr: \"127.0.0.1:0\"\n{server_keys}admin:\n  addr: \"\"\n{yaml}");
        let plan = load_standalone_text(Path::new("test.yaml"), &text)
            .unwrap_or_else(|errors| panic!("test config invalid: {errors:?}\n{text}"));
        let server = StreamServer::bind(plan, Arc::new(StreamMetrics::new())).expect("binds");
        let address = server.local_addr().expect("bound");
        let shared = server.shared();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        StreamUnderTest {
            address,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn options(&self, transport: ClientTransport, room: &str) -> ClientOptions {
        ClientOptions {
            server: self.address.to_string(),
            transport,
            name: "test".into(),
            room: room.into(),
            token: String::new(),
            tls: ClientTlsOptions {
                insecure_skip_verify: true,
                ..ClientTlsOptions::default()
            },
            server_name: Some("localhost".into()),
        }
    }

    pub async fn producer(&self, transport: ClientTransport, room: &str) -> Producer {
        Producer::connect(&self.options(transport, room))
            .await
            .expect("producer connects")
    }

    /// A consumer that the room has registered (so routing already sees it).
    pub async fn consumer(&self, transport: ClientTransport, room: &str) -> Consumer {
        let before = self.status(room).map_or(0, |status| status.consumers);
        let consumer = Consumer::connect(&self.options(transport, room))
            .await
            .expect("consumer connects");
        self.wait_for(room, |status| status.consumers > before)
            .await;
        consumer
    }

    pub fn status(&self, room: &str) -> Option<RoomStatus> {
        self.shared.rooms.status(room)
    }

    /// Waits until the room's status satisfies `condition` (20 s limit).
    pub async fn wait_for(&self, room: &str, condition: impl Fn(RoomStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.status(room).is_some_and(&condition) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "room {room} never reached the expected state: {:?}",
                self.status(room)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn metrics(&self) -> String {
        self.shared.metrics.render()
    }

    /// The value of one sample line (`name{labels}`), or 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn wait_metric(&self, sample: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric(sample) != value {
            assert!(
                Instant::now() < deadline,
                "{sample} stayed {} (expected {value})\n{}",
                self.metric(sample),
                self.metrics()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub async fn receive_and_ack(consumer: &mut Consumer) -> loom::stream::client::Message {
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.receive())
        .await
        .expect("a message within 30 s")
        .expect("receive works")
        .expect("the stream is open");
    consumer.ack(message.id).await.expect("ack is sent");
    message
}

/// What the server did with a raw QUIC stream: the bytes it wrote before ending its side,
/// whether it ended it normally, and the STOP_SENDING code our writes met, if any.
#[derive(Debug)]
pub struct RawOutcome {
    pub received: Vec<u8>,
    pub finished: bool,
    pub stop_code: Option<u64>,
}

pub async fn raw_quic_exchange(address: SocketAddr, bytes: &[u8]) -> RawOutcome {
    let connection = connect_raw(address, tls::ALPN_LOOM).await;
    let (mut send, mut receive) = connection.open_bi().await.expect("stream opens");
    send.write_all(bytes).await.expect("first write");
    let mut received = Vec::new();
    let finished = loop {
        match tokio::time::timeout(Duration::from_secs(15), receive.read_chunk(65_536, true))
            .await
            .expect("the server answers within 15 s")
        {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk.bytes),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    // Keep writing: STOP_SENDING must make this fail rather than block on flow control.
    let filler = Bytes::from(vec![0u8; 64 * 1024]);
    let mut stop_code = None;
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_secs(15), send.write_chunk(filler.clone()))
            .await
            .expect("writes fail instead of blocking")
        {
            Ok(()) => {}
            Err(quinn::WriteError::Stopped(code)) => {
                stop_code = Some(code.into_inner());
                break;
            }
            Err(_) => break,
        }
    }
    RawOutcome {
        received,
        finished,
        stop_code,
    }
}

pub async fn connect_raw(address: SocketAddr, alpn: &[u8]) -> quinn::Connection {
    connect_raw_with(address, alpn, quinn::TransportConfig::default()).await
}

pub async fn connect_raw_with(
    address: SocketAddr,
    alpn: &[u8],
    transport: quinn::TransportConfig,
) -> quinn::Connection {
    let crypto = tls::client_config(
        &ClientTlsOptions {
            insecure_skip_verify: true,
            ..ClientTlsOptions::default()
        },
        alpn,
    )
    .unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    client_config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(client_config);
    endpoint
        .connect(address, "localhost")
        .unwrap()
        .await
        .expect("handshake")
}

/// Sends one HTTP/3 request with `body`, leaving the body open, and returns the status.
pub async fn raw_h3_status(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> u16 {
    let connection = connect_raw(address, tls::ALPN_H3).await;
    let (mut driver, mut requests) = h3::client::new(h3_quinn::Connection::new(connection))
        .await
        .expect("h3 session");
    let drive = tokio::spawn(async move {
        let _ = std::future::poll_fn(|context| driver.poll_close(context)).await;
    });
    let request = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let mut stream = requests.send_request(request).await.expect("request sent");
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body))
            .await
            .expect("body sent");
    }
    // The body stays open: the answer must come from the hello alone.
    let response = tokio::time::timeout(Duration::from_secs(15), stream.recv_response())
        .await
        .expect("a response within 15 s")
        .expect("a response");
    let status = response.status().as_u16();
    while let Ok(Some(mut data)) = stream.recv_data().await {
        data.advance(data.remaining());
    }
    drive.abort();
    status
}

impl Drop for StreamUnderTest {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// How a [`LossyRelay`] mistreats the client's datagrams (the server's only lose and
/// reorder at the random rates).
#[derive(Clone, Copy)]
pub struct PathFaults {
    /// Probability that a datagram is dropped on its own.
    pub loss: f64,
    /// Probability that a client datagram starts a burst of losses (a receive buffer that
    /// overflowed), and the longest such burst. Bursts are timed, not counted, so that a
    /// sender's sparse loss probes at the end of a transfer are not all swallowed.
    pub burst: f64,
    pub max_burst: Duration,
    /// Probability that a datagram is held back for 1 ms to `max_delay`, letting later ones
    /// pass it (netem's "delay with jitter" reordering).
    pub reorder: f64,
    pub max_delay: Duration,
}

/// A UDP relay between one client and a server that loses and reorders datagrams, as a
/// lossy path does. Seeded, so the pattern repeats (timing still varies). Loopback never
/// loses a packet on its own, and netem needs a kernel module the test machines lack.
pub struct LossyRelay {
    pub address: SocketAddr,
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
    pub reordered: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyRelay {
    pub async fn start(server: SocketAddr, faults: PathFaults) -> LossyRelay {
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(server).await.unwrap();
        let address = front.local_addr().unwrap();
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reordered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counters = (Arc::clone(&dropped), Arc::clone(&reordered));
        let max_delay_micros = faults.max_delay.as_micros().max(1000) as u64;
        let task = tokio::spawn(async move {
            let mut random = fastrand::Rng::with_seed(0x004c_004d);
            let mut client: Option<SocketAddr> = None;
            let mut burst_until: Option<tokio::time::Instant> = None;
            let max_burst_micros = faults.max_burst.as_micros().max(1) as u64;
            let mut from_client = vec![0u8; 65_536];
            let mut from_server = vec![0u8; 65_536];
            loop {
                let (to_server, datagram) = tokio::select! {
                    received = front.recv_from(&mut from_client) => {
                        let Ok((length, sender)) = received else { return };
                        client = Some(sender);
                        (true, Bytes::copy_from_slice(&from_client[..length]))
                    }
                    received = back.recv(&mut from_server) => {
                        let Ok(length) = received else { return };
                        (false, Bytes::copy_from_slice(&from_server[..length]))
                    }
                };
                let Some(client) = client else { continue };
                let now = tokio::time::Instant::now();
                if burst_until.is_some_and(|until| now >= until) {
                    burst_until = None;
                }
                if to_server && burst_until.is_none() && random.f64() < faults.burst {
                    let length = Duration::from_micros(random.u64(1..=max_burst_micros));
                    burst_until = Some(now + length);
                }
                let lost = (to_server && burst_until.is_some()) || random.f64() < faults.loss;
                if lost {
                    counters
                        .0
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                let delay = (random.f64() < faults.reorder).then(|| {
                    counters
                        .1
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Duration::from_micros(random.u64(1000..=max_delay_micros))
                });
                let (front, back) = (Arc::clone(&front), Arc::clone(&back));
                let send = async move {
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    let _ = match to_server {
                        true => back.send(&datagram).await,
                        false => front.send_to(&datagram, client).await,
                    };
                };
                match delay {
                    Some(_) => drop(tokio::spawn(send)),
                    None => send.await,
                }
            }
        });
        LossyRelay {
            address,
            dropped,
            reordered,
            task,
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
