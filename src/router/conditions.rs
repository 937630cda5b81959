//! The non-path requirements of a route: method, headers, query parameters and the client
//! certificate.
//!
//! They are checked only for routes whose host and path already match, and only when such a
//! route could still beat the best candidate so far, so they stay off the common path.

use super::explain::{Condition, Mismatch};
use super::{CertificateRequirement, RequestView, RouteSpec};
use crate::gateway::client_cert::ClientIdentity;

/// What a required header or query parameter must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// Written as `*`: present with any value.
    Present,
    Equals(Box<str>),
}

impl Expected {
    fn from_config(value: &str) -> Expected {
        if value == "*" {
            Expected::Present
        } else {
            Expected::Equals(Box::from(value))
        }
    }

    /// What is wanted, for an explanation: `any value` or the quoted value.
    fn wanted(&self) -> String {
        match self {
            Expected::Present => "any value".to_string(),
            Expected::Equals(value) => format!("{value:?}"),
        }
    }

    /// Whether a header value found in the request (`None` when absent) satisfies this.
    fn accepts(&self, actual: Option<&str>) -> bool {
        match (actual, self) {
            (None, _) => false,
            (Some(_), Expected::Present) => true,
            (Some(actual), Expected::Equals(wanted)) => actual == &**wanted,
        }
    }
}

/// A route's method, header and query requirements in the form matching reads.
#[derive(Debug, Clone)]
pub(crate) struct Conditions {
    /// Upper-cased; empty means any method.
    methods: Box<[Box<str>]>,
    /// Names lower-cased, because the request's header lookup takes lowercase names.
    headers: Box<[(Box<str>, Expected)]>,
    query_params: Box<[(Box<str>, Expected)]>,
    client_certificate: Option<CertificateRequirement>,
}

impl Conditions {
    /// Compiles the spec's conditions, adding `(RouteSpec field, message)` for each problem.
    pub(crate) fn compile(
        spec: &RouteSpec,
        errors: &mut Vec<(&'static str, String)>,
    ) -> Conditions {
        let mut methods = Vec::with_capacity(spec.methods.len());
        for method in &spec.methods {
            if method.is_empty() || !method.bytes().all(is_token_byte) {
                let message = format!("method {method:?} is not a valid HTTP method");
                errors.push(("methods", message));
            } else {
                methods.push(Box::from(method.to_ascii_uppercase()));
            }
        }
        methods.sort();
        methods.dedup();

        let mut headers = Vec::with_capacity(spec.headers.len());
        for (name, value) in &spec.headers {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                let message = format!("header name {name:?} is not a valid HTTP header name");
                errors.push(("headers", message));
            } else {
                headers.push((
                    Box::from(name.to_ascii_lowercase()),
                    Expected::from_config(value),
                ));
            }
        }

        let mut query_params = Vec::with_capacity(spec.query_params.len());
        for (name, value) in &spec.query_params {
            if name.is_empty() {
                let message = "query parameter name must not be empty".to_string();
                errors.push(("query_params", message));
            } else {
                query_params.push((Box::from(name.as_str()), Expected::from_config(value)));
            }
        }

        if let Some(requirement) = &spec.client_certificate {
            if !requirement.presented && !requirement.subjects.is_empty() {
                let message = "subjects cannot be required of a certificate that must not be \
                               presented (presented: false)"
                    .to_string();
                errors.push(("client_certificate", message));
            }
            if requirement.subjects.iter().any(String::is_empty) {
                let message = "a subject must not be empty".to_string();
                errors.push(("client_certificate", message));
            }
        }

        Conditions {
            methods: methods.into_boxed_slice(),
            headers: headers.into_boxed_slice(),
            query_params: query_params.into_boxed_slice(),
            client_certificate: spec.client_certificate.clone(),
        }
    }

