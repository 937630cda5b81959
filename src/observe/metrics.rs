//! The gateway's Prometheus metrics, named as in the Go Loom gateway's README.
//!
//! Metrics live in the process-wide default registry, so they survive config reloads. The
//! request path uses pre-resolved handles where the labels are known ahead (per route, per
//! endpoint) and `with_label_values` only for the status label.

use std::sync::LazyLock;

use prometheus::{Histogram, IntCounter, IntGauge, Registry};

use super::series::{Family, counter_family, gauge_family, histogram_family};

type IntCounterVec = Family<IntCounter>;
type IntGaugeVec = Family<IntGauge>;
type HistogramVec = Family<Histogram>;

/// Latency buckets from 0.5 ms to 30 s: gateway overhead sits at the bottom, slow upstreams
/// at the top.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub upstream_requests_total: IntCounterVec,
    pub upstream_duration_seconds: HistogramVec,
    pub upstream_endpoint_healthy: IntGaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub active_connections: IntGauge,
    pub requests_in_flight: IntGauge,
    pub circuit_breaker_state: IntGaugeVec,
    pub circuit_breaker_transitions_total: IntCounterVec,
    pub upstream_retries_total: IntCounterVec,
    pub upstream_ejections_total: IntCounterVec,
    pub downstream_timeouts_total: IntCounterVec,
    pub access_log_dropped_total: IntCounter,
    pub access_log_lines_total: IntCounter,
    pub auth_failures_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub rate_limit_redis_errors_total: IntCounterVec,
    pub trace_spans_dropped_total: IntCounterVec,
    pub trace_spans_exported_total: IntCounter,
    pub request_body_bytes_total: IntCounterVec,
    pub response_body_bytes_total: IntCounterVec,
    pub upstream_connections_total: IntCounterVec,
    pub config_generation: IntGauge,
    pub metrics_push_failures_total: IntCounter,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Registration only fails on duplicate names, which the constants below rule out.
    if let Err(error) = registry.register(Box::new(metric.clone())) {
        log::error!("metric registration failed: {error}");
    }
    metric
}

fn counter_vec(name: &str, help: &str, labels: &'static [&'static str]) -> IntCounterVec {
    counter_family(name, help, labels)
}

fn histogram_vec(name: &str, help: &str, labels: &'static [&'static str]) -> HistogramVec {
    histogram_family(name, help, labels, LATENCY_BUCKETS)
}

