//! The host side of the Proxy-Wasm ABI: the state each instance's host functions work on,
//! and the import table.
//!
//! Host functions run synchronously inside a callback. The request data they read and change
//! (Pingora's header structs, body buffers) belongs to the request, not to the instance, so
//! the pipeline lends it for the duration of one callback through a [`Frame`]: see
//! [`HostState::enter`].

mod functions;
pub mod maps;
mod memory;
mod properties;
mod wasi;

use std::ptr::NonNull;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use wasmer::{Function, FunctionEnv, Imports, Memory, Module, Store, TypedFunction};

use super::grpc_call::{GrpcCallResponse, PendingGrpcCall};
use super::metrics::PluginMetric;
use super::runtime::PluginShared;

pub use memory::GuestMemoryError;

/// A header map lent to a callback: writable while the request or response can still
/// change, read-only afterwards (`on_log`).
pub enum Lent<'a, T> {
    Writable(&'a mut T),
    ReadOnly(&'a T),
}

impl<T> Lent<'_, T> {
    pub fn get(&self) -> &T {
        match self {
            Lent::Writable(value) => value,
            Lent::ReadOnly(value) => value,
        }
    }

    pub fn get_mut(&mut self) -> Option<&mut T> {
        match self {
            Lent::Writable(value) => Some(value),
            Lent::ReadOnly(_) => None,
        }
    }
}

/// What one request knows about itself, for properties. Built once per request, only on
/// routes with plugins.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub client: Option<std::net::SocketAddr>,
    pub server: Option<std::net::SocketAddr>,
    pub connection_id: u64,
    pub request_id: Bytes,
    pub route: Option<Arc<str>>,
    /// The route's `metadata:` map, read as Envoy's route metadata.
    pub route_metadata: Option<Arc<std::collections::BTreeMap<String, String>>>,
    /// Request start, nanoseconds since the Unix epoch.
    pub started_unix_nanos: u64,
    pub scheme: &'static str,
    pub protocol: &'static str,
    pub upstream_address: Option<std::net::SocketAddr>,
    /// The upstream the request goes to (Envoy's cluster): the route's own until the
    /// attempt's upstream is chosen (a canary target may replace it).
    pub upstream_name: Option<Arc<str>>,
    pub response_code: u16,
    /// The TLS version of the client connection (`TLSv1.3`), empty on plain connections.
    pub tls_version: Arc<str>,
    /// The client certificate verified in the handshake (listeners with `tls.client_ca`).
    pub client_certificate: Option<Arc<crate::gateway::client_cert::ClientIdentity>>,
    /// The request's W3C trace id (`loom.trace_id`), 0 when tracing is off.
    pub trace_id: u128,
}

/// The answer to a `proxy_http_call`, shown to `on_http_call_response`.
#[derive(Debug, Clone, Default)]
pub struct HttpCallResponse {
    /// Empty when the call failed (timeout, refused, unknown upstream): the callback then
    /// gets zero headers, as in Envoy.
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
    pub trailers: Vec<(String, Bytes)>,
}

/// An HTTP call dispatched by a plugin, run by the pipeline (or the plugin's background
/// task) once the callback returns.
#[derive(Debug, Clone)]
pub struct PendingCall {
    pub token: u32,
    pub upstream: String,
    /// Includes `:method`, `:path` and `:authority`.
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
    pub timeout: std::time::Duration,
}

/// A call a plugin dispatched: HTTP (`proxy_http_call`) or gRPC (`proxy_grpc_call`).
#[derive(Debug, Clone)]
pub enum Callout {
    Http(PendingCall),
    Grpc(PendingGrpcCall),
}

impl Callout {
    pub fn token(&self) -> u32 {
        match self {
            Callout::Http(call) => call.token,
            Callout::Grpc(call) => call.token,
        }
    }
}

/// How a callout ended, handed to the callback that reports it.
#[derive(Debug, Clone)]
pub enum CalloutAnswer {
    Http(HttpCallResponse),
    Grpc(GrpcCallResponse),
}

