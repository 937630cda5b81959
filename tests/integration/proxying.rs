//! Proxying behaviour: forwarded headers, JSON errors, timeouts, WebSocket, HTTP/2 and TLS.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn config(echo_port: u16) -> String {
    format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
    protocol: http2
  - name: tls
    address: "127.0.0.1:@PORT0@"
    protocol: https
    tls:
      cert: "@FIXTURES@/localhost.crt"
      key: "@FIXTURES@/localhost.key"
routes:
  - id: echo
    path: /echo/*
    upstream: echo
  - id: slow
    path: /slow/*
    strip_prefix: true
    timeout: 300ms
    upstream: echo
  - id: refused
    path: /refused
    upstream: refused
  - id: down
    path: /down
    upstream: down
  - id: h2-upstream
    path: /h2/*
    strip_prefix: true
    upstream: echo-h2
  - id: ws
    path: /ws
    upstream: echo
  - id: via-tls
    path: /via-tls/*
    strip_prefix: true
    upstream: self-tls
  - id: via-tls-verified
    path: /via-tls-verified/*
    strip_prefix: true
    upstream: self-tls-verified
upstreams:
  # Loom's own TLS listener stands in for an HTTPS upstream (self-signed certificate).
  - name: self-tls
    endpoints: ["127.0.0.1:@PORT0@"]
    tls:
      sni: localhost
      verify: false
  - name: self-tls-verified
    endpoints: ["127.0.0.1:@PORT0@"]
    tls:
      sni: localhost
  - name: echo
    endpoints: ["127.0.0.1:{echo_port}"]
  - name: echo-h2
    protocol: http2
    endpoints: ["127.0.0.1:{echo_port}"]
  - name: refused
    endpoints: ["127.0.0.1:@DEAD0@"]
  - name: down
    endpoints: ["127.0.0.1:@DEAD1@"]
    health_check:
      path: /health
      interval: 1s
      timeout: 200ms
      unhealthy_threshold: 1
"#
    )
}

async fn error_of(response: reqwest::Response) -> (u16, serde_json::Value, String) {
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], status);
    assert_eq!(body["error"]["request_id"], request_id.as_str());
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    (status, body, request_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_request_id() {
    let backend = echo("e").await;
    let gateway = GatewayProcess::start(&config(backend.addresses()[0].port())).await;
    let client = client();
    let response = client
        .get(gateway.url("/echo/headers?x=1"))
        .header("connection", "x-drop-me")
        .header("x-drop-me", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let generated_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(generated_id.len(), 32);
    let body: serde_json::Value = response.json().await.unwrap();
    let headers = &body["headers"];
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["x-forwarded-host"],
        format!("127.0.0.1:{}", gateway.http_port)
    );
    assert_eq!(
        headers["host"],
        format!("127.0.0.1:{}", gateway.http_port),
        "Host preserved"
    );
    assert_eq!(headers["x-request-id"], generated_id.as_str());
    assert!(
        headers.get("x-drop-me").is_none(),
        "Connection-listed header forwarded"
    );
    assert!(headers.get("keep-alive").is_none(), "keep-alive forwarded");

    let response = client
        .get(gateway.url("/echo/id"))
        .header("x-request-id", "client-chosen-id")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chosen-id");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["headers"]["x-request-id"], "client-chosen-id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_error_is_json() {
    let backend = echo("e").await;
    let gateway = GatewayProcess::start(&config(backend.addresses()[0].port())).await;
    let client = client();

    let (status, body, _) = error_of(client.get(gateway.url("/nope")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("route_not_found"))
    );

    let (status, body, _) =
        error_of(client.get(gateway.url("/refused")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("upstream_connect_failed"))
    );

    let (status, body, _) = error_of(
        client
            .get(gateway.url("/down"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log())),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("no_healthy_upstream"))
    );

    let started = std::time::Instant::now();
    let (status, body, _) = error_of(
        client
            .get(gateway.url("/slow/delay/3000"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("upstream_timeout"))
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "timeout not enforced"
    );

    // Upstream statuses pass through untouched (they are not gateway errors).
    let response = client
        .get(gateway.url("/slow/status/503"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);

    // A dangerous path is refused before routing.
    let raw = raw_request(
        gateway.http_port,
        b"GET /echo/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("\"code\":\"invalid_path\""), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway() {
    let backend = echo("e").await;
    let gateway = GatewayProcess::start(&config(backend.addresses()[0].port())).await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", gateway.http_port))
            .await
            .expect("websocket upgrade through loom");
    assert_eq!(response.status(), 101);
    for text in ["hello", "second message", &"x".repeat(70_000)] {
        socket.send(Message::text(text)).await.unwrap();
        let Some(reply) = socket.next().await else {
            panic!("the websocket closed before replying\n{}", gateway.log());
        };
        let reply =
            reply.unwrap_or_else(|error| panic!("websocket error: {error}\n{}", gateway.log()));
        assert_eq!(reply.into_text().unwrap().as_str(), text);
    }
    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_data().as_ref(), &[0u8, 1, 2, 255]);
    socket.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_tls_and_h2_upstreams() {
    let backend = echo("e").await;
    let gateway = GatewayProcess::start(&config(backend.addresses()[0].port())).await;

    // h2c with prior knowledge on the http2 listener; the upstream leg is HTTP/1.1.
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2c.get(gateway.url("/echo/over-h2c")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["version"], "HTTP/1.1");
    assert_eq!(body["path"], "/echo/over-h2c");

    // HTTP/1.1 still works on the same port.
    let (status, _) = get_json(&client(), &gateway.url("/echo/over-h1")).await;
    assert_eq!(status, 200);

    // TLS with ALPN negotiates h2.
    let tls = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let response = tls
        .get(format!(
            "https://localhost:{}/echo/over-tls",
            gateway.extra_ports[0]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");

    // HTTPS upstream with SNI; verification can be switched off per upstream, and when on,
    // an untrusted certificate fails the connection.
    let (status, body) = get_json(&client(), &gateway.url("/via-tls/echo/through-tls")).await;
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/echo/through-tls");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    let response = client()
        .get(gateway.url("/via-tls-verified/echo/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);

    // An http2 upstream is spoken to in h2c (as gRPC backends need).
    let (status, body) = get_json(&client(), &gateway.url("/h2/upstream")).await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], "HTTP/2.0");
    assert_eq!(body["path"], "/upstream");
}

/// A client connection's read buffer (`server.read_buffer_size`) only sets how much one read
/// takes from the socket: with the smallest allowed, 1 KiB, header blocks, bodies and TLS
/// records many times larger still arrive whole, over HTTP/1.1, h2c and TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_read_buffer_still_reads_large_heads_bodies_and_tls_records() {
    let backend = echo("e").await;
    let gateway = GatewayProcess::start_with_server(
        &config(backend.addresses()[0].port()),
        "  read_buffer_size: 1KiB\n",
    )
    .await;
    let large_header = "h".repeat(6 * 1024);
    let body = vec![b'b'; 300 * 1024];
    let plain = client();
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let tls = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let tls_url = format!("https://localhost:{}/echo/tls", gateway.extra_ports[0]);
    for (client, url) in [
        (&plain, gateway.url("/echo/h1")),
        (&h2c, gateway.url("/echo/h2c")),
        (&tls, tls_url),
    ] {
        // Twice on one connection: the second request follows on a reused one.
        for _ in 0..2 {
            let response = client
                .post(&url)
                .header("x-large", &large_header)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{url}");
            let echoed: serde_json::Value = response.json().await.unwrap();
            assert_eq!(echoed["body_size"], 300 * 1024, "{url}");
            assert_eq!(echoed["headers"]["x-large"], large_header.as_str(), "{url}");
        }
    }
}

/// Loom edits headers on one plain header map (it sends names in canonical case, as Envoy
/// does): what must survive that is checked on the wire, against a backend that records the
/// raw request and answers with a non-standard status, reason phrase and hop-by-hop headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_target_reason_phrase_and_hop_by_hop_headers_survive_header_edits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_port = listener.local_addr().unwrap().port();
    let (seen_sender, mut seen) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen_sender = seen_sender.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let _ = seen_sender.send(request);
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 299 Quite Fine\r\nX-Mixed-Case: kept\r\nKeep-Alive: timeout=5\r\n\
                          Proxy-Connection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool\n    endpoints: [\"127.0.0.1:{backend_port}\"]\n"
    )))
    .await;

    let mut request = b"GET /raw/caf\xc3\xa9/?q=a%20b HTTP/1.1\r\nHost: example.test\r\n".to_vec();
    request.extend_from_slice(b"X-Forwarded-For: 198.51.100.1\r\nConnection: close\r\n\r\n");
    let answer = raw_request(gateway.http_port, &request).await;
    assert!(
        answer.starts_with("HTTP/1.1 299 Quite Fine\r\n"),
        "{answer}"
    );
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\nx-mixed-case: kept\r\n"), "{answer}");
    assert!(!lower.contains("keep-alive: timeout"), "{answer}");
    assert!(!lower.contains("proxy-connection"), "{answer}");
    assert!(lower.contains("\r\nx-request-id: "), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");

    let upstream = seen.recv().await.expect("the backend got the request");
    let request_line = upstream.split(|byte| *byte == b'\r').next().unwrap();
    assert_eq!(
        request_line,
        b"GET /raw/caf\xc3\xa9/?q=a%20b HTTP/1.1",
        "{}",
        String::from_utf8_lossy(&upstream)
    );
    let text = String::from_utf8_lossy(&upstream).to_ascii_lowercase();
    assert!(text.contains("\r\nhost: example.test\r\n"), "{text}");
    assert!(
        text.contains("\r\nx-forwarded-for: 198.51.100.1, 127.0.0.1\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nx-forwarded-proto: http\r\n"), "{text}");
    assert!(
        text.contains("\r\nx-forwarded-host: example.test\r\n"),
        "{text}"
    );
    assert_eq!(text.matches("\r\nx-request-id: ").count(), 1, "{text}");

    // An absolute-form target (as sent to a forward proxy) goes upstream as it came.
    let answer = raw_request(
        gateway.http_port,
        b"GET http://example.test/absolute?x=1 HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 299 Quite Fine\r\n"),
        "{answer}"
    );
    let upstream = seen.recv().await.expect("the backend got the request");
    let request_line = upstream.split(|byte| *byte == b'\r').next().unwrap();
    assert_eq!(
        String::from_utf8_lossy(request_line),
        "GET http://example.test/absolute?x=1 HTTP/1.1"
    );

    // Every standard hop-by-hop request field stops at the gateway, and so does what
    // `Connection` names; a chunked body goes upstream framed by exactly one
    // `Transfer-Encoding: chunked`.
    let answer = raw_request(
        gateway.http_port,
        b"POST /hop HTTP/1.1\r\nHost: example.test\r\nConnection: close, x-nominated\r\n\
          X-Nominated: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
          Proxy-Authorization: Basic dXNlcjpwYXNz\r\nProxy-Authenticate: Basic\r\nTE: trailers\r\n\
          Trailer: X-Checksum\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 299 Quite Fine\r\n"),
        "{answer}"
    );
    let upstream = seen.recv().await.expect("the backend got the request");
    let text = String::from_utf8_lossy(&upstream).to_ascii_lowercase();
    assert!(text.contains("\r\nx-kept: yes\r\n"), "{text}");
    for gone in [
        "x-nominated",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "\r\nte:",
        "trailer",
    ] {
        assert!(!text.contains(gone), "{gone} went upstream: {text}");
    }
    assert_eq!(
        text.matches("transfer-encoding").count(),
        1,
        "framing: {text}"
    );
    assert!(
        text.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{text}"
    );
}
