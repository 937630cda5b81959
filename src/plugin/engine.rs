//! Turns plugin wasm into runnable wasmer modules under Loom's limits.
//!
//! Every module is compiled by Cranelift (singlepass and LLVM are BUSL-licensed) with the
//! [`Fuel`] middleware, so each callback runs on a budget of operators and a runaway loop
//! traps instead of pinning a worker thread, and on an engine whose tunables cap linear memory.
//! Compiled artifacts are kept in an optional on-disk cache ([`super::cache`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use wasmer::sys::{
    CompilerConfig as _, Cranelift, CraneliftOptLevel, EngineBuilder, NativeEngineExt as _,
};
use wasmer::wasmparser::{Operator, Parser, Payload};
use wasmer::{AsStoreMut, Engine, ExternType, Global, Instance, Module, Value};

use super::cache::{ModuleCache, sha256_hex};
use super::fuel::{self, Fuel};
use super::tunables::LimitingTunables;

/// Describes the Cranelift configuration [`compile`] uses, for the cache key. Change it together
/// with [`build_engine`]: a cached artifact is only valid for the settings that produced it.
pub(super) const COMPILER_SETTINGS: &str = "cranelift;opt=speed;nan_canonicalization=off";

/// Version of [`operator_cost`] and of the [`Fuel`] middleware, for the cache key: both are
/// compiled into the code, so bump this whenever either changes. (2: [`Fuel`] replaced
/// wasmer's `Metering`.)
pub(super) const COST_FUNCTION_VERSION: u32 = 2;

/// Limits applied to every module compiled with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// Metering points (roughly: wasm operators) one callback may use before it traps.
    pub max_fuel: u64,
    /// Linear-memory cap, in 64 KiB pages.
    pub memory_limit_pages: u32,
}

/// A module ready to instantiate, with the engine it must be instantiated under.
pub struct CompiledModule {
    /// The engine that compiled or loaded `module`, carrying the memory limit. One engine per
    /// module because the [`Fuel`] middleware records per-module state and refuses a second
    /// module: never compile anything else with this engine.
    pub engine: Engine,
    /// The metered module; instantiate it in a `Store` built from `engine`.
    pub module: Module,
    /// Lowercase hex sha256 of the wasm binary (after WAT conversion when the input was text).
    pub sha256: String,
    /// Whether `module` came from the on-disk cache rather than from Cranelift.
    pub from_cache: bool,
    /// Wall time spent in [`compile`], cache lookup included.
    pub compile_time: Duration,
}

/// Why a plugin module cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The input was neither a wasm binary nor valid WebAssembly text.
    #[error("plugin is neither a wasm binary nor valid WebAssembly text: {0}")]
    InvalidText(String),
    /// wasmer refused or failed to compile the module (invalid wasm, unsupported feature, ...).
    #[error("plugin failed to compile: {0}")]
    Compile(String),
    /// A linear memory's declared minimum already exceeds the limit, so no instance could ever
    /// be created.
    #[error(
        "plugin declares a linear memory of at least {minimum_pages} pages (64 KiB each) \
         but the memory limit is {limit_pages} pages"
    )]
    TooMuchMemory {
        /// The declared minimum of the first memory over the limit, in 64 KiB pages.
        minimum_pages: u64,
        /// [`EngineSettings::memory_limit_pages`].
        limit_pages: u32,
    },
    /// A shared linear memory: with it, `memory.atomic.wait` could park a worker thread with
    /// nothing to wake it, which no fuel check can stop. Proxy-Wasm plugins are
    /// single-threaded and never need one.
    #[error("plugin declares a shared linear memory, which Loom does not run")]
    SharedMemory,
}

