//! Fuel for plugin code: a Cranelift middleware that makes every callback run on a budget of
//! operators, so that a runaway loop or recursion traps instead of pinning a worker thread.
//!
//! It counts what wasmer's `Metering` middleware counts (the cost of every operator, charged
//! at the end of each straight-line run of code), but checks the budget only where execution
//! can come back round or pile up: at the top of every loop body, on entry to every function
//! and after every call returns. Every other run is a decrement alone, about half the code
//! `Metering` puts there (it compares before each decrement). No execution can go on without
//! passing a check: wasm jumps backwards only to a loop's top, unbounded work without loops
//! needs ever more calls, and the check after a call stops every frame of a deep call stack
//! from finishing its own code once the budget is spent. A callback may therefore overrun its
//! budget by the straight-line code of one function (up to its next check) before it traps;
//! the budget reads "at most about this many operators", as before.
//!
//! The remaining fuel is a signed 64-bit global, so an overrun shows as a negative number;
//! a second global records that a check trapped, which tells a fuel trap from the guest's
//! own `unreachable`.

use std::sync::Mutex;

use wasmer::sys::{FunctionMiddleware, MiddlewareError, MiddlewareReaderState, ModuleMiddleware};
use wasmer::wasmparser::{BlockType, Operator};
use wasmer::{
    ExportIndex, GlobalInit, GlobalType, LocalFunctionIndex, ModuleInfo, Mutability, Type,
};

/// Export under which a metered module exposes its remaining fuel (i64).
pub const REMAINING_EXPORT: &str = "loom_fuel_remaining";
/// Export under which a metered module exposes whether a check trapped (i32, 0 or 1).
pub const EXHAUSTED_EXPORT: &str = "loom_fuel_exhausted";

/// The middleware; one per module (it records the module's global indexes).
pub struct Fuel {
    initial: i64,
    cost: fn(&Operator<'_>) -> u64,
    /// The remaining and exhausted globals' indexes, set by `transform_module_info`.
    globals: Mutex<Option<(u32, u32)>>,
}

impl std::fmt::Debug for Fuel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Fuel")
            .field("initial", &self.initial)
            .finish_non_exhaustive()
    }
}

impl Fuel {
    /// `initial`: the budget until the host sets one (the start function runs on it);
    /// `cost`: what one operator costs.
    pub fn new(initial: u64, cost: fn(&Operator<'_>) -> u64) -> Fuel {
        Fuel {
            initial: clamp(initial),
            cost,
            globals: Mutex::new(None),
        }
    }
}

/// A budget as the signed global holds it.
pub fn clamp(points: u64) -> i64 {
    i64::try_from(points).unwrap_or(i64::MAX)
}

impl ModuleMiddleware for Fuel {
    fn generate_function_middleware<'a>(
        &self,
        _: LocalFunctionIndex,
    ) -> Box<dyn FunctionMiddleware<'a> + 'a> {
        let (remaining, exhausted) = self
            .globals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .unwrap_or((u32::MAX, u32::MAX));
        Box::new(FunctionFuel {
            cost: self.cost,
            remaining,
            exhausted,
            accumulated: 0,
            entered: false,
        })
    }

    fn transform_module_info(&self, module_info: &mut ModuleInfo) -> Result<(), MiddlewareError> {
        let mut globals = self
            .globals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if globals.is_some() {
            return Err(MiddlewareError::new(
                "Fuel",
                "one Fuel middleware was used for two modules",
            ));
        }
        let remaining = module_info
            .globals
            .push(GlobalType::new(Type::I64, Mutability::Var));
        module_info
            .global_initializers
            .push(GlobalInit::I64Const(self.initial));
        module_info
            .exports
            .insert(REMAINING_EXPORT.to_string(), ExportIndex::Global(remaining));
        let exhausted = module_info
            .globals
            .push(GlobalType::new(Type::I32, Mutability::Var));
        module_info
            .global_initializers
            .push(GlobalInit::I32Const(0));
        module_info
            .exports
            .insert(EXHAUSTED_EXPORT.to_string(), ExportIndex::Global(exhausted));
        *globals = Some((remaining.as_u32(), exhausted.as_u32()));
        Ok(())
    }
}

struct FunctionFuel {
    cost: fn(&Operator<'_>) -> u64,
    remaining: u32,
    exhausted: u32,
    /// Cost of the operators since the last charge.
    accumulated: u64,
    /// Whether the function's entry check has been emitted.
    entered: bool,
}

impl std::fmt::Debug for FunctionFuel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FunctionFuel")
            .field("accumulated", &self.accumulated)
            .finish_non_exhaustive()
    }
}

impl FunctionFuel {
    /// `remaining -= accumulated`, for the run of code that ends here.
    fn charge<'a>(&mut self, state: &mut MiddlewareReaderState<'a>) {
        if self.accumulated == 0 {
            return;
        }
        state.extend(&[
            Operator::GlobalGet {
                global_index: self.remaining,
            },
            Operator::I64Const {
                value: i64::try_from(self.accumulated).unwrap_or(i64::MAX),
            },
            Operator::I64Sub,
            Operator::GlobalSet {
                global_index: self.remaining,
            },
        ]);
        self.accumulated = 0;
    }

    /// `if remaining < 0 { exhausted = 1; unreachable }`.
    fn check<'a>(&self, state: &mut MiddlewareReaderState<'a>) {
        state.extend(&[
            Operator::GlobalGet {
                global_index: self.remaining,
            },
            Operator::I64Const { value: 0 },
            Operator::I64LtS,
            Operator::If {
                blockty: BlockType::Empty,
            },
            Operator::I32Const { value: 1 },
            Operator::GlobalSet {
                global_index: self.exhausted,
            },
            Operator::Unreachable,
            Operator::End,
        ]);
    }
}

impl<'a> FunctionMiddleware<'a> for FunctionFuel {
    fn feed(
        &mut self,
        operator: Operator<'a>,
        state: &mut MiddlewareReaderState<'a>,
    ) -> Result<(), MiddlewareError> {
        if !self.entered {
            self.entered = true;
            self.check(state);
        }
        // Counted before the charge, so that a call's own cost is paid before the callee runs.
        self.accumulated = self.accumulated.saturating_add((self.cost)(&operator));
        if ends_straight_line_code(&operator) {
            self.charge(state);
        }
        // Every iteration comes back to a loop's top; a call's return may be the way back
        // into a frame that has not yet been checked since the budget ran out.
        let check_after = matches!(
            operator,
            Operator::Loop { .. }
                | Operator::Call { .. }
                | Operator::CallIndirect { .. }
                | Operator::CallRef { .. }
        );
        state.push_operator(operator);
        if check_after {
            self.check(state);
        }
        Ok(())
    }
}

/// Operators where a run of straight-line code ends: branches, their targets, calls and
/// returns (the same points `Metering` charges at).
fn ends_straight_line_code(operator: &Operator<'_>) -> bool {
    matches!(
        operator,
        Operator::Loop { .. }
            | Operator::End
            | Operator::If { .. }
            | Operator::Else
            | Operator::Br { .. }
            | Operator::BrTable { .. }
            | Operator::BrIf { .. }
            | Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::Return
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. }
            | Operator::Delegate { .. }
            | Operator::Catch { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
    )
}
