//! Rate and concurrency limits end to end: the real gateway, real echo backends, real clients,
//! and a real `redis-server` for the shared limits.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::redis_support::RedisServer;
use crate::support::*;

/// The status, the headers and the JSON error code (if the body is the gateway's error shape).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    code: Option<String>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    let code = body["error"]["code"].as_str().map(str::to_string);
    if let Some(code) = &code {
        assert_eq!(
            body["error"]["status"], status,
            "the error body's status is the response status ({code})"
        );
    }
    Answer {
        status,
        headers,
        code,
    }
}

/// Asserts the over-the-limit answer: 429, JSON `rate_limited`, `Retry-After` of at least 1 s.
fn assert_rate_limited(answer: &Answer, context: &str) {
    assert_eq!(answer.status, 429, "{context}");
    assert_eq!(answer.code.as_deref(), Some("rate_limited"), "{context}");
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/json"),
        "{context}"
    );
    let retry_after: u64 = answer
        .header("retry-after")
        .unwrap_or_else(|| panic!("{context}: a 429 carries Retry-After"))
        .parse()
        .unwrap_or_else(|error| panic!("{context}: Retry-After is whole seconds: {error}"));
    assert!(retry_after >= 1, "{context}: Retry-After {retry_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limit_counts_down_refuses_and_keys_by_header() {
    let backend = echo("e").await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
plugins:
  - name: per-client
    type: rate_limit
    config:
      rate: 5
      period: 1m
      burst: 5
      key: client_ip
  - name: per-client-legacy
    type: rate_limit
    config:
      rate: 5
      period: 1m
      burst: 5
      key: client_ip
      headers: x_ratelimit
  - name: per-tenant
    type: rate_limit
    config:
      rate: 2
      period: 1m
      burst: 2
      key: "header:X-Tenant"
routes:
  - id: limited
    path: /limited/*
    upstream: echo
    plugins: [per-client]
  - id: legacy
    path: /legacy/*
    upstream: echo
    plugins: [per-client-legacy]
  - id: tenants
    path: /tenants/*
    upstream: echo
    plugins: [per-tenant]
  - id: open
    path: /*
    upstream: echo
upstreams:
{}"#,
        echo_upstream(backend.addresses()[0].port())
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();

    // 5 per minute with a burst of 5: one token comes back every 12 s, far longer than ten
    // requests take, so exactly the first five pass.
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(send(client.get(gateway.url("/limited/x"))).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|answer| answer.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
    let remaining: Vec<String> = answers[..5]
        .iter()
        .map(|answer| {
            answer
                .header("ratelimit-remaining")
                .expect("an allowed answer carries RateLimit-Remaining")
        })
        .collect();
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    for (index, answer) in answers[..5].iter().enumerate() {
        // Answered by the backend, not by the gateway.
        assert!(answer.headers.get("x-echo-instance").is_some(), "{index}");
        assert_eq!(answer.header("ratelimit-limit").as_deref(), Some("5"));
        let reset: u64 = answer
            .header("ratelimit-reset")
            .expect("an allowed answer carries RateLimit-Reset")
            .parse()
            .expect("RateLimit-Reset is whole seconds");
        assert!(reset <= 60, "RateLimit-Reset {reset}");
        // Only the draft headers by default.
        assert!(answer.headers.get("x-ratelimit-remaining").is_none());
    }
    for (index, answer) in answers[5..].iter().enumerate() {
        assert_rate_limited(answer, &format!("request {}", index + 6));
        assert!(answer.headers.get("x-echo-instance").is_none());
        assert_eq!(answer.header("ratelimit-remaining").as_deref(), Some("0"));
        let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
        assert!(retry_after <= 60, "Retry-After {retry_after}");
    }
    assert_eq!(
        gateway
            .metric_with(
                "loom_rate_limited_total",
                &[("route", "limited"), ("policy", "per-client")]
            )
            .await,
        Some(5.0)
    );

    // A route without the policy is not limited and carries no rate-limit headers.
    let open = send(client.get(gateway.url("/open"))).await;
    assert_eq!(open.status, 200);
    assert!(open.headers.get("ratelimit-limit").is_none());

    // `headers: x_ratelimit` names the headers the older way, and only that way. Its own
    // policy entry has its own budget.
    let legacy = send(client.get(gateway.url("/legacy/x"))).await;
    assert_eq!(legacy.status, 200);
    assert_eq!(legacy.header("x-ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(legacy.header("x-ratelimit-remaining").as_deref(), Some("4"));
    assert!(legacy.header("x-ratelimit-reset").is_some());
    assert!(legacy.headers.get("ratelimit-remaining").is_none());

    // Keyed by a header: one tenant's exhausted budget leaves another's alone.
    for expected in [200, 200, 429] {
        let answer = send(
            client
                .get(gateway.url("/tenants/x"))
                .header("x-tenant", "a"),
        )
        .await;
        assert_eq!(answer.status, expected, "tenant a");
        if expected == 429 {
            assert_rate_limited(&answer, "tenant a");
        }
    }
    let tenant_b = send(
        client
            .get(gateway.url("/tenants/x"))
            .header("x-tenant", "b"),
    )
    .await;
    assert_eq!(tenant_b.status, 200, "tenant b has its own budget");
    assert_eq!(tenant_b.header("ratelimit-remaining").as_deref(), Some("1"));
    // Without the header the key falls back to the client IP: a budget of its own too.
    let no_tenant = send(client.get(gateway.url("/tenants/x"))).await;
    assert_eq!(no_tenant.status, 200);
    assert_eq!(
        gateway
            .metric_with(
                "loom_rate_limited_total",
                &[("route", "tenants"), ("policy", "per-tenant")]
            )
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_loom_global_rate_limit_covers_every_route_unless_disabled() {
    let backend = echo("e").await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
rate_limit:
  enabled: true
  rate: 2
  burst: 2
routes:
  - id: api
    path: /api/*
    upstream: echo
  - id: other
    path: /other/*
    upstream: echo
  - id: unlimited
    path: /unlimited/*
    upstream: echo
    disable: [rate_limit]
upstreams:
{}"#,
        echo_upstream(backend.addresses()[0].port())
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();

    // Go Loom's rate is per second: 2 at once, then one more every 500 ms. Ten quick
    // requests cannot all pass unless they took 4 s.
    for path in ["/api/x", "/other/x"] {
        let started = Instant::now();
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let answer = send(client.get(gateway.url(path))).await;
            if answer.status == 429 {
                assert_rate_limited(&answer, path);
            }
            statuses.push(answer.status);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let allowed = statuses.iter().filter(|status| **status == 200).count();
        assert!(
            statuses
                .iter()
                .all(|status| *status == 200 || *status == 429),
            "{path}: {statuses:?}"
        );
        assert!(
            statuses.contains(&429),
            "{path}: never limited in {elapsed:.2} s: {statuses:?}"
        );
        assert!(
            (allowed as f64) <= 2.0 + (2.0 * elapsed).ceil(),
            "{path}: {allowed} allowed in {elapsed:.2} s: {statuses:?}"
        );
    }
    // /api was limited in its first round whatever /other did, and this bucket is keyed by
    // the client; the first two of that round always passed.
    assert!(
        gateway
            .metric_with(
                "loom_rate_limited_total",
                &[("route", "api"), ("policy", "rate_limit")]
            )
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    // The route that switches the global policy off is never limited, though this client's
    // budget is spent.
    for index in 0..20 {
        let answer = send(client.get(gateway.url("/unlimited/x"))).await;
        assert_eq!(answer.status, 200, "request {index} on the unlimited route");
        assert!(answer.headers.get("ratelimit-limit").is_none());
    }
}

/// A backend that holds every request until released: `arrived` gets one message per
/// request whose head it has read, and nothing is answered before `release` says true.
struct HeldBackend {
    port: u16,
    arrived: tokio::sync::mpsc::UnboundedReceiver<()>,
    release: tokio::sync::watch::Sender<bool>,
}

async fn held_backend() -> HeldBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (arrived_sender, arrived) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let arrived_sender = arrived_sender.clone();
            let mut released = released.clone();
            tokio::spawn(async move {
                if !read_request_head(&mut stream).await {
                    return;
                }
                let _ = arrived_sender.send(());
                // An error means the test is over and dropped the sender: answer anyway.
                let _ = released.wait_for(|open| *open).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nheld",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    HeldBackend {
        port,
        arrived,
        release,
    }
}

/// Reads until the end of a request head (the requests here have no body); false on EOF.
async fn read_request_head(stream: &mut tokio::net::TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_refuses_while_the_slot_is_taken() {
    let mut backend = held_backend().await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
plugins:
  - name: one-at-a-time
    type: concurrency_limit
    config:
      max_concurrent: 1
      key: route
routes:
  - id: held
    path: /held/*
    upstream: held
    plugins: [one-at-a-time]
upstreams:
  - name: held
    endpoints: ["127.0.0.1:{}"]
"#,
        backend.port
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();

    let first = tokio::spawn(client.get(gateway.url("/held/first")).send());
    // The first request is in flight once the backend has read it.
    tokio::time::timeout(Duration::from_secs(10), backend.arrived.recv())
        .await
        .expect("the first request reaches the backend")
        .expect("the backend runs");

    let second = send(client.get(gateway.url("/held/second"))).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.code.as_deref(), Some("too_many_concurrent_requests"));
    assert!(
        backend.arrived.try_recv().is_err(),
        "the refused request reached the backend"
    );

    backend.release.send(true).unwrap();
    let first = first.await.unwrap().expect("the first request is answered");
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "held");

    // The slot is given back when the first request ends, which the gateway may finish
    // booking a moment after the client has the answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = send(client.get(gateway.url("/held/third"))).await;
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.code.as_deref(), Some("too_many_concurrent_requests"));
        assert!(
            Instant::now() < deadline,
            "the slot was never given back after the first request ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `rate_limit` plugin entry on Redis, keyed by route.
fn redis_limit(name: &str, redis: &RedisServer, prefix: &str, rate: u32, on_error: &str) -> String {
    format!(
        r#"  - name: {name}
    type: rate_limit
    config:
      rate: {rate}
      period: 1m
      burst: {rate}
      key: route
      policy: redis
      on_redis_error: {on_error}
      redis:
        url: "{url}"
        timeout: 500ms
        prefix: "{prefix}"
"#,
        url = redis.url()
    )
}

/// A prefix no other test (or earlier run against a long-lived Redis) shares.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("loom:test:{test}:{}:{nanos}:", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rate_limit_is_shared_between_gateways() {
    let redis = RedisServer::start().await;
    let backend = echo("e").await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
plugins:
{}routes:
  - id: shared
    path: /*
    upstream: echo
    plugins: [shared]
upstreams:
{}"#,
        redis_limit("shared", &redis, &unique_prefix("shared"), 10, "deny"),
        echo_upstream(backend.addresses()[0].port())
    );
    let first = GatewayProcess::start(&template).await;
    let second = GatewayProcess::start(&template).await;
    let client = client();

    // 10 a minute with a burst of 10: nothing comes back while 15 requests run, and the two
    // gateways draw on one budget in Redis.
    let mut statuses = Vec::new();
    for index in 0..15 {
        let gateway = if index % 2 == 0 { &first } else { &second };
        let answer = send(client.get(gateway.url("/x"))).await;
        if answer.status == 429 {
            assert_rate_limited(&answer, &format!("request {index}"));
        } else {
            assert_eq!(answer.status, 200, "request {index}");
            assert_eq!(answer.header("ratelimit-limit").as_deref(), Some("10"));
        }
        statuses.push(answer.status);
    }
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        10,
        "{statuses:?}"
    );
    assert!(
        statuses[..10].iter().all(|status| *status == 200)
            && statuses[10..].iter().all(|status| *status == 429),
        "{statuses:?}"
    );
    // Each gateway refused some: neither kept a budget of its own.
    for gateway in [&first, &second] {
        assert!(
            gateway
                .metric_with(
                    "loom_rate_limited_total",
                    &[("route", "shared"), ("policy", "shared")]
                )
                .await
                .unwrap_or(0.0)
                >= 2.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_or_closed_as_configured_and_limiting_resumes() {
    let mut redis = RedisServer::start().await;
    let backend = echo("e").await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
plugins:
{}{}routes:
  - id: open
    path: /open/*
    upstream: echo
    plugins: [fail-open]
  - id: closed
    path: /closed/*
    upstream: echo
    plugins: [fail-closed]
upstreams:
{}"#,
        redis_limit("fail-open", &redis, &unique_prefix("open"), 3, "allow"),
        redis_limit("fail-closed", &redis, &unique_prefix("closed"), 3, "deny"),
        echo_upstream(backend.addresses()[0].port())
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();

    // With Redis up both routes are limited: 3, then 429.
    for path in ["/open/x", "/closed/x"] {
        for expected in [200, 200, 200, 429] {
            let answer = send(client.get(gateway.url(path))).await;
            assert_eq!(answer.status, expected, "{path} with Redis up");
        }
    }

    redis.kill();
    // `allow`: the spent budget no longer matters, every request passes.
    for index in 0..5 {
        let answer = send(client.get(gateway.url("/open/x"))).await;
        assert_eq!(answer.status, 200, "request {index} on the fail-open route");
        assert!(answer.headers.get("x-echo-instance").is_some());
    }
    assert!(
        gateway
            .metric_with(
                "loom_rate_limit_redis_errors_total",
                &[("policy", "fail-open")]
            )
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    // `deny`: 503 while Redis is unreachable.
    for index in 0..3 {
        let answer = send(client.get(gateway.url("/closed/x"))).await;
        assert_eq!(
            answer.status, 503,
            "request {index} on the fail-closed route"
        );
        assert_eq!(answer.code.as_deref(), Some("rate_limit_unavailable"));
        assert!(answer.headers.get("x-echo-instance").is_none());
    }

    // Redis comes back empty: each route gets a fresh budget of 3 once the gateway has
    // reconnected, and then a 429 again.
    redis.restart().await;
    for path in ["/open/x", "/closed/x"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let answer = send(client.get(gateway.url(path))).await;
            seen.push(answer.status);
            if answer.status == 429 {
                assert_rate_limited(&answer, path);
                break;
            }
            assert!(
                answer.status == 200 || (path == "/closed/x" && answer.status == 503),
                "{path} after the restart: {seen:?}"
            );
            assert!(
                Instant::now() < deadline,
                "{path}: no limiting within 10 s of Redis' restart: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The 429 came after a fresh budget of 3 was spent in the restarted Redis.
        assert!(seen.ends_with(&[200, 200, 200, 429]), "{path}: {seen:?}");
    }
}
