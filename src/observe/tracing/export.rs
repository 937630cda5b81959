//! Span export off the request path: requests put finished spans on a bounded queue
//! ([`enqueue`], never waiting); a Pingora background service takes them off in batches and
//! sends each batch to the collector with the OTLP/HTTP exporter.
//!
//! Nothing a collector does can slow a request: when the queue is full a span is dropped and
//! counted (`loom_trace_spans_dropped_total{reason="queue_full"}`), and a batch the collector
//! refuses or does not answer in `export_timeout` is dropped and counted
//! (`reason="export_failed"`). On shutdown or upgrade the service stops waiting for full
//! batches and sends whatever arrives until Pingora ends the process after its grace period.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::ExportSettings;
use super::http_client::CollectorClient;
use crate::gateway::snapshot::GatewayState;
use crate::observe::metrics;

/// The queue of the running process, set once by [`ExportService::new`].
static QUEUE: OnceLock<mpsc::Sender<SpanData>> = OnceLock::new();

/// How often a failing collector is logged.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Queues a finished span; drops and counts it when the queue is full.
pub fn enqueue(span: SpanData) {
    let queued = QUEUE
        .get()
        .is_some_and(|sender| sender.try_send(span).is_ok());
    if !queued {
        // Resolved once: this runs on request threads exactly when the collector is down.
        static QUEUE_FULL: std::sync::LazyLock<prometheus::IntCounter> =
            std::sync::LazyLock::new(|| {
                metrics::metrics()
                    .trace_spans_dropped_total
                    .with_label_values(&["queue_full"])
            });
        QUEUE_FULL.inc();
    }
}

/// The background service that batches and exports spans.
pub struct ExportService {
    state: Arc<GatewayState>,
    /// Taken by the one running loop.
    receiver: Mutex<Option<mpsc::Receiver<SpanData>>>,
}

impl ExportService {
    /// Creates the process's span queue with room for `queue_size` spans.
    pub fn new(state: Arc<GatewayState>, queue_size: usize) -> ExportService {
        let (sender, receiver) = mpsc::channel(queue_size.max(1));
        if QUEUE.set(sender).is_err() {
            log::warn!("tracing: the span queue already exists; a second exporter is idle");
        }
        ExportService {
            state,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    fn current_settings(&self) -> Option<Arc<ExportSettings>> {
        self.state
            .current()
            .tracing
            .as_ref()
            .map(|plan| Arc::clone(&plan.export))
    }
}

#[async_trait]
impl BackgroundService for ExportService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let receiver = self
            .receiver
            .lock()
            .ok()
            .and_then(|mut receiver| receiver.take());
        let Some(mut receiver) = receiver else {
            return;
        };
        let mut exporter = Exporter::default();
        let mut shutting_down = false;
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                biased;
                _ = shutdown.changed(), if !shutting_down => {
                    shutting_down = true;
                    continue;
                }
                received = receiver.recv() => match received {
                    Some(span) => batch.push(span),
                    None => return,
                },
            }
            let Some(settings) = self.current_settings() else {
                // Tracing was switched off by a reload: what is still queued has nowhere to go.
                while let Ok(span) = receiver.try_recv() {
                    batch.push(span);
                }
                metrics::count_trace_spans_dropped("disabled", batch.len() as u64);
                continue;
            };
            // Fill the batch until it is full or the batch timeout passes; when shutting
            // down, send at once what is there.
            let wait = if shutting_down {
                Duration::ZERO
            } else {
                settings.batch_timeout
            };
            let deadline = tokio::time::Instant::now() + wait;
            while batch.len() < settings.max_batch_size {
                let room = settings.max_batch_size - batch.len();
                tokio::select! {
                    biased;
                    // Shutdown starts the grace period: send what is there now.
                    _ = shutdown.changed(), if !shutting_down => {
                        shutting_down = true;
                        break;
                    }
                    received = tokio::time::timeout_at(
                        deadline,
                        receiver.recv_many(&mut batch, room),
                    ) => match received {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    },
                }
            }
            exporter.send(&settings, batch).await;
        }
    }
}

/// The OTLP exporter for the current settings, rebuilt when a reload changes them.
#[derive(Default)]
struct Exporter {
    current: Option<(Arc<ExportSettings>, opentelemetry_otlp::SpanExporter)>,
    last_failure_logged: Option<Instant>,
}

impl Exporter {
    async fn send(&mut self, settings: &Arc<ExportSettings>, batch: Vec<SpanData>) {
        let count = batch.len() as u64;
        if self
            .current
            .as_ref()
            .is_none_or(|(built_for, _)| **built_for != **settings)
        {
            self.current = match build(settings) {
                Ok(exporter) => Some((Arc::clone(settings), exporter)),
                Err(reason) => {
                    self.log_failure(settings, &reason, count);
                    None
                }
            };
        }
        let Some((_, exporter)) = self.current.as_ref() else {
            metrics::count_trace_spans_dropped("export_failed", count);
            return;
        };
        let result = tokio::time::timeout(settings.export_timeout, exporter.export(batch)).await;
        let failure = match result {
            Ok(Ok(())) => {
                metrics::count_trace_spans_exported(count);
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", settings.export_timeout),
        };
        metrics::count_trace_spans_dropped("export_failed", count);
        self.log_failure(settings, &failure, count);
    }

    fn log_failure(&mut self, settings: &ExportSettings, reason: &str, count: u64) {
        let due = self
            .last_failure_logged
            .is_none_or(|logged| logged.elapsed() >= FAILURE_LOG_INTERVAL);
        if due {
            self.last_failure_logged = Some(Instant::now());
            log::warn!(
                "tracing: export to {} failed, {count} span(s) dropped: {reason} \
                 (logged at most every {}s; see loom_trace_spans_dropped_total)",
                settings.endpoint,
                FAILURE_LOG_INTERVAL.as_secs()
            );
        }
    }
}

fn build(settings: &ExportSettings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let client = CollectorClient::new()?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.export_timeout)
        .with_headers(settings.headers.clone().into_iter().collect())
        .build()
        .map_err(|error| format!("exporter setup: {error}"))?;
    exporter.set_resource(&resource(settings));
    Ok(exporter)
}

/// `service.name` and the configured attributes over what the SDK detects (its own
/// `telemetry.sdk.*` and `OTEL_RESOURCE_ATTRIBUTES`).
fn resource(settings: &ExportSettings) -> Resource {
    Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attributes(
            settings
                .resource_attributes
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .with_service_name(settings.service_name.clone())
        .build()
}
