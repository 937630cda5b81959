//! The `env` host functions. Each one is small: decode arguments from guest memory, act on
//! the [`HostState`] (and through it on the lent [`super::Frame`]), encode the answer.
//! Status codes follow what the Rust SDK accepts (see `pingora-and-proxy-wasm.md` C6): an
//! unavailable map or buffer is NOT_FOUND, never BAD_ARGUMENT, because the SDK panics on
//! anything but OK and NOT_FOUND there.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use wasmer::{Function, FunctionEnv, FunctionEnvMut, Store};

use super::maps::{self, Write};
use super::memory::{
    GuestMemoryError, read, read_string, return_bytes, with_two_ranges, write_u32, write_u64,
};
use super::{Callout, CalloutAnswer, HostState, LocalResponse, PendingCall, properties};
use crate::plugin::abi::{self, BufferType, MapType, MetricKind, status};
use crate::plugin::grpc_call::{self, PendingGrpcCall};
use crate::plugin::paused::StreamEvent;
use crate::plugin::shared;

type Env<'a> = FunctionEnvMut<'a, HostState>;

/// Most a plugin may ask an http_call to wait.
const MAX_HTTP_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The typed implementation of `name`, if the host implements it.
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
        "proxy_log" => typed!(proxy_log),
        "proxy_get_log_level" => typed!(proxy_get_log_level),
        "proxy_set_effective_context" => typed!(proxy_set_effective_context),
        "proxy_done" => typed!(proxy_done),
        "proxy_get_current_time_nanoseconds" => typed!(proxy_get_current_time_nanoseconds),
        "proxy_set_tick_period_milliseconds" => typed!(proxy_set_tick_period_milliseconds),
        "proxy_get_buffer_bytes" => typed!(proxy_get_buffer_bytes),
        "proxy_set_buffer_bytes" => typed!(proxy_set_buffer_bytes),
        "proxy_get_buffer_status" => typed!(proxy_get_buffer_status),
        "proxy_get_header_map_size" => typed!(proxy_get_header_map_size),
        "proxy_get_header_map_pairs" => typed!(proxy_get_header_map_pairs),
        "proxy_set_header_map_pairs" => typed!(proxy_set_header_map_pairs),
        "proxy_get_header_map_value" => typed!(proxy_get_header_map_value),
        "proxy_add_header_map_value" => typed!(proxy_add_header_map_value),
        "proxy_replace_header_map_value" => typed!(proxy_replace_header_map_value),
        "proxy_remove_header_map_value" => typed!(proxy_remove_header_map_value),
        "proxy_continue_stream" => typed!(proxy_continue_stream),
        "proxy_close_stream" => typed!(proxy_close_stream),
        "proxy_continue_request" => typed!(proxy_continue_request),
        "proxy_continue_response" => typed!(proxy_continue_response),
        "proxy_get_status" => typed!(proxy_get_status),
        "proxy_send_local_response" => typed!(proxy_send_local_response),
        "proxy_http_call" => typed!(proxy_http_call),
        "proxy_grpc_call" => typed!(proxy_grpc_call),
        "proxy_grpc_cancel" => typed!(proxy_grpc_cancel),
        "proxy_grpc_close" => typed!(proxy_grpc_close),
        "proxy_get_shared_data" => typed!(proxy_get_shared_data),
        "proxy_set_shared_data" => typed!(proxy_set_shared_data),
        "proxy_register_shared_queue" => typed!(proxy_register_shared_queue),
        "proxy_resolve_shared_queue" => typed!(proxy_resolve_shared_queue),
        "proxy_enqueue_shared_queue" => typed!(proxy_enqueue_shared_queue),
        "proxy_dequeue_shared_queue" => typed!(proxy_dequeue_shared_queue),
        "proxy_define_metric" => typed!(proxy_define_metric),
        "proxy_increment_metric" => typed!(proxy_increment_metric),
        "proxy_record_metric" => typed!(proxy_record_metric),
        "proxy_get_metric" => typed!(proxy_get_metric),
        "proxy_get_property" => typed!(proxy_get_property),
        "proxy_set_property" => typed!(proxy_set_property),
        _ => None,
    }
}

