//! `tracing:` and `metrics.opentelemetry:` (Go Loom's keys plus the OTLP settings users
//! need) checked and resolved into the plans the request path and the export services read.

use std::time::Duration;

use super::schema::FileConfig;
use super::validate::Checker;
use crate::observe::metrics_push::MetricsPushPlan;
use crate::observe::tracing::{ExportSettings, TracingPlan, otlp_url};

const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4318";
/// The OpenTelemetry SDKs' default batch delay and sizes.
const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_BATCH_SIZE: usize = 512;
const DEFAULT_QUEUE_SIZE: usize = 2048;
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_STEP_THRESHOLD: Duration = Duration::from_millis(1);

/// The plan when tracing is on and valid; errors name `tracing.<key>`.
pub(crate) fn check_tracing(checker: &mut Checker, config: &FileConfig) -> Option<TracingPlan> {
    let section = config.tracing.as_ref().filter(|section| section.enabled)?;
    let errors_before = checker.error_count();
    let endpoint = otlp_endpoint(
        checker,
        "tracing.endpoint",
        section.endpoint.as_deref(),
        "/v1/traces",
    );
    let sample_rate = section.sample_rate.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_rate) {
        checker.error(
            "tracing.sample_rate".into(),
            format!("must be between 0 and 1, got {sample_rate}"),
        );
    }
    let max_batch_size = section.max_batch_size.unwrap_or(DEFAULT_MAX_BATCH_SIZE);
    let queue_size = section.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
    if max_batch_size == 0 {
        checker.error("tracing.max_batch_size".into(), "must be at least 1");
    }
    if queue_size < max_batch_size {
        checker.error(
            "tracing.queue_size".into(),
            format!("must be at least max_batch_size ({max_batch_size})"),
        );
    }
    let batch_timeout = section.batch_timeout.map_or(DEFAULT_BATCH_TIMEOUT, |d| d.0);
    let export_timeout = section
        .export_timeout
        .map_or(DEFAULT_EXPORT_TIMEOUT, |d| d.0);
    for (key, value) in [
        ("tracing.batch_timeout", batch_timeout),
        ("tracing.export_timeout", export_timeout),
    ] {
        if value.is_zero() {
            checker.error(key.into(), "must be greater than zero");
        }
    }
    for (name, value) in &section.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            checker.error(
                format!("tracing.headers.{name}"),
                "not a valid HTTP header name",
            );
        }
        if http::HeaderValue::from_str(value).is_err() {
            checker.error(
                format!("tracing.headers.{name}"),
                "not a valid HTTP header value",
            );
        }
    }
    let service_name = section
        .service_name
        .clone()
        .unwrap_or_else(|| "loom".into());
    if service_name.is_empty() {
        checker.error("tracing.service_name".into(), "must not be empty");
    }
    if checker.error_count() > errors_before {
        return None;
    }
    Some(TracingPlan::new(
        sample_rate,
        section.parent_based.unwrap_or(true),
        section
            .step_threshold
            .map_or(DEFAULT_STEP_THRESHOLD, |d| d.0),
        ExportSettings {
            endpoint,
            headers: section.headers.clone(),
            service_name,
            resource_attributes: section.resource_attributes.clone(),
            batch_timeout,
            max_batch_size,
            queue_size,
            export_timeout,
        },
    ))
}

const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_secs(15);
const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// `metrics.opentelemetry` when it is on and valid; errors name its keys.
pub(crate) fn check_metrics_push(
    checker: &mut Checker,
    config: &FileConfig,
) -> Option<MetricsPushPlan> {
    let section = config
        .metrics
        .opentelemetry
        .as_ref()
        .filter(|section| section.enabled)?;
    let errors_before = checker.error_count();
    let endpoint = otlp_endpoint(
        checker,
        "metrics.opentelemetry.endpoint",
        section.endpoint.as_deref(),
        "/v1/metrics",
    );
    let interval = section.interval.map_or(DEFAULT_PUSH_INTERVAL, |d| d.0);
    let timeout = section.timeout.map_or(DEFAULT_PUSH_TIMEOUT, |d| d.0);
    for (key, value) in [
        ("metrics.opentelemetry.interval", interval),
        ("metrics.opentelemetry.timeout", timeout),
    ] {
        if value.is_zero() {
            checker.error(key.into(), "must be greater than zero");
        }
    }
    for (name, value) in &section.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            checker.error(
                format!("metrics.opentelemetry.headers.{name}"),
                "not a valid HTTP header",
            );
        }
    }
    if checker.error_count() > errors_before {
        return None;
    }
    let service_name = config
        .tracing
        .as_ref()
        .and_then(|tracing| tracing.service_name.clone())
        .unwrap_or_else(|| "loom".into());
    Some(MetricsPushPlan {
        endpoint,
        interval,
        timeout,
        headers: section
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        service_name,
    })
}

/// The full OTLP/HTTP URL for `signal_path`, or an error at `key`. Go Loom configs name the
/// OTLP/gRPC port 4317; Loom speaks OTLP over HTTP, so that gets a warning.
fn otlp_endpoint(
    checker: &mut Checker,
    key: &str,
    endpoint: Option<&str>,
    signal_path: &str,
) -> String {
    match otlp_url(endpoint.unwrap_or(DEFAULT_ENDPOINT), signal_path) {
        Ok(url) => {
            if url.contains(":4317/") {
                log::warn!(
                    "{key} {url}: 4317 is the OTLP/gRPC port; Loom speaks OTLP over HTTP, \
                     which collectors receive on 4318 by default"
                );
            }
            url
        }
        Err(message) => {
            checker.error(key.into(), message);
            String::new()
        }
    }
}
