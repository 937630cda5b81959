//! `security_headers`: the response headers browsers use to protect a site's users (HSTS,
//! `X-Content-Type-Options`, `X-Frame-Options`, `Referrer-Policy`, `Content-Security-Policy`,
//! `Permissions-Policy`), set on every answer of the route, and optionally the removal of
//! headers that advertise the upstream's software (`Server`, `X-Powered-By`).
//!
//! Each header has a default (see [`SecurityHeadersConfig`]); a value replaces it and an empty
//! string removes it. The values are validated and turned into header values once, at load.

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SecurityHeadersConfig {
    /// `Strict-Transport-Security`; browsers ignore it on plain HTTP.
    pub strict_transport_security: String,
    pub content_type_options: String,
    pub frame_options: String,
    pub referrer_policy: String,
    /// No default: a policy that fits one site breaks another.
    pub content_security_policy: String,
    pub permissions_policy: String,
    /// Remove `Server` and `X-Powered-By` from upstream answers.
    pub hide_server: bool,
    /// More upstream headers to remove.
    pub remove: Vec<String>,
}

/// The defaults, kept as `'static` text so that their header values are static too (a clone
/// of one copies a pointer instead of counting a reference).
const DEFAULT_VALUES: [&str; 4] = [
    "max-age=31536000; includeSubDomains",
    "nosniff",
    "DENY",
    "strict-origin-when-cross-origin",
];

impl Default for SecurityHeadersConfig {
    fn default() -> Self {
        SecurityHeadersConfig {
            strict_transport_security: DEFAULT_VALUES[0].into(),
            content_type_options: DEFAULT_VALUES[1].into(),
            frame_options: DEFAULT_VALUES[2].into(),
            referrer_policy: DEFAULT_VALUES[3].into(),
            content_security_policy: String::new(),
            permissions_policy: String::new(),
            hide_server: false,
            remove: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct SecurityHeaders {
    /// Each header under its parsed name, so that setting it parses nothing.
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    config: SecurityHeadersConfig,
}

impl SecurityHeaders {
    pub fn compile(
        config: SecurityHeadersConfig,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<SecurityHeaders> {
        let mut set = Vec::new();
        for (field, name, value) in [
            (
                "strict_transport_security",
                http::header::STRICT_TRANSPORT_SECURITY,
                &config.strict_transport_security,
            ),
            (
                "content_type_options",
                http::header::X_CONTENT_TYPE_OPTIONS,
                &config.content_type_options,
            ),
            (
                "frame_options",
                http::header::X_FRAME_OPTIONS,
                &config.frame_options,
            ),
            (
                "referrer_policy",
                http::header::REFERRER_POLICY,
                &config.referrer_policy,
            ),
            (
                "content_security_policy",
                http::header::CONTENT_SECURITY_POLICY,
                &config.content_security_policy,
            ),
            (
                "permissions_policy",
                HeaderName::from_static("permissions-policy"),
                &config.permissions_policy,
            ),
        ] {
            if value.is_empty() {
                continue;
            }
            if let Some(default) = DEFAULT_VALUES
                .iter()
                .find(|default| **default == value.as_str())
            {
                set.push((name, HeaderValue::from_static(default)));
                continue;
            }
            match super::header_value(value) {
                Ok(value) => set.push((name, value)),
                Err(message) => report(field, message),
            }
        }
        let mut remove = Vec::new();
        if config.hide_server {
            remove.push(http::header::SERVER);
            remove.push(HeaderName::from_static("x-powered-by"));
        }
        for (index, name) in config.remove.iter().enumerate() {
            match super::header_name(name) {
                Ok(name) => remove.push(name),
                Err(message) => report(&format!("remove[{index}]"), message),
            }
        }
        Some(SecurityHeaders {
            set,
            remove,
            config,
        })
    }

    /// How many headers it sets on every response.
    pub fn header_count(&self) -> usize {
        self.set.len()
    }

    pub fn on_response(&self, response: &mut http::response::Parts) {
        for name in &self.remove {
            response.headers.remove(name);
        }
        for (name, value) in &self.set {
            response.headers.insert(name.clone(), value.clone());
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "set": self.set.iter().map(|(name, value)| (name.to_string(), serde_json::Value::from(value.to_str().unwrap_or_default()))).collect::<serde_json::Map<_, _>>(),
            "remove": self.remove.iter().map(HeaderName::as_str).collect::<Vec<_>>(),
            "hide_server": self.config.hide_server,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_removals_and_hidden_server() {
        let config = SecurityHeadersConfig {
            frame_options: "SAMEORIGIN".into(),
            referrer_policy: String::new(),
            content_security_policy: "default-src 'self'".into(),
            hide_server: true,
            ..SecurityHeadersConfig::default()
        };
        let policy =
            SecurityHeaders::compile(config, &mut |field, message| panic!("{field}: {message}"))
                .unwrap();
        let mut response = http::Response::new(()).into_parts().0;
        for (name, value) in [
            ("server", "nginx/1.2"),
            ("x-powered-by", "PHP"),
            ("x-frame-options", "ALLOWALL"),
        ] {
            response
                .headers
                .insert(name, HeaderValue::from_static(value));
        }
        policy.on_response(&mut response);
        let header = |name: &str| {
            response
                .headers
                .get(name)
                .map(|value| value.to_str().unwrap())
        };
        assert_eq!(header("x-frame-options"), Some("SAMEORIGIN"));
        assert_eq!(header("x-content-type-options"), Some("nosniff"));
        assert_eq!(
            header("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains")
        );
        assert_eq!(
            header("content-security-policy"),
            Some("default-src 'self'")
        );
        assert_eq!(header("referrer-policy"), None);
        assert_eq!(header("server"), None);
        assert_eq!(header("x-powered-by"), None);
    }

    #[test]
    fn invalid_values_are_reported_by_field() {
        let config = SecurityHeadersConfig {
            permissions_policy: "bad\nvalue".into(),
            remove: vec!["bad name".into()],
            ..SecurityHeadersConfig::default()
        };
        let mut fields = Vec::new();
        SecurityHeaders::compile(config, &mut |field, _| fields.push(field.to_string()));
        assert_eq!(fields, ["permissions_policy", "remove[0]"]);
    }
}
