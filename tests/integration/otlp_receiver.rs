//! A real OTLP/HTTP trace receiver for the tests: a hyper server on 127.0.0.1 that decodes
//! each `POST /v1/traces` body as an `ExportTraceServiceRequest` with the protocol's own
//! types and keeps the spans, as a collector would receive them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// One received span with the resource it came under.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub span: Span,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn trace_id_hex(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_id_hex(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// A string, integer or boolean attribute, as text.
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|attribute| attribute.key == key)
            .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
            .map(|value| match value {
                Value::StringValue(text) => text.clone(),
                Value::IntValue(number) => number.to_string(),
                Value::BoolValue(flag) => flag.to_string(),
                other => format!("{other:?}"),
            })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Each metrics push, as the list of metrics it carried.
    metric_pushes: Mutex<Vec<Vec<Metric>>>,
    /// Headers of the last export, to check the configured collector headers.
    last_headers: Mutex<Option<http::HeaderMap>>,
    /// The status the receiver answers with (200 unless a test makes it fail).
    status: AtomicU16,
    notify: tokio::sync::Notify,
}

pub struct OtlpReceiver {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    _task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        shared.status.store(200, Ordering::Relaxed);
        let task_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = Arc::clone(&task_shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        async move { receive(shared, request).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        OtlpReceiver {
            address,
            shared,
            _task: task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn answer_with(&self, status: u16) {
        self.shared.status.store(status, Ordering::Relaxed);
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    pub fn metric_pushes(&self) -> Vec<Vec<Metric>> {
        self.shared.metric_pushes.lock().unwrap().clone()
    }

    /// Waits for a metrics push for which `done` holds.
    pub async fn wait_for_push(&self, what: &str, done: impl Fn(&[Metric]) -> bool) -> Vec<Metric> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.shared.notify.notified();
            if let Some(push) = self
                .metric_pushes()
                .into_iter()
                .rev()
                .find(|push| done(push))
            {
                return push;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no metrics push with {what} within 20 s");
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    pub fn last_headers(&self) -> Option<http::HeaderMap> {
        self.shared.last_headers.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the received spans; panics after 20 s with what came.
    pub async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.shared.notify.notified();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {what} within 20 s; received {} span(s): {spans:#?}",
                    spans.len()
                );
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

async fn receive(
    shared: Arc<Shared>,
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    let metrics_push = request.uri().path() == "/v1/metrics";
    let path_ok = request.method() == http::Method::POST
        && (request.uri().path() == "/v1/traces" || metrics_push);
    let content_type_ok = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value == "application/x-protobuf");
    let headers = request.headers().clone();
    let body = request.into_body().collect().await?.to_bytes();
    if !path_ok || !content_type_ok {
        return Ok(answer(404));
    }
    let status = shared.status.load(Ordering::Relaxed);
    if status != 200 {
        return Ok(answer(status));
    }
    *shared.last_headers.lock().unwrap() = Some(headers);
    if metrics_push {
        let Ok(export) = ExportMetricsServiceRequest::decode(body) else {
            return Ok(answer(400));
        };
        let metrics = export
            .resource_metrics
            .into_iter()
            .flat_map(|resource| resource.scope_metrics)
            .flat_map(|scope| scope.metrics)
            .collect();
        shared.metric_pushes.lock().unwrap().push(metrics);
        shared.notify.notify_waiters();
        return Ok(answer(200));
    }
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return Ok(answer(400));
    };
    let mut received = Vec::new();
    for resource_spans in export.resource_spans {
        let resource: Vec<(String, String)> = resource_spans
            .resource
            .iter()
            .flat_map(|resource| resource.attributes.iter())
            .filter_map(
                |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(text) => Some((attribute.key.clone(), text.clone())),
                    _ => None,
                },
            )
            .collect();
        let service_name = resource
            .iter()
            .find(|(key, _)| key == "service.name")
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.push(ReceivedSpan {
                    span,
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                });
            }
        }
    }
    shared.spans.lock().unwrap().extend(received);
    shared.notify.notify_waiters();
    Ok(answer(200))
}

fn answer(status: u16) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/x-protobuf".parse().unwrap(),
    );
    response
}
