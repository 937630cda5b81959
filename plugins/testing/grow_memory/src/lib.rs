//! `loom_test_grow_memory` (test only): allocates 1 MiB chunks and keeps them until an
//! allocation fails, to check that the host caps a plugin's linear memory and survives the
//! trap that follows (a failed allocation aborts, and an abort is `unreachable`).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

const CHUNK_BYTES: usize = 1 << 20;

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(GrowRoot) });
}}

struct GrowRoot;

impl Context for GrowRoot {}

impl RootContext for GrowRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(GrowHttp { chunks: Vec::new() }))
    }
}

struct GrowHttp {
    /// Kept in the context so the chunks stay alive (and the allocations cannot be elided).
    chunks: Vec<Vec<u8>>,
}

impl Context for GrowHttp {}

impl HttpContext for GrowHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        loop {
            // A non-zero fill writes every page; zeroed memory could be left untouched.
            let chunk = vec![0xA5_u8; CHUNK_BYTES];
            self.chunks.push(core::hint::black_box(chunk));
        }
    }
}
