//! A loaded plugin: its compiled module and a pool of instances ("shards", about one per
//! worker thread). A request takes a shard when its context is created and stays on it, since
//! its context lives inside that instance. A shard's lock is held only for one synchronous
//! callback, never across an `.await`.
//!
//! A callback that traps, runs out of fuel or hits the memory cap gets its instance replaced
//! by a fresh one; requests whose contexts lived in the old instance fail with
//! `instance_lost`. One that returns after the plugin's `timeout` fails only its request. A plugin that keeps failing is quarantined for a
//! while.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prometheus::Histogram;
use wasmer::{RuntimeError, Store};

use super::engine::CompiledModule;
use super::host::{Callout, Frame};
use super::instance::{AbiVersion, Callbacks, Failure, FailureKind, Instance, ROOT_CONTEXT_ID};
use super::metrics::{PluginMetricSet, RUNTIME_METRICS};
use crate::config::plugins::PluginPlan;
use crate::observe::monotonic;

/// What every instance of one plugin shares.
pub struct PluginShared {
    pub name: Arc<str>,
    /// Envoy's `root_id`: the `plugin_root_id` property.
    pub root_id: Arc<str>,
    /// Scope of shared data and queues: Envoy's `vm_id`.
    pub vm_id: Arc<str>,
    pub configuration: Bytes,
    pub vm_configuration: Bytes,
    pub metrics: Arc<PluginMetricSet>,
    pub weak_self: Weak<PluginShared>,
    queue_ready: Mutex<Vec<(usize, u32)>>,
    /// Requests paused in a header phase until another context resumes them.
    pub paused: super::paused::PausedStreams,
    /// Wakes the plugin's background task (queue ready).
    pub wakeup: tokio::sync::Notify,
}

impl PluginShared {
    pub fn new(plan: &PluginPlan) -> Arc<PluginShared> {
        Arc::new_cyclic(|weak_self| PluginShared {
            name: Arc::from(plan.name.as_str()),
            root_id: Arc::from(plan.root_id.as_str()),
            vm_id: Arc::from(plan.vm_id.as_str()),
            configuration: plan.configuration.clone(),
            vm_configuration: plan.vm_configuration.clone(),
            metrics: PluginMetricSet::for_plugin(&plan.name),
            weak_self: weak_self.clone(),
            queue_ready: Mutex::new(Vec::new()),
            paused: Default::default(),
            wakeup: tokio::sync::Notify::new(),
        })
    }

    pub fn notify_queue_ready(&self, shard: usize, queue_id: u32) {
        let mut pending = lock(&self.queue_ready);
        if !pending.contains(&(shard, queue_id)) {
            pending.push((shard, queue_id));
        }
        drop(pending);
        self.wakeup.notify_one();
    }

    pub fn take_queue_ready(&self) -> Vec<(usize, u32)> {
        std::mem::take(&mut *lock(&self.queue_ready))
    }
}

/// The callback being run, for the duration histogram and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Start,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    HttpCallResponse,
    GrpcCallResponse,
    Log,
    Tick,
    QueueReady,
}

// `Phase::index` is the variant's number: the list must hold every variant, in order.
const _: () = assert!(PHASES.len() == Phase::QueueReady as usize + 1);

const PHASES: [Phase; 11] = [
    Phase::Start,
    Phase::RequestHeaders,
    Phase::RequestBody,
    Phase::ResponseHeaders,
    Phase::ResponseBody,
    Phase::ResponseTrailers,
    Phase::HttpCallResponse,
    Phase::GrpcCallResponse,
    Phase::Log,
    Phase::Tick,
    Phase::QueueReady,
];

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Start => "on_context_create",
            Phase::RequestHeaders => "on_request_headers",
            Phase::RequestBody => "on_request_body",
            Phase::ResponseHeaders => "on_response_headers",
            Phase::ResponseBody => "on_response_body",
            Phase::ResponseTrailers => "on_response_trailers",
            Phase::HttpCallResponse => "on_http_call_response",
            Phase::GrpcCallResponse => "on_grpc_call_response",
            Phase::Log => "on_log",
            Phase::Tick => "on_tick",
            Phase::QueueReady => "on_queue_ready",
        }
    }

    /// Its place in [`PHASES`], which lists the variants in declaration order.
    fn index(self) -> usize {
        self as usize
    }
}

