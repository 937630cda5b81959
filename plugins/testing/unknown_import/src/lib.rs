//! `loom_test_unknown_import` (test only): imports `env.proxy_not_a_real_hostcall`, which no
//! host provides, so the module must fail to instantiate and the host must reject the plugin
//! at load time with an error naming the import.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_not_a_real_hostcall(x: i32) -> i32;
}

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(UnknownImportRoot) });
}}

struct UnknownImportRoot;

impl Context for UnknownImportRoot {}

impl RootContext for UnknownImportRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(UnknownImportHttp))
    }
}

struct UnknownImportHttp;

impl Context for UnknownImportHttp {}

impl HttpContext for UnknownImportHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Called from a live callback so the linker keeps the import; black_box stops the
        // argument from being folded away.
        // SAFETY: no host defines this function, so this call never runs: instantiation fails.
        let answer = unsafe { proxy_not_a_real_hostcall(core::hint::black_box(1)) };
        self.set_http_request_header("x-unknown-import", Some(&answer.to_string()));
        Action::Continue
    }
}
