//! Helpers shared by Loom's Proxy-Wasm plugins.
//!
//! Every plugin reads a JSON configuration in `on_configure` and several keep counters in the
//! host's shared data; both are easy to get subtly wrong (unknown keys silently ignored, lost
//! updates under concurrency), so they live here once.

pub mod config;
pub mod counter;

use proxy_wasm::traits::{Context, HttpContext};
use std::time::UNIX_EPOCH;

/// `content-type` header for the JSON bodies the plugins send in local responses.
pub const JSON_CONTENT_TYPE: (&str, &str) = ("content-type", "application/json");

/// Seconds since the Unix epoch by the host's clock (0 if the host's clock is before 1970).
pub fn now_unix_seconds(context: &dyn Context) -> u64 {
    context
        .get_current_time()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Installs the SDK's logger (which routes the `log` macros to `proxy_log`) and its panic hook
/// (which logs the panic message at critical level before the module traps).
///
/// Info, not trace: the host filters again by its own level, but formatting a message costs
/// a call into the host either way, so debug chatter stays out of the hot path.
pub fn install_logger() {
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
}

/// A request header as text. Unlike the SDK's `get_http_request_header`, which traps on a value
/// that is not UTF-8, such a value reads as absent: a client must not be able to crash the
/// plugin with one odd byte.
pub fn request_header(http: &dyn HttpContext, name: &str) -> Option<String> {
    http.get_http_request_header_bytes(name)
        .and_then(|value| String::from_utf8(value).ok())
}

/// A response header as text; a value that is not UTF-8 reads as absent (see
/// [`request_header`]).
pub fn response_header(http: &dyn HttpContext, name: &str) -> Option<String> {
    http.get_http_response_header_bytes(name)
        .and_then(|value| String::from_utf8(value).ok())
}
