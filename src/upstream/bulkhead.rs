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

use std::sync::LazyLock;
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

pub struct Bulkhead {
    /// Hash of the upstream name: the sketch hashes this u64 rather than the string.
    key: u64,
    limit: Option<u32>,
    queue_timeout: Duration,
    released: std::sync::Arc<Notify>,
}

impl Bulkhead {
    pub fn new(name: &str, limit: Option<u32>, queue_timeout: Duration) -> Bulkhead {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        Bulkhead {
            key: hasher.finish(),
            limit,
            queue_timeout,
            released: std::sync::Arc::new(Notify::new()),
        }
    }

    pub fn limit(&self) -> Option<u32> {
        self.limit
    }

    /// Requests in flight as the sketch counts them.
    pub fn in_flight(&self) -> isize {
        let (guard, count) = UPSTREAM_IN_FLIGHT.incr(self.key, 0);
        drop(guard);
        count
    }

    /// Takes a slot, waiting up to the queue timeout. `None` means saturated. Without a limit
    /// there is nothing to take and `Some(None)` is returned at once.
    pub async fn acquire(&self) -> Option<Option<BulkheadPermit>> {
        let Some(limit) = self.limit else {
            return Some(None);
        };
        let now = Instant::now();
        let deadline = now.checked_add(self.queue_timeout).unwrap_or(now);
        loop {
            let notified = self.released.notified();
            if let Some(permit) = self.try_acquire(limit) {
                return Some(Some(permit));
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = (deadline - now).min(RECHECK_INTERVAL);
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
