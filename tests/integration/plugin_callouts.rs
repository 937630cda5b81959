//! Proxy-Wasm callouts and pausing against real servers: unary gRPC calls to a real grpcio
//! server, requests paused until the plugin's root context resumes them, and http_calls on
//! pooled connections and over TLS. The plugin is `plugins/testing/callouts` (Rust SDK).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// `tests/fixtures/grpc_probe_server.py`, killed when dropped (its stdin closes too).
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/grpc_probe_server.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (the gRPC server needs grpcio: .ci/install-deps)");
        let stdout = child.stdout.take().expect("piped stdout");
        // The first line is the port, printed once the server listens.
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the gRPC server's port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the gRPC server did not start: {line:?}"));
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn callouts_config(echo_port: u16, grpc_port: &str) -> String {
    format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
  # gRPC clients speak h2c here.
  - name: grpc
    address: "127.0.0.1:@PORT0@"
    protocol: http2
plugin_dir: "@PLUGINS@"
plugin_cache_dir: "@PLUGIN_CACHE@"
plugins:
  - name: callouts
    path: loom_test_callouts.wasm
    pause_timeout: 1s
routes:
  - id: callouts
    path: /callouts/*
    upstream: echo
    plugins: [callouts]
  # gRPC requests proxied to the gRPC server, through the same plugin.
  - id: grpc
    path: /loom.test.Probe/*
    upstream: grpc
    plugins: [callouts]
upstreams:
  - name: echo
    endpoints: ["127.0.0.1:{echo_port}"]
  - name: grpc
    protocol: http2
    endpoints: ["127.0.0.1:{grpc_port}"]
"#
    )
}

/// `tests/fixtures/grpc_probe_client.py`: one call through the gateway by a real gRPC client.
fn grpc_client_call(port: u16, method: &str, metadata: &[&str]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/grpc_probe_client.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(method)
        .arg("from-client")
        .args(metadata)
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("missing {name} in {:?}", response.headers()))
}

async fn echoed_headers(response: reqwest::Response) -> serde_json::Value {
    let body: serde_json::Value = response.json().await.expect("echo JSON");
    body["headers"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callouts_reach_a_real_grpc_server_and_report_answers_refusals_and_deadlines() {
    let backend = echo("backend").await;
    let grpc = GrpcServer::start();
    let gateway = GatewayProcess::start(&callouts_config(
        backend.addresses()[0].port(),
        &grpc.port.to_string(),
    ))
    .await;
    let client = client();
    let call = |method: &str, message: &str, token: &str| {
        client
            .get(gateway.url("/callouts/x"))
            .header("x-grpc-method", method)
            .header("x-grpc-message", message)
            .header("x-token", token)
    };

    // The answer travels upstream in a request header the plugin set.
    let response = call("Echo", "hello", "good").send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", gateway.log());
    let seen = echoed_headers(response).await;
    let answer = seen["x-grpc-answer"].as_str().unwrap().to_string();
    assert!(answer.starts_with("echo:hello|peer:"), "{answer}");
    assert_eq!(seen["x-grpc-callbacks"], "1");

    // Calls share one pooled HTTP/2 connection: the server sees the same peer.
    for _ in 0..3 {
        let again = call("Echo", "hello", "good").send().await.unwrap();
        let seen = echoed_headers(again).await;
        assert_eq!(seen["x-grpc-answer"], answer.as_str(), "a new connection");
    }

    // A refusal by the service: its status and message reach the plugin.
    let refused = call("Echo", "hello", "bad").send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(header(&refused, "x-grpc-status"), "7");
    assert_eq!(header(&refused, "x-grpc-message"), "bad token");

    // A method the server does not have: UNIMPLEMENTED.
    let missing = call("Missing", "x", "good").send().await.unwrap();
    assert_eq!(missing.status(), 403);
    assert_eq!(header(&missing, "x-grpc-status"), "12");

    // The plugin's 1 s deadline against a 3 s method: DEADLINE_EXCEEDED, on time.
    let started = Instant::now();
    let slow = call("Slow", "x", "good").send().await.unwrap();
    assert_eq!(slow.status(), 403);
    assert_eq!(header(&slow, "x-grpc-status"), "4");
    assert!(started.elapsed() < Duration::from_millis(2500));

    // A second call cancelled at once is never reported.
    let cancelled = call("Echo", "first", "good")
        .header("x-grpc-cancel", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let seen = echoed_headers(cancelled).await;
    assert!(
        seen["x-grpc-answer"]
            .as_str()
            .unwrap()
            .starts_with("echo:first|")
    );
    assert_eq!(seen["x-grpc-callbacks"], "1");

    // A gRPC local answer to a gRPC request, as Envoy sends one: HTTP 200, trailers-only,
    // the status and the percent-encoded message.
    let local = client
        .post(gateway.url("/callouts/x"))
        .header("content-type", "application/grpc")
        .header("x-grpc-local", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200);
    assert_eq!(header(&local, "content-type"), "application/grpc");
    assert_eq!(header(&local, "grpc-status"), "7");
    assert_eq!(header(&local, "grpc-message"), "refused%20by%20plugin");
    assert_eq!(header(&local, "x-local"), "1");
    // To a request that is not gRPC the gRPC status is ignored, as in Envoy.
    let plain = client
        .get(gateway.url("/callouts/x"))
        .header("x-grpc-local", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("grpc-status").is_none());
    assert_eq!(plain.text().await.unwrap(), "refused by plugin");

    // A real gRPC client through the gateway: proxied, and refused by the plugin with a
    // gRPC local reply it reads as Envoy's (one HEADERS frame that ends the stream).
    let port = gateway.extra_ports[0];
    let proxied = grpc_client_call(port, "Echo", &[]);
    assert!(proxied.starts_with("OK echo:from-client|"), "{proxied}");
    let refused = grpc_client_call(port, "Echo", &["x-grpc-local=10"]);
    assert_eq!(refused, "ABORTED refused by plugin");

    // The server gone: UNAVAILABLE, and the gateway keeps serving.
    drop(grpc);
    let unavailable = call("Echo", "x", "good").send().await.unwrap();
    assert_eq!(unavailable.status(), 403);
    assert_eq!(header(&unavailable, "x-grpc-status"), "14");
    let plain = client.get(gateway.url("/callouts/x")).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(!gateway.log().contains("panicked"), "{}", gateway.log());
}

/// A plugin that holds a gRPC answer's body back (`loom_body_rewrite` pauses every chunk)
/// still lets it through: a gRPC answer ends with trailers, not with a last body chunk, so the
/// held body goes out before them, as Envoy sends it, and the plugin can rewrite it in its
/// trailers callback. Before this was handled, the client got OK with no message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_answer_held_back_by_a_plugin_reaches_the_client_before_its_trailers() {
    let grpc = GrpcServer::start();
    let gateway = GatewayProcess::start(&format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
  - name: grpc
    address: "127.0.0.1:@PORT0@"
    protocol: http2
plugin_dir: "@PLUGINS@"
plugin_cache_dir: "@PLUGIN_CACHE@"
plugins:
  # Same length, so the gRPC message's length prefix stays right.
  - name: rewrite
    path: loom_body_rewrite.wasm
    config:
      content_types: ["application/grpc"]
      replacements: [{{from: "echo:", to: "ECHO:"}}]
  # Too small a buffer for what `rewrite` lets go of when the trailers come.
  - name: small
    path: loom_body_rewrite.wasm
    max_buffered_body: 16B
    config:
      content_types: ["application/grpc"]
      replacements: [{{from: "echo:", to: "ECHO:"}}]
  - name: probe
    path: loom_test_abi_probe.wasm
routes:
  - id: grpc
    path: /loom.test.Probe/*
    upstream: grpc
    plugins: [rewrite]
  - id: grpc-small
    path: /loom.test.Probe/*
    headers: {{x-route: small}}
    priority: 5
    upstream: grpc
    plugins: [small, rewrite]
  - id: grpc-replaced
    path: /loom.test.Probe/*
    headers: {{x-route: replaced}}
    priority: 5
    upstream: grpc
    plugins: [probe]
upstreams:
  - name: grpc
    protocol: http2
    endpoints: ["127.0.0.1:{}"]
"#,
        grpc.port
    ))
    .await;
    let port = gateway.extra_ports[0];
    for _ in 0..20 {
        let answer = grpc_client_call(port, "Echo", &[]);
        assert!(
            answer.starts_with("OK ECHO:from-client|"),
            "{answer}\n{}",
            gateway.log()
        );
    }
    // Server streaming, the trailers 0.2 s after the last message: they come alone, after
    // everything the plugin held was filtered and written (the unary answers above bring
    // their body and trailers together).
    for _ in 0..3 {
        let answer = grpc_client_call(port, "Parts", &[]);
        assert_eq!(
            answer,
            "OK ECHO:1:from-client + ECHO:2:from-client",
            "{}",
            gateway.log()
        );
    }
    // A refusal is trailers only: nothing held, the status goes through.
    let refused = grpc_client_call(port, "Echo", &["x-token=bad"]);
    assert_eq!(refused, "PERMISSION_DENIED bad token");

    // What `rewrite` lets go of is over `small`'s buffer: an error reaches the client, never
    // an OK without the message (Pingora itself ignores a failure in its trailer hook).
    for method in ["Echo", "Parts"] {
        let failed = grpc_client_call(port, method, &["x-route=small"]);
        assert!(
            !failed.starts_with("OK"),
            "{method}: {failed}\n{}",
            gateway.log()
        );
    }
    assert!(
        gateway
            .log()
            .contains("plugin \"small\" buffers at most 16 bytes")
    );

    // A plugin's local answer from the response headers replaces the whole answer: its body
    // ends the response, the upstream's trailers are dropped with the upstream's body.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for method in ["Echo", "Parts"] {
        let response = h2c
            .post(format!("http://127.0.0.1:{port}/loom.test.Probe/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-route", "replaced")
            .header("x-probe", "replace-response")
            .body(&b"\x00\x00\x00\x00\x02hi"[..])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.text().await.unwrap(),
            "replaced by the plugin",
            "{method}"
        );
    }
    assert!(!gateway.log().contains("panicked"), "{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_requests_wait_until_another_context_resumes_or_answers_them() {
    let backend = echo("backend").await;
    // No gRPC call is made: the upstream only has to exist in the config.
    let gateway =
        GatewayProcess::start(&callouts_config(backend.addresses()[0].port(), "@DEAD0@")).await;
    let client = client();
    let postponed = |how: &str| {
        client
            .get(gateway.url("/callouts/p"))
            .header("x-postpone", how)
            .send()
    };

    // Resumed by the root context's tick: the request then reaches the upstream.
    let resumed = postponed("resume").await.unwrap();
    assert_eq!(resumed.status(), 200);
    let count: u64 = header(&resumed, "x-postponed-resumed").parse().unwrap();
    assert!(count >= 1, "answered before the tick resumed it");

    // Edited by the root context (its header writes target the effective context), then
    // resumed.
    let edited = postponed("edit").await.unwrap();
    assert_eq!(edited.status(), 200);
    assert_eq!(echoed_headers(edited).await["x-set-by-tick"], "1");
    // The whole map replaced the same way: the request's own headers are gone.
    let replaced = postponed("replace").await.unwrap();
    assert_eq!(replaced.status(), 200);
    let seen = echoed_headers(replaced).await;
    assert_eq!(seen["x-replaced-by-tick"], "1", "{seen}");
    assert!(seen.get("x-postpone").is_none(), "{seen}");

    // A request with a body is not held in its headers phase (Envoy runs the body callbacks
    // after a headers Pause, and their Continue resumes it): it goes on to the upstream.
    let with_body = client
        .post(gateway.url("/callouts/p"))
        .header("x-postpone", "never")
        .body("a body follows")
        .send()
        .await
        .unwrap();
    assert_eq!(with_body.status(), 200);

    // Answered by the root context instead.
    let answered = postponed("respond").await.unwrap();
    assert_eq!(answered.status(), 202);
    assert_eq!(header(&answered, "x-answered-by"), "tick");
    assert_eq!(answered.text().await.unwrap(), "answered on tick");

    // Never resumed: 504 after the plugin's pause_timeout (1 s), as JSON.
    let started = Instant::now();
    let abandoned = postponed("never").await.unwrap();
    assert_eq!(abandoned.status(), 504);
    let body: serde_json::Value = abandoned.json().await.unwrap();
    assert_eq!(body["error"]["code"], "plugin_pause_timeout", "{body}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(started.elapsed() < Duration::from_secs(5));

    // Many at once, each resumed by its own context id.
    let waits = (0..20).map(|_| postponed("resume"));
    for response in futures_util::future::join_all(waits).await {
        assert_eq!(response.unwrap().status(), 200);
    }

    // So does a Pause on the request body's last chunk, and the body then goes upstream.
    let response = client
        .post(gateway.url("/callouts/b"))
        .header("x-postpone-body", "1")
        .body("held until the tick")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["body_size"], "held until the tick".len(), "{body}");

    // The response headers phase pauses and is resumed the same way.
    let response = client
        .get(gateway.url("/callouts/r"))
        .header("x-postpone-response", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(echoed_headers(response).await["x-postpone-response"], "1");
}

/// A TCP relay in front of `target` that counts the connections it accepts.
async fn counting_relay(target: std::net::SocketAddr) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_reuse_connections_and_reach_tls_upstreams() {
    let backend = echo("backend").await;
    let auth = echo("auth").await;
    let (relay_port, accepted) = counting_relay(auth.addresses()[0]).await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
  - name: tls
    address: "127.0.0.1:@PORT0@"
    protocol: https
    tls:
      cert: "@FIXTURES@/localhost.crt"
      key: "@FIXTURES@/localhost.key"
plugin_dir: "@PLUGINS@"
plugin_cache_dir: "@PLUGIN_CACHE@"
plugins:
  - name: pooled
    path: loom_ext_auth.wasm
    config: {{upstream: counted, path: /status/200, copy_response_headers_prefix: "x-echo-"}}
  - name: over-tls
    path: loom_ext_auth.wasm
    config: {{upstream: self-tls, path: /auth/status/200, copy_response_headers_prefix: "x-echo-"}}
  - name: untrusted-tls
    path: loom_ext_auth.wasm
    config: {{upstream: self-tls-verified, path: /auth/status/200, timeout_ms: 2000}}
routes:
  - id: pooled
    path: /pooled
    upstream: echo
    plugins: [pooled]
  - id: over-tls
    path: /over-tls
    upstream: echo
    plugins: [over-tls]
  - id: untrusted-tls
    path: /untrusted-tls
    upstream: echo
    plugins: [untrusted-tls]
  # Served on the TLS listener too: the https upstream of the plugins' calls.
  - id: auth
    path: /auth/*
    strip_prefix: true
    upstream: auth
upstreams:
  - name: echo
    endpoints: ["127.0.0.1:{echo}"]
  - name: auth
    endpoints: ["127.0.0.1:{auth}"]
  - name: counted
    endpoints: ["127.0.0.1:{relay_port}"]
  # Loom's own TLS listener (a self-signed certificate for localhost).
  - name: self-tls
    endpoints: ["127.0.0.1:@PORT0@"]
    tls:
      sni: localhost
      verify: false
  - name: self-tls-verified
    endpoints: ["127.0.0.1:@PORT0@"]
    tls:
      sni: localhost
"#,
        echo = backend.addresses()[0].port(),
        auth = auth.addresses()[0].port(),
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();

    for _ in 0..10 {
        let response = client.get(gateway.url("/pooled")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(echoed_headers(response).await["x-echo-instance"], "auth");
    }
    let connections = accepted.load(Ordering::SeqCst);
    assert!(
        connections <= 2,
        "10 sequential http_calls opened {connections} connections"
    );

    // Over TLS, with the upstream's SNI and `verify: false`.
    let response = client.get(gateway.url("/over-tls")).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", gateway.log());
    assert_eq!(echoed_headers(response).await["x-echo-instance"], "auth");

    // Verified against the system roots, the self-signed certificate is refused: the call
    // fails and the plugin answers 503.
    let response = client
        .get(gateway.url("/untrusted-tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
}
