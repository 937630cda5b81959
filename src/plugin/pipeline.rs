//! One request's trip through its route's plugin chain: a context per plugin, the callbacks
//! of each phase in order (request phases by priority, response phases in reverse), Pause
//! and Continue, http_call round trips, body buffering, local responses, and the failure
//! policy. The gateway's hooks call one method per phase (see `crate::gateway::plugins`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use wasmer::{RuntimeError, Store};

use super::abi::Action;
use super::callout;
use super::host::{BodyLoan, CalloutAnswer, Frame, Lent, LocalResponse, RequestFacts, StreamState};
use super::instance::{Callbacks, Failure, FailureKind};
use super::paused::StreamEvent;
use super::runtime::{ContextHandle, Phase, PluginRuntime};
use crate::config::schema::PluginFailureMode;
use crate::gateway::errors::GatewayError;
use crate::upstream::UpstreamPool;

/// What the gateway does after a phase.
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// A plugin answered (`proxy_send_local_response`).
    Respond(LocalResponse),
    /// A plugin failed with `on_error: fail_closed`, or a buffer limit was hit.
    Fail(GatewayError),
    /// A plugin closed the stream: reset it without an answer.
    Close,
}

/// How an answer that ends with trailers ends, after the plugins' trailers callbacks.
pub enum Trailers {
    /// The trailers go out, after this body (what the plugins held back, maybe empty).
    Keep(Bytes),
    /// A plugin's local answer replaced the upstream's: this body ends the response instead
    /// of the trailers.
    Replace(Bytes),
}

/// What one plugin's body callback did with a chunk.
enum BodyStep {
    /// The chunk (with anything the plugin held before it) goes on to the next plugin.
    Passed(Bytes),
    /// The plugin holds it back.
    Held,
    /// The response ends here: a local answer, a failure or a closed stream.
    End(Flow),
}

struct PluginContext {
    handle: Option<ContextHandle>,
    stream: StreamState,
    /// Failed with `fail_open` (or never opened): left out for the rest of the request.
    skipped: bool,
    /// Skipped, but its instance was kept (a callback over `timeout`): `on_delete` still runs.
    teardown_pending: bool,
    /// Body held back by this plugin's Pause on an earlier chunk, in each direction.
    request_body: BytesMut,
    response_body: BytesMut,
    /// Registered as paused (see `crate::plugin::paused`) until its wait ends; a request
    /// dropped while waiting is unregistered in `finish`.
    paused: bool,
}

/// What a callback may see besides its stream state.
#[derive(Default)]
struct Loans<'a> {
    request: Option<Lent<'a, RequestHeader>>,
    response: Option<Lent<'a, ResponseHeader>>,
    trailers: Option<&'a mut http::HeaderMap>,
    body: Option<(bool, &'a mut Bytes)>,
    callout: Option<&'a CalloutAnswer>,
}

pub struct RequestPlugins {
    chain: Arc<[Arc<PluginRuntime>]>,
    contexts: Vec<PluginContext>,
    pub facts: RequestFacts,
    /// After a local response in the response-headers phase, the body sent instead of the
    /// upstream's.
    replacement_body: Option<Bytes>,
    finished: bool,
}

fn plugin_error(plugin: &PluginRuntime, failure: &Failure) -> GatewayError {
    let message = match failure.kind {
        FailureKind::Quarantined => format!(
            "plugin \"{}\" is quarantined after repeated failures",
            plugin.name()
        ),
        kind => format!("plugin \"{}\" failed ({})", plugin.name(), kind.label()),
    };
    GatewayError::new(503, "plugin_error", message)
}

impl RequestPlugins {
    pub fn new(chain: Arc<[Arc<PluginRuntime>]>, facts: RequestFacts) -> RequestPlugins {
        let contexts = chain
            .iter()
            .map(|_| PluginContext {
                handle: None,
                stream: StreamState::default(),
                skipped: false,
                teardown_pending: false,
                request_body: BytesMut::new(),
                response_body: BytesMut::new(),
                paused: false,
            })
            .collect();
        RequestPlugins {
            chain,
            contexts,
            facts,
            replacement_body: None,
            finished: false,
        }
    }

