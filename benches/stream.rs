//! Streaming throughput: Loom's stream server against a raw quinn stream on the same
//! machine, in one run.
//!
//! `cargo bench --bench stream` measures
//! - 100-byte messages through 1 and 4 producer/consumer pairs (msg/s; each pair is a room,
//!   the consumer ACKs after reading each message: the protocol's stop-and-wait), next to a
//!   raw quinn ping-pong of the same sizes (100 bytes out, a 2-byte ACK back);
//! - 32 MiB messages through 1 and 4 pairs (MiB/s), next to raw quinn streams moving the
//!   same bytes one way, and next to a raw quinn relay (producer → relay → consumer, bytes
//!   forwarded as they come, no framing or ACKs): the most any broker can do here, since
//!   every byte is encrypted and decrypted twice.
//!
//! Server and clients run on separate Tokio runtimes in this process and share the cores.
//! `STREAM_BENCH_SECONDS` (default 5) sets the length of the small-message runs. Without
//! `--bench` (as `cargo test --all-targets` runs it) a short smoke run checks it works.
//!
//! `cargo bench --bench stream -- --peer HOST:PORT` also measures another Loom v4 server
//! (for example the reference `loomd`, raw QUIC, `chunk_full_behavior: block`) with the same
//! client and workloads, alternating rounds between it and Loom (`STREAM_BENCH_ROUNDS`,
//! default 5), and prints the medians side by side.
//!
//! `cargo bench --bench stream -- --serve-raw HOST:PORT` only serves the raw quinn peer of the
//! small-message runs on HOST:PORT (ALPN `loom/1`; each 100-byte read answered with 2 bytes)
//! until it is killed, so that another client (for example one built on quic-go, as Loom-go
//! is) can measure what the transport allows that client: a stop-and-wait consumer can never
//! go faster through any quinn server than it does against this one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loom::config::stream::load_standalone_text;
use loom::stream::client::{ClientOptions, ClientTransport, Consumer, Producer};
use loom::stream::metrics::StreamMetrics;
use loom::stream::server::StreamServer;
use loom::stream::tls::{self, ClientTlsOptions};

struct Settings {
    small_duration: Duration,
    large_messages_per_pair: usize,
    large_size: usize,
}

fn main() {
    let full = std::env::args().any(|argument| argument == "--bench");
    let arguments: Vec<String> = std::env::args().collect();
    let peer: Option<SocketAddr> = arguments
        .iter()
        .position(|argument| argument == "--peer")
        .map(|index| {
            arguments
                .get(index + 1)
                .and_then(|text| text.parse().ok())
                .expect("--peer takes HOST:PORT, e.g. 127.0.0.1:4243")
        });
    if let Some(index) = arguments
        .iter()
        .position(|argument| argument == "--serve-raw")
    {
        let address: SocketAddr = arguments
            .get(index + 1)
            .and_then(|text| text.parse().ok())
            .expect("--serve-raw takes HOST:PORT, e.g. 127.0.0.1:4244");
        serve_raw(address);
        return;
    }
    let settings = if full {
        Settings {
            small_duration: Duration::from_secs(
                std::env::var("STREAM_BENCH_SECONDS")
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .unwrap_or(5),
            ),
            large_messages_per_pair: 8,
            large_size: 32 << 20,
        }
    } else {
        Settings {
            small_duration: Duration::from_millis(200),
            large_messages_per_pair: 1,
            large_size: 1 << 20,
        }
    };
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bench-server")
        .build()
        .expect("runtime");
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bench-client")
        .build()
        .expect("runtime");
    let loom_address = server_runtime.block_on(start_loom());
    let raw_address = server_runtime.block_on(start_raw_sink());

    let relay_address = server_runtime.block_on(start_raw_relay());

    println!("| Workload | Loom | raw quinn | Loom / raw | raw quinn relay | Loom / relay |");
    println!("|---|---|---|---|---|---|");
    for pairs in [1usize, 4] {
        let loom =
            client_runtime.block_on(loom_small(loom_address, pairs, settings.small_duration));
        let raw = client_runtime.block_on(raw_small(raw_address, pairs, settings.small_duration));
        println!(
            "| 100 B, {pairs} pair(s) | {loom:.0} msg/s | {raw:.0} msg/s | {:.2} | | |",
            loom / raw
        );
    }
    for pairs in [1usize, 4] {
        let loom = client_runtime.block_on(loom_large(
            loom_address,
            pairs,
            settings.large_messages_per_pair,
            settings.large_size,
        ));
        let raw = client_runtime.block_on(raw_large(
            raw_address,
            pairs,
            settings.large_messages_per_pair,
            settings.large_size,
        ));
        let relay = client_runtime.block_on(raw_relay_large(
            relay_address,
            pairs,
            settings.large_messages_per_pair,
            settings.large_size,
        ));
        println!(
            "| {} MiB, {pairs} pair(s) | {loom:.0} MiB/s | {raw:.0} MiB/s | {:.2} | {relay:.0} MiB/s | {:.2} |",
            settings.large_size >> 20,
            loom / raw,
            loom / relay
        );
    }
    if let Some(peer) = peer {
        compare_with_peer(&client_runtime, loom_address, peer, &settings);
    }
}

