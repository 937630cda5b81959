//! The admin API's write verbs: create, replace and delete routes, upstreams and plugins, and
//! add, change (weight, drain) and remove one endpoint of an upstream.
//!
//! A body is one list entry in the YAML's schema, as JSON. Every change is an edit of the
//! overlay made through the [`Reloader`], so it meets the same validation as `loom -t` and
//! the same snapshot swap as a reload, and is written to the overlay file before it serves.
//!
//! Optimistic concurrency, with the revisions `GET` hands out as `ETag`s:
//! - `PUT` and `DELETE` need `If-Match` with the resource's revision (or the whole config's,
//!   from `GET /config`): 428 without it, 412 when it is stale. Endpoint changes match the
//!   upstream's revision.
//! - `PUT` with `If-None-Match: *` instead creates the resource, 412 if it exists.
//! - `POST` only creates: an existing name gets 412 with `If-None-Match: *` and 409 without.
//!
//! The check runs under the reloader's lock, after the previous change has been applied, so
//! of concurrent writers holding the same revision exactly one wins.

use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

use super::auth::Principal;
use super::canary::CanaryAction;
use super::redact::redacted;
use super::reply::Reply;
use crate::config::effective::revision_of;
use crate::config::yaml::{ConfigError, Mark, Node, child_key_path};
use crate::config::{EffectiveConfig, Overlay, ResourceKind};
use crate::control::Reloader;
use crate::control::reloader::{Applied, ChangeError};

/// What a write request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Create(ResourceKind),
    Replace(ResourceKind, String),
    Delete(ResourceKind, String),
    AddEndpoint(String),
    SetEndpoint(String, String),
    RemoveEndpoint(String, String),
    /// A route's canary split (see [`super::canary`]).
    Canary(String, CanaryAction),
}

impl Target {
    /// `segments` are the path's, percent-decoded.
    fn parse(method: &Method, segments: &[String]) -> Option<Target> {
        let kind = ResourceKind::from_section(segments.first()?)?;
        let rest: Vec<&str> = segments[1..].iter().map(String::as_str).collect();
        let upstream = kind == ResourceKind::Upstream;
        Some(match (method, rest.as_slice()) {
            (&Method::POST, []) => Target::Create(kind),
            (&Method::PUT, [id]) => Target::Replace(kind, id.to_string()),
            (&Method::DELETE, [id]) => Target::Delete(kind, id.to_string()),
            (&Method::POST, [name, "endpoints"]) if upstream => {
                Target::AddEndpoint(name.to_string())
            }
            (&Method::PUT, [name, "endpoints", address]) if upstream => {
                Target::SetEndpoint(name.to_string(), address.to_string())
            }
            (&Method::DELETE, [name, "endpoints", address]) if upstream => {
                Target::RemoveEndpoint(name.to_string(), address.to_string())
            }
            (method, [id, "canary", rest @ ..]) if kind == ResourceKind::Route => {
                Target::Canary(id.to_string(), CanaryAction::parse(method, rest)?)
            }
            _ => return None,
        })
    }

    /// The resource changed (an endpoint change changes its upstream).
    fn resource(&self) -> (ResourceKind, Option<&str>) {
        match self {
            Target::Create(kind) => (*kind, None),
            Target::Replace(kind, id) | Target::Delete(kind, id) => (*kind, Some(id)),
            Target::Canary(id, _) => (ResourceKind::Route, Some(id)),
            Target::AddEndpoint(name)
            | Target::SetEndpoint(name, _)
            | Target::RemoveEndpoint(name, _) => (ResourceKind::Upstream, Some(name)),
        }
    }

    fn takes_body(&self) -> bool {
        !matches!(self, Target::Delete(..) | Target::RemoveEndpoint(..))
    }
}

/// `If-Match` and `If-None-Match` as sent.
#[derive(Debug, Clone, Default)]
struct Preconditions {
    /// The entity tags of `If-Match` (`*` kept as is), `None` when the header is absent.
    if_match: Option<Vec<String>>,
    /// `If-None-Match: *`.
    if_none_match_any: bool,
}