fn gauge_vec(name: &str, help: &str, labels: &'static [&'static str]) -> IntGaugeVec {
    gauge_family(name, help, labels)
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help)
        .unwrap_or_else(|error| unreachable!("static metric definition {name}: {error}"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help)
        .unwrap_or_else(|error| unreachable!("static metric definition {name}: {error}"))
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = prometheus::default_registry();
    Metrics {
        requests_total: register(
            registry,
            counter_vec(
                "loom_requests_total",
                "Requests answered, by method, route and status.",
                &["method", "route", "status"],
            ),
        ),
        request_duration_seconds: register(
            registry,
            histogram_vec(
                "loom_request_duration_seconds",
                "Time from request start to the end of the response, by route.",
                &["route"],
            ),
        ),
        upstream_requests_total: register(
            registry,
            counter_vec(
                "loom_upstream_requests_total",
                "Upstream attempts by upstream, endpoint and status (0 when no response).",
                &["upstream", "endpoint", "status"],
            ),
        ),
        upstream_duration_seconds: register(
            registry,
            histogram_vec(
                "loom_upstream_duration_seconds",
                "Time from choosing an endpoint to the end of its response, by upstream.",
                &["upstream"],
            ),
        ),
        upstream_endpoint_healthy: register(
            registry,
            gauge_vec(
                "loom_upstream_endpoint_healthy",
                "1 when the active health check counts the endpoint healthy, else 0.",
                &["upstream", "endpoint"],
            ),
        ),
        config_reloads_total: register(
            registry,
            counter_vec(
                "loom_config_reloads_total",
                "Config reload attempts by result (success, failure, unchanged).",
                &["result"],
            ),
        ),
        active_connections: register(
            registry,
            gauge(
                "loom_active_connections",
                "Downstream connections currently open.",
            ),
        ),
        requests_in_flight: register(
            registry,
            gauge(
                "loom_requests_in_flight",
                "Downstream requests currently being processed.",
            ),
        ),
        circuit_breaker_state: register(
            registry,
            gauge_vec(
                "loom_circuit_breaker_state",
                "Circuit breaker state per endpoint: 0 closed, 1 open, 2 half-open.",
                &["upstream", "endpoint"],
            ),
        ),
        circuit_breaker_transitions_total: register(
            registry,
            counter_vec(
                "loom_circuit_breaker_transitions_total",
                "Circuit breaker transitions by the state entered.",
                &["upstream", "endpoint", "to"],
            ),
        ),
        upstream_retries_total: register(
            registry,
            counter_vec(
                "loom_upstream_retries_total",
                "Retry decisions: attempted, budget_exhausted, max_retries_reached, not_idempotent, body_too_large, response_started.",
                &["upstream", "outcome"],
            ),
        ),
        upstream_ejections_total: register(
            registry,
            counter_vec(
                "loom_upstream_ejections_total",
                "Endpoints ejected by passive health checking.",
                &["upstream", "endpoint"],
            ),
        ),
        downstream_timeouts_total: register(
            registry,
            counter_vec(
                "loom_downstream_timeouts_total",
                "Downstream connections closed for a request head that came too slowly (phase request_header). Idle keep-alive connections are closed by Pingora's keep-alive timeout and not counted here.",
                &["phase"],
            ),
        ),
        access_log_dropped_total: register(
            registry,
            counter(
                "loom_access_log_dropped_total",
                "Access log lines dropped: the writer's buffers were full or its file could not be written.",
            ),
        ),
        access_log_lines_total: register(
            registry,
            counter(
                "loom_access_log_lines_total",
                "Access log lines written and flushed to their destination.",
            ),
        ),
        auth_failures_total: register(
            registry,
            counter_vec(
                "loom_auth_failures_total",
                "Requests refused by an authentication policy (401, or 403 for valid credentials that are not allowed), by route, policy entry and reason.",
                &["route", "policy", "reason"],
            ),
        ),
        rate_limited_total: register(
            registry,
            counter_vec(
                "loom_rate_limited_total",
                "Requests refused with 429 by a rate_limit or concurrency_limit policy, by route and policy entry.",
                &["route", "policy"],
            ),
        ),
        rate_limit_redis_errors_total: register(
            registry,
            counter_vec(
                "loom_rate_limit_redis_errors_total",
                "Rate-limit decisions Redis could not make (unreachable, timed out, error); the policy's on_redis_error applied.",
                &["policy"],
            ),
        ),
        trace_spans_dropped_total: register(
            registry,
            counter_vec(
                "loom_trace_spans_dropped_total",
                "Trace spans not exported: queue_full (the export queue was full), export_failed (the collector refused or did not answer), disabled (tracing was switched off with spans queued).",
                &["reason"],
            ),
        ),
        trace_spans_exported_total: register(
            registry,
            counter(
                "loom_trace_spans_exported_total",
                "Trace spans the collector accepted.",
            ),
        ),
        request_body_bytes_total: register(
            registry,
            counter_vec(
                "loom_request_body_bytes_total",
                "Request body bytes read from clients, by route.",
                &["route"],
            ),
        ),
        response_body_bytes_total: register(
            registry,
            counter_vec(
                "loom_response_body_bytes_total",
                "Response body bytes sent to clients, by route.",
                &["route"],
            ),
        ),
        upstream_connections_total: register(
            registry,
            counter_vec(
                "loom_upstream_connections_total",
                "Upstream connections used by attempts, by upstream: reused=\"true\" taken from the pool, \"false\" newly opened.",
                &["upstream", "reused"],
            ),
        ),
        metrics_push_failures_total: register(
            registry,
            counter(
                "loom_metrics_push_failures_total",
                "OTLP metric pushes (metrics.opentelemetry) the receiver refused or did not answer.",
            ),
        ),
        config_generation: register(
            registry,
            gauge(
                "loom_config_generation",
                "The generation of the config snapshot serving requests (1 at start, +1 per applied reload or change).",
            ),
        ),
    }
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

pub fn set_endpoint_health(upstream: &str, endpoint: &str, healthy: bool) {
    metrics()
        .upstream_endpoint_healthy
        .with_label_values(&[upstream, endpoint])
        .set(i64::from(healthy));
}

pub fn set_breaker_state(upstream: &str, endpoint: &str, state: u8) {
    metrics()
        .circuit_breaker_state
        .with_label_values(&[upstream, endpoint])
        .set(i64::from(state));
}

pub fn count_breaker_transition(upstream: &str, endpoint: &str, to: &str) {
    metrics()
        .circuit_breaker_transitions_total
        .with_label_values(&[upstream, endpoint, to])
        .inc();
}

pub fn count_retry(upstream: &str, outcome: &str) {
    metrics()
        .upstream_retries_total
        .with_label_values(&[upstream, outcome])
        .inc();
}

pub fn count_ejection(upstream: &str, endpoint: &str) {
    metrics()
        .upstream_ejections_total
        .with_label_values(&[upstream, endpoint])
        .inc();
}

/// Counts a downstream connection closed by [`crate::gateway::edge`]; `phase` is
/// `request_header` (an idle keep-alive wait never expires there).
pub fn count_downstream_timeout(phase: &str) {
    metrics()
        .downstream_timeouts_total
        .with_label_values(&[phase])
        .inc();
}

/// Counts a request refused by an auth policy.
pub fn count_auth_failure(route: &str, policy: &str, reason: &str) {
    metrics()
        .auth_failures_total
        .with_label_values(&[route, policy, reason])
        .inc();
}

/// Counts a request refused by a rate or concurrency limit.
pub fn count_rate_limited(route: &str, policy: &str) {
    metrics()
        .rate_limited_total
        .with_label_values(&[route, policy])
        .inc();
}

pub fn count_rate_limit_redis_error(policy: &str) {
    metrics()
        .rate_limit_redis_errors_total
        .with_label_values(&[policy])
        .inc();
}

pub fn count_trace_spans_dropped(reason: &str, count: u64) {
    metrics()
        .trace_spans_dropped_total
        .with_label_values(&[reason])
        .inc_by(count);
}

pub fn count_trace_spans_exported(count: u64) {
    metrics().trace_spans_exported_total.inc_by(count);
}

/// Removes an endpoint's series when a reload took it out of its upstream.
pub fn forget_endpoint(upstream: &str, endpoint: &str) {
    let metrics = metrics();
    metrics
        .upstream_endpoint_healthy
        .remove_label_values(&[upstream, endpoint]);
    metrics
        .circuit_breaker_state
        .remove_label_values(&[upstream, endpoint]);
    for family in [
        &metrics.upstream_requests_total,
        &metrics.circuit_breaker_transitions_total,
        &metrics.upstream_ejections_total,
    ] {
        family.remove_where(&[("upstream", upstream), ("endpoint", endpoint)]);
    }
}

/// Removes an upstream's series when a reload took the upstream out.
pub fn forget_upstream(upstream: &str) {
    let metrics = metrics();
    for family in [
        &metrics.upstream_requests_total,
        &metrics.upstream_retries_total,
        &metrics.upstream_ejections_total,
        &metrics.upstream_connections_total,
        &metrics.circuit_breaker_transitions_total,
    ] {
        family.remove_where(&[("upstream", upstream)]);
    }
    metrics
        .upstream_duration_seconds
        .remove_label_values(&[upstream]);
    metrics
        .upstream_endpoint_healthy
        .remove_where(&[("upstream", upstream)]);
    metrics
        .circuit_breaker_state
        .remove_where(&[("upstream", upstream)]);
}

/// Pre-resolved per-upstream handle.
pub fn upstream_duration(upstream: &str) -> Histogram {
    metrics()
        .upstream_duration_seconds
        .with_label_values(&[upstream])
}

/// Every family `/metrics` shows: the gateway's, the plugins' and the streaming service's.
pub fn gather_all() -> Vec<prometheus::proto::MetricFamily> {
    let mut families = prometheus::gather();
    families.extend(crate::plugin::metrics::gather());
    families.extend(crate::stream::metrics::gather_installed());
    families
}

/// The text exposition of every registered metric.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut buffer = Vec::with_capacity(16 * 1024);
    let encoder = prometheus::TextEncoder::new();
    let families = gather_all();
    if let Err(error) = encoder.encode(&families, &mut buffer) {
        log::error!("metrics encoding failed: {error}");
    }
    buffer
}
