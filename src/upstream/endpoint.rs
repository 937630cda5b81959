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

/// A request's hold on one endpoint: counts it in flight and carries its breaker admission
/// until [`EndpointLease::finish`] records the outcome (or the lease drops, releasing both).
pub struct EndpointLease {
    pool: Arc<UpstreamPool>,
    index: usize,
    admission: Option<Admission>,
}

impl EndpointLease {
    pub(super) fn new(
        pool: Arc<UpstreamPool>,
        index: usize,
        admission: Option<Admission>,
    ) -> EndpointLease {
        if let Some(state) = pool.endpoint_state(index) {
            state.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        EndpointLease {
            pool,
            index,
            admission,
        }
    }

    pub fn endpoint_index(&self) -> usize {
        self.index
    }

    /// Records the outcome: breaker, passive health, metrics and logs.
    pub fn finish(mut self, outcome: Outcome) {
        let now = Instant::now();
        let counts_as_failure = match outcome {
            Outcome::Answered(status) => {
                self.pool.counts_as_failure(RetryCondition::Status(status))
            }
            Outcome::Failed(condition) => self.pool.counts_as_failure(condition),
        };
        if let Some(admission) = self.admission.take()
            && let Some(state) = self.pool.endpoint_state(self.index)
            && let Some(breaker) = &state.breaker
            && let Some(transition) = breaker.record(admission, !counts_as_failure, now)
        {
            self.pool.report_transition(self.index, transition);
        }
        self.pool
            .record_passive(self.index, !counts_as_failure, now);
    }
}

impl Drop for EndpointLease {
    fn drop(&mut self) {
        if let Some(state) = self.pool.endpoint_state(self.index) {
            state.in_flight.fetch_sub(1, Ordering::Relaxed);
            if let (Some(admission), Some(breaker)) = (self.admission.take(), &state.breaker) {
                breaker.release(admission);
            }
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