impl Preconditions {
    fn from_headers(headers: &HeaderMap) -> Preconditions {
        let tags = |name: http::header::HeaderName| -> Option<Vec<String>> {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| {
                values
                    .iter()
                    .flat_map(|value| value.split(','))
                    .map(|tag| tag.trim().to_string())
                    .filter(|tag| !tag.is_empty())
                    .collect()
            })
        };
        Preconditions {
            if_match: tags(http::header::IF_MATCH),
            if_none_match_any: tags(http::header::IF_NONE_MATCH)
                .is_some_and(|tags| tags.iter().any(|tag| tag == "*")),
        }
    }

    /// Whether `If-Match` names the resource's current revision or the config's (strong
    /// comparison: a weak tag never matches), or is `*`.
    fn matches(&self, resource: &str, config: &str) -> bool {
        self.if_match.as_ref().is_some_and(|tags| {
            tags.iter().any(|tag| {
                if tag == "*" {
                    return true;
                }
                tag.strip_prefix('"')
                    .and_then(|tag| tag.strip_suffix('"'))
                    .is_some_and(|revision| revision == resource || revision == config)
            })
        })
    }
}

/// A change refused before validation, with its status.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    fn reply(self) -> Reply {
        Reply::error(self.status, self.code, self.message)
    }
}

/// What an edit did, for the answer and the audit log.
struct EditOutcome {
    kind: ResourceKind,
    id: String,
    created: bool,
    deleted: bool,
    old_revision: Option<String>,
    old_config_revision: String,
    /// Where the request's body landed in the overlay (`routes.api`,
    /// `upstreams.api.endpoints[2]`): errors below it are reported relative to the body.
    body_path: Option<String>,
}

/// A write request, as the admin app hands it over.
pub struct WriteRequest<'a> {
    pub method: &'a Method,
    /// The request path, for the audit log.
    pub path: &'a str,
    /// The path's segments, percent-decoded.
    pub segments: Vec<String>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub principal: &'a Principal,
}

/// Whether `method` on `segments` is one of the write verbs handled here.
pub fn is_write(method: &Method, segments: &[String]) -> bool {
    Target::parse(method, segments).is_some()
}

/// Whether the write may come without a body (and so without a JSON content type).
pub fn body_optional(method: &Method, segments: &[String]) -> bool {
    matches!(
        Target::parse(method, segments),
        Some(Target::Canary(_, action)) if action.body_optional()
    )
}

/// Answers a write request (see [`is_write`]).
pub async fn handle(reloader: &Reloader, request: WriteRequest<'_>) -> Reply {
    let reply = match prepare(&request) {
        Ok((target, preconditions, body)) => {
            apply(reloader, &request, target, preconditions, body).await
        }
        Err(refusal) => refusal.reply(),
    };
    if !reply.status.is_success() {
        audit_refusal(
            request.principal,
            request.method,
            request.path,
            reply.status,
        );
    }
    reply
}

/// The audit log's line for a change that was asked for and not made.
/// The audit line of `POST .../reset` (breaker closed, ejection lifted by hand).
pub fn audit_reset(principal: &Principal, path: &str, status: StatusCode) {
    log::info!(
        target: "loom::audit",
        "{} ({}) POST {path}: {}",
        principal.name,
        principal.role.as_str(),
        if status == StatusCode::OK {
            "applied; endpoint reset (breaker closed, ejection lifted)".to_string()
        } else {
            format!("refused with {status}")
        }
    );
}

pub fn audit_refusal(principal: &Principal, method: &Method, path: &str, status: StatusCode) {
    log::info!(
        target: "loom::audit",
        "{} ({}) {method} {path}: refused with {status}",
        principal.name,
        principal.role.as_str(),
    );
}

