//! Bulkhead: a cap on requests in flight per upstream (and optionally per endpoint), with a
//! bounded wait for a free slot.
//!
//! The slots of an upstream are a semaphore shared by every config snapshot that has an
//! upstream of that name ([`UpstreamSlots`], found by name when a pool is built), so the
//! count follows the real upstream across reloads: requests still running on an old snapshot
//! keep counting against the limit, and a slot one of them frees goes to the request that
//! waited longest, whichever snapshot it came in on. The count is exact (a slot freed while a
//! reload lowers the limit may briefly be reused past the new one), and a queued request is
//! woken once, when a slot is handed to it. A reload that changes the limit resizes the
//! semaphore: a higher limit frees slots at once, a lower one takes effect as requests finish.
//! The per-endpoint limit (`EndpointLease::try_new`) is separate and exact too.
//!
//! The queue can also be bounded in length (Go Loom's `queue_size`): a request that finds
//! the slots taken and that many requests already waiting is refused at once. The count of
//! waiters is this pool's own, so a reload that rebuilds the pool starts a new queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The slots of one upstream, shared by the pools of every snapshot that names it.
pub struct UpstreamSlots {
    semaphore: Arc<Semaphore>,
    /// The limit the semaphore stands for now (the last config's).
    limit: AtomicU32,
    /// Slots a lowered limit still has to take back: each permit given back while this is
    /// above zero is forgotten instead of freed.
    owed: AtomicU32,
}

/// Every upstream's slots by name; an entry lives as long as a pool holds it.
static SLOTS_BY_UPSTREAM: LazyLock<Mutex<HashMap<String, Weak<UpstreamSlots>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl UpstreamSlots {
    /// The slots of upstream `name`, resized to `limit`.
    fn for_upstream(name: &str, limit: u32) -> Arc<UpstreamSlots> {
        let mut registry = SLOTS_BY_UPSTREAM
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slots) = registry.get(name).and_then(Weak::upgrade) {
            slots.resize(limit);
            return slots;
        }
        // Upstreams removed from the config leave dead entries: swept when one is added.
        registry.retain(|_, slots| slots.strong_count() > 0);
        let slots = Arc::new(UpstreamSlots {
            semaphore: Arc::new(Semaphore::new(limit as usize)),
            limit: AtomicU32::new(limit),
            owed: AtomicU32::new(0),
        });
        registry.insert(name.to_owned(), Arc::downgrade(&slots));
        slots
    }

    /// Called under the registry's lock, so two resizes never interleave; `give_back` may
    /// run meanwhile.
    fn resize(&self, limit: u32) {
        let old = self.limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            // Cancel what a lowered limit still owed before adding slots. One atomic update:
            // a slot given back meanwhile may already have paid part of it.
            let more = limit - old;
            let owed_before = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                    Some(owed - owed.min(more))
                })
                .unwrap_or_else(|owed| owed);
            let cancelled = owed_before.min(more);
            self.semaphore.add_permits((more - cancelled) as usize);
        } else if limit < old {
            let fewer = old - limit;
            // Free slots go at once; slots in use are taken back as their requests finish.
            let forgotten = self.semaphore.forget_permits(fewer as usize) as u32;
            self.owed.fetch_add(fewer - forgotten, Ordering::AcqRel);
        }
    }

    /// Gives a slot back, or keeps it when a lowered limit is still owed one.
    fn give_back(&self, permit: OwnedSemaphorePermit) {
        let owed = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                owed.checked_sub(1)
            });
        if owed.is_ok() {
            permit.forget();
        } else {
            drop(permit);
        }
    }

    /// Requests holding a slot now.
    fn in_flight(&self) -> u32 {
        let limit = self
            .limit
            .load(Ordering::Acquire)
            .saturating_add(self.owed.load(Ordering::Acquire));
        limit.saturating_sub(self.semaphore.available_permits() as u32)
    }
}

/// A held slot; dropping it frees the slot, which wakes the longest-waiting request.
pub struct BulkheadPermit {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<UpstreamSlots>,
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.slots.give_back(permit);
        }
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
    /// `None`: no limit.
    slots: Option<Arc<UpstreamSlots>>,
    limit: Option<u32>,
    /// How long a request waits for a slot; a duration too long to add to the clock (such as
    /// `Duration::MAX`) waits until one frees.
    queue_timeout: Duration,
    /// Requests that may wait at once; `None`: as many as come.
    max_waiting: Option<u32>,
    waiting: AtomicU32,
}