/// Compiles `wasm` (binary or WAT text) with Cranelift + metering + the memory limit, or loads it
/// from `cache_dir` when a matching artifact is there; writes the artifact after compiling.
///
/// Memory minimums above the limit are refused here, before any compile work: defined memories
/// from the binary's memory section, imported ones from the module's import types. (The
/// tunables refuse them again at instantiation, as a backstop.) A cache directory that cannot be
/// opened is logged and compiling goes on without it.
///
/// CPU-heavy (Cranelift uses every core for hundreds of milliseconds on a large module): call it
/// from a blocking thread, never from a request task.
pub fn compile(
    wasm: &[u8],
    settings: &EngineSettings,
    cache_dir: Option<&Path>,
) -> Result<CompiledModule, EngineError> {
    let started = Instant::now();
    let binary =
        wasmer::wat2wasm(wasm).map_err(|error| EngineError::InvalidText(error.to_string()))?;
    check_defined_memories(&binary, settings.memory_limit_pages)?;
    let sha256 = sha256_hex(&binary);
    let engine = build_engine(settings);

    let cache = cache_dir.and_then(|dir| {
        ModuleCache::new(dir)
            .inspect_err(|error| warn!("plugin cache disabled: {}: {error}", dir.display()))
            .ok()
    });
    let key = ModuleCache::key(&sha256, settings);
    let cached = cache.as_ref().and_then(|cache| cache.load(&engine, &key));
    let from_cache = cached.is_some();
    let module = match cached {
        Some(module) => module,
        None => Module::from_binary(&engine, &binary)
            .map_err(|error| EngineError::Compile(error.to_string()))?,
    };
    check_imported_memories(&module, settings.memory_limit_pages)?;
    if let Some(cache) = &cache
        && !from_cache
    {
        cache.store(&module, &key);
    }
    Ok(CompiledModule {
        engine,
        module,
        sha256,
        from_cache,
        compile_time: started.elapsed(),
    })
}

/// Gives the next callback a fresh budget (also clears the exhausted flag).
///
/// Call it before every callback: the budget is per callback, not per instance lifetime. Not
/// before a nested call into the guest from a host function (e.g. its allocator): that would
/// hand the running callback a fresh budget. Looks two exported globals up by name, about 30 ns
/// each; [`Budget`] avoids that.
///
/// # Panics
/// If `instance` was not compiled by [`compile`] (it lacks the fuel globals).
pub fn set_budget(store: &mut impl AsStoreMut, instance: &Instance, points: u64) {
    let (remaining, exhausted) = fuel_globals(instance).expect("a module compiled with fuel");
    let set = remaining
        .set(store, Value::I64(fuel::clamp(points)))
        .and_then(|()| exhausted.set(store, Value::I32(0)));
    debug_assert!(set.is_ok(), "budget set on a foreign store");
}

/// Points left after a call; None when the budget was exhausted.
///
/// This is the only reliable way to tell a fuel trap from any other: the check traps through
/// an ordinary `unreachable`, so the `RuntimeError` carries the same
/// `TrapCode::UnreachableCodeReached` as a guest panic. After a failed call, `None` here means
/// the budget ran out.
///
/// # Panics
/// If `instance` was not compiled by [`compile`] (it lacks the fuel globals).
pub fn remaining_budget(store: &mut impl AsStoreMut, instance: &Instance) -> Option<u64> {
    let (remaining, exhausted) = fuel_globals(instance).expect("a module compiled with fuel");
    if exhausted.get(store) != Value::I32(0) {
        return None;
    }
    points_left(remaining.get(store))
}

/// The remaining-fuel and exhausted globals of a module compiled by [`compile`].
fn fuel_globals(instance: &Instance) -> Option<(&Global, &Global)> {
    Some((
        instance.exports.get_global(fuel::REMAINING_EXPORT).ok()?,
        instance.exports.get_global(fuel::EXHAUSTED_EXPORT).ok()?,
    ))
}

/// What a remaining-fuel global's value means in points: an overrun since the last check
/// (the global may go below zero between checks) leaves none.
fn points_left(value: Value) -> Option<u64> {
    match value {
        Value::I64(points) => Some(u64::try_from(points).unwrap_or(0)),
        _ => None,
    }
}

/// An instance's two metering globals, looked up once.
///
/// Same effect as [`set_budget`] and [`remaining_budget`] without their by-name export lookups:
/// a set + read pair costs about 25 ns instead of 120 ns, against about 50 ns for the wasm call
/// itself (release build, `per_call_cost` test). Keep one next to each instance for the
/// per-callback path.
#[derive(Clone)]
pub struct Budget {
    remaining_points: Global,
    points_exhausted: Global,
    /// Whether `points_exhausted` may be set: only after a call that ran out, since
    /// [`Budget::remaining`] reads it after every call. While it is clear, [`Budget::set`]
    /// leaves it alone (one global write less per callback).
    exhausted_may_be_set: bool,
}