fn status_of(result: Result<(), super::GuestMemoryError>) -> i32 {
    match result {
        Ok(()) => status::OK,
        Err(error) => error.status(),
    }
}

// --- logging, context, time -------------------------------------------------------------

fn proxy_log(env: Env, level: i32, message: i32, message_len: i32) -> i32 {
    let Ok(bytes) = read(&env, message, message_len) else {
        return status::INVALID_MEMORY_ACCESS;
    };
    let level = abi::log_level(level);
    if log::log_enabled!(target: "loom::plugin", level) {
        log::log!(
            target: "loom::plugin",
            level,
            "[{}] {}",
            env.data().shared.name,
            String::from_utf8_lossy(&bytes)
        );
    }
    status::OK
}

fn proxy_get_log_level(env: Env, return_level: i32) -> i32 {
    status_of(write_u32(
        &env,
        return_level,
        abi::current_log_level() as u32,
    ))
}

/// Later stream actions of this callback (continue, local response, close) target
/// `context_id`: a request another context paused (see `crate::plugin::paused`). Always OK,
/// because the SDKs unwrap the result; actions on a context that is not paused are dropped.
fn proxy_set_effective_context(mut env: Env, context_id: i32) -> i32 {
    env.data_mut().effective_context = Some(context_id as u32);
    status::OK
}

/// Hands a stream action to the paused request another context made effective.
fn deliver_to_other(state: &mut HostState, context: u32, event: StreamEvent) -> i32 {
    let delivered = state.shared.paused.deliver(state.shard, context, event);
    if !delivered {
        log::debug!(
            "plugin {}: a stream action for context {context}, which is not paused, was dropped",
            state.shared.name
        );
    }
    status::OK
}

fn proxy_done(_env: Env) -> i32 {
    status::OK
}

fn proxy_get_current_time_nanoseconds(env: Env, return_time: i32) -> i32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    status_of(write_u64(&env, return_time, now))
}

fn proxy_set_tick_period_milliseconds(mut env: Env, period: i32) -> i32 {
    env.data_mut().tick_period_ms = period as u32;
    status::OK
}

// --- buffers ------------------------------------------------------------------------------

/// The bytes of a buffer in the range asked for (shared, not copied).
fn buffer_slice(
    state: &mut HostState,
    kind: BufferType,
    start: usize,
    max: usize,
) -> Result<Bytes, i32> {
    let whole: Bytes = match kind {
        BufferType::VmConfiguration => state.shared.vm_configuration.clone(),
        BufferType::PluginConfiguration => state.shared.configuration.clone(),
        BufferType::HttpCallResponseBody | BufferType::GrpcCallMessage => {
            let frame = state.frame().ok_or(status::NOT_FOUND)?;
            match (frame.callout.ok_or(status::NOT_FOUND)?, kind) {
                (CalloutAnswer::Http(answer), BufferType::HttpCallResponseBody) => {
                    answer.body.clone()
                }
                (CalloutAnswer::Grpc(answer), BufferType::GrpcCallMessage) => {
                    answer.message.clone()
                }
                _ => return Err(status::NOT_FOUND),
            }
        }
        BufferType::RequestBody | BufferType::ResponseBody => {
            let frame = state.frame().ok_or(status::NOT_FOUND)?;
            let body = frame.body.as_ref().ok_or(status::NOT_FOUND)?;
            if body.response != (kind == BufferType::ResponseBody) {
                return Err(status::NOT_FOUND);
            }
            body.bytes.clone()
        }
    };
    let start = start.min(whole.len());
    let end = start.saturating_add(max).min(whole.len());
    Ok(whole.slice(start..end))
}

