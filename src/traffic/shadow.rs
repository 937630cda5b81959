//! Shadow traffic: a share of a route's requests is sent again to another upstream, and its
//! answer compared with the primary's ([`super::shadow_compare`]).
//!
//! The client never waits for the shadow: the request (head as sent upstream, body up to
//! `max_body`) and, when comparing, the primary's answer are captured while the request
//! runs, and the copy is sent from the logging phase, after the client's answer went out, on
//! a task of its own. At most `max_in_flight` copies run at once per route; beyond that they
//! are dropped and counted. Shadow failures are counted, never propagated.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use tokio::sync::Semaphore;

use super::metrics::traffic_metrics;
use super::shadow_compare::{Answer, compare};
use crate::config::traffic::{ComparePlan, ShadowPlan};
use crate::upstream::UpstreamPool;
use crate::upstream::endpoint::Outcome;

type ShadowClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One pooled client for every shadow copy: connections to shadow upstreams are reused.
static CLIENT: LazyLock<Option<ShadowClient>> =
    LazyLock::new(|| match crate::outbound::connector() {
        Ok(connector) => Some(Client::builder(TokioExecutor::new()).build(connector)),
        Err(error) => {
            log::error!("shadow traffic disabled: {error}");
            None
        }
    });

/// A route's shadow settings, built with each snapshot; its [`ShadowRecord`] outlives
/// reloads.
pub struct Shadow {
    route: Arc<str>,
    pool: Arc<UpstreamPool>,
    per_million: u32,
    pub max_body: u64,
    header: http::HeaderName,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    pub compare: Option<Arc<ComparePlan>>,
    pub record: Arc<ShadowRecord>,
    outcomes: Arc<OutcomeCounters>,
}

/// `loom_shadow_requests_total{route, outcome}` handles.
struct OutcomeCounters {
    answered: IntCounter,
    failed: IntCounter,
    timeout: IntCounter,
    dropped: IntCounter,
    skipped_body: IntCounter,
    matched: IntCounter,
    mismatched: IntCounter,
}

impl OutcomeCounters {
    fn new(route: &str) -> OutcomeCounters {
        let metrics = traffic_metrics();
        let outcome = |name: &str| {
            metrics
                .shadow_requests_total
                .with_label_values(&[route, name])
        };
        let result = |name: &str| {
            metrics
                .shadow_comparisons_total
                .with_label_values(&[route, name])
        };
        OutcomeCounters {
            answered: outcome("answered"),
            failed: outcome("failed"),
            timeout: outcome("timeout"),
            dropped: outcome("dropped"),
            skipped_body: outcome("skipped_body"),
            matched: result("match"),
            mismatched: result("mismatch"),
        }
    }
}

/// What a route's comparisons found, kept across reloads.
#[derive(Default)]
pub struct ShadowRecord {
    matches: AtomicU64,
    mismatches: AtomicU64,
    diffs: Mutex<VecDeque<serde_json::Value>>,
}

impl ShadowRecord {
    /// The counts and the last mismatches, newest first, for the admin API.
    pub fn describe(&self, route: &str) -> serde_json::Value {
        let diffs: Vec<serde_json::Value> = self
            .diffs
            .lock()
            .map(|diffs| diffs.iter().rev().cloned().collect())
            .unwrap_or_default();
        serde_json::json!({
            "route": route,
            "matches": self.matches.load(Ordering::Relaxed),
            "mismatches": self.mismatches.load(Ordering::Relaxed),
            "diffs": diffs,
        })
    }
}

/// A request chosen for shadowing, captured while it runs.
#[derive(Default)]
pub struct ShadowCapture {
    /// The request as last sent upstream (headers already prepared); `None` until then, and
    /// for requests the chain answered itself, which are not mirrored.
    pub request: Option<Box<pingora::http::RequestHeader>>,
    pub body: Vec<Bytes>,
    body_length: u64,
    /// The body outgrew `max_body`: the request is not mirrored.
    pub body_too_large: bool,
    /// The primary upstream's answer, when comparing.
    pub status: u16,
    pub headers: http::HeaderMap,
    pub response_body: Vec<Bytes>,
    response_length: u64,
    response_truncated: bool,
}

