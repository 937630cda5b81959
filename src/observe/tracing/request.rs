//! One request's trace. The gateway's hooks call in at the request's start, at each upstream
//! attempt, around each chain step and at the end; the spans are built and queued at the end.
//!
//! An unsampled request only keeps its ids (no allocation, no clock read); a sampled one
//! keeps a [`Recording`] of what happened, turned into OTLP spans in [`RequestTrace::finish`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::TracingPlan;
use super::context::{self, TRACEPARENT_LENGTH};
use super::export;

/// The trace state of one request; `trace_id` 0 means tracing is off for it.
#[derive(Default)]
pub struct RequestTrace {
    pub trace_id: u128,
    /// The gateway's server span.
    pub span_id: u64,
    pub sampled: bool,
    /// No valid `traceparent` came in: this request starts the trace, so a `tracestate` the
    /// caller sent belongs to no trace and is not forwarded (W3C Trace Context).
    pub starts_trace: bool,
    recording: Option<Box<Recording>>,
}

/// What a sampled request records for its spans.
struct Recording {
    step_threshold: Duration,
    /// The caller's span, when the request came with a `traceparent`.
    remote_parent: Option<u64>,
    trace_state: TraceState,
    baggage: Option<String>,
    attempts: Vec<AttemptSpan>,
    steps: Vec<StepSpan>,
}

struct AttemptSpan {
    span_id: u64,
    started: Instant,
    ended: Option<Instant>,
    /// 0 for the first attempt.
    retry: u32,
    upstream: Arc<str>,
    endpoint: String,
    status: u16,
    error: Option<String>,
}

struct StepSpan {
    span_id: u64,
    name: String,
    /// `policy` or `plugin`.
    kind: &'static str,
    started: Instant,
    ended: Instant,
    outcome: &'static str,
    failed: bool,
}

/// What the server span says about the request, gathered by the gateway at its end.
pub struct ServerSummary<'a> {
    pub method: &'a str,
    pub route: &'a str,
    /// The route's path pattern (`http.route`).
    pub route_pattern: Option<&'a str>,
    pub status: u16,
    pub client: Option<std::net::IpAddr>,
    pub request_id: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub user_agent: Option<&'a str>,
    pub protocol: &'static str,
    pub started: Instant,
    pub error: Option<&'a str>,
}

