//! Upstream attempts: admission (bulkhead, retry budget, backoff), endpoint choice, outcome
//! recording and the retry decision. The hooks in `mod.rs` call these in request order.

use std::sync::Arc;
use std::time::Instant;

use pingora::prelude::*;
use pingora_error::{ErrorSource, ErrorType};

use super::context::RequestContext;
use super::errors::GatewayError;
use crate::observe::metrics;
use crate::upstream::endpoint::Outcome;
use crate::upstream::pool::exclude_index;
use crate::upstream::retry::RetryCondition;
use crate::upstream::{SelectError, Selection, UpstreamPool};

/// Admission before choosing an endpoint: the first attempt takes a bulkhead slot and counts
/// toward the retry budget; a retry waits out its backoff.
pub async fn admit(ctx: &mut RequestContext, pool: &Arc<UpstreamPool>) -> Result<(), GatewayError> {
    // Keyed on the budget guard, not the attempt count: a stale keep-alive retry resets the
    // count but must not take a second bulkhead slot.
    if ctx.budget_request.is_none() {
        // An outage (every breaker open, every endpoint down) answers at once rather than
        // after waiting in the bulkhead's queue.
        if pool.bulkhead.limit().is_some()
            && let Err(reason) = pool.availability()
        {
            return Err(selection_error(pool, reason));
        }
        match pool.bulkhead.acquire().await {
            Some(permit) => ctx.bulkhead_permit = permit,
            None => {
                return Err(GatewayError::new(
                    503,
                    "upstream_saturated",
                    format!("upstream \"{}\" is at its concurrency limit", pool.name),
                ));
            }
        }
        ctx.budget_request = Some(pool.budget.start_request_owned());
    } else if let Some(target) = ctx.target() {
        let delay = target.retry.backoff(ctx.attempts, fastrand::f64);
        let past_deadline = target
            .timeouts
            .total
            .is_some_and(|total| ctx.started.elapsed() + delay >= total);
        if past_deadline {
            // The retry cannot fit in the route's deadline: the last attempt's error stands.
            return Err(ctx
                .failure
                .take()
                .unwrap_or_else(GatewayError::gateway_timeout));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    Ok(())
}

/// Chooses an endpoint not tried yet; the error says why none is usable.
pub fn choose(
    ctx: &mut RequestContext,
    pool: &Arc<UpstreamPool>,
    key: &[u8],
) -> Result<Selection, GatewayError> {
    let mut selected = pool.select(key, ctx.tried_endpoints);
    if selected.is_err() && ctx.tried_endpoints != 0 {
        // A retry prefers an endpoint not tried yet, but may go back to one.
        selected = pool.select(key, 0);
    }
    match selected {
        Ok(selection) => {
            let index = selection.lease.endpoint_index();
            ctx.upstream_status = 0;
            ctx.tried_endpoints = exclude_index(ctx.tried_endpoints, index);
            ctx.endpoint_index = Some(index);
            ctx.attempts += 1;
            ctx.upstream_started = Some(Instant::now());
            Ok(selection)
        }
        // After a failed attempt with nothing left to try, that attempt's error stands.
        Err(_) if ctx.failure.is_some() && ctx.attempts > 0 => Err(ctx
            .failure
            .take()
            .unwrap_or_else(GatewayError::gateway_timeout)),
        Err(reason) => Err(selection_error(pool, reason)),
    }
}

/// The answer when no endpoint can be chosen.
fn selection_error(pool: &UpstreamPool, reason: SelectError) -> GatewayError {
    match reason {
        SelectError::AllCircuitsOpen => GatewayError::new(
            503,
            "circuit_open",
            format!(
                "every endpoint of upstream \"{}\" has an open circuit breaker",
                pool.name
            ),
        ),
        SelectError::Saturated => GatewayError::new(
            503,
            "upstream_saturated",
            format!(
                "every endpoint of upstream \"{}\" is at its concurrency limit",
                pool.name
            ),
        ),
        SelectError::NoHealthyEndpoint => GatewayError::no_healthy_upstream(&pool.name),
    }
}

/// What a Pingora error means for the breaker and the retry policy; `None` when the client,
/// not the upstream, is at fault.
pub fn classify(error: &Error) -> Option<RetryCondition> {
    use ErrorType::*;
    // Only what the upstream did counts against it; the client going away, our own deadline
    // and internal errors do not.
    if error.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match error.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            RetryCondition::Timeout
        }
        ConnectRefused | ConnectNoRoute | ConnectError | BindError | ConnectProxyFailure
        | TLSHandshakeFailure | InvalidCert | HandshakeError => RetryCondition::ConnectError,
        HTTPStatus(status) => RetryCondition::Status(*status),
        _ => RetryCondition::Reset,
    })
}

/// After a failed attempt: records the failure on the endpoint, decides whether to retry
/// (marking `error` accordingly) and remembers the error the client gets if nothing follows.
pub fn after_failure(session: &Session, ctx: &mut RequestContext, error: &mut Error) {
    // Our own hooks (a size limit, a plugin) refused the request mid-proxy: they recorded
    // the answer already, and it is not the endpoint's failure.
    if let pingora_error::ErrorType::HTTPStatus(status) = error.etype()
        && ctx
            .failure
            .as_ref()
            .is_some_and(|failure| failure.status == *status)
    {
        error.set_retry(false);
        return;
    }
    let retry = match classify(error) {
        Some(condition) => {
            finish(ctx, Outcome::Failed(condition));
            should_retry(session, ctx, condition)
        }
        None => false,
    };
    error.set_retry(retry);
    ctx.failure = Some(GatewayError::from_proxy_error(error));
}

/// Records the attempt's outcome on its endpoint (breaker, passive health), once. The lease
/// itself stays in the context, counting the request in flight, until the attempt ends.
pub fn finish(ctx: &mut RequestContext, outcome: Outcome) {
    if let Some(lease) = ctx.lease.as_mut() {
        lease.record(outcome);
    }
}

/// Decides whether to retry after `condition`, taking a retry-budget slot when it does. Logs
/// and counts the reason when a retryable failure is not retried.
pub fn should_retry(
    session: &Session,
    ctx: &mut RequestContext,
    condition: RetryCondition,
) -> bool {
    let Some(target) = ctx.target() else {
        return false;
    };
    let policy = &target.retry;
    let pool = Arc::clone(&target.pool);
    if !policy.retries_on(condition) {
        return false;
    }
    let refusal = if ctx.attempts > policy.max_retries {
        Some("max_retries_reached")
    } else if !session.req_header().method.is_idempotent() && !policy.retry_non_idempotent {
        Some("not_idempotent")
    } else if session.as_ref().retry_buffer_truncated()
        || session.as_ref().body_bytes_read() > policy.max_replay_body_bytes
    {
        log::info!(
            "request {:?}: not retried, its body is larger than the {} bytes that can be replayed",
            ctx.request_id,
            policy.max_replay_body_bytes
        );
        Some("body_too_large")
    } else if session.response_written().is_some() {
        Some("response_started")
    } else {
        None
    };
    if let Some(reason) = refusal {
        metrics::count_retry(&pool.name, reason);
        return false;
    }
    // Give back the slot of the previous retry first, or it would compete with this one.
    ctx.budget_retry = None;
    match pool.budget.try_start_retry_owned() {
        Some(slot) => {
            ctx.budget_retry = Some(slot);
            metrics::count_retry(&pool.name, "attempted");
            true
        }
        None => {
            metrics::count_retry(&pool.name, "budget_exhausted");
            false
        }
    }
}
