//! Streaming in the real binaries: `loom stream -c FILE` with a reference-schema config
//! (both protocols, admin probes, SIGHUP reload, the produce/consume commands), and the
//! gateway running streaming from its `stream:` section.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loom::stream::client::{ClientOptions, ClientTransport, Consumer, Producer};
use loom::stream::tls::ClientTlsOptions;

use crate::stream_support::{hello, malformed_producer_streams, raw_h3_status, receive_and_ack};
use crate::support::{GatewayProcess, client, free_port};

/// A UDP port that was free a moment ago.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|address| address.port())
        .expect("an ephemeral UDP port")
}

fn options(port: u16, transport: ClientTransport, room: &str, token: &str) -> ClientOptions {
    ClientOptions {
        server: format!("127.0.0.1:{port}"),
        transport,
        name: "process-test".into(),
        room: room.into(),
        token: token.into(),
        tls: ClientTlsOptions {
            insecure_skip_verify: true,
            ..ClientTlsOptions::default()
        },
        server_name: Some("localhost".into()),
    }
}

async fn wait_ready(url: &str, child: &mut Child, log: &std::path::Path) {
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "loom stream exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(response) = http.get(url).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the metrics text at `url` contains `sample` (a consumer is registered only
/// once its gauge shows; messages sent before that would be dropped).
async fn wait_for_metrics(http: &reqwest::Client, url: &str, sample: &str) {
    let seen = wait_for_metrics_where(http, url, Duration::from_secs(20), |text| {
        text.contains(sample)
    })
    .await;
    assert!(seen.is_ok(), "never saw {sample}:\n{}", seen.unwrap_err());
}

/// Polls the metrics text at `url` until `condition` holds (`Ok`) or `within` has passed
/// (`Err` with the last text).
async fn wait_for_metrics_where(
    http: &reqwest::Client,
    url: &str,
    within: Duration,
    condition: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let text = metrics_text(http, url).await;
        if condition(&text) {
            return Ok(text);
        }
        if Instant::now() >= deadline {
            return Err(text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

struct StandaloneServer {
    child: Child,
    directory: tempfile::TempDir,
    udp: u16,
    admin: u16,
}

impl Drop for StandaloneServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reference_config(udp: u16, admin: u16, token: &str) -> String {
    // The reference server's sample file, with its ports and a token changed.
    format!(
        r#"transport: quic
server:
  addr: "127.0.0.1:{udp}"
  tls:
    cert_file: ""
    key_file: ""
    ca_file: ""
    server_name: ""
    insecure_skip_verify: true
admin:
  addr: "127.0.0.1:{admin}"
  enable_pprof: true
auth:
  mode: token
  tokens:
    - {{token: "{token}", principal: "alice", rooms: ["*"], roles: ["produce", "consume"]}}
router:
  partition_count: 64
  max_message_bytes: 268435456
  max_chunk_bytes: 65536
  max_name_bytes: 128
  max_room_bytes: 128
  max_token_bytes: 1024
  max_key_bytes: 256
  max_backlog_depth: 128
  partition_full_behavior: drop_oldest
  chunk_full_behavior: drop
"#
    )
}

async fn start_standalone(token: &str) -> StandaloneServer {
    start_standalone_with(token, "").await
}

/// `router_keys`: more `router:` lines, indented by two spaces.
async fn start_standalone_with(token: &str, router_keys: &str) -> StandaloneServer {
    let directory = tempfile::tempdir().unwrap();
    let (udp, admin) = (free_udp_port(), free_port());
    let config = directory.path().join("loom.yaml");
    let text = reference_config(udp, admin, token) + router_keys;
    std::fs::write(&config, text).unwrap();
    let log = directory.path().join("stream.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["stream", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("loom stream starts");
    wait_ready(
        &format!("http://127.0.0.1:{admin}/readyz"),
        &mut child,
        &log,
    )
    .await;
    StandaloneServer {
        child,
        directory,
        udp,
        admin,
    }
}

fn cli(arguments: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loom"))
        .arg("stream")
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CLI starts");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn standalone_server_takes_the_reference_config_and_the_cli_talks_to_it() {
    let server = start_standalone("one").await;
    let port = server.udp.to_string();
    let server_address = format!("127.0.0.1:{port}");

    // CLI producer (raw QUIC) → library consumer (HTTP/3), on the one UDP port.
    let mut consumer = Consumer::connect(&options(server.udp, ClientTransport::H3, "cli", "one"))
        .await
        .unwrap();
    let consumer_task = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for _ in 0..3 {
            bodies.push(receive_and_ack(&mut consumer).await.body);
        }
        bodies
    });
    // Until the consumer is registered, messages would be dropped: wait for its gauge.
    let metrics_url = format!("http://127.0.0.1:{}/metrics", server.admin);
    let http = client();
    wait_for_metrics(
        &http,
        &metrics_url,
        "loom_streams{role=\"consumer\",room=\"cli\",transport=\"h3\"} 1",
    )
    .await;
    let output = tokio::task::spawn_blocking(move || {
        cli(
            &[
                "produce",
                "--server",
                &server_address,
                "--room",
                "cli",
                "--token",
                "one",
                "--insecure",
                "--lines",
            ],
            b"alpha\nbeta\ngamma\n",
        )
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bodies = consumer_task.await.unwrap();
    assert_eq!(
        bodies,
        vec![b"alpha".to_vec(), b"beta".to_vec(), b"gamma".to_vec()]
    );

    // Library producer → CLI consumer.
    let server_address = format!("127.0.0.1:{port}");
    let consume = tokio::task::spawn_blocking(move || {
        cli(
            &[
                "consume",
                "--server",
                &server_address,
                "--room",
                "back",
                "--token",
                "one",
                "--insecure",
                "--count",
                "2",
                "--lines",
            ],
            b"",
        )
    });
    wait_for_metrics(
        &http,
        &metrics_url,
        "loom_streams{role=\"consumer\",room=\"back\",transport=\"quic\"} 1",
    )
    .await;
    let mut producer =
        Producer::connect(&options(server.udp, ClientTransport::Quic, "back", "one"))
            .await
            .unwrap();
    producer.send(b"k", b"first").await.unwrap();
    producer.send(b"k", b"second").await.unwrap();
    producer.finish().await.unwrap();
    let output = consume.await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "first\nsecond\n");

    let text = metrics_text(&http, &metrics_url).await;
    assert!(
        text.contains("loom_messages_in_total{room=\"cli\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("loom_bytes_out_total{room=\"back\"} 11"),
        "{text}"
    );
    // Every client closed its connection on leaving, the exiting CLI processes included: the
    // server sees the closes at once rather than after its 6 s idle timeout.
    let closed = wait_for_metrics_where(&http, &metrics_url, Duration::from_secs(3), |text| {
        text.contains("loom_connections{transport=\"quic\"} 0")
            && !text.contains("loom_connection_errors_total{")
    })
    .await;
    assert!(
        closed.is_ok(),
        "connections were left to time out:\n{}",
        closed.unwrap_err()
    );
    let health = http
        .get(format!("http://127.0.0.1:{}/healthz", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Whether streams with `token` are accepted: a refused consumer sees its stream end at once;
/// an accepted one receives the producer's probe (re-sent until the consumer is registered).
async fn token_accepted(port: u16, token: &str) -> bool {
    let Ok(mut consumer) =
        Consumer::connect(&options(port, ClientTransport::Quic, "reload", token)).await
    else {
        return false;
    };
    let Ok(mut producer) =
        Producer::connect(&options(port, ClientTransport::Quic, "reload", token)).await
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = producer.send(b"k", b"probe").await;
        match tokio::time::timeout(Duration::from_millis(100), consumer.next_header()).await {
            Ok(Ok(Some(_))) => return true,
            Ok(Ok(None)) | Ok(Err(_)) => return false,
            Err(_) => assert!(
                Instant::now() < deadline,
                "token {token}: neither accepted nor refused"
            ),
        }
    }
}

#[tokio::test]
async fn sighup_applies_new_tokens_to_new_streams() {
    let server = start_standalone("old").await;
    assert!(token_accepted(server.udp, "old").await);
    assert!(!token_accepted(server.udp, "new").await);
    let config = server.directory.path().join("loom.yaml");
    std::fs::write(&config, reference_config(server.udp, server.admin, "new")).unwrap();
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !token_accepted(server.udp, "new").await {
        assert!(Instant::now() < deadline, "the new token never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!token_accepted(server.udp, "old").await);

    // A broken file is refused and the running config stays.
    std::fs::write(&config, "router:\n  partition_count: 0\n").unwrap();
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGHUP);
    }
    let log = server.directory.path().join("stream.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("router.partition_count")
    {
        assert!(
            Instant::now() < deadline,
            "the bad reload was never reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(token_accepted(server.udp, "new").await);
}

#[tokio::test]
async fn an_invalid_stream_config_names_file_line_and_key() {
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("bad.yaml");
    std::fs::write(
        &config,
        "router:\n  max_chunk_bytes: 0\n  chunk_full: drop\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["stream", "-t", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(errors.contains("bad.yaml:2:"), "{errors}");
    assert!(errors.contains("router.max_chunk_bytes"), "{errors}");
    assert!(errors.contains("router.chunk_full"), "{errors}");
}

/// A gateway config (one listener, one route to a dead upstream) whose `stream:` section
/// serves on UDP `udp`, with `extra` stream keys.
fn gateway_with_stream(udp: u16, extra: &str) -> String {
    format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
routes:
  - id: all
    path: /*
    upstream: pool
upstreams:
  - name: pool
    endpoints: ["127.0.0.1:@DEAD0@"]
stream:
  server:
    addr: "127.0.0.1:{udp}"
{extra}"#
    )
}

#[tokio::test]
async fn the_gateway_runs_streaming_from_its_stream_section() {
    let udp = free_udp_port();
    let template = gateway_with_stream(
        udp,
        "  rooms:\n    - {name: broadcast, queue_type: fanout}\n",
    );
    let gateway = GatewayProcess::start(&template).await;
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(gateway.admin_url("/readyz"))
        .send()
        .await
        .map(|response| response.status())
        .ok()
        != Some(reqwest::StatusCode::OK)
    {
        assert!(
            Instant::now() < deadline,
            "/readyz never 200:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first = Consumer::connect(&options(udp, ClientTransport::Quic, "broadcast", ""))
        .await
        .unwrap();
    let mut second = Consumer::connect(&options(udp, ClientTransport::H3, "broadcast", ""))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gateway
        .metric("loom_streams{role=\"consumer\",room=\"broadcast\",transport=\"h3\"}")
        .await
        != Some(1.0)
        || gateway
            .metric("loom_streams{role=\"consumer\",room=\"broadcast\",transport=\"quic\"}")
            .await
            != Some(1.0)
    {
        assert!(Instant::now() < deadline, "consumers never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut producer = Producer::connect(&options(udp, ClientTransport::H3, "broadcast", ""))
        .await
        .unwrap();
    producer.send(b"k", b"to everyone").await.unwrap();
    assert_eq!(receive_and_ack(&mut first).await.body, b"to everyone");
    assert_eq!(receive_and_ack(&mut second).await.body, b"to everyone");
    producer.finish().await.unwrap();
    assert_eq!(
        gateway
            .metric("loom_messages_in_total{room=\"broadcast\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        gateway
            .metric("loom_messages_out_total{room=\"broadcast\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn an_upgrade_takes_the_stream_port_over() {
    let udp = free_udp_port();
    let template = gateway_with_stream(udp, "");
    let mut gateway = GatewayProcess::start(&template).await;
    let new_log_path = gateway.directory.path().join("new.log");
    let mut new_process = Command::new(env!("CARGO_BIN_EXE_loom"))
        .arg("-u")
        .arg("-c")
        .arg(&gateway.config_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&new_log_path).unwrap())
        .spawn()
        .expect("new loom starts");
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(gateway.pid(), libc::SIGQUIT);
    }
    assert!(
        gateway.wait_exit(Duration::from_secs(30)).await,
        "the old process did not exit:\n{}",
        gateway.log()
    );
    // Only the new process holds the UDP port now: a fresh pair of streams works.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = new_process.try_wait() {
            panic!(
                "the new process exited ({status}):\n{}",
                std::fs::read_to_string(&new_log_path).unwrap_or_default()
            );
        }
        let delivered = async {
            let mut consumer = Consumer::connect(&options(udp, ClientTransport::Quic, "after", ""))
                .await
                .ok()?;
            let mut producer = Producer::connect(&options(udp, ClientTransport::Quic, "after", ""))
                .await
                .ok()?;
            for _ in 0..20 {
                producer.send(b"k", b"served").await.ok()?;
                if let Ok(Ok(Some(message))) =
                    tokio::time::timeout(Duration::from_millis(100), consumer.receive()).await
                {
                    return Some(message.body);
                }
            }
            None
        }
        .await;
        if delivered.as_deref() == Some(&b"served"[..]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new process never served streams:\n{}",
            std::fs::read_to_string(&new_log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = new_process.kill();
    let _ = new_process.wait();
}

/// Every way the server refuses an HTTP/3 stream answers with its status, and none of them
/// panics a server task (h3-quinn used to panic when a refused request's body was stopped
/// while a read on it was pending).
#[tokio::test]
async fn http3_refusals_answer_their_status_without_a_panic() {
    let server = start_standalone_with(
        "one",
        "  max_streams_per_room: 2\n  max_protocol_errors: 1\n",
    )
    .await;
    let address: std::net::SocketAddr = format!("127.0.0.1:{}", server.udp).parse().unwrap();
    let producer = hello(b'P', "refusals", "one");
    // The malformed streams first: their two protocol errors (over the limit of 1) in this
    // room from this address get the last case's producer refused.
    for (name, body) in malformed_producer_streams("refusals", "one") {
        assert_eq!(
            raw_h3_status(address, "POST", "/stream", &body).await,
            400,
            "{name}"
        );
    }
    let cases: [(&str, &str, &str, Vec<u8>, u16); 5] = [
        (
            "wrong token",
            "POST",
            "/stream",
            hello(b'P', "refusals", "two"),
            401,
        ),
        (
            "no token",
            "POST",
            "/stream",
            hello(b'C', "refusals", ""),
            401,
        ),
        ("another path", "POST", "/other", producer.clone(), 404),
        ("another method", "GET", "/stream", Vec::new(), 405),
        ("blocked producer", "POST", "/stream", producer, 429),
    ];
    for (name, method, path, body, status) in cases {
        assert_eq!(
            raw_h3_status(address, method, path, &body).await,
            status,
            "{name}"
        );
    }
    // A full room: two consumers hold both of its places.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            Consumer::connect(&options(server.udp, ClientTransport::Quic, "full", "one"))
                .await
                .unwrap(),
        );
    }
    let http = client();
    wait_for_metrics(
        &http,
        &format!("http://127.0.0.1:{}/metrics", server.admin),
        "loom_streams{role=\"consumer\",room=\"full\",transport=\"quic\"} 2",
    )
    .await;
    assert_eq!(
        raw_h3_status(address, "POST", "/stream", &hello(b'C', "full", "one")).await,
        503,
        "room full"
    );
    // The server still serves, and its log holds no panic.
    let mut consumer = Consumer::connect(&options(server.udp, ClientTransport::H3, "after", "one"))
        .await
        .unwrap();
    wait_for_metrics(
        &http,
        &format!("http://127.0.0.1:{}/metrics", server.admin),
        "loom_streams{role=\"consumer\",room=\"after\",transport=\"h3\"} 1",
    )
    .await;
    let mut producer = Producer::connect(&options(server.udp, ClientTransport::H3, "after", "one"))
        .await
        .unwrap();
    producer.send(b"k", b"still serving").await.unwrap();
    assert_eq!(receive_and_ack(&mut consumer).await.body, b"still serving");
    producer.finish().await.unwrap();
    let log = std::fs::read_to_string(server.directory.path().join("stream.log")).unwrap();
    assert!(!log.contains("panicked"), "a server task panicked:\n{log}");
}

/// `loom upgrade` on a gateway with a stream section returns only once the new process
/// serves streams on the UDP port too.
#[tokio::test]
async fn loom_upgrade_waits_for_the_stream_port() {
    let udp = free_udp_port();
    let template = gateway_with_stream(udp, "");
    let mut gateway = GatewayProcess::start(&template).await;
    let old_pid = gateway.pid();
    let log_path = gateway.directory.path().join("upgrade.log");
    let output = Command::new(env!("CARGO_BIN_EXE_loom"))
        .arg("upgrade")
        .arg("-c")
        .arg(&gateway.config_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .output()
        .expect("loom upgrade runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    assert!(
        stdout.contains(&format!("pid {old_pid} handed over")),
        "{stdout}"
    );
    assert!(
        gateway.wait_exit(Duration::from_secs(30)).await,
        "the old process did not exit:\n{}",
        gateway.log()
    );
    // The command said the new process serves: a pair of streams works at once.
    let mut consumer = Consumer::connect(&options(udp, ClientTransport::Quic, "upgraded", ""))
        .await
        .expect("the new process accepts a consumer");
    let mut producer = Producer::connect(&options(udp, ClientTransport::Quic, "upgraded", ""))
        .await
        .expect("the new process accepts a producer");
    producer.send(b"k", b"served").await.expect("sent");
    let message = tokio::time::timeout(Duration::from_secs(10), consumer.receive())
        .await
        .expect("delivered in time")
        .expect("no stream error")
        .expect("a message");
    assert_eq!(message.body, b"served");
    let new_pid: i32 = std::fs::read_to_string(gateway.directory.path().join("loom.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the gateway `loom upgrade` started for this test.
    unsafe {
        libc::kill(new_pid, libc::SIGTERM);
    }
}
