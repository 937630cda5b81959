//! Reading and writing the guest's linear memory from host functions. Every access is
//! bounds-checked by wasmer; a bad pointer from a plugin becomes INVALID_MEMORY_ACCESS for
//! that call, never a host fault.

use wasmer::{FunctionEnvMut, WasmPtr};

use super::HostState;
use crate::plugin::abi::status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMemoryError {
    /// A pointer or length outside the guest's memory, or no exported memory.
    OutOfBounds,
    /// The guest's allocator returned 0 or trapped.
    AllocationFailed,
}

impl GuestMemoryError {
    pub fn status(self) -> i32 {
        match self {
            GuestMemoryError::OutOfBounds => status::INVALID_MEMORY_ACCESS,
            GuestMemoryError::AllocationFailed => status::INTERNAL_FAILURE,
        }
    }
}

/// Copies `len` bytes at `pointer` out of the guest.
pub fn read(
    env: &FunctionEnvMut<HostState>,
    pointer: i32,
    len: i32,
) -> Result<Vec<u8>, GuestMemoryError> {
    let memory = env
        .data()
        .memory
        .as_ref()
        .ok_or(GuestMemoryError::OutOfBounds)?;
    let len = usize::try_from(len as u32).map_err(|_| GuestMemoryError::OutOfBounds)?;
    let view = memory.view(env);
    // The guest chooses `len`: check it against its memory before allocating anything, so
    // that a bogus length cannot make the host allocate up to 4 GiB.
    let end = u64::from(pointer as u32).saturating_add(len as u64);
    if end > view.data_size() {
        return Err(GuestMemoryError::OutOfBounds);
    }
    let mut buffer = Vec::with_capacity(len);
    if len > 0 {
        // Not zeroed first: every byte is overwritten by the read or the Vec is dropped.
        view.read_uninit(
            u64::from(pointer as u32),
            &mut buffer.spare_capacity_mut()[..len],
        )
        .map_err(|_| GuestMemoryError::OutOfBounds)?;
        // SAFETY: `read_uninit` initialised all `len` bytes of the spare capacity.
        unsafe { buffer.set_len(len) };
    }
    Ok(buffer)
}

/// Lends two byte ranges of the guest's memory (`(pointer, len)` each) to `with`, together with
/// the host state, without copying them out: for host functions that only parse what the
/// guest passed (a header's name and value) and would otherwise allocate twice to do it.
pub fn with_two_ranges<R>(
    env: &mut FunctionEnvMut<HostState>,
    first: (i32, i32),
    second: (i32, i32),
    with: impl FnOnce(&mut HostState, &[u8], &[u8]) -> R,
) -> Result<R, GuestMemoryError> {
    let (state, store) = env.data_and_store_mut();
    let memory = state.memory.clone().ok_or(GuestMemoryError::OutOfBounds)?;
    let view = memory.view(&store);
    // SAFETY: the slice is only used during this host call, while the guest is suspended in
    // it: nothing can grow the memory (which could move it) or write to it meanwhile, since
    // `with` gets the host state but no store to call back into the guest with, and plugin
    // memories are never shared between instances.
    let memory_bytes = unsafe { view.data_unchecked() };
    let range = |(pointer, len): (i32, i32)| {
        let start = pointer as u32 as usize;
        let end = start.checked_add(len as u32 as usize)?;
        memory_bytes.get(start..end)
    };
    let (Some(first), Some(second)) = (range(first), range(second)) else {
        return Err(GuestMemoryError::OutOfBounds);
    };
    Ok(with(state, first, second))
}

/// Reads a UTF-8 string (names, keys); `None` for bad memory or bad UTF-8.
pub fn read_string(env: &FunctionEnvMut<HostState>, pointer: i32, len: i32) -> Option<String> {
    String::from_utf8(read(env, pointer, len).ok()?).ok()
}

pub fn write_u32(
    env: &FunctionEnvMut<HostState>,
    pointer: i32,
    value: u32,
) -> Result<(), GuestMemoryError> {
    write_value(env, pointer, value)
}

pub fn write_u64(
    env: &FunctionEnvMut<HostState>,
    pointer: i32,
    value: u64,
) -> Result<(), GuestMemoryError> {
    write_value(env, pointer, value)
}

/// Writes one little-endian value where the guest asked for a result.
fn write_value<T: wasmer::ValueType>(
    env: &FunctionEnvMut<HostState>,
    pointer: i32,
    value: T,
) -> Result<(), GuestMemoryError> {
    let memory = env
        .data()
        .memory
        .as_ref()
        .ok_or(GuestMemoryError::OutOfBounds)?;
    WasmPtr::<T>::new(pointer as u32)
        .write(&memory.view(env), value)
        .map_err(|_| GuestMemoryError::OutOfBounds)
}

pub fn write_bytes(
    env: &FunctionEnvMut<HostState>,
    pointer: i32,
    data: &[u8],
) -> Result<(), GuestMemoryError> {
    let memory = env
        .data()
        .memory
        .as_ref()
        .ok_or(GuestMemoryError::OutOfBounds)?;
    memory
        .view(env)
        .write(u64::from(pointer as u32), data)
        .map_err(|_| GuestMemoryError::OutOfBounds)
}

/// Hands `data` to the guest the way the SDKs expect: a buffer allocated by the guest's own
/// allocator (the SDK frees it), its address at `return_pointer` and its size at
/// `return_size`. Empty data is returned as a null pointer and size 0, without allocating.
pub fn return_bytes(
    env: &mut FunctionEnvMut<HostState>,
    data: &[u8],
    return_pointer: i32,
    return_size: i32,
) -> i32 {
    match try_return_bytes(env, data, return_pointer, return_size) {
        Ok(()) => status::OK,
        Err(error) => error.status(),
    }
}

fn try_return_bytes(
    env: &mut FunctionEnvMut<HostState>,
    data: &[u8],
    return_pointer: i32,
    return_size: i32,
) -> Result<(), GuestMemoryError> {
    let address = if data.is_empty() {
        0
    } else {
        let allocate = env
            .data()
            .allocate
            .clone()
            .ok_or(GuestMemoryError::AllocationFailed)?;
        let size = i32::try_from(data.len()).map_err(|_| GuestMemoryError::AllocationFailed)?;
        // The guest allocator may itself call host functions; no borrow of the state is
        // held across this call.
        let address = allocate
            .call(env, size)
            .map_err(|_| GuestMemoryError::AllocationFailed)?;
        if address == 0 {
            return Err(GuestMemoryError::AllocationFailed);
        }
        write_bytes(env, address, data)?;
        address
    };
    write_u32(env, return_pointer, address as u32)?;
    write_u32(env, return_size, data.len() as u32)
}