struct Shard {
    instance: Option<Instance>,
    /// Bumped whenever the instance is replaced, so contexts of the old one are recognised.
    generation: u64,
    next_tick: Option<Instant>,
}

/// Counters shown by the admin API.
#[derive(Default)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub fuel_used: AtomicU64,
    pub instances_replaced: AtomicU64,
}

/// Which instance a root-context call came from.
#[derive(Debug, Clone, Copy)]
pub struct RootCallOrigin {
    shard: usize,
    generation: u64,
}

/// A request's hold on one plugin context.
#[derive(Debug, Clone, Copy)]
pub struct ContextHandle {
    pub shard: usize,
    generation: u64,
    pub context_id: u32,
}

pub struct PluginRuntime {
    pub plan: PluginPlan,
    pub shared: Arc<PluginShared>,
    compiled: CompiledModule,
    pub abi: AbiVersion,
    shards: Box<[Mutex<Shard>]>,
    next_shard: AtomicUsize,
    pub stats: PluginStats,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `origin` until which the plugin is quarantined; 0 = not.
    quarantined_until: AtomicU64,
    origin: Instant,
    pub loaded_at: SystemTime,
    /// How long starting every instance took (instantiation, `_initialize`, `on_vm_start`,
    /// `on_configure`): the plugin's load time once its module is compiled.
    pub start_time: Duration,
    phase_durations: Vec<Histogram>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks a shard. A poisoned lock means a host function panicked inside a callback: the
/// instance's memory, and the frame pointer its host state may still hold, cannot be trusted,
/// so the instance is dropped (a fresh one starts on next use) and its contexts are lost.
fn lock_shard(mutex: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            let mut shard = poisoned.into_inner();
            shard.instance = None;
            shard.generation += 1;
            shard.next_tick = None;
            mutex.clear_poison();
            log::error!("a plugin instance was abandoned after a panic in a host function");
            shard
        }
    }
}

/// [`lock_shard`] without waiting: `None` while another thread holds the shard.
fn try_lock_shard(mutex: &Mutex<Shard>) -> Option<MutexGuard<'_, Shard>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::WouldBlock) => None,
        Err(std::sync::TryLockError::Poisoned(_)) => Some(lock_shard(mutex)),
    }
}

/// This thread's number among the threads that open plugin contexts, given out on first use.
/// A worker thread creates its contexts in the same instance of each plugin every time, so
/// that instance's memory stays with that thread, and, with as many instances as workers (the
/// default), workers seldom wait for each other's callbacks. (Numbers are given across every
/// thread that opens contexts, and a request's later callbacks run on whichever thread polls
/// it, so waits are rarer, not ruled out.)
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|slot| *slot)
}

impl PluginRuntime {
    /// Starts every instance; any failure to start is a load error.
    pub fn start(plan: PluginPlan, compiled: CompiledModule) -> Result<PluginRuntime, String> {
        let abi = AbiVersion::detect(&compiled.module)?;
        let started = Instant::now();
        let shared = PluginShared::new(&plan);
        let mut shards = Vec::with_capacity(plan.instances);
        for shard in 0..plan.instances {
            let instance = Instance::start(
                &compiled,
                Arc::clone(&shared),
                shard,
                plan.max_fuel,
                plan.memory_limit_pages,
            )?;
            shards.push(Mutex::new(Shard {
                instance: Some(instance),
                generation: 0,
                next_tick: None,
            }));
        }
        let phase_durations = PHASES
            .iter()
            .map(|phase| {
                RUNTIME_METRICS
                    .duration_seconds
                    .with_label_values(&[&plan.name, phase.label()])
            })
            .collect();
        Ok(PluginRuntime {
            shared,
            compiled,
            abi,
            shards: shards.into_boxed_slice(),
            next_shard: AtomicUsize::new(0),
            stats: PluginStats::default(),
            consecutive_failures: AtomicU32::new(0),
            quarantined_until: AtomicU64::new(0),
            origin: Instant::now(),
            loaded_at: SystemTime::now(),
            start_time: started.elapsed(),
            phase_durations,
            plan,
        })
    }