/// The request's target, preconditions and body, or why it is refused before the config is
/// even read.
fn prepare(request: &WriteRequest) -> Result<(Target, Preconditions, Option<Value>), Refusal> {
    let target = Target::parse(request.method, &request.segments).ok_or_else(|| {
        Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "not a write verb",
        )
    })?;
    let preconditions = Preconditions::from_headers(request.headers);
    let needs_if_match = match &target {
        Target::Create(_) | Target::Canary(..) => false,
        Target::Replace(..) => !preconditions.if_none_match_any,
        _ => true,
    };
    if needs_if_match && preconditions.if_match.is_none() {
        return Err(Refusal::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "send If-Match with the revision (ETag) from GET; to create with PUT, send \
             If-None-Match: *",
        ));
    }
    let optional_body = matches!(&target, Target::Canary(_, action) if action.body_optional());
    let body = if optional_body && request.body.iter().all(u8::is_ascii_whitespace) {
        Some(Value::Null)
    } else if target.takes_body() {
        let value: Value = serde_json::from_slice(request.body).map_err(|error| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not JSON: {error}"),
            )
        })?;
        Some(value)
    } else {
        None
    };
    Ok((target, preconditions, body))
}

async fn apply(
    reloader: &Reloader,
    request: &WriteRequest<'_>,
    target: Target,
    preconditions: Preconditions,
    body: Option<Value>,
) -> Reply {
    let reason = format!(
        "admin {} {} by {}",
        request.method, request.path, request.principal.name
    );
    let result = reloader
        .change(&reason, move |before: &EffectiveConfig| {
            edit(before, &target, &preconditions, body)
        })
        .await;
    match result {
        Ok(applied) => success(request, applied),
        Err(ChangeError::Refused(refusal)) => refusal.reply(),
        Err(ChangeError::Invalid { errors, outcome }) => invalid(
            &errors,
            outcome.and_then(|outcome| outcome.body_path).as_deref(),
            reloader,
        ),
        Err(ChangeError::Failed(message)) => {
            log::error!("admin change failed: {message}");
            Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "change_failed", message)
        }
    }
}

/// Checks the preconditions against `before` and returns the overlay with the change.
fn edit(
    before: &EffectiveConfig,
    target: &Target,
    preconditions: &Preconditions,
    body: Option<Value>,
) -> Result<(Overlay, EditOutcome), Refusal> {
    let (kind, path_id) = target.resource();
    let body = body.unwrap_or(Value::Null);
    let id = match path_id {
        Some(id) => id.to_string(),
        None => match kind.id_of_json(&body) {
            Some(id) => id.to_string(),
            None => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!(
                        "the body must be a {} entry (a JSON object) with its {}",
                        kind.singular(),
                        kind.id_key()
                    ),
                ));
            }
        },
    };
    let current = before.resource(kind, &id);
    let old_revision = current.map(revision_of);
    let mut outcome = EditOutcome {
        kind,
        id: id.clone(),
        created: false,
        deleted: false,
        old_revision: old_revision.clone(),
        old_config_revision: before.revision.clone(),
        body_path: None,
    };
    let exists = current.is_some();
    let creating = matches!(target, Target::Create(_))
        || matches!(target, Target::Replace(..)) && preconditions.if_none_match_any;
    if creating {
        if exists {
            let (status, code) = if preconditions.if_none_match_any {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            } else {
                (StatusCode::CONFLICT, "conflict")
            };
            return Err(Refusal::new(
                status,
                code,
                format!("{} \"{id}\" exists already", kind.singular()),
            ));
        }
    } else {
        let Some(revision) = &old_revision else {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no {} \"{id}\"{}",
                    kind.singular(),
                    if matches!(target, Target::Replace(..)) {
                        " (send If-None-Match: * to create it)"
                    } else {
                        ""
                    }
                ),
            ));
        };
        let unconditional =
            matches!(target, Target::Canary(..)) && preconditions.if_match.is_none();
        if !unconditional && !preconditions.matches(revision, &before.revision) {
            return Err(Refusal::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!(
                    "{} \"{id}\" is at revision \"{revision}\" (config \"{}\"): the If-Match \
                     revision is stale; GET it again",
                    kind.singular(),
                    before.revision
                ),
            ));
        }
    }
    let mut overlay = before.overlay.clone();
    let entry_path = child_key_path(kind.section(), &id);
    match target {
        Target::Create(_) | Target::Replace(..) => {
            let entry = named_entry(kind, &id, body)?;
            overlay.put(kind, &id, node(&entry));
            outcome.created = !exists;
            outcome.body_path = Some(entry_path);
        }
        Target::Delete(..) => {
            overlay.delete(kind, &id, before.in_yaml(kind, &id));
            outcome.deleted = true;
        }
        Target::AddEndpoint(_) | Target::SetEndpoint(..) | Target::RemoveEndpoint(..) => {
            let mut upstream = current.cloned().unwrap_or(Value::Null);
            let index = change_endpoint(&mut upstream, target, body)?;
            overlay.put(kind, &id, node(&upstream));
            outcome.body_path = index.map(|index| format!("{entry_path}.endpoints[{index}]"));
        }
        Target::Canary(_, action) => {
            let mut route = current.cloned().unwrap_or(Value::Null);
            super::canary::edit_route(&mut route, *action, body)
                .map_err(|refusal| Refusal::new(refusal.status, refusal.code, refusal.message))?;
            overlay.put(kind, &id, node(&route));
            outcome.body_path = Some(format!("{entry_path}.canary"));
        }
    }
    Ok((overlay, outcome))
}

