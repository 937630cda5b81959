//! Go Loom's `metrics.opentelemetry`: every `interval`, the metrics `/metrics` shows are
//! pushed to an OTLP/HTTP receiver (`/v1/metrics`, protobuf), for users whose collector
//! receives metrics rather than scrapes them.
//!
//! The Prometheus registry stays the one source: each push converts what a scrape would see
//! (counters as cumulative monotonic sums, gauges as gauges, histograms as cumulative explicit
//! bucket histograms) with the protocol's own types, so the two views never disagree. A push
//! that fails is counted (`loom_metrics_push_failures_total`) and logged at most every 30 s;
//! the next push sends the current values, so nothing is queued.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::proto::{MetricFamily, MetricType};
use prost::Message;

use super::metrics;
use super::tracing::http_client::CollectorClient;
use crate::gateway::snapshot::GatewayState;

/// How often a failing receiver is logged.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// `metrics.opentelemetry` as validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsPushPlan {
    /// The full `/v1/metrics` URL.
    pub endpoint: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub headers: Vec<(String, String)>,
    pub service_name: String,
}

/// The background service that pushes while the current snapshot says so.
pub struct MetricsPushService {
    state: Arc<GatewayState>,
}

impl MetricsPushService {
    pub fn new(state: Arc<GatewayState>) -> MetricsPushService {
        MetricsPushService { state }
    }
}

#[async_trait]
impl BackgroundService for MetricsPushService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let process_start = unix_nanos(SystemTime::now());
        let mut client: Option<CollectorClient> = None;
        let mut last_failure_logged: Option<Instant> = None;
        loop {
            let plan = self.state.current().metrics_push.clone();
            // Checked again every second while off, so a reload can switch it on.
            let wait = plan
                .as_ref()
                .map_or(Duration::from_secs(1), |plan| plan.interval);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let Some(plan) = self.state.current().metrics_push.clone() else {
                continue;
            };
            if client.is_none() {
                client = CollectorClient::new()
                    .map_err(|error| log::error!("metrics push: no HTTP client: {error}"))
                    .ok();
            }
            let Some(client) = client.as_ref() else {
                continue;
            };
            let body = encode(&metrics::gather_all(), &plan.service_name, process_start);
            if let Err(reason) = push(client, &plan, body).await {
                metrics::metrics().metrics_push_failures_total.inc();
                let due = last_failure_logged
                    .is_none_or(|logged| logged.elapsed() >= FAILURE_LOG_INTERVAL);
                if due {
                    last_failure_logged = Some(Instant::now());
                    log::warn!(
                        "metrics push to {} failed: {reason} (logged at most every {}s)",
                        plan.endpoint,
                        FAILURE_LOG_INTERVAL.as_secs()
                    );
                }
            }
        }
    }
}

async fn push(
    client: &CollectorClient,
    plan: &MetricsPushPlan,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut request = http::Request::post(&plan.endpoint)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Bytes::from(body))
        .map_err(|error| error.to_string())?;
    for (name, value) in &plan.headers {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) else {
            continue;
        };
        request.headers_mut().insert(name, value);
    }
    let sent = opentelemetry_http::HttpClient::send_bytes(client, request);
    match tokio::time::timeout(plan.timeout, sent).await {
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("the receiver answered {}", response.status())),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {:?}", plan.timeout)),
    }
}

/// The families as one OTLP export request.
pub fn encode(families: &[MetricFamily], service_name: &str, start_nanos: u64) -> Vec<u8> {
    let now = unix_nanos(SystemTime::now());
    let metrics = families
        .iter()
        .filter_map(|family| convert(family, start_nanos, now))
        .collect();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    text_attribute("service.name", service_name),
                    text_attribute("service.version", env!("CARGO_PKG_VERSION")),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "loom".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    request.encode_to_vec()
}

fn convert(family: &MetricFamily, start: u64, now: u64) -> Option<Metric> {
    let attributes = |metric: &prometheus::proto::Metric| -> Vec<KeyValue> {
        metric
            .label
            .iter()
            .map(|pair| text_attribute(pair.name(), pair.value()))
            .collect()
    };
    let number = |metric: &prometheus::proto::Metric, value: f64| NumberDataPoint {
        attributes: attributes(metric),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let data = match family.get_field_type() {
        MetricType::COUNTER => metric::Data::Sum(Sum {
            data_points: family
                .metric
                .iter()
                .map(|metric| number(metric, metric.counter.value()))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::GAUGE => metric::Data::Gauge(Gauge {
            data_points: family
                .metric
                .iter()
                .map(|metric| number(metric, metric.gauge.value()))
                .collect(),
        }),
        MetricType::HISTOGRAM => metric::Data::Histogram(Histogram {
            data_points: family
                .metric
                .iter()
                .map(|metric| {
                    let histogram = &metric.histogram;
                    let buckets = &histogram.bucket[..];
                    // Prometheus buckets are cumulative; OTLP's are per bucket, with one
                    // more for everything above the last bound.
                    let mut counts = Vec::with_capacity(buckets.len() + 1);
                    let mut below = 0;
                    for bucket in buckets {
                        let cumulative = bucket.cumulative_count();
                        counts.push(cumulative.saturating_sub(below));
                        below = cumulative;
                    }
                    counts.push(histogram.sample_count().saturating_sub(below));
                    HistogramDataPoint {
                        attributes: attributes(metric),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: histogram.sample_count(),
                        sum: Some(histogram.sample_sum()),
                        bucket_counts: counts,
                        explicit_bounds: buckets
                            .iter()
                            .map(|bucket| bucket.upper_bound())
                            .collect(),
                        ..Default::default()
                    }
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        // Loom defines no summaries; an untyped family is sent as a gauge.
        MetricType::UNTYPED => metric::Data::Gauge(Gauge {
            data_points: family
                .metric
                .iter()
                .map(|metric| number(metric, metric.gauge.value()))
                .collect(),
        }),
        MetricType::SUMMARY => return None,
    };
    Some(Metric {
        name: family.name().to_string(),
        description: family.help().to_string(),
        data: Some(data),
        ..Default::default()
    })
}

fn text_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, IntCounter, Registry};

    #[test]
    fn counters_and_histograms_become_otlp_sums_and_per_bucket_histograms() {
        let registry = Registry::new();
        let counter = IntCounter::new("test_total", "a counter").unwrap();
        counter.inc_by(7);
        registry.register(Box::new(counter)).unwrap();
        let histogram = prometheus::Histogram::with_opts(
            HistogramOpts::new("test_seconds", "a histogram").buckets(vec![0.1, 1.0]),
        )
        .unwrap();
        for value in [0.05, 0.5, 0.5, 5.0] {
            histogram.observe(value);
        }
        registry.register(Box::new(histogram)).unwrap();
        let bytes = encode(&registry.gather(), "edge", 1);
        let decoded = ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap();
        let metrics = &decoded.resource_metrics[0].scope_metrics[0].metrics;
        let sum = metrics
            .iter()
            .find(|metric| metric.name == "test_total")
            .unwrap();
        let Some(metric::Data::Sum(sum)) = &sum.data else {
            panic!("not a sum: {sum:?}");
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(7.0))
        );
        let histogram = metrics
            .iter()
            .find(|metric| metric.name == "test_seconds")
            .unwrap();
        let Some(metric::Data::Histogram(histogram)) = &histogram.data else {
            panic!("not a histogram");
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.count, 4);
        assert_eq!(point.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(point.bucket_counts, vec![1, 2, 1]);
    }
}