impl Budget {
    /// The globals the [`Fuel`] middleware added to `instance`; `None` if it has none (it was
    /// not compiled by [`compile`]).
    pub fn of(instance: &Instance) -> Option<Budget> {
        let (remaining_points, points_exhausted) = fuel_globals(instance)?;
        Some(Budget {
            remaining_points: remaining_points.clone(),
            points_exhausted: points_exhausted.clone(),
            // Unknown until the first read: cleared by the first `set`.
            exhausted_may_be_set: true,
        })
    }

    /// Gives the next callback `points` (also clears the exhausted flag), like [`set_budget`].
    pub fn set(&mut self, store: &mut impl AsStoreMut, points: u64) {
        // Setting can only fail for a store other than the instance's (a caller bug). The
        // budget then stays spent, which errs towards trapping, never towards running unmetered.
        let remaining = self
            .remaining_points
            .set(store, Value::I64(fuel::clamp(points)));
        debug_assert!(remaining.is_ok(), "budget set on a foreign store");
        if self.exhausted_may_be_set {
            let exhausted = self.points_exhausted.set(store, Value::I32(0));
            debug_assert!(exhausted.is_ok(), "budget set on a foreign store");
            self.exhausted_may_be_set = exhausted.is_err();
        }
    }

    /// Points left after a call; `None` when the budget was exhausted, like [`remaining_budget`].
    /// `call_failed`: whether the call returned an error. Running out of points always traps,
    /// so after a call that returned normally the exhausted flag is not read.
    pub fn remaining(&mut self, store: &mut impl AsStoreMut, call_failed: bool) -> Option<u64> {
        if call_failed && self.points_exhausted.get(store) != Value::I32(0) {
            self.exhausted_may_be_set = true;
            return None;
        }
        let remaining = self.remaining_points.get(store);
        if matches!(remaining, Value::I64(points) if points < 0) {
            // Spent: a check may have trapped inside a nested call into the guest (its
            // allocator, from a host function) whose failure the callback survived, leaving
            // the flag set. The next `set` must clear it.
            self.exhausted_may_be_set = true;
        }
        points_left(remaining)
    }
}

/// Metering cost of one operator. A plain `fn` rather than a closure so it is the same on every
/// build and [`COST_FUNCTION_VERSION`] can describe it. A flat cost keeps the budget readable as
/// "operators"; memory.grow and calls into the host are bounded by the memory limit and by the
/// host functions themselves.
fn operator_cost(_operator: &Operator<'_>) -> u64 {
    1
}

/// A fresh engine for one module: Cranelift with metering, and the memory-limiting tunables.
/// Keep in step with [`COMPILER_SETTINGS`].
fn build_engine(settings: &EngineSettings) -> Engine {
    let mut compiler = Cranelift::new();
    compiler.opt_level(CraneliftOptLevel::Speed);
    compiler.canonicalize_nans(false);
    // The initial limit only covers the start function and anything run before the first
    // `set_budget`; callbacks get theirs from `set_budget`.
    compiler.push_middleware(Arc::new(Fuel::new(settings.max_fuel, operator_cost)));
    let mut engine: Engine = EngineBuilder::new(compiler).into();
    engine.set_tunables(LimitingTunables::new(settings.memory_limit_pages));
    engine
}