/// Runs every workload against Loom and `peer` in alternating rounds; prints the medians.
fn compare_with_peer(
    client_runtime: &tokio::runtime::Runtime,
    loom: SocketAddr,
    peer: SocketAddr,
    settings: &Settings,
) {
    let rounds: usize = std::env::var("STREAM_BENCH_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(5);
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!();
    println!(
        "| Workload ({rounds} rounds, alternating) | peer {peer} median | Loom median | Loom / peer |"
    );
    println!("|---|---|---|---|");
    let case = |name: String, unit: &str, run: &dyn Fn(SocketAddr, usize) -> f64| {
        let (mut peer_figures, mut loom_figures) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            peer_figures.push(run(peer, round));
            loom_figures.push(run(loom, round));
        }
        let (peer_median, loom_median) = (median(peer_figures), median(loom_figures));
        println!(
            "| {name} | {peer_median:.0} {unit} | {loom_median:.0} {unit} | {:.2} |",
            loom_median / peer_median
        );
    };
    for pairs in [1usize, 4] {
        case(
            format!("100 B, {pairs} pair(s)"),
            "msg/s",
            &|address, round| {
                client_runtime.block_on(loom_small_in(
                    address,
                    &format!("peer-small-{pairs}-{round}"),
                    pairs,
                    settings.small_duration,
                ))
            },
        );
    }
    for pairs in [1usize, 4] {
        case(
            format!("{} MiB, {pairs} pair(s)", settings.large_size >> 20),
            "MiB/s",
            &|address, round| {
                client_runtime.block_on(loom_large_in(
                    address,
                    &format!("peer-large-{pairs}-{round}"),
                    pairs,
                    settings.large_messages_per_pair,
                    settings.large_size,
                ))
            },
        );
    }
}

async fn start_loom() -> SocketAddr {
    let plan = load_standalone_text(
        Path::new("bench.yaml"),
        "server:\n  addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"\"\n",
    )
    .expect("valid bench config");
    let server = StreamServer::bind(plan, Arc::new(StreamMetrics::new())).expect("binds");
    let address = server.local_addr().expect("bound");
    tokio::spawn(server.serve(std::future::pending()));
    address
}

fn options(address: SocketAddr, room: &str) -> ClientOptions {
    ClientOptions {
        server: address.to_string(),
        transport: ClientTransport::Quic,
        name: "bench".into(),
        room: room.into(),
        tls: ClientTlsOptions {
            insecure_skip_verify: true,
            ..ClientTlsOptions::default()
        },
        server_name: Some("localhost".into()),
        ..ClientOptions::default()
    }
}