fn proxy_get_buffer_bytes(
    mut env: Env,
    buffer_type: i32,
    start: i32,
    max_size: i32,
    return_data: i32,
    return_size: i32,
) -> i32 {
    let Some(kind) = BufferType::from_raw(buffer_type) else {
        return status::NOT_FOUND;
    };
    let data = match buffer_slice(
        env.data_mut(),
        kind,
        start as u32 as usize,
        max_size as u32 as usize,
    ) {
        Ok(data) => data,
        Err(code) => return code,
    };
    // Envoy writes nothing when there is nothing to copy, and the AssemblyScript SDK
    // (`@solo-io/proxy-runtime` 0.1.x) depends on it: its `onConfigure` passes the
    // configuration's size where the size pointer belongs, so writing a null buffer and a
    // zero size there corrupts its memory and the plugin traps at start.
    if data.is_empty() {
        return status::OK;
    }
    return_bytes(&mut env, &data, return_data, return_size)
}

fn proxy_get_buffer_status(env: Env, buffer_type: i32, return_size: i32, return_flags: i32) -> i32 {
    let mut env = env;
    let Some(kind) = BufferType::from_raw(buffer_type) else {
        return status::NOT_FOUND;
    };
    let size = match kind {
        BufferType::RequestBody | BufferType::ResponseBody => {
            let Some(frame) = env.data_mut().frame() else {
                return status::NOT_FOUND;
            };
            match frame.body.as_ref() {
                Some(body) if body.response == (kind == BufferType::ResponseBody) => {
                    body.bytes.len()
                }
                _ => return status::NOT_FOUND,
            }
        }
        _ => match buffer_slice(env.data_mut(), kind, 0, usize::MAX) {
            Ok(data) => data.len(),
            Err(code) => return code,
        },
    };
    status_of(
        write_u32(&env, return_size, size as u32).and_then(|()| write_u32(&env, return_flags, 0)),
    )
}

fn proxy_set_buffer_bytes(
    mut env: Env,
    buffer_type: i32,
    start: i32,
    size: i32,
    data: i32,
    data_len: i32,
) -> i32 {
    let Ok(replacement) = read(&env, data, data_len) else {
        return status::INVALID_MEMORY_ACCESS;
    };
    let Some(kind) = BufferType::from_raw(buffer_type) else {
        return status::NOT_FOUND;
    };
    let Some(frame) = env.data_mut().frame() else {
        return status::NOT_FOUND;
    };
    let Some(body) = frame.body.as_mut() else {
        return status::NOT_FOUND;
    };
    if body.response != (kind == BufferType::ResponseBody)
        || !matches!(kind, BufferType::RequestBody | BufferType::ResponseBody)
    {
        return status::NOT_FOUND;
    }
    // Replace `size` bytes at `start`: start 0 and size 0 prepends, start at or past the end
    // appends, and (0, len) replaces everything.
    let length = body.bytes.len();
    let start = (start as u32 as usize).min(length);
    let end = start.saturating_add(size as u32 as usize).min(length);
    let mut spliced = BytesMut::with_capacity(length - (end - start) + replacement.len());
    spliced.extend_from_slice(&body.bytes[..start]);
    spliced.extend_from_slice(&replacement);
    spliced.extend_from_slice(&body.bytes[end..]);
    *body.bytes = spliced.freeze();
    status::OK
}

// --- header maps --------------------------------------------------------------------------

fn proxy_get_header_map_size(mut env: Env, map_type: i32, return_size: i32) -> i32 {
    let Some(map) = MapType::from_raw(map_type) else {
        return status::NOT_FOUND;
    };
    let state = env.data_mut();
    let size = if targets_other_request(state, map) {
        // Another request's headers cannot be read from here: an empty map.
        Ok(0)
    } else {
        match state.frame() {
            Some(frame) => maps::size(frame, map),
            None => Err(status::NOT_FOUND),
        }
    };
    match size {
        Ok(size) => status_of(write_u32(&env, return_size, size as u32)),
        Err(code) => code,
    }
}

fn proxy_get_header_map_pairs(
    mut env: Env,
    map_type: i32,
    return_data: i32,
    return_size: i32,
) -> i32 {
    let Some(map) = MapType::from_raw(map_type) else {
        return status::NOT_FOUND;
    };
    let state = env.data_mut();
    let pairs = if targets_other_request(state, map) {
        Ok(Vec::new())
    } else {
        match state.frame() {
            Some(frame) => maps::pairs(frame, map),
            None => Err(status::NOT_FOUND),
        }
    };
    match pairs {
        Ok(pairs) => {
            let serialized = maps::serialize(&pairs);
            return_bytes(&mut env, &serialized, return_data, return_size)
        }
        Err(code) => code,
    }
}