/// Refuses a module whose own memories start above the limit, by reading the memory section
/// only. Parse errors are left for wasmer's validation to report with its better messages.
fn check_defined_memories(binary: &[u8], limit_pages: u32) -> Result<(), EngineError> {
    for payload in Parser::new(0).parse_all(binary) {
        match payload {
            Ok(Payload::MemorySection(memories)) => {
                for memory in memories {
                    let Ok(memory) = memory else {
                        return Ok(());
                    };
                    if memory.shared {
                        return Err(EngineError::SharedMemory);
                    }
                    ensure_within_limit(memory.initial, limit_pages)?;
                }
                // Only one memory section is allowed.
                return Ok(());
            }
            // The memory section precedes the code, so nothing further can declare one.
            Ok(Payload::CodeSectionStart { .. }) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Refuses a module that imports a memory bigger than the limit; no host memory could satisfy it.
fn check_imported_memories(module: &Module, limit_pages: u32) -> Result<(), EngineError> {
    for import in module.imports() {
        if let ExternType::Memory(memory) = import.ty() {
            if memory.shared {
                return Err(EngineError::SharedMemory);
            }
            ensure_within_limit(u64::from(memory.minimum.0), limit_pages)?;
        }
    }
    Ok(())
}

fn ensure_within_limit(minimum_pages: u64, limit_pages: u32) -> Result<(), EngineError> {
    if minimum_pages > u64::from(limit_pages) {
        return Err(EngineError::TooMuchMemory {
            minimum_pages,
            limit_pages,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmer::sys::vm::TrapCode;
    use wasmer::{Store, TypedFunction, imports};

    const SETTINGS: EngineSettings = EngineSettings {
        max_fuel: 100_000,
        memory_limit_pages: 16,
    };

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn instantiate(
        compiled: &CompiledModule,
    ) -> Result<(Store, Instance), Box<dyn std::error::Error>> {
        let mut store = Store::new(compiled.engine.clone());
        let instance = Instance::new(&mut store, &compiled.module, &imports! {})?;
        Ok((store, instance))
    }

    const LOOPS: &str = r#"
        (module
          (func (export "spin") (loop $forever (br $forever)))
          (func (export "add") (param i32 i32) (result i32)
            (i32.add (local.get 0) (local.get 1)))
          (func (export "crash") unreachable))
    "#;

    #[test]
    fn infinite_loop_traps_when_budget_runs_out_and_instance_recovers() -> TestResult {
        let compiled = compile(LOOPS.as_bytes(), &SETTINGS, None)?;
        let (mut store, instance) = instantiate(&compiled)?;
        let spin: TypedFunction<(), ()> = instance.exports.get_typed_function(&store, "spin")?;
        let add: TypedFunction<(i32, i32), i32> =
            instance.exports.get_typed_function(&store, "add")?;
        let crash: TypedFunction<(), ()> = instance.exports.get_typed_function(&store, "crash")?;

        set_budget(&mut store, &instance, 10_000);
        let exhausted = spin.call(&mut store).err().ok_or("spin returned")?;
        assert_eq!(remaining_budget(&mut store, &instance), None);
        // Fuel traps through `unreachable`: the trap code alone cannot tell it from a crash.
        assert_eq!(exhausted.to_trap(), Some(TrapCode::UnreachableCodeReached));

        set_budget(&mut store, &instance, 10_000);
        assert_eq!(add.call(&mut store, 2, 3)?, 5);
        let left = remaining_budget(&mut store, &instance).ok_or("budget exhausted")?;
        assert!(left > 0 && left < 10_000, "{left}");

        // The cached handle sees and does the same as the free functions.
        let mut budget = Budget::of(&instance).ok_or("not metered")?;
        assert_eq!(budget.remaining(&mut store, false), Some(left));
        set_budget(&mut store, &instance, 10_000);
        assert!(spin.call(&mut store).is_err());
        assert_eq!(budget.remaining(&mut store, true), None);
        budget.set(&mut store, 10_000);
        assert_eq!(remaining_budget(&mut store, &instance), Some(10_000));
        assert_eq!(add.call(&mut store, 2, 3)?, 5);
        assert_eq!(budget.remaining(&mut store, false), Some(left));
        // A call that failed without running out (a crash) still reports what it used.
        budget.set(&mut store, 10_000);
        assert!(crash.call(&mut store).is_err());
        assert!(budget.remaining(&mut store, true).is_some());

        set_budget(&mut store, &instance, 10_000);
        let crashed = crash.call(&mut store).err().ok_or("crash returned")?;
        assert_eq!(crashed.to_trap(), Some(TrapCode::UnreachableCodeReached));
        assert!(remaining_budget(&mut store, &instance).is_some());
        Ok(())
    }

    const GROWER: &str = r#"
        (module
          (memory (export "memory") 1)
          (func (export "grow_until_refused") (result i32)
            (block $refused
              (loop $again
                (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                (br $again)))
            (memory.size))
          (func (export "grow") (param i32) (result i32)
            (memory.grow (local.get 0))))
    "#;

    /// Work without a loop: an exponential recursion (fib(40) makes about 330 million calls),
    /// a deep recursion doing its work on the way back, and a straight-line function of 32
    /// operators.
    const NO_LOOPS: &str = r#"
        (module
          (func $fib (export "fib") (param i32) (result i32)
            (if (result i32) (i32.lt_u (local.get 0) (i32.const 2))
              (then (local.get 0))
              (else (i32.add
                (call $fib (i32.sub (local.get 0) (i32.const 1)))
                (call $fib (i32.sub (local.get 0) (i32.const 2)))))))
          (func $deep (export "deep") (param i32) (result i32)
            (if (local.get 0)
              (then (drop (call $deep (i32.sub (local.get 0) (i32.const 1))))))
            (i32.const 1)
            (i32.add (i32.const 1)) (i32.add (i32.const 1)) (i32.add (i32.const 1))
            (i32.add (i32.const 1)) (i32.add (i32.const 1)) (i32.add (i32.const 1))
            (i32.add (i32.const 1)) (i32.add (i32.const 1)) (i32.add (i32.const 1)))
          (func (export "straight") (result i32)
            (i32.const 1)
            (i32.add (i32.const 1)) (i32.add (i32.const 1)) (i32.add (i32.const 1))
            (i32.add (i32.const 1)) (i32.add (i32.const 1)) (i32.add (i32.const 1))
            (i32.add (i32.const 1)) (i32.add (i32.const 1)) (i32.add (i32.const 1))
            (i32.add (i32.const 1)) (i32.add (i32.const 1)) (i32.add (i32.const 1))
            (i32.add (i32.const 1)) (i32.add (i32.const 1)) (i32.add (i32.const 1))))
    "#;

    #[test]
    fn recursion_without_loops_runs_out_and_straight_code_is_counted() -> TestResult {
        let compiled = compile(NO_LOOPS.as_bytes(), &SETTINGS, None)?;
        let (mut store, instance) = instantiate(&compiled)?;
        let fib: TypedFunction<i32, i32> = instance.exports.get_typed_function(&store, "fib")?;
        let straight: TypedFunction<(), i32> =
            instance.exports.get_typed_function(&store, "straight")?;

        // Each call is checked on entry: the budget stops a call tree that no loop drives.
        set_budget(&mut store, &instance, 100_000);
        let started = Instant::now();
        assert!(fib.call(&mut store, 40).is_err());
        assert_eq!(remaining_budget(&mut store, &instance), None);
        assert!(started.elapsed() < Duration::from_secs(5));
        set_budget(&mut store, &instance, 100_000);
        assert_eq!(fib.call(&mut store, 10)?, 55);

        // Going down 100 calls fits in 1,000 points; coming back up, each frame's own code
        // does not: the check after each call stops it (without it, every frame would finish
        // unchecked and the call return normally).
        let deep: TypedFunction<i32, i32> = instance.exports.get_typed_function(&store, "deep")?;
        set_budget(&mut store, &instance, 1_000);
        assert!(deep.call(&mut store, 100).is_err());
        assert_eq!(remaining_budget(&mut store, &instance), None);
        set_budget(&mut store, &instance, 100_000);
        assert_eq!(deep.call(&mut store, 100)?, 10);

        // 31 operators and the function's end: every one is counted.
        set_budget(&mut store, &instance, 1_000);
        assert_eq!(straight.call(&mut store)?, 16);
        assert_eq!(remaining_budget(&mut store, &instance), Some(1_000 - 32));
        // Straight-line code runs to its end once the entry check passed: an overrun leaves
        // no points, it is not a trap (the next check would trap).
        set_budget(&mut store, &instance, 5);
        assert_eq!(straight.call(&mut store)?, 16);
        assert_eq!(remaining_budget(&mut store, &instance), Some(0));
        Ok(())
    }

    #[test]
    fn a_shared_memory_is_refused_before_it_could_park_a_thread() {
        // `memory.atomic.wait32` with no timeout on a shared memory would block forever.
        let waits = r#"
            (module
              (memory (export "memory") 1 1 shared)
              (func (export "wait") (result i32)
                (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1))))
        "#;
        let refused = compile(waits.as_bytes(), &SETTINGS, None).err();
        assert!(
            matches!(refused, Some(EngineError::SharedMemory)),
            "{refused:?}"
        );
        let imports = r#"(module (import "env" "memory" (memory 1 1 shared)))"#;
        let refused = compile(imports.as_bytes(), &SETTINGS, None).err();
        assert!(
            matches!(refused, Some(EngineError::SharedMemory)),
            "{refused:?}"
        );
    }

    #[test]
    fn memory_growth_stops_at_the_limit() -> TestResult {
        let compiled = compile(GROWER.as_bytes(), &SETTINGS, None)?;
        let (mut store, instance) = instantiate(&compiled)?;
        set_budget(&mut store, &instance, SETTINGS.max_fuel);
        let grow_all: TypedFunction<(), i32> = instance
            .exports
            .get_typed_function(&store, "grow_until_refused")?;
        assert_eq!(grow_all.call(&mut store)?, 16);
        let grow: TypedFunction<i32, i32> = instance.exports.get_typed_function(&store, "grow")?;
        assert_eq!(grow.call(&mut store, 1)?, -1);
        assert_eq!(grow.call(&mut store, 0)?, 16);
        let memory = instance.exports.get_memory("memory")?;
        assert_eq!(memory.view(&store).size().0, 16);
        assert_eq!(memory.ty(&store).maximum.map(|pages| pages.0), Some(16));
        Ok(())
    }

    #[test]
    fn declared_maximum_above_the_limit_is_clamped_not_refused() -> TestResult {
        let wat = r#"(module (memory (export "memory") 1 65536)
                       (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"#;
        let compiled = compile(wat.as_bytes(), &SETTINGS, None)?;
        let (mut store, instance) = instantiate(&compiled)?;
        set_budget(&mut store, &instance, 1_000);
        let memory = instance.exports.get_memory("memory")?;
        assert_eq!(memory.ty(&store).maximum.map(|pages| pages.0), Some(16));
        let grow: TypedFunction<i32, i32> = instance.exports.get_typed_function(&store, "grow")?;
        assert_eq!(grow.call(&mut store, 15)?, 1);
        assert_eq!(grow.call(&mut store, 1)?, -1);
        Ok(())
    }

    #[test]
    fn memory_minimum_above_the_limit_fails_at_compile() {
        for wat in [
            "(module (memory 100))",
            r#"(module (import "env" "memory" (memory 100)))"#,
        ] {
            match compile(wat.as_bytes(), &SETTINGS, None) {
                Err(error @ EngineError::TooMuchMemory { .. }) => {
                    let message = error.to_string();
                    assert!(
                        message.contains("100") && message.contains("16"),
                        "{message}"
                    );
                }
                Err(other) => panic!("{wat}: unexpected error {other}"),
                Ok(_) => panic!("{wat}: compiled"),
            }
        }
    }

    #[test]
    fn memory_minimum_above_the_limit_also_fails_at_instantiation() -> TestResult {
        // Bypasses compile()'s check to exercise the tunables' backstop.
        let engine = build_engine(&SETTINGS);
        let module = Module::new(&engine, "(module (memory 100))")?;
        let mut store = Store::new(engine);
        let message = Instance::new(&mut store, &module, &imports! {})
            .err()
            .map(|error| error.to_string())
            .ok_or("instantiated")?;
        assert!(
            message.contains("100") && message.contains("16"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn invalid_input_is_reported() {
        assert!(matches!(
            compile(b"(module (func", &SETTINGS, None),
            Err(EngineError::InvalidText(_))
        ));
        assert!(matches!(
            compile(b"\0asm\x01\0\0\0\x05", &SETTINGS, None),
            Err(EngineError::Compile(_))
        ));
    }

    #[test]
    fn cache_round_trip_and_corruption_fallback() -> TestResult {
        let dir = tempfile::tempdir()?;
        let first = compile(LOOPS.as_bytes(), &SETTINGS, Some(dir.path()))?;
        assert!(!first.from_cache);
        let key = ModuleCache::key(&first.sha256, &SETTINGS);
        let path = dir.path().join(&key);
        assert!(path.is_file());

        let second = compile(LOOPS.as_bytes(), &SETTINGS, Some(dir.path()))?;
        assert!(second.from_cache);
        assert_eq!(second.sha256, first.sha256);
        let (mut store, instance) = instantiate(&second)?;
        set_budget(&mut store, &instance, 1_000);
        let add: TypedFunction<(i32, i32), i32> =
            instance.exports.get_typed_function(&store, "add")?;
        assert_eq!(add.call(&mut store, 40, 2)?, 42);
        // The cached module is metered too.
        set_budget(&mut store, &instance, 1_000);
        let spin: TypedFunction<(), ()> = instance.exports.get_typed_function(&store, "spin")?;
        assert!(spin.call(&mut store).is_err());
        assert_eq!(remaining_budget(&mut store, &instance), None);
        drop((store, instance, second));

        let good = std::fs::read(&path)?;
        let mut corrupted = good.clone();
        let middle = corrupted.len() / 2;
        corrupted[middle] ^= 0xff;
        for broken in [corrupted, good[..good.len() / 2].to_vec(), Vec::new()] {
            std::fs::write(&path, &broken)?;
            let recompiled = compile(LOOPS.as_bytes(), &SETTINGS, Some(dir.path()))?;
            assert!(!recompiled.from_cache);
            let rewritten = std::fs::read(&path)?;
            assert_ne!(rewritten, broken);
            assert!(compile(LOOPS.as_bytes(), &SETTINGS, Some(dir.path()))?.from_cache);
        }

        let other_fuel = EngineSettings {
            max_fuel: 1,
            ..SETTINGS
        };
        let other_memory = EngineSettings {
            memory_limit_pages: 17,
            ..SETTINGS
        };
        assert_ne!(ModuleCache::key(&first.sha256, &other_fuel), key);
        assert_ne!(ModuleCache::key(&first.sha256, &other_memory), key);
        assert!(!compile(LOOPS.as_bytes(), &other_fuel, Some(dir.path()))?.from_cache);
        Ok(())
    }

    #[test]
    fn unusable_cache_directory_only_disables_the_cache() -> TestResult {
        let file = tempfile::NamedTempFile::new()?;
        let compiled = compile(LOOPS.as_bytes(), &SETTINGS, Some(file.path()))?;
        assert!(!compiled.from_cache);
        Ok(())
    }

    /// Host→wasm call cost. Run with
    /// `cargo test --release -- --ignored --nocapture per_call_cost`.
    #[test]
    #[ignore = "benchmark; run in release mode"]
    fn per_call_cost() -> TestResult {
        const CALLS: u32 = 100_000;
        let wat = r#"(module (func (export "echo") (param i32) (result i32) (local.get 0)))"#;
        let compiled = compile(wat.as_bytes(), &SETTINGS, None)?;
        let (mut store, instance) = instantiate(&compiled)?;
        let echo: TypedFunction<i32, i32> = instance.exports.get_typed_function(&store, "echo")?;
        set_budget(&mut store, &instance, SETTINGS.max_fuel);
        for round in 0..5 {
            let started = Instant::now();
            for call in 0..CALLS {
                set_budget(&mut store, &instance, SETTINGS.max_fuel);
                std::hint::black_box(echo.call(&mut store, std::hint::black_box(call as i32))?);
            }
            let with_budget = started.elapsed();

            // Without a reset per call the budget is shared by all the calls.
            set_budget(&mut store, &instance, u64::MAX);
            let started = Instant::now();
            for call in 0..CALLS {
                std::hint::black_box(echo.call(&mut store, std::hint::black_box(call as i32))?);
            }
            let call_only = started.elapsed();

            let started = Instant::now();
            for _ in 0..CALLS {
                set_budget(&mut store, &instance, SETTINGS.max_fuel);
                std::hint::black_box(remaining_budget(&mut store, &instance));
            }
            let budget_only = started.elapsed();

            let mut budget = Budget::of(&instance).ok_or("not metered")?;
            let started = Instant::now();
            for call in 0..CALLS {
                budget.set(&mut store, SETTINGS.max_fuel);
                std::hint::black_box(echo.call(&mut store, std::hint::black_box(call as i32))?);
            }
            let with_cached_budget = started.elapsed();

            let started = Instant::now();
            for _ in 0..CALLS {
                budget.set(&mut store, SETTINGS.max_fuel);
                std::hint::black_box(budget.remaining(&mut store, false));
            }
            let cached_budget_only = started.elapsed();

            let per_call = |total: Duration| total.as_nanos() as f64 / f64::from(CALLS);
            eprintln!(
                "round {round}: set_budget + call {:.1} ns, Budget::set + call {:.1} ns, \
                 call alone {:.1} ns, set_budget + remaining_budget {:.1} ns, \
                 Budget::set + Budget::remaining {:.1} ns",
                per_call(with_budget),
                per_call(with_cached_budget),
                per_call(call_only),
                per_call(budget_only),
                per_call(cached_budget_only),
            );
        }
        Ok(())
    }

    /// Compile and cache-load time of a large module: the file named by `LOOM_BENCH_WASM`, or a
    /// generated module of about 100 KB. Run with
    /// `cargo test --release -- --ignored --nocapture compile_time`.
    #[test]
    #[ignore = "benchmark; run in release mode"]
    fn compile_time_of_a_large_module() -> TestResult {
        let wasm = match std::env::var_os("LOOM_BENCH_WASM") {
            Some(path) => std::fs::read(path)?,
            None => wasmer::wat2wasm(generated_wat(1_000).as_bytes())?.into_owned(),
        };
        let settings = EngineSettings {
            max_fuel: 10_000_000,
            memory_limit_pages: 1_024,
        };
        let dir = tempfile::tempdir()?;
        let compiled = compile(&wasm, &settings, Some(dir.path()))?;
        let artifact_size = std::fs::metadata(
            dir.path()
                .join(ModuleCache::key(&compiled.sha256, &settings)),
        )?
        .len();
        let started = Instant::now();
        let uncached = compile(&wasm, &settings, None)?;
        let compile_without_cache = started.elapsed();
        let loaded = compile(&wasm, &settings, Some(dir.path()))?;
        assert!(!compiled.from_cache && !uncached.from_cache && loaded.from_cache);
        eprintln!(
            "{} byte wasm ({artifact_size} byte artifact): compile + store {:?}, compile {:?}, \
             load from cache {:?}",
            wasm.len(),
            compiled.compile_time,
            compile_without_cache,
            loaded.compile_time,
        );
        Ok(())
    }

    /// A module with `functions` small but non-trivial functions (about 100 bytes of wasm each).
    fn generated_wat(functions: usize) -> String {
        let mut wat = String::from("(module (memory (export \"memory\") 1)\n");
        for index in 0..functions {
            wat.push_str(&format!(
                "(func (export \"f{index}\") (param i32 i32) (result i32) (local i32)
                   (local.set 2 (i32.const {index}))
                   (block $done (loop $again
                     (br_if $done (i32.ge_u (local.get 2) (local.get 1)))
                     (i32.store (i32.and (local.get 2) (i32.const 0xfffc))
                       (i32.xor (i32.mul (local.get 0) (i32.const 31)) (local.get 2)))
                     (local.set 0 (i32.add (local.get 0) (i32.load (i32.const 64))))
                     (local.set 2 (i32.add (local.get 2) (i32.const 1)))
                     (br $again)))
                   (if (result i32) (i32.gt_s (local.get 0) (i32.const {index}))
                     (then (i32.sub (local.get 0) (local.get 1)))
                     (else (i32.add (local.get 0) (local.get 2)))))\n"
            ));
        }
        wat.push(')');
        wat
    }
}