/// A response a plugin asked for with `proxy_send_local_response`.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
    /// The gRPC status it was sent with, until [`LocalResponse::shaped`] is applied for
    /// the request it answers (an answer sent from another context waits for that).
    pub pending_grpc_status: Option<u32>,
}

/// Whether `request` is gRPC as Envoy recognises one: `application/grpc`,
/// `application/grpc+proto` and the like, not gRPC-Web (`application/grpc-web…`).
/// Looked up only when a local answer carries a gRPC status.
pub fn is_grpc_request(request: &RequestHeader) -> bool {
    request
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

impl LocalResponse {
    pub fn new(status: u16, headers: Vec<(String, Bytes)>, body: Bytes) -> LocalResponse {
        LocalResponse {
            status,
            headers,
            body,
            pending_grpc_status: None,
        }
    }

    fn with_grpc_status(mut self, grpc_status: Option<u32>) -> LocalResponse {
        self.pending_grpc_status = grpc_status;
        self
    }

    /// The answer as Envoy sends it: to a gRPC request, a local answer with a gRPC status
    /// is HTTP 200, trailers-only, with that status and the body text as `grpc-message`;
    /// to any other request the gRPC status is ignored.
    pub fn shaped(
        mut self,
        grpc_status: Option<u32>,
        request: Option<&RequestHeader>,
    ) -> LocalResponse {
        self.pending_grpc_status = None;
        let Some(grpc_status) = grpc_status.filter(|_| request.is_some_and(is_grpc_request)) else {
            return self;
        };
        self.headers.retain(|(name, _)| {
            !matches!(
                name.as_str(),
                "content-type" | "grpc-status" | "grpc-message"
            )
        });
        self.headers.push((
            "content-type".into(),
            Bytes::from_static(b"application/grpc"),
        ));
        self.headers
            .push(("grpc-status".into(), Bytes::from(grpc_status.to_string())));
        if !self.body.is_empty() {
            let message =
                percent_encoding::percent_encode(&self.body, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            self.headers
                .push(("grpc-message".into(), Bytes::from(message)));
        }
        self.status = 200;
        self.body = Bytes::new();
        self
    }
}

/// One HTTP context's requests to the host, collected during its callbacks.
#[derive(Debug, Default)]
pub struct StreamState {
    pub local_response: Option<LocalResponse>,
    pub pending_calls: Vec<Callout>,
    /// Calls dispatched earlier whose answers are being handed over: still cancellable.
    pub in_flight_calls: Vec<u32>,
    /// Tokens of calls cancelled (`proxy_grpc_cancel`) before their answer was handed over.
    pub cancelled_calls: Vec<u32>,
    /// `proxy_continue_stream(HTTP_REQUEST)` was called.
    pub resume_request: bool,
    /// The plugin changed the request's headers: what routing matches on may have changed.
    /// The gateway takes it after each request-headers step.
    pub request_headers_written: bool,
    /// Of those, `:path`, `:authority`, `:method` or `Host`, which every route matches on.
    pub request_target_written: bool,
    pub resume_response: bool,
    /// `proxy_close_stream`: reset the stream without a response.
    pub close: bool,
    /// Values stored with `proxy_set_property`, visible to this request only.
    pub properties: Vec<(Vec<u8>, Bytes)>,
}

/// A body buffer lent to a body callback. Often the chunk Pingora read, uncopied; a write
/// replaces it.
pub struct BodyLoan<'a> {
    pub response: bool,
    pub bytes: &'a mut Bytes,
}

/// Everything a callback may touch besides the instance itself.
pub struct Frame<'a> {
    pub request: Option<Lent<'a, RequestHeader>>,
    pub response: Option<Lent<'a, ResponseHeader>>,
    pub response_trailers: Option<&'a mut http::HeaderMap>,
    pub body: Option<BodyLoan<'a>>,
    /// The answer the running callback reports (`on_http_call_response`, `on_grpc_*`).
    pub callout: Option<&'a CalloutAnswer>,
    /// The context the callback runs for (the root context's id when no request is lent).
    pub context_id: u32,
    pub stream: &'a mut StreamState,
    pub facts: &'a RequestFacts,
}