impl Bulkhead {
    pub fn new(
        name: &str,
        limit: Option<u32>,
        queue_timeout: Duration,
        max_waiting: Option<u32>,
    ) -> Bulkhead {
        Bulkhead {
            slots: limit.map(|limit| UpstreamSlots::for_upstream(name, limit)),
            limit,
            queue_timeout,
            max_waiting,
            waiting: AtomicU32::new(0),
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

    /// Requests holding a slot of this upstream now, from any snapshot.
    pub fn in_flight(&self) -> u32 {
        self.slots.as_ref().map_or(0, |slots| slots.in_flight())
    }

    /// Takes a slot, waiting up to the queue timeout. `None` means saturated: no slot in
    /// time, or the queue already full. Without a limit there is nothing to take and
    /// `Some(None)` is returned at once.
    pub async fn acquire(&self) -> Option<Option<BulkheadPermit>> {
        let Some(slots) = &self.slots else {
            return Some(None);
        };
        let permit = |permit| {
            Some(Some(BulkheadPermit {
                permit: Some(permit),
                slots: Arc::clone(slots),
            }))
        };
        // A free slot needs no place in the queue.
        match Arc::clone(&slots.semaphore).try_acquire_owned() {
            Ok(taken) => return permit(taken),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {}
        }
        if self.queue_timeout.is_zero() {
            return None;
        }
        let _place = self.join_queue()?;
        let wait = Arc::clone(&slots.semaphore).acquire_owned();
        // A timeout too long to add to the clock waits until a slot frees (Go Loom's
        // bulkhead without a timeout).
        let taken = match tokio::time::Instant::now().checked_add(self.queue_timeout) {
            Some(deadline) => tokio::time::timeout_at(deadline, wait).await.ok()?,
            None => wait.await,
        };
        taken.ok().and_then(permit)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_requests_in_flight_than_the_limit() {
        let bulkhead = Arc::new(Bulkhead::new(
            "bulkhead-test-exact",
            Some(3),
            Duration::from_secs(30),
            None,
        ));
        let running = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (bulkhead, running, most) = (
                Arc::clone(&bulkhead),
                Arc::clone(&running),
                Arc::clone(&most),
            );
            tasks.push(tokio::spawn(async move {
                let permit = bulkhead.acquire().await.flatten();
                assert!(permit.is_some(), "every request gets a slot in time");
                let now = running.fetch_add(1, Ordering::AcqRel) + 1;
                most.fetch_max(now, Ordering::AcqRel);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::AcqRel);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(most.load(Ordering::Acquire), 3);
        assert_eq!(bulkhead.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_reload_keeps_the_count_and_resizes_the_slots() {
        let name = "bulkhead-test-reload";
        let before = Bulkhead::new(name, Some(2), Duration::ZERO, None);
        let first = before.acquire().await.flatten();
        let second = before.acquire().await.flatten();
        assert!(first.is_some() && second.is_some());
        // A reload lowers the limit to 1 while the old snapshot's two requests still run.
        let after = Bulkhead::new(name, Some(1), Duration::ZERO, None);
        assert_eq!(after.in_flight(), 2);
        assert!(after.acquire().await.is_none());
        drop(first);
        // Still one in flight: the lower limit is reached, not passed.
        assert!(after.acquire().await.is_none());
        assert!(
            before.acquire().await.is_none(),
            "the old snapshot shares the new limit"
        );
        drop(second);
        let held = after.acquire().await.flatten();
        assert!(held.is_some());
        // Raised again to 3: two more at once.
        let raised = Bulkhead::new(name, Some(3), Duration::ZERO, None);
        let more = [
            raised.acquire().await.flatten(),
            raised.acquire().await.flatten(),
        ];
        assert!(more.iter().all(Option::is_some));
        assert!(raised.acquire().await.is_none());
        assert_eq!(raised.in_flight(), 3);
    }

    #[tokio::test]
    async fn a_slot_freed_on_one_snapshot_goes_to_a_request_waiting_on_another() {
        let name = "bulkhead-test-across-snapshots";
        let old = Bulkhead::new(name, Some(1), Duration::ZERO, None);
        let held = old.acquire().await.flatten();
        assert!(held.is_some());
        let new = Arc::new(Bulkhead::new(name, Some(1), Duration::from_secs(30), None));
        let waiter = tokio::spawn({
            let new = Arc::clone(&new);
            async move { new.acquire().await.flatten().is_some() }
        });
        while new.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        drop(held);
        assert!(waiter.await.unwrap_or(false));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
