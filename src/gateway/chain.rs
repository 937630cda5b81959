//! A route's chain of steps (built-in policies and Proxy-Wasm plugins) and the walk through it
//! in each phase:
//!
//! - request headers (`request_filter`): in chain order; a step may answer (end the request)
//!   or refuse it. When a Proxy-Wasm plugin wrote what routing matches on (`:path`,
//!   `:authority`, `:method`, `Host`, or any header when some route matches on headers), the
//!   request is routed again,
//!   as Envoy clears its route cache: on another route it goes to that route's upstream with
//!   its timeouts and retries (a transform's path rewrite of the first route does not carry
//!   over), while the chain that already ran stays the request's chain for the later phases;
//! - request body: the size limits count each chunk before it is forwarded, then the plugins
//!   see it (`crate::gateway::plugins`);
//! - response headers (`response_filter`): in reverse chain order;
//! - logging: the access logs write their line.
//!
//! A route with an empty chain returns from every walk at its first check.

use std::sync::Arc;

use bytes::Bytes;
use pingora::prelude::*;

use super::context::RequestContext;
use super::errors;
use super::headers;
use super::plugins;
use crate::config::validate::ChainEntry;
use crate::observe::access_log::{AccessLogRecord, JsonText};
use crate::plugin::pipeline::{Flow, RequestPlugins};
use crate::plugin::registry::PluginSet;
use crate::plugin::runtime::PluginRuntime;
use crate::policy::{Policy, PolicyStep, RequestInput, ResponseInput, Verdict};

/// One step, in the order the request meets it.
pub enum ChainStep {
    Policy(Arc<PolicyStep>),
    /// Index into [`RouteChain::wasm`].
    Wasm(usize),
}

/// A route's chain, resolved for one snapshot.
#[derive(Default)]
pub struct RouteChain {
    pub steps: Box<[ChainStep]>,
    /// The chain's Proxy-Wasm plugins, in chain order (the pipeline's body phases walk these).
    pub wasm: Arc<[Arc<PluginRuntime>]>,
    /// The steps each later phase needs, picked out once so those phases skip the rest.
    body_limits: Box<[Arc<PolicyStep>]>,
    access_logs: Box<[Arc<PolicyStep>]>,
    has_response_steps: bool,
    /// About how many headers the chain adds to a response (see
    /// [`crate::policy::Policy::response_header_room`]; a Proxy-Wasm plugin counts 2).
    pub response_header_room: usize,
    /// Some step reads the client's address: the chain resolves it first.
    pub uses_client_ip: bool,
    /// Whether the request-headers phase has anything to do: a Proxy-Wasm plugin, a step
    /// with a request step, or the client's address to resolve. Routes whose chain only
    /// acts on the answer (security headers, the access log) skip that walk.
    has_request_steps: bool,
}

