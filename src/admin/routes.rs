//! `GET /routes` and `GET /routes/{id}`: each route's match rules, upstream, timeouts and its
//! effective chain (global policies, built-in policies and Proxy-Wasm plugins, in the order a
//! request meets them). `GET /routes/{id}/canary` shows a canary split as it runs (effective
//! weights, the last analysis window, rollbacks and why), `GET /routes/{id}/shadow/diffs` what
//! comparing shadow answers found.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gateway::snapshot::{GatewayState, RouteRuntime};

/// Answers a request under `/routes`; `rest` is the path after that prefix.
pub fn handle(state: &GatewayState, method: &Method, rest: &str) -> (StatusCode, Value) {
    let snapshot = state.current();
    let segments: Vec<&str> = rest
        .split('/')
        .filter(|segment| !segment.is_empty())
        .collect();
    match (method, segments.as_slice()) {
        (&Method::GET, []) => (
            StatusCode::OK,
            json!({"routes": snapshot.routes.iter().map(describe).collect::<Vec<_>>()}),
        ),
        (&Method::GET, [id]) => match snapshot.routes.iter().find(|route| &*route.id == *id) {
            Some(route) => (StatusCode::OK, describe(route)),
            None => (
                StatusCode::NOT_FOUND,
                json!({"error": {"status": 404, "code": "not_found", "message": format!("no route with id \"{id}\"")}}),
            ),
        },
        (&Method::GET, [id, "canary"]) => match find(&snapshot, id) {
            Ok(route) => match &route.canary {
                Some(canary) => (StatusCode::OK, canary.describe()),
                None => not_found(format!("route \"{id}\" has no canary")),
            },
            Err(missing) => missing,
        },
        (&Method::GET, [id, "shadow", "diffs"]) => match find(&snapshot, id) {
            Ok(route) => match &route.shadow {
                Some(shadow) => (StatusCode::OK, shadow.record.describe(&route.id)),
                None => not_found(format!("route \"{id}\" has no shadow")),
            },
            Err(missing) => missing,
        },
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": {"status": 405, "code": "method_not_allowed", "message": "use GET, PUT or DELETE (POST on the collection)"}}),
        ),
    }
}

fn find<'a>(
    snapshot: &'a crate::gateway::snapshot::Snapshot,
    id: &str,
) -> Result<&'a RouteRuntime, (StatusCode, Value)> {
    snapshot
        .routes
        .iter()
        .find(|route| &*route.id == id)
        .ok_or_else(|| not_found(format!("no route with id \"{id}\"")))
}

fn not_found(message: String) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"error": {"status": 404, "code": "not_found", "message": message}}),
    )
}

fn describe(route: &RouteRuntime) -> Value {
    let config = &route.config;
    let millis = |duration: std::time::Duration| duration.as_millis() as u64;
    json!({
        "id": route.id.to_string(),
        "host": config.host.clone().map(|host| host.into_vec()).unwrap_or_default(),
        "path": config.path,
        "methods": config.methods,
        "headers": config.headers,
        "query_params": config.query_params,
        "client_certificate": config.client_certificate.as_ref().map(|condition| json!({
            "presented": condition.presented,
            "subjects": condition.subjects,
        })),
        "priority": config.priority,
        "upstream": route.upstream.name.to_string(),
        "strip_prefix": route.strip_prefix,
        "preserve_host": route.preserve_host,
        "timeouts_ms": route.targets.first().map(|target| json!({
            "connect": millis(target.timeouts.connect),
            "read": millis(target.timeouts.read),
            "write": millis(target.timeouts.write),
            "total": target.timeouts.total.map(millis),
        })),
        "canary": route.canary.as_ref().map(|canary| canary.describe()),
        "shadow": route.shadow.as_ref().map(|shadow| json!({
            "upstream": shadow.upstream_name(),
            "compare": shadow.compare.is_some(),
        })),
        "disable": config.disable,
        "chain": route.chain.describe(),
        "endpoints": super::upstreams::endpoints(&route.upstream),
        "metadata": config.metadata,
    })
}