/// Connects a consumer and waits until it is registered: a message sent to a room with no
/// consumer is dropped, so the producer must not start earlier.
async fn ready_consumer(address: SocketAddr, room: &str) -> Consumer {
    let mut consumer = Consumer::connect(&options(address, room))
        .await
        .expect("consumer");
    let mut probe = Producer::connect(&options(address, room))
        .await
        .expect("producer");
    loop {
        probe.send(b"probe", b"").await.expect("probe");
        if let Ok(Ok(Some(message))) =
            tokio::time::timeout(Duration::from_millis(200), consumer.receive()).await
        {
            consumer.ack(message.id).await.expect("ack");
            break;
        }
    }
    probe.finish().await.expect("probe finish");
    consumer
}

async fn loom_small(address: SocketAddr, pairs: usize, duration: Duration) -> f64 {
    loom_small_in(address, &format!("small-{pairs}"), pairs, duration).await
}

/// Rooms are `{prefix}-{pair}`.
async fn loom_small_in(address: SocketAddr, prefix: &str, pairs: usize, duration: Duration) -> f64 {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for pair in 0..pairs {
        let room = format!("{prefix}-{pair}");
        let mut consumer = ready_consumer(address, &room).await;
        let mut producer = Producer::connect(&options(address, &room))
            .await
            .expect("producer");
        let (received, stop_consumer) = (Arc::clone(&received), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            while !stop_consumer.load(Ordering::Relaxed) {
                let Ok(Some(message)) = consumer.receive().await else {
                    break;
                };
                if consumer.ack(message.id).await.is_err() {
                    break;
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
            consumer.close();
        }));
        let stop_producer = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            // The producer writes as fast as QUIC flow control lets it, as Loom-go's does;
            // the server's stop-and-wait sets the pace. A write that fits the send window
            // completes without yielding, so yield now and then to let the consumers run.
            let body = [7u8; 100];
            let mut sent = 0u32;
            while !stop_producer.load(Ordering::Relaxed) {
                if producer.send(b"key", &body).await.is_err() {
                    break;
                }
                sent = sent.wrapping_add(1);
                if sent.is_multiple_of(32) {
                    tokio::task::yield_now().await;
                }
            }
            producer.close();
        }));
    }
    let start_count = received.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let count = received.load(Ordering::Relaxed) - start_count;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    count as f64 / elapsed.as_secs_f64()
}

async fn loom_large(address: SocketAddr, pairs: usize, messages: usize, size: usize) -> f64 {
    loom_large_in(address, &format!("large-{pairs}"), pairs, messages, size).await
}

async fn loom_large_in(
    address: SocketAddr,
    prefix: &str,
    pairs: usize,
    messages: usize,
    size: usize,
) -> f64 {
    let body = Bytes::from(vec![42u8; size]);
    let mut consumers = Vec::new();
    let mut producers = Vec::new();
    for pair in 0..pairs {
        let room = format!("{prefix}-{pair}");
        consumers.push(ready_consumer(address, &room).await);
        producers.push(
            Producer::connect(&options(address, &room))
                .await
                .expect("producer"),
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut consumer, mut producer) in consumers.into_iter().zip(producers) {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..messages {
                producer
                    .send_bytes(b"key", body.clone())
                    .await
                    .expect("send");
            }
            producer.finish().await.expect("finish");
        }));
        tasks.push(tokio::spawn(async move {
            for _ in 0..messages {
                let header = consumer.next_header().await.expect("header").expect("open");
                let mut bytes = 0usize;
                while let Some(piece) = consumer.next_chunk().await.expect("chunk") {
                    bytes += piece.len();
                }
                assert_eq!(bytes, size, "whole message");
                consumer.ack(header.message_id).await.expect("ack");
            }
        }));
    }
    for task in tasks {
        task.await.expect("pair finished");
    }
    (pairs * messages * size) as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