fn proxy_set_header_map_pairs(mut env: Env, map_type: i32, data: i32, data_len: i32) -> i32 {
    let Some(map) = MapType::from_raw(map_type) else {
        return status::NOT_FOUND;
    };
    let Ok(bytes) = read(&env, data, data_len) else {
        return status::INVALID_MEMORY_ACCESS;
    };
    let Some(pairs) = abi::deserialize_pairs(&bytes) else {
        return status::BAD_ARGUMENT;
    };
    let state = env.data_mut();
    if targets_other_request(state, map)
        && let Some(other) = state.other_context()
    {
        let pairs = pairs
            .iter()
            .map(|(name, value)| (name.to_vec(), value.to_vec()))
            .collect();
        return deliver_to_other(state, other, StreamEvent::ReplaceHeaders { map, pairs });
    }
    match state.frame() {
        Some(frame) => maps::replace_all(frame, map, &pairs),
        None => status::NOT_FOUND,
    }
}

/// A header map call made under another request's effective context: writes are queued
/// for that request, reads see an empty map (its headers are not here to read).
fn targets_other_request(state: &HostState, map: MapType) -> bool {
    state.other_context().is_some()
        && matches!(map, MapType::RequestHeaders | MapType::ResponseHeaders)
}

fn proxy_get_header_map_value(
    mut env: Env,
    map_type: i32,
    key: i32,
    key_len: i32,
    return_value: i32,
    return_value_len: i32,
) -> i32 {
    let Some(map) = MapType::from_raw(map_type) else {
        return status::NOT_FOUND;
    };
    let Some(key) = read_string(&env, key, key_len) else {
        return status::BAD_ARGUMENT;
    };
    let state = env.data_mut();
    let value = if targets_other_request(state, map) {
        Ok(None)
    } else {
        match state.frame() {
            Some(frame) => maps::value(frame, map, &key),
            None => Err(status::NOT_FOUND),
        }
    };
    match value {
        Ok(Some(value)) => {
            // Lossy for the same reason as the pairs: the SDK unwraps UTF-8.
            let text = String::from_utf8_lossy(&value).into_owned();
            return_bytes(&mut env, text.as_bytes(), return_value, return_value_len)
        }
        Ok(None) => status::NOT_FOUND,
        Err(code) => code,
    }
}

fn write_map_value(
    mut env: Env,
    map_type: i32,
    key: i32,
    key_len: i32,
    value: i32,
    value_len: i32,
    how: Write,
) -> i32 {
    let Some(map) = MapType::from_raw(map_type) else {
        return status::NOT_FOUND;
    };
    // A removal's value is not read (the SDKs pass none).
    let value_range = if how == Write::Remove {
        (0, 0)
    } else {
        (value, value_len)
    };
    let written = with_two_ranges(
        &mut env,
        (key, key_len),
        value_range,
        |state, key, value| {
            let Ok(key) = std::str::from_utf8(key) else {
                return status::BAD_ARGUMENT;
            };
            if targets_other_request(state, map)
                && let Some(other) = state.other_context()
            {
                // Another paused request's headers: applied, in order, when it runs again.
                let edit = StreamEvent::EditHeader {
                    map,
                    name: key.to_owned(),
                    value: value.to_vec(),
                    how,
                };
                return deliver_to_other(state, other, edit);
            }
            match state.frame() {
                Some(frame) => maps::write(frame, map, key, value, how),
                None => status::NOT_FOUND,
            }
        },
    );
    written.unwrap_or_else(GuestMemoryError::status)
}

fn proxy_add_header_map_value(
    env: Env,
    map_type: i32,
    key: i32,
    key_len: i32,
    value: i32,
    value_len: i32,
) -> i32 {
    write_map_value(env, map_type, key, key_len, value, value_len, Write::Add)
}

