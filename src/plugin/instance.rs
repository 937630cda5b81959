//! One instantiated plugin module: its store, its exported callbacks, and how a callback is
//! run (a fresh fuel budget each time, the request lent through a frame, failures
//! classified).

use std::sync::Arc;

use wasmer::{FunctionEnv, RuntimeError, Store, TypedFunction};

use super::engine::{self, CompiledModule};
use super::host::{self, Callout, Frame, HostState};
use super::runtime::PluginShared;

/// The ABI a module declared through its `proxy_abi_version_*` export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    V0_2_0,
    V0_2_1,
}

impl AbiVersion {
    pub fn detect(module: &wasmer::Module) -> Result<AbiVersion, String> {
        let mut found = None;
        for export in module.exports() {
            match export.name() {
                "proxy_abi_version_0_2_1" => found = Some(AbiVersion::V0_2_1),
                "proxy_abi_version_0_2_0" if found.is_none() => found = Some(AbiVersion::V0_2_0),
                "proxy_abi_version_0_1_0" if found.is_none() => {
                    return Err(
                        "declares Proxy-Wasm ABI 0.1.0, which Loom does not support (0.2.0 and 0.2.1 are)"
                            .to_string(),
                    );
                }
                _ => {}
            }
        }
        found.ok_or_else(|| {
            "exports no proxy_abi_version_0_2_x marker: not a Proxy-Wasm module".to_string()
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            AbiVersion::V0_2_0 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        }
    }
}

/// Why a callback did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Trap,
    FuelExhausted,
    MemoryLimit,
    /// The callback returned after the plugin's `timeout` (wall clock).
    Timeout,
    /// The instance holding this request's context was replaced after another failure.
    InstanceLost,
    Quarantined,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::FuelExhausted => "fuel_exhausted",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::Timeout => "timeout",
            FailureKind::InstanceLost => "instance_lost",
            FailureKind::Quarantined => "quarantined",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

/// `proxy_on_http_call_response(root_context, token, headers, body_size, trailers)`.
pub type HttpCallResponseCallback = TypedFunction<(i32, i32, i32, i32, i32), ()>;

/// The module's callbacks, looked up once per instance; absent ones are simply not called.
#[derive(Default)]
pub struct Callbacks {
    pub on_context_create: Option<TypedFunction<(i32, i32), ()>>,
    pub on_vm_start: Option<TypedFunction<(i32, i32), i32>>,
    pub on_configure: Option<TypedFunction<(i32, i32), i32>>,
    pub on_tick: Option<TypedFunction<i32, ()>>,
    pub on_request_headers: Option<TypedFunction<(i32, i32, i32), i32>>,
    pub on_request_body: Option<TypedFunction<(i32, i32, i32), i32>>,
    pub on_request_trailers: Option<TypedFunction<(i32, i32), i32>>,
    pub on_response_headers: Option<TypedFunction<(i32, i32, i32), i32>>,
    pub on_response_body: Option<TypedFunction<(i32, i32, i32), i32>>,
    pub on_response_trailers: Option<TypedFunction<(i32, i32), i32>>,
    pub on_http_call_response: Option<HttpCallResponseCallback>,
    /// `proxy_on_grpc_receive(root_context, token, message_size)`: a call's answer.
    pub on_grpc_receive: Option<TypedFunction<(i32, i32, i32), ()>>,
    /// `proxy_on_grpc_close(root_context, token, status)`: a call failed.
    pub on_grpc_close: Option<TypedFunction<(i32, i32, i32), ()>>,
    pub on_queue_ready: Option<TypedFunction<(i32, i32), ()>>,
    pub on_done: Option<TypedFunction<i32, i32>>,
    pub on_log: Option<TypedFunction<i32, ()>>,
    pub on_delete: Option<TypedFunction<i32, ()>>,
}

/// Looks up an optional export with the signature the ABI gives it; a wrong signature is a
/// load error naming the export.
fn callback<Args, Rets>(
    instance: &wasmer::Instance,
    store: &Store,
    name: &str,
) -> Result<Option<TypedFunction<Args, Rets>>, String>
where
    Args: wasmer::WasmTypeList,
    Rets: wasmer::WasmTypeList,
{
    match instance.exports.get_function(name) {
        Ok(function) => function
            .typed(store)
            .map(Some)
            .map_err(|error| format!("exports {name} with the wrong signature: {error}")),
        Err(_) => Ok(None),
    }
}

impl Callbacks {
    fn resolve(instance: &wasmer::Instance, store: &Store) -> Result<Callbacks, String> {
        Ok(Callbacks {
            on_context_create: callback(instance, store, "proxy_on_context_create")?,
            on_vm_start: callback(instance, store, "proxy_on_vm_start")?,
            on_configure: callback(instance, store, "proxy_on_configure")?,
            on_tick: callback(instance, store, "proxy_on_tick")?,
            on_request_headers: callback(instance, store, "proxy_on_request_headers")?,
            on_request_body: callback(instance, store, "proxy_on_request_body")?,
            on_request_trailers: callback(instance, store, "proxy_on_request_trailers")?,
            on_response_headers: callback(instance, store, "proxy_on_response_headers")?,
            on_response_body: callback(instance, store, "proxy_on_response_body")?,
            on_response_trailers: callback(instance, store, "proxy_on_response_trailers")?,
            on_http_call_response: callback(instance, store, "proxy_on_http_call_response")?,
            on_grpc_receive: callback(instance, store, "proxy_on_grpc_receive")?,
            on_grpc_close: callback(instance, store, "proxy_on_grpc_close")?,
            on_queue_ready: callback(instance, store, "proxy_on_queue_ready")?,
            on_done: callback(instance, store, "proxy_on_done")?,
            on_log: callback(instance, store, "proxy_on_log")?,
            on_delete: callback(instance, store, "proxy_on_delete")?,
        })
    }
}

pub const ROOT_CONTEXT_ID: u32 = 1;

pub struct Instance {
    store: Store,
    env: FunctionEnv<HostState>,
    instance: wasmer::Instance,
    pub callbacks: Callbacks,
    /// The metering globals, looked up once: resetting them per callback is then ~25 ns.
    budget: Option<engine::Budget>,
    max_fuel: u64,
    memory_limit_pages: u32,
    next_context_id: u32,
}

// SAFETY: wasmer 7's `Store` is not `Send` only because it holds raw pointers into its own
// VM state and an optional `on_called` handler (never set here). An `Instance` is only ever
// used by one thread at a time: it lives behind its shard's mutex, every call into it runs
// to completion before the lock is released, and nothing borrowed from it escapes a call.
// Trap handling state is thread-local only for the duration of a call. Moving it between
// calls is therefore sound; wasmer 4 and wasmtime both make such stores `Send`.
unsafe impl Send for Instance {}

impl Instance {
    /// Instantiates the module and runs its start-up: `_initialize`, the root context,
    /// `on_vm_start` with the VM config and `on_configure` with the plugin config.
    pub fn start(
        compiled: &CompiledModule,
        shared: Arc<PluginShared>,
        shard: usize,
        max_fuel: u64,
        memory_limit_pages: u32,
    ) -> Result<Instance, String> {
        let mut store = Store::new(compiled.engine.clone());
        let env = FunctionEnv::new(&mut store, HostState::new(Arc::clone(&shared), shard));
        let imports = host::imports_for(&compiled.module, &mut store, &env)?;
        let instance = wasmer::Instance::new(&mut store, &compiled.module, &imports)
            .map_err(|error| format!("cannot be instantiated: {error}"))?;
        let memory = instance
            .exports
            .get_memory("memory")
            .map_err(|_| "exports no memory".to_string())?
            .clone();
        let allocate = instance
            .exports
            .get_typed_function::<i32, i32>(&store, "proxy_on_memory_allocate")
            .or_else(|_| {
                instance
                    .exports
                    .get_typed_function::<i32, i32>(&store, "malloc")
            })
            .map_err(|_| "exports neither proxy_on_memory_allocate nor malloc".to_string())?;
        {
            let state = env.as_mut(&mut store);
            state.memory = Some(memory);
            state.allocate = Some(allocate);
        }
        let callbacks = Callbacks::resolve(&instance, &store)?;
        let budget = engine::Budget::of(&instance);
        let mut started = Instance {
            store,
            env,
            instance,
            callbacks,
            budget,
            max_fuel,
            memory_limit_pages,
            next_context_id: ROOT_CONTEXT_ID + 1,
        };
        let describe = |failure: Failure| format!("failed to start: {}", failure.message);
        for name in ["_initialize", "_start"] {
            if let Ok(function) = started
                .instance
                .exports
                .get_typed_function::<(), ()>(&started.store, name)
            {
                started
                    .call(None, |store, _| function.call(store))
                    .map_err(describe)?;
                break;
            }
        }
        let root = ROOT_CONTEXT_ID as i32;
        started
            .call(None, |store, callbacks| {
                match &callbacks.on_context_create {
                    Some(function) => function.call(store, root, 0),
                    None => Ok(()),
                }
            })
            .map_err(describe)?;
        let vm_config_len = shared.vm_configuration.len() as i32;
        let vm_started = started
            .call(None, |store, callbacks| match &callbacks.on_vm_start {
                Some(function) => function.call(store, root, vm_config_len),
                None => Ok(1),
            })
            .map_err(describe)?;
        if vm_started == 0 {
            return Err("on_vm_start returned false (the VM configuration was refused)".into());
        }
        let config_len = shared.configuration.len() as i32;
        let configured = started
            .call(None, |store, callbacks| match &callbacks.on_configure {
                Some(function) => function.call(store, root, config_len),
                None => Ok(1),
            })
            .map_err(describe)?;
        if configured == 0 {
            return Err(
                "on_configure returned false (the plugin configuration was refused)".into(),
            );
        }
        Ok(started)
    }

