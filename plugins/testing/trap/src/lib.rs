//! `loom_test_trap` (test only): panics on requests with `x-trap: 1`. With `panic = "abort"`
//! the panic is a wasm `unreachable` trap (after the SDK's panic hook logs the message at
//! critical level). Other requests get `x-trap-plugin: passed`, so a test can see the plugin
//! work, trap, and work again once the host has replaced the broken instance.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TrapRoot) });
}}

struct TrapRoot;

impl Context for TrapRoot {}

impl RootContext for TrapRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TrapHttp))
    }
}

struct TrapHttp;

impl Context for TrapHttp {}

impl HttpContext for TrapHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header_bytes("x-trap").as_deref() == Some(b"1") {
            panic!("deliberate trap");
        }
        self.set_http_request_header("x-trap-plugin", Some("passed"));
        Action::Continue
    }
}