fn proxy_replace_header_map_value(
    env: Env,
    map_type: i32,
    key: i32,
    key_len: i32,
    value: i32,
    value_len: i32,
) -> i32 {
    write_map_value(
        env,
        map_type,
        key,
        key_len,
        value,
        value_len,
        Write::Replace,
    )
}

fn proxy_remove_header_map_value(env: Env, map_type: i32, key: i32, key_len: i32) -> i32 {
    write_map_value(env, map_type, key, key_len, 0, 0, Write::Remove)
}

// --- stream control -----------------------------------------------------------------------

fn proxy_continue_stream(mut env: Env, stream_type: i32) -> i32 {
    let state = env.data_mut();
    if let Some(other) = state.other_context() {
        let event = match stream_type {
            abi::STREAM_REQUEST => StreamEvent::ResumeRequest,
            abi::STREAM_RESPONSE => StreamEvent::ResumeResponse,
            _ => return status::BAD_ARGUMENT,
        };
        return deliver_to_other(state, other, event);
    }
    let stream = state.stream();
    match stream_type {
        abi::STREAM_REQUEST => stream.resume_request = true,
        abi::STREAM_RESPONSE => stream.resume_response = true,
        _ => return status::BAD_ARGUMENT,
    }
    status::OK
}

fn proxy_close_stream(mut env: Env, stream_type: i32) -> i32 {
    if !matches!(stream_type, abi::STREAM_REQUEST | abi::STREAM_RESPONSE) {
        return status::BAD_ARGUMENT;
    }
    let state = env.data_mut();
    if let Some(other) = state.other_context() {
        return deliver_to_other(state, other, StreamEvent::Close);
    }
    state.stream().close = true;
    status::OK
}

fn proxy_continue_request(env: Env) -> i32 {
    proxy_continue_stream(env, abi::STREAM_REQUEST)
}

fn proxy_continue_response(env: Env) -> i32 {
    proxy_continue_stream(env, abi::STREAM_RESPONSE)
}

/// The status of the callout the running callback reports: a gRPC call's status and
/// message (`grpc-message`, or why the host failed it); 0 for an http_call's answer.
fn proxy_get_status(
    mut env: Env,
    return_code: i32,
    return_message: i32,
    return_message_len: i32,
) -> i32 {
    let Some((code, message)) = env.data_mut().frame().and_then(|frame| {
        frame.callout.map(|answer| match answer {
            CalloutAnswer::Http(_) => (0, Bytes::new()),
            CalloutAnswer::Grpc(answer) => (
                answer.status,
                Bytes::copy_from_slice(answer.status_message.as_bytes()),
            ),
        })
    }) else {
        return status::NOT_FOUND;
    };
    if write_u32(&env, return_code, code).is_err() {
        return status::INVALID_MEMORY_ACCESS;
    }
    return_bytes(&mut env, &message, return_message, return_message_len)
}

#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    mut env: Env,
    status_code: i32,
    _details: i32,
    _details_len: i32,
    body: i32,
    body_len: i32,
    headers: i32,
    headers_len: i32,
    grpc_status: i32,
) -> i32 {
    let Ok(code) = u16::try_from(status_code) else {
        return status::BAD_ARGUMENT;
    };
    if !(200..=599).contains(&code) {
        return status::BAD_ARGUMENT;
    }
    let (Ok(body), Ok(header_bytes)) =
        (read(&env, body, body_len), read(&env, headers, headers_len))
    else {
        return status::INVALID_MEMORY_ACCESS;
    };
    let Some(pairs) = abi::deserialize_pairs(&header_bytes) else {
        return status::BAD_ARGUMENT;
    };
    let headers = lowercase_pairs(pairs);
    let local = LocalResponse::new(code, headers, Bytes::from(body));
    // The SDKs pass -1 for "no gRPC status".
    let grpc_status = u32::try_from(grpc_status).ok();
    let state = env.data_mut();
    if let Some(other) = state.other_context() {
        let local = local.with_grpc_status(grpc_status);
        return deliver_to_other(state, other, StreamEvent::Respond(local));
    }
    if !state.in_request() {
        return status::BAD_ARGUMENT;
    }
    let local = match state.frame() {
        Some(frame) => local.shaped(
            grpc_status,
            frame.request.as_ref().map(|request| request.get()),
        ),
        None => local,
    };
    state.stream().local_response = Some(local);
    status::OK
}

