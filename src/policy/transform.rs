//! `transform` (the seed's `ModifyRequest`, `ModifyResponse` and `PathRewrite`): set, add and
//! remove request and response headers, rewrite the path sent upstream, add and remove query
//! parameters.
//!
//! Values may use variables, resolved per request: `${client_ip}`, `${request_id}`,
//! `${route_id}`, `${host}`, `${method}`, `${path}`, `${param.NAME}` (a path parameter of the
//! route) and `${header.NAME}` (a request header). Unknown variables are config errors. The
//! path is rewritten either by a template with the route's parameters (`/users/:id` routed,
//! `path: /v2/users/{id}`) or by a regex with `$1`-style groups (`rewrite: {regex, replacement}`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use serde::Deserialize;

use super::{RequestInput, ResponseInput, Verdict};
use crate::gateway::errors::GatewayError;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct HeaderChanges {
    /// Replaces any value the header had.
    pub set_headers: BTreeMap<String, String>,
    /// Adds a value next to those already there.
    pub add_headers: BTreeMap<String, String>,
    pub remove_headers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RequestChanges {
    pub set_headers: BTreeMap<String, String>,
    pub add_headers: BTreeMap<String, String>,
    pub remove_headers: Vec<String>,
    /// A path template: `{name}` is the route's path parameter, `${...}` any variable.
    pub path: Option<String>,
    pub rewrite: Option<RegexRewrite>,
    pub add_query: BTreeMap<String, String>,
    pub remove_query: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RegexRewrite {
    pub regex: String,
    /// `$1`, `${name}` refer to the regex's groups.
    pub replacement: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TransformConfig {
    pub request: RequestChanges,
    pub response: HeaderChanges,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Variable {
    ClientIp,
    RequestId,
    RouteId,
    Host,
    Method,
    Path,
    Parameter(String),
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Variable(Variable),
}

/// A value with variables, split once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// `braces_are_parameters`: in path templates `{id}` is the path parameter `id`.
    fn parse(text: &str, braces_are_parameters: bool) -> Result<Template, String> {
        let unclosed = || format!("\"{text}\": a variable without its closing \"}}\"");
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(position) = rest.find(['$', '{']) {
            literal.push_str(&rest[..position]);
            let from = &rest[position..];
            let (variable, after) = if let Some(inner) = from.strip_prefix("${") {
                let end = inner.find('}').ok_or_else(unclosed)?;
                (parse_variable(&inner[..end])?, &inner[end + 1..])
            } else if braces_are_parameters && from.starts_with('{') {
                // `{id}` in a path template is shorthand for `${param.id}`.
                let inner = &from[1..];
                let end = inner.find('}').ok_or_else(unclosed)?;
                if end == 0 {
                    return Err(format!("\"{text}\": an empty parameter name"));
                }
                (
                    Variable::Parameter(inner[..end].to_string()),
                    &inner[end + 1..],
                )
            } else {
                literal.push_str(&from[..1]);
                rest = &from[1..];
                continue;
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Variable(variable));
            rest = after;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    fn is_constant(&self) -> bool {
        self.pieces
            .iter()
            .all(|piece| matches!(piece, Piece::Text(_)))
    }

    fn parameters(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|piece| match piece {
            Piece::Variable(Variable::Parameter(name)) => Some(name.as_str()),
            _ => None,
        })
    }

    fn render(&self, context: &Variables<'_>, output: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => output.push_str(text),
                Piece::Variable(variable) => context.write(variable, output),
            }
        }
    }

    /// Renders a path: variable values are percent-encoded as one segment each, so a value
    /// such as `../admin` or `a?b=1` (from a header or a parameter) cannot change which path
    /// or query the upstream sees.
    fn render_path(&self, context: &Variables<'_>, output: &mut String) {
        let mut value = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => output.push_str(text),
                Piece::Variable(variable) => {
                    value.clear();
                    context.write(variable, &mut value);
                    output.extend(percent_encoding::utf8_percent_encode(&value, PATH_SEGMENT));
                }
            }
        }
    }
}

/// Bytes escaped in a path segment built from a variable: everything but RFC 3986's
/// unreserved characters, and `.`, so that `..` cannot climb out of the template.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

