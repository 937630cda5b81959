//! OpenTelemetry tracing: W3C trace context in and out, spans for the request, each upstream
//! attempt and each slow or failed chain step, exported as OTLP over HTTP/protobuf.
//!
//! - [`context`]: `traceparent` parsing and formatting, without allocating.
//! - [`request`]: one request's trace; the gateway's hooks feed it and it builds the spans.
//! - [`export`]: the bounded queue and the background service that batches and sends spans,
//!   dropping (and counting) what the collector cannot take, so requests are never slowed.
//!
//! Sampling is decided once per request at its start: a request whose `traceparent` says
//! sampled (or not) follows its caller when `parent_based` is on; otherwise the trace id
//! decides against `sample_rate`, the same rule as the SDK's `TraceIdRatioBased`, so every
//! service sampling by ratio keeps or drops the same traces. Unsampled requests still carry a
//! `traceparent` upstream (flag 00), so the services behind the gateway follow its decision;
//! nothing else is recorded for them.

pub mod context;
pub mod export;
pub mod http_client;
pub mod request;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// `tracing:` as validated (see `crate::config::tracing`).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingPlan {
    pub sample_rate: f64,
    /// Trace ids whose low 64 bits, shifted right once, fall below this are sampled.
    sample_bound: u64,
    pub parent_based: bool,
    /// A chain step slower than this gets its own span.
    pub step_threshold: Duration,
    pub export: Arc<ExportSettings>,
}

/// Where and how spans are sent; the export service rebuilds its exporter when these change.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// The full `/v1/traces` URL.
    pub endpoint: String,
    pub headers: BTreeMap<String, String>,
    pub service_name: String,
    pub resource_attributes: BTreeMap<String, String>,
    pub batch_timeout: Duration,
    pub max_batch_size: usize,
    /// Read once, when the export service starts: the queue is the process's.
    pub queue_size: usize,
    pub export_timeout: Duration,
}

impl TracingPlan {
    pub fn new(
        sample_rate: f64,
        parent_based: bool,
        step_threshold: Duration,
        export: ExportSettings,
    ) -> TracingPlan {
        TracingPlan {
            sample_rate,
            sample_bound: ratio_bound(sample_rate),
            parent_based,
            step_threshold,
            export: Arc::new(export),
        }
    }

    /// Whether a trace without a parent decision is sampled.
    pub fn samples_trace(&self, trace_id: u128) -> bool {
        // The low 64 bits of a W3C trace id are the random part (level 2 ids), as the SDK's
        // TraceIdRatioBased reads them.
        ((trace_id as u64) >> 1) < self.sample_bound
    }
}

/// The SDK's ratio rule: `rate * 2^63`, with 1.0 sampling every trace.
fn ratio_bound(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else if rate <= 0.0 || rate.is_nan() {
        0
    } else {
        (rate * (1u64 << 63) as f64) as u64
    }
}

/// The `/v1/traces` URL for a configured endpoint: a bare `host:port` is plain HTTP, and a
/// URL without a path gets the OTLP/HTTP traces path, as the OTLP exporter spec says for the
/// generic endpoint.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    otlp_url(endpoint, "/v1/traces")
}

/// [`traces_url`] for any OTLP signal path (`/v1/metrics`).
pub fn otlp_url(endpoint: &str, signal_path: &str) -> Result<String, String> {
    let with_scheme = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|error| format!("not a URL ({error})"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("the scheme must be http or https (OTLP over HTTP)".to_string()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_string());
    }
    let path = uri.path();
    if path.is_empty() || path == "/" {
        Ok(format!(
            "{}{signal_path}",
            with_scheme.trim_end_matches('/')
        ))
    } else {
        Ok(with_scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: f64) -> TracingPlan {
        TracingPlan::new(
            rate,
            true,
            Duration::from_millis(1),
            ExportSettings {
                endpoint: String::new(),
                headers: BTreeMap::new(),
                service_name: "loom".into(),
                resource_attributes: BTreeMap::new(),
                batch_timeout: Duration::from_secs(1),
                max_batch_size: 512,
                queue_size: 2048,
                export_timeout: Duration::from_secs(10),
            },
        )
    }

    #[test]
    fn the_ratio_samples_its_share_of_random_trace_ids() {
        let rate = plan(0.1);
        let sampled = (0..100_000)
            .filter(|_| rate.samples_trace(fastrand::u128(..)))
            .count();
        assert!((9_000..11_000).contains(&sampled), "{sampled}");
        assert!(plan(1.0).samples_trace(u128::MAX));
        assert!(!plan(0.0).samples_trace(0));
    }

    #[test]
    fn endpoints_become_traces_urls() {
        assert_eq!(
            traces_url("localhost:4318").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://collector.example/").unwrap(),
            "https://collector.example/v1/traces"
        );
        assert_eq!(
            traces_url("http://127.0.0.1:9/custom/path").unwrap(),
            "http://127.0.0.1:9/custom/path"
        );
        assert!(traces_url("grpc://collector:4317").is_err());
        assert!(traces_url("http://").is_err());
    }
}
