//! `GET /config` (the effective config: the YAML with the admin API's overlay applied),
//! `GET /config/diff` (what the overlay changes), and the revision and config that `GET` of a
//! route, upstream or plugin carries. Secrets are redacted everywhere ([`super::redact`]).

use http::StatusCode;
use serde_json::{Value, json};

use super::redact::redacted;
use super::reply::Reply;
use crate::config::{EffectiveConfig, ResourceKind};

/// `GET /config`: the whole config, its revision as `ETag`.
pub fn config(effective: &EffectiveConfig) -> Reply {
    Reply::json(StatusCode::OK, redacted(&effective.document)).with_etag(&effective.revision)
}

/// `GET /config/diff`: each entry the overlay adds, replaces (old and new) or deletes.
pub fn diff(effective: &EffectiveConfig) -> Reply {
    let changes: Vec<Value> = effective
        .changes
        .iter()
        .map(|change| {
            let mut entry = json!({
                "kind": change.kind.singular(),
                "id": change.id,
                "change": change.label(),
            });
            if let Some(before) = &change.before {
                entry["old"] = redacted(before);
            }
            if let Some(after) = &change.after {
                entry["new"] = redacted(after);
            }
            entry
        })
        .collect();
    Reply::json(
        StatusCode::OK,
        json!({
            "overlay_file": effective.overlay_path.display().to_string(),
            "revision": effective.revision,
            "changes": changes,
        }),
    )
    .with_etag(&effective.revision)
}

/// Adds the resource's revision (`ETag` and `revision`) and its config as written
/// (`config`, redacted) to a `GET` of one route, upstream or plugin. An entry with no runtime
/// view (a built-in policy under `plugins:`) answers with its config alone.
pub fn annotate_resource(
    mut reply: Reply,
    effective: &EffectiveConfig,
    kind: ResourceKind,
    id: &str,
) -> Reply {
    let Some(entry) = effective.resource(kind, id) else {
        return reply;
    };
    if reply.status == StatusCode::NOT_FOUND {
        reply = Reply::json(StatusCode::OK, json!({ kind.id_key(): id }));
    }
    if reply.status != StatusCode::OK {
        return reply;
    }
    let revision = crate::config::effective::revision_of(entry);
    if let Some(object) = reply.object_mut() {
        object.insert("revision".to_string(), Value::String(revision.clone()));
        object.insert("config".to_string(), redacted(entry));
    }
    reply.with_etag(&revision)
}