fn parse_variable(name: &str) -> Result<Variable, String> {
    Ok(match name {
        "client_ip" => Variable::ClientIp,
        "request_id" => Variable::RequestId,
        "route_id" => Variable::RouteId,
        "host" => Variable::Host,
        "method" => Variable::Method,
        "path" => Variable::Path,
        _ => {
            if let Some(parameter) = name.strip_prefix("param.")
                && !parameter.is_empty()
            {
                Variable::Parameter(parameter.to_string())
            } else if let Some(header) = name.strip_prefix("header.") {
                Variable::Header(super::header_name(header)?)
            } else {
                return Err(format!(
                    "unknown variable \"${{{name}}}\" (expected client_ip, request_id, route_id, \
                     host, method, path, param.NAME or header.NAME)"
                ));
            }
        }
    })
}

/// What variables resolve to for one request.
struct Variables<'a> {
    client_ip: Option<std::net::IpAddr>,
    request_id: &'a http::HeaderValue,
    route_id: &'a str,
    path_parameters: &'a [(String, String)],
    request: &'a RequestHeader,
}

impl Variables<'_> {
    fn write(&self, variable: &Variable, output: &mut String) {
        match variable {
            Variable::ClientIp => {
                if let Some(ip) = self.client_ip {
                    let _ = write!(output, "{ip}");
                }
            }
            Variable::RequestId => output.push_str(self.request_id.to_str().unwrap_or_default()),
            Variable::RouteId => output.push_str(self.route_id),
            Variable::Host => {
                output.push_str(crate::gateway::headers::request_host(self.request).unwrap_or(""))
            }
            Variable::Method => output.push_str(self.request.method.as_str()),
            Variable::Path => output.push_str(self.request.uri.path()),
            Variable::Parameter(name) => {
                if let Some((_, value)) = self
                    .path_parameters
                    .iter()
                    .find(|(parameter, _)| parameter == name)
                {
                    output.push_str(value);
                }
            }
            Variable::Header(name) => {
                if let Some(value) = self
                    .request
                    .headers
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                {
                    output.push_str(value);
                }
            }
        }
    }
}

#[derive(Debug)]
struct HeaderEdit {
    /// The name as the config spells it: Pingora keeps that case on HTTP/1, and handing it
    /// over ready saves it from title-casing (and copying) the name on every request.
    case_name: bytes::Bytes,
    template: Template,
    /// Made once when the template has no variables.
    constant: Option<HeaderValue>,
}

#[derive(Debug, Default)]
struct HeaderEdits {
    set: Vec<HeaderEdit>,
    add: Vec<HeaderEdit>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    fn compile(
        prefix: &str,
        set: &BTreeMap<String, String>,
        add: &BTreeMap<String, String>,
        remove: &[String],
        report: &mut dyn FnMut(&str, String),
    ) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        let mut compile_map =
            |field: &str, map: &BTreeMap<String, String>, out: &mut Vec<HeaderEdit>| {
                for (name, value) in map {
                    let key = format!("{prefix}.{field}.{name}");
                    let case_name = match super::header_name(name) {
                        Ok(_) => bytes::Bytes::copy_from_slice(name.as_bytes()),
                        Err(message) => {
                            report(&key, message);
                            continue;
                        }
                    };
                    let template = match Template::parse(value, false) {
                        Ok(template) => template,
                        Err(message) => {
                            report(&key, message);
                            continue;
                        }
                    };
                    let constant = if template.is_constant() {
                        match super::header_value(value) {
                            Ok(value) => Some(value),
                            Err(message) => {
                                report(&key, message);
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    out.push(HeaderEdit {
                        case_name,
                        template,
                        constant,
                    });
                }
            };
        compile_map("set_headers", set, &mut edits.set);
        compile_map("add_headers", add, &mut edits.add);
        for (index, name) in remove.iter().enumerate() {
            match super::header_name(name) {
                Ok(name) => edits.remove.push(name),
                Err(message) => report(&format!("{prefix}.remove_headers[{index}]"), message),
            }
        }
        edits
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// The values to set and add, rendered for this request (a `Vec` only when there are
    /// edits): `(name, value, replace)`.
    fn render(&self, variables: &Variables<'_>) -> Vec<(bytes::Bytes, HeaderValue, bool)> {
        let mut rendered = Vec::with_capacity(self.set.len() + self.add.len());
        let mut buffer = String::new();
        for (edits, replace) in [(&self.set, true), (&self.add, false)] {
            for edit in edits {
                let value = match &edit.constant {
                    Some(value) => value.clone(),
                    None => {
                        buffer.clear();
                        edit.template.render(variables, &mut buffer);
                        // A variable can carry bytes a header cannot (a header with a
                        // newline cannot come from a client, but be safe): drop the edit.
                        match HeaderValue::from_str(&buffer) {
                            Ok(value) => value,
                            Err(_) => continue,
                        }
                    }
                };
                rendered.push((edit.case_name.clone(), value, replace));
            }
        }
        rendered
    }

    /// Removes, then sets and adds the `rendered` values.
    fn apply_to(
        &self,
        headers: &mut impl EditableHeaders,
        rendered: Vec<(bytes::Bytes, HeaderValue, bool)>,
    ) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, replace) in rendered {
            headers.put(name, value, replace);
        }
    }
}

/// Request and response headers alike (Pingora gives the two no common trait).
trait EditableHeaders {
    fn remove(&mut self, name: &HeaderName);
    /// Sets (`replace`) or adds a value under `name`, spelled as the config spells it.
    fn put(&mut self, name: bytes::Bytes, value: HeaderValue, replace: bool);
}

impl EditableHeaders for RequestHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }

    fn put(&mut self, name: bytes::Bytes, value: HeaderValue, replace: bool) {
        // The name was validated at load, so these cannot fail.
        let _ = if replace {
            self.insert_header(name, value)
        } else {
            self.append_header(name, value).map(|_| ())
        };
    }
}

