//! `loom_ext_auth`: asks an external HTTP service whether to admit each request.
//!
//! The request is paused while a `GET <path>` goes to the configured upstream with the
//! forwarded headers. A 2xx answer admits the request and copies the answer's headers that
//! start with the configured prefix into it (so the service can pass on, say, `x-auth-user`);
//! any other answer is relayed to the client as 401 or 403; no answer is a 503.

use loom_plugin_common::config::{self, Validate};
use loom_plugin_common::{JSON_CONTENT_TYPE, request_header};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde::Deserialize;
use std::rc::Rc;
use std::time::Duration;

const PLUGIN: &str = "loom_ext_auth";
const UNAVAILABLE_BODY: &[u8] = br#"{"error":"auth_unavailable"}"#;
const FORBIDDEN_BODY: &[u8] = br#"{"error":"forbidden"}"#;

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ExtAuthRoot::default()) });
}}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtAuthConfig {
    upstream: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_forward_headers")]
    forward_headers: Vec<String>,
    #[serde(default = "default_copy_prefix")]
    copy_response_headers_prefix: String,
}

fn default_path() -> String {
    "/check".to_string()
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_forward_headers() -> Vec<String> {
    vec!["authorization".to_string()]
}

fn default_copy_prefix() -> String {
    "x-auth-".to_string()
}

impl Validate for ExtAuthConfig {
    fn validate(&self) -> Result<(), String> {
        if self.upstream.is_empty() {
            return Err("upstream: must name a configured upstream".to_string());
        }
        if !self.path.starts_with('/') {
            return Err(format!("path: \"{}\" must start with '/'", self.path));
        }
        if self.timeout_ms == 0 || self.timeout_ms > u64::from(u32::MAX) {
            return Err(format!("timeout_ms: {} is out of range", self.timeout_ms));
        }
        if let Some(index) = self.forward_headers.iter().position(String::is_empty) {
            return Err(format!("forward_headers[{index}]: must not be empty"));
        }
        // An empty prefix would let the auth service overwrite every request header, and
        // would strip every client header below.
        if self.copy_response_headers_prefix.is_empty() {
            return Err("copy_response_headers_prefix: must not be empty".to_string());
        }
        Ok(())
    }
}

#[derive(Default)]
struct ExtAuthRoot {
    config: Option<Rc<ExtAuthConfig>>,
}

impl Context for ExtAuthRoot {}

impl RootContext for ExtAuthRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(mut config) = config::load::<ExtAuthConfig>(self, PLUGIN) else {
            return false;
        };
        for name in &mut config.forward_headers {
            name.make_ascii_lowercase();
        }
        config.copy_response_headers_prefix.make_ascii_lowercase();
        self.config = Some(Rc::new(config));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ExtAuthHttp {
            config: self.config.clone(),
        }))
    }
}

struct ExtAuthHttp {
    /// `None` only if the host skipped a successful `on_configure`: every request then gets
    /// the 503, as when the service is down.
    config: Option<Rc<ExtAuthConfig>>,
}

impl Context for ExtAuthHttp {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(config) = self.config.clone() else {
            return self.unavailable();
        };
        if num_headers == 0 {
            log::warn!("{PLUGIN}: no answer from upstream \"{}\"", config.upstream);
            return self.unavailable();
        }
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|status| status.trim().parse::<u16>().ok());
        let Some(status) = status else {
            log::warn!(
                "{PLUGIN}: answer from \"{}\" has no valid :status",
                config.upstream
            );
            return self.unavailable();
        };
        let answer_headers = self.get_http_call_response_headers_bytes();
        if (200..300).contains(&status) {
            for (name, value) in &answer_headers {
                if name
                    .to_ascii_lowercase()
                    .starts_with(&config.copy_response_headers_prefix)
                {
                    self.set_http_request_header_bytes(name, Some(value));
                }
            }
            self.resume_http_request();
            return;
        }
        let status = if status == 401 || status == 403 {
            status
        } else {
            403
        };
        let body = match self.get_http_call_response_body(0, body_size) {
            Some(body) if !body.is_empty() => body,
            _ => FORBIDDEN_BODY.to_vec(),
        };
        let mut headers = vec![JSON_CONTENT_TYPE];
        // A 401 challenge from the service tells the client how to authenticate.
        let challenge = answer_headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("www-authenticate"))
            .and_then(|(_, value)| std::str::from_utf8(value).ok());
        if let (401, Some(challenge)) = (status, challenge) {
            headers.push(("www-authenticate", challenge));
        }
        self.send_http_response(u32::from(status), headers, Some(&body));
    }
}

impl HttpContext for ExtAuthHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            self.unavailable();
            return Action::Pause;
        };
        self.remove_spoofable_headers(&config.copy_response_headers_prefix);

        let forwarded: Vec<(&str, String)> = config
            .forward_headers
            .iter()
            .filter_map(|name| Some((name.as_str(), request_header(self, name)?)))
            .collect();
        let original_path = request_header(self, ":path");
        let original_method = request_header(self, ":method");
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", "GET"),
            (":path", &config.path),
            (":authority", &config.upstream),
        ];
        headers.extend(
            forwarded
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        );
        if let Some(path) = &original_path {
            headers.push(("x-original-path", path));
        }
        if let Some(method) = &original_method {
            headers.push(("x-original-method", method));
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        match self.dispatch_http_call(&config.upstream, headers, None, vec![], timeout) {
            Ok(_token) => Action::Pause,
            Err(status) => {
                log::warn!(
                    "{PLUGIN}: call to upstream \"{}\" not dispatched: {status:?}",
                    config.upstream
                );
                self.unavailable();
                Action::Pause
            }
        }
    }
}

impl ExtAuthHttp {
    fn unavailable(&self) {
        self.send_http_response(503, vec![JSON_CONTENT_TYPE], Some(UNAVAILABLE_BODY));
    }

    /// Headers with the copy prefix are the auth service's to set; a client sending
    /// `x-auth-user` itself must not reach the upstream with it when the service stays silent.
    fn remove_spoofable_headers(&self, prefix: &str) {
        let spoofed: Vec<String> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .map(|(name, _)| name.to_ascii_lowercase())
            .filter(|name| name.starts_with(prefix))
            .collect();
        for name in &spoofed {
            self.set_http_request_header(name, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_defaults_and_errors() {
        let config: ExtAuthConfig = config::parse(Some(br#"{"upstream": "auth"}"#)).unwrap();
        assert!(config.validate().is_ok());
        assert_eq!(config.path, "/check");
        assert_eq!(config.timeout_ms, 1000);
        assert_eq!(config.forward_headers, vec!["authorization".to_string()]);
        assert_eq!(config.copy_response_headers_prefix, "x-auth-");
        assert!(config::parse::<ExtAuthConfig>(None).is_err());
        let config: ExtAuthConfig = config::parse(Some(
            br#"{"upstream": "auth", "copy_response_headers_prefix": ""}"#,
        ))
        .unwrap();
        assert!(config.validate().is_err());
    }
}
