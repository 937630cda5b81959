//! Bulkhead: a cap on requests in flight per upstream (and optionally per endpoint), with a
//! bounded wait for a free slot.
//!
//! Counting uses `pingora_limits::inflight::Inflight`, a lock-free count-min sketch whose
//! guards decrement on drop. Keys are the upstream name (and endpoint address), so the count
//! follows the real upstream across reloads: requests still running on an old snapshot keep
//! counting against the limit. The sketch can over-estimate on hash collisions, never under,
//! so a collision can only make the bulkhead stricter. It is a soft cap: the sketch bumps its
//! rows one by one, so two requests racing for the last slot can both get in. The
//! per-endpoint limit (`EndpointLease::try_new`) is exact.
//!
//! The queue can also be bounded in length (Go Loom's `queue_size`): a request that finds
//! the slots taken and that many requests already waiting is refused at once. The count of
//! waiters is this pool's own, so a reload that rebuilds the pool starts a new queue.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pingora_limits::inflight::{Guard, Inflight};
use tokio::sync::Notify;

static UPSTREAM_IN_FLIGHT: LazyLock<Inflight> = LazyLock::new(Inflight::new);

/// How often a queued request re-checks even without a wake-up: a slot freed by a request of
/// an older snapshot wakes that snapshot's waiters, not ours.
const RECHECK_INTERVAL: Duration = Duration::from_millis(5);

/// A held slot; dropping it frees the slot and then wakes one queued request.
pub struct BulkheadPermit {
    guard: Option<Guard>,
    released: std::sync::Arc<Notify>,
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        // Free the slot before waking a waiter, or it would find the slot still taken.
        drop(self.guard.take());
        self.released.notify_one();
    }
}

/// A request's place in the queue; dropping it (a slot was found, the wait timed out, or
/// the request was abandoned) gives the place back.
struct QueuePlace<'bulkhead> {
    waiting: &'bulkhead AtomicU32,
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Bulkhead {
    /// Hash of the upstream name: the sketch hashes this u64 rather than the string.
    key: u64,
    limit: Option<u32>,
    /// How long a request waits for a slot; a duration too long to add to the clock (such as
    /// `Duration::MAX`) waits until one frees.
    queue_timeout: Duration,
    /// Requests that may wait at once; `None`: as many as come.
    max_waiting: Option<u32>,
    waiting: AtomicU32,
    released: std::sync::Arc<Notify>,
}

impl Bulkhead {
    pub fn new(
        name: &str,
        limit: Option<u32>,
        queue_timeout: Duration,
        max_waiting: Option<u32>,
    ) -> Bulkhead {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        Bulkhead {
            key: hasher.finish(),
            limit,
            queue_timeout,
            max_waiting,
            waiting: AtomicU32::new(0),
            released: std::sync::Arc::new(Notify::new()),
        }
    }

    pub fn limit(&self) -> Option<u32> {
        self.limit
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }

    /// Takes a place in the queue, unless `max_waiting` requests already hold one.
    fn join_queue(&self) -> Option<QueuePlace<'_>> {
        let admitted = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                match self.max_waiting {
                    Some(max_waiting) if waiting >= max_waiting => None,
                    _ => Some(waiting.saturating_add(1)),
                }
            });
        admitted.ok().map(|_| QueuePlace {
            waiting: &self.waiting,
        })
    }

    /// Requests in flight as the sketch counts them.
    pub fn in_flight(&self) -> isize {
        let (guard, count) = UPSTREAM_IN_FLIGHT.incr(self.key, 0);
        drop(guard);
        count
    }

    /// Takes a slot, waiting up to the queue timeout. `None` means saturated: no slot in
    /// time, or the queue already full. Without a limit there is nothing to take and
    /// `Some(None)` is returned at once.
    pub async fn acquire(&self) -> Option<Option<BulkheadPermit>> {
        let Some(limit) = self.limit else {
            return Some(None);
        };
        // A free slot needs no place in the queue.
        if let Some(permit) = self.try_acquire(limit) {
            return Some(Some(permit));
        }
        if self.queue_timeout.is_zero() {
            return None;
        }
        // `None`: no deadline (Go Loom's bulkhead without a timeout).
        let deadline = Instant::now().checked_add(self.queue_timeout);
        let _place = self.join_queue()?;
        loop {
            let notified = self.released.notified();
            if let Some(permit) = self.try_acquire(limit) {
                return Some(Some(permit));
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(deadline) if now >= deadline => return None,
                Some(deadline) => (deadline - now).min(RECHECK_INTERVAL),
                None => RECHECK_INTERVAL,
            };
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    fn try_acquire(&self, limit: u32) -> Option<BulkheadPermit> {
        let (guard, count) = UPSTREAM_IN_FLIGHT.incr(self.key, 1);
        if count > i64::from(limit) as isize {
            // Dropping the guard gives the slot back.
            drop(guard);
            return None;
        }
        Some(BulkheadPermit {
            guard: Some(guard),
            released: std::sync::Arc::clone(&self.released),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_request_finding_the_queue_full_is_refused_at_once() {
        let bulkhead = Arc::new(Bulkhead::new(
            "bulkhead-test-queue-bound",
            Some(1),
            Duration::from_secs(30),
            Some(1),
        ));
        let held = bulkhead.acquire().await.flatten();
        assert!(held.is_some());
        let waiter = tokio::spawn({
            let bulkhead = Arc::clone(&bulkhead);
            async move { bulkhead.acquire().await.flatten().is_some() }
        });
        while bulkhead.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        assert!(bulkhead.acquire().await.is_none());
        assert!(started.elapsed() < Duration::from_secs(5));
        // The slot freed goes to the request that waited.
        drop(held);
        assert!(waiter.await.unwrap_or(false));
        assert_eq!(bulkhead.waiting(), 0);
    }

    #[tokio::test]
    async fn without_a_queue_timeout_nothing_waits() {
        let bulkhead = Bulkhead::new("bulkhead-test-no-wait", Some(1), Duration::ZERO, None);
        let held = bulkhead.acquire().await.flatten();
        assert!(held.is_some());
        assert!(bulkhead.acquire().await.is_none());
        assert_eq!(bulkhead.waiting(), 0);
    }
}