    /// Whether every requirement but the method holds: headers, query parameters and the
    /// client certificate.
    pub(crate) fn request_matches(&self, request: &RequestView<'_>) -> bool {
        let headers_match = self
            .headers
            .iter()
            .all(|(name, expected)| expected.accepts((request.headers)(name)));
        headers_match
            && self.query_params.iter().all(|(name, expected)| {
                request
                    .query
                    .is_some_and(|query| query_has(query, name, expected))
            })
            && self.client_certificate.as_ref().is_none_or(|requirement| {
                certificate_accepted(requirement, (request.client_certificate)())
            })
    }

    /// Every requirement the request fails, one [`Mismatch`] each, for the explanation.
    /// Allocates; matching uses [`Conditions::request_matches`] and
    /// [`Conditions::accepts_method`], which this mirrors check for check.
    pub(crate) fn mismatches(&self, request: &RequestView<'_>, found: &mut Vec<Mismatch>) {
        if !self.accepts_method(request.method) {
            let allowed: Vec<&str> = self.methods().collect();
            found.push(Mismatch {
                condition: Condition::Method,
                message: format!(
                    "method {} is not allowed (allowed: {})",
                    request.method,
                    allowed.join(", ")
                ),
            });
        }
        for (name, expected) in self.headers.iter() {
            let actual = (request.headers)(name);
            if expected.accepts(actual) {
                continue;
            }
            let message = match actual {
                None => format!("header {name} is missing (wanted {})", expected.wanted()),
                Some(actual) => {
                    format!("header {name} is {actual:?}, wanted {}", expected.wanted())
                }
            };
            found.push(Mismatch {
                condition: Condition::Header,
                message,
            });
        }
        for (name, expected) in self.query_params.iter() {
            let has = |expected: &Expected| {
                request
                    .query
                    .is_some_and(|query| query_has(query, name, expected))
            };
            if has(expected) {
                continue;
            }
            let message = if has(&Expected::Present) {
                format!(
                    "query parameter {name} is present but not {}",
                    expected.wanted()
                )
            } else {
                format!(
                    "query parameter {name} is missing (wanted {})",
                    expected.wanted()
                )
            };
            found.push(Mismatch {
                condition: Condition::QueryParam,
                message,
            });
        }
        if let Some(requirement) = &self.client_certificate {
            let certificate = (request.client_certificate)();
            if !certificate_accepted(requirement, certificate) {
                let message = match (certificate, requirement.presented) {
                    (None, _) => "the request has no verified client certificate".to_string(),
                    (Some(_), false) => {
                        "the request has a client certificate; the route wants none".to_string()
                    }
                    (Some(identity), true) => format!(
                        "the client certificate names {}, none of {}",
                        identity.names().collect::<Vec<_>>().join(", "),
                        requirement.subjects.join(", ")
                    ),
                };
                found.push(Mismatch {
                    condition: Condition::ClientCertificate,
                    message,
                });
            }
        }
    }

    pub(crate) fn accepts_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|allowed| &**allowed == method)
    }

    /// The methods this route is limited to (empty when it accepts any).
    pub(crate) fn methods(&self) -> impl Iterator<Item = &str> {
        self.methods.iter().map(|method| &**method)
    }
}

/// Whether the connection's certificate (`None`: none was presented) meets the requirement.
fn certificate_accepted(
    requirement: &CertificateRequirement,
    certificate: Option<&ClientIdentity>,
) -> bool {
    match certificate {
        None => !requirement.presented,
        Some(identity) => {
            requirement.presented
                && (requirement.subjects.is_empty()
                    || identity
                        .names()
                        .any(|name| requirement.subjects.iter().any(|wanted| wanted == name)))
        }
    }
}

/// Whether the raw query string holds `name` with the expected value. Names and values are
/// compared after form decoding (`%XX` and `+` as space) without building decoded strings.
fn query_has(query: &str, name: &str, expected: &Expected) -> bool {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .any(|pair| {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            form_decoded_equals(raw_name, name)
                && match expected {
                    Expected::Present => true,
                    Expected::Equals(wanted) => form_decoded_equals(raw_value, wanted),
                }
        })
}