    pub fn new_context_id(&mut self) -> u32 {
        let id = self.next_context_id;
        self.next_context_id = self
            .next_context_id
            .checked_add(1)
            .unwrap_or(ROOT_CONTEXT_ID + 1);
        id
    }

    /// Runs `body` (one or more guest calls) with a fresh fuel budget and `frame` lent.
    /// Returns the result and the fuel it used.
    pub fn call<R>(
        &mut self,
        frame: Option<&mut Frame<'_>>,
        body: impl FnOnce(&mut Store, &Callbacks) -> Result<R, RuntimeError>,
    ) -> Result<R, Failure> {
        self.call_metered(frame, body).map(|(result, _)| result)
    }

    pub fn call_metered<R>(
        &mut self,
        frame: Option<&mut Frame<'_>>,
        body: impl FnOnce(&mut Store, &Callbacks) -> Result<R, RuntimeError>,
    ) -> Result<(R, u64), Failure> {
        match &mut self.budget {
            Some(budget) => budget.set(&mut self.store, self.max_fuel),
            None => engine::set_budget(&mut self.store, &self.instance, self.max_fuel),
        }
        let callbacks = &self.callbacks;
        let result = match frame {
            Some(frame) => HostState::enter(&self.env, &mut self.store, frame, |store| {
                body(store, callbacks)
            }),
            None => {
                // An effective context is chosen per callback (`enter` resets it for the
                // others, with the frame it sets anyway).
                self.env.as_mut(&mut self.store).effective_context = None;
                body(&mut self.store, callbacks)
            }
        };
        let remaining = match &mut self.budget {
            Some(budget) => budget.remaining(&mut self.store, result.is_err()),
            None => engine::remaining_budget(&mut self.store, &self.instance),
        };
        let used = self.max_fuel - remaining.unwrap_or(0);
        match result {
            Ok(value) => Ok((value, used)),
            Err(error) => Err(self.classify(&error, remaining.is_none())),
        }
    }

