//! The exact limiter: GCRA (the generic cell rate algorithm, a token bucket kept as one
//! number per key) over a concurrent map.
//!
//! Each key stores its "theoretical arrival time" (TAT): when its bucket will be full again.
//! A request at `now` is allowed when `max(TAT, now) + interval - now <= tolerance`
//! (`interval` = period / rate, `tolerance` = burst × interval), and then moves TAT by one
//! interval. That is exactly a token bucket of `burst` tokens refilled at `rate`, decided with
//! one compare-and-swap and no timer. The same arithmetic runs in Redis for shared limits
//! (`super::redis`), so a route behaves the same whichever store it uses.
//!
//! A key whose TAT has passed holds a full bucket, which is what a missing key means too, so
//! the sweeper removes it with no change in behaviour: memory is bounded by the clients seen
//! within one refill time plus one sweep interval, whatever a flood of distinct clients does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crate::policy::keyed_hash::DigestMap;
use crate::policy::shared_state::Registry;

/// Time as nanoseconds since the first limiter was used: fits an `AtomicU64` for 584 years.
fn nanos_since_start(instant: Instant) -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(|| {
        // A little in the past, so that `started` instants of requests already under way
        // are not before it.
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
    });
    instant.saturating_duration_since(*START).as_nanos() as u64
}

/// A limit's rate, in the units the algorithm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Nanoseconds between two requests at the sustained rate.
    pub interval: u64,
    /// The most requests at once.
    pub burst: u64,
}

impl Rate {
    fn tolerance(&self) -> u64 {
        self.interval.saturating_mul(self.burst)
    }
}

/// One decision, with what the response headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that could be sent at once now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// Until the next request would be allowed (zero when allowed).
    pub retry_after: Duration,
}

/// Decides one request against a stored TAT at `now`; returns the decision and the new TAT
/// when it changes. Shared arithmetic of the local store and the tests.
fn decide(tat: u64, now: u64, rate: Rate) -> (Decision, Option<u64>) {
    let base = tat.max(now);
    let next = base.saturating_add(rate.interval);
    let tolerance = rate.tolerance();
    if next - now > tolerance {
        let allowed_at = next - tolerance;
        return (
            Decision {
                allowed: false,
                remaining: 0,
                reset: Duration::from_nanos(base - now),
                retry_after: Duration::from_nanos(allowed_at - now),
            },
            None,
        );
    }
    let headroom = tolerance - (next - now);
    (
        Decision {
            allowed: true,
            remaining: headroom / rate.interval.max(1),
            reset: Duration::from_nanos(next - now),
            retry_after: Duration::ZERO,
        },
        Some(next),
    )
}

/// The per-key TATs of one policy.
pub struct LocalStore {
    cells: DigestMap<AtomicU64>,
    cleanup_interval: Duration,
    last_sweep: AtomicU64,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LocalStore")
            .field("keys", &self.cells.len())
            .finish()
    }
}

/// Stores of live policies by identity, so that a config reload that keeps a limit keeps its
/// counts (clients do not get a fresh budget on every reload), and so the sweeper finds them.
static STORES: Registry<LocalStore> = Registry::new();

impl LocalStore {
    /// The store for the policy `identity` (its name and settings): the live one when a
    /// previous snapshot has it.
    pub fn shared(identity: String, cleanup_interval: Duration) -> Arc<LocalStore> {
        let store = STORES.shared(identity, || LocalStore {
            cells: DigestMap::default(),
            cleanup_interval,
            last_sweep: AtomicU64::new(0),
        });
        start_sweeper();
        store
    }

    /// Decides a request of `key` that started at `now`.
    pub fn check(&self, key: u128, now: Instant, rate: Rate) -> Decision {
        let now = nanos_since_start(now);
        if let Some(cell) = self.cells.get(&key) {
            return Self::check_cell(&cell, now, rate);
        }
        // First request of this key (or first since it was swept): a full bucket.
        let cell = self.cells.entry(key).or_insert_with(|| AtomicU64::new(0));
        Self::check_cell(&cell, now, rate)
    }

    fn check_cell(cell: &AtomicU64, now: u64, rate: Rate) -> Decision {
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let (decision, next) = decide(tat, now, rate);
            let Some(next) = next else {
                return decision;
            };
            match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return decision,
                Err(actual) => tat = actual,
            }
        }
    }

    /// Removes the keys whose bucket is full again.
    pub fn sweep(&self, now: Instant) {
        let now = nanos_since_start(now);
        self.cells
            .retain(|_, cell| cell.load(Ordering::Acquire) > now);
        self.last_sweep.store(now, Ordering::Release);
    }

    pub fn keys(&self) -> usize {
        self.cells.len()
    }

    fn sweep_due(&self, now: Instant) -> bool {
        let last = self.last_sweep.load(Ordering::Acquire);
        nanos_since_start(now).saturating_sub(last) >= self.cleanup_interval.as_nanos() as u64
    }
}

/// One thread for every store's sweeps: they are rare, short, and must not wait on the
/// request runtimes.
fn start_sweeper() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("loom-limit-sweeper".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let live = STORES.live();
                    let now = Instant::now();
                    for store in live.iter().filter(|store| store.sweep_due(now)) {
                        store.sweep(now);
                    }
                }
            });
        if let Err(error) = spawned {
            log::error!(
                "rate limit sweeper could not start ({error}); expired keys stay until reload"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_bucket_of_burst_refills_at_the_rate() {
        // 2 per second, bursts of 3.
        let rate = Rate {
            interval: SECOND / 2,
            burst: 3,
        };
        let mut tat = 0;
        let now = 10 * SECOND;
        let mut remaining = Vec::new();
        for _ in 0..4 {
            let (decision, next) = decide(tat, now, rate);
            remaining.push((decision.allowed, decision.remaining));
            if let Some(next) = next {
                tat = next;
            }
        }
        assert_eq!(remaining, [(true, 2), (true, 1), (true, 0), (false, 0)]);
        let (refused, _) = decide(tat, now, rate);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.reset, Duration::from_millis(1500));
        // Half a second later one request fits again, and only one.
        let later = now + SECOND / 2;
        let (decision, next) = decide(tat, later, rate);
        assert!(decision.allowed);
        assert!(!decide(next.unwrap(), later, rate).0.allowed);
    }

    #[test]
    fn the_store_counts_per_key_and_sweeps_full_buckets() {
        let store = LocalStore::shared("test-store".into(), Duration::from_secs(60));
        let rate = Rate {
            interval: SECOND,
            burst: 2,
        };
        let now = Instant::now();
        let allowed = (0..5).filter(|_| store.check(1, now, rate).allowed).count();
        assert_eq!(allowed, 2);
        assert!(store.check(2, now, rate).allowed);
        store.sweep(now);
        assert_eq!(store.keys(), 2);
        store.sweep(now + Duration::from_secs(3));
        assert_eq!(store.keys(), 0);
        // The same identity gets the same live store.
        let again = LocalStore::shared("test-store".into(), Duration::from_secs(60));
        assert!(Arc::ptr_eq(&store, &again));
    }
}