/// Compares a form-encoded component with plain text, decoding as it goes. A `%` that does
/// not start a valid escape stands for itself, as browsers treat it.
fn form_decoded_equals(encoded: &str, plain: &str) -> bool {
    let encoded = encoded.as_bytes();
    let mut wanted = plain.bytes();
    let mut position = 0;
    while position < encoded.len() {
        let (decoded, consumed) = match encoded[position] {
            b'+' => (b' ', 1),
            b'%' => match escaped_byte(encoded, position) {
                Some(byte) => (byte, 3),
                None => (b'%', 1),
            },
            byte => (byte, 1),
        };
        if wanted.next() != Some(decoded) {
            return false;
        }
        position += consumed;
    }
    wanted.next().is_none()
}

fn escaped_byte(encoded: &[u8], percent: usize) -> Option<u8> {
    let digits = encoded.get(percent + 1..percent + 3)?;
    let text = std::str::from_utf8(digits).ok()?;
    u8::from_str_radix(text, 16).ok()
}

/// RFC 9110 `tchar`: what methods and header names may be made of.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_comparison() {
        assert!(form_decoded_equals("a%20b", "a b"));
        assert!(form_decoded_equals("a+b", "a b"));
        assert!(form_decoded_equals("a%2Bb", "a+b"));
        assert!(form_decoded_equals("caf%C3%A9", "café"));
        assert!(form_decoded_equals("100%", "100%"));
        assert!(form_decoded_equals("", ""));
        assert!(!form_decoded_equals("ab", "abc"));
        assert!(!form_decoded_equals("abc", "ab"));
        assert!(!form_decoded_equals("a+b", "a+b"));
    }

    #[test]
    fn query_lookup() {
        let query = "a=1&debug&b=x%20y&a=2";
        assert!(query_has(query, "a", &Expected::Equals("2".into())));
        assert!(query_has(query, "a", &Expected::Equals("1".into())));
        assert!(!query_has(query, "a", &Expected::Equals("3".into())));
        assert!(query_has(query, "debug", &Expected::Present));
        assert!(query_has(query, "debug", &Expected::Equals("".into())));
        assert!(query_has(query, "b", &Expected::Equals("x y".into())));
        assert!(!query_has(query, "c", &Expected::Present));
    }

    #[test]
    fn certificate_requirements() {
        let identity = ClientIdentity {
            common_name: Some("client".into()),
            alternative_names: vec!["client.example.com".into(), "spiffe://x/ops".into()],
            ..ClientIdentity::default()
        };
        let require = |presented: bool, subjects: &[&str]| CertificateRequirement {
            presented,
            subjects: subjects.iter().map(|subject| subject.to_string()).collect(),
        };
        assert!(certificate_accepted(&require(true, &[]), Some(&identity)));
        assert!(!certificate_accepted(&require(true, &[]), None));
        assert!(certificate_accepted(
            &require(true, &["client"]),
            Some(&identity)
        ));
        assert!(certificate_accepted(
            &require(true, &["other", "spiffe://x/ops"]),
            Some(&identity)
        ));
        assert!(!certificate_accepted(
            &require(true, &["Client"]),
            Some(&identity)
        ));
        assert!(certificate_accepted(&require(false, &[]), None));
        assert!(!certificate_accepted(&require(false, &[]), Some(&identity)));

        let spec = RouteSpec {
            client_certificate: Some(require(false, &["client", ""])),
            ..RouteSpec::default()
        };
        let mut errors = Vec::new();
        Conditions::compile(&spec, &mut errors);
        let fields: Vec<_> = errors.iter().map(|(field, _)| *field).collect();
        assert_eq!(fields, ["client_certificate", "client_certificate"]);
    }

    #[test]
    fn rejects_invalid_methods_and_header_names() {
        let spec = RouteSpec {
            methods: vec!["GET".into(), "BAD METHOD".into(), String::new()],
            headers: vec![("x:y".into(), "1".into())],
            query_params: vec![(String::new(), "1".into())],
            ..RouteSpec::default()
        };
        let mut errors = Vec::new();
        Conditions::compile(&spec, &mut errors);
        let fields: Vec<_> = errors.iter().map(|(field, _)| *field).collect();
        assert_eq!(fields, ["methods", "methods", "headers", "query_params"]);
    }
}