impl ShadowCapture {
    /// Keeps a request body chunk; past `max_body` the request is marked and dropped.
    pub fn request_chunk(&mut self, chunk: &Bytes, max_body: u64) {
        if self.body_too_large {
            return;
        }
        self.body_length += chunk.len() as u64;
        if self.body_length > max_body {
            self.body_too_large = true;
            self.body = Vec::new();
        } else {
            self.body.push(chunk.clone());
        }
    }

    /// The primary's answer starts again (a retry): only the last attempt's is compared.
    pub fn response_started(&mut self, status: u16, headers: &http::HeaderMap) {
        self.status = status;
        self.headers = headers.clone();
        self.response_body.clear();
        self.response_length = 0;
        self.response_truncated = false;
    }

    pub fn response_chunk(&mut self, chunk: &Bytes, max_body: u64) {
        if self.response_truncated {
            return;
        }
        self.response_length += chunk.len() as u64;
        if self.response_length > max_body {
            self.response_truncated = true;
            self.response_body = Vec::new();
        } else {
            self.response_body.push(chunk.clone());
        }
    }
}

impl Shadow {
    /// `previous` is the same route's shadow in the snapshot being replaced, whose record
    /// carries over.
    pub fn new(
        route: &Arc<str>,
        plan: &ShadowPlan,
        pool: Arc<UpstreamPool>,
        previous: Option<&Shadow>,
    ) -> Shadow {
        Shadow {
            route: Arc::clone(route),
            pool,
            per_million: plan.per_million,
            max_body: plan.max_body,
            header: plan.header.clone(),
            timeout: plan.timeout,
            in_flight: Arc::new(Semaphore::new(plan.max_in_flight as usize)),
            compare: plan.compare.clone().map(Arc::new),
            record: previous.map_or_else(Default::default, |shadow| Arc::clone(&shadow.record)),
            outcomes: Arc::new(OutcomeCounters::new(route)),
        }
    }

    pub fn upstream_name(&self) -> &str {
        &self.pool.name
    }

    /// Whether this request is mirrored: the sampling, and a declared body within
    /// `max_body` (a longer streamed one is found out while it arrives).
    pub fn sample(&self, request: &pingora::http::RequestHeader) -> bool {
        if self.per_million == 0
            || (self.per_million < 1_000_000 && fastrand::u32(0..1_000_000) >= self.per_million)
        {
            return false;
        }
        let declared = request
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_body) {
            self.outcomes.skipped_body.inc();
            return false;
        }
        true
    }

    /// Sends the captured request to the shadow upstream, unless too many are in flight.
    /// Returns at once.
    pub fn dispatch(&self, capture: Box<ShadowCapture>) {
        if capture.body_too_large {
            self.outcomes.skipped_body.inc();
            return;
        }
        if capture.request.is_none() {
            return;
        }
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            self.outcomes.dropped.inc();
            return;
        };
        let job = ShadowJob {
            route: Arc::clone(&self.route),
            pool: Arc::clone(&self.pool),
            header: self.header.clone(),
            timeout: self.timeout,
            compare: self.compare.clone(),
            record: Arc::clone(&self.record),
            outcomes: Arc::clone(&self.outcomes),
        };
        tokio::spawn(async move {
            job.run(capture).await;
            drop(permit);
        });
    }
}

/// One mirrored request on its own task.
struct ShadowJob {
    route: Arc<str>,
    pool: Arc<UpstreamPool>,
    header: http::HeaderName,
    timeout: Duration,
    compare: Option<Arc<ComparePlan>>,
    record: Arc<ShadowRecord>,
    outcomes: Arc<OutcomeCounters>,
}

/// The shadow's answer, as far as it is kept.
struct ShadowAnswer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<Bytes>,
    truncated: bool,
}