    fn classify(&mut self, error: &RuntimeError, exhausted: bool) -> Failure {
        if exhausted {
            return Failure {
                kind: FailureKind::FuelExhausted,
                message: format!(
                    "used its whole fuel budget of {} in one callback",
                    self.max_fuel
                ),
            };
        }
        // A Rust guest whose allocation fails aborts with a trap; when that happens with
        // memory near the cap, the cap is the likely cause. (wasmer does not report a refused
        // memory.grow to the host.)
        let pages = self.memory_pages();
        if u64::from(pages) * 2 > u64::from(self.memory_limit_pages) {
            return Failure {
                kind: FailureKind::MemoryLimit,
                message: format!(
                    "trapped with {pages} of its {} memory pages in use: {error}",
                    self.memory_limit_pages
                ),
            };
        }
        Failure {
            kind: FailureKind::Trap,
            message: format!("trapped: {error}"),
        }
    }

    pub fn memory_pages(&self) -> u32 {
        self.env
            .as_ref(&self.store)
            .memory
            .as_ref()
            .map_or(0, |memory| memory.view(&self.store).size().0)
    }

    pub fn tick_period_ms(&self) -> u32 {
        self.env.as_ref(&self.store).tick_period_ms
    }

    /// The calls root contexts dispatched, handed to the background task; they stay
    /// cancellable until [`Self::root_answer_wanted`] is asked about them.
    pub fn take_root_calls(&mut self) -> Vec<Callout> {
        let state = self.env.as_mut(&mut self.store);
        let calls = std::mem::take(&mut state.root_calls);
        state
            .root_calls_in_flight
            .extend(calls.iter().map(Callout::token));
        calls
    }

    /// Whether the answer to root call `token` is still wanted (it was not cancelled).
    pub fn root_answer_wanted(&mut self, token: u32) -> bool {
        let state = self.env.as_mut(&mut self.store);
        state
            .root_calls_in_flight
            .retain(|pending| *pending != token);
        match state.cancelled_root_calls.iter().position(|t| *t == token) {
            Some(position) => {
                state.cancelled_root_calls.swap_remove(position);
                false
            }
            None => true,
        }
    }
}
