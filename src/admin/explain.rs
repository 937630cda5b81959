//! `GET /explain?method=GET&host=…&path=/…`: which route a request would reach and why each
//! other route would not, with the chosen route's path parameters, upstream path, policy
//! chain, upstream and the live state of the endpoints it could be sent to.
//!
//! The request is described by query parameters: `path` (required; it may carry its own
//! `?query`), `method` (default `GET`, compared as sent, as the gateway does), `host`,
//! `header=Name:value` (repeatable), `query` (the request's query string, encoded once
//! more) and `certificate=name` (repeatable: the request comes with a verified client
//! certificate whose CN is the first name given and whose SANs are the others). The answer comes from the current snapshot's own router ([`Router::explain`]), so it
//! is what the gateway would do with that request now.
//!
//! [`Router::explain`]: crate::router::Router::explain

use http::{Method, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};

use crate::gateway::client_cert::ClientIdentity;
use crate::gateway::routing::rewritten_path;
use crate::gateway::snapshot::{GatewayState, Snapshot};
use crate::router::{MatchOutcome, NotChosen, RequestView, RouteVerdict, normalize_path};

/// Answers `/explain`; `query` is the admin request's query string.
pub fn handle(state: &GatewayState, method: &Method, query: Option<&str>) -> (StatusCode, Value) {
    if method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET /explain?path=/...",
        );
    }
    match ExplainedRequest::parse(query.unwrap_or_default()) {
        Ok(request) => explain(&state.current(), &request),
        Err(message) => error(StatusCode::BAD_REQUEST, "bad_request", &message),
    }
}

/// The request to explain, as given in the admin request's query.
#[derive(Debug, Default, PartialEq)]
struct ExplainedRequest {
    method: String,
    host: Option<String>,
    /// As given, before normalisation.
    path: String,
    query: Option<String>,
    /// Names lower-cased, in the order given; a lookup finds the first, as the gateway's does.
    headers: Vec<(String, String)>,
    /// The client certificate the request is described with, if any.
    certificate: Option<ClientIdentity>,
}

impl ExplainedRequest {
    fn parse(admin_query: &str) -> Result<ExplainedRequest, String> {
        let mut method = None;
        let mut host = None;
        let mut path = None;
        let mut query = None;
        let mut headers = Vec::new();
        let mut certificate_names: Vec<String> = Vec::new();
        for pair in admin_query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = form_decode(name)?;
            let value = form_decode(value)?;
            let slot = match name.as_str() {
                "method" => &mut method,
                "host" => &mut host,
                "path" => &mut path,
                "query" => &mut query,
                "header" => {
                    let Some((header, header_value)) = value.split_once(':') else {
                        return Err(format!("header {value:?} must be written as Name:value"));
                    };
                    let header = header.trim();
                    if header.is_empty() {
                        return Err(format!("header {value:?} has no name"));
                    }
                    headers.push((header.to_ascii_lowercase(), header_value.trim().to_string()));
                    continue;
                }
                "certificate" => {
                    if value.is_empty() {
                        return Err("certificate needs a name (its CN or a SAN)".to_string());
                    }
                    certificate_names.push(value);
                    continue;
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; use path, method, host, header, query \
                         and certificate"
                    ));
                }
            };
            if slot.replace(value).is_some() {
                return Err(format!("parameter {name:?} is given more than once"));
            }
        }
        let Some(mut path) = path else {
            return Err(
                "the path parameter is required, e.g. /explain?method=GET&host=example.com&path=/api/x"
                    .to_string(),
            );
        };
        if let Some((bare, inline_query)) = path.split_once('?') {
            if query.is_some() {
                return Err(
                    "give the query either in path (after '?') or as the query parameter, not both"
                        .to_string(),
                );
            }
            query = Some(inline_query.to_string());
            path = bare.to_string();
        }
        let method = method.unwrap_or_else(|| "GET".to_string());
        if method.is_empty() {
            return Err("method must not be empty".to_string());
        }
        let mut names = certificate_names.into_iter();
        let certificate = names.next().map(|common_name| ClientIdentity {
            subject: format!("CN={common_name}"),
            common_name: Some(common_name),
            alternative_names: names.collect(),
            ..ClientIdentity::default()
        });
        Ok(ExplainedRequest {
            method,
            host,
            path,
            query,
            headers,
            certificate,
        })
    }
}

/// Decodes one form-encoded component of the admin request's query (`+` is a space).
fn form_decode(component: &str) -> Result<String, String> {
    let spaced = component.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| format!("{component:?} does not decode to UTF-8"))
}

