//! `loom_test_vm_sharing` (test only): what `root_id` and `vm_id` mean to a plugin.
//!
//! When its configuration is a non-empty string, the root context stores it in shared data
//! under `token` (as the AssemblyScript SDK's singleton example stores the token it fetched).
//! Every HTTP context answers with the `plugin_root_id` and `plugin_vm_id` properties its root
//! context saw, and the `token` it finds in shared data (`none` when there is none).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(SharingRoot { root_id: String::new(), vm_id: String::new() })
    });
}}

struct SharingRoot {
    root_id: String,
    vm_id: String,
}

fn property(context: &dyn Context, name: &str) -> String {
    context
        .get_property(vec![name])
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| "missing".to_string())
}

impl Context for SharingRoot {}

impl RootContext for SharingRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        self.root_id = property(self, "plugin_root_id");
        self.vm_id = property(self, "plugin_vm_id");
        if size > 0
            && let Some(token) = self.get_plugin_configuration()
            && !token.is_empty()
        {
            return self.set_shared_data("token", Some(&token), None).is_ok();
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(SharingHttp {
            root_id: self.root_id.clone(),
            vm_id: self.vm_id.clone(),
        }))
    }
}

struct SharingHttp {
    root_id: String,
    vm_id: String,
}

impl Context for SharingHttp {}

impl HttpContext for SharingHttp {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let token = match self.get_shared_data("token") {
            (Some(bytes), _) => String::from_utf8(bytes).unwrap_or_else(|_| "binary".into()),
            (None, _) => "none".to_string(),
        };
        self.add_http_response_header("x-root-id", &self.root_id.clone());
        self.add_http_response_header("x-vm-id", &self.vm_id.clone());
        self.add_http_response_header("x-token", &token);
        Action::Continue
    }
}