    pub fn name(&self) -> &str {
        &self.plan.name
    }

    pub fn module_sha256(&self) -> &str {
        &self.compiled.sha256
    }

    pub fn module_from_cache(&self) -> bool {
        self.compiled.from_cache
    }

    pub fn compile_time(&self) -> Duration {
        self.compiled.compile_time
    }

    pub fn instance_count(&self) -> usize {
        self.shards.len()
    }

    /// Linear-memory pages in use, summed over the instances.
    pub fn memory_pages(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| {
                lock(shard)
                    .instance
                    .as_ref()
                    .map_or(0, |instance| u64::from(instance.memory_pages()))
            })
            .sum()
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn quarantined_for(&self) -> Option<Duration> {
        let until = self.quarantined_until.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    fn count_failure(&self, kind: FailureKind) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        RUNTIME_METRICS
            .errors_total
            .with_label_values(&[&self.plan.name, kind.label()])
            .inc();
    }

    /// Creates a context for one request on the next shard.
    pub fn open_context(&self) -> Result<ContextHandle, Failure> {
        if let Some(left) = self.quarantined_for() {
            self.count_failure(FailureKind::Quarantined);
            return Err(Failure {
                kind: FailureKind::Quarantined,
                message: format!(
                    "quarantined for another {} ms after repeated failures",
                    left.as_millis()
                ),
            });
        }
        let (shard_index, mut shard) = self.take_shard();
        self.ensure_instance(shard_index, &mut shard)?;
        let generation = shard.generation;
        let Some(instance) = shard.instance.as_mut() else {
            return Err(self.lost());
        };
        let context_id = instance.new_context_id();
        let handle = ContextHandle {
            shard: shard_index,
            generation,
            context_id,
        };
        let started = monotonic::nanos();
        let result = instance.call_metered(None, |store, callbacks| {
            match &callbacks.on_context_create {
                Some(function) => function.call(store, context_id as i32, ROOT_CONTEXT_ID as i32),
                None => Ok(()),
            }
        });
        self.settle(shard_index, &mut shard, Phase::Start, started, result)?;
        Ok(handle)
    }

    /// The shard a new context goes to: this thread's own (see [`thread_slot`]) when it is
    /// free, else the next free one, else this thread's own once it is.
    fn take_shard(&self) -> (usize, MutexGuard<'_, Shard>) {
        let count = self.shards.len();
        let own = thread_slot() % count;
        if let Some(shard) = try_lock_shard(&self.shards[own]) {
            return (own, shard);
        }
        let start = self.next_shard.fetch_add(1, Ordering::Relaxed);
        for offset in 0..count {
            let index = (start + offset) % count;
            if index != own
                && let Some(shard) = try_lock_shard(&self.shards[index])
            {
                return (index, shard);
            }
        }
        (own, lock_shard(&self.shards[own]))
    }

    /// Runs one callback (or a few, e.g. done/log/delete) of the request's context.
    pub fn invoke<R>(
        &self,
        handle: &ContextHandle,
        phase: Phase,
        frame: &mut Frame<'_>,
        body: impl FnOnce(&mut Store, &Callbacks, i32) -> Result<R, RuntimeError>,
    ) -> Result<R, Failure> {
        self.invoke_then(handle, phase, frame, body, |_| {})
    }