/// The per-instance state behind every host function.
pub struct HostState {
    pub shared: Arc<PluginShared>,
    /// Which of the plugin's instances this is (queues deliver to the registering one).
    pub shard: usize,
    pub memory: Option<Memory>,
    /// The guest's allocator (`proxy_on_memory_allocate`, or `malloc` in older SDKs).
    pub allocate: Option<TypedFunction<i32, i32>>,
    pub root_context_id: u32,
    pub tick_period_ms: u32,
    /// Metric ids handed to this instance, indexing into the plugin's shared metrics.
    pub metrics: Vec<Arc<PluginMetric>>,
    pub next_call_token: u32,
    /// Calls dispatched from the root context (ticks, queues), run in the background.
    pub root_calls: Vec<Callout>,
    /// Root-context calls running in the background, until their answer is handed over.
    pub root_calls_in_flight: Vec<u32>,
    /// Of those, the ones cancelled (`proxy_grpc_cancel`): their answers are dropped.
    pub cancelled_root_calls: Vec<u32>,
    /// Root-context state: local responses and closes are meaningless there.
    pub root_stream: StreamState,
    /// `proxy_set_effective_context` during the running callback: stream actions then
    /// target that context.
    pub effective_context: Option<u32>,
    frame: Option<NonNull<Frame<'static>>>,
}

// SAFETY: `frame` is only non-null while `HostState::enter` runs a callback synchronously on
// the current thread, and it is cleared before `enter` returns; the state itself moves
// between threads only with its `Store`, between callbacks.
unsafe impl Send for HostState {}

static EMPTY_FACTS: std::sync::LazyLock<RequestFacts> =
    std::sync::LazyLock::new(RequestFacts::default);

impl HostState {
    pub fn new(shared: Arc<PluginShared>, shard: usize) -> HostState {
        HostState {
            shared,
            shard,
            memory: None,
            allocate: None,
            root_context_id: 1,
            tick_period_ms: 0,
            metrics: Vec::new(),
            next_call_token: 1,
            root_calls: Vec::new(),
            root_calls_in_flight: Vec::new(),
            cancelled_root_calls: Vec::new(),
            root_stream: StreamState::default(),
            effective_context: None,
            frame: None,
        }
    }

    /// Runs `call` with `frame` visible to the host functions, and takes it back after.
    /// If a host function panics the pointer is left behind, but the pool then discards the
    /// whole instance (its lock is poisoned), so it is never read again.
    pub fn enter<R>(
        env: &FunctionEnv<HostState>,
        store: &mut Store,
        frame: &mut Frame<'_>,
        call: impl FnOnce(&mut Store) -> R,
    ) -> R {
        let pointer = NonNull::from(frame).cast::<Frame<'static>>();
        let state = env.as_mut(store);
        state.frame = Some(pointer);
        // An effective context is chosen per callback.
        state.effective_context = None;
        let result = call(store);
        env.as_mut(store).frame = None;
        result
    }