impl ShadowJob {
    async fn run(self, capture: Box<ShadowCapture>) {
        let exchange = tokio::time::timeout(self.timeout, self.exchange(&capture)).await;
        let answer = match exchange {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => {
                log::debug!("shadow request of route {} failed: {reason}", self.route);
                self.outcomes.failed.inc();
                return;
            }
            Err(_) => {
                self.outcomes.timeout.inc();
                return;
            }
        };
        self.outcomes.answered.inc();
        let Some(plan) = &self.compare else {
            return;
        };
        let primary = Answer {
            status: capture.status,
            headers: &capture.headers,
            body: &capture.response_body,
            body_truncated: capture.response_truncated,
        };
        let shadow = Answer {
            status: answer.status,
            headers: &answer.headers,
            body: &answer.body,
            body_truncated: answer.truncated,
        };
        match compare(plan, &primary, &shadow) {
            None => {
                self.record.matches.fetch_add(1, Ordering::Relaxed);
                self.outcomes.matched.inc();
            }
            Some(mismatch) => {
                self.record.mismatches.fetch_add(1, Ordering::Relaxed);
                self.outcomes.mismatched.inc();
                let request = capture.request.as_deref();
                let entry = serde_json::json!({
                    "at_unix": SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |elapsed| elapsed.as_secs()),
                    "method": request.map(|request| request.method.as_str().to_string()),
                    "path": request.map(|request| request.uri.to_string()),
                    "request_id": request
                        .and_then(|request| request.headers.get("x-request-id"))
                        .and_then(|value| value.to_str().ok()),
                    "primary_status": capture.status,
                    "shadow_status": answer.status,
                    "differences": mismatch.differences,
                    "diff": mismatch.unified_diff,
                });
                if let Ok(mut diffs) = self.record.diffs.lock() {
                    if diffs.len() >= plan.keep_diffs {
                        diffs.pop_front();
                    }
                    if plan.keep_diffs > 0 {
                        diffs.push_back(entry);
                    }
                }
            }
        }
    }

    async fn exchange(&self, capture: &ShadowCapture) -> Result<ShadowAnswer, String> {
        let client = CLIENT.as_ref().ok_or("no HTTP client")?;
        let head = capture.request.as_deref().ok_or("no request")?;
        let selection = self
            .pool
            .select(b"", 0)
            .map_err(|error| format!("no endpoint available: {error:?}"))?;
        let mut lease = selection.lease;
        let endpoint = self
            .pool
            .endpoints()
            .get(lease.endpoint_index())
            .ok_or("endpoint vanished")?;
        let path = head.uri.path_and_query().map_or("/", |path| path.as_str());
        let uri = if self.pool.plan.config.tls.is_some() {
            format!("https://{}{path}", endpoint.address)
        } else {
            format!("http://{}{path}", endpoint.socket)
        };
        let mut builder = http::Request::builder()
            .method(head.method.clone())
            .uri(uri);
        if let Some(headers) = builder.headers_mut() {
            headers.reserve(head.headers.len() + 1);
            for (name, value) in &head.headers {
                headers.append(name.clone(), value.clone());
            }
            headers.insert(self.header.clone(), http::HeaderValue::from_static("true"));
        }
        let body: Bytes = if capture.body.len() == 1 {
            capture.body[0].clone()
        } else {
            capture
                .body
                .iter()
                .flat_map(|chunk| chunk.iter().copied())
                .collect::<Vec<u8>>()
                .into()
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|error| format!("request: {error}"))?;
        let response = match client.request(request).await {
            Ok(response) => response,
            Err(error) => {
                lease.record(Outcome::Failed(
                    crate::upstream::retry::RetryCondition::ConnectError,
                ));
                return Err(format!("request: {error}"));
            }
        };
        let status = response.status().as_u16();
        lease.record(Outcome::Answered(status));
        let (parts, mut body) = response.into_parts();
        let limit = self.compare.as_ref().map_or(0, |plan| plan.max_body);
        let mut answer = ShadowAnswer {
            status,
            headers: parts.headers,
            body: Vec::new(),
            truncated: false,
        };
        let mut length = 0u64;
        // Read to the end even when not comparing, so the connection can be reused.
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| format!("response body: {error}"))?;
            if let Ok(chunk) = frame.into_data() {
                length += chunk.len() as u64;
                if length > limit {
                    answer.truncated = true;
                    answer.body = Vec::new();
                } else {
                    answer.body.push(chunk);
                }
            }
        }
        Ok(answer)
    }
}