    /// Runs a header callback; one that answers Pause leaves its context registered as
    /// paused before the shard is unlocked, so no other context can act on it unseen.
    pub fn invoke_pausable(
        &self,
        handle: &ContextHandle,
        phase: Phase,
        frame: &mut Frame<'_>,
        body: impl FnOnce(&mut Store, &Callbacks, i32) -> Result<i32, RuntimeError>,
    ) -> Result<i32, Failure> {
        self.invoke_then(handle, phase, frame, body, |raw| {
            if super::abi::Action::from_raw(*raw) == super::abi::Action::Pause {
                self.shared.paused.register(handle.shard, handle.context_id);
            }
        })
    }

    /// As [`Self::invoke`]; `after` sees the callback's result while the shard is locked.
    fn invoke_then<R>(
        &self,
        handle: &ContextHandle,
        phase: Phase,
        frame: &mut Frame<'_>,
        body: impl FnOnce(&mut Store, &Callbacks, i32) -> Result<R, RuntimeError>,
        after: impl FnOnce(&R),
    ) -> Result<R, Failure> {
        let mut shard = lock_shard(&self.shards[handle.shard]);
        if shard.generation != handle.generation {
            return Err(self.lost());
        }
        let Some(instance) = shard.instance.as_mut() else {
            return Err(self.lost());
        };
        let context_id = handle.context_id as i32;
        let started = monotonic::nanos();
        let result = instance.call_metered(Some(frame), |store, callbacks| {
            body(store, callbacks, context_id)
        });
        if let Ok((value, _)) = &result {
            after(value);
        }
        self.settle(handle.shard, &mut shard, phase, started, result)
    }

    /// Runs a root-context callback on one shard (ticks, queues, background call answers).
    pub fn invoke_root<R>(
        &self,
        shard_index: usize,
        phase: Phase,
        frame: Option<&mut Frame<'_>>,
        body: impl FnOnce(&mut Store, &Callbacks) -> Result<R, RuntimeError>,
    ) -> Result<R, Failure> {
        let mut shard = lock_shard(&self.shards[shard_index]);
        self.ensure_instance(shard_index, &mut shard)?;
        let Some(instance) = shard.instance.as_mut() else {
            return Err(self.lost());
        };
        let started = monotonic::nanos();
        let result = instance.call_metered(frame, body);
        self.settle(shard_index, &mut shard, phase, started, result)
    }

    fn lost(&self) -> Failure {
        self.count_failure(FailureKind::InstanceLost);
        Failure {
            kind: FailureKind::InstanceLost,
            message: "the instance holding this request's context was replaced after a failure"
                .to_string(),
        }
    }