impl RequestTrace {
    /// Decides sampling for a request with these headers.
    pub fn start(plan: &TracingPlan, headers: &http::HeaderMap) -> RequestTrace {
        let parent = headers
            .get("traceparent")
            .and_then(|value| context::parse_traceparent(value.as_bytes()));
        let trace_id = parent.map_or_else(random_trace_id, |parent| parent.trace_id);
        let sampled = match parent {
            Some(parent) if plan.parent_based => parent.sampled,
            _ => plan.samples_trace(trace_id),
        };
        let span_id = random_span_id();
        let recording = sampled.then(|| {
            Box::new(Recording {
                step_threshold: plan.step_threshold,
                remote_parent: parent.map(|parent| parent.parent_id),
                // Only a valid parent's state belongs to this trace.
                trace_state: parent
                    .and_then(|_| headers.get("tracestate"))
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<TraceState>().ok())
                    .unwrap_or_default(),
                baggage: headers
                    .get("baggage")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string),
                attempts: Vec::new(),
                steps: Vec::new(),
            })
        });
        RequestTrace {
            trace_id,
            span_id,
            sampled,
            starts_trace: parent.is_none(),
            recording,
        }
    }

    pub fn is_active(&self) -> bool {
        self.trace_id != 0
    }

    /// The trace id as hex, for the access log and plugins.
    pub fn trace_id_hex(&self) -> Option<[u8; 32]> {
        self.is_active()
            .then(|| context::trace_id_hex(self.trace_id))
    }

    /// A new upstream attempt began (sampled requests only record it).
    pub fn attempt_started(&mut self, retry: u32, upstream: &Arc<str>, endpoint: &str) {
        let Some(recording) = self.recording.as_mut() else {
            return;
        };
        recording.attempts.push(AttemptSpan {
            span_id: random_span_id(),
            started: Instant::now(),
            ended: None,
            retry,
            upstream: Arc::clone(upstream),
            endpoint: endpoint.to_string(),
            status: 0,
            error: None,
        });
    }

    /// The current attempt ended with `status` (0: no response) or `error`.
    pub fn attempt_finished(&mut self, status: u16, error: Option<&str>) {
        let Some(attempt) = self
            .recording
            .as_mut()
            .and_then(|recording| recording.attempts.last_mut())
            .filter(|attempt| attempt.ended.is_none())
        else {
            return;
        };
        attempt.ended = Some(Instant::now());
        attempt.status = status;
        attempt.error = error.map(str::to_string);
    }

    /// The `traceparent` for the upstream request: the attempt's span as parent when
    /// sampled, the server span's id otherwise.
    pub fn upstream_traceparent(&self) -> Option<[u8; TRACEPARENT_LENGTH]> {
        if !self.is_active() {
            return None;
        }
        let span_id = self
            .recording
            .as_ref()
            .and_then(|recording| recording.attempts.last())
            .filter(|attempt| attempt.ended.is_none())
            .map_or(self.span_id, |attempt| attempt.span_id);
        Some(context::format_traceparent(
            self.trace_id,
            span_id,
            self.sampled,
        ))
    }

    /// The start of a chain step, timed only on sampled requests.
    pub fn step_clock(&self) -> Option<Instant> {
        self.recording.as_ref().map(|_| Instant::now())
    }

    /// Records a step as a span when it was slow or failed.
    pub fn step_finished(
        &mut self,
        started: Option<Instant>,
        kind: &'static str,
        name: &str,
        outcome: &'static str,
        failed: bool,
    ) {
        let (Some(started), Some(recording)) = (started, self.recording.as_mut()) else {
            return;
        };
        let ended = Instant::now();
        if !failed && ended.duration_since(started) < recording.step_threshold {
            return;
        }
        recording.steps.push(StepSpan {
            span_id: random_span_id(),
            name: name.to_string(),
            kind,
            started,
            ended,
            outcome,
            failed,
        });
    }

    /// Builds the request's spans and queues them for export.
    pub fn finish(&mut self, summary: &ServerSummary<'_>) {
        let Some(recording) = self.recording.take() else {
            return;
        };
        // One clock pair converts every monotonic instant of this request to wall time.
        let now_instant = Instant::now();
        let now_system = SystemTime::now();
        let wall = |instant: Instant| {
            now_system
                .checked_sub(now_instant.saturating_duration_since(instant))
                .unwrap_or(now_system)
        };
        let trace_id = TraceId::from(self.trace_id);
        let context_of = |span_id: u64| {
            SpanContext::new(
                trace_id,
                SpanId::from(span_id),
                TraceFlags::SAMPLED,
                false,
                recording.trace_state.clone(),
            )
        };
        let scope = scope();
        let server_span_id = SpanId::from(self.span_id);

        let mut attributes = vec![
            KeyValue::new("http.request.method", summary.method.to_string()),
            KeyValue::new("http.response.status_code", i64::from(summary.status)),
            KeyValue::new("url.path", summary.path.to_string()),
            KeyValue::new("loom.route", summary.route.to_string()),
            KeyValue::new("loom.request_id", summary.request_id.to_string()),
            KeyValue::new("network.protocol.name", "http"),
            KeyValue::new("loom.protocol", summary.protocol),
        ];
        if let Some(pattern) = summary.route_pattern {
            attributes.push(KeyValue::new("http.route", pattern.to_string()));
        }
        if let Some(client) = summary.client {
            attributes.push(KeyValue::new("client.address", client.to_string()));
        }
        if let Some(host) = summary.host {
            attributes.push(KeyValue::new("server.address", host.to_string()));
        }
        if let Some(agent) = summary.user_agent {
            attributes.push(KeyValue::new("user_agent.original", agent.to_string()));
        }
        if let Some(baggage) = &recording.baggage {
            attributes.push(KeyValue::new("loom.baggage", baggage.clone()));
        }
        let server_status = if summary.status >= 500 || summary.status == 0 {
            Status::error(summary.error.unwrap_or("server error").to_string())
        } else {
            Status::Unset
        };
        let server_name = match summary.route_pattern {
            Some(pattern) => format!("{} {pattern}", summary.method),
            None => summary.method.to_string(),
        };
        let server = SpanData {
            span_context: context_of(self.span_id),
            parent_span_id: recording
                .remote_parent
                .map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: recording.remote_parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(server_name),
            start_time: wall(summary.started),
            end_time: now_system,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: server_status,
            instrumentation_scope: scope.clone(),
        };
        export::enqueue(server);

        for attempt in &recording.attempts {
            let mut attributes = vec![
                KeyValue::new("loom.upstream", attempt.upstream.to_string()),
                KeyValue::new("server.address", attempt.endpoint.clone()),
                KeyValue::new("loom.retry", i64::from(attempt.retry)),
                KeyValue::new("http.request.method", summary.method.to_string()),
            ];
            let outcome = if attempt.status != 0 {
                attributes.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(attempt.status),
                ));
                "answered"
            } else {
                "failed"
            };
            attributes.push(KeyValue::new("loom.outcome", outcome));
            if let Some(error) = &attempt.error {
                attributes.push(KeyValue::new("error.type", error.clone()));
            }
            let status = if attempt.status == 0 || attempt.status >= 500 {
                Status::error(
                    attempt
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("upstream answered {}", attempt.status)),
                )
            } else {
                Status::Unset
            };
            export::enqueue(SpanData {
                span_context: context_of(attempt.span_id),
                parent_span_id: server_span_id,
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: Cow::Owned(format!("{} upstream {}", summary.method, attempt.upstream)),
                start_time: wall(attempt.started),
                end_time: wall(attempt.ended.unwrap_or(now_instant)),
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status,
                instrumentation_scope: scope.clone(),
            });
        }

        for step in &recording.steps {
            export::enqueue(SpanData {
                span_context: context_of(step.span_id),
                parent_span_id: server_span_id,
                parent_span_is_remote: false,
                span_kind: SpanKind::Internal,
                name: Cow::Owned(format!("{} {}", step.kind, step.name)),
                start_time: wall(step.started),
                end_time: wall(step.ended),
                attributes: vec![
                    KeyValue::new("loom.step.kind", step.kind),
                    KeyValue::new("loom.step.name", step.name.clone()),
                    KeyValue::new("loom.step.outcome", step.outcome),
                ],
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: if step.failed {
                    Status::error(step.outcome)
                } else {
                    Status::Unset
                },
                instrumentation_scope: scope.clone(),
            });
        }
    }
}

fn scope() -> InstrumentationScope {
    static SCOPE: std::sync::LazyLock<InstrumentationScope> = std::sync::LazyLock::new(|| {
        InstrumentationScope::builder("loom")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build()
    });
    SCOPE.clone()
}

/// A random, non-zero trace id (W3C level 2: random throughout).
fn random_trace_id() -> u128 {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id;
        }
    }
}

fn random_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}