#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    mut env: Env,
    upstream: i32,
    upstream_len: i32,
    headers: i32,
    headers_len: i32,
    body: i32,
    body_len: i32,
    _trailers: i32,
    _trailers_len: i32,
    timeout_ms: i32,
    return_token: i32,
) -> i32 {
    let Some(upstream) = read_string(&env, upstream, upstream_len) else {
        return status::BAD_ARGUMENT;
    };
    let (Ok(header_bytes), Ok(body)) =
        (read(&env, headers, headers_len), read(&env, body, body_len))
    else {
        return status::INVALID_MEMORY_ACCESS;
    };
    let Some(pairs) = abi::deserialize_pairs(&header_bytes) else {
        return status::BAD_ARGUMENT;
    };
    let headers = lowercase_pairs(pairs);
    let has = |wanted: &str| headers.iter().any(|(name, _)| name == wanted);
    if upstream.is_empty() || !has(":method") || !has(":path") || !has(":authority") {
        return status::BAD_ARGUMENT;
    }
    let state = env.data_mut();
    let token = state.take_call_token();
    let call = PendingCall {
        token,
        upstream,
        headers,
        body: Bytes::from(body),
        timeout: Duration::from_millis(u64::from(timeout_ms as u32)).min(MAX_HTTP_CALL_TIMEOUT),
    };
    let queued = dispatch(state, Callout::Http(call));
    if queued != status::OK {
        return queued;
    }
    status_of(write_u32(&env, return_token, token))
}

/// Deserialized header pairs with their names lower-cased, as HTTP/2 and Envoy have them.
fn lowercase_pairs(pairs: Vec<(&[u8], &[u8])>) -> Vec<(String, Bytes)> {
    pairs
        .into_iter()
        .map(|(name, value)| {
            (
                String::from_utf8_lossy(name).to_ascii_lowercase(),
                Bytes::copy_from_slice(value),
            )
        })
        .collect()
}

/// Calls one context may have waiting to be run at once.
const MAX_PENDING_CALLS: usize = 128;

/// Queues a call for the request (run while it waits) or for the root context (run in the
/// background). INTERNAL_FAILURE (which the SDKs report as an error, never a panic) past
/// [`MAX_PENDING_CALLS`].
fn dispatch(state: &mut HostState, call: Callout) -> i32 {
    let pending = if state.in_request() {
        &mut state.stream().pending_calls
    } else {
        &mut state.root_calls
    };
    if pending.len() >= MAX_PENDING_CALLS {
        return status::INTERNAL_FAILURE;
    }
    pending.push(call);
    status::OK
}

/// A unary gRPC call. The SDKs accept only OK, PARSE_FAILURE and INTERNAL_FAILURE here (the
/// Rust SDK panics on anything else), so unreadable arguments are PARSE_FAILURE and every
/// later failure reaches the plugin as a status in `proxy_on_grpc_close`.
#[allow(clippy::too_many_arguments)]
fn proxy_grpc_call(
    mut env: Env,
    upstream: i32,
    upstream_len: i32,
    service: i32,
    service_len: i32,
    method: i32,
    method_len: i32,
    metadata: i32,
    metadata_len: i32,
    message: i32,
    message_len: i32,
    timeout_ms: i32,
    return_token: i32,
) -> i32 {
    let (Ok(upstream), Some(service), Some(method), Ok(metadata), Ok(message)) = (
        read(&env, upstream, upstream_len),
        read_string(&env, service, service_len),
        read_string(&env, method, method_len),
        read(&env, metadata, metadata_len),
        read(&env, message, message_len),
    ) else {
        return status::PARSE_FAILURE;
    };
    let Some(upstream) = grpc_call::upstream_name(&upstream) else {
        return status::PARSE_FAILURE;
    };
    let valid = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
    };
    if !valid(&service) || !valid(&method) {
        return status::PARSE_FAILURE;
    }
    let metadata = if metadata.is_empty() {
        Vec::new()
    } else {
        let Some(pairs) = abi::deserialize_pairs(&metadata) else {
            return status::PARSE_FAILURE;
        };
        lowercase_pairs(pairs)
    };
    let state = env.data_mut();
    let token = state.take_call_token();
    let call = PendingGrpcCall {
        token,
        upstream,
        service,
        method,
        metadata,
        message: Bytes::from(message),
        timeout: Duration::from_millis(u64::from(timeout_ms as u32)).min(MAX_HTTP_CALL_TIMEOUT),
    };
    let queued = dispatch(state, Callout::Grpc(call));
    if queued != status::OK {
        return queued;
    }
    status_of(write_u32(&env, return_token, token))
}