fn explain(snapshot: &Snapshot, request: &ExplainedRequest) -> (StatusCode, Value) {
    let path = match normalize_path(&request.path) {
        Ok(path) => path,
        Err(problem) => {
            // The gateway answers such a request 400 before routing it.
            let message = format!("the gateway refuses path {:?}: {problem}", request.path);
            return error(StatusCode::BAD_REQUEST, "invalid_path", &message);
        }
    };
    let lookup = |name: &str| {
        request
            .headers
            .iter()
            .find(|(candidate, _)| candidate == name)
            .map(|(_, value)| value.as_str())
    };
    let certificate = || request.certificate.as_ref();
    let view = RequestView {
        method: &request.method,
        host: request.host.as_deref(),
        path: &path,
        query: request.query.as_deref(),
        headers: &lookup,
        client_certificate: &certificate,
    };
    let explanation = snapshot.router.explain(&view);

    let mut document = Map::new();
    document.insert(
        "request".into(),
        json!({
            "method": request.method,
            "host": request.host,
            "path": &*path,
            "query": request.query,
            "headers": request.headers.iter().map(|(name, value)| json!([name, value])).collect::<Vec<_>>(),
            "certificate": request.certificate.as_ref().map(|identity| identity.names().collect::<Vec<_>>()),
        }),
    );
    match &explanation.outcome {
        MatchOutcome::Matched(found) => {
            let Some(route) = snapshot.routes.get(*found.value) else {
                let message = "the router chose a route the snapshot does not have";
                return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message);
            };
            let params: Map<String, Value> = found
                .params
                .iter()
                .map(|(name, value)| (name.to_string(), Value::from(value)))
                .collect();
            let mut upstream_path = rewritten_path(
                &request.path,
                &path,
                route.strip_prefix,
                found.static_prefix_len,
            )
            .unwrap_or_else(|| request.path.clone());
            if let Some(query) = &request.query {
                upstream_path.push('?');
                upstream_path.push_str(query);
            }
            document.insert("outcome".into(), "matched".into());
            document.insert("matched".into(), Value::from(&*route.id));
            document.insert("path_params".into(), Value::Object(params));
            document.insert("upstream_path".into(), upstream_path.into());
            document.insert("chain".into(), route.chain.describe());
            document.insert("upstream".into(), Value::from(&*route.upstream.name));
            document.insert(
                "endpoints".into(),
                super::upstreams::endpoints(&route.upstream),
            );
        }
        MatchOutcome::MethodNotAllowed { allow } => {
            document.insert("outcome".into(), "method_not_allowed".into());
            document.insert("matched".into(), Value::Null);
            document.insert("allow".into(), allow.as_str().into());
        }
        MatchOutcome::NotFound => {
            document.insert("outcome".into(), "not_found".into());
            document.insert("matched".into(), Value::Null);
        }
    }
    let candidates: Vec<Value> = explanation.others.iter().map(describe_verdict).collect();
    document.insert("candidates".into(), Value::Array(candidates));
    (StatusCode::OK, Value::Object(document))
}

/// One losing route: every requirement it fails, or the precedence rule it lost on.
fn describe_verdict(verdict: &RouteVerdict<'_, usize>) -> Value {
    let reasons: Vec<Value> = match &verdict.not_chosen {
        NotChosen::Mismatched(mismatches) => mismatches
            .iter()
            .map(|mismatch| {
                json!({
                    "condition": mismatch.condition.as_str(),
                    "message": mismatch.message,
                })
            })
            .collect(),
        NotChosen::Outranked {
            winner,
            rule,
            detail,
        } => vec![json!({
            "condition": "precedence",
            "rule": rule.as_str(),
            "outranked_by": winner.id,
            "message": format!(
                "matches every condition but ranks below \"{}\": {detail}",
                winner.id
            ),
        })],
    };
    json!({"id": verdict.spec.id, "reasons": reasons})
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (
        status,
        json!({"error": {"status": status.as_u16(), "code": code, "message": message}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_described_request() {
        let parsed = ExplainedRequest::parse(
            "method=POST&host=api.example.com&path=%2Fusers%2F7%3Fa%3D1&header=X-Tenant:+blue&header=x-b:2\
             &certificate=ops&certificate=spiffe%3A%2F%2Fx%2Fops",
        );
        assert_eq!(
            parsed,
            Ok(ExplainedRequest {
                method: "POST".into(),
                host: Some("api.example.com".into()),
                path: "/users/7".into(),
                query: Some("a=1".into()),
                headers: vec![
                    ("x-tenant".into(), "blue".into()),
                    ("x-b".into(), "2".into())
                ],
                certificate: Some(ClientIdentity {
                    common_name: Some("ops".into()),
                    subject: "CN=ops".into(),
                    alternative_names: vec!["spiffe://x/ops".into()],
                    ..ClientIdentity::default()
                }),
            })
        );
        let parsed = ExplainedRequest::parse("path=/a&query=v%3D2%26x%3Dy+z");
        assert_eq!(
            parsed.map(|request| (request.method, request.query)),
            Ok(("GET".into(), Some("v=2&x=y z".into())))
        );
    }

    #[test]
    fn refuses_what_it_cannot_explain() {
        for (query, expected) in [
            ("", "path parameter is required"),
            ("method=GET", "path parameter is required"),
            ("path=/a&path=/b", "more than once"),
            ("path=/a&header=novalue", "Name:value"),
            ("path=/a&header=:v", "has no name"),
            ("path=/a&verb=GET", "unknown parameter \"verb\""),
            ("path=/a%3Fx&query=y", "not both"),
            ("path=/a&method=", "method must not be empty"),
            ("path=/a&certificate=", "certificate needs a name"),
            ("path=%FF", "UTF-8"),
        ] {
            match ExplainedRequest::parse(query) {
                Err(message) => assert!(message.contains(expected), "{query}: {message}"),
                Ok(request) => panic!("{query} parsed as {request:?}"),
            }
        }
    }
}