    /// Records the outcome of a call; on failure replaces the instance and maybe quarantines.
    fn settle<R>(
        &self,
        shard_index: usize,
        shard: &mut Shard,
        phase: Phase,
        started_nanos: u64,
        result: Result<(R, u64), Failure>,
    ) -> Result<R, Failure> {
        let elapsed_nanos = monotonic::nanos_since(started_nanos);
        self.phase_durations[phase.index()].observe(elapsed_nanos as f64 * 1e-9);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        // `timeout` is judged once the callback has returned. wasmer 7.4 can stop running
        // guest code only through its experimental, signal-based host interrupt, which Loom
        // does not build; fuel is what stops a runaway loop. A slow callback fails its request
        // (by the plugin's `on_error`), but it did finish, so its instance is sound and is
        // kept: replacing it would fail every other request with a context in it, for what
        // may be a moment of CPU starvation. The pipeline still tears the context down.
        // Creating a context is not timed: a context created but refused could never be
        // deleted, and its creation is the host's work more than the plugin's.
        let result = match (result, self.plan.timeout) {
            (Ok((_, fuel)), Some(limit))
                if Duration::from_nanos(elapsed_nanos) > limit && phase != Phase::Start =>
            {
                self.stats.fuel_used.fetch_add(fuel, Ordering::Relaxed);
                Err(Failure {
                    kind: FailureKind::Timeout,
                    message: format!(
                        "took {} ms in one callback, over its timeout of {} ms",
                        elapsed_nanos / 1_000_000,
                        limit.as_millis()
                    ),
                })
            }
            (result, _) => result,
        };
        match result {
            Ok((value, fuel)) => {
                self.stats.fuel_used.fetch_add(fuel, Ordering::Relaxed);
                // Creating a context says nothing about the plugin's health: only a callback
                // that does work ends a run of failures.
                if phase != Phase::Start && self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                Ok(value)
            }
            Err(failure) if failure.kind == FailureKind::Timeout => {
                self.count_failure(failure.kind);
                log::warn!(
                    "plugin {} {} in {}",
                    self.plan.name,
                    failure.message,
                    phase.label()
                );
                Err(failure)
            }
            Err(failure) => {
                self.stats.fuel_used.fetch_add(
                    if failure.kind == FailureKind::FuelExhausted {
                        self.plan.max_fuel
                    } else {
                        0
                    },
                    Ordering::Relaxed,
                );
                self.count_failure(failure.kind);
                log::warn!(
                    "plugin {} {} in {}; replacing its instance {shard_index}",
                    self.plan.name,
                    failure.message,
                    phase.label()
                );
                // The failed instance's memory may be inconsistent: drop it (its memory goes
                // back to the system) and start a fresh one.
                shard.instance = None;
                shard.generation += 1;
                shard.next_tick = None;
                self.shared.paused.abandon_shard(shard_index);
                self.stats
                    .instances_replaced
                    .fetch_add(1, Ordering::Relaxed);
                let _ = self.ensure_instance(shard_index, shard);
                let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= self.plan.quarantine_after {
                    let until = self.now_ms() + self.plan.quarantine_for.as_millis() as u64;
                    self.quarantined_until.store(until, Ordering::Relaxed);
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                    log::error!(
                        "plugin {} failed {failures} times in a row; quarantined for {:?}",
                        self.plan.name,
                        self.plan.quarantine_for
                    );
                }
                Err(failure)
            }
        }
    }

    /// Starts an instance on an empty shard.
    fn ensure_instance(&self, shard_index: usize, shard: &mut Shard) -> Result<(), Failure> {
        if shard.instance.is_some() {
            return Ok(());
        }
        match Instance::start(
            &self.compiled,
            Arc::clone(&self.shared),
            shard_index,
            self.plan.max_fuel,
            self.plan.memory_limit_pages,
        ) {
            Ok(instance) => {
                shard.instance = Some(instance);
                Ok(())
            }
            Err(message) => {
                log::error!(
                    "plugin {}: a replacement instance {message}",
                    self.plan.name
                );
                Err(Failure {
                    kind: FailureKind::Trap,
                    message,
                })
            }
        }
    }

