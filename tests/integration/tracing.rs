//! OpenTelemetry tracing end to end: the real gateway exports to a real OTLP/HTTP receiver
//! (`otlp_receiver`), and the echo backend reports the `traceparent` it was sent.

use std::time::{Duration, Instant};

use crate::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use crate::support::*;

const SPAN_KIND_INTERNAL: i32 = 1;
const SPAN_KIND_SERVER: i32 = 2;
const SPAN_KIND_CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn config(
    collector: &str,
    backend: &loom::echo::EchoServer,
    tracing_keys: &str,
    log_path: &std::path::Path,
) -> String {
    format!(
        r#"listeners:
  - name: http
    address: "127.0.0.1:@HTTP@"
tracing:
  enabled: true
  endpoint: "{collector}"
  service_name: edge-gateway
  batch_timeout: 50ms
  headers:
    x-tenant: blue
  resource_attributes:
    deployment.environment: test
{tracing_keys}access_log:
  path: "{log}"
plugin_dir: "@PLUGINS@"
plugin_cache_dir: "@PLUGIN_CACHE@"
routes:
  - id: probe
    path: /probe/*
    upstream: echo
    plugins: [probe]
  - id: api
    path: /api/*
    upstream: echo
  - id: retried
    path: /status/*
    upstream: twice
    retry:
      max_retries: 1
      retry_on: [503]
  - id: private
    path: /private/*
    upstream: echo
    plugins: [keys]
plugins:
  - name: probe
    path: loom_test_abi_probe.wasm
  - name: keys
    type: key_auth
    config:
      keys:
        - key: secret-key
          consumer: alice
upstreams:
{echo}  - name: twice
    load_balancer: round_robin
    endpoints: ["127.0.0.1:{backend}", "127.0.0.1:{second}"]
"#,
        log = log_path.display(),
        echo = echo_upstream(backend.addresses()[0].port()),
        backend = backend.addresses()[0].port(),
        second = backend.addresses().last().unwrap().port(),
    )
}

/// A gateway tracing to a fresh receiver, with `tracing_keys` added to its `tracing:` section.
struct Traced {
    collector: OtlpReceiver,
    backend: loom::echo::EchoServer,
    gateway: GatewayProcess,
    directory: tempfile::TempDir,
}

async fn traced(tracing_keys: &str) -> Traced {
    let collector = OtlpReceiver::start().await;
    let backend = two_echoes().await;
    let directory = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(&config(
        &collector.endpoint(),
        &backend,
        tracing_keys,
        &directory.path().join("access.log"),
    ))
    .await;
    Traced {
        collector,
        backend,
        gateway,
        directory,
    }
}

/// One echo server listening on two ports, so the retried route has two endpoints.
async fn two_echoes() -> loom::echo::EchoServer {
    loom::echo::EchoServer::start(
        &[
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        ],
        "echo",
    )
    .await
    .expect("echo server starts")
}

/// The traceparent the echo backend received, split into (trace id, parent id, flags).
fn seen_traceparent(body: &serde_json::Value) -> (String, String, String) {
    let value = body["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the upstream got no traceparent: {body}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    )
}

fn by_kind(spans: &[ReceivedSpan], trace: &str, kind: i32) -> Vec<ReceivedSpan> {
    spans
        .iter()
        .filter(|span| span.trace_id_hex() == trace && span.span.kind == kind)
        .cloned()
        .collect()
}

#[tokio::test]
async fn one_trace_runs_from_the_caller_through_the_gateway_to_the_upstream() {
    let Traced {
        collector,
        backend,
        gateway,
        directory,
    } = traced("").await;
    let log_path = directory.path().join("access.log");
    let client = client();
    let response = client
        .get(gateway.url("/api/items?page=2"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
        .header("baggage", "user=alice")
        .header("x-request-id", "trace-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let (trace, upstream_parent, flags) = seen_traceparent(&body);
    assert_eq!(trace, CALLER_TRACE, "the caller's trace continues upstream");
    assert_eq!(flags, "01");
    assert_ne!(
        upstream_parent, CALLER_SPAN,
        "the gateway is the upstream's parent"
    );
    assert_eq!(body["headers"]["tracestate"], "vendor=opaque");

    let spans = collector
        .wait_for("server and attempt spans", |spans| {
            !by_kind(spans, CALLER_TRACE, SPAN_KIND_SERVER).is_empty()
                && !by_kind(spans, CALLER_TRACE, SPAN_KIND_CLIENT).is_empty()
        })
        .await;
    let server = &by_kind(&spans, CALLER_TRACE, SPAN_KIND_SERVER)[0];
    let attempt = &by_kind(&spans, CALLER_TRACE, SPAN_KIND_CLIENT)[0];
    assert_eq!(
        server.parent_id_hex(),
        CALLER_SPAN,
        "the server span's parent is the caller"
    );
    assert_eq!(attempt.parent_id_hex(), server.span_id_hex());
    assert_eq!(
        attempt.span_id_hex(),
        upstream_parent,
        "the upstream's parent is the attempt span"
    );
    assert_eq!(server.attribute("loom.route").as_deref(), Some("api"));
    assert_eq!(
        server.attribute("http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        server.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        server.attribute("client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        server.attribute("loom.request_id").as_deref(),
        Some("trace-1")
    );
    assert_eq!(
        server.attribute("loom.baggage").as_deref(),
        Some("user=alice")
    );
    assert_eq!(server.span.trace_state, "vendor=opaque");
    assert_eq!(
        attempt.attribute("server.address"),
        Some(format!("127.0.0.1:{}", backend.addresses()[0].port()))
    );
    assert_eq!(attempt.attribute("loom.retry").as_deref(), Some("0"));
    assert_eq!(
        attempt.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(server.span.start_time_unix_nano <= attempt.span.start_time_unix_nano);
    assert!(attempt.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    assert_eq!(server.service_name, "edge-gateway");
    assert!(
        server
            .resource
            .contains(&("deployment.environment".to_string(), "test".to_string())),
        "{:?}",
        server.resource
    );
    let headers = collector.last_headers().unwrap();
    assert_eq!(
        headers["x-tenant"], "blue",
        "the configured collector headers are sent"
    );

    // The access log line carries the trace id.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| line.contains("trace-1")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no access log line for trace-1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["trace_id"], CALLER_TRACE);

    // Plugins read it as the `loom.trace_id` property.
    let response = client
        .get(gateway.url("/probe/a"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00"))
        .header("x-probe", "properties")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-prop-loom-trace_id"], CALLER_TRACE);
}

#[tokio::test]
async fn a_retried_request_has_one_attempt_span_per_try_and_a_refusing_policy_its_own_span() {
    let Traced {
        collector,
        backend: _backend,
        gateway,
        directory: _directory,
    } = traced("").await;
    let client = client();
    let retried_trace = "11111111111111111111111111111111";
    let response = client
        .get(gateway.url("/status/503"))
        .header(
            "traceparent",
            format!("00-{retried_trace}-{CALLER_SPAN}-01"),
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    let refused_trace = "22222222222222222222222222222222";
    let response = client
        .get(gateway.url("/private/x"))
        .header(
            "traceparent",
            format!("00-{refused_trace}-{CALLER_SPAN}-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let spans = collector
        .wait_for("two attempts and a refusal", |spans| {
            by_kind(spans, retried_trace, SPAN_KIND_CLIENT).len() >= 2
                && !by_kind(spans, refused_trace, SPAN_KIND_INTERNAL).is_empty()
                && !by_kind(spans, retried_trace, SPAN_KIND_SERVER).is_empty()
                && !by_kind(spans, refused_trace, SPAN_KIND_SERVER).is_empty()
        })
        .await;
    let server = &by_kind(&spans, retried_trace, SPAN_KIND_SERVER)[0];
    let mut attempts = by_kind(&spans, retried_trace, SPAN_KIND_CLIENT);
    assert_eq!(attempts.len(), 2, "max_retries 1: two attempts");
    attempts.sort_by_key(|span| span.span.start_time_unix_nano);
    for (retry, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.parent_id_hex(), server.span_id_hex());
        assert_eq!(attempt.attribute("loom.retry"), Some(retry.to_string()));
        assert_eq!(
            attempt.attribute("http.response.status_code").as_deref(),
            Some("503")
        );
        assert_eq!(
            attempt.span.status.as_ref().map(|status| status.code),
            Some(STATUS_ERROR)
        );
    }
    assert_ne!(attempts[0].span_id_hex(), attempts[1].span_id_hex());
    assert!(attempts[0].span.end_time_unix_nano <= attempts[1].span.start_time_unix_nano);
    assert_eq!(
        server.span.status.as_ref().map(|status| status.code),
        Some(STATUS_ERROR)
    );

    let refusal = &by_kind(&spans, refused_trace, SPAN_KIND_INTERNAL)[0];
    let refused_server = &by_kind(&spans, refused_trace, SPAN_KIND_SERVER)[0];
    assert_eq!(refusal.parent_id_hex(), refused_server.span_id_hex());
    assert_eq!(refusal.attribute("loom.step.name").as_deref(), Some("keys"));
    assert_eq!(
        refusal.attribute("loom.step.outcome").as_deref(),
        Some("refused")
    );
    assert_eq!(
        refusal.span.status.as_ref().map(|status| status.code),
        Some(STATUS_ERROR)
    );
    assert!(
        by_kind(&spans, refused_trace, SPAN_KIND_CLIENT).is_empty(),
        "a refused request has no upstream attempt"
    );
}

#[tokio::test]
async fn sampling_follows_the_ratio_and_the_callers_decision() {
    let Traced {
        collector,
        backend: _backend,
        gateway,
        directory: _directory,
    } = traced("  sample_rate: 0.25\n").await;
    let client = client();
    const REQUESTS: usize = 400;
    let mut sampled_traces = Vec::new();
    let mut unsampled_traces = Vec::new();
    for _ in 0..REQUESTS {
        let body: serde_json::Value = client
            .get(gateway.url("/api/sampled"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (trace, _, flags) = seen_traceparent(&body);
        match flags.as_str() {
            "01" => sampled_traces.push(trace),
            "00" => unsampled_traces.push(trace),
            other => panic!("flags {other}"),
        }
    }
    // 400 draws at 0.25: mean 100, standard deviation 8.7; ±40 is more than 4.5 of them.
    assert!(
        (60..=140).contains(&sampled_traces.len()),
        "{} of {REQUESTS} sampled at 0.25",
        sampled_traces.len()
    );
    // A caller's decision is followed both ways.
    let forced = "33333333333333333333333333333333";
    let refused = "44444444444444444444444444444444";
    for (trace, flags) in [(forced, "01"), (refused, "00")] {
        let body: serde_json::Value = client
            .get(gateway.url("/api/parent"))
            .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-{flags}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (seen_trace, _, seen_flags) = seen_traceparent(&body);
        assert_eq!(seen_trace, trace);
        assert_eq!(seen_flags, flags);
    }
    sampled_traces.push(forced.to_string());
    let spans = collector
        .wait_for("a server span per sampled request", |spans| {
            sampled_traces
                .iter()
                .all(|trace| !by_kind(spans, trace, SPAN_KIND_SERVER).is_empty())
        })
        .await;
    let servers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| span.span.kind == SPAN_KIND_SERVER)
        .collect();
    assert_eq!(
        servers.len(),
        sampled_traces.len(),
        "exactly the sampled requests are exported"
    );
    for trace in unsampled_traces.iter().map(String::as_str).chain([refused]) {
        assert!(
            spans.iter().all(|span| span.trace_id_hex() != trace),
            "unsampled trace {trace} was exported"
        );
    }
}

#[tokio::test]
async fn a_dead_or_failing_collector_never_slows_requests_and_drops_are_counted() {
    // A collector that accepts connections and never answers: the worst kind.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_endpoint = format!("http://{}", silent.local_addr().unwrap());
    let backend = two_echoes().await;
    let directory = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(&config(
        &silent_endpoint,
        &backend,
        "  queue_size: 64\n  max_batch_size: 16\n  export_timeout: 30s\n",
        &directory.path().join("access.log"),
    ))
    .await;
    // The same load through a gateway without tracing is the baseline.
    let untraced_config = config(
        &silent_endpoint,
        &backend,
        "",
        &directory.path().join("untraced.log"),
    )
    .replace("  enabled: true\n", "  enabled: false\n");
    let untraced = GatewayProcess::start(&untraced_config).await;
    let (baseline, _) = timed_load(&untraced).await;
    let (total, slowest) = timed_load(&gateway).await;
    assert!(
        slowest < Duration::from_secs(2),
        "a request took {slowest:?} with the collector silent"
    );
    // Generous, for a shared 2-core machine: a request path that waited on the exporter
    // would take seconds per round.
    assert!(
        total < baseline * 3 + Duration::from_millis(500),
        "500 requests took {total:?} with the collector silent, {baseline:?} without tracing"
    );
    let dropped = gateway
        .metric_with(
            "loom_trace_spans_dropped_total",
            &[("reason", "queue_full")],
        )
        .await
        .unwrap_or(0.0);
    assert!(
        dropped >= 500.0 - 64.0 - 16.0,
        "500 sampled requests, a 64-span queue and a stuck export: {dropped} dropped"
    );
    eprintln!(
        "500 requests: {total:?} with a silent collector (slowest {slowest:?}), {baseline:?} without tracing"
    );
}

/// 500 requests, 25 at a time: the total time and the slowest request.
async fn timed_load(gateway: &GatewayProcess) -> (Duration, Duration) {
    let client = client();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        let requests = (0..25).map(|index| {
            let client = client.clone();
            let url = gateway.url(&format!("/api/{round}/{index}"));
            async move {
                let sent = Instant::now();
                let status = client.get(url).send().await.unwrap().status();
                (status, sent.elapsed())
            }
        });
        for (status, elapsed) in futures_util::future::join_all(requests).await {
            assert_eq!(status, 200);
            slowest = slowest.max(elapsed);
        }
    }
    (started.elapsed(), slowest)
}

#[tokio::test]
async fn a_collector_that_refuses_exports_is_counted_and_recovers() {
    let Traced {
        collector,
        backend: _backend,
        gateway,
        directory: _directory,
    } = traced("").await;
    collector.answer_with(503);
    let client = client();
    let response = client
        .get(gateway.url("/api/refused"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    gateway
        .wait_for_metric(
            "loom_trace_spans_dropped_total",
            &[("reason", "export_failed")],
            1.0,
            Duration::from_secs(20),
            "a refused export was not counted",
        )
        .await;
    collector.answer_with(200);
    let trace = "55555555555555555555555555555555";
    client
        .get(gateway.url("/api/recovered"))
        .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    collector
        .wait_for("spans after the collector recovered", |spans| {
            !by_kind(spans, trace, SPAN_KIND_SERVER).is_empty()
        })
        .await;
    // The collector holds the spans before the exporter has read its answer and counted
    // them: wait for the count rather than read it once.
    gateway
        .wait_for_metric(
            "loom_trace_spans_exported_total",
            &[],
            2.0,
            Duration::from_secs(10),
            "the spans sent after the collector recovered were not counted as exported",
        )
        .await;
}

#[test]
fn tracing_config_errors_name_their_keys() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("loom.yaml");
    let (code, _, errors) = check_config_file(
        &path,
        "listeners:\n  - name: http\n    address: \"127.0.0.1:1\"\nroutes: []\nupstreams: []\n\
         tracing:\n  enabled: true\n  endpoint: \"grpc://collector:4317\"\n  sample_rate: 1.5\n  \
         queue_size: 8\n  max_batch_size: 16\n  headers:\n    \"bad header\": x\n",
    );
    assert_eq!(code, 1, "{errors}");
    for key in [
        "tracing.endpoint",
        "tracing.sample_rate",
        "tracing.queue_size",
        "tracing.headers.bad header",
    ] {
        assert!(errors.contains(key), "no error for {key}:\n{errors}");
    }
}

#[tokio::test]
async fn shutdown_sends_the_spans_still_waiting_for_a_batch() {
    let collector = OtlpReceiver::start().await;
    let backend = two_echoes().await;
    let directory = tempfile::tempdir().unwrap();
    // A batch would wait a minute; only the shutdown can send it in time.
    let template = config(
        &collector.endpoint(),
        &backend,
        "",
        &directory.path().join("access.log"),
    )
    .replace("batch_timeout: 50ms", "batch_timeout: 60s");
    let mut gateway = GatewayProcess::start_with_server(
        &template,
        "  grace_period_seconds: 2\n  graceful_shutdown_timeout_seconds: 2\n",
    )
    .await;
    let trace = "66666666666666666666666666666666";
    let response = client()
        .get(gateway.url("/api/last"))
        .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(gateway.pid(), libc::SIGTERM);
    }
    let spans = collector
        .wait_for("the waiting spans after SIGTERM", |spans| {
            !by_kind(spans, trace, SPAN_KIND_SERVER).is_empty()
                && !by_kind(spans, trace, SPAN_KIND_CLIENT).is_empty()
        })
        .await;
    assert_eq!(by_kind(&spans, trace, SPAN_KIND_CLIENT).len(), 1);
    assert!(
        gateway.wait_exit(Duration::from_secs(20)).await,
        "loom did not exit"
    );
}

#[tokio::test]
async fn metrics_are_pushed_as_otlp_when_go_loom_asks_for_it() {
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
    let collector = OtlpReceiver::start().await;
    let backend = two_echoes().await;
    let template = format!(
        "metrics:\n  opentelemetry:\n    enabled: true\n    endpoint: \"{}\"\n    interval: 100ms\n    headers:\n      x-tenant: green\n{}",
        collector.endpoint(),
        two_routes_only(&backend)
    );
    let gateway = GatewayProcess::start(&template).await;
    let client = client();
    for _ in 0..3 {
        client.get(gateway.url("/api/pushed")).send().await.unwrap();
    }
    let requests_of = |metrics: &[opentelemetry_proto::tonic::metrics::v1::Metric]| -> f64 {
        metrics
            .iter()
            .filter(|metric| metric.name == "loom_requests_total")
            .flat_map(|metric| match &metric.data {
                Some(Data::Sum(sum)) => sum.data_points.clone(),
                _ => Vec::new(),
            })
            .filter(|point| {
                point.attributes.iter().any(|attribute| {
                    attribute.key == "route" && format!("{:?}", attribute.value).contains("\"api\"")
                })
            })
            .map(|point| match point.value {
                Some(Value::AsDouble(value)) => value,
                Some(Value::AsInt(value)) => value as f64,
                None => 0.0,
            })
            .sum()
    };
    let push = collector
        .wait_for_push("three requests on route api", |metrics| {
            requests_of(metrics) >= 3.0
        })
        .await;
    assert_eq!(requests_of(&push), 3.0);
    let histogram = push
        .iter()
        .find(|metric| metric.name == "loom_request_duration_seconds")
        .expect("the duration histogram is pushed");
    assert!(matches!(histogram.data, Some(Data::Histogram(_))));
    assert_eq!(collector.last_headers().unwrap()["x-tenant"], "green");
}

fn two_routes_only(backend: &loom::echo::EchoServer) -> String {
    format!(
        "listeners:\n  - name: http\n    address: \"127.0.0.1:@HTTP@\"\nroutes:\n  - id: api\n    path: /api/*\n    upstream: echo\nupstreams:\n{}",
        echo_upstream(backend.addresses()[0].port())
    )
}
