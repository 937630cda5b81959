//! Fault injection with real backends: circuit breaker, retries and their budget, bulkhead,
//! passive health and least_conn.

use std::time::{Duration, Instant};

use crate::fault::{FaultServer, Mode};
use crate::support::*;

fn gateway_config(upstream: &str) -> String {
    format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
routes:
  - id: all
    path: /*
    upstream: pool
  - id: post-retry
    path: /post-retry/*
    upstream: pool
    retry:
      max_retries: 2
      retry_on: [connect_error, 503]
      retry_non_idempotent: true
upstreams:
  - name: pool
{upstream}"#
    )
}

async fn status_and_code(
    client: &reqwest::Client,
    request: reqwest::RequestBuilder,
) -> (u16, String) {
    let _ = client;
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    (status, code)
}

async fn breaker_state(gateway: &GatewayProcess, endpoint: &str) -> String {
    let document = gateway.admin_json("/upstreams/pool").await;
    document["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["address"] == endpoint)
        .map(|entry| {
            entry["circuit_breaker"]["state"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_fails_fast_and_closes_after_a_probe() {
    let backend = FaultServer::start("flaky", Mode::Fail503).await;
    let endpoint = backend.endpoint();
    let gateway = GatewayProcess::start(&gateway_config(&format!(
        "    endpoints: [\"{endpoint}\"]\n    retry:\n      max_retries: 0\n    circuit_breaker:\n      failure_threshold: 3\n      success_threshold: 1\n      timeout: 2s\n"
    )))
    .await;
    let client = client();
    for _ in 0..3 {
        let (status, _) = status_and_code(&client, client.get(gateway.url("/x"))).await;
        assert_eq!(status, 503, "the backend's own 503 passes through");
    }
    assert_eq!(backend.hits(), 3);
    assert_eq!(breaker_state(&gateway, &endpoint).await, "open");
    // Open: fail fast, without touching the backend.
    for _ in 0..5 {
        let (status, code) = status_and_code(&client, client.get(gateway.url("/x"))).await;
        assert_eq!((status, code.as_str()), (503, "circuit_open"));
    }
    assert_eq!(
        backend.hits(),
        3,
        "an open breaker must not contact the backend"
    );
    let state_metric =
        format!("loom_circuit_breaker_state{{endpoint=\"{endpoint}\",upstream=\"pool\"}}");
    assert_eq!(gateway.metric(&state_metric).await, Some(1.0));

    // The backend recovers; after the open timeout one probe goes through and closes it.
    backend.set_mode(Mode::Healthy);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, code) = status_and_code(&client, client.get(gateway.url("/x"))).await;
        if status == 200 {
            break;
        }
        assert_eq!(code, "circuit_open");
        assert!(
            Instant::now() < deadline,
            "breaker never let a probe through"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The probe's verdict is recorded as its request ends, just after the client has its answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while breaker_state(&gateway, &endpoint).await != "closed" {
        assert!(
            Instant::now() < deadline,
            "breaker did not close after the probe"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gateway.metric(&state_metric).await, Some(0.0));
    for (to, expected) in [("open", 1.0), ("half_open", 1.0), ("closed", 1.0)] {
        let sample = format!(
            "loom_circuit_breaker_transitions_total{{endpoint=\"{endpoint}\",to=\"{to}\",upstream=\"pool\"}}"
        );
        assert_eq!(gateway.metric(&sample).await, Some(expected), "{to}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_shows_and_resets_the_breaker() {
    let backend = FaultServer::start("flaky", Mode::Fail503).await;
    let endpoint = backend.endpoint();
    let gateway = GatewayProcess::start(&gateway_config(&format!(
        "    endpoints: [\"{endpoint}\"]\n    retry:\n      max_retries: 0\n    circuit_breaker:\n      failure_threshold: 2\n      timeout: 1h\n"
    )))
    .await;
    let client = client();
    for _ in 0..2 {
        client.get(gateway.url("/x")).send().await.unwrap();
    }
    assert_eq!(breaker_state(&gateway, &endpoint).await, "open");
    let list = gateway.admin_json("/upstreams").await;
    assert_eq!(list["upstreams"][0]["name"], "pool");
    assert_eq!(
        list["upstreams"][0]["endpoints"][0]["circuit_breaker"]["consecutive_failures"],
        2
    );
    // A request leaves the in-flight count as its logging ends, just after the client's answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.admin_json("/upstreams").await["upstreams"][0]["endpoints"][0]["in_flight"] != 0 {
        assert!(
            Instant::now() < deadline,
            "in-flight count never went back to 0"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    backend.set_mode(Mode::Healthy);
    let reset = client
        .post(gateway.admin_url(&format!("/upstreams/pool/endpoints/{endpoint}/reset")))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(breaker_state(&gateway, &endpoint).await, "closed");
    let (status, _) = status_and_code(&client, client.get(gateway.url("/x"))).await;
    assert_eq!(status, 200);
    let missing = client
        .post(gateway.admin_url("/upstreams/pool/endpoints/10.9.9.9:1/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_dead_endpoint_and_a_hung_one() {
    let healthy = FaultServer::start("healthy", Mode::Healthy).await;
    let hung = FaultServer::start("hung", Mode::Hang).await;
    let (dead_port, _reserved) = refused_port();
    let gateway = GatewayProcess::start(&gateway_config(&format!(
        "    endpoints: [\"127.0.0.1:{dead_port}\", \"{}\", \"{}\"]\n    retry:\n      max_retries: 2\n      per_try_timeout: 500ms\n      backoff: {{base: 1ms, max: 5ms}}\n",
        hung.endpoint(),
        healthy.endpoint()
    )))
    .await;
    let client = client();
    // No health checks: only retries stand between the clients and the broken endpoints.
    for _ in 0..12 {
        let (status, code) = status_and_code(&client, client.get(gateway.url("/x"))).await;
        assert_eq!(status, 200, "client saw {code}");
    }
    assert!(hung.hits() >= 1, "the hung endpoint was never tried");
    let attempted = gateway
        .metric("loom_upstream_retries_total{outcome=\"attempted\",upstream=\"pool\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        attempted >= 4.0,
        "expected retries to hide failures, saw {attempted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_unless_the_route_says_so() {
    let failing = FaultServer::start("failing", Mode::Fail503).await;
    let healthy = FaultServer::start("healthy", Mode::Healthy).await;
    let gateway = GatewayProcess::start(&gateway_config(&format!(
        "    load_balancer: round_robin\n    endpoints: [\"{}\", \"{}\"]\n    retry:\n      max_retries: 2\n      retry_on: [503]\n",
        failing.endpoint(),
        healthy.endpoint()
    )))
    .await;
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, _) =
            status_and_code(&client, client.post(gateway.url("/x")).body("data")).await;
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|status| **status == 503).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        failing.hits(),
        3,
        "a POST that got 503 must not be replayed"
    );
    // GETs are retried past the failing endpoint.
    for _ in 0..6 {
        let (status, _) = status_and_code(&client, client.get(gateway.url("/x"))).await;
        assert_eq!(status, 200);
    }
    // The route that opts in retries POSTs too, replaying the body.
    for _ in 0..4 {
        let (status, _) = status_and_code(
            &client,
            client.post(gateway.url("/post-retry/x")).body("data"),
        )
        .await;
        assert_eq!(status, 200);
    }
}

/// Sends `requests` GETs, `concurrency` at a time, and returns their statuses.
async fn burst(gateway: &GatewayProcess, requests: usize, concurrency: usize) -> Vec<u16> {
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..requests / concurrency {
        let batch = (0..concurrency).map(|_| {
            let request = client.get(gateway.url("/x")).send();
            async move {
                request
                    .await
                    .map(|response| response.status().as_u16())
                    .unwrap_or(0)
            }
        });
        statuses.extend(futures_util::future::join_all(batch).await);
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_amplification_in_a_full_outage() {
    let retry = "    retry:\n      max_retries: 3\n      retry_on: [503]\n      backoff: {base: 1ms, max: 2ms}\n";
    // Without a budget worth the name, each request costs 1 + 3 attempts...
    let (a, b) = (
        FaultServer::start("a", Mode::Fail503).await,
        FaultServer::start("b", Mode::Fail503).await,
    );
    let generous = GatewayProcess::start(&gateway_config(&format!(
        "    endpoints: [\"{}\", \"{}\"]\n{retry}    retry_budget:\n      budget_percent: 100\n      min_retry_concurrency: 100\n",
        a.endpoint(),
        b.endpoint()
    )))
    .await;
    let statuses = burst(&generous, 20, 4).await;
    assert!(statuses.iter().all(|status| *status == 503));
    assert_eq!(
        a.hits() + b.hits(),
        80,
        "4 attempts per request without a budget limit"
    );

    // ...with the budget at zero, retries stop and attempts equal client requests.
    let (c, d) = (
        FaultServer::start("c", Mode::Fail503).await,
        FaultServer::start("d", Mode::Fail503).await,
    );
    let capped = GatewayProcess::start(&gateway_config(&format!(
        "    endpoints: [\"{}\", \"{}\"]\n{retry}    retry_budget:\n      budget_percent: 0\n      min_retry_concurrency: 0\n",
        c.endpoint(),
        d.endpoint()
    )))
    .await;
    let statuses = burst(&capped, 20, 4).await;
    assert!(statuses.iter().all(|status| *status == 503), "{statuses:?}");
    assert_eq!(c.hits() + d.hits(), 20, "the budget must cap retries");
    let exhausted = capped
        .metric("loom_upstream_retries_total{outcome=\"budget_exhausted\",upstream=\"pool\"}")
        .await;
    assert_eq!(exhausted, Some(20.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulkhead_rejects_beyond_its_limit_and_admits_again() {
    let slow = FaultServer::start("slow", Mode::Hang).await;
    let gateway = GatewayProcess::start(&gateway_config(&format!(
        "    endpoints: [\"{}\"]\n    read_timeout: 3s\n    retry:\n      max_retries: 0\n    max_concurrent_requests: 2\n    queue_timeout: 50ms\n",
        slow.endpoint()
    )))
    .await;
    let client = client();
    // Two requests occupy both slots (the backend holds them until the 3s read timeout).
    let holders: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client.get(gateway.url("/hold")).send()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.hits() < 2 {
        assert!(
            Instant::now() < deadline,
            "holders never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..3 {
        let (status, code) = status_and_code(&client, client.get(gateway.url("/x"))).await;
        assert_eq!((status, code.as_str()), (503, "upstream_saturated"));
    }
    assert_eq!(
        slow.hits(),
        2,
        "rejected requests must not reach the backend"
    );
    for holder in holders {
        let _ = holder.await;
    }
    slow.set_mode(Mode::Healthy);
    let (status, _) = status_and_code(&client, client.get(gateway.url("/x"))).await;
    assert_eq!(status, 200, "slots are free again");
}

/// Eight clients in a loop against a slow and a fast endpoint; returns the hits of each.
async fn steer(algorithm: &str) -> (f64, f64) {
    let slow = FaultServer::start("slow", Mode::Slow).await;
    let fast = FaultServer::start("fast", Mode::Healthy).await;
    let gateway = GatewayProcess::start(&gateway_config(&format!(
        "    load_balancer: {algorithm}\n    endpoints: [\"{}\", \"{}\"]\n",
        slow.endpoint(),
        fast.endpoint()
    )))
    .await;
    // A request stuck on the slow endpoint keeps it "busy", so new requests go elsewhere.
    let mut workers = Vec::new();
    for _ in 0..8 {
        let url = gateway.url("/x");
        workers.push(tokio::spawn(async move {
            let client = client();
            for _ in 0..15 {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    (slow.hits() as f64, fast.hits() as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_steers_requests_away_from_a_slow_endpoint() {
    let (slow_hits, fast_hits) = steer("least_conn").await;
    assert_eq!(slow_hits + fast_hits, 120.0);
    // Round robin would split 60/60.
    assert!(
        fast_hits > 2.0 * slow_hits,
        "least_conn sent {slow_hits} to the slow endpoint and {fast_hits} to the fast one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_prefers_the_less_loaded_endpoint() {
    let (slow_hits, fast_hits) = steer("p2c").await;
    assert_eq!(slow_hits + fast_hits, 120.0);
    // With two endpoints both are always drawn, so p2c acts as least_conn here.
    assert!(
        fast_hits > 2.0 * slow_hits,
        "p2c sent {slow_hits} to the slow endpoint and {fast_hits} to the fast one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_health_ejects_a_failing_endpoint() {
    let failing = FaultServer::start("failing", Mode::ResetMidResponse).await;
    let healthy = FaultServer::start("healthy", Mode::Healthy).await;
    let gateway = GatewayProcess::start(&gateway_config(&format!(
        "    load_balancer: round_robin\n    endpoints: [\"{}\", \"{}\"]\n    retry:\n      max_retries: 0\n    outlier_detection:\n      consecutive_failures: 2\n      base_ejection_time: 1h\n      max_ejection_percent: 50\n",
        failing.endpoint(),
        healthy.endpoint()
    )))
    .await;
    let client = client();
    // Round robin alternates until the failing endpoint has failed twice in a row.
    let mut failures = 0;
    for _ in 0..4 {
        match client.get(gateway.url("/x")).send().await {
            Ok(response) if response.status() == 200 => {
                if response.bytes().await.is_err() {
                    failures += 1;
                }
            }
            _ => failures += 1,
        }
    }
    assert_eq!(
        failures, 2,
        "the resetting endpoint fails every request it gets"
    );
    // The failure is recorded as the gateway finishes the request, maybe after the client saw it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.admin_json("/upstreams/pool").await["endpoints"][0]["ejected"] != true {
        assert!(
            Instant::now() < deadline,
            "the failing endpoint was never ejected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hits_at_ejection = failing.hits();
    for _ in 0..10 {
        let (status, _) = status_and_code(&client, client.get(gateway.url("/x"))).await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        failing.hits(),
        hits_at_ejection,
        "an ejected endpoint gets no traffic"
    );
    let sample = format!(
        "loom_upstream_ejections_total{{endpoint=\"{}\",upstream=\"pool\"}}",
        failing.endpoint()
    );
    assert_eq!(gateway.metric(&sample).await, Some(1.0));
    let document = gateway.admin_json("/upstreams/pool").await;
    assert_eq!(document["endpoints"][0]["ejected"], true);
    assert_eq!(document["endpoints"][0]["ejections"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_admitted_as_bulkhead_slots_free_up() {
    let slow = FaultServer::start("slow", Mode::Slow).await;
    let gateway = GatewayProcess::start(&gateway_config(&format!(
        "    endpoints: [\"{}\"]\n    max_concurrent_requests: 1\n    queue_timeout: 5s\n",
        slow.endpoint()
    )))
    .await;
    // Three at once through one slot: two wait in the queue and still get through.
    let statuses = burst(&gateway, 3, 3).await;
    assert_eq!(statuses, [200, 200, 200]);
    assert_eq!(slow.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_endpoint_cap_skips_full_endpoints_and_rejects_when_all_are_full() {
    let first = FaultServer::start("first", Mode::Hang).await;
    let second = FaultServer::start("second", Mode::Hang).await;
    let gateway = GatewayProcess::start(&gateway_config(&format!(
        "    endpoints: [\"{}\", \"{}\"]\n    read_timeout: 3s\n    retry:\n      max_retries: 0\n    max_concurrent_requests_per_endpoint: 1\n",
        first.endpoint(),
        second.endpoint()
    )))
    .await;
    let client = client();
    // Two held requests: the cap sends the second one to the other endpoint.
    let holders: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client.get(gateway.url("/hold")).send()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while first.hits() + second.hits() < 2 {
        assert!(
            Instant::now() < deadline,
            "holders never reached the backends"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        (first.hits(), second.hits()),
        (1, 1),
        "one held request per endpoint"
    );
    let (status, code) = status_and_code(&client, client.get(gateway.url("/x"))).await;
    assert_eq!((status, code.as_str()), (503, "upstream_saturated"));
    assert_eq!(first.hits() + second.hits(), 2);
    for holder in holders {
        let _ = holder.await;
    }
}
