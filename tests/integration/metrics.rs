//! `/metrics` as Prometheus scrapes it: per-route series that survive reloads and leave with
//! their route, real connection counts, upstream connection reuse, bytes per route and the
//! config generation.

use std::time::{Duration, Instant};

use crate::support::*;

fn two_routes(backend: u16, second_route: &str) -> String {
    format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
routes:
  - id: kept
    path: /kept/*
    upstream: echo
{second_route}upstreams:
{echo}"#,
        echo = echo_upstream(backend),
    )
}

const OLD_ROUTE: &str = "  - id: old\n    path: /old/*\n    upstream: echo\n";

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn route_series_count_across_reloads_and_leave_with_their_route() {
    let backend = echo("echo").await;
    let port = backend.addresses()[0].port();
    let gateway = GatewayProcess::start(&two_routes(port, OLD_ROUTE)).await;
    assert_eq!(gateway.metric("loom_config_generation").await, Some(1.0));
    let client = client();
    for path in ["/kept/a", "/kept/b", "/old/c"] {
        let response = client.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // A request is counted in Pingora's logging phase, after its answer went out: wait for
    // the counts rather than read them once.
    let kept = [("route", "kept"), ("status", "200"), ("method", "GET")];
    gateway
        .wait_for_metric(
            "loom_requests_total",
            &kept,
            2.0,
            Duration::from_secs(10),
            "kept: 2",
        )
        .await;
    gateway
        .wait_for_metric(
            "loom_requests_total",
            &[("route", "old")],
            1.0,
            Duration::from_secs(10),
            "old: 1",
        )
        .await;
    assert_eq!(
        gateway.metric_with("loom_requests_total", &kept).await,
        Some(2.0)
    );

    // The reload drops route "old": its series go, route "kept" keeps counting from 2.
    let text = gateway.write_config(&two_routes(port, ""));
    gateway.wait_for_config(&text).await;
    assert_eq!(gateway.metric("loom_config_generation").await, Some(2.0));
    client.get(gateway.url("/kept/c")).send().await.unwrap();
    gateway
        .wait_for_metric(
            "loom_requests_total",
            &kept,
            3.0,
            Duration::from_secs(10),
            "kept: 3",
        )
        .await;
    assert_eq!(
        gateway.metric_with("loom_requests_total", &kept).await,
        Some(3.0)
    );
    let metrics = gateway.metrics().await;
    assert!(
        !metrics.contains("route=\"old\""),
        "route old is gone but its series stayed:\n{metrics}"
    );
    assert_eq!(
        gateway
            .metric_with("loom_request_duration_seconds_count", &[("route", "kept")])
            .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn open_connections_are_counted_until_they_close_even_before_a_request() {
    let backend = echo("echo").await;
    let gateway = GatewayProcess::start(&two_routes(backend.addresses()[0].port(), "")).await;
    let baseline = gateway
        .metric("loom_active_connections")
        .await
        .unwrap_or(0.0);
    // Three connections that never send a byte: the old count only saw HTTP/1 requests.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", gateway.http_port))
                .await
                .unwrap(),
        );
    }
    wait_until("three open connections", || async {
        gateway
            .metric("loom_active_connections")
            .await
            .unwrap_or(0.0)
            >= baseline + 3.0
    })
    .await;
    drop(idle);
    wait_until("the closed connections to leave the count", || async {
        gateway
            .metric("loom_active_connections")
            .await
            .unwrap_or(0.0)
            <= baseline
    })
    .await;
}

#[tokio::test]
async fn upstream_connection_reuse_and_body_bytes_are_counted() {
    let backend = echo("echo").await;
    let gateway = GatewayProcess::start(&two_routes(backend.addresses()[0].port(), "")).await;
    let client = client();
    let mut received = 0u64;
    for _ in 0..5 {
        let response = client
            .post(gateway.url("/kept/upload"))
            .body(vec![b'x'; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        received += response.bytes().await.unwrap().len() as u64;
    }
    let opened = gateway
        .metric_with(
            "loom_upstream_connections_total",
            &[("upstream", "echo"), ("reused", "false")],
        )
        .await
        .unwrap_or(0.0);
    let reused = gateway
        .metric_with(
            "loom_upstream_connections_total",
            &[("upstream", "echo"), ("reused", "true")],
        )
        .await
        .unwrap_or(0.0);
    assert!(opened >= 1.0, "opened {opened}");
    assert!(
        reused >= 1.0,
        "five sequential requests reused no connection"
    );
    assert_eq!(opened + reused, 5.0, "one connection per attempt");
    assert_eq!(
        gateway
            .metric_with("loom_request_body_bytes_total", &[("route", "kept")])
            .await,
        Some(5000.0)
    );
    assert_eq!(
        gateway
            .metric_with("loom_response_body_bytes_total", &[("route", "kept")])
            .await,
        Some(received as f64)
    );
    assert_eq!(
        gateway
            .metric_with(
                "loom_upstream_requests_total",
                &[("upstream", "echo"), ("status", "200")]
            )
            .await,
        Some(5.0)
    );
}