/// `--serve-raw`: the raw quinn peer alone, on one runtime thread as `loom stream` runs.
fn serve_raw(address: SocketAddr) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bound = start_raw_sink_on(address).await;
        println!("raw quinn peer on {bound}");
        std::future::pending::<()>().await;
    });
}

async fn start_raw_sink() -> SocketAddr {
    start_raw_sink_on("127.0.0.1:0".parse().expect("address")).await
}

/// The raw quinn peer: every stream is read to its end; for each 100-byte read it answers
/// 2 bytes, like an ACK.
async fn start_raw_sink_on(address: SocketAddr) -> SocketAddr {
    let (endpoint, address) = raw_server_endpoint(address);
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut receive)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        let mut small = [0u8; 100];
                        loop {
                            match receive.read_chunk(1 << 20, true).await {
                                Ok(Some(chunk)) if chunk.bytes.len() == 100 => {
                                    small.copy_from_slice(&chunk.bytes);
                                    if send.write_all(&[1, 1]).await.is_err() {
                                        break;
                                    }
                                }
                                Ok(Some(_)) => {}
                                _ => break,
                            }
                        }
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    address
}

/// A plain quinn server endpoint on `address` with Loom's TLS and window settings.
fn raw_server_endpoint(address: SocketAddr) -> (quinn::Endpoint, SocketAddr) {
    let tls = tls::server_config(&loom::config::stream::TlsPlan {
        cert_file: None,
        key_file: None,
        client_ca_file: None,
        require_client_cert: false,
    })
    .expect("tls");
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::clone(&tls.config)).expect("quic");
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(wide_windows()));
    let endpoint = quinn::Endpoint::server(config, address).expect("bind");
    let address = endpoint.local_addr().expect("bound");
    (endpoint, address)
}

fn wide_windows() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    transport.receive_window(quinn::VarInt::from_u32(32 << 20));
    transport.send_window(32 << 20);
    transport
}

async fn raw_connection(address: SocketAddr) -> quinn::Connection {
    let crypto = tls::client_config(
        &ClientTlsOptions {
            insecure_skip_verify: true,
            ..ClientTlsOptions::default()
        },
        tls::ALPN_LOOM,
    )
    .expect("tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(wide_windows()));
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("endpoint");
    endpoint.set_default_client_config(config);
    endpoint
        .connect(address, "localhost")
        .expect("connect")
        .await
        .expect("handshake")
}

async fn raw_small(address: SocketAddr, pairs: usize, duration: Duration) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..pairs {
        let connection = raw_connection(address).await;
        let (count, stop) = (Arc::clone(&count), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let (mut send, mut receive) = connection.open_bi().await.expect("stream");
            let message = Bytes::from_static(&[7u8; 100]);
            let mut ack = [0u8; 2];
            while !stop.load(Ordering::Relaxed) {
                if send.write_chunk(message.clone()).await.is_err()
                    || receive.read_exact(&mut ack).await.is_err()
                {
                    break;
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let total = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    total as f64 / elapsed.as_secs_f64()
}

async fn raw_large(address: SocketAddr, pairs: usize, messages: usize, size: usize) -> f64 {
    let body = Bytes::from(vec![42u8; size]);
    let mut connections = Vec::new();
    for _ in 0..pairs {
        connections.push(raw_connection(address).await);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in connections {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let (mut send, mut receive) = connection.open_bi().await.expect("stream");
            for _ in 0..messages {
                let mut pieces: Vec<Bytes> = (0..body.len())
                    .step_by(64 << 10)
                    .map(|offset| body.slice(offset..(offset + (64 << 10)).min(body.len())))
                    .collect();
                send.write_all_chunks(&mut pieces).await.expect("write");
            }
            send.finish().expect("finish");
            // The sink ends its side once it has read everything.
            let _ = receive.read_to_end(64).await;
        }));
    }
    for task in tasks {
        task.await.expect("stream finished");
    }
    (pairs * messages * size) as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

type RelayWaiters = Arc<
    std::sync::Mutex<
        std::collections::HashMap<u8, tokio::sync::oneshot::Sender<quinn::SendStream>>,
    >,
>;

/// A raw quinn relay: a consumer stream sends `C` and a pair number, a producer stream `P`
/// and the same number; the producer's bytes are then copied to the consumer as they come.
async fn start_raw_relay() -> SocketAddr {
    let (endpoint, address) = raw_server_endpoint("127.0.0.1:0".parse().expect("address"));
    let waiting: RelayWaiters = Arc::default();
    let consumers: Arc<std::sync::Mutex<std::collections::HashMap<u8, quinn::SendStream>>> =
        Arc::default();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let (waiting, consumers) = (Arc::clone(&waiting), Arc::clone(&consumers));
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                let Ok((send, mut receive)) = connection.accept_bi().await else {
                    return;
                };
                let mut preface = [0u8; 2];
                if receive.read_exact(&mut preface).await.is_err() {
                    return;
                }
                if preface[0] == b'C' {
                    let waiter = waiting.lock().expect("lock").remove(&preface[1]);
                    match waiter {
                        Some(waiter) => {
                            let _ = waiter.send(send);
                        }
                        None => {
                            consumers.lock().expect("lock").insert(preface[1], send);
                        }
                    }
                    // Keep the connection open until the consumer closes it.
                    let _ = receive.read_to_end(64).await;
                    return;
                }
                let ready = consumers.lock().expect("lock").remove(&preface[1]);
                let mut forward = match ready {
                    Some(send) => send,
                    None => {
                        let (sender, receiver) = tokio::sync::oneshot::channel();
                        waiting.lock().expect("lock").insert(preface[1], sender);
                        let Ok(send) = receiver.await else { return };
                        send
                    }
                };
                while let Ok(Some(chunk)) = receive.read_chunk(usize::MAX, true).await {
                    if forward.write_chunk(chunk.bytes).await.is_err() {
                        return;
                    }
                }
                let _ = forward.finish();
                let _ = forward.stopped().await;
            });
        }
    });
    address
}