    /// The frame lent by the running callback, if any.
    pub fn frame(&mut self) -> Option<&mut Frame<'_>> {
        // SAFETY: non-null only inside `enter`, whose caller holds the frame exclusively for
        // that time; the returned borrow cannot outlive `&mut self`, which is itself only
        // available inside the callback.
        self.frame.map(|pointer| unsafe {
            std::mem::transmute::<&mut Frame<'static>, &mut Frame<'_>>(&mut *pointer.as_ptr())
        })
    }

    /// The frame's stream state, or the root context's when no request is lent.
    pub fn stream(&mut self) -> &mut StreamState {
        match self.frame {
            // SAFETY: as in `frame`.
            Some(pointer) => unsafe { &mut *(*pointer.as_ptr()).stream },
            None => &mut self.root_stream,
        }
    }

    pub fn facts(&mut self) -> &RequestFacts {
        match self.frame {
            // SAFETY: as in `frame`.
            Some(pointer) => unsafe { (*pointer.as_ptr()).facts },
            None => &EMPTY_FACTS,
        }
    }

    /// The context another one made effective (`proxy_set_effective_context`), when it is
    /// not the one the callback runs for: stream actions go to that paused request.
    pub fn other_context(&self) -> Option<u32> {
        let own = match self.frame {
            // SAFETY: as in `frame`.
            Some(pointer) => unsafe { (*pointer.as_ptr()).context_id },
            None => super::instance::ROOT_CONTEXT_ID,
        };
        self.effective_context.filter(|context| *context != own)
    }

    /// A token for a new call, never 0 (the SDKs treat 0 as "no call").
    pub fn take_call_token(&mut self) -> u32 {
        let token = self.next_call_token;
        self.next_call_token = self.next_call_token.wrapping_add(1).max(1);
        token
    }

    /// A request is lent (root-context callbacks lend no request).
    pub fn in_request(&self) -> bool {
        // SAFETY: as in `frame`.
        self.frame
            .is_some_and(|pointer| unsafe { (*pointer.as_ptr()).request.is_some() })
    }
}

/// Every `env` function of Proxy-Wasm 0.2.0 and 0.2.1 (and the 0.1 names the SDKs of that
/// era still import). Known names the host does not implement answer UNIMPLEMENTED; any other
/// import fails the load.
pub const KNOWN_ENV_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_size",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
    "proxy_get_status",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_call_foreign_function",
    "proxy_get_configuration",
];

/// Builds the import object for `module`: implemented functions from the typed table,
/// UNIMPLEMENTED or ENOSYS stubs for known names without an implementation, and an error
/// naming the first import nobody provides.
pub fn imports_for(
    module: &Module,
    store: &mut Store,
    env: &FunctionEnv<HostState>,
) -> Result<Imports, String> {
    let mut imports = Imports::new();
    for import in module.imports() {
        let wasmer::ExternType::Function(signature) = import.ty() else {
            return Err(format!(
                "imports {}.{}, which is not a function; Loom provides only functions",
                import.module(),
                import.name()
            ));
        };
        let function = match import.module() {
            "env" => functions::implemented(import.name(), store, env).or_else(|| {
                KNOWN_ENV_FUNCTIONS
                    .contains(&import.name())
                    .then(|| stub(store, signature, super::abi::status::UNIMPLEMENTED))
            }),
            "wasi_snapshot_preview1" | "wasi_unstable" => Some(
                wasi::implemented(import.name(), store, env)
                    .unwrap_or_else(|| stub(store, signature, wasi::ERRNO_NOSYS)),
            ),
            _ => None,
        };
        let Some(function) = function else {
            return Err(format!(
                "imports {}.{}, which Loom does not provide",
                import.module(),
                import.name()
            ));
        };
        imports.define(import.module(), import.name(), function);
    }
    Ok(imports)
}

/// A function of the import's own signature that returns `code` (or nothing).
fn stub(store: &mut Store, signature: &wasmer::FunctionType, code: i32) -> Function {
    let results: Vec<wasmer::Value> = signature
        .results()
        .iter()
        .map(|kind| match kind {
            wasmer::Type::I32 => wasmer::Value::I32(code),
            wasmer::Type::I64 => wasmer::Value::I64(i64::from(code)),
            wasmer::Type::F32 => wasmer::Value::F32(0.0),
            wasmer::Type::F64 => wasmer::Value::F64(0.0),
            _ => wasmer::Value::I32(code),
        })
        .collect();
    Function::new(store, signature.clone(), move |_arguments| {
        Ok(results.clone())
    })
}
