//! A gateway configured in the Go Loom gateway's own schema serves as Go Loom users expect.

use std::time::{Duration, Instant};

use crate::support::*;

/// `printf %s secret | sha256sum`
const SECRET_SHA256: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_loom_listeners_hashing_and_admin_auth() {
    let first = echo("first").await;
    let second = echo("second").await;
    let template = format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
    protocol: http
  - name: grpc
    address: "127.0.0.1:@PORT0@"
    protocol: grpc
routes:
  - id: api
    path: /*
    upstream: users
upstreams:
  - name: users
    endpoints: ["127.0.0.1:{}", "127.0.0.1:{}"]
    load_balancer: consistent_hash
    consistent_hash:
      hash_key: X-User-ID
      replicas: 150
    retry:
      max_retries: 2
      backoff_base: 10ms
      backoff_max: 100ms
      retryable_codes: [503]
"#,
        first.addresses()[0].port(),
        second.addresses()[0].port()
    );
    let admin_keys = format!(
        "  auth:\n    enabled: true\n    realm: Loom Admin\n    users:\n      admin: {SECRET_SHA256}\n"
    );
    let gateway = GatewayProcess::start_with(&template, "", &admin_keys).await;
    let client = client();

    // consistent_hash on the header: one user always lands on one instance; users spread.
    let instance_for = |user: String| {
        let client = client.clone();
        let url = gateway.url("/hash");
        async move {
            let response = client
                .get(url)
                .header("x-user-id", user)
                .send()
                .await
                .unwrap();
            response.headers()["x-echo-instance"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    let mut instances = std::collections::HashSet::new();
    for user in 0..40 {
        let instance = instance_for(format!("user-{user}")).await;
        for _ in 0..3 {
            assert_eq!(instance_for(format!("user-{user}")).await, instance);
        }
        instances.insert(instance);
    }
    assert_eq!(instances.len(), 2, "40 users all hashed to {instances:?}");

    // A grpc listener speaks HTTP/2 cleartext with prior knowledge.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let response = h2
        .get(format!("http://127.0.0.1:{}/h2", gateway.extra_ports[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);

    // admin.auth: HTTP Basic with SHA-256 digests; probes stay open.
    let denied = client
        .get(gateway.admin_url("/routes"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(
        denied.headers()["www-authenticate"],
        "Basic realm=\"Loom Admin\""
    );
    let wrong = client
        .get(gateway.admin_url("/metrics"))
        .basic_auth("admin", Some("guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let allowed = client
        .get(gateway.admin_url("/routes"))
        .basic_auth("admin", Some("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let ready = client
        .get(gateway.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_loom_bulkhead_queues_up_to_queue_size_and_refuses_the_rest_at_once() {
    let backend = echo("slow").await;
    let gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool
    endpoints: [\"127.0.0.1:{}\"]
    bulkhead:
      enabled: true
      max_concurrent: 1
      queue_size: 1
      timeout: 10s
",
        backend.addresses()[0].port()
    )))
    .await;
    let client = client();
    let slow = |client: reqwest::Client, url: String| {
        tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            response.status().as_u16()
        })
    };
    let running = slow(client.clone(), gateway.url("/delay/1500"));
    // Wait until the first request holds the slot before queueing the second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway
        .metric("loom_requests_in_flight")
        .await
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = slow(client.clone(), gateway.url("/delay/10"));
    while gateway
        .metric("loom_requests_in_flight")
        .await
        .unwrap_or(0.0)
        < 2.0
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let refused = client.get(gateway.url("/refused")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_saturated");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "a full queue refuses at once, not after {:?}",
        started.elapsed()
    );
    assert_eq!(running.await.unwrap(), 200);
    assert_eq!(queued.await.unwrap(), 200);
}