    /// Runs `on_tick` on every shard whose period has come; returns when the next one is due.
    pub fn run_due_ticks(&self, now: Instant) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for shard_index in 0..self.shards.len() {
            let due = {
                let mut shard = lock_shard(&self.shards[shard_index]);
                let period = shard.instance.as_ref().map_or(0, Instance::tick_period_ms);
                if period == 0 {
                    shard.next_tick = None;
                    continue;
                }
                let period = Duration::from_millis(u64::from(period));
                let next = *shard.next_tick.get_or_insert(now + period);
                if next > now {
                    earliest = Some(earliest.map_or(next, |earliest| earliest.min(next)));
                    continue;
                }
                shard.next_tick = Some(now + period);
                now + period
            };
            let _ =
                self.invoke_root(
                    shard_index,
                    Phase::Tick,
                    None,
                    |store, callbacks| match &callbacks.on_tick {
                        Some(function) => function.call(store, ROOT_CONTEXT_ID as i32),
                        None => Ok(()),
                    },
                );
            earliest = Some(earliest.map_or(due, |earliest| earliest.min(due)));
        }
        earliest
    }

    pub fn queue_ready(&self, shard_index: usize, queue_id: u32) {
        if shard_index >= self.shards.len() {
            return;
        }
        let _ = self.invoke_root(shard_index, Phase::QueueReady, None, |store, callbacks| {
            match &callbacks.on_queue_ready {
                Some(function) => function.call(store, ROOT_CONTEXT_ID as i32, queue_id as i32),
                None => Ok(()),
            }
        });
    }

    /// Calls dispatched by root contexts since the last look, with the shard and instance
    /// generation they belong to.
    pub fn take_root_calls(&self) -> Vec<(RootCallOrigin, Callout)> {
        let mut calls = Vec::new();
        for (shard_index, shard) in self.shards.iter().enumerate() {
            let mut shard = lock(shard);
            let generation = shard.generation;
            if let Some(instance) = shard.instance.as_mut() {
                let origin = RootCallOrigin {
                    shard: shard_index,
                    generation,
                };
                calls.extend(
                    instance
                        .take_root_calls()
                        .into_iter()
                        .map(|call| (origin, call)),
                );
            }
        }
        calls
    }

    /// Hands a root call's answer to the instance that dispatched it, unless that instance
    /// was replaced since (its tokens mean nothing to the new one) or the call was cancelled.
    pub fn answer_root_call<R>(
        &self,
        origin: RootCallOrigin,
        token: u32,
        phase: Phase,
        frame: &mut Frame<'_>,
        body: impl FnOnce(&mut Store, &Callbacks) -> Result<R, RuntimeError>,
    ) -> Option<Result<R, Failure>> {
        let mut shard = lock_shard(&self.shards[origin.shard]);
        if shard.generation != origin.generation {
            return None;
        }
        let instance = shard.instance.as_mut()?;
        if !instance.root_answer_wanted(token) {
            return None;
        }
        let started = monotonic::nanos();
        let result = instance.call_metered(Some(frame), body);
        Some(self.settle(origin.shard, &mut shard, phase, started, result))
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::ConfigError;
    use crate::config::schema::PluginFailureMode;
    use crate::plugin::engine::{EngineSettings, compile};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The least a module needs to load as a Proxy-Wasm plugin.
    const MINIMAL_PLUGIN: &str = r#"
        (module
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32)))
    "#;

    fn start(
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<PluginRuntime, Box<dyn std::error::Error>> {
        start_module(name, MINIMAL_PLUGIN, timeout)
    }

    fn start_module(
        name: &str,
        module: &str,
        timeout: Option<Duration>,
    ) -> Result<PluginRuntime, Box<dyn std::error::Error>> {
        start_instances(name, module, timeout, 1)
    }

    fn start_instances(
        name: &str,
        module: &str,
        timeout: Option<Duration>,
        instances: usize,
    ) -> Result<PluginRuntime, Box<dyn std::error::Error>> {
        let settings = EngineSettings {
            max_fuel: 1_000_000,
            memory_limit_pages: 16,
        };
        let compiled = compile(module.as_bytes(), &settings, None)?;
        let plan = PluginPlan {
            name: name.to_string(),
            wasm_path: PathBuf::from("minimal.wat"),
            configuration: Bytes::new(),
            vm_configuration: Bytes::new(),
            root_id: String::new(),
            vm_id: String::new(),
            priority: 0,
            on_error: PluginFailureMode::FailClosed,
            max_fuel: settings.max_fuel,
            memory_limit_pages: settings.memory_limit_pages,
            timeout,
            instances,
            max_buffered_body: 1 << 20,
            pause_timeout: Duration::from_secs(30),
            quarantine_after: 2,
            quarantine_for: Duration::from_secs(60),
            origin: ConfigError {
                file: PathBuf::from("test"),
                mark: None,
                key_path: String::new(),
                message: String::new(),
            },
        };
        Ok(PluginRuntime::start(plan, compiled)?)
    }

    /// The WASI calls Go's runtime makes while it starts (`_initialize`), checked as it checks
    /// them: the preopen scan must end with EBADF, stdout must be a character device,
    /// `poll_oneoff` with a clock subscription must report it fired, and an unimplemented
    /// call must answer ENOSYS rather than trap. Any other answer traps, as Go panics.
    const GO_STARTUP_PLUGIN: &str = r#"
        (module
          (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "_initialize")
            (if (i32.ne (call $prestat (i32.const 3) (i32.const 0)) (i32.const 8)) (then unreachable))
            (if (i32.ne (call $fdstat (i32.const 1) (i32.const 64)) (i32.const 0)) (then unreachable))
            (if (i32.ne (i32.load8_u (i32.const 64)) (i32.const 2)) (then unreachable))
            (if (i32.ne (call $fdstat (i32.const 7) (i32.const 64)) (i32.const 8)) (then unreachable))
            ;; one clock subscription: userdata 42, tag 0 (clock), a one-minute timeout
            (i64.store (i32.const 256) (i64.const 42))
            (i32.store8 (i32.const 264) (i32.const 0))
            (i64.store (i32.const 280) (i64.const 60000000000))
            (if (i32.ne (call $poll (i32.const 256) (i32.const 512) (i32.const 1) (i32.const 600)) (i32.const 0)) (then unreachable))
            (if (i32.ne (i32.load (i32.const 600)) (i32.const 1)) (then unreachable))
            (if (i64.ne (i64.load (i32.const 512)) (i64.const 42)) (then unreachable))
            (if (i32.ne (i32.load16_u (i32.const 520)) (i32.const 0)) (then unreachable))
            (if (i32.ne (call $close (i32.const 3)) (i32.const 52)) (then unreachable)))
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32)))
    "#;

    #[test]
    fn go_runtime_startup_wasi_calls_get_the_answers_go_needs_without_sleeping() -> TestResult {
        let started = Instant::now();
        let runtime = start_module("go-startup", GO_STARTUP_PLUGIN, None)?;
        runtime.open_context().map_err(|failure| failure.message)?;
        // The clock subscription asked for a minute: it must be answered at once.
        assert!(started.elapsed() < Duration::from_secs(10));
        Ok(())
    }

    /// The AssemblyScript SDK's `onConfigure` with an empty configuration: it passes the size
    /// (0) as the size pointer. Envoy writes nothing when there is nothing to copy; writing a
    /// null pointer and a zero size would clobber the guest's memory at 0 and 100.
    const EMPTY_CONFIGURATION_PLUGIN: &str = r#"
        (module
          (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_configure") (param i32 i32) (result i32)
            (i32.store (i32.const 0) (i32.const 0x5a5a5a5a))
            (i32.store (i32.const 100) (i32.const 0x5a5a5a5a))
            (if (i32.ne (call $get (i32.const 7) (i32.const 0) (local.get 1) (i32.const 100) (local.get 1))
                        (i32.const 0)) (then unreachable))
            (if (i32.ne (i32.load (i32.const 0)) (i32.const 0x5a5a5a5a)) (then unreachable))
            (if (i32.ne (i32.load (i32.const 100)) (i32.const 0x5a5a5a5a)) (then unreachable))
            (i32.const 1)))
    "#;

    #[test]
    fn an_empty_buffer_is_answered_without_writing_as_envoy_does() -> TestResult {
        let runtime = start_module("empty-configuration", EMPTY_CONFIGURATION_PLUGIN, None)?;
        runtime.open_context().map_err(|failure| failure.message)?;
        Ok(())
    }

    #[test]
    fn a_poisoned_shard_is_never_reused() {
        let shard = Arc::new(Mutex::new(Shard {
            instance: None,
            generation: 7,
            next_tick: Some(Instant::now()),
        }));
        let holder = Arc::clone(&shard);
        let _ = std::thread::spawn(move || {
            let _guard = holder.lock();
            panic!("a host function panicked mid-callback");
        })
        .join();
        assert!(shard.is_poisoned());
        let guard = lock_shard(&shard);
        assert_eq!(
            guard.generation, 8,
            "contexts of the old instance are recognised as lost"
        );
        assert!(guard.instance.is_none() && guard.next_tick.is_none());
        drop(guard);
        assert!(!shard.is_poisoned());
        assert_eq!(lock_shard(&shard).generation, 8);
    }

    /// Calls a callback that does nothing, in the request-headers phase.
    fn call_empty(runtime: &PluginRuntime, handle: &ContextHandle) -> Result<i32, Failure> {
        let facts = crate::plugin::host::RequestFacts::default();
        let mut stream = crate::plugin::host::StreamState::default();
        let mut frame = Frame {
            request: None,
            response: None,
            response_trailers: None,
            body: None,
            callout: None,
            context_id: handle.context_id,
            stream: &mut stream,
            facts: &facts,
        };
        runtime.invoke(handle, Phase::RequestHeaders, &mut frame, |_, _, _| Ok(0))
    }

    #[test]
    fn a_callback_over_its_timeout_fails_its_request_and_keeps_the_instance() -> TestResult {
        // Every callback takes longer than a nanosecond; creating a context is not timed.
        let runtime = start("timeout-exceeded", Some(Duration::from_nanos(1)))?;
        let handle = runtime.open_context().map_err(|failure| failure.message)?;
        let failure = call_empty(&runtime, &handle)
            .err()
            .ok_or("the callback returned within a nanosecond")?;
        assert_eq!(failure.kind, FailureKind::Timeout);
        assert_eq!(runtime.stats.errors.load(Ordering::Relaxed), 1);
        // The callback finished, so its instance is sound: kept, and the context with it.
        assert_eq!(runtime.stats.instances_replaced.load(Ordering::Relaxed), 0);
        let again = call_empty(&runtime, &handle)
            .err()
            .ok_or("the second callback returned within a nanosecond")?;
        assert_eq!(again.kind, FailureKind::Timeout, "not instance_lost");
        // A slow moment of the machine must not quarantine a healthy plugin.
        assert!(runtime.quarantined_for().is_none());
        Ok(())
    }

    #[test]
    fn callbacks_within_their_timeout_or_without_one_succeed() -> TestResult {
        let runtime = start("timeout-met", Some(Duration::from_secs(60)))?;
        assert!(runtime.open_context().is_ok());
        let runtime = start("timeout-absent", None)?;
        assert!(runtime.open_context().is_ok());
        Ok(())
    }

    #[test]
    fn each_phase_indexes_its_place_in_the_phase_list() {
        for (place, phase) in PHASES.iter().enumerate() {
            assert_eq!(phase.index(), place, "{}", phase.label());
        }
    }

    #[test]
    fn a_thread_opens_its_contexts_in_its_own_instance_while_it_is_free() -> TestResult {
        let runtime = Arc::new(start_instances("affine", MINIMAL_PLUGIN, None, 3)?);
        let shards_of_thread = || -> Result<Vec<usize>, String> {
            (0..6)
                .map(|_| runtime.open_context().map(|handle| handle.shard))
                .collect::<Result<_, _>>()
                .map_err(|failure| failure.message)
        };
        // One thread after the other: two threads whose numbers fall on the same instance
        // would otherwise take turns with it, which is the fallback, tested below.
        for _ in 0..2 {
            let runtime = Arc::clone(&runtime);
            let thread = std::thread::spawn(move || {
                let own = thread_slot() % runtime.instance_count();
                (0..6)
                    .map(|_| runtime.open_context().map(|handle| (own, handle.shard)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|failure| failure.message)
            });
            let placements = thread.join().map_err(|_| "thread panicked")??;
            // Round-robin placement would spread six contexts over the three instances.
            assert!(
                placements.iter().all(|(own, shard)| own == shard),
                "{placements:?}"
            );
        }
        // While its own instance is busy (here: locked by this very thread), a thread's new
        // context goes to another instance instead of waiting.
        let own = thread_slot() % runtime.instance_count();
        assert!(shards_of_thread()?.iter().all(|shard| *shard == own));
        let held = lock_shard(&runtime.shards[own]);
        let elsewhere = shards_of_thread()?;
        drop(held);
        assert!(elsewhere.iter().all(|shard| *shard != own), "{elsewhere:?}");
        Ok(())
    }
}
