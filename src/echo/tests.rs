//! End-to-end tests on real sockets: each test starts its own server on an ephemeral port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::EchoServer;
use super::body::PATTERN_ALPHABET;

/// Guards against a hang turning into a stuck test run; never used to wait for readiness.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start(instance: &str) -> EchoServer {
    EchoServer::start(&[loopback_any_port()], instance)
        .await
        .expect("echo server starts on an ephemeral port")
}

fn url(server: &EchoServer, path_and_query: &str) -> String {
    format!("http://{}{path_and_query}", server.addresses()[0])
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("response body is JSON")
}

/// Sends raw bytes on a fresh connection and returns everything the server wrote before closing.
async fn raw_exchange(address: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connects");
    stream.write_all(request).await.expect("writes request");
    let mut received = Vec::new();
    tokio::time::timeout(TEST_TIMEOUT, stream.read_to_end(&mut received))
        .await
        .expect("server closes the connection")
        .expect("reads response");
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn echo_reports_the_request() {
    let server = start("echo-a").await;
    let response = reqwest::Client::new()
        .post(url(&server, "/some/path?x=1&y=two"))
        .header("x-single", "alone")
        .header("x-repeated", "first")
        .header("x-repeated", "second")
        .body("hello")
        .send()
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo-instance"], "echo-a");
    assert_eq!(response.headers()["content-type"], "application/json");
    let local_port = response.remote_addr().map(|address| address.port());
    let echo = json_of(response).await;

    assert_eq!(echo["instance"], "echo-a");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/some/path");
    assert_eq!(echo["query"], "x=1&y=two");
    assert_eq!(echo["headers"]["x-single"], "alone");
    assert_eq!(
        echo["headers"]["x-repeated"],
        serde_json::json!(["first", "second"])
    );
    assert_eq!(echo["headers"]["content-length"], "5");
    assert_eq!(echo["body_size"], 5);
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["local_address"], server.addresses()[0].to_string());
    assert_eq!(local_port, Some(server.addresses()[0].port()));
    let remote: SocketAddr = echo["remote_address"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .expect("remote_address is ip:port");
    assert!(remote.ip().is_loopback());
    server.stop().await;
}

#[tokio::test]
async fn echo_without_query_reports_null_and_counts_large_bodies() {
    let server = start("echo-b").await;
    let body = vec![7u8; 3 * 1024 * 1024 + 17];
    let response = reqwest::Client::new()
        .put(url(&server, "/upload"))
        .body(body)
        .send()
        .await
        .expect("request succeeds");
    let echo = json_of(response).await;
    assert_eq!(echo["query"], Value::Null);
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["body_size"], 3 * 1024 * 1024 + 17);
    server.stop().await;
}

#[tokio::test]
async fn declared_body_over_the_limit_is_refused() {
    let server = start("echo-limit").await;
    let response = raw_exchange(
        server.addresses()[0],
        b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 104857601\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("x-echo-instance: echo-limit"),
        "{response}"
    );
    server.stop().await;
}

#[tokio::test]
async fn health_reports_the_instance() {
    let server = start("healthy").await;
    let response = reqwest::get(url(&server, "/health"))
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_of(response).await,
        serde_json::json!({"status": "ok", "instance": "healthy"})
    );
    server.stop().await;
}

#[tokio::test]
async fn status_route_sets_the_status() {
    let server = start("status").await;
    let client = reqwest::Client::new();

    let response = client
        .delete(url(&server, "/status/418?why=teapot"))
        .send()
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 418);
    let echo = json_of(response).await;
    assert_eq!(echo["path"], "/status/418");
    assert_eq!(echo["method"], "DELETE");

    let response = client
        .get(url(&server, "/status/503"))
        .send()
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-echo-instance"], "status");

    // No body may follow a 204; the connection must stay usable afterwards.
    let response = client
        .get(url(&server, "/status/204"))
        .send()
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.expect("empty body").is_empty());

    for invalid in ["/status/99", "/status/1000", "/status/teapot"] {
        let response = client
            .get(url(&server, invalid))
            .send()
            .await
            .expect("request succeeds");
        assert_eq!(response.status(), 400, "{invalid}");
        assert!(json_of(response).await["error"].is_string());
    }
    server.stop().await;
}

