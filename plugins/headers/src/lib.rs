//! `loom_headers`: sets, adds and removes request and response headers; `request.set` may also
//! change `:path`, `:authority` and `:method`.
//!
//! The configuration is read once per VM in `on_configure`; each HTTP context holds a shared
//! reference to it, so a request costs only the header host calls themselves.

use loom_plugin_common::config::{self, Validate};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::rc::Rc;

const PLUGIN: &str = "loom_headers";

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(HeadersRoot::default()) });
}}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadersConfig {
    #[serde(default)]
    request: HeaderOperations,
    #[serde(default)]
    response: HeaderOperations,
}

/// Applied in the order remove, set, add, so `remove: [x]` plus `add: {x: ..}` replaces every
/// earlier value of `x` with one new value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderOperations {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl Validate for HeadersConfig {
    fn validate(&self) -> Result<(), String> {
        self.request.validate("request")?;
        self.response.validate("response")
    }
}

impl HeaderOperations {
    fn validate(&self, section: &str) -> Result<(), String> {
        let names = self.set.keys().map(|name| ("set", name));
        let names = names.chain(self.add.keys().map(|name| ("add", name)));
        let names = names.chain(self.remove.iter().map(|name| ("remove", name)));
        for (operation, name) in names {
            // `set` may change the request's pseudo-headers (`:path`, `:authority`,
            // `:method`), as Envoy plugins do to re-route a request.
            let pseudo = operation == "set"
                && section == "request"
                && matches!(name.as_str(), ":path" | ":authority" | ":method");
            if pseudo {
                continue;
            }
            if name.is_empty() || name.bytes().any(|byte| !is_header_name_byte(byte)) {
                return Err(format!(
                    "{section}.{operation}: \"{name}\" is not a valid header name"
                ));
            }
        }
        Ok(())
    }

    /// Header names are matched case-insensitively by HTTP but HTTP/2 requires lowercase on the
    /// wire, so names are lowercased once here rather than by the host on every request.
    fn lowercased(self) -> HeaderOperations {
        let lower_map = |map: BTreeMap<String, String>| {
            map.into_iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value))
                .collect()
        };
        HeaderOperations {
            set: lower_map(self.set),
            add: lower_map(self.add),
            remove: self
                .remove
                .into_iter()
                .map(|name| name.to_ascii_lowercase())
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// RFC 9110 token characters.
fn is_header_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[derive(Default)]
struct HeadersRoot {
    config: Rc<HeadersConfig>,
}

impl Context for HeadersRoot {}

impl RootContext for HeadersRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = config::load::<HeadersConfig>(self, PLUGIN) else {
            return false;
        };
        self.config = Rc::new(HeadersConfig {
            request: config.request.lowercased(),
            response: config.response.lowercased(),
        });
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HeadersHttp {
            config: Rc::clone(&self.config),
        }))
    }
}

struct HeadersHttp {
    config: Rc<HeadersConfig>,
}

impl Context for HeadersHttp {}

impl HttpContext for HeadersHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let operations = &self.config.request;
        if operations.is_empty() {
            return Action::Continue;
        }
        for name in &operations.remove {
            self.set_http_request_header(name, None);
        }
        for (name, value) in &operations.set {
            self.set_http_request_header(name, Some(value));
        }
        for (name, value) in &operations.add {
            self.add_http_request_header(name, value);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let operations = &self.config.response;
        if operations.is_empty() {
            return Action::Continue;
        }
        for name in &operations.remove {
            self.set_http_response_header(name, None);
        }
        for (name, value) in &operations.set {
            self.set_http_response_header(name, Some(value));
        }
        for (name, value) in &operations.add {
            self.add_http_response_header(name, value);
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_section_and_rejects_bad_names() {
        let config: HeadersConfig = config::parse(Some(
            br#"{"request": {"set": {"X-A": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]},
                 "response": {"remove": ["server"]}}"#,
        ))
        .unwrap();
        assert!(config.validate().is_ok());
        let request = config.request.lowercased();
        assert_eq!(request.set.get("x-a").map(String::as_str), Some("1"));
        assert_eq!(config.response.remove, vec!["server".to_string()]);

        let config: HeadersConfig =
            config::parse(Some(br#"{"response": {"set": {"bad name": "1"}}}"#)).unwrap();
        let error = config.validate().unwrap_err();
        assert!(error.starts_with("response.set:"), "{error}");
        assert!(config::parse::<HeadersConfig>(Some(br#"{"requests": {}}"#)).is_err());
    }
}