    /// Applies the plugin's failure policy: `Some(flow)` ends the request, `None` skips the
    /// plugin and goes on.
    fn fail(&mut self, index: usize, failure: Failure) -> Option<Flow> {
        let plugin = &self.chain[index];
        self.contexts[index].skipped = true;
        // Only a slow callback leaves its instance (and the context in it) in place.
        self.contexts[index].teardown_pending = failure.kind == FailureKind::Timeout;
        match plugin.plan.on_error {
            PluginFailureMode::FailOpen => {
                log::debug!(
                    "plugin {} skipped for this request: {}",
                    plugin.name(),
                    failure.message
                );
                None
            }
            PluginFailureMode::FailClosed => Some(Flow::Fail(plugin_error(plugin, &failure))),
        }
    }

    /// Opens the plugin's context on first use. `Err` carries the flow that ends the request.
    fn ensure_open(&mut self, index: usize) -> Result<bool, Flow> {
        if self.contexts[index].skipped {
            return Ok(false);
        }
        if self.contexts[index].handle.is_some() {
            return Ok(true);
        }
        match self.chain[index].open_context() {
            Ok(handle) => {
                self.contexts[index].handle = Some(handle);
                Ok(true)
            }
            Err(failure) => match self.fail(index, failure) {
                Some(flow) => Err(flow),
                None => Ok(false),
            },
        }
    }

    /// Runs one callback of plugin `index` with `loans` lent.
    fn call(
        &mut self,
        index: usize,
        phase: Phase,
        loans: Loans<'_>,
        body: impl FnOnce(&mut Store, &Callbacks, i32) -> Result<i32, RuntimeError>,
    ) -> Result<i32, Failure> {
        self.call_with(index, phase, loans, false, body)
    }

    /// As [`Self::call`], for a callback that may pause the request: a Pause leaves the
    /// context registered as paused (see `crate::plugin::paused`), which
    /// [`Self::settle_pause`] undoes.
    fn call_pausable(
        &mut self,
        index: usize,
        phase: Phase,
        loans: Loans<'_>,
        body: impl FnOnce(&mut Store, &Callbacks, i32) -> Result<i32, RuntimeError>,
    ) -> Result<i32, Failure> {
        self.call_with(index, phase, loans, true, body)
    }

    fn call_with(
        &mut self,
        index: usize,
        phase: Phase,
        loans: Loans<'_>,
        pausable: bool,
        body: impl FnOnce(&mut Store, &Callbacks, i32) -> Result<i32, RuntimeError>,
    ) -> Result<i32, Failure> {
        let plugin = &self.chain[index];
        let context = &mut self.contexts[index];
        let Some(handle) = context.handle else {
            return Ok(0);
        };
        let mut frame = Frame {
            request: loans.request,
            response: loans.response,
            response_trailers: loans.trailers,
            body: loans
                .body
                .map(|(response, bytes)| BodyLoan { response, bytes }),
            callout: loans.callout,
            context_id: handle.context_id,
            stream: &mut context.stream,
            facts: &self.facts,
        };
        if pausable {
            // Set before the call: a pause registered by a callback that then fails (over
            // its timeout) is still unregistered.
            context.paused = true;
            let result = plugin.invoke_pausable(&handle, phase, &mut frame, body);
            if matches!(&result, Ok(raw) if Action::from_raw(*raw) != Action::Pause) {
                // Returned without pausing: nothing was registered, nothing to undo.
                context.paused = false;
            }
            result
        } else {
            plugin.invoke(&handle, phase, &mut frame, body)
        }
    }

    /// Whether [`Self::settle_pause`] would find nothing to do: the usual callback, which
    /// neither paused (a Pause leaves the context's `paused` mark set) nor answered, closed or
    /// dispatched a call. Checked before building that future, which costs more than the
    /// checks (about 190 instructions a callback).
    fn has_nothing_to_settle(&self, index: usize) -> bool {
        let context = &self.contexts[index];
        !context.paused
            && context.stream.local_response.is_none()
            && !context.stream.close
            && context.stream.pending_calls.is_empty()
    }

