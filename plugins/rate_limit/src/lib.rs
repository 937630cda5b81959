//! `loom_rate_limit`: a fixed-window request limit per client.
//!
//! The count for a window lives in the host's shared data under `rl:<window>:<client>`, so
//! every VM instance (worker thread) of the plugin counts against the same limit; updates use
//! compare-and-swap (see `loom_plugin_common::counter`).

use log::warn;
use loom_plugin_common::config::{self, Validate};
use loom_plugin_common::counter::{self, CounterUpdate};
use loom_plugin_common::{JSON_CONTENT_TYPE, now_unix_seconds, request_header};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde::Deserialize;
use std::net::SocketAddr;
use std::rc::Rc;

const PLUGIN: &str = "loom_rate_limit";
const RATE_LIMITED_BODY: &[u8] = br#"{"error":"rate_limited","message":"too many requests"}"#;
/// The client key of requests that lack the configured header: they share one bucket.
const ANONYMOUS_CLIENT: &str = "-";

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RateLimitRoot::default()) });
}}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimitConfig {
    #[serde(default = "default_requests_per_window")]
    requests_per_window: u64,
    #[serde(default = "default_window_seconds")]
    window_seconds: u64,
    #[serde(default = "default_key")]
    key: String,
}

fn default_requests_per_window() -> u64 {
    10
}

fn default_window_seconds() -> u64 {
    60
}

fn default_key() -> String {
    "source.address".to_string()
}

impl Validate for RawRateLimitConfig {
    fn validate(&self) -> Result<(), String> {
        if self.requests_per_window == 0 {
            return Err("requests_per_window: must be at least 1".to_string());
        }
        if self.window_seconds == 0 {
            return Err("window_seconds: must be at least 1".to_string());
        }
        ClientKey::parse(&self.key).map(|_| ())
    }
}

/// What identifies a client.
#[derive(Debug, PartialEq, Eq)]
enum ClientKey {
    /// The downstream IP address (the `source.address` property without its port).
    SourceAddress,
    /// The value of a request header (lowercased name).
    Header(String),
}

impl ClientKey {
    fn parse(key: &str) -> Result<ClientKey, String> {
        if key == "source.address" {
            return Ok(ClientKey::SourceAddress);
        }
        match key.strip_prefix("header:") {
            Some(name) if !name.is_empty() => Ok(ClientKey::Header(name.to_ascii_lowercase())),
            _ => Err(format!(
                "key: \"{key}\" is neither \"source.address\" nor \"header:<name>\""
            )),
        }
    }
}

#[derive(Debug)]
struct RateLimitConfig {
    requests_per_window: u64,
    window_seconds: u64,
    client_key: ClientKey,
    /// `requests_per_window` as text, made once for the response headers.
    limit_text: String,
    /// The plugin entry's name: its counters' prefix in shared data, which entries sharing a
    /// `vm_id` (by default all of them, as in Envoy) share.
    scope: String,
}

#[derive(Default)]
struct RateLimitRoot {
    config: Option<Rc<RateLimitConfig>>,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(raw) = config::load::<RawRateLimitConfig>(self, PLUGIN) else {
            return false;
        };
        let Ok(client_key) = ClientKey::parse(&raw.key) else {
            return false;
        };
        let scope = self
            .get_property(vec!["plugin_name"])
            .and_then(|name| String::from_utf8(name).ok())
            .unwrap_or_default();
        self.config = Some(Rc::new(RateLimitConfig {
            requests_per_window: raw.requests_per_window,
            window_seconds: raw.window_seconds,
            client_key,
            limit_text: raw.requests_per_window.to_string(),
            scope,
        }));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimitHttp {
            config: self.config.clone(),
            remaining: None,
        }))
    }
}

struct RateLimitHttp {
    /// `None` only if the host skipped a successful `on_configure`; requests then pass
    /// unlimited, with a warning.
    config: Option<Rc<RateLimitConfig>>,
    /// Requests left in the window after this one, once this request was admitted.
    remaining: Option<u64>,
}

impl Context for RateLimitHttp {}

