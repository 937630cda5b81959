//! `loom_api_key_auth`: admits requests that carry a known API key and tells the upstream who
//! the caller is (`x-consumer-name`); answers 401 otherwise.

use loom_plugin_common::config::{self, Validate};
use loom_plugin_common::{JSON_CONTENT_TYPE, request_header};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::rc::Rc;

const PLUGIN: &str = "loom_api_key_auth";
const CONSUMER_HEADER: &str = "x-consumer-name";
const UNAUTHORIZED_BODY: &[u8] =
    br#"{"error":"unauthorized","message":"missing or invalid API key"}"#;

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ApiKeyRoot::default()) });
}}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyConfig {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default)]
    query_param: Option<String>,
    /// API key → consumer name.
    keys: BTreeMap<String, String>,
    #[serde(default = "default_hide_credentials")]
    hide_credentials: bool,
}

fn default_header() -> String {
    "x-api-key".to_string()
}

fn default_hide_credentials() -> bool {
    true
}

impl Validate for ApiKeyConfig {
    fn validate(&self) -> Result<(), String> {
        if self.header.is_empty() {
            return Err("header: must not be empty".to_string());
        }
        if self.query_param.as_deref() == Some("") {
            return Err("query_param: must not be empty".to_string());
        }
        if self.keys.is_empty() {
            return Err("keys: no keys configured, every request would be rejected".to_string());
        }
        if let Some((_, consumer)) = self.keys.iter().find(|(key, _)| key.is_empty()) {
            return Err(format!("keys: the key of consumer \"{consumer}\" is empty"));
        }
        Ok(())
    }
}

#[derive(Default)]
struct ApiKeyRoot {
    config: Option<Rc<ApiKeyConfig>>,
}

impl Context for ApiKeyRoot {}

impl RootContext for ApiKeyRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(mut config) = config::load::<ApiKeyConfig>(self, PLUGIN) else {
            return false;
        };
        config.header.make_ascii_lowercase();
        self.config = Some(Rc::new(config));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ApiKeyHttp {
            config: self.config.clone(),
        }))
    }
}

struct ApiKeyHttp {
    /// `None` only if the host creates HTTP contexts without a successful `on_configure`;
    /// then every request is rejected rather than let through unauthenticated.
    config: Option<Rc<ApiKeyConfig>>,
}

impl Context for ApiKeyHttp {}

impl HttpContext for ApiKeyHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            return self.reject();
        };
        let (key, from_query) = match request_header(self, &config.header) {
            Some(key) => (Some(key), None),
            None => match (&config.query_param, request_header(self, ":path")) {
                (Some(param), Some(path)) => (query_value(&path, param), Some(path)),
                _ => (None, None),
            },
        };
        let Some(consumer) = key.as_deref().and_then(|key| config.keys.get(key)) else {
            return self.reject();
        };
        if config.hide_credentials {
            match (&from_query, &config.query_param) {
                (Some(path), Some(param)) => {
                    self.set_http_request_header(":path", Some(&without_query_param(path, param)));
                }
                _ => self.set_http_request_header(&config.header, None),
            }
        }
        self.set_http_request_header(CONSUMER_HEADER, Some(consumer));
        Action::Continue
    }
}

impl ApiKeyHttp {
    fn reject(&self) -> Action {
        self.send_http_response(
            401,
            vec![JSON_CONTENT_TYPE, ("www-authenticate", "ApiKey")],
            Some(UNAUTHORIZED_BODY),
        );
        Action::Pause
    }
}

/// The percent-decoded value of the first `name=value` pair called `name` in the query of
/// `path`, if there is one and it decodes to UTF-8.
fn query_value(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (pair_name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(pair_name)? == name)
            .then(|| percent_decode(value))
            .flatten()
    })
}

/// `path` without any query pair called `name`, dropping the `?` if nothing is left.
fn without_query_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let pair_name = pair
                .split_once('=')
                .map_or(*pair, |(pair_name, _)| pair_name);
            percent_decode(pair_name).as_deref() != Some(name)
        })
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// Decodes `%XX` escapes and `+` (space, as in form encoding); `None` for a malformed escape or
/// a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut decoded = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'%' => {
                let high = hex_digit(bytes.next()?)?;
                let low = hex_digit(bytes.next()?)?;
                decoded.push(high << 4 | low);
            }
            b'+' => decoded.push(b' '),
            other => decoded.push(other),
        }
    }
    String::from_utf8(decoded).ok()
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).map(|digit| digit as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_decodes_the_query_key() {
        assert_eq!(
            query_value("/a?api_key=k1", "api_key").as_deref(),
            Some("k1")
        );
        assert_eq!(
            query_value("/a?x=1&api_key=a%2Bb&api_key=2", "api_key").as_deref(),
            Some("a+b")
        );
        assert_eq!(query_value("/a?api_key", "api_key").as_deref(), Some(""));
        assert_eq!(query_value("/a?x=1", "api_key"), None);
        assert_eq!(query_value("/a", "api_key"), None);
        assert_eq!(query_value("/a?api_key=%zz", "api_key"), None);
    }

    #[test]
    fn hides_the_query_key() {
        assert_eq!(without_query_param("/a?api_key=k1", "api_key"), "/a");
        assert_eq!(
            without_query_param("/a?x=1&api_key=k1&y=2", "api_key"),
            "/a?x=1&y=2"
        );
        assert_eq!(without_query_param("/a", "api_key"), "/a");
    }

    #[test]
    fn configuration_needs_keys() {
        let config: ApiKeyConfig = config::parse(Some(br#"{"keys": {}}"#)).unwrap();
        assert!(config.validate().is_err());
        let config: ApiKeyConfig = config::parse(Some(br#"{"keys": {"k": "alice"}}"#)).unwrap();
        assert!(config.validate().is_ok());
        assert_eq!(config.header, "x-api-key");
        assert!(config.hide_credentials);
        assert!(config::parse::<ApiKeyConfig>(None).is_err());
    }
}
