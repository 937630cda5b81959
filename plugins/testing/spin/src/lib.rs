//! `loom_test_spin` (test only): never returns from `on_http_request_headers`, to check that the
//! host bounds a plugin's CPU time (fuel, epoch interruption or a deadline) and recovers.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(SpinRoot) });
}}

struct SpinRoot;

impl Context for SpinRoot {}

impl RootContext for SpinRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(SpinHttp))
    }
}

struct SpinHttp;

impl Context for SpinHttp {}

impl HttpContext for SpinHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // black_box keeps the optimiser from proving the loop has no effect: the module must
        // contain a real loop that burns instructions.
        let mut counter: u64 = 0;
        loop {
            counter = core::hint::black_box(counter.wrapping_add(1));
        }
    }
}