#[tokio::test]
async fn bytes_route_sends_the_pattern() {
    let server = start("bytes").await;
    let length = 200_000;
    let response = reqwest::get(url(&server, &format!("/bytes/{length}")))
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.headers()["content-length"], length.to_string());
    let body = response.bytes().await.expect("body arrives");
    assert_eq!(body.len(), length);
    let pattern_holds = body
        .iter()
        .enumerate()
        .all(|(index, byte)| *byte == PATTERN_ALPHABET[index % PATTERN_ALPHABET.len()]);
    assert!(pattern_holds);

    let response = reqwest::get(url(&server, "/bytes/0"))
        .await
        .expect("request succeeds");
    assert_eq!(response.headers()["content-length"], "0");
    assert!(response.bytes().await.expect("body arrives").is_empty());

    let response = reqwest::get(url(&server, "/bytes/lots"))
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 400);
    server.stop().await;
}

#[tokio::test]
async fn delay_route_waits_before_answering() {
    let server = start("slow").await;
    let started = Instant::now();
    let response = reqwest::get(url(&server, "/delay/150"))
        .await
        .expect("request succeeds");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["path"], "/delay/150");

    let response = reqwest::get(url(&server, "/delay/later"))
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 400);
    server.stop().await;
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let server = start("h2").await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client builds");
    let response = client
        .post(url(&server, "/over/h2?q"))
        .header("x-repeated", "1")
        .header("x-repeated", "2")
        .body("abc")
        .send()
        .await
        .expect("request succeeds");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.headers()["x-echo-instance"], "h2");
    let echo = json_of(response).await;
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["path"], "/over/h2");
    assert_eq!(echo["query"], "q");
    assert_eq!(echo["body_size"], 3);
    assert_eq!(echo["headers"]["x-repeated"], serde_json::json!(["1", "2"]));

    let response = client
        .get(url(&server, "/bytes/100000"))
        .send()
        .await
        .expect("request succeeds");
    assert_eq!(response.bytes().await.expect("body arrives").len(), 100_000);
    server.stop().await;
}