async fn raw_relay_large(address: SocketAddr, pairs: usize, messages: usize, size: usize) -> f64 {
    static NEXT_PAIR: AtomicU64 = AtomicU64::new(0);
    let body = Bytes::from(vec![42u8; size]);
    let mut ends = Vec::new();
    for _ in 0..pairs {
        let pair = NEXT_PAIR.fetch_add(1, Ordering::Relaxed) as u8;
        let consumer = raw_connection(address).await;
        let (mut consumer_send, consumer_receive) = consumer.open_bi().await.expect("stream");
        consumer_send
            .write_all(&[b'C', pair])
            .await
            .expect("preface");
        let producer = raw_connection(address).await;
        let (mut producer_send, _producer_receive) = producer.open_bi().await.expect("stream");
        producer_send
            .write_all(&[b'P', pair])
            .await
            .expect("preface");
        ends.push((consumer, consumer_receive, producer, producer_send));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (consumer, mut consumer_receive, producer, mut producer_send) in ends {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..messages {
                let mut pieces: Vec<Bytes> = (0..body.len())
                    .step_by(64 << 10)
                    .map(|offset| body.slice(offset..(offset + (64 << 10)).min(body.len())))
                    .collect();
                producer_send
                    .write_all_chunks(&mut pieces)
                    .await
                    .expect("write");
            }
            producer_send.finish().expect("finish");
            let _ = producer_send.stopped().await;
            drop(producer);
        }));
        tasks.push(tokio::spawn(async move {
            let mut received = 0usize;
            while let Ok(Some(chunk)) = consumer_receive.read_chunk(usize::MAX, true).await {
                received += chunk.bytes.len();
            }
            assert_eq!(received, messages * size, "relay moved every byte");
            drop(consumer);
        }));
    }
    for task in tasks {
        task.await.expect("relay pair finished");
    }
    (pairs * messages * size) as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}
