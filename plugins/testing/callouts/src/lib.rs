//! `loom_test_callouts` (test only): gRPC callouts, and requests paused until another
//! context resumes them, written against the Rust SDK as an Envoy plugin would be.
//!
//! Request headers choose what the HTTP context does:
//! - `x-grpc-method: NAME`: a unary gRPC call to upstream `grpc`, service `loom.test.Probe`,
//!   method NAME, with the request's `x-grpc-message` as the message and its `x-token` as
//!   metadata, while the request waits. On status 0 the answer goes upstream in request
//!   header `x-grpc-answer`; otherwise the plugin answers 403 with `x-grpc-status` and
//!   `x-grpc-message` (from `proxy_get_status`).
//! - `x-grpc-cancel: 1` (with `x-grpc-method`): a second call is dispatched and cancelled at
//!   once; it must never be reported.
//! - `x-grpc-local: CODE`: a gRPC local answer (`send_grpc_response`) with that status.
//! - `x-postpone: resume | edit | replace | respond | never`: the request pauses with
//!   nothing outstanding. The root context's tick resumes it (after setting its request
//!   header `x-set-by-tick: 1`, for `edit`; after replacing its request headers with
//!   `x-replaced-by-tick: 1` and `host: localhost`, for `replace`), answers it with 202, or
//!   leaves it alone.
//! - `x-postpone-response: 1`: the response headers phase pauses; the tick resumes it.
//! - `x-postpone-body: 1`: the last chunk of the request body pauses; the tick resumes it.
//!
//! Every response says how many gRPC answers the context saw (`x-grpc-callbacks`), and
//! which contexts the tick acted on is counted in `x-postponed-resumed`.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, MapType};

const UPSTREAM: &str = "grpc";
const SERVICE: &str = "loom.test.Probe";
const TICK: Duration = Duration::from_millis(50);

#[derive(Clone, Copy)]
enum Postponed {
    Resume,
    EditThenResume,
    ReplaceThenResume,
    Respond,
    ResumeResponse,
}

thread_local! {
    /// Contexts waiting for the tick, in the order they paused.
    static POSTPONED: RefCell<Vec<(u32, Postponed)>> = const { RefCell::new(Vec::new()) };
    static RESUMED: Cell<u64> = const { Cell::new(0) };
}

proxy_wasm::main! {{
    loom_plugin_common::install_logger();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CalloutsRoot) });
}}

struct CalloutsRoot;

impl Context for CalloutsRoot {}

impl RootContext for CalloutsRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let waiting = POSTPONED.with(|postponed| std::mem::take(&mut *postponed.borrow_mut()));
        for (context_id, what) in waiting {
            let _ = hostcalls::set_effective_context(context_id);
            let _ = match what {
                Postponed::Resume => hostcalls::resume_http_request(),
                Postponed::EditThenResume => hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    "x-set-by-tick",
                    Some("1"),
                )
                .and_then(|()| hostcalls::resume_http_request()),
                Postponed::ReplaceThenResume => hostcalls::set_map(
                    MapType::HttpRequestHeaders,
                    vec![("x-replaced-by-tick", "1"), ("host", "localhost")],
                )
                .and_then(|()| hostcalls::resume_http_request()),
                Postponed::ResumeResponse => hostcalls::resume_http_response(),
                Postponed::Respond => hostcalls::send_http_response(
                    202,
                    vec![("x-answered-by", "tick")],
                    Some(b"answered on tick"),
                ),
            };
            RESUMED.with(|resumed| resumed.set(resumed.get() + 1));
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CalloutsHttp {
            context_id,
            grpc_callbacks: 0,
            cancelled: None,
        }))
    }
}

struct CalloutsHttp {
    context_id: u32,
    grpc_callbacks: u32,
    cancelled: Option<u32>,
}

impl CalloutsHttp {
    fn header(&self, name: &str) -> Option<String> {
        self.get_http_request_header(name)
    }

    fn postpone(&self, what: Postponed) {
        POSTPONED.with(|postponed| postponed.borrow_mut().push((self.context_id, what)));
    }
}

impl Context for CalloutsHttp {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.grpc_callbacks += 1;
        if self.cancelled == Some(token_id) {
            // A cancelled call was reported: make it visible to the test.
            self.send_http_response(500, vec![("x-cancelled-call-reported", "1")], None);
            return;
        }
        if status_code == 0 {
            let answer = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            let answer = String::from_utf8_lossy(&answer).into_owned();
            self.set_http_request_header("x-grpc-answer", Some(&answer));
            self.set_http_request_header(
                "x-grpc-callbacks",
                Some(&self.grpc_callbacks.to_string()),
            );
            self.resume_http_request();
            return;
        }
        let (code, message) = self.get_grpc_status();
        let code = code.to_string();
        let message = message.unwrap_or_default();
        self.send_http_response(
            403,
            vec![("x-grpc-status", &code), ("x-grpc-message", &message)],
            Some(b"refused by the gRPC service"),
        );
    }
}

impl HttpContext for CalloutsHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(code) = self.header("x-grpc-local") {
            let code = code.parse::<i32>().unwrap_or(2);
            let status = match code {
                7 => GrpcStatusCode::PermissionDenied,
                10 => GrpcStatusCode::Aborted,
                16 => GrpcStatusCode::Unauthenticated,
                _ => GrpcStatusCode::Unknown,
            };
            self.send_grpc_response(status, Some("refused by plugin"), vec![("x-local", b"1")]);
            return Action::Pause;
        }
        if let Some(method) = self.header("x-grpc-method") {
            let message = self.header("x-grpc-message").unwrap_or_default();
            let token = self.header("x-token").unwrap_or_default();
            let metadata = vec![("x-token", token.as_bytes())];
            let timeout = Duration::from_millis(1000);
            let call = self.dispatch_grpc_call(
                UPSTREAM,
                SERVICE,
                &method,
                metadata.clone(),
                Some(message.as_bytes()),
                timeout,
            );
            if call.is_err() {
                self.send_http_response(500, vec![("x-dispatch-failed", "1")], None);
                return Action::Pause;
            }
            if self.header("x-grpc-cancel").is_some()
                && let Ok(second) = self.dispatch_grpc_call(
                    UPSTREAM,
                    SERVICE,
                    &method,
                    metadata,
                    Some(b"cancelled"),
                    timeout,
                )
            {
                self.cancel_grpc_call(second);
                self.cancelled = Some(second);
            }
            return Action::Pause;
        }
        match self.header("x-postpone").as_deref() {
            Some("resume") => self.postpone(Postponed::Resume),
            Some("edit") => self.postpone(Postponed::EditThenResume),
            Some("replace") => self.postpone(Postponed::ReplaceThenResume),
            Some("respond") => self.postpone(Postponed::Respond),
            Some(_) => {}
            None => return Action::Continue,
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream && self.header("x-postpone-body").is_some() {
            self.postpone(Postponed::Resume);
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-grpc-callbacks", Some(&self.grpc_callbacks.to_string()));
        let resumed = RESUMED.with(Cell::get).to_string();
        self.set_http_response_header("x-postponed-resumed", Some(&resumed));
        if self.header("x-postpone-response").is_some() {
            self.postpone(Postponed::ResumeResponse);
            return Action::Pause;
        }
        Action::Continue
    }
}