#[tokio::test]
async fn stop_drops_connections_and_frees_the_port() {
    let server = start("first").await;
    let address = server.addresses()[0];

    // An idle keep-alive connection, proven established by one exchange on it.
    let mut idle = TcpStream::connect(address).await.expect("connects");
    idle.write_all(b"GET /bytes/1 HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await
        .expect("writes request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\nA") {
        let mut byte = [0u8; 1];
        idle.read_exact(&mut byte).await.expect("reads response");
        head.push(byte[0]);
    }

    tokio::time::timeout(TEST_TIMEOUT, server.stop())
        .await
        .expect("stop finishes");

    let mut rest = Vec::new();
    let read = tokio::time::timeout(TEST_TIMEOUT, idle.read_to_end(&mut rest))
        .await
        .expect("the stopped server closes the connection");
    assert!(read.is_err() || rest.is_empty());
    assert!(TcpStream::connect(address).await.is_err());

    let second = EchoServer::start(&[address], "second")
        .await
        .expect("the same port can be bound again at once");
    assert_eq!(second.addresses(), [address]);
    let response = reqwest::get(format!("http://{address}/health"))
        .await
        .expect("request succeeds");
    assert_eq!(json_of(response).await["instance"], "second");
    second.stop().await;
}

#[tokio::test]
async fn stop_is_not_held_up_by_h2_requests_in_flight() {
    let server = start("h2-stop").await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client builds");
    let slow = tokio::spawn(client.get(url(&server, "/delay/60000")).send());
    // Answered on the same multiplexed connection, after the slow request was sent.
    let response = client
        .get(url(&server, "/health"))
        .send()
        .await
        .expect("request succeeds");
    assert_eq!(response.status(), 200);

    tokio::time::timeout(TEST_TIMEOUT, server.stop())
        .await
        .expect("stop does not wait for the delayed handler");
    let slow = tokio::time::timeout(TEST_TIMEOUT, slow)
        .await
        .expect("the delayed request ends with its connection")
        .expect("request task does not panic");
    assert!(slow.is_err());
}

#[tokio::test]
async fn serves_every_address_given() {
    let server = EchoServer::start(&[loopback_any_port(), loopback_any_port()], "pair")
        .await
        .expect("echo server starts");
    let addresses = server.addresses().to_vec();
    assert_eq!(addresses.len(), 2);
    assert_ne!(addresses[0], addresses[1]);
    for address in addresses {
        let response = reqwest::get(format!("http://{address}/"))
            .await
            .expect("request succeeds");
        assert_eq!(
            json_of(response).await["local_address"],
            address.to_string()
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn start_rejects_bad_arguments() {
    let no_addresses = EchoServer::start(&[], "none").await;
    assert!(no_addresses.is_err());
    let bad_name = EchoServer::start(&[loopback_any_port()], "line\nbreak").await;
    assert!(bad_name.is_err());
}

#[tokio::test]
async fn websocket_echoes_messages() {
    let server = start("ws").await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/socket", server.addresses()[0]))
            .await
            .expect("handshake succeeds");
    assert_eq!(response.headers()["x-echo-instance"], "ws");

    socket
        .send(Message::text("hello"))
        .await
        .expect("sends text");
    let reply = socket.next().await.expect("a reply").expect("valid frame");
    assert_eq!(reply, Message::text("hello"));

    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("sends binary");
    let reply = socket.next().await.expect("a reply").expect("valid frame");
    assert_eq!(reply, Message::binary(vec![0u8, 1, 2, 255]));

    socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("sends ping");
    let reply = socket.next().await.expect("a reply").expect("valid frame");
    assert_eq!(reply, Message::Pong(b"are you there".to_vec().into()));

    socket.close(None).await.expect("sends close");
    let reply = socket.next().await.expect("a reply").expect("valid frame");
    assert!(matches!(reply, Message::Close(_)));
    assert!(socket.next().await.is_none());
    server.stop().await;
}

#[tokio::test]
async fn stop_drops_open_websockets() {
    let server = start("ws-stop").await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/", server.addresses()[0]))
            .await
            .expect("handshake succeeds");
    socket
        .send(Message::text("ready"))
        .await
        .expect("sends text");
    let reply = socket.next().await.expect("a reply").expect("valid frame");
    assert_eq!(reply, Message::text("ready"));

    tokio::time::timeout(TEST_TIMEOUT, server.stop())
        .await
        .expect("stop finishes");
    let after_stop = tokio::time::timeout(TEST_TIMEOUT, socket.next())
        .await
        .expect("the socket is dropped");
    assert!(!matches!(after_stop, Some(Ok(Message::Text(_)))));
}

#[tokio::test]
async fn bad_websocket_handshakes_are_refused() {
    let server = start("ws-bad").await;
    let missing_key = raw_exchange(
        server.addresses()[0],
        b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(missing_key.starts_with("HTTP/1.1 400"), "{missing_key}");

    let old_version = raw_exchange(
        server.addresses()[0],
        b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await;
    assert!(old_version.starts_with("HTTP/1.1 426"), "{old_version}");
    assert!(
        old_version.contains("sec-websocket-version: 13"),
        "{old_version}"
    );
    server.stop().await;
}

#[tokio::test]
async fn websocket_accept_key_follows_rfc_6455() {
    let server = start("ws-key").await;
    let mut stream = TcpStream::connect(server.addresses()[0])
        .await
        .expect("connects");
    // The sample key and accept value from RFC 6455 section 1.3.
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("writes handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(TEST_TIMEOUT, stream.read_exact(&mut byte))
            .await
            .expect("handshake answered")
            .expect("reads handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    server.stop().await;
}