    /// After a callback that may pause: its local response or close, then its calls' answers, then,
    /// if it paused and nothing resumed it, a wait for another context to act on it.
    async fn settle_pause(
        &mut self,
        index: usize,
        paused: bool,
        request: &mut RequestHeader,
        mut response: Option<&mut ResponseHeader>,
        upstreams: &[Arc<UpstreamPool>],
    ) -> Option<Flow> {
        let in_response = response.is_some();
        let mut flow = self.requested_end(index);
        if flow.is_none() {
            flow = self
                .answer_calls(index, request, response.as_deref_mut(), upstreams)
                .await;
        }
        // A plugin skipped after a failure (`fail_open`) is not waited for.
        if flow.is_none()
            && paused
            && !self.contexts[index].skipped
            && !self.resumed(index, in_response)
        {
            flow = self.wait_for_resume(index, request, response).await;
        }
        self.forget_pause(index);
        flow
    }

    /// Applies a header write another context queued for plugin `index`'s paused request,
    /// as if the plugin had made it in its own callback (routing marks included).
    fn edit_headers(
        &mut self,
        index: usize,
        request: &mut RequestHeader,
        response: Option<&mut ResponseHeader>,
        edit: impl FnOnce(&mut Frame<'_>) -> i32,
    ) {
        let Some(handle) = self.contexts[index].handle else {
            return;
        };
        let mut frame = Frame {
            request: Some(Lent::Writable(request)),
            response: response.map(Lent::Writable),
            response_trailers: None,
            body: None,
            callout: None,
            context_id: handle.context_id,
            stream: &mut self.contexts[index].stream,
            facts: &self.facts,
        };
        let _ = edit(&mut frame);
    }

    /// The plugin resumed its own stream (`proxy_continue_stream` in one of its callbacks).
    fn resumed(&mut self, index: usize, in_response: bool) -> bool {
        let stream = &mut self.contexts[index].stream;
        if in_response {
            std::mem::take(&mut stream.resume_response)
        } else {
            std::mem::take(&mut stream.resume_request)
        }
    }

    /// Waits, up to the plugin's `pause_timeout`, for another context to resume, answer or
    /// close this paused request.
    async fn wait_for_resume(
        &mut self,
        index: usize,
        request: &mut RequestHeader,
        mut response: Option<&mut ResponseHeader>,
    ) -> Option<Flow> {
        let in_response = response.is_some();
        let plugin = Arc::clone(&self.chain[index]);
        let handle = self.contexts[index].handle?;
        let paused = &plugin.shared.paused;
        let wake = paused.wake_signal(handle.shard, handle.context_id)?;
        let deadline = tokio::time::Instant::now() + plugin.plan.pause_timeout;
        loop {
            for event in paused.take_events(handle.shard, handle.context_id) {
                match event {
                    StreamEvent::ResumeRequest if !in_response => return None,
                    StreamEvent::ResumeResponse if in_response => return None,
                    // A resume of the other direction does not concern this phase.
                    StreamEvent::ResumeRequest | StreamEvent::ResumeResponse => {}
                    StreamEvent::Respond(local) => {
                        let grpc_status = local.pending_grpc_status;
                        let local = local.shaped(grpc_status, Some(&*request));
                        return Some(Flow::Respond(local));
                    }
                    StreamEvent::Close => return Some(Flow::Close),
                    StreamEvent::EditHeader {
                        map,
                        name,
                        value,
                        how,
                    } => self.edit_headers(index, request, response.as_deref_mut(), |frame| {
                        super::host::maps::write(frame, map, &name, &value, how)
                    }),
                    StreamEvent::ReplaceHeaders { map, pairs } => {
                        let borrowed: Vec<(&[u8], &[u8])> = pairs
                            .iter()
                            .map(|(name, value)| (name.as_slice(), value.as_slice()))
                            .collect();
                        self.edit_headers(index, request, response.as_deref_mut(), |frame| {
                            super::host::maps::replace_all(frame, map, &borrowed)
                        });
                    }
                    StreamEvent::Lost => {
                        let failure = Failure {
                            kind: FailureKind::InstanceLost,
                            message: "the instance holding this paused request was replaced"
                                .to_string(),
                        };
                        return self.fail(index, failure);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, wake.notified())
                .await
                .is_err()
            {
                log::warn!(
                    "plugin {} paused a request and nothing resumed it within {:?}",
                    plugin.name(),
                    plugin.plan.pause_timeout
                );
                return Some(Flow::Fail(GatewayError::new(
                    504,
                    "plugin_pause_timeout",
                    format!(
                        "plugin \"{}\" paused the request and nothing resumed it within {} ms",
                        plugin.name(),
                        plugin.plan.pause_timeout.as_millis()
                    ),
                )));
            }
        }
    }

    /// After a callback: a local response or a close ends the request.
    fn requested_end(&mut self, index: usize) -> Option<Flow> {
        let stream = &mut self.contexts[index].stream;
        if let Some(local) = stream.local_response.take() {
            return Some(Flow::Respond(local));
        }
        if stream.close {
            return Some(Flow::Close);
        }
        None
    }

    /// Runs the calls (HTTP and gRPC) plugin `index` dispatched and hands each answer to its
    /// callback, while the request waits. No lock is held while waiting. A call cancelled
    /// by an earlier answer's callback is not reported.
    async fn answer_calls(
        &mut self,
        index: usize,
        request: &mut RequestHeader,
        mut response: Option<&mut ResponseHeader>,
        upstreams: &[Arc<UpstreamPool>],
    ) -> Option<Flow> {
        loop {
            let calls = std::mem::take(&mut self.contexts[index].stream.pending_calls);
            if calls.is_empty() {
                return None;
            }
            let answers = futures_util::future::join_all(
                calls.iter().map(|call| callout::execute(call, upstreams)),
            )
            .await;
            self.contexts[index].stream.in_flight_calls =
                calls.iter().map(|call| call.token()).collect();
            for (call, answer) in calls.iter().zip(&answers) {
                let token = call.token();
                let stream = &mut self.contexts[index].stream;
                stream.in_flight_calls.retain(|pending| *pending != token);
                if let Some(position) = stream.cancelled_calls.iter().position(|t| *t == token) {
                    stream.cancelled_calls.swap_remove(position);
                    continue;
                }
                let loans = Loans {
                    request: Some(Lent::Writable(&mut *request)),
                    response: response.as_deref_mut().map(Lent::Writable),
                    callout: Some(answer),
                    ..Loans::default()
                };
                let result = self.call(index, answer.phase(), loans, |store, callbacks, _| {
                    answer.deliver(token, store, callbacks).map(|()| 0)
                });
                if let Err(failure) = result {
                    return self.fail(index, failure);
                }
                if let Some(flow) = self.requested_end(index) {
                    return Some(flow);
                }
            }
            self.contexts[index].stream.cancelled_calls.clear();
        }
    }

    /// Whether plugin `index` changed what routing matches on since the last call: its
    /// target (`:path`, `:authority`, `:method`, `Host`), or any header when
    /// `headers_matter` (some route matches on headers). Clears both marks.
    pub fn take_routing_written(&mut self, index: usize, headers_matter: bool) -> bool {
        self.contexts.get_mut(index).is_some_and(|context| {
            let headers = std::mem::take(&mut context.stream.request_headers_written);
            let target = std::mem::take(&mut context.stream.request_target_written);
            target || (headers && headers_matter)
        })
    }

    /// `on_request_headers` of plugin `index` (the gateway walks the route's chain, where
    /// plugins sit between built-in policies). A Pause on a request without a body holds it
    /// until the plugin resumes it (after its calls' answers, or from another context) or
    /// answers it, for at most its `pause_timeout`. `None`: go on.
    pub async fn request_headers_at(
        &mut self,
        index: usize,
        request: &mut RequestHeader,
        end_of_stream: bool,
        upstreams: &[Arc<UpstreamPool>],
    ) -> Option<Flow> {
        match self.ensure_open(index) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(flow) => return Some(flow),
        }
        let count = request.headers.len() as i32 + 4;
        let end = i32::from(end_of_stream);
        self.contexts[index].stream.resume_request = false;
        let loans = Loans {
            request: Some(Lent::Writable(&mut *request)),
            ..Loans::default()
        };
        let result = self.call_pausable(
            index,
            Phase::RequestHeaders,
            loans,
            |store, callbacks, context| match &callbacks.on_request_headers {
                Some(function) => function.call(store, context, count, end),
                None => Ok(0),
            },
        );
        // With a body to come, Envoy's Pause (StopIteration) lets the body callbacks run and
        // a Continue there resumes the request: only a request without a body is held here;
        // one with a body is held, if the plugin wants, on its last chunk.
        let hold = match result {
            Ok(raw) => Action::from_raw(raw) == Action::Pause && end_of_stream,
            Err(failure) => {
                self.forget_pause(index);
                return self.fail(index, failure);
            }
        };
        if self.has_nothing_to_settle(index) {
            return None;
        }
        self.settle_pause(index, hold, request, None, upstreams)
            .await
    }

    /// Ends the context's registration as paused, if it has one.
    fn forget_pause(&mut self, index: usize) {
        if std::mem::take(&mut self.contexts[index].paused)
            && let Some(handle) = self.contexts[index].handle
        {
            self.chain[index]
                .shared
                .paused
                .unregister(handle.shard, handle.context_id);
        }
    }

    /// `on_request_body` through the chain, per chunk. A plugin that pauses gets the body
    /// buffered (up to its `max_buffered_body`) and sees it whole at the end of the stream;
    /// a Pause on the last chunk holds the request as a headers Pause does.
    pub async fn request_body(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        request: &mut RequestHeader,
        upstreams: &[Arc<UpstreamPool>],
    ) -> Flow {
        let mut chunk = body.take().unwrap_or_default();
        for index in 0..self.chain.len() {
            if self.contexts[index].skipped || self.contexts[index].handle.is_none() {
                // A plugin skipped after it held body back (it failed while answering a call
                // it made then): what it held goes on with this chunk, not lost.
                chunk = body_so_far(&mut self.contexts[index].request_body, chunk);
                continue;
            }
            let limit = self.chain[index].plan.max_buffered_body;
            let buffered = &mut self.contexts[index].request_body;
            if buffered.len() + chunk.len() > limit {
                return Flow::Fail(GatewayError::new(
                    413,
                    "request_body_too_large",
                    format!(
                        "plugin \"{}\" buffers at most {limit} bytes of request body",
                        self.chain[index].name()
                    ),
                ));
            }
            let mut lent = body_so_far(buffered, chunk);
            let size = lent.len() as i32;
            let end = i32::from(end_of_stream);
            self.contexts[index].stream.resume_request = false;
            let loans = Loans {
                request: Some(Lent::Writable(&mut *request)),
                body: Some((false, &mut lent)),
                ..Loans::default()
            };
            // Only a Pause on the last chunk holds the request; earlier ones buffer.
            let result = self.call_with(
                index,
                Phase::RequestBody,
                loans,
                end_of_stream,
                |store, callbacks, context| match &callbacks.on_request_body {
                    Some(function) => function.call(store, context, size, end),
                    None => Ok(0),
                },
            );
            let action = match result {
                Ok(raw) => Action::from_raw(raw),
                Err(failure) => {
                    if end_of_stream {
                        self.forget_pause(index);
                    }
                    // Fail-open: what was buffered for it moves on unchanged.
                    chunk = lent;
                    match self.fail(index, failure) {
                        Some(flow) => return flow,
                        None => continue,
                    }
                }
            };
            let held = action == Action::Pause && end_of_stream;
            if !self.has_nothing_to_settle(index)
                && let Some(flow) = self
                    .settle_pause(index, held, request, None, upstreams)
                    .await
            {
                return flow;
            }
            if action == Action::Pause && !end_of_stream {
                // Held back: later plugins and the upstream see it when this one continues.
                // Nothing goes upstream now, but as an empty chunk: Pingora takes `None` for
                // the end of the body and would end the upstream request without the rest.
                self.contexts[index].request_body = BytesMut::from(lent);
                *body = Some(Bytes::new());
                return Flow::Continue;
            }
            chunk = lent;
        }
        // Pingora ends the upstream body at `None`, so only the last chunk may leave none: an
        // empty last chunk stays None (Pingora would hand `Some("")` to an upstream body that
        // is already complete and warn once per request); an empty one before it is
        // `Some("")`, which Pingora skips.
        *body = if !chunk.is_empty() {
            Some(chunk)
        } else if end_of_stream {
            None
        } else {
            Some(Bytes::new())
        };
        Flow::Continue
    }

    /// `on_response_headers` of plugin `index` (the gateway walks the chain in reverse).
    /// Pause holds the response as a request-headers Pause holds the request. `None`: go on.
    pub async fn response_headers_at(
        &mut self,
        index: usize,
        request: &mut RequestHeader,
        response: &mut ResponseHeader,
        upstreams: &[Arc<UpstreamPool>],
    ) -> Option<Flow> {
        if self.contexts[index].skipped || self.contexts[index].handle.is_none() {
            return None;
        }
        let count = response.headers.len() as i32 + 1;
        self.contexts[index].stream.resume_response = false;
        let loans = Loans {
            request: Some(Lent::Writable(&mut *request)),
            response: Some(Lent::Writable(&mut *response)),
            ..Loans::default()
        };
        let result = self.call_pausable(
            index,
            Phase::ResponseHeaders,
            loans,
            |store, callbacks, context| match &callbacks.on_response_headers {
                Some(function) => function.call(store, context, count, 0),
                None => Ok(0),
            },
        );
        let paused = match result {
            Ok(raw) => Action::from_raw(raw) == Action::Pause,
            Err(failure) => {
                self.forget_pause(index);
                return self.fail(index, failure);
            }
        };
        if self.has_nothing_to_settle(index) {
            return None;
        }
        self.settle_pause(index, paused, request, Some(response), upstreams)
            .await
    }

    /// After a local response replaced the upstream's headers, its body replaces the
    /// upstream's body.
    pub fn replace_body(&mut self, body: Bytes) {
        self.replacement_body = Some(body);
    }

    /// `on_response_body` through the chain, in reverse, per chunk. Synchronous (Pingora's
    /// body filter is): http_calls dispatched here are refused.
    pub fn response_body(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        request: &RequestHeader,
    ) -> Flow {
        if let Some(replacement) = &self.replacement_body {
            *body = end_of_stream.then(|| replacement.clone());
            return Flow::Continue;
        }
        let mut chunk = body.take().unwrap_or_default();
        for index in (0..self.chain.len()).rev() {
            match self.response_body_step(index, chunk, end_of_stream, request) {
                BodyStep::Passed(passed) => chunk = passed,
                BodyStep::Held => return Flow::Continue,
                BodyStep::End(flow) => return flow,
            }
        }
        // An empty chunk stays None, as the request side does: nothing to write.
        if !chunk.is_empty() {
            *body = Some(chunk);
        }
        Flow::Continue
    }

    /// One plugin's `on_response_body` for `chunk`, after whatever it held back before.
    fn response_body_step(
        &mut self,
        index: usize,
        chunk: Bytes,
        end_of_stream: bool,
        request: &RequestHeader,
    ) -> BodyStep {
        if self.contexts[index].skipped || self.contexts[index].handle.is_none() {
            // A plugin skipped after it held body back (it failed while answering a call it
            // made then): what it held goes on with this chunk, not lost.
            return BodyStep::Passed(body_so_far(&mut self.contexts[index].response_body, chunk));
        }
        let limit = self.chain[index].plan.max_buffered_body;
        if self.contexts[index].response_body.len() + chunk.len() > limit {
            return BodyStep::End(Flow::Fail(GatewayError::new(
                502,
                "response_body_too_large",
                format!(
                    "plugin \"{}\" buffers at most {limit} bytes of response body",
                    self.chain[index].name()
                ),
            )));
        }
        let mut lent = body_so_far(&mut self.contexts[index].response_body, chunk);
        let size = lent.len() as i32;
        let end = i32::from(end_of_stream);
        let loans = Loans {
            request: Some(Lent::ReadOnly(request)),
            body: Some((true, &mut lent)),
            ..Loans::default()
        };
        let result = self.call(
            index,
            Phase::ResponseBody,
            loans,
            |store, callbacks, context| match &callbacks.on_response_body {
                Some(function) => function.call(store, context, size, end),
                None => Ok(0),
            },
        );
        let dropped_calls = std::mem::take(&mut self.contexts[index].stream.pending_calls);
        if !dropped_calls.is_empty() {
            log::warn!(
                "plugin {} dispatched {} http_call(s) from on_response_body; Loom cannot wait there, they are dropped",
                self.chain[index].name(),
                dropped_calls.len()
            );
        }
        let action = match result {
            Ok(raw) => Action::from_raw(raw),
            Err(failure) => {
                return match self.fail(index, failure) {
                    Some(flow) => BodyStep::End(flow),
                    None => BodyStep::Passed(lent),
                };
            }
        };
        if let Some(flow) = self.requested_end(index) {
            return BodyStep::End(flow);
        }
        if action == Action::Pause && !end_of_stream {
            self.contexts[index].response_body = BytesMut::from(lent);
            return BodyStep::Held;
        }
        BodyStep::Passed(lent)
    }

    /// `on_response_trailers` through the chain, in reverse, as Envoy runs them: the answer
    /// ended with trailers, so no plugin saw its body end. Each plugin can still read and
    /// replace the body it holds back (its response body buffer) in this callback; then that
    /// body goes on through the plugins after it, and what comes out of the last one is
    /// returned: it must reach the client before the trailers.
    pub fn response_trailers(
        &mut self,
        trailers: &mut http::HeaderMap,
        request: &RequestHeader,
    ) -> (Flow, Trailers) {
        if let Some(replacement) = &self.replacement_body {
            // A plugin's local answer replaced the upstream's: its body ends the response,
            // and the upstream's trailers belong to the answer that was replaced.
            return (Flow::Continue, Trailers::Replace(replacement.clone()));
        }
        // Body let go by the plugins handled so far, on its way to the client.
        let mut released = Bytes::new();
        for index in (0..self.chain.len()).rev() {
            if !released.is_empty() {
                match self.response_body_step(index, released, false, request) {
                    BodyStep::Passed(passed) => released = passed,
                    BodyStep::Held => released = Bytes::new(),
                    BodyStep::End(flow) => return (flow, Trailers::Keep(Bytes::new())),
                }
            }
            let mut held = std::mem::take(&mut self.contexts[index].response_body).freeze();
            if self.contexts[index].skipped || self.contexts[index].handle.is_none() {
                released = body_so_far(&mut BytesMut::from(held), released);
                continue;
            }
            let count = trailers.len() as i32;
            let loans = Loans {
                request: Some(Lent::ReadOnly(request)),
                trailers: Some(&mut *trailers),
                body: Some((true, &mut held)),
                ..Loans::default()
            };
            let result = self.call(
                index,
                Phase::ResponseTrailers,
                loans,
                |store, callbacks, context| match &callbacks.on_response_trailers {
                    Some(function) => function.call(store, context, count),
                    None => Ok(0),
                },
            );
            // Whatever the callback answered, the answer is ending: what this plugin held
            // goes on (Envoy cannot hold trailers back for good either).
            released = body_so_far(&mut BytesMut::from(held), released);
            if let Err(failure) = result
                && let Some(flow) = self.fail(index, failure)
            {
                return (flow, Trailers::Keep(Bytes::new()));
            }
            if let Some(flow) = self.requested_end(index) {
                return (flow, Trailers::Keep(Bytes::new()));
            }
        }
        (Flow::Continue, Trailers::Keep(released))
    }

    /// `on_done`, `on_log` and `on_delete` for every context, whatever happened to the
    /// request. Idempotent.
    pub fn finish(&mut self, request: Option<&RequestHeader>, response: Option<&ResponseHeader>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        for index in 0..self.chain.len() {
            // A request dropped while it waited (the client went away) leaves its pause.
            self.forget_pause(index);
            // A context that failed was already torn down with its instance, unless the
            // instance was kept.
            let context = &self.contexts[index];
            if context.handle.is_none() || (context.skipped && !context.teardown_pending) {
                continue;
            }
            let loans = Loans {
                request: request.map(Lent::ReadOnly),
                response: response.map(Lent::ReadOnly),
                ..Loans::default()
            };
            let _ = self.call(index, Phase::Log, loans, |store, callbacks, context| {
                if let Some(function) = &callbacks.on_done {
                    function.call(store, context)?;
                }
                if let Some(function) = &callbacks.on_log {
                    function.call(store, context)?;
                }
                if let Some(function) = &callbacks.on_delete {
                    function.call(store, context)?;
                }
                Ok(0)
            });
        }
    }
}

/// The body a plugin sees for this chunk: the chunk itself when the plugin holds nothing back
/// (no copy: a plugin that only reads or ignores bodies costs nothing per chunk), else what it
/// held back with the chunk appended.
fn body_so_far(buffered: &mut BytesMut, chunk: Bytes) -> Bytes {
    if buffered.is_empty() {
        return chunk;
    }
    buffered.extend_from_slice(&chunk);
    buffered.split().freeze()
}

impl Drop for RequestPlugins {
    /// A request dropped without `logging` (it should not happen) still frees its contexts
    /// inside the instances.
    fn drop(&mut self) {
        self.finish(None, None);
    }
}
