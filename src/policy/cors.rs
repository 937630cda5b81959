//! `cors`: Cross-Origin Resource Sharing, answered at the gateway.
//!
//! The Go Loom keys (`enabled, allow_origins, allow_methods, allow_headers, expose_headers,
//! max_age, allow_credentials`). Preflights (`OPTIONS` with `Access-Control-Request-Method`)
//! are answered here with 204 and never reach the upstream; actual requests from an allowed
//! origin get the CORS headers added to the upstream's answer. A disallowed origin gets no
//! CORS headers at all, so the browser refuses the response. `Vary: Origin` is set whenever
//! the answer depends on the origin, so shared caches keep origins apart.

use bytes::Bytes;
use http::HeaderValue;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use pingora::http::RequestHeader;
use serde::Deserialize;

use super::Verdict;

const DEFAULT_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct CorsConfig {
    /// Go Loom's switch; `false` keeps the section but applies nothing.
    pub enabled: bool,
    /// Exact origins (`https://app.example.com`), `*`, or subdomain wildcards
    /// (`https://*.example.com`, `*.example.com`).
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    /// Empty: the headers the preflight asks for are allowed.
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Seconds a browser may cache a preflight answer.
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            enabled: true,
            allow_origins: Vec::new(),
            allow_methods: Vec::new(),
            allow_headers: Vec::new(),
            expose_headers: Vec::new(),
            max_age: None,
            allow_credentials: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginPattern {
    Any,
    /// Lowercase `scheme://host[:port]`.
    Exact(String),
    /// `*.example.com`: any subdomain, with `scheme` when one was written.
    Subdomain {
        scheme: Option<String>,
        suffix: String,
    },
}

impl OriginPattern {
    fn parse(text: &str) -> Result<OriginPattern, String> {
        let lower = text.trim().to_ascii_lowercase();
        if lower == "*" {
            return Ok(OriginPattern::Any);
        }
        let (scheme, rest) = match lower.split_once("://") {
            Some((scheme, rest)) => (Some(scheme.to_string()), rest.to_string()),
            None => (None, lower.clone()),
        };
        if rest.is_empty() || rest.contains('/') {
            return Err(format!(
                "\"{text}\" is not an origin (scheme://host[:port], *, or *.domain)"
            ));
        }
        if let Some(domain) = rest.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(format!("\"{text}\" has an invalid wildcard"));
            }
            return Ok(OriginPattern::Subdomain {
                scheme,
                suffix: format!(".{domain}"),
            });
        }
        if rest.contains('*') {
            return Err(format!(
                "\"{text}\": a wildcard may only stand for the leftmost labels (*.example.com)"
            ));
        }
        match scheme {
            Some(_) => Ok(OriginPattern::Exact(lower)),
            None => Err(format!(
                "\"{text}\" needs a scheme (https://{text}); only wildcards may omit it"
            )),
        }
    }

    /// Compared as bytes; the caller has checked that the origin is ASCII.
    fn matches(&self, origin: &[u8]) -> bool {
        match self {
            OriginPattern::Any => true,
            // Browsers send origins in lower case: one byte comparison settles most.
            OriginPattern::Exact(exact) => {
                exact.as_bytes() == origin || exact.as_bytes().eq_ignore_ascii_case(origin)
            }
            OriginPattern::Subdomain { scheme, suffix } => {
                let Some(separator) = origin.windows(3).position(|window| window == b"://") else {
                    return false;
                };
                let (origin_scheme, host) = (&origin[..separator], &origin[separator + 3..]);
                if scheme
                    .as_deref()
                    .is_some_and(|scheme| !scheme.as_bytes().eq_ignore_ascii_case(origin_scheme))
                {
                    return false;
                }
                // Compare the host without its port.
                let host = match host.iter().rposition(|&byte| byte == b':') {
                    Some(colon) => &host[..colon],
                    None => host,
                };
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

/// The compiled policy: patterns and ready-made header values.
#[derive(Debug)]
pub struct Cors {
    enabled: bool,
    origins: Vec<OriginPattern>,
    any_origin: bool,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    config: CorsConfig,
}

impl Cors {
    /// Compiles `config`; problems go to `report(field, message)`.
    pub fn compile(config: CorsConfig, report: &mut dyn FnMut(&str, String)) -> Option<Cors> {
        let mut origins = Vec::new();
        for (index, text) in config.allow_origins.iter().enumerate() {
            match OriginPattern::parse(text) {
                Ok(pattern) => origins.push(pattern),
                Err(message) => report(&format!("allow_origins[{index}]"), message),
            }
        }
        let any_origin = origins.contains(&OriginPattern::Any);
        if config.allow_credentials && any_origin {
            report(
                "allow_credentials",
                "credentials cannot be allowed for every origin (\"*\"): browsers refuse it and \
                 it would hand any site the user's cookies; list the origins instead"
                    .to_string(),
            );
        }
        for (index, method) in config.allow_methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|byte| byte.is_ascii_alphabetic()) {
                report(
                    &format!("allow_methods[{index}]"),
                    format!("\"{method}\" is not an HTTP method"),
                );
            }
        }
        let mut list = |field: &str, items: &[String]| -> Option<HeaderValue> {
            if items.is_empty() {
                return None;
            }
            for (index, item) in items.iter().enumerate() {
                if http::HeaderName::from_bytes(item.as_bytes()).is_err() && item != "*" {
                    report(
                        &format!("{field}[{index}]"),
                        format!("\"{item}\" is not a header name"),
                    );
                }
            }
            HeaderValue::from_str(&items.join(", ")).ok()
        };
        let allow_headers = list("allow_headers", &config.allow_headers);
        let expose_headers = list("expose_headers", &config.expose_headers);
        let allow_methods = if config.allow_methods.is_empty() {
            HeaderValue::from_static(DEFAULT_METHODS)
        } else {
            let upper: Vec<String> = config
                .allow_methods
                .iter()
                .map(|method| method.to_ascii_uppercase())
                .collect();
            HeaderValue::from_str(&upper.join(", "))
                .unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_METHODS))
        };
        Some(Cors {
            enabled: config.enabled,
            any_origin,
            origins,
            allow_methods,
            allow_headers,
            expose_headers,
            max_age: config.max_age.map(HeaderValue::from),
            allow_credentials: config.allow_credentials,
            config,
        })
    }

    /// The value of `Access-Control-Allow-Origin` for `origin`, or `None` when it is not allowed.
    fn allowed_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin && !self.allow_credentials {
            return Some(HeaderValue::from_static("*"));
        }
        // A serialized origin is ASCII (browsers send hosts in punycode): anything else is
        // refused before any pattern sees it.
        let origin_bytes = origin.as_bytes();
        (origin_bytes.is_ascii()
            && self
                .origins
                .iter()
                .any(|pattern| pattern.matches(origin_bytes)))
        .then(|| origin.clone())
    }

    /// Whether the answer depends on the request's origin (it does unless every origin gets `*`).
    fn varies_by_origin(&self) -> bool {
        !self.any_origin || self.allow_credentials
    }

    /// Only preflights (OPTIONS) are the request step's business.
    pub fn acts_on(&self, request: &RequestHeader) -> bool {
        self.enabled && request.method == http::Method::OPTIONS
    }

    pub fn on_request(&self, request: &RequestHeader) -> Verdict {
        if !self.acts_on(request) {
            return Verdict::Continue;
        }
        let (Some(origin), Some(_)) = (
            request.headers.get(ORIGIN),
            request.headers.get(ACCESS_CONTROL_REQUEST_METHOD),
        ) else {
            // A plain OPTIONS request, not a preflight: it is the upstream's to answer.
            return Verdict::Continue;
        };
        let mut headers: Vec<(String, Bytes)> = Vec::with_capacity(7);
        let mut push = |name: &http::HeaderName, value: &HeaderValue| {
            headers.push((
                name.as_str().to_string(),
                Bytes::copy_from_slice(value.as_bytes()),
            ))
        };
        if let Some(allowed) = self.allowed_origin(origin) {
            push(&ACCESS_CONTROL_ALLOW_ORIGIN, &allowed);
            push(&ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods);
            match (
                &self.allow_headers,
                request.headers.get(ACCESS_CONTROL_REQUEST_HEADERS),
            ) {
                (Some(allowed), _) => push(&ACCESS_CONTROL_ALLOW_HEADERS, allowed),
                (None, Some(requested)) => push(&ACCESS_CONTROL_ALLOW_HEADERS, requested),
                (None, None) => {}
            }
            if let Some(max_age) = &self.max_age {
                push(&ACCESS_CONTROL_MAX_AGE, max_age);
            }
            if self.allow_credentials {
                push(
                    &ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    &HeaderValue::from_static("true"),
                );
            }
        }
        push(
            &VARY,
            &HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Verdict::Respond(super::local_answer(204, headers, Bytes::new()))
    }

    pub fn on_response(&self, request: &RequestHeader, response: &mut http::response::Parts) {
        if !self.enabled {
            return;
        }
        let Some(origin) = request.headers.get(ORIGIN) else {
            return;
        };
        if self.varies_by_origin() {
            append_vary(response);
        }
        let Some(allowed) = self.allowed_origin(origin) else {
            // The upstream's own CORS headers would undo the refusal.
            response.headers.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
            response.headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
            return;
        };
        let headers = &mut response.headers;
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if self.allow_credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose_headers {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "enabled": self.config.enabled,
            "allow_origins": self.config.allow_origins,
            "allow_methods": self.allow_methods.to_str().unwrap_or_default(),
            "allow_headers": self.config.allow_headers,
            "expose_headers": self.config.expose_headers,
            "max_age": self.config.max_age,
            "allow_credentials": self.config.allow_credentials,
        })
    }
}

