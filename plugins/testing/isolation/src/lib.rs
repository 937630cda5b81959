//! `loom_test_isolation` (test only): echoes what one HTTP context saw of its own request (the
//! `x-marker` header and the body) in response headers, with the context id. Concurrent
//! requests with distinct markers show whether the host ever mixes up contexts.

use loom_plugin_common::request_header;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

/// At most this many bytes of the request body go into `x-plugin-body`.
const BODY_ECHO_BYTES: usize = 200;

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(IsolationRoot) });
}}

struct IsolationRoot;

impl Context for IsolationRoot {}

impl RootContext for IsolationRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(IsolationHttp {
            context_id,
            marker: None,
            body: None,
        }))
    }
}

struct IsolationHttp {
    context_id: u32,
    marker: Option<String>,
    body: Option<Vec<u8>>,
}

impl Context for IsolationHttp {}

impl HttpContext for IsolationHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.marker = request_header(self, "x-marker");
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        self.body = self.get_http_request_body(0, body_size);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let marker = self.marker.as_deref().unwrap_or("none");
        self.add_http_response_header("x-plugin-marker", marker);
        let body = match &self.body {
            Some(body) => header_safe(&body[..body.len().min(BODY_ECHO_BYTES)]),
            None => "none".to_string(),
        };
        self.add_http_response_header("x-plugin-body", &body);
        self.add_http_response_header("x-plugin-context", &self.context_id.to_string());
        Action::Continue
    }
}

/// The bytes as UTF-8 (lossy: a cut through a character becomes U+FFFD), with control
/// characters, which a header value must not contain, replaced by `?`.
fn header_safe(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|character| {
            if character.is_control() {
                '?'
            } else {
                character
            }
        })
        .collect()
}