impl EditableHeaders for http::response::Parts {
    fn remove(&mut self, name: &HeaderName) {
        self.headers.remove(name);
    }

    fn put(&mut self, name: bytes::Bytes, value: HeaderValue, replace: bool) {
        // The name was validated at load, so this cannot fail.
        let Ok(name) = HeaderName::from_bytes(&name) else {
            return;
        };
        if replace {
            self.headers.insert(name, value);
        } else {
            self.headers.append(name, value);
        }
    }
}

#[derive(Debug)]
enum PathRewrite {
    Template(Template),
    Regex {
        regex: regex::Regex,
        replacement: String,
    },
}

#[derive(Debug)]
struct QueryEdits {
    add: Vec<(String, Template)>,
    remove: Vec<String>,
}

#[derive(Debug)]
pub struct Transform {
    request_headers: HeaderEdits,
    response_headers: HeaderEdits,
    path: Option<PathRewrite>,
    query: Option<QueryEdits>,
    config: TransformConfig,
}

impl Transform {
    pub fn compile(
        config: TransformConfig,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<Transform> {
        let request = &config.request;
        let request_headers = HeaderEdits::compile(
            "request",
            &request.set_headers,
            &request.add_headers,
            &request.remove_headers,
            report,
        );
        let response_headers = HeaderEdits::compile(
            "response",
            &config.response.set_headers,
            &config.response.add_headers,
            &config.response.remove_headers,
            report,
        );
        let path = match (&request.path, &request.rewrite) {
            (Some(_), Some(_)) => {
                report(
                    "request.rewrite",
                    "give either request.path (a template) or request.rewrite (a regex), not both"
                        .to_string(),
                );
                None
            }
            (Some(path), None) => match Template::parse(path, true) {
                Ok(template) if !path.starts_with('/') => {
                    let _ = template;
                    report("request.path", "must start with '/'".to_string());
                    None
                }
                Ok(template) => Some(PathRewrite::Template(template)),
                Err(message) => {
                    report("request.path", message);
                    None
                }
            },
            (None, Some(rewrite)) => match regex::Regex::new(&rewrite.regex) {
                Ok(regex) => Some(PathRewrite::Regex {
                    regex,
                    replacement: rewrite.replacement.clone(),
                }),
                Err(error) => {
                    report("request.rewrite.regex", format!("invalid regex: {error}"));
                    None
                }
            },
            (None, None) => None,
        };
        let mut add = Vec::new();
        for (name, value) in &request.add_query {
            match Template::parse(value, false) {
                Ok(template) => add.push((name.clone(), template)),
                Err(message) => report(&format!("request.add_query.{name}"), message),
            }
        }
        let query = (!add.is_empty() || !request.remove_query.is_empty()).then(|| QueryEdits {
            add,
            remove: request.remove_query.clone(),
        });
        Some(Transform {
            request_headers,
            response_headers,
            path,
            query,
            config,
        })
    }

    /// Path parameters the templates use, so the route can be checked to have them.
    pub fn parameters(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut collect = |template: &Template| {
            names.extend(template.parameters().map(str::to_string));
        };
        if let Some(PathRewrite::Template(template)) = &self.path {
            collect(template);
        }
        for edits in [&self.request_headers, &self.response_headers] {
            for edit in edits.set.iter().chain(&edits.add) {
                collect(&edit.template);
            }
        }
        if let Some(query) = &self.query {
            for (_, template) in &query.add {
                collect(template);
            }
        }
        names
    }

    pub fn on_request(&self, request: &mut RequestHeader, input: &mut RequestInput<'_>) -> Verdict {
        let uri = self.rewritten_uri(request, input);
        if !self.request_headers.is_empty() {
            let rendered = self.request_headers.render(&Variables {
                client_ip: input.client_ip,
                request_id: input.request_id,
                route_id: input.route_id,
                path_parameters: input.path_parameters,
                request,
            });
            self.request_headers.apply_to(request, rendered);
        }
        match uri {
            Ok(Some(uri)) => {
                *input.upstream_uri = Some(uri);
                Verdict::Continue
            }
            Ok(None) => Verdict::Continue,
            Err(error) => Verdict::Fail(error),
        }
    }

    /// The path and query to send upstream, when this transform changes them.
    fn rewritten_uri(
        &self,
        request: &RequestHeader,
        input: &RequestInput<'_>,
    ) -> Result<Option<http::Uri>, GatewayError> {
        if self.path.is_none() && self.query.is_none() {
            return Ok(None);
        }
        // Start from what would be sent upstream so far (a stripped prefix, an earlier step).
        let current = input.upstream_uri.as_ref().unwrap_or(&request.uri);
        let variables = Variables {
            client_ip: input.client_ip,
            request_id: input.request_id,
            route_id: input.route_id,
            path_parameters: input.path_parameters,
            request,
        };
        let mut path = match &self.path {
            None => current.path().to_string(),
            Some(PathRewrite::Template(template)) => {
                let mut path = String::new();
                template.render_path(&variables, &mut path);
                path
            }
            Some(PathRewrite::Regex { regex, replacement }) => regex
                .replace(current.path(), replacement.as_str())
                .into_owned(),
        };
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        // Pairs as the client wrote them (a bare `flag` stays bare); added ones are encoded.
        let mut pairs: Vec<(String, Option<String>)> = current
            .query()
            .map(|query| {
                query
                    .split('&')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| match pair.split_once('=') {
                        Some((name, value)) => (name.to_string(), Some(value.to_string())),
                        None => (pair.to_string(), None),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(query) = &self.query {
            pairs.retain(|(name, _)| {
                !query.remove.iter().any(|removed| {
                    percent_encoding::percent_decode_str(name).decode_utf8_lossy() == *removed
                })
            });
            for (name, template) in &query.add {
                let mut value = String::new();
                template.render(&variables, &mut value);
                pairs.push((encode(name), Some(encode(&value))));
            }
        }
        let mut target = path;
        for (index, (name, value)) in pairs.iter().enumerate() {
            target.push(if index == 0 { '?' } else { '&' });
            target.push_str(name);
            if let Some(value) = value {
                target.push('=');
                target.push_str(value);
            }
        }
        http::Uri::try_from(target).map(Some).map_err(|_| {
            GatewayError::new(400, "invalid_path", "the rewritten path is not a valid URI")
        })
    }

    pub fn on_response(
        &self,
        request: &RequestHeader,
        response: &mut http::response::Parts,
        input: &ResponseInput<'_>,
    ) {
        if self.response_headers.is_empty() {
            return;
        }
        let rendered = self.response_headers.render(&Variables {
            client_ip: input.client_ip,
            request_id: input.request_id,
            route_id: input.route_id,
            path_parameters: input.path_parameters,
            request,
        });
        self.response_headers.apply_to(response, rendered);
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "request": {
                "set_headers": self.config.request.set_headers,
                "add_headers": self.config.request.add_headers,
                "remove_headers": self.config.request.remove_headers,
                "path": self.config.request.path,
                "rewrite": self.config.request.rewrite.as_ref().map(|rewrite| serde_json::json!({"regex": rewrite.regex, "replacement": rewrite.replacement})),
                "add_query": self.config.request.add_query,
                "remove_query": self.config.request.remove_query,
            },
            "response": {
                "set_headers": self.config.response.set_headers,
                "add_headers": self.config.response.add_headers,
                "remove_headers": self.config.response.remove_headers,
            },
        })
    }
}

/// Percent-encodes a query component written by the gateway.
fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_request;

    fn compile(config: TransformConfig) -> Transform {
        Transform::compile(config, &mut |field, message| panic!("{field}: {message}")).unwrap()
    }

    fn run(transform: &Transform, request: &mut RequestHeader) -> Option<http::Uri> {
        let parameters = vec![("id".to_string(), "42".to_string())];
        let mut upstream_uri = None;
        let mut state = crate::policy::PolicyState::default();
        let mut input = RequestInput {
            client_ip: Some("192.0.2.7".parse().unwrap()),
            request_id: &http::HeaderValue::from_static("req-1"),
            route_id: "users",
            path_parameters: &parameters,
            upstream_uri: &mut upstream_uri,
            state: &mut state,
            now: std::time::Instant::now(),
            step_name: "transform",
        };
        assert!(matches!(
            transform.on_request(request, &mut input),
            Verdict::Continue
        ));
        upstream_uri
    }

    #[test]
    fn headers_with_variables_and_a_path_template() {
        let mut config = TransformConfig::default();
        config
            .request
            .set_headers
            .insert("X-Client".into(), "${client_ip}/${route_id}".into());
        config.request.add_headers.insert(
            "X-User".into(),
            "user-{id} ${param.id} ${header.x-tenant}".into(),
        );
        config.request.remove_headers.push("X-Debug".into());
        config.request.path = Some("/v2/users/{id}".into());
        config
            .request
            .add_query
            .insert("via".into(), "${request_id}".into());
        config.request.remove_query.push("debug".into());
        let transform = compile(config);
        assert_eq!(transform.parameters(), ["id", "id"]);
        let mut request = test_request(
            "GET",
            "/users/42?debug=1&page=2",
            &[("x-debug", "1"), ("x-tenant", "acme")],
        );
        let uri = run(&transform, &mut request).unwrap();
        assert_eq!(uri.to_string(), "/v2/users/42?page=2&via=req%2D1");
        assert_eq!(request.headers.get("x-client").unwrap(), "192.0.2.7/users");
        // Braces are literal in header values: only `${...}` is a variable there.
        assert_eq!(request.headers.get("x-user").unwrap(), "user-{id} 42 acme");
        assert!(request.headers.get("x-debug").is_none());
    }

    #[test]
    fn variables_cannot_escape_their_path_segment_and_bare_flags_stay_bare() {
        let mut config = TransformConfig::default();
        config.request.path = Some("/v2/${header.x-tenant}/{id}".into());
        let transform = compile(config);
        let mut request =
            test_request("GET", "/users/42?a=1&flag", &[("x-tenant", "../admin?x=1")]);
        let uri = run(&transform, &mut request).unwrap();
        assert_eq!(uri.to_string(), "/v2/%2E%2E%2Fadmin%3Fx%3D1/42?a=1&flag");
    }

    #[test]
    fn regex_rewrites_keep_the_query() {
        let mut config = TransformConfig::default();
        config.request.rewrite = Some(RegexRewrite {
            regex: "^/api/(.*)$".into(),
            replacement: "/internal/$1".into(),
        });
        let transform = compile(config);
        let mut request = test_request("GET", "/api/a/b?x=1", &[]);
        assert_eq!(
            run(&transform, &mut request).unwrap().to_string(),
            "/internal/a/b?x=1"
        );
    }

    #[test]
    fn unknown_variables_and_bad_regexes_are_config_errors() {
        let mut config = TransformConfig::default();
        config
            .request
            .set_headers
            .insert("X-A".into(), "${nope}".into());
        config.request.rewrite = Some(RegexRewrite {
            regex: "(".into(),
            replacement: String::new(),
        });
        let mut fields = Vec::new();
        Transform::compile(config, &mut |field, _| fields.push(field.to_string()));
        assert_eq!(fields, ["request.set_headers.X-A", "request.rewrite.regex"]);
    }
}
