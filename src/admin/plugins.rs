//! `GET /plugins` and `GET /plugins/{name}`: what is loaded and how it behaves (module hash,
//! ABI, load time, calls, errors, fuel, memory, quarantine).

use std::sync::atomic::Ordering;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gateway::snapshot::GatewayState;
use crate::plugin::runtime::PluginRuntime;

/// Answers a request under `/plugins`; `rest` is the path after that prefix.
pub fn handle(state: &GatewayState, method: &Method, rest: &str) -> (StatusCode, Value) {
    let snapshot = state.current();
    let segments: Vec<&str> = rest
        .split('/')
        .filter(|segment| !segment.is_empty())
        .collect();
    match (method, segments.as_slice()) {
        (&Method::GET, []) => (
            StatusCode::OK,
            json!({"plugins": snapshot.plugins.iter().map(|plugin| describe(plugin)).collect::<Vec<_>>()}),
        ),
        (&Method::GET, [name]) => match snapshot.plugins.get(name) {
            Some(plugin) => (StatusCode::OK, describe(plugin)),
            None => (
                StatusCode::NOT_FOUND,
                json!({"error": {"status": 404, "code": "not_found", "message": format!("no plugin named \"{name}\"")}}),
            ),
        },
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": {"status": 405, "code": "method_not_allowed", "message": "use GET, PUT or DELETE (POST on the collection)"}}),
        ),
    }
}

fn describe(plugin: &PluginRuntime) -> Value {
    let loaded_at = plugin
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    json!({
        "name": plugin.name(),
        "path": plugin.plan.wasm_path.display().to_string(),
        "root_id": plugin.plan.root_id,
        "vm_id": plugin.plan.vm_id,
        "module_sha256": plugin.module_sha256(),
        "abi_version": plugin.abi.label(),
        "loaded_at_unix": loaded_at,
        "compiled_from_cache": plugin.module_from_cache(),
        "compile_seconds": plugin.compile_time().as_secs_f64(),
        "start_seconds": plugin.start_time.as_secs_f64(),
        "on_error": match plugin.plan.on_error {
            crate::config::schema::PluginFailureMode::FailClosed => "fail_closed",
            crate::config::schema::PluginFailureMode::FailOpen => "fail_open",
        },
        "instances": plugin.instance_count(),
        "calls": plugin.stats.calls.load(Ordering::Relaxed),
        "errors": plugin.stats.errors.load(Ordering::Relaxed),
        "instances_replaced": plugin.stats.instances_replaced.load(Ordering::Relaxed),
        "fuel_used": plugin.stats.fuel_used.load(Ordering::Relaxed),
        "max_fuel_per_callback": plugin.plan.max_fuel,
        "timeout_ms_per_callback": plugin.plan.timeout.map(|timeout| timeout.as_millis() as u64),
        "memory_pages": plugin.memory_pages(),
        "memory_limit_pages_per_instance": plugin.plan.memory_limit_pages,
        "quarantined_for_ms": plugin.quarantined_for().map(|left| left.as_millis() as u64),
    })
}