/// The body as the entry named `id`: its name filled in when left out, refused when it
/// names another.
fn named_entry(kind: ResourceKind, id: &str, body: Value) -> Result<Value, Refusal> {
    let Value::Object(mut entry) = body else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!(
                "the body must be a {} entry (a JSON object)",
                kind.singular()
            ),
        ));
    };
    match entry.get(kind.id_key()) {
        None => {
            entry.insert(kind.id_key().to_string(), Value::String(id.to_string()));
        }
        Some(Value::String(named)) if named == id => {}
        Some(other) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!(
                    "{}: {other} does not match \"{id}\" in the path",
                    kind.id_key()
                ),
            ));
        }
    }
    Ok(Value::Object(entry))
}

/// Applies an endpoint change to `upstream`'s JSON. Returns the index of the endpoint the
/// body became (none for a removal).
fn change_endpoint(
    upstream: &mut Value,
    target: &Target,
    body: Value,
) -> Result<Option<usize>, Refusal> {
    let name = upstream
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(endpoints) = upstream.get_mut("endpoints").and_then(Value::as_array_mut) else {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("upstream \"{name}\" has no endpoints list"),
        ));
    };
    let position = |endpoints: &[Value], address: &str| {
        endpoints
            .iter()
            .position(|endpoint| endpoint_address(endpoint) == Some(address))
    };
    let missing = |address: &str| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("upstream \"{name}\" has no endpoint \"{address}\""),
        )
    };
    match target {
        Target::AddEndpoint(_) => {
            let Some(address) = endpoint_address(&body).map(str::to_string) else {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "the body must be an endpoint: \"host:port\" or {\"address\", \"weight\", \
                     \"drain\"}",
                ));
            };
            if position(endpoints, &address).is_some() {
                return Err(Refusal::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("upstream \"{name}\" has endpoint \"{address}\" already"),
                ));
            }
            endpoints.push(body);
            Ok(Some(endpoints.len() - 1))
        }
        Target::SetEndpoint(_, address) => {
            let index = position(endpoints, address).ok_or_else(|| missing(address))?;
            let endpoint = match body {
                Value::Object(mut fields) => {
                    match fields.get("address") {
                        None => {
                            fields.insert("address".to_string(), Value::String(address.clone()));
                        }
                        Some(Value::String(named)) if named == address => {}
                        Some(other) => {
                            return Err(Refusal::new(
                                StatusCode::BAD_REQUEST,
                                "invalid_body",
                                format!(
                                    "address: {other} does not match \"{address}\" in the path"
                                ),
                            ));
                        }
                    }
                    Value::Object(fields)
                }
                _ => {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_body",
                        "the body must be an endpoint object: {\"weight\", \"drain\"}",
                    ));
                }
            };
            endpoints[index] = endpoint;
            Ok(Some(index))
        }
        Target::RemoveEndpoint(_, address) => {
            let index = position(endpoints, address).ok_or_else(|| missing(address))?;
            endpoints.remove(index);
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// `"host:port"` or `{"address": "host:port", ...}`.
fn endpoint_address(endpoint: &Value) -> Option<&str> {
    match endpoint {
        Value::String(address) => Some(address),
        Value::Object(fields) => fields.get("address").and_then(Value::as_str),
        _ => None,
    }
}

pub(super) fn node(value: &Value) -> Node {
    Node::from_json(value, Mark { line: 1, column: 1 })
}

fn success(request: &WriteRequest, applied: Applied<EditOutcome>) -> Reply {
    let outcome = applied.outcome;
    let effective = &applied.effective;
    let kind = outcome.kind;
    let new_revision = effective.resource_revision(kind, &outcome.id);
    log::info!(
        target: "loom::audit",
        "{} ({}) {} {}: applied; {} \"{}\" revision {} -> {}, config revision {} -> {}, generation {}",
        request.principal.name,
        request.principal.role.as_str(),
        request.method,
        request.path,
        kind.singular(),
        outcome.id,
        outcome.old_revision.as_deref().unwrap_or("none"),
        new_revision.as_deref().unwrap_or("none"),
        outcome.old_config_revision,
        effective.revision,
        applied.generation,
    );
    let mut document = json!({
        "kind": kind.singular(),
        "id": outcome.id,
        "revision": new_revision,
        "previous_revision": outcome.old_revision,
        "config_revision": effective.revision,
        "generation": applied.generation,
    });
    if outcome.deleted {
        document["deleted"] = Value::Bool(true);
    } else if let Some(entry) = effective.resource(kind, &outcome.id) {
        document["config"] = redacted(entry);
    }
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut reply = Reply::json(status, document);
    if let Some(revision) = &new_revision {
        reply = reply.with_etag(revision);
    }
    if outcome.created {
        let location = format!(
            "/{}/{}",
            kind.section(),
            percent_encoding::utf8_percent_encode(&outcome.id, PATH_SEGMENT)
        );
        reply = reply.with_header(http::header::LOCATION, &location);
    }
    reply
}

/// Characters escaped in a path segment.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b':');

/// 400 with every error: those in the request's body by their path within it, the others
/// (elsewhere in the YAML or the overlay) by file, position and path.
fn invalid(errors: &[ConfigError], body_path: Option<&str>, reloader: &Reloader) -> Reply {
    let overlay_path = crate::config::overlay::overlay_path(reloader.config_path());
    let listed: Vec<Value> = errors
        .iter()
        .map(|error| {
            let in_body = body_path
                .filter(|_| error.file == overlay_path)
                .and_then(|prefix| crate::config::overlay::path_within(&error.key_path, prefix));
            match in_body {
                Some(rest) => json!({
                    "in": "body",
                    "path": rest.strip_prefix('.').unwrap_or(rest),
                    "message": error.message,
                }),
                None => json!({
                    "in": "config",
                    "file": error.file.display().to_string(),
                    "line": error.mark.map(|mark| mark.line),
                    "column": error.mark.map(|mark| mark.column),
                    "path": error.key_path,
                    "message": error.message,
                }),
            }
        })
        .collect();
    Reply::json(
        StatusCode::BAD_REQUEST,
        json!({"error": {
            "status": 400,
            "code": "invalid_config",
            "message": format!(
                "the change was refused, nothing changed: {} error(s) in the config it would make",
                errors.len()
            ),
            "errors": listed,
        }}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(path: &str) -> Vec<String> {
        path.split('/')
            .filter(|segment| !segment.is_empty())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn write_targets_by_method_and_path() {
        let parse = |method: Method, path: &str| Target::parse(&method, &segments(path));
        assert_eq!(
            parse(Method::POST, "/routes"),
            Some(Target::Create(ResourceKind::Route))
        );
        assert_eq!(
            parse(Method::PUT, "/plugins/cors"),
            Some(Target::Replace(ResourceKind::Plugin, "cors".into()))
        );
        assert_eq!(
            parse(Method::DELETE, "/upstreams/api"),
            Some(Target::Delete(ResourceKind::Upstream, "api".into()))
        );
        assert_eq!(
            parse(Method::POST, "/upstreams/api/endpoints"),
            Some(Target::AddEndpoint("api".into()))
        );
        assert_eq!(
            parse(Method::PUT, "/upstreams/api/endpoints/127.0.0.1:80"),
            Some(Target::SetEndpoint("api".into(), "127.0.0.1:80".into()))
        );
        assert_eq!(parse(Method::POST, "/routes/api/endpoints"), None);
        assert_eq!(parse(Method::PATCH, "/routes/api"), None);
        assert_eq!(parse(Method::GET, "/routes/api"), None);
        assert_eq!(
            parse(Method::POST, "/upstreams/api/endpoints/x/reset"),
            None
        );
    }

    #[test]
    fn if_match_compares_strong_tags_with_either_revision() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::IF_MATCH, "\"old\", \"abc\"".parse().unwrap());
        let preconditions = Preconditions::from_headers(&headers);
        assert!(preconditions.matches("abc", "config"));
        assert!(!preconditions.matches("xyz", "config"));
        assert!(preconditions.matches("xyz", "old"));
        headers.insert(http::header::IF_MATCH, "W/\"abc\"".parse().unwrap());
        assert!(!Preconditions::from_headers(&headers).matches("abc", "config"));
        headers.insert(http::header::IF_MATCH, "*".parse().unwrap());
        assert!(Preconditions::from_headers(&headers).matches("abc", "config"));
        assert!(!Preconditions::default().matches("abc", "config"));
        headers.clear();
        headers.insert(http::header::IF_NONE_MATCH, "*".parse().unwrap());
        assert!(Preconditions::from_headers(&headers).if_none_match_any);
    }

    #[test]
    fn endpoint_changes_edit_the_upstreams_list() {
        let mut upstream =
            json!({"name": "api", "endpoints": ["a:1", {"address": "b:2", "weight": 3}]});
        let set = Target::SetEndpoint("api".into(), "b:2".into());
        assert_eq!(
            change_endpoint(&mut upstream, &set, json!({"weight": 3, "drain": true})).unwrap(),
            Some(1)
        );
        assert_eq!(
            upstream["endpoints"][1],
            json!({"address": "b:2", "weight": 3, "drain": true})
        );
        let add = Target::AddEndpoint("api".into());
        assert_eq!(
            change_endpoint(&mut upstream, &add, json!("c:3")).unwrap(),
            Some(2)
        );
        assert_eq!(
            change_endpoint(&mut upstream, &add, json!({"address": "a:1"}))
                .unwrap_err()
                .status,
            StatusCode::CONFLICT
        );
        let remove = Target::RemoveEndpoint("api".into(), "a:1".into());
        assert_eq!(
            change_endpoint(&mut upstream, &remove, Value::Null).unwrap(),
            None
        );
        assert_eq!(upstream["endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(
            change_endpoint(&mut upstream, &remove, Value::Null)
                .unwrap_err()
                .status,
            StatusCode::NOT_FOUND
        );
        let renamed = Target::SetEndpoint("api".into(), "c:3".into());
        assert_eq!(
            change_endpoint(&mut upstream, &renamed, json!({"address": "d:4"}))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
    }
}
