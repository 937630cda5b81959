//! The traffic features' Prometheus series: each canary target's requests, latency and
//! weight, rollbacks, and what shadowing sent and found.

use std::sync::LazyLock;

use prometheus::{Histogram, IntCounter, IntGauge};

use crate::observe::series::{Family, counter_family, gauge_family, histogram_family};

/// The same buckets as `loom_request_duration_seconds`, so the two compare.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct TrafficMetrics {
    pub canary_requests_total: Family<IntCounter>,
    pub canary_request_duration_seconds: Family<Histogram>,
    pub canary_weight: Family<IntGauge>,
    pub canary_rollbacks_total: Family<IntCounter>,
    pub shadow_requests_total: Family<IntCounter>,
    pub shadow_comparisons_total: Family<IntCounter>,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    if let Err(error) = prometheus::default_registry().register(Box::new(metric.clone())) {
        log::error!("metric registration failed: {error}");
    }
    metric
}

static METRICS: LazyLock<TrafficMetrics> = LazyLock::new(|| TrafficMetrics {
    canary_requests_total: register(counter_family(
        "loom_canary_requests_total",
        "Requests of a canary route by target upstream and outcome (success, or error: a 5xx or no answer).",
        &["route", "upstream", "outcome"],
    )),
    canary_request_duration_seconds: register(histogram_family(
        "loom_canary_request_duration_seconds",
        "Request duration on a canary route, by target upstream.",
        &["route", "upstream"],
        LATENCY_BUCKETS,
    )),
    canary_weight: register(gauge_family(
        "loom_canary_weight",
        "The percentage of a canary route's requests each target upstream gets now.",
        &["route", "upstream"],
    )),
    canary_rollbacks_total: register(counter_family(
        "loom_canary_rollbacks_total",
        "Automatic rollbacks of a canary target.",
        &["route", "upstream"],
    )),
    shadow_requests_total: register(counter_family(
        "loom_shadow_requests_total",
        "Mirrored requests by route and outcome: answered, failed, timeout, dropped (too many in flight), skipped_body (body over max_body).",
        &["route", "outcome"],
    )),
    shadow_comparisons_total: register(counter_family(
        "loom_shadow_comparisons_total",
        "Shadow answers compared with the primary's, by route and result (match, mismatch).",
        &["route", "result"],
    )),
});

pub fn traffic_metrics() -> &'static TrafficMetrics {
    &METRICS
}

/// One canary target's handles, resolved once.
pub struct TargetMetrics {
    pub success: IntCounter,
    pub error: IntCounter,
    pub duration: Histogram,
    pub weight: IntGauge,
    pub rollbacks: IntCounter,
}

impl TargetMetrics {
    pub fn new(route: &str, upstream: &str) -> TargetMetrics {
        let metrics = traffic_metrics();
        TargetMetrics {
            success: metrics
                .canary_requests_total
                .with_label_values(&[route, upstream, "success"]),
            error: metrics
                .canary_requests_total
                .with_label_values(&[route, upstream, "error"]),
            duration: metrics
                .canary_request_duration_seconds
                .with_label_values(&[route, upstream]),
            weight: metrics.canary_weight.with_label_values(&[route, upstream]),
            rollbacks: metrics
                .canary_rollbacks_total
                .with_label_values(&[route, upstream]),
        }
    }
}
