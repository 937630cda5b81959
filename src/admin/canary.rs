//! Changing a route's canary split through the admin API, and writing an automatic rollback
//! to the config:
//! - `PUT /routes/{id}/canary` with `{"weights": {"api-v2": 25}}` sets target weights;
//! - `POST /routes/{id}/canary/promote` (optionally `{"upstream": "api-v2"}`, needed when
//!   there are several targets) makes a target the route's upstream and ends the canary;
//! - `POST /routes/{id}/canary/rollback` sets every target's weight to 0.
//!
//! Each is an edit of the route's entry in the overlay, so it is validated and applied as a
//! snapshot swap like any other admin change. `If-Match` is optional here (a weight change
//! states the whole wanted split, whatever the split was); when sent, it is checked.

use http::StatusCode;
use serde_json::Value;

use crate::config::{EffectiveConfig, Overlay, ResourceKind};
use crate::control::Reloader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryAction {
    SetWeights,
    Promote,
    Rollback,
}

impl CanaryAction {
    /// `rest` is the path after `/routes/{id}/canary`.
    pub fn parse(method: &http::Method, rest: &[&str]) -> Option<CanaryAction> {
        match (method, rest) {
            (&http::Method::PUT, []) => Some(CanaryAction::SetWeights),
            (&http::Method::POST, ["promote"]) => Some(CanaryAction::Promote),
            (&http::Method::POST, ["rollback"]) => Some(CanaryAction::Rollback),
            _ => None,
        }
    }

    /// Promote and rollback may come without a body.
    pub fn body_optional(self) -> bool {
        self != CanaryAction::SetWeights
    }
}

/// Why a canary change cannot be made, before validation.
pub struct CanaryRefusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> CanaryRefusal {
    CanaryRefusal {
        status,
        code,
        message: message.into(),
    }
}

/// Applies `action` with `body` to the route's config entry (JSON).
pub fn edit_route(
    route: &mut Value,
    action: CanaryAction,
    body: Value,
) -> Result<(), CanaryRefusal> {
    let id = route
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(targets) = route
        .get("canary")
        .and_then(|canary| canary.get("targets"))
        .and_then(Value::as_array)
    else {
        return Err(refuse(
            StatusCode::CONFLICT,
            "conflict",
            format!("route \"{id}\" has no canary (add a canary: section first)"),
        ));
    };
    let names: Vec<String> = targets
        .iter()
        .filter_map(|target| target.get("upstream").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    match action {
        CanaryAction::SetWeights => {
            let Some(weights) = body.get("weights").and_then(Value::as_object) else {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "the body must be {\"weights\": {\"<upstream>\": <percent>, ...}}",
                ));
            };
            for (name, weight) in weights {
                let Some(weight) = weight.as_u64() else {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_body",
                        format!("weights.{name}: a whole percentage"),
                    ));
                };
                let Some(position) = names.iter().position(|target| target == name) else {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_body",
                        format!(
                            "\"{name}\" is not a canary target of route \"{id}\" (targets: {}); \
                             the route's own upstream gets what the targets leave",
                            names.join(", ")
                        ),
                    ));
                };
                set_weight(route, position, weight);
            }
        }
        CanaryAction::Rollback => {
            for position in 0..names.len() {
                set_weight(route, position, 0);
            }
        }
        CanaryAction::Promote => {
            let named = body.get("upstream").and_then(Value::as_str);
            let winner = match (named, names.as_slice()) {
                (Some(name), _) if names.iter().any(|target| target == name) => name.to_string(),
                (Some(name), _) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_body",
                        format!("\"{name}\" is not a canary target of route \"{id}\""),
                    ));
                }
                (None, [only]) => only.clone(),
                (None, _) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_body",
                        format!(
                            "route \"{id}\" has several canary targets: name the one to \
                             promote with {{\"upstream\": ...}} ({})",
                            names.join(", ")
                        ),
                    ));
                }
            };
            if let Value::Object(fields) = route {
                fields.insert("upstream".to_string(), Value::String(winner));
                fields.remove("canary");
            }
        }
    }
    Ok(())
}

fn set_weight(route: &mut Value, position: usize, weight: u64) {
    if let Some(target) = route
        .get_mut("canary")
        .and_then(|canary| canary.get_mut("targets"))
        .and_then(|targets| targets.get_mut(position))
        .and_then(Value::as_object_mut)
    {
        target.insert("weight".to_string(), Value::from(weight));
    }
}

/// Writes an automatic rollback of `upstream` on route `route` (weight 0) to the overlay.
/// Already in effect through the canary's state; this makes it survive a restart and shows
/// it in `GET /config/diff`.
pub async fn persist_rollback(reloader: &Reloader, route: String, upstream: String) {
    let reason = format!("canary rollback of \"{upstream}\" on route \"{route}\"");
    let edit_route_id = route.clone();
    let result = reloader
        .change(&reason, move |before: &EffectiveConfig| {
            let mut entry = before
                .resource(ResourceKind::Route, &edit_route_id)
                .cloned()
                .ok_or_else(|| "the route is gone".to_string())?;
            let weights = serde_json::json!({ "weights": { upstream.as_str(): 0 } });
            edit_route(&mut entry, CanaryAction::SetWeights, weights)
                .map_err(|refusal| refusal.message)?;
            let mut overlay: Overlay = before.overlay.clone();
            overlay.put(
                ResourceKind::Route,
                &edit_route_id,
                super::changes::node(&entry),
            );
            Ok::<_, String>((overlay, ()))
        })
        .await;
    match result {
        Ok(applied) => log::info!(
            target: "loom::audit",
            "automatic {reason}: written to the overlay, generation {}",
            applied.generation
        ),
        Err(error) => log::error!(
            "automatic {reason} is in effect but could not be written to the config: {}",
            describe_change_error(&error)
        ),
    }
}

fn describe_change_error<T>(error: &crate::control::reloader::ChangeError<T, String>) -> String {
    use crate::control::reloader::ChangeError;
    match error {
        ChangeError::Refused(message) => message.clone(),
        ChangeError::Invalid { errors, .. } => errors
            .iter()
            .map(|error| error.to_string())
            .collect::<Vec<_>>()
            .join("; "),
        ChangeError::Failed(message) => message.clone(),
    }
}
