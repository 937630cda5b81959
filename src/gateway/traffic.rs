//! The request's part in canary releases and shadow traffic ([`crate::traffic`]): the
//! target chosen after the chain, the sticky cookie on the answer, what a mirrored request
//! captures on its way, and the accounting and the mirror sent from the logging phase.

use std::time::Duration;

use bytes::Bytes;
use pingora::prelude::*;

use super::context::RequestContext;

/// After the chain let the request through: picks its canary target and decides whether it
/// is mirrored.
pub fn request_admitted(session: &Session, ctx: &mut RequestContext) {
    let Some(route) = ctx.route() else {
        return;
    };
    let choice = route.canary.as_ref().map(|canary| {
        // Behind a trusted proxy the client is the one X-Forwarded-For names (the chain
        // resolved it already when one of its steps needed it).
        let client_ip = ctx.client_ip.or_else(|| {
            let snapshot = ctx.snapshot.as_deref()?;
            crate::policy::client_ip::of_session(session, &snapshot.trusted_proxies)
        });
        canary.choose(session.req_header(), client_ip)
    });
    let mirrored = route
        .shadow
        .as_ref()
        .is_some_and(|shadow| shadow.sample(session.req_header()));
    ctx.canary = choice;
    if mirrored {
        ctx.shadow = Some(Box::default());
    }
}

/// A request body chunk as it goes upstream (after the plugins).
pub fn request_body(body: &Option<Bytes>, ctx: &mut RequestContext) {
    let (Some(capture), Some(chunk)) = (ctx.shadow.as_mut(), body.as_ref()) else {
        return;
    };
    let Some(max_body) = shadow_of(ctx.snapshot.as_deref(), ctx.route_index).map(|s| s.max_body)
    else {
        return;
    };
    capture.request_chunk(chunk, max_body);
}

/// The request head as sent upstream, for the mirror.
pub fn upstream_request(upstream_request: &RequestHeader, ctx: &mut RequestContext) {
    if let Some(capture) = ctx.shadow.as_mut() {
        capture.request = Some(Box::new(upstream_request.clone()));
    }
}

/// The primary upstream's answer starts, for the comparison.
pub fn upstream_response(response: &ResponseHeader, ctx: &mut RequestContext) {
    if ctx.shadow.is_none() || compare_limit(ctx).is_none() {
        return;
    }
    if let Some(capture) = ctx.shadow.as_mut() {
        capture.response_started(response.status.as_u16(), &response.headers);
    }
}

/// A chunk of the primary upstream's answer, for the comparison.
pub fn upstream_response_body(body: &Option<Bytes>, ctx: &mut RequestContext) {
    let Some(chunk) = body.as_ref() else {
        return;
    };
    let Some(limit) = compare_limit(ctx) else {
        return;
    };
    if let Some(capture) = ctx.shadow.as_mut() {
        capture.response_chunk(chunk, limit);
    }
}

/// Adds the sticky cookie to an answer that assigned the client a version.
pub fn response(response: &mut ResponseHeader, ctx: &RequestContext) -> Result<()> {
    let Some(choice) = ctx.canary.filter(|choice| choice.set_cookie) else {
        return Ok(());
    };
    let cookie = ctx
        .route()
        .and_then(|route| route.canary.as_ref())
        .and_then(|canary| canary.sticky_cookie(choice.target));
    if let Some(cookie) = cookie {
        response.append_header(http::header::SET_COOKIE, cookie.clone())?;
    }
    Ok(())
}

/// The logging phase: counts the answer for the canary analysis and sends the mirror.
pub fn request_finished(ctx: &mut RequestContext, status: u16, elapsed: Duration) {
    if let (Some(choice), Some(route)) = (ctx.canary, ctx.route())
        && let Some(canary) = route.canary.as_ref()
    {
        canary.record(choice.target, status, elapsed, ctx.started + elapsed);
    }
    if let Some(capture) = ctx.shadow.take()
        && let Some(shadow) = shadow_of(ctx.snapshot.as_deref(), ctx.route_index)
    {
        shadow.dispatch(capture);
    }
}

fn shadow_of(
    snapshot: Option<&super::snapshot::Snapshot>,
    route_index: Option<usize>,
) -> Option<&crate::traffic::shadow::Shadow> {
    snapshot?.routes.get(route_index?)?.shadow.as_ref()
}

/// How much of the primary's answer is kept, when this request is mirrored and compared.
fn compare_limit(ctx: &RequestContext) -> Option<u64> {
    ctx.shadow.as_ref()?;
    shadow_of(ctx.snapshot.as_deref(), ctx.route_index)?
        .compare
        .as_ref()
        .map(|plan| plan.max_body)
}
