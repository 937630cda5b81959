//! Each route's metric handles, resolved once and shared by every snapshot that has the
//! route, so a request counts itself without a label lookup and a reload neither resets
//! nor duplicates a route's series. When the last snapshot with a route is gone, its series
//! leave `/metrics` with it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use prometheus::{Histogram, IntCounter};

use super::metrics::metrics;
use super::series::StatusCounters;

/// The method labels, in [`method_index`] order; clients choose the method, so anything
/// outside the standard set is folded into "OTHER" to keep the number of series bounded.
const METHOD_LABELS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// The route id under which requests no route matched are counted.
pub const UNMATCHED: &str = "none";

pub struct RouteMetrics {
    id: Arc<str>,
    /// `loom_requests_total{method, route, status}`, by [`method_index`].
    requests: [StatusCounters; METHOD_LABELS.len()],
    /// `loom_request_duration_seconds{route}`.
    pub duration: Histogram,
    /// `loom_request_body_bytes_total{route}` and `loom_response_body_bytes_total{route}`.
    pub request_body_bytes: IntCounter,
    pub response_body_bytes: IntCounter,
}

/// The live handles by route id; a route's entry dies with the last snapshot holding it.
static LIVE: LazyLock<Mutex<HashMap<Arc<str>, Weak<RouteMetrics>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl RouteMetrics {
    /// The handles of route `id`, shared with the snapshots that already have it.
    pub fn for_route(id: &Arc<str>) -> Arc<RouteMetrics> {
        let Ok(mut live) = LIVE.lock() else {
            return Arc::new(RouteMetrics::build(id));
        };
        if let Some(existing) = live.get(id).and_then(Weak::upgrade) {
            return existing;
        }
        let built = Arc::new(RouteMetrics::build(id));
        live.insert(Arc::clone(id), Arc::downgrade(&built));
        built
    }

    /// The handles requests no route matched count under (route "none").
    pub fn unmatched() -> &'static RouteMetrics {
        static UNMATCHED_ROUTE: LazyLock<RouteMetrics> =
            LazyLock::new(|| RouteMetrics::build(&Arc::from(UNMATCHED)));
        &UNMATCHED_ROUTE
    }

    fn build(id: &Arc<str>) -> RouteMetrics {
        let metrics = metrics();
        RouteMetrics {
            id: Arc::clone(id),
            requests: std::array::from_fn(|index| {
                StatusCounters::new(&metrics.requests_total, &[METHOD_LABELS[index], id])
            }),
            duration: metrics.request_duration_seconds.with_label_values(&[&**id]),
            request_body_bytes: metrics.request_body_bytes_total.with_label_values(&[&**id]),
            response_body_bytes: metrics
                .response_body_bytes_total
                .with_label_values(&[&**id]),
        }
    }

    /// Counts one answered request.
    pub fn count_request(&self, method: &http::Method, status: u16) {
        self.requests[method_index(method)].increment(status);
    }
}

impl Drop for RouteMetrics {
    fn drop(&mut self) {
        let Ok(mut live) = LIVE.lock() else {
            return;
        };
        // A reload may have brought the route back in the meantime, with the same series.
        if live.get(&self.id).and_then(Weak::upgrade).is_some() {
            return;
        }
        live.remove(&self.id);
        let metrics = metrics();
        metrics.requests_total.remove_where(&[("route", &self.id)]);
        metrics
            .request_duration_seconds
            .remove_label_values(&[&*self.id]);
        metrics
            .request_body_bytes_total
            .remove_label_values(&[&*self.id]);
        metrics
            .response_body_bytes_total
            .remove_label_values(&[&*self.id]);
        metrics
            .auth_failures_total
            .remove_where(&[("route", &self.id)]);
        metrics
            .rate_limited_total
            .remove_where(&[("route", &self.id)]);
    }
}

fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::PATCH => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}