impl HttpContext for RateLimitHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            warn!("{PLUGIN}: no configuration, request not limited");
            return Action::Continue;
        };
        let now = now_unix_seconds(self);
        let window = now / config.window_seconds;
        let client = self.client(&config.client_key);
        let shared_key = counter_key(&config.scope, window, &client);
        let limit = config.requests_per_window;
        match counter::update(&shared_key, |count| (count < limit).then(|| count + 1)) {
            CounterUpdate::Stored(count) => {
                self.remaining = Some(limit - count);
                if count == 1 {
                    forget_previous_window(&config.scope, window, &client);
                }
                Action::Continue
            }
            CounterUpdate::Declined(_) => {
                let retry_after = (config.window_seconds - now % config.window_seconds).to_string();
                self.send_http_response(
                    429,
                    vec![
                        JSON_CONTENT_TYPE,
                        ("retry-after", &retry_after),
                        ("x-ratelimit-limit", &config.limit_text),
                        ("x-ratelimit-remaining", "0"),
                    ],
                    Some(RATE_LIMITED_BODY),
                );
                Action::Pause
            }
            // Fail open: the shared store is contended or broken, and refusing traffic the
            // limit may well allow would turn a plugin problem into an outage.
            CounterUpdate::GaveUp => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(remaining), Some(config)) = (self.remaining, &self.config) {
            self.add_http_response_header("x-ratelimit-limit", &config.limit_text);
            self.add_http_response_header("x-ratelimit-remaining", &remaining.to_string());
        }
        Action::Continue
    }
}

impl RateLimitHttp {
    fn client(&self, key: &ClientKey) -> String {
        match key {
            ClientKey::Header(name) => {
                request_header(self, name).unwrap_or_else(|| ANONYMOUS_CLIENT.to_string())
            }
            ClientKey::SourceAddress => self
                .get_property(vec!["source", "address"])
                .map(|address| client_ip(&String::from_utf8_lossy(&address)))
                .unwrap_or_else(|| ANONYMOUS_CLIENT.to_string()),
        }
    }
}

/// `source.address` is `ip:port` in Envoy; the port changes with every connection, so only the
/// IP identifies the client. A value without a port is used as it is.
fn client_ip(address: &str) -> String {
    match address.parse::<SocketAddr>() {
        Ok(socket) => socket.ip().to_string(),
        Err(_) => address.to_string(),
    }
}

/// A client's counter for one window.
fn counter_key(scope: &str, window: u64, client: &str) -> String {
    format!("rl:{scope}:{window}:{client}")
}

/// Blanks the client's count of the window before `window`: nothing reads it again, and
/// without this every client would leave one key per window in shared data forever. The
/// Proxy-Wasm ABI has no delete; `set_shared_data(key, None)` stores an empty value, which
/// hosts may treat as a deletion (Loom does).
fn forget_previous_window(scope: &str, window: u64, client: &str) {
    let previous = counter_key(scope, window.wrapping_sub(1), client);
    if let Ok((Some(value), cas)) = proxy_wasm::hostcalls::get_shared_data(&previous)
        && !value.is_empty()
    {
        // A CAS mismatch means another instance did the same; nothing to do either way.
        let _ = proxy_wasm::hostcalls::set_shared_data(&previous, None, cas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys() {
        assert_eq!(
            ClientKey::parse("source.address"),
            Ok(ClientKey::SourceAddress)
        );
        assert_eq!(
            ClientKey::parse("header:X-Client-Id"),
            Ok(ClientKey::Header("x-client-id".to_string()))
        );
        assert!(ClientKey::parse("header:").is_err());
        assert!(ClientKey::parse("cookie:a").is_err());
    }

    #[test]
    fn client_ip_drops_the_port() {
        assert_eq!(client_ip("10.0.0.1:5555"), "10.0.0.1");
        assert_eq!(client_ip("[::1]:5555"), "::1");
        assert_eq!(client_ip("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn configuration_defaults_and_errors() {
        let raw: RawRateLimitConfig = config::parse(None).unwrap();
        assert_eq!(
            (
                raw.requests_per_window,
                raw.window_seconds,
                raw.key.as_str()
            ),
            (10, 60, "source.address")
        );
        assert!(raw.validate().is_ok());
        let raw: RawRateLimitConfig =
            config::parse(Some(br#"{"requests_per_window": 0}"#)).unwrap();
        assert!(raw.validate().is_err());
    }
}
