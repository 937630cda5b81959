//! Load-balancing distribution and active health checks against real echo backends.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::*;

async fn count_instances(
    client: &reqwest::Client,
    url: &str,
    requests: usize,
    header: Option<(&str, String)>,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..requests {
        let mut request = client.get(url);
        if let Some((name, value)) = &header {
            request = request.header(*name, value.as_str());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        *counts
            .entry(body["instance"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_evenly() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool\n    load_balancer: round_robin\n    endpoints:\n      - \"127.0.0.1:{}\"\n      - {{address: \"127.0.0.1:{}\", weight: 5}}\n",
        a.addresses()[0].port(),
        b.addresses()[0].port()
    )))
    .await;
    let counts = count_instances(&client(), &gateway.url("/rr"), 100, None).await;
    // round_robin ignores weights.
    assert_eq!(counts.get("a"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&50), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_weights() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool\n    load_balancer: weighted\n    endpoints:\n      - {{address: \"127.0.0.1:{}\", weight: 3}}\n      - {{address: \"127.0.0.1:{}\", weight: 1}}\n",
        a.addresses()[0].port(),
        b.addresses()[0].port()
    )))
    .await;
    let counts = count_instances(&client(), &gateway.url("/w"), 400, None).await;
    let a_count = *counts.get("a").unwrap_or(&0) as f64;
    assert!(
        (a_count / 400.0 - 0.75).abs() < 0.05,
        "weight 3:1 should give about 75% to a: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_over_all_endpoints() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool\n    load_balancer: random\n    endpoints: [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n",
        a.addresses()[0].port(),
        b.addresses()[0].port()
    )))
    .await;
    let counts = count_instances(&client(), &gateway.url("/r"), 300, None).await;
    for name in ["a", "b"] {
        let share = *counts.get(name).unwrap_or(&0) as f64 / 300.0;
        // Binomial(300, 0.5): 0.35..0.65 is more than 5 standard deviations wide.
        assert!((0.35..=0.65).contains(&share), "{counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_sticky_per_key() {
    let servers = [echo("a").await, echo("b").await, echo("c").await];
    let endpoints: Vec<String> = servers
        .iter()
        .map(|server| format!("\"127.0.0.1:{}\"", server.addresses()[0].port()))
        .collect();
    let gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool\n    load_balancer: consistent_hash\n    hash_on: header:x-user\n    endpoints: [{}]\n",
        endpoints.join(", ")
    )))
    .await;
    let client = client();
    let mut owners = HashMap::new();
    for user in 0..40 {
        let counts = count_instances(
            &client,
            &gateway.url("/sticky"),
            5,
            Some(("x-user", format!("user-{user}"))),
        )
        .await;
        assert_eq!(
            counts.len(),
            1,
            "user-{user} moved between endpoints: {counts:?}"
        );
        owners.insert(user, counts.into_keys().next().unwrap());
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert!(
        distinct.len() >= 2,
        "40 keys all hashed to one endpoint: {owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_dead_endpoint_out_and_back() {
    let a = echo("a").await;
    let b = echo("b").await;
    let b_address = b.addresses()[0];
    let gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool\n    endpoints: [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n    health_check:\n      path: /health\n      interval: 100ms\n      timeout: 1s\n      healthy_threshold: 2\n      unhealthy_threshold: 2\n",
        a.addresses()[0].port(),
        b_address.port()
    )))
    .await;
    let client = client();
    let b_healthy = format!(
        "loom_upstream_endpoint_healthy{{endpoint=\"127.0.0.1:{}\",upstream=\"pool\"}}",
        b_address.port()
    );
    assert_eq!(gateway.metric(&b_healthy).await, Some(1.0));

    b.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.metric(&b_healthy).await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "b never marked unhealthy:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every request now lands on a.
    let counts = count_instances(&client, &gateway.url("/x"), 20, None).await;
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");

    let _b_again = echo_on(b_address, "b").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.metric(&b_healthy).await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "b never came back:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts = count_instances(&client, &gateway.url("/x"), 20, None).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_endpoint_for_idempotent_methods() {
    let live = echo("live").await;
    let (refused_port, _reserved) = refused_port();
    let gateway = GatewayProcess::start(&single_route(&format!(
        "  - name: pool\n    load_balancer: round_robin\n    endpoints: [\"127.0.0.1:{refused_port}\", \"127.0.0.1:{}\"]\n",
        live.addresses()[0].port()
    )))
    .await;
    let client = client();
    // No health check: round robin sends every other request to the dead endpoint first.
    let counts = count_instances(&client, &gateway.url("/get"), 10, None).await;
    assert_eq!(counts.get("live"), Some(&10), "{counts:?}");
    let refused_sample = format!(
        "loom_upstream_requests_total{{endpoint=\"127.0.0.1:{refused_port}\",status=\"0\",upstream=\"pool\"}}"
    );
    let refused_after_gets = gateway.metric(&refused_sample).await.unwrap_or(0.0);
    assert!(
        refused_after_gets >= 1.0,
        "no GET was retried past the dead endpoint"
    );

    // POST is not idempotent: one that hits the dead endpoint fails instead of replaying.
    let mut failed_posts = 0.0;
    for _ in 0..4 {
        let response = client
            .post(gateway.url("/post"))
            .body("x")
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => {}
            502 => failed_posts += 1.0,
            other => panic!("unexpected status {other}"),
        }
    }
    let refused_after_posts = gateway.metric(&refused_sample).await.unwrap_or(0.0);
    assert!(
        failed_posts >= 1.0,
        "round robin never sent a POST to the dead endpoint"
    );
    assert_eq!(
        refused_after_posts - refused_after_gets,
        failed_posts,
        "every POST that met the dead endpoint failed there, none was replayed"
    );
}