/// Adds `Origin` to the response's `Vary` unless it is already there.
fn append_vary(response: &mut http::response::Parts) {
    let already = response
        .headers
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let item = item.trim();
            item == "*" || item.eq_ignore_ascii_case("origin")
        });
    if !already {
        response
            .headers
            .append(VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_request;

    fn compile(config: CorsConfig) -> Result<Cors, Vec<String>> {
        let mut problems = Vec::new();
        let cors = Cors::compile(config, &mut |field, message| {
            problems.push(format!("{field}: {message}"))
        });
        if problems.is_empty() {
            Ok(cors.unwrap())
        } else {
            Err(problems)
        }
    }

    fn origins(list: &[&str]) -> CorsConfig {
        CorsConfig {
            allow_origins: list.iter().map(|text| text.to_string()).collect(),
            ..CorsConfig::default()
        }
    }

    #[test]
    fn origin_patterns_match_exact_wildcard_and_subdomains() {
        let cors = compile(origins(&["https://app.example.com", "*.example.org"])).unwrap();
        let allowed = |origin: &str| cors.allowed_origin(&HeaderValue::from_str(origin).unwrap());
        assert!(allowed("https://app.example.com").is_some());
        assert!(allowed("HTTPS://APP.EXAMPLE.COM").is_some());
        assert!(allowed("http://app.example.com").is_none());
        assert!(allowed("https://api.example.org").is_some());
        assert!(allowed("http://a.b.example.org:8443").is_some());
        assert!(allowed("https://example.org").is_none());
        assert!(allowed("https://evilexample.org").is_none());
        assert!(allowed("https://example.org.evil.com").is_none());
        assert!(allowed("null").is_none());
        // Not ASCII: refused by every kind of pattern, including a subdomain wildcard whose
        // suffix it ends with.
        let raw = |bytes: &[u8]| cors.allowed_origin(&HeaderValue::from_bytes(bytes).unwrap());
        assert!(raw("https://\u{e9}.example.org".as_bytes()).is_none());
        assert!(raw(b"https://\xff.example.org").is_none());
        assert!(raw(b"https://app.example.com\xff").is_none());
    }

    #[test]
    fn credentials_with_a_wildcard_origin_is_a_config_error() {
        let mut config = origins(&["*"]);
        config.allow_credentials = true;
        let problems = compile(config).unwrap_err();
        assert!(
            problems[0].starts_with("allow_credentials:"),
            "{problems:?}"
        );
        assert!(compile(origins(&["https://a.*.com"])).is_err());
        assert!(compile(origins(&["app.example.com"])).is_err());
    }

    #[test]
    fn preflights_are_answered_and_disallowed_origins_get_no_cors_headers() {
        let cors = compile(CorsConfig {
            max_age: Some(600),
            allow_credentials: true,
            ..origins(&["https://app.example.com"])
        })
        .unwrap();
        let preflight = test_request(
            "OPTIONS",
            "/x",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-token"),
            ],
        );
        let Verdict::Respond(answer) = cors.on_request(&preflight) else {
            panic!("a preflight is answered");
        };
        assert_eq!(answer.status, 204);
        let header = |name: &str| {
            answer
                .headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        };
        assert_eq!(
            header("access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            header("access-control-allow-headers").as_deref(),
            Some("x-token")
        );
        assert_eq!(header("access-control-max-age").as_deref(), Some("600"));
        assert_eq!(
            header("access-control-allow-credentials").as_deref(),
            Some("true")
        );

        let refused = test_request(
            "OPTIONS",
            "/x",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "PUT"),
            ],
        );
        let Verdict::Respond(answer) = cors.on_request(&refused) else {
            panic!("a refused preflight is still answered here");
        };
        assert!(
            answer
                .headers
                .iter()
                .all(|(key, _)| !key.starts_with("access-control"))
        );

        let plain_options = test_request("OPTIONS", "/x", &[("origin", "https://app.example.com")]);
        assert!(matches!(cors.on_request(&plain_options), Verdict::Continue));
    }

    #[test]
    fn actual_requests_get_headers_only_for_allowed_origins() {
        let cors = compile(CorsConfig {
            expose_headers: vec!["X-Total".into()],
            ..origins(&["https://app.example.com"])
        })
        .unwrap();
        let mut response = http::Response::new(()).into_parts().0;
        response
            .headers
            .insert("access-control-allow-origin", HeaderValue::from_static("*"));
        cors.on_response(
            &test_request("GET", "/", &[("origin", "https://other.example")]),
            &mut response,
        );
        assert!(
            response
                .headers
                .get("access-control-allow-origin")
                .is_none()
        );
        assert_eq!(response.headers.get("vary").unwrap(), "Origin");

        let mut response = http::Response::new(()).into_parts().0;
        cors.on_response(
            &test_request("GET", "/", &[("origin", "https://app.example.com")]),
            &mut response,
        );
        assert_eq!(
            response.headers.get("access-control-allow-origin").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            response
                .headers
                .get("access-control-expose-headers")
                .unwrap(),
            "X-Total"
        );
    }
}
