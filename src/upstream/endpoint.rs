//! Per-endpoint runtime state (in-flight count, circuit breaker) and the lease a request holds
//! on the endpoint it was sent to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::breaker::{Admission, BreakerState, CircuitBreaker, Transition};
use super::pool::UpstreamPool;
use super::retry::RetryCondition;
use crate::observe::metrics;

pub struct EndpointState {
    /// Requests in flight to this endpoint: `least_conn`, `p2c`, the per-endpoint bulkhead and
    /// the admin API read it.
    pub in_flight: AtomicU64,
    pub breaker: Option<CircuitBreaker>,
    /// `loom_upstream_requests_total{upstream, endpoint, status}`, resolved per status once.
    pub responses: crate::observe::series::StatusCounters,
    /// Draining (`drain: true`): selection skips it. Changed in place by a reload or an admin
    /// change that only drains (see `UpstreamPlan::same_but_drain`).
    pub draining: std::sync::atomic::AtomicBool,
}

/// How one attempt ended, as the breaker and passive health see it. Whether it counts as a
/// failure is the upstream's `circuit_breaker.failure_on` to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Answered(u16),
    /// No (complete) answer: connect error, timeout or reset.
    Failed(RetryCondition),
}

/// A request's hold on one endpoint: counts it in flight until dropped, and carries its
/// breaker admission until [`EndpointLease::record`] gives the verdict (or the lease drops,
/// releasing it).
pub struct EndpointLease {
    pool: Arc<UpstreamPool>,
    index: usize,
    admission: Option<Admission>,
    recorded: bool,
}

impl EndpointLease {
    /// Counts a request in flight on `index`, refusing when that would pass `limit` (the
    /// per-endpoint bulkhead). The compare-and-swap makes the cap exact.
    pub(super) fn try_new(
        pool: Arc<UpstreamPool>,
        index: usize,
        limit: Option<u32>,
    ) -> Option<EndpointLease> {
        let state = pool.endpoint_state(index)?;
        let limit = limit.map_or(u64::MAX, u64::from);
        state
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |current| {
                (current < limit).then_some(current + 1)
            })
            .ok()?;
        Some(EndpointLease {
            pool,
            index,
            admission: None,
            recorded: false,
        })
    }

    pub(super) fn set_admission(&mut self, admission: Option<Admission>) {
        self.admission = admission;
    }

    pub fn endpoint_index(&self) -> usize {
        self.index
    }

    /// Gives the attempt's verdict to the breaker and passive health, once; later calls do
    /// nothing. An answer is a success unless `failure_on` lists its status; a failure that
    /// `failure_on` does not list is no verdict at all (the probe slot is just released), so
    /// it neither breaks nor extends a run of failures.
    pub fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let now = Instant::now();
        let success = match outcome {
            Outcome::Answered(status) => {
                !self.pool.counts_as_failure(RetryCondition::Status(status))
            }
            Outcome::Failed(condition) if self.pool.counts_as_failure(condition) => false,
            Outcome::Failed(_) => {
                self.release_admission();
                return;
            }
        };
        if let Some(admission) = self.admission.take()
            && let Some(state) = self.pool.endpoint_state(self.index)
            && let Some(breaker) = &state.breaker
            && let Some(transition) = breaker.record(admission, success, now)
        {
            self.pool.report_transition(self.index, transition);
        }
        self.pool.record_passive(self.index, success, now);
    }

    pub fn is_recorded(&self) -> bool {
        self.recorded
    }

    fn release_admission(&mut self) {
        if let (Some(admission), Some(state)) =
            (self.admission.take(), self.pool.endpoint_state(self.index))
            && let Some(breaker) = &state.breaker
        {
            breaker.release(admission);
        }
    }
}

impl Drop for EndpointLease {
    fn drop(&mut self) {
        self.release_admission();
        if let Some(state) = self.pool.endpoint_state(self.index) {
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Logs a breaker transition and updates its metrics.
pub fn publish_transition(upstream: &str, endpoint: &str, transition: Transition) {
    let log_level = if transition.to == BreakerState::Open {
        log::Level::Warn
    } else {
        log::Level::Info
    };
    log::log!(
        log_level,
        "upstream {upstream}: circuit breaker of {endpoint} {} -> {}",
        transition.from.as_str(),
        transition.to.as_str()
    );
    metrics::set_breaker_state(upstream, endpoint, transition.to as u8);
    metrics::count_breaker_transition(upstream, endpoint, transition.to.as_str());
}