impl RouteChain {
    pub fn build(entries: &[ChainEntry], plugin_set: &PluginSet) -> RouteChain {
        let mut steps = Vec::with_capacity(entries.len());
        let mut wasm: Vec<Arc<PluginRuntime>> = Vec::new();
        for entry in entries {
            match entry {
                ChainEntry::Policy(step) => {
                    if let Policy::AccessLog(log) = &step.policy {
                        log.open();
                    }
                    steps.push(ChainStep::Policy(Arc::clone(step)));
                }
                ChainEntry::Wasm(name) => {
                    // Validation checked the name; a module that failed to load is not in the set.
                    if let Some(plugin) = plugin_set.get(name) {
                        steps.push(ChainStep::Wasm(wasm.len()));
                        wasm.push(Arc::clone(plugin));
                    }
                }
            }
        }
        let policies = || {
            steps.iter().filter_map(|step| match step {
                ChainStep::Policy(policy) => Some(policy),
                ChainStep::Wasm(_) => None,
            })
        };
        let body_limits = policies()
            .filter(|step| matches!(step.policy, Policy::RequestSizeLimit(_)))
            .cloned()
            .collect();
        let access_logs = policies()
            .filter(|step| matches!(&step.policy, Policy::AccessLog(log) if log.is_enabled()))
            .cloned()
            .collect();
        let has_response_steps =
            !wasm.is_empty() || policies().any(|step| step.policy.acts_on_response());
        let response_header_room = 2 * wasm.len()
            + policies()
                .map(|step| step.policy.response_header_room())
                .sum::<usize>();
        let uses_client_ip =
            !wasm.is_empty() || policies().any(|step| step.policy.uses_client_ip());
        let has_request_steps =
            uses_client_ip || policies().any(|step| step.policy.acts_on_request());
        RouteChain {
            uses_client_ip,
            has_request_steps,
            steps: steps.into_boxed_slice(),
            wasm: wasm.into(),
            body_limits,
            access_logs,
            has_response_steps,
            response_header_room,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The chain as the admin API shows it.
    pub fn describe(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|step| match step {
                ChainStep::Policy(step) => serde_json::json!({
                    "name": step.name,
                    "kind": "builtin",
                    "type": step.policy.kind(),
                    "priority": step.priority,
                    "global": step.global,
                    "config": step.policy.describe(),
                }),
                ChainStep::Wasm(index) => {
                    let plugin = &self.wasm[*index];
                    serde_json::json!({
                        "name": plugin.name(),
                        "kind": "wasm",
                        "type": "wasm",
                        "priority": plugin.plan.priority,
                        "global": false,
                        "path": plugin.plan.wasm_path.display().to_string(),
                    })
                }
            })
            .collect();
        serde_json::Value::Array(steps)
    }
}

/// The request-headers phase. Returns `Ok(true)` when the request was answered here.
pub async fn request_headers(session: &mut Session, ctx: &mut RequestContext) -> Result<bool> {
    if ctx
        .route()
        .is_none_or(|route| !route.chain.has_request_steps)
    {
        return Ok(false);
    }
    // Held for the walk: the steps borrow from it while `ctx` is changed.
    let Some(snapshot) = ctx.snapshot.clone() else {
        return Ok(false);
    };
    let Some(route) = ctx.route_index.and_then(|index| snapshot.routes.get(index)) else {
        return Ok(false);
    };
    let chain = &route.chain;
    ctx.chain_route_index = ctx.route_index;
    // Set when a Proxy-Wasm plugin changed what routing matches on.
    let mut routing_changed = false;
    if chain.uses_client_ip {
        ctx.client_ip = crate::policy::client_ip::of_session(session, &snapshot.trusted_proxies);
    }
    for step in chain.steps.iter() {
        match step {
            ChainStep::Policy(step) => {
                if step.policy.acts_on_request()
                    && step.policy.acts_on(session.req_header())
                    && apply(step, &route.id, session, ctx).await
                {
                    return Ok(true);
                }
            }
            ChainStep::Wasm(index) => {
                if ctx.plugins.is_none() {
                    // Pingora keeps a second map with each request header name's original
                    // case, which its `insert_header` updates (and grows) on every plugin
                    // write and which the upstream copy of the request clones. Loom drops it
                    // before the request goes upstream anyway (`prepare_upstream_request`:
                    // names go out in canonical case), so it goes before the plugins write,
                    // with room made for their writes and Loom's own headers.
                    let request = session.req_header_mut();
                    if request.has_case() {
                        let room = 2 * chain.wasm.len() + headers::UPSTREAM_REQUEST_HEADERS;
                        headers::edit_request_headers(request, room, |_| {});
                    }
                    let facts = plugins::facts(session, ctx);
                    ctx.plugins = Some(Box::new(RequestPlugins::new(
                        Arc::clone(&chain.wasm),
                        facts,
                    )));
                }
                let Some(request_plugins) = ctx.plugins.as_mut() else {
                    continue;
                };
                let end_of_stream = session.is_body_empty();
                let path_before = session.req_header().uri.clone();
                let clock = ctx.trace.step_clock();
                let flow = request_plugins
                    .request_headers_at(
                        *index,
                        session.req_header_mut(),
                        end_of_stream,
                        &snapshot.upstreams,
                    )
                    .await;
                if session.req_header().uri != path_before {
                    // A plugin rewrote `:path`: it is sent as the plugin left it, instead of
                    // the route's prefix-stripped path.
                    ctx.upstream_uri = None;
                }
                routing_changed |=
                    request_plugins.take_routing_written(*index, snapshot.routes_match_headers);
                let (outcome, failed) = flow_outcome(flow.as_ref());
                ctx.trace.step_finished(
                    clock,
                    "plugin",
                    chain.wasm[*index].name(),
                    outcome,
                    failed,
                );
                match flow {
                    None | Some(Flow::Continue) => {}
                    Some(Flow::Respond(local)) => {
                        plugins::write_local_response(session, &local, &ctx.request_id).await;
                        ctx.local_response = Some(local);
                        return Ok(true);
                    }
                    Some(Flow::Fail(error)) => {
                        errors::respond(session, &error, &ctx.request_id, true).await;
                        ctx.failure = Some(error);
                        return Ok(true);
                    }
                    Some(Flow::Close) => return Err(plugins::close(ctx)),
                }
            }
        }
    }
    if routing_changed {
        let first_route = ctx.route_index;
        let upstream_uri = ctx.upstream_uri.take();
        if let Err(error) = super::routing::route_request(&snapshot, session, ctx) {
            errors::respond(session, &error, &ctx.request_id, true).await;
            ctx.failure = Some(error);
            return Ok(true);
        }
        if ctx.route_index == first_route {
            // Still the same route: the path goes upstream as the chain left it (a plugin's
            // `:path` as written, a transform's rewrite).
            ctx.upstream_uri = upstream_uri;
        } else if let Some(new_route) = ctx.route_index.and_then(|index| snapshot.routes.get(index))
        {
            // The new route's own built-in policies (its auth, its limits) still run: a
            // plugin must not be able to move a request past them. Steps the first chain
            // already ran (global policies, shared entries) are not run twice; the new
            // route's Proxy-Wasm plugins are not run.
            if new_route.chain.uses_client_ip && ctx.client_ip.is_none() {
                ctx.client_ip =
                    crate::policy::client_ip::of_session(session, &snapshot.trusted_proxies);
            }
            for step in new_route.chain.steps.iter() {
                let ChainStep::Policy(step) = step else {
                    continue;
                };
                let already_ran = chain
                    .steps
                    .iter()
                    .any(|ran| matches!(ran, ChainStep::Policy(ran) if Arc::ptr_eq(ran, step)));
                if step.policy.acts_on_request()
                    && step.policy.acts_on(session.req_header())
                    && !already_ran
                    && apply(step, &new_route.id, session, ctx).await
                {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Runs one built-in policy's request step; `true` when it answered the request.
async fn apply(
    step: &PolicyStep,
    route_id: &str,
    session: &mut Session,
    ctx: &mut RequestContext,
) -> bool {
    let clock = ctx.trace.step_clock();
    let verdict = {
        let mut input = RequestInput {
            client_ip: ctx.client_ip,
            request_id: &ctx.request_id,
            route_id,
            path_parameters: &ctx.path_parameters,
            upstream_uri: &mut ctx.upstream_uri,
            state: &mut ctx.policy_state,
            now: ctx.started,
            step_name: &step.name,
        };
        match step.policy.on_request_now(session, &mut input) {
            Some(verdict) => verdict,
            None => step.policy.on_request(session, &mut input).await,
        }
    };
    let (outcome, failed) = match &verdict {
        Verdict::Continue => ("continue", false),
        Verdict::Respond(_) => ("respond", false),
        Verdict::Fail(_) => ("refused", true),
    };
    ctx.trace
        .step_finished(clock, "policy", &step.name, outcome, failed);
    match verdict {
        Verdict::Continue => false,
        Verdict::Respond(local) => {
            plugins::write_local_response(session, &local, &ctx.request_id).await;
            ctx.local_response = Some(local);
            true
        }
        Verdict::Fail(error) => {
            errors::respond(session, &error, &ctx.request_id, true).await;
            ctx.failure = Some(error);
            true
        }
    }
}

/// How a plugin step ended, for its span.
fn flow_outcome(flow: Option<&Flow>) -> (&'static str, bool) {
    match flow {
        None | Some(Flow::Continue) => ("continue", false),
        Some(Flow::Respond(_)) => ("respond", false),
        Some(Flow::Fail(_)) => ("failed", true),
        Some(Flow::Close) => ("closed", true),
    }
}

/// Counts a request body chunk against the route's size limits.
pub fn request_body(body: &Option<Bytes>, ctx: &mut RequestContext) -> Result<()> {
    let Some(route) = ctx.chain_route() else {
        return Ok(());
    };
    if route.chain.body_limits.is_empty() {
        return Ok(());
    }
    let chunk = body.as_ref().map_or(0, Bytes::len);
    let mut failure = None;
    let mut received = ctx.request_body_bytes;
    for step in route.chain.body_limits.iter() {
        if let Policy::RequestSizeLimit(limit) = &step.policy {
            let mut counted = ctx.request_body_bytes;
            if let Verdict::Fail(error) = limit.on_request_body(chunk, &mut counted) {
                failure = Some(error);
                break;
            }
            received = counted;
        }
    }
    ctx.request_body_bytes = received;
    match failure {
        None => Ok(()),
        Some(error) => {
            let pingora_error = error.to_pingora();
            ctx.failure = Some(error);
            Err(pingora_error)
        }
    }
}

/// The response-headers phase, in reverse chain order. Returns whether the response
/// already carries the request's `X-Request-ID`: when the chain's last step edits the
/// response's parts, the id goes in with that edit, which saves the gateway another one.
pub async fn response_headers(
    session: &mut Session,
    response: &mut ResponseHeader,
    ctx: &mut RequestContext,
) -> Result<bool> {
    if ctx
        .chain_route()
        .is_none_or(|route| !route.chain.has_response_steps)
    {
        return Ok(false);
    }
    let Some(snapshot) = ctx.snapshot.clone() else {
        return Ok(false);
    };
    let Some(route) = ctx
        .chain_route_index
        .or(ctx.route_index)
        .and_then(|index| snapshot.routes.get(index))
    else {
        return Ok(false);
    };
    let chain = &route.chain;
    if let Some(request_plugins) = ctx.plugins.as_mut() {
        request_plugins.facts.response_code = response.status.as_u16();
    }
    let steps = &chain.steps;
    // The response phase walks the chain backwards.
    let mut position = steps.len();
    while position > 0 {
        position -= 1;
        match &steps[position] {
            ChainStep::Policy(_) => {
                // This policy step and the ones just before it share one edit of the
                // response's parts: each switch between Pingora's header and the plain
                // parts costs a few hundred instructions.
                let mut first = position;
                while first > 0 && matches!(steps[first - 1], ChainStep::Policy(_)) {
                    first -= 1;
                }
                let run = &steps[first..=position];
                position = first;
                fn acting(step: &ChainStep) -> Option<&PolicyStep> {
                    match step {
                        ChainStep::Policy(step) => {
                            step.policy.acts_on_response().then_some(step.as_ref())
                        }
                        ChainStep::Wasm(_) => None,
                    }
                }
                if !run.iter().any(|step| acting(step).is_some()) {
                    continue;
                }
                let input = ResponseInput {
                    client_ip: ctx.client_ip,
                    request_id: &ctx.request_id,
                    route_id: &route.id,
                    path_parameters: &ctx.path_parameters,
                    state: &ctx.policy_state,
                };
                // The chain's last edit: nothing runs after it that could drop the id.
                let last = first == 0;
                headers::edit_response(response, usize::from(last), |parts| {
                    for step in run.iter().rev().filter_map(acting) {
                        step.policy.on_response(session, parts, &input);
                    }
                    if last {
                        parts
                            .headers
                            .insert(headers::X_REQUEST_ID, ctx.request_id.clone());
                    }
                });
                if last {
                    return Ok(true);
                }
            }
            ChainStep::Wasm(index) => {
                let Some(request_plugins) = ctx.plugins.as_mut() else {
                    continue;
                };
                let clock = ctx.trace.step_clock();
                let flow = request_plugins
                    .response_headers_at(
                        *index,
                        session.req_header_mut(),
                        response,
                        &snapshot.upstreams,
                    )
                    .await;
                let (outcome, failed) = flow_outcome(flow.as_ref());
                ctx.trace.step_finished(
                    clock,
                    "plugin",
                    chain.wasm[*index].name(),
                    outcome,
                    failed,
                );
                match flow {
                    None | Some(Flow::Continue) => {}
                    Some(Flow::Respond(local)) => {
                        // The local answer's header carries the request id.
                        plugins::replace_response(response, &local, &ctx.request_id)?;
                        request_plugins.replace_body(local.body);
                        return Ok(true);
                    }
                    Some(flow) => return plugins::into_result(flow, ctx).map(|()| false),
                }
            }
        }
    }
    Ok(false)
}

/// The first `User-Agent` value, and HTTP/2's `:authority` or the first `Host` value. Clients
/// send both among their first headers: a scan of the first few costs less than two hash
/// lookups (each hashes its name and probes), which are the fallback for a header not there.
fn user_agent_and_host(request: &RequestHeader) -> (Option<&[u8]>, Option<&[u8]>) {
    const SCANNED_HEADERS: usize = 8;
    let mut user_agent = None;
    let mut host = request
        .uri
        .authority()
        .map(|authority| authority.as_str().as_bytes());
    let mut scanned = 0;
    for (name, value) in request.headers.iter() {
        if user_agent.is_none() && name == http::header::USER_AGENT {
            user_agent = Some(value.as_bytes());
        } else if host.is_none() && name == http::header::HOST {
            host = Some(value.as_bytes());
        }
        scanned += 1;
        if (user_agent.is_some() && host.is_some()) || scanned == SCANNED_HEADERS {
            break;
        }
    }
    if scanned == SCANNED_HEADERS {
        let header = |name| request.headers.get(name).map(http::HeaderValue::as_bytes);
        user_agent = user_agent.or_else(|| header(http::header::USER_AGENT));
        host = host.or_else(|| header(http::header::HOST));
    }
    (user_agent, host)
}

/// The route the access log names for a request no route matched.
static UNROUTED: std::sync::LazyLock<JsonText> = std::sync::LazyLock::new(|| JsonText::new("none"));

/// Writes the access-log lines of the route's chain; a request no route matched is written
/// to the global access logs.
pub fn log(session: &Session, ctx: &RequestContext, status: u16, elapsed: std::time::Duration) {
    let Some(snapshot) = ctx.snapshot.as_ref() else {
        return;
    };
    let route = ctx.route();
    let target = ctx.target();
    let access_logs = match ctx.chain_route() {
        Some(chain_route) => &chain_route.chain.access_logs[..],
        None => &snapshot.global_access_logs[..],
    };
    if access_logs.is_empty() {
        return;
    }
    let request = session.req_header();
    let endpoint = target.and_then(|target| {
        ctx.endpoint_index
            .and_then(|index| target.pool.endpoints().get(index))
            .map(|endpoint| &endpoint.address_json)
    });
    // Resolved here when no request step needed it (trusted proxies included).
    let client_ip = ctx
        .client_ip
        .or_else(|| crate::policy::client_ip::of_session(session, &snapshot.trusted_proxies));
    let path = request
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str());
    let (user_agent, host) = user_agent_and_host(request);
    let record = AccessLogRecord {
        // When the request started, as access logs usually stamp it.
        unix_millis: crate::observe::wall_clock::unix_millis_at(ctx.started),
        request_id: ctx.request_id.as_bytes(),
        request_id_generated: ctx.request_id_generated,
        route: route.map_or(&UNROUTED, |route| &route.id_json),
        method: &request.method,
        path,
        status,
        bytes_received: session.body_bytes_read() as u64,
        bytes_sent: session.body_bytes_sent() as u64,
        upstream: endpoint,
        attempts: ctx.attempts,
        duration_micros: elapsed.as_micros() as u64,
        upstream_duration_micros: ctx
            .upstream_elapsed
            .map(|elapsed| elapsed.as_micros() as u64),
        client_ip,
        // The line checks the bytes as it writes them.
        user_agent,
        host,
        protocol: if session.is_http2() {
            http::Version::HTTP_2
        } else {
            request.version
        },
        trace_id: ctx.trace.trace_id_hex(),
    };
    for step in access_logs {
        if let Policy::AccessLog(access_log) = &step.policy {
            access_log.write(&record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_request;

    #[test]
    fn user_agent_and_host_are_found_wherever_they_are() {
        let found = |headers: &[(&str, &str)]| {
            let request = test_request("GET", "/", headers);
            let (user_agent, host) = user_agent_and_host(&request);
            (
                user_agent.map(|value| String::from_utf8_lossy(value).into_owned()),
                host.map(|value| String::from_utf8_lossy(value).into_owned()),
            )
        };
        let some = |text: &str| Some(text.to_string());
        assert_eq!(
            found(&[
                ("host", "a.example"),
                ("user-agent", "curl/8"),
                ("host", "b.example")
            ]),
            (some("curl/8"), some("a.example"))
        );
        assert_eq!(found(&[("accept", "*/*")]), (None, None));
        // Past the scanned headers: found by lookup.
        let many: Vec<(String, String)> = (0..20)
            .map(|index| (format!("x-filler-{index}"), "v".to_string()))
            .chain([
                ("user-agent".to_string(), "late".to_string()),
                ("host".to_string(), "late.example".to_string()),
            ])
            .collect();
        let many: Vec<(&str, &str)> = many
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(found(&many), (some("late"), some("late.example")));
        // HTTP/2's :authority is the host, whatever Host says.
        let mut request = test_request("GET", "/x", &[("host", "h1.example")]);
        request.set_uri(http::Uri::from_static("https://h2.example/x"));
        assert_eq!(user_agent_and_host(&request).1, Some(&b"h2.example"[..]));
    }
}