/// Cancels a gRPC call: no callback reports it. NOT_FOUND for a token that is not
/// outstanding in this context.
fn proxy_grpc_cancel(mut env: Env, token: i32) -> i32 {
    let token = token as u32;
    let state = env.data_mut();
    if !state.in_request() {
        // A root call not yet started is dropped; one running has its answer dropped.
        if let Some(index) = state
            .root_calls
            .iter()
            .position(|call| call.token() == token)
        {
            state.root_calls.remove(index);
            return status::OK;
        }
        if state.root_calls_in_flight.contains(&token)
            && !state.cancelled_root_calls.contains(&token)
        {
            state.cancelled_root_calls.push(token);
            return status::OK;
        }
        return status::NOT_FOUND;
    }
    let stream = state.stream();
    let outstanding = stream
        .pending_calls
        .iter()
        .any(|call| call.token() == token)
        || stream.in_flight_calls.contains(&token);
    if !outstanding || stream.cancelled_calls.contains(&token) {
        return status::NOT_FOUND;
    }
    stream.pending_calls.retain(|call| call.token() != token);
    stream.cancelled_calls.push(token);
    status::OK
}

/// For a unary call, closing is cancelling.
fn proxy_grpc_close(env: Env, token: i32) -> i32 {
    proxy_grpc_cancel(env, token)
}

// --- shared data and queues ---------------------------------------------------------------

fn proxy_get_shared_data(
    mut env: Env,
    key: i32,
    key_len: i32,
    return_value: i32,
    return_value_len: i32,
    return_cas: i32,
) -> i32 {
    let Ok(key) = read(&env, key, key_len) else {
        return status::INVALID_MEMORY_ACCESS;
    };
    let vm = env.data().shared.vm_id.clone();
    let Some((value, cas)) = shared::store().get(&vm, &key) else {
        return status::NOT_FOUND;
    };
    if write_u32(&env, return_cas, cas).is_err() {
        return status::INVALID_MEMORY_ACCESS;
    }
    return_bytes(&mut env, &value, return_value, return_value_len)
}

fn proxy_set_shared_data(
    env: Env,
    key: i32,
    key_len: i32,
    value: i32,
    value_len: i32,
    cas: i32,
) -> i32 {
    let (Ok(key), Ok(value)) = (read(&env, key, key_len), read(&env, value, value_len)) else {
        return status::INVALID_MEMORY_ACCESS;
    };
    shared::store().set(
        &env.data().shared.vm_id,
        &key,
        Bytes::from(value),
        cas as u32,
    )
}

fn proxy_register_shared_queue(env: Env, name: i32, name_len: i32, return_id: i32) -> i32 {
    let Some(name) = read_string(&env, name, name_len) else {
        return status::BAD_ARGUMENT;
    };
    let state = env.data();
    let id = shared::store().register_queue(
        &state.shared.vm_id,
        &name,
        state.shared.weak_self.clone(),
        state.shard,
    );
    status_of(write_u32(&env, return_id, id))
}

