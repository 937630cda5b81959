//! The WASI preview1 calls a Proxy-Wasm SDK needs: output to the log, clocks, randomness, an
//! empty environment and argument list, and `proc_exit`. Every other preview1 import gets a
//! stub answering ENOSYS (see `super::imports_for`), as cpp-host does; no file system or
//! network access exists.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmer::{Function, FunctionEnv, FunctionEnvMut, RuntimeError, Store};

use super::HostState;
use super::memory::{read, write_bytes, write_u32, write_u64};

pub const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
pub const ERRNO_NOSYS: i32 = 52;

type Env<'a> = FunctionEnvMut<'a, HostState>;

pub fn implemented(
    name: &str,
    store: &mut Store,
    env: &FunctionEnv<HostState>,
) -> Option<Function> {
    macro_rules! typed {
        ($function:expr) => {
            Some(Function::new_typed_with_env(store, env, $function))
        };
    }
    match name {
        "fd_write" => typed!(fd_write),
        "clock_time_get" => typed!(clock_time_get),
        "clock_res_get" => typed!(clock_res_get),
        "random_get" => typed!(random_get),
        "environ_sizes_get" | "args_sizes_get" => typed!(empty_sizes_get),
        "environ_get" | "args_get" => typed!(empty_get),
        "proc_exit" => typed!(proc_exit),
        "sched_yield" => typed!(sched_yield),
        _ => None,
    }
}

/// stdout goes to the log at INFO, stderr at ERROR; the bytes count as written either way.
fn fd_write(env: Env, fd: i32, iovecs: i32, iovecs_len: i32, return_written: i32) -> i32 {
    if fd != 1 && fd != 2 {
        return ERRNO_BADF;
    }
    let Ok(table) = read(&env, iovecs, iovecs_len.saturating_mul(8)) else {
        return ERRNO_FAULT;
    };
    let mut text = Vec::new();
    for entry in table.chunks_exact(8) {
        let pointer = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let len = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        match read(&env, pointer as i32, len as i32) {
            Ok(bytes) => text.extend_from_slice(&bytes),
            Err(_) => return ERRNO_FAULT,
        }
    }
    let written = text.len() as u32;
    let message = String::from_utf8_lossy(&text);
    let message = message.trim_end();
    if !message.is_empty() {
        let level = if fd == 1 {
            log::Level::Info
        } else {
            log::Level::Error
        };
        log::log!(target: "loom::plugin", level, "[{}] {message}", env.data().shared.name);
    }
    if write_u32(&env, return_written, written).is_err() {
        return ERRNO_FAULT;
    }
    ERRNO_SUCCESS
}

static MONOTONIC_ORIGIN: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn clock_time_get(env: Env, clock_id: i32, _precision: i64, return_time: i32) -> i32 {
    let nanos = match clock_id {
        0 => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64),
        1 => MONOTONIC_ORIGIN.elapsed().as_nanos() as u64,
        _ => return ERRNO_INVAL,
    };
    match write_u64(&env, return_time, nanos) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

fn clock_res_get(env: Env, clock_id: i32, return_resolution: i32) -> i32 {
    if clock_id != 0 && clock_id != 1 {
        return ERRNO_INVAL;
    }
    match write_u64(&env, return_resolution, 1) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

fn random_get(env: Env, buffer: i32, len: i32) -> i32 {
    let len = len as u32 as usize;
    if len > 1024 * 1024 {
        return ERRNO_INVAL;
    }
    let mut bytes = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`.
        let got = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), len - filled, 0) };
        if got <= 0 {
            return ERRNO_INVAL;
        }
        filled += got as usize;
    }
    match write_bytes(&env, buffer, &bytes) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

/// No environment variables or arguments: the gateway's own must not leak into plugins.
fn empty_sizes_get(env: Env, return_count: i32, return_size: i32) -> i32 {
    match write_u32(&env, return_count, 0).and_then(|()| write_u32(&env, return_size, 0)) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

fn empty_get(_env: Env, _pointers: i32, _buffer: i32) -> i32 {
    ERRNO_SUCCESS
}

/// A plugin that exits is treated like one that trapped: the instance is replaced.
fn proc_exit(_env: Env, code: i32) -> Result<(), RuntimeError> {
    Err(RuntimeError::new(format!(
        "plugin called proc_exit({code})"
    )))
}

fn sched_yield(_env: Env) -> i32 {
    ERRNO_SUCCESS
}
