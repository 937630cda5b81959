//! `GET /routes` and `GET /routes/{id}`: each route's match rules, upstream, timeouts and its
//! effective chain (global policies, built-in policies and Proxy-Wasm plugins, in the order a
//! request meets them).

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
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": {"status": 405, "code": "method_not_allowed", "message": "use GET, PUT or DELETE (POST on the collection)"}}),
        ),
    }
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
        "priority": config.priority,
        "upstream": route.upstream.name.to_string(),
        "strip_prefix": route.strip_prefix,
        "preserve_host": route.preserve_host,
        "timeouts_ms": {
            "connect": millis(route.timeouts.connect),
            "read": millis(route.timeouts.read),
            "write": millis(route.timeouts.write),
            "total": route.timeouts.total.map(millis),
        },
        "disable": config.disable,
        "chain": route.chain.describe(),
        "endpoints": super::upstreams::endpoints(&route.upstream),
        "metadata": config.metadata,
    })
}
