//! Linear-memory cap for plugin instances.
//!
//! Wasmer asks the engine's [`Tunables`] for every memory it creates, so wrapping
//! [`BaseTunables`] is the one place where a cap applies to every instance of every module,
//! whether the module was just compiled or loaded from the cache. The memory *style* (and so
//! the generated code) is left to `BaseTunables`; only the memory *type* is adjusted, which
//! matters at instantiation and at `memory.grow`, never at compile time.

use std::ptr::NonNull;

use wasmer::sys::vm::{VMMemory, VMMemoryDefinition, VMTable, VMTableDefinition};
use wasmer::sys::{BaseTunables, Tunables};
use wasmer::{MemoryError, MemoryStyle, MemoryType, Pages, TableStyle, TableType, WASM_MAX_PAGES};

/// Wraps [`BaseTunables`]: clamps every linear memory's maximum to the limit and refuses
/// memories whose minimum is above it.
///
/// Clamping rather than refusing a larger declared maximum is deliberate: Rust and C guests
/// routinely declare no maximum or a 4 GiB one, and a `memory.grow` past the clamped maximum
/// simply returns -1, which is valid wasm behaviour the guest must already handle.
#[derive(Clone)]
pub struct LimitingTunables {
    base: BaseTunables,
    limit: Pages,
}

impl LimitingTunables {
    /// `limit_pages` is in 64 KiB wasm pages; values above the wasm32 maximum (65,536 pages,
    /// 4 GiB) are treated as that maximum, since wasmer refuses larger memory types.
    pub fn new(limit_pages: u32) -> Self {
        Self {
            base: BaseTunables::new(),
            limit: Pages(limit_pages.min(WASM_MAX_PAGES)),
        }
    }

    /// The effective limit, in pages.
    pub fn limit_pages(&self) -> u32 {
        self.limit.0
    }

    /// The memory type wasmer will actually create: the declared one with its maximum capped.
    fn adjust_memory(&self, requested: &MemoryType) -> MemoryType {
        let mut adjusted = *requested;
        adjusted.maximum = Some(
            requested
                .maximum
                .map_or(self.limit, |max| max.min(self.limit)),
        );
        adjusted
    }

    fn validate_memory(&self, requested: &MemoryType) -> Result<(), MemoryError> {
        if requested.minimum > self.limit {
            // The same variant wasmer uses for its own 4 GiB cap, so the message names both
            // numbers: "The minimum requested (100 pages) memory is greater than the maximum
            // allowed memory (16 pages)".
            return Err(MemoryError::MinimumMemoryTooLarge {
                min_requested: requested.minimum,
                max_allowed: self.limit,
            });
        }
        Ok(())
    }
}

impl Tunables for LimitingTunables {
    fn memory_style(&self, memory: &MemoryType) -> MemoryStyle {
        // The style decides whether generated code carries bounds checks, so it must not depend
        // on the limit: a cached artifact is reused under any limit.
        self.base.memory_style(memory)
    }

    fn table_style(&self, table: &TableType) -> TableStyle {
        self.base.table_style(table)
    }

    fn create_host_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
    ) -> Result<VMMemory, MemoryError> {
        self.validate_memory(ty)?;
        self.base.create_host_memory(&self.adjust_memory(ty), style)
    }

    unsafe fn create_vm_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        self.validate_memory(ty)?;
        // SAFETY: forwarded unchanged from wasmer, which guarantees `vm_definition_location`
        // points at the instance's own memory definition.
        unsafe {
            self.base
                .create_vm_memory(&self.adjust_memory(ty), style, vm_definition_location)
        }
    }

    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> Result<VMTable, String> {
        self.base.create_host_table(ty, style)
    }

    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        vm_definition_location: NonNull<VMTableDefinition>,
    ) -> Result<VMTable, String> {
        // SAFETY: forwarded unchanged from wasmer, as above.
        unsafe { self.base.create_vm_table(ty, style, vm_definition_location) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maximum_is_clamped_and_never_raised() {
        let tunables = LimitingTunables::new(16);
        let unbounded = MemoryType::new(1, None, false);
        assert_eq!(tunables.adjust_memory(&unbounded).maximum, Some(Pages(16)));
        let large = MemoryType::new(1, Some(65_536), false);
        assert_eq!(tunables.adjust_memory(&large).maximum, Some(Pages(16)));
        let small = MemoryType::new(1, Some(4), false);
        assert_eq!(tunables.adjust_memory(&small).maximum, Some(Pages(4)));
    }

    #[test]
    fn minimum_above_limit_is_refused_with_both_numbers() {
        let tunables = LimitingTunables::new(16);
        let error = tunables
            .create_host_memory(&MemoryType::new(100, None, false), &MemoryStyle::Static)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("100") && error.contains("16"), "{error}");
    }

    #[test]
    fn limit_above_wasm32_maximum_is_capped() {
        assert_eq!(
            LimitingTunables::new(u32::MAX).limit_pages(),
            WASM_MAX_PAGES
        );
    }
}