fn proxy_resolve_shared_queue(
    env: Env,
    vm_id: i32,
    vm_id_len: i32,
    name: i32,
    name_len: i32,
    return_id: i32,
) -> i32 {
    let (Some(vm), Some(name)) = (
        read_string(&env, vm_id, vm_id_len),
        read_string(&env, name, name_len),
    ) else {
        return status::BAD_ARGUMENT;
    };
    // An empty VM id means this plugin's own.
    let vm = if vm.is_empty() {
        env.data().shared.vm_id.to_string()
    } else {
        vm
    };
    match shared::store().resolve_queue(&vm, &name) {
        Some(id) => status_of(write_u32(&env, return_id, id)),
        None => status::NOT_FOUND,
    }
}

fn proxy_enqueue_shared_queue(env: Env, queue_id: i32, value: i32, value_len: i32) -> i32 {
    let Ok(value) = read(&env, value, value_len) else {
        return status::INVALID_MEMORY_ACCESS;
    };
    shared::store().enqueue(queue_id as u32, Bytes::from(value))
}

fn proxy_dequeue_shared_queue(
    mut env: Env,
    queue_id: i32,
    return_value: i32,
    return_value_len: i32,
) -> i32 {
    match shared::store().dequeue(queue_id as u32) {
        Ok(Some(value)) => return_bytes(&mut env, &value, return_value, return_value_len),
        Ok(None) => status::EMPTY,
        Err(code) => code,
    }
}

// --- metrics ------------------------------------------------------------------------------

fn proxy_define_metric(
    mut env: Env,
    metric_type: i32,
    name: i32,
    name_len: i32,
    return_id: i32,
) -> i32 {
    let Some(kind) = MetricKind::from_raw(metric_type) else {
        return status::BAD_ARGUMENT;
    };
    let Some(name) = read_string(&env, name, name_len) else {
        return status::BAD_ARGUMENT;
    };
    let state = env.data_mut();
    let metric = match state.shared.metrics.define(&name, kind) {
        Ok(metric) => metric,
        Err(code) => return code,
    };
    let id = match state
        .metrics
        .iter()
        .position(|known| std::sync::Arc::ptr_eq(known, &metric))
    {
        Some(index) => index,
        None => {
            state.metrics.push(metric);
            state.metrics.len() - 1
        }
    };
    status_of(write_u32(&env, return_id, id as u32))
}

fn proxy_increment_metric(env: Env, metric_id: i32, delta: i64) -> i32 {
    match env.data().metrics.get(metric_id as u32 as usize) {
        Some(metric) => metric.increment(delta),
        None => status::NOT_FOUND,
    }
}

fn proxy_record_metric(env: Env, metric_id: i32, value: i64) -> i32 {
    match env.data().metrics.get(metric_id as u32 as usize) {
        Some(metric) => metric.record(value as u64),
        None => status::NOT_FOUND,
    }
}

fn proxy_get_metric(env: Env, metric_id: i32, return_value: i32) -> i32 {
    let value = match env.data().metrics.get(metric_id as u32 as usize) {
        Some(metric) => metric.get(),
        None => return status::NOT_FOUND,
    };
    match value {
        Ok(value) => status_of(write_u64(&env, return_value, value)),
        Err(code) => code,
    }
}

// --- properties ---------------------------------------------------------------------------

fn proxy_get_property(
    mut env: Env,
    path: i32,
    path_len: i32,
    return_value: i32,
    return_value_len: i32,
) -> i32 {
    let Ok(path) = read(&env, path, path_len) else {
        return status::INVALID_MEMORY_ACCESS;
    };
    match properties::get(env.data_mut(), &path) {
        Some(value) => return_bytes(&mut env, &value, return_value, return_value_len),
        None => status::NOT_FOUND,
    }
}

fn proxy_set_property(mut env: Env, path: i32, path_len: i32, value: i32, value_len: i32) -> i32 {
    let (Ok(path), Ok(value)) = (read(&env, path, path_len), read(&env, value, value_len)) else {
        return status::INVALID_MEMORY_ACCESS;
    };
    let key = properties::normalize(&path);
    let properties = &mut env.data_mut().stream().properties;
    match properties.iter_mut().find(|(existing, _)| *existing == key) {
        Some(entry) => entry.1 = Bytes::from(value),
        None => properties.push((key, Bytes::from(value))),
    }
    status::OK
}
