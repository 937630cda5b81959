//! The WASI preview1 calls a Proxy-Wasm SDK needs, answered as Envoy's and wasmtime's hosts
//! answer them for a sandbox with no preopened directories: output to the log, clocks,
//! randomness, an empty environment and argument list, `proc_exit`, no preopens (`EBADF`, which
//! Go's runtime start-up requires: it panics on any other answer), the standard streams'
//! `fd_fdstat_get`, and `poll_oneoff` that never sleeps. Every other preview1 import gets a
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
        "fd_prestat_get" => typed!(fd_prestat_get),
        "fd_prestat_dir_name" => typed!(fd_prestat_dir_name),
        "fd_fdstat_get" => typed!(fd_fdstat_get),
        "poll_oneoff" => typed!(poll_oneoff),
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

/// No directory is preopened: every descriptor is "bad", which ends the scan that Go's runtime
/// (and wasi-libc) run at start-up.
fn fd_prestat_get(_env: Env, _fd: i32, _return_prestat: i32) -> i32 {
    ERRNO_BADF
}

fn fd_prestat_dir_name(_env: Env, _fd: i32, _path: i32, _path_len: i32) -> i32 {
    ERRNO_BADF
}

/// `filetype` of a character device, as the standard streams are.
const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;

/// The standard streams are character devices (stdin readable and always empty, stdout and
/// stderr writable into the log); no other descriptor exists.
fn fd_fdstat_get(env: Env, fd: i32, return_fdstat: i32) -> i32 {
    let rights = match fd {
        0 => RIGHT_FD_READ,
        1 | 2 => RIGHT_FD_WRITE,
        _ => return ERRNO_BADF,
    };
    // struct fdstat: filetype u8 @0, flags u16 @2, rights_base u64 @8, inheriting u64 @16.
    let mut fdstat = [0u8; 24];
    fdstat[0] = FILETYPE_CHARACTER_DEVICE;
    fdstat[8..16].copy_from_slice(&rights.to_le_bytes());
    match write_bytes(&env, return_fdstat, &fdstat) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const EVENT_TYPE_CLOCK: u8 = 0;
/// Subscriptions answered at most: a plugin polls a handful (Go's runtime one clock).
const MAX_SUBSCRIPTIONS: i32 = 64;

/// Never sleeps: a worker thread serves other requests. Every clock subscription is reported
/// as already fired, at once (a plugin "sleeping" sees its time pass instantly, which is what
/// Go's runtime does in its panic path and its scheduler); a descriptor subscription is
/// reported with `EBADF`, since no descriptor can become ready.
fn poll_oneoff(
    env: Env,
    subscriptions: i32,
    events: i32,
    count: i32,
    return_event_count: i32,
) -> i32 {
    if !(0..=MAX_SUBSCRIPTIONS).contains(&count) {
        return ERRNO_INVAL;
    }
    let count = count as usize;
    let Ok(table) = read(&env, subscriptions, (count * SUBSCRIPTION_SIZE) as i32) else {
        return ERRNO_FAULT;
    };
    let mut answers = Vec::with_capacity(count * EVENT_SIZE);
    for subscription in table.chunks_exact(SUBSCRIPTION_SIZE) {
        // struct subscription: userdata u64 @0, tag u8 @8 (0 clock, 1 fd_read, 2 fd_write).
        // struct event: userdata u64 @0, error u16 @8, type u8 @10, fd_readwrite @16.
        let mut event = [0u8; EVENT_SIZE];
        event[0..8].copy_from_slice(&subscription[0..8]);
        let tag = subscription[8];
        if tag != EVENT_TYPE_CLOCK {
            event[8..10].copy_from_slice(&(ERRNO_BADF as u16).to_le_bytes());
        }
        event[10] = tag;
        answers.extend_from_slice(&event);
    }
    if write_bytes(&env, events, &answers).is_err()
        || write_u32(&env, return_event_count, count as u32).is_err()
    {
        return ERRNO_FAULT;
    }
    ERRNO_SUCCESS
}
