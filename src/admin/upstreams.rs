//! `GET /upstreams`, `GET /upstreams/{name}` and
//! `POST /upstreams/{name}/endpoints/{address}/reset`: endpoint health, draining, circuit
//! breaker state, ejections and requests in flight, and closing a breaker by hand. (Changing
//! an upstream's config is [`super::changes`].)

use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gateway::snapshot::GatewayState;
use crate::upstream::{Unselectable, UpstreamPool};

/// Whether the request closes an endpoint's breaker (`POST .../reset`): a change, which
/// needs the write role. `segments` are the decoded path segments, as [`handle`] reads them.
pub fn is_reset(method: &Method, segments: &[String]) -> bool {
    method == Method::POST
        && matches!(segments, [section, _, endpoints, _, reset]
            if section == "upstreams" && endpoints == "endpoints" && reset == "reset")
}

/// Answers a request under `/upstreams`; `segments` are the decoded path segments after it.
pub fn handle(state: &GatewayState, method: &Method, segments: &[String]) -> (StatusCode, Value) {
    let snapshot = state.current();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let find = |name: &str| snapshot.upstreams.iter().find(|pool| &*pool.name == name);
    match (method, segments.as_slice()) {
        (&Method::GET, []) => (
            StatusCode::OK,
            json!({"upstreams": snapshot.upstreams.iter().map(|pool| describe(pool)).collect::<Vec<_>>()}),
        ),
        (&Method::GET, [name]) => match find(name) {
            Some(pool) => (StatusCode::OK, describe(pool)),
            None => not_found(&format!("no upstream named \"{name}\"")),
        },
        (&Method::POST, [name, "endpoints", address, "reset"]) => match find(name) {
            Some(pool) if pool.reset_endpoint(address) => (StatusCode::OK, describe(pool)),
            Some(_) => not_found(&format!(
                "upstream \"{name}\" has no endpoint \"{address}\""
            )),
            None => not_found(&format!("no upstream named \"{name}\"")),
        },
        (_, [] | [_] | [_, "endpoints", _, "reset"]) => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": {"status": 405, "code": "method_not_allowed", "message": "use GET, PUT or DELETE (POST on /upstreams, .../endpoints and .../reset)"}}),
        ),
        _ => not_found("unknown admin endpoint"),
    }
}

fn not_found(message: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"error": {"status": 404, "code": "not_found", "message": message}}),
    )
}

fn describe(pool: &UpstreamPool) -> Value {
    let now = Instant::now();
    let endpoints: Vec<Value> = pool
        .endpoints()
        .iter()
        .enumerate()
        .map(|(index, endpoint)| {
            let state = pool.endpoint_state(index);
            let breaker = state
                .and_then(|state| state.breaker.as_ref())
                .map(|breaker| {
                    json!({
                        "state": breaker.state(now).as_str(),
                        "consecutive_failures": breaker.consecutive_failures(),
                    })
                });
            let outlier = pool.outlier();
            let selectable = pool.selectable(index, now);
            json!({
                "address": endpoint.address,
                "resolved": endpoint.socket.to_string(),
                "weight": endpoint.weight,
                "drain": pool.is_draining(index),
                "healthy": pool.is_healthy(index),
                "selectable": selectable.is_ok(),
                "unselectable_because": selectable.err().map(Unselectable::as_str),
                "in_flight": state.map_or(0, |state| state.in_flight.load(Ordering::Relaxed)),
                "circuit_breaker": breaker,
                "ejected": outlier.is_some_and(|outlier| outlier.is_ejected(index, now)),
                "ejected_for_ms": outlier
                    .and_then(|outlier| outlier.ejected_for(index, now))
                    .map(|remaining| remaining.as_millis() as u64),
                "ejections": outlier.map_or(0, |outlier| outlier.ejection_count(index)),
            })
        })
        .collect();
    json!({
        "name": &*pool.name,
        "load_balancer": pool.plan.config.load_balancer.as_str(),
        "health_check": pool.plan.health.is_some(),
        "max_concurrent_requests": pool.bulkhead.limit(),
        "bulkhead_waiting": pool.bulkhead.waiting(),
        "retry_budget": {
            "requests_in_flight": pool.budget.requests_in_flight(),
            "retries_in_flight": pool.budget.retries_in_flight(),
        },
        "endpoints": endpoints,
    })
}

/// The live state of each endpoint of `pool` (health, breaker, ejection, whether selection
/// could choose it now), as `GET /upstreams/{name}` lists it; for the routes and explain
/// answers.
pub(crate) fn endpoints(pool: &UpstreamPool) -> Value {
    let mut document = describe(pool);
    document["endpoints"].take()
}
