//! Per-endpoint circuit breaker whose request path is lock-free: atomics only, no lock and
//! no allocation, so thousands of concurrent requests to one endpoint never queue behind
//! each other to ask whether they may go.
//!
//! # How the state is kept
//!
//! Everything that a transition must change at once lives in one `AtomicU64`, the *state
//! word*: the state, the half-open probes in flight, the half-open successes so far, and a
//! *generation* that every transition (and every [`CircuitBreaker::reset`]) increments. A
//! transition is one compare-and-swap on that word, so exactly one caller wins it and
//! reports it, and a probe slot can only be taken while the word still says half-open with
//! a free slot.
//!
//! Each [`Admission`] remembers the generation it was granted in. An outcome or release from
//! an older generation is ignored: the breaker has moved on since that request was admitted,
//! and its result says nothing about the endpoint the breaker is now judging. In particular
//! a late failure from before a reset, or from before the breaker closed, cannot count
//! toward reopening it, and a stale probe cannot free a slot of a later half-open period.
//!
//! The closed-state counters (consecutive failures and the rolling window) are separate
//! atomics, cleared when the breaker enters half-open and on reset. Nobody writes them
//! between opening and closing, because outcomes from the old closed generation are
//! ignored; so the breaker always closes with clean counters, and while open
//! [`CircuitBreaker::consecutive_failures`] still shows the count that opened it. (A
//! recording thread that checked the generation just before the breaker opened and then
//! stalled for the whole open timeout could still add one count; checking again would cost
//! every request a second load to guard against a stall that long.)
//!
//! # Time
//!
//! Callers pass `now`; the breaker keeps instants as nanoseconds since an origin captured in
//! [`CircuitBreaker::new`], which lets tests drive time and keeps `Instant::now()` (a system
//! call on some platforms) off the request path. An instant earlier than the origin counts
//! as the origin.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buckets in the rolling window: ten keeps the window's edge within a tenth of its length
/// while summing it stays a handful of loads.
const WINDOW_BUCKETS: usize = 10;

/// Probes in flight and half-open successes each get 15 bits of the state word.
const COUNT_BITS: u32 = 15;
const COUNT_LIMIT: u32 = (1 << COUNT_BITS) - 1;

/// Tuning for one breaker. Validation of user input belongs to the config layer;
/// [`CircuitBreaker::new`] only clamps values that would wedge the breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Open after this many consecutive failures (0 disables this trigger).
    pub failure_threshold: u32,
    /// Open when failures / requests over the rolling window reach this ratio (None
    /// disables)...
    pub failure_ratio: Option<f64>,
    /// ...provided the window holds at least this many requests.
    pub min_requests: u32,
    /// Rolling window length for the ratio, kept as ten time buckets.
    pub window: Duration,
    /// Open -> half-open after this long.
    pub open_timeout: Duration,
    /// Half-open admits at most this many probe requests at a time (clamped to 1..=32767).
    pub half_open_max_probes: u32,
    /// Consecutive probe successes that close the breaker (clamped to 1..=32767).
    pub success_threshold: u32,
}

impl Default for BreakerSettings {
    /// The Go Loom seed's defaults: open after 5 failures, close after 3 probe successes,
    /// probe again after 30 seconds.
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: 5,
            failure_ratio: None,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_timeout: Duration::from_secs(30),
            half_open_max_probes: 1,
            success_threshold: 3,
        }
    }
}

/// Where a breaker stands. The discriminants are the values exported as the state metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    /// Requests flow; outcomes are counted toward the triggers.
    Closed = 0,
    /// Requests are refused until the open timeout passes.
    Open = 1,
    /// A few probe requests test whether the endpoint has recovered.
    HalfOpen = 2,
}

impl BreakerState {
    /// The name used in logs, metrics labels and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Only the three encodings below are ever stored; the catch-all arm exists so decoding
    /// needs no panic path.
    fn from_bits(bits: u64) -> BreakerState {
        match bits & 0b11 {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

/// A state change, reported once by the call that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

/// Proof that a request was admitted; must be passed back to [`CircuitBreaker::record`] or
/// [`CircuitBreaker::release`]. Says whether it was a half-open probe (so the probe slot is
/// released) and which generation admitted it (so stale outcomes are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    generation: u32,
    probe: bool,
}

impl Admission {
    /// Whether this request holds a half-open probe slot.
    pub fn is_probe(self) -> bool {
        self.probe
    }
}

/// The state word, decoded. Layout, low bits first: state (2), probes in flight (15),
/// half-open successes (15), generation (32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StateWord {
    state: BreakerState,
    probes: u32,
    successes: u32,
    generation: u32,
}

impl StateWord {
    /// A fresh period of `state`: no probes, no successes.
    fn entering(state: BreakerState, generation: u32) -> StateWord {
        StateWord {
            state,
            probes: 0,
            successes: 0,
            generation,
        }
    }

    fn decode(word: u64) -> StateWord {
        let count_mask = u64::from(COUNT_LIMIT);
        StateWord {
            state: BreakerState::from_bits(word),
            // Both masked to 15 bits and the generation shifted down from 64, so the casts
            // cannot truncate.
            probes: ((word >> 2) & count_mask) as u32,
            successes: ((word >> (2 + COUNT_BITS)) & count_mask) as u32,
            generation: (word >> 32) as u32,
        }
    }

    fn encode(self) -> u64 {
        let count_mask = u64::from(COUNT_LIMIT);
        (self.state as u64)
            | ((u64::from(self.probes) & count_mask) << 2)
            | ((u64::from(self.successes) & count_mask) << (2 + COUNT_BITS))
            | (u64::from(self.generation) << 32)
    }
}

/// Keeps its contents on a cache line of their own, so that counters written on every
/// request do not evict the read-mostly state word from other cores' caches. 128 bytes
/// covers the adjacent-line prefetch of x86 and the 128-byte lines of some ARM cores.
#[repr(align(128))]
struct CacheLine<T>(T);

/// Read on every request, written only on transitions.
struct StateCell {
    word: AtomicU64,
    /// When the breaker last opened. Only ever raised (`fetch_max`) and always before the
    /// compare-and-swap that publishes Open, so whoever sees Open sees this instant or a
    /// later one, never the previous period's.
    opened_at_nanos: AtomicU64,
}

/// One slice of the rolling window.
struct Bucket {
    /// Which slice of time (now / bucket length) the counts belong to; [`ROTATING`] while a
    /// writer is moving the bucket to a new slice.
    epoch: AtomicU64,
    requests: AtomicU32,
    failures: AtomicU32,
}

/// Marks a bucket being cleared for a new slice of time. Readers skip it and writers drop
/// their count rather than wait, which keeps the window lock-free at the cost of a few
/// uncounted outcomes at a bucket boundary.
const ROTATING: u64 = u64::MAX;

/// Request and failure counts over the last `WINDOW_BUCKETS` slices of time. The window
/// spans between nine and ten tenths of the configured length, depending on how far `now`
/// is into the current slice.
struct RollingWindow {
    bucket_nanos: u64,
    buckets: [Bucket; WINDOW_BUCKETS],
}

impl RollingWindow {
    fn new(window: Duration) -> RollingWindow {
        RollingWindow {
            bucket_nanos: (saturating_nanos(window) / WINDOW_BUCKETS as u64).max(1),
            buckets: std::array::from_fn(|_| Bucket {
                epoch: AtomicU64::new(0),
                requests: AtomicU32::new(0),
                failures: AtomicU32::new(0),
            }),
        }
    }

    fn record(&self, now_nanos: u64, failure: bool) {
        let epoch = now_nanos / self.bucket_nanos;
        // The remainder is below WINDOW_BUCKETS, so the cast cannot truncate.
        let bucket = &self.buckets[(epoch % WINDOW_BUCKETS as u64) as usize];
        let mut seen = bucket.epoch.load(Ordering::Acquire);
        loop {
            if seen == epoch {
                break;
            }
            if seen > epoch {
                // Being rotated, or already holding a later slice: this outcome's slice has
                // left the window.
                return;
            }
            match bucket.epoch.compare_exchange_weak(
                seen,
                ROTATING,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    bucket.requests.store(0, Ordering::Relaxed);
                    bucket.failures.store(0, Ordering::Relaxed);
                    bucket.epoch.store(epoch, Ordering::Release);
                    break;
                }
                Err(actual) => seen = actual,
            }
        }
        bucket.requests.fetch_add(1, Ordering::Relaxed);
        if failure {
            bucket.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the window holds at least `min_requests` requests and failures make up at
    /// least `ratio` of them.
    fn trips(&self, now_nanos: u64, ratio: f64, min_requests: u32) -> bool {
        let current = now_nanos / self.bucket_nanos;
        let mut requests = 0_u64;
        let mut failures = 0_u64;
        for bucket in &self.buckets {
            let epoch = bucket.epoch.load(Ordering::Acquire);
            if epoch <= current && current - epoch < WINDOW_BUCKETS as u64 {
                requests += u64::from(bucket.requests.load(Ordering::Relaxed));
                failures += u64::from(bucket.failures.load(Ordering::Relaxed));
            }
        }
        requests > 0
            && requests >= u64::from(min_requests)
            && failures as f64 >= ratio * requests as f64
    }

    fn clear(&self) {
        for bucket in &self.buckets {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.failures.store(0, Ordering::Relaxed);
        }
    }
}

/// A per-endpoint circuit breaker; share it by reference (it is `Sync`).
pub struct CircuitBreaker {
    settings: BreakerSettings,
    /// Instants are kept as nanoseconds since this.
    origin: Instant,
    open_timeout_nanos: u64,
    max_probes: u32,
    success_threshold: u32,
    state: CacheLine<StateCell>,
    consecutive_failures: CacheLine<AtomicU32>,
    window: CacheLine<RollingWindow>,
}

impl CircuitBreaker {
    /// A closed breaker. `half_open_max_probes` and `success_threshold` are clamped to
    /// 1..=32767: zero would leave the breaker half-open forever, and the state word has 15
    /// bits for each.
    pub fn new(settings: BreakerSettings) -> Self {
        CircuitBreaker {
            origin: Instant::now(),
            open_timeout_nanos: saturating_nanos(settings.open_timeout),
            max_probes: settings.half_open_max_probes.clamp(1, COUNT_LIMIT),
            success_threshold: settings.success_threshold.clamp(1, COUNT_LIMIT),
            state: CacheLine(StateCell {
                word: AtomicU64::new(StateWord::entering(BreakerState::Closed, 0).encode()),
                opened_at_nanos: AtomicU64::new(0),
            }),
            consecutive_failures: CacheLine(AtomicU32::new(0)),
            window: CacheLine(RollingWindow::new(settings.window)),
            settings,
        }
    }

    /// The settings as given (before clamping).
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Whether a request would be admitted now, without taking a probe slot (used while
    /// choosing an endpoint). An open breaker whose timeout has passed counts as available,
    /// since the next `try_acquire` will move it to half-open and admit.
    pub fn is_available(&self, now: Instant) -> bool {
        let current = self.load();
        match current.state {
            BreakerState::Closed => true,
            BreakerState::Open => self.open_timeout_passed(now),
            BreakerState::HalfOpen => current.probes < self.max_probes,
        }
    }

    /// Admits a request or refuses it (open, or half-open with every probe slot taken). When
    /// the open timeout has passed this moves Open -> HalfOpen (exactly one caller wins the
    /// compare-and-swap and reports the transition) and admits that caller as the first
    /// probe.
    pub fn try_acquire(&self, now: Instant) -> (Option<Admission>, Option<Transition>) {
        let mut current = self.load();
        loop {
            let (next, transition) = match current.state {
                BreakerState::Closed => {
                    let admission = Admission {
                        generation: current.generation,
                        probe: false,
                    };
                    return (Some(admission), None);
                }
                BreakerState::Open => {
                    if !self.open_timeout_passed(now) {
                        return (None, None);
                    }
                    let next = StateWord {
                        probes: 1,
                        ..StateWord::entering(
                            BreakerState::HalfOpen,
                            current.generation.wrapping_add(1),
                        )
                    };
                    let transition = Transition {
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                    };
                    (next, Some(transition))
                }
                BreakerState::HalfOpen => {
                    if current.probes >= self.max_probes {
                        return (None, None);
                    }
                    let next = StateWord {
                        probes: current.probes + 1,
                        ..current
                    };
                    (next, None)
                }
            };
            match self.swap(current, next) {
                Ok(()) => {
                    if transition.is_some() {
                        // Outcomes of the old closed generation are ignored from here on,
                        // so clearing now means the breaker will close with clean counters.
                        self.clear_closed_counters();
                    }
                    let admission = Admission {
                        generation: next.generation,
                        probe: true,
                    };
                    return (Some(admission), transition);
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Records the outcome of an admitted request.
    ///
    /// Closed: a failure counts toward both triggers and the ratio is checked then; a success
    /// ends the run of consecutive failures and counts as a request in the window. (A success
    /// can lift the window past `min_requests` without tripping it; the next failure does.)
    /// HalfOpen: a failure reopens at once and restarts the open timeout;
    /// `success_threshold` successes in a row close. An outcome from an earlier generation
    /// (admitted before the last transition or reset) is ignored.
    pub fn record(&self, admission: Admission, success: bool, now: Instant) -> Option<Transition> {
        if admission.probe {
            self.record_probe(admission, success, now)
        } else {
            self.record_closed(admission, success, now)
        }
    }

    /// Releases an admission without an outcome (request cancelled before reaching the
    /// endpoint). Frees the probe slot if the half-open period it belongs to is still on.
    pub fn release(&self, admission: Admission) {
        if !admission.probe {
            return;
        }
        let mut current = self.load();
        while current.state == BreakerState::HalfOpen
            && current.generation == admission.generation
            && current.probes > 0
        {
            let next = StateWord {
                probes: current.probes - 1,
                ..current
            };
            match self.swap(current, next) {
                Ok(()) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The stored state. An open breaker whose timeout has passed still reports Open until a
    /// `try_acquire` moves it to half-open, so this never disagrees with the transitions
    /// reported to metrics; use [`CircuitBreaker::is_available`] to ask whether a request
    /// would go. `now` is unused and kept for symmetry with the other calls.
    pub fn state(&self, _now: Instant) -> BreakerState {
        self.load().state
    }

    /// Closes the breaker by hand (admin API) and clears its counters; returns the transition
    /// if it was not closed. Outcomes of requests admitted before the reset are ignored, even
    /// when the breaker was already closed. `now` is unused: a reset needs no clock.
    pub fn reset(&self, _now: Instant) -> Option<Transition> {
        let mut current = self.load();
        loop {
            let next =
                StateWord::entering(BreakerState::Closed, current.generation.wrapping_add(1));
            match self.swap(current, next) {
                Ok(()) => break,
                Err(actual) => current = actual,
            }
        }
        self.clear_closed_counters();
        (current.state != BreakerState::Closed).then_some(Transition {
            from: current.state,
            to: BreakerState::Closed,
        })
    }

    /// Failures in a row while closed. While open it still shows the run that opened the
    /// breaker; it is cleared on entering half-open and on reset.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.0.load(Ordering::Relaxed)
    }

    fn record_closed(
        &self,
        admission: Admission,
        success: bool,
        now: Instant,
    ) -> Option<Transition> {
        let current = self.load();
        if current.state != BreakerState::Closed || current.generation != admission.generation {
            return None;
        }
        if success {
            // Reading first keeps the line shared between cores while the endpoint is
            // healthy, which is nearly always.
            if self.consecutive_failures.0.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.0.store(0, Ordering::Relaxed);
            }
            if self.settings.failure_ratio.is_some() {
                self.window.0.record(self.nanos_since_origin(now), false);
            }
            return None;
        }
        let now_nanos = self.nanos_since_origin(now);
        let failures = self
            .consecutive_failures
            .0
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let mut trips =
            self.settings.failure_threshold != 0 && failures >= self.settings.failure_threshold;
        if let Some(ratio) = self.settings.failure_ratio {
            self.window.0.record(now_nanos, true);
            trips = trips
                || self
                    .window
                    .0
                    .trips(now_nanos, ratio, self.settings.min_requests);
        }
        if !trips {
            return None;
        }
        // The closed word never changes within a generation, so a failed swap means another
        // caller has already opened (or reset) the breaker: nothing left to do.
        self.open_from(current, now_nanos)
    }

    fn record_probe(
        &self,
        admission: Admission,
        success: bool,
        now: Instant,
    ) -> Option<Transition> {
        let now_nanos = self.nanos_since_origin(now);
        let mut current = self.load();
        loop {
            if current.state != BreakerState::HalfOpen || current.generation != admission.generation
            {
                return None;
            }
            if !success {
                match self.open_from(current, now_nanos) {
                    Some(transition) => return Some(transition),
                    None => {
                        current = self.load();
                        continue;
                    }
                }
            }
            let successes = current.successes + 1;
            let (next, transition) = if successes >= self.success_threshold {
                let next =
                    StateWord::entering(BreakerState::Closed, current.generation.wrapping_add(1));
                let transition = Transition {
                    from: BreakerState::HalfOpen,
                    to: BreakerState::Closed,
                };
                (next, Some(transition))
            } else {
                let next = StateWord {
                    probes: current.probes.saturating_sub(1),
                    successes,
                    ..current
                };
                (next, None)
            };
            match self.swap(current, next) {
                Ok(()) => return transition,
                Err(actual) => current = actual,
            }
        }
    }

    /// Moves `expected` (Closed or HalfOpen) to Open; `None` if the word changed meanwhile.
    fn open_from(&self, expected: StateWord, now_nanos: u64) -> Option<Transition> {
        self.state
            .0
            .opened_at_nanos
            .fetch_max(now_nanos, Ordering::Relaxed);
        let next = StateWord::entering(BreakerState::Open, expected.generation.wrapping_add(1));
        self.swap(expected, next).ok()?;
        Some(Transition {
            from: expected.state,
            to: BreakerState::Open,
        })
    }

    fn open_timeout_passed(&self, now: Instant) -> bool {
        // Read after the state word (acquire), so this is at least the instant stored
        // before the swap that published Open.
        let opened_at = self.state.0.opened_at_nanos.load(Ordering::Relaxed);
        self.nanos_since_origin(now).saturating_sub(opened_at) >= self.open_timeout_nanos
    }

    fn clear_closed_counters(&self) {
        self.consecutive_failures.0.store(0, Ordering::Relaxed);
        self.window.0.clear();
    }

    fn load(&self) -> StateWord {
        StateWord::decode(self.state.0.word.load(Ordering::Acquire))
    }

    /// One compare-and-swap of the state word; on failure, the word found instead.
    fn swap(&self, expected: StateWord, next: StateWord) -> Result<(), StateWord> {
        self.state
            .0
            .word
            .compare_exchange(
                expected.encode(),
                next.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(StateWord::decode)
    }

    fn nanos_since_origin(&self, now: Instant) -> u64 {
        saturating_nanos(now.saturating_duration_since(self.origin))
    }
}

/// Nanoseconds in `duration`, capped at `u64::MAX` (about 584 years).
fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize};

    const MILLISECOND: Duration = Duration::from_millis(1);

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failure_threshold: 3,
            failure_ratio: None,
            min_requests: 10,
            window: Duration::from_secs(10),
            open_timeout: Duration::from_secs(30),
            half_open_max_probes: 1,
            success_threshold: 2,
        }
    }

    fn admit(breaker: &CircuitBreaker, now: Instant) -> Admission {
        match breaker.try_acquire(now) {
            (Some(admission), _) => admission,
            (None, _) => panic!("refused in state {:?}", breaker.load()),
        }
    }

    /// Admits and records one request, returning the transition the outcome caused.
    fn outcome(breaker: &CircuitBreaker, success: bool, now: Instant) -> Option<Transition> {
        let admission = admit(breaker, now);
        breaker.record(admission, success, now)
    }

    fn transition(from: BreakerState, to: BreakerState) -> Option<Transition> {
        Some(Transition { from, to })
    }

    /// A breaker opened at its origin (time zero of its clock) by its consecutive-failure
    /// trigger.
    fn opened(settings: BreakerSettings) -> CircuitBreaker {
        let threshold = settings.failure_threshold;
        let breaker = CircuitBreaker::new(settings);
        let start = breaker.origin;
        for _ in 0..threshold {
            outcome(&breaker, false, start);
        }
        assert_eq!(breaker.state(start), BreakerState::Open);
        breaker
    }

    #[test]
    fn state_names_and_metric_values() {
        assert_eq!(BreakerState::Closed.as_str(), "closed");
        assert_eq!(BreakerState::Open.as_str(), "open");
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
        assert_eq!(BreakerState::Closed as u8, 0);
        assert_eq!(BreakerState::Open as u8, 1);
        assert_eq!(BreakerState::HalfOpen as u8, 2);
    }

    #[test]
    fn defaults_match_the_go_seed() {
        let defaults = BreakerSettings::default();
        assert_eq!(defaults.failure_threshold, 5);
        assert_eq!(defaults.success_threshold, 3);
        assert_eq!(defaults.open_timeout, Duration::from_secs(30));
        assert_eq!(defaults.half_open_max_probes, 1);
        assert_eq!(defaults.failure_ratio, None);
    }

    #[test]
    fn state_word_round_trips() {
        let word = StateWord {
            state: BreakerState::HalfOpen,
            probes: COUNT_LIMIT,
            successes: 1234,
            generation: u32::MAX,
        };
        assert_eq!(StateWord::decode(word.encode()), word);
    }

    #[test]
    fn consecutive_failures_open_at_the_threshold() {
        let breaker = CircuitBreaker::new(settings());
        let start = breaker.origin;
        assert_eq!(outcome(&breaker, false, start), None);
        assert_eq!(outcome(&breaker, false, start), None);
        assert_eq!(breaker.consecutive_failures(), 2);
        assert_eq!(
            outcome(&breaker, false, start),
            transition(BreakerState::Closed, BreakerState::Open)
        );
        assert_eq!(breaker.state(start), BreakerState::Open);
        assert_eq!(breaker.consecutive_failures(), 3);
    }

    #[test]
    fn a_success_ends_the_run_of_failures() {
        let breaker = CircuitBreaker::new(settings());
        let start = breaker.origin;
        for _ in 0..10 {
            assert_eq!(outcome(&breaker, false, start), None);
            assert_eq!(outcome(&breaker, false, start), None);
            assert_eq!(outcome(&breaker, true, start), None);
        }
        assert_eq!(breaker.consecutive_failures(), 0);
        assert_eq!(breaker.state(start), BreakerState::Closed);
    }

    #[test]
    fn zero_threshold_disables_the_consecutive_trigger() {
        let breaker = CircuitBreaker::new(BreakerSettings {
            failure_threshold: 0,
            ..settings()
        });
        let start = breaker.origin;
        for _ in 0..1000 {
            assert_eq!(outcome(&breaker, false, start), None);
        }
        assert_eq!(breaker.state(start), BreakerState::Closed);
    }

    #[test]
    fn open_refuses_until_the_timeout() {
        let breaker = opened(settings());
        let start = breaker.origin;
        let almost = start + Duration::from_secs(30) - Duration::from_nanos(1);
        assert_eq!(breaker.try_acquire(start), (None, None));
        assert_eq!(breaker.try_acquire(almost), (None, None));
        assert!(!breaker.is_available(almost));
        assert_eq!(breaker.state(almost), BreakerState::Open);
    }

    #[test]
    fn state_reports_open_until_someone_asks() {
        let breaker = opened(settings());
        let start = breaker.origin;
        let later = start + Duration::from_secs(31);
        assert!(breaker.is_available(later));
        assert_eq!(breaker.state(later), BreakerState::Open);
        assert!(breaker.try_acquire(later).0.is_some());
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_admits_exactly_the_probe_limit() {
        let breaker = opened(BreakerSettings {
            half_open_max_probes: 3,
            ..settings()
        });
        let start = breaker.origin;
        let later = start + Duration::from_secs(30);
        let (first, reported) = breaker.try_acquire(later);
        assert_eq!(
            reported,
            transition(BreakerState::Open, BreakerState::HalfOpen)
        );
        assert!(first.is_some_and(Admission::is_probe));
        for _ in 0..2 {
            let (admission, reported) = breaker.try_acquire(later);
            assert!(admission.is_some_and(Admission::is_probe));
            assert_eq!(reported, None);
        }
        assert!(!breaker.is_available(later));
        assert_eq!(breaker.try_acquire(later), (None, None));
        assert_eq!(breaker.load().probes, 3);
    }

    #[test]
    fn a_probe_failure_reopens_and_restarts_the_timeout() {
        let breaker = opened(settings());
        let start = breaker.origin;
        let probing = start + Duration::from_secs(40);
        let probe = admit(&breaker, probing);
        assert_eq!(
            breaker.record(probe, false, probing),
            transition(BreakerState::HalfOpen, BreakerState::Open)
        );
        assert_eq!(breaker.state(probing), BreakerState::Open);
        let almost = probing + Duration::from_secs(30) - Duration::from_nanos(1);
        assert_eq!(breaker.try_acquire(almost), (None, None));
        let (admission, reported) = breaker.try_acquire(probing + Duration::from_secs(30));
        assert!(admission.is_some());
        assert_eq!(
            reported,
            transition(BreakerState::Open, BreakerState::HalfOpen)
        );
    }

    #[test]
    fn probe_successes_close_and_clear_the_counters() {
        let breaker = opened(BreakerSettings {
            success_threshold: 3,
            ..settings()
        });
        let start = breaker.origin;
        assert_eq!(breaker.consecutive_failures(), 3);
        let later = start + Duration::from_secs(30);
        assert_eq!(outcome(&breaker, true, later), None);
        assert_eq!(breaker.consecutive_failures(), 0);
        assert_eq!(outcome(&breaker, true, later), None);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        assert_eq!(
            outcome(&breaker, true, later),
            transition(BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert_eq!(breaker.state(later), BreakerState::Closed);
        // A full threshold of fresh failures is needed to open again.
        assert_eq!(outcome(&breaker, false, later), None);
        assert_eq!(outcome(&breaker, false, later), None);
        assert_eq!(
            outcome(&breaker, false, later),
            transition(BreakerState::Closed, BreakerState::Open)
        );
    }

    #[test]
    fn release_frees_a_probe_slot() {
        let breaker = opened(settings());
        let start = breaker.origin;
        let later = start + Duration::from_secs(30);
        let probe = admit(&breaker, later);
        assert_eq!(breaker.try_acquire(later), (None, None));
        breaker.release(probe);
        assert!(breaker.is_available(later));
        let again = admit(&breaker, later);
        assert!(again.is_probe());
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
    }

    #[test]
    fn a_stale_probe_cannot_free_a_later_slot() {
        let breaker = opened(BreakerSettings {
            half_open_max_probes: 2,
            ..settings()
        });
        let start = breaker.origin;
        let first_probe_time = start + Duration::from_secs(30);
        let stale = admit(&breaker, first_probe_time);
        let failing = admit(&breaker, first_probe_time);
        breaker.record(failing, false, first_probe_time);
        let second_probe_time = first_probe_time + Duration::from_secs(30);
        let _one = admit(&breaker, second_probe_time);
        let _two = admit(&breaker, second_probe_time);
        breaker.release(stale);
        assert_eq!(breaker.record(stale, true, second_probe_time), None);
        assert_eq!(breaker.try_acquire(second_probe_time), (None, None));
        assert_eq!(breaker.load().successes, 0);
    }

    #[test]
    fn releasing_a_closed_admission_changes_nothing() {
        let breaker = CircuitBreaker::new(settings());
        let start = breaker.origin;
        let before = breaker.load();
        let admission = admit(&breaker, start);
        assert!(!admission.is_probe());
        breaker.release(admission);
        assert_eq!(breaker.load(), before);
    }

    #[test]
    fn reset_closes_and_reports_from_any_state() {
        let breaker = opened(settings());
        let start = breaker.origin;
        assert_eq!(
            breaker.reset(start),
            transition(BreakerState::Open, BreakerState::Closed)
        );
        assert_eq!(breaker.state(start), BreakerState::Closed);
        assert_eq!(breaker.consecutive_failures(), 0);
        assert_eq!(breaker.reset(start), None);

        let breaker = opened(settings());
        let start = breaker.origin;
        let later = start + Duration::from_secs(30);
        admit(&breaker, later);
        assert_eq!(
            breaker.reset(later),
            transition(BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert!(!admit(&breaker, later).is_probe());
    }

    #[test]
    fn late_failures_from_before_a_reset_are_ignored() {
        let breaker = CircuitBreaker::new(settings());
        let start = breaker.origin;
        let late: Vec<Admission> = (0..3).map(|_| admit(&breaker, start)).collect();
        outcome(&breaker, false, start);
        assert_eq!(breaker.reset(start), None);
        assert_eq!(breaker.consecutive_failures(), 0);
        for admission in late {
            assert_eq!(breaker.record(admission, false, start), None);
        }
        assert_eq!(breaker.consecutive_failures(), 0);
        assert_eq!(breaker.state(start), BreakerState::Closed);
    }

    #[test]
    fn late_closed_failures_do_not_touch_half_open_or_the_next_closed_period() {
        let breaker = CircuitBreaker::new(BreakerSettings {
            success_threshold: 1,
            ..settings()
        });
        let start = breaker.origin;
        let late = admit(&breaker, start);
        for _ in 0..3 {
            outcome(&breaker, false, start);
        }
        let later = start + Duration::from_secs(30);
        let probe = admit(&breaker, later);
        assert_eq!(breaker.record(late, false, later), None);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        breaker.record(probe, true, later);
        assert_eq!(breaker.record(late, false, later), None);
        assert_eq!(breaker.consecutive_failures(), 0);
        assert_eq!(breaker.state(later), BreakerState::Closed);
    }

    fn ratio_settings() -> BreakerSettings {
        BreakerSettings {
            failure_threshold: 0,
            failure_ratio: Some(0.5),
            min_requests: 10,
            ..settings()
        }
    }

    #[test]
    fn ratio_does_not_trip_below_min_requests() {
        let breaker = CircuitBreaker::new(ratio_settings());
        let start = breaker.origin;
        for _ in 0..9 {
            assert_eq!(outcome(&breaker, false, start), None);
        }
        assert_eq!(breaker.state(start), BreakerState::Closed);
        assert_eq!(
            outcome(&breaker, false, start),
            transition(BreakerState::Closed, BreakerState::Open)
        );
    }

    #[test]
    fn ratio_trips_when_failures_reach_it() {
        let breaker = CircuitBreaker::new(ratio_settings());
        let start = breaker.origin;
        // Alternating outcomes never make a run of failures, only a ratio.
        for _ in 0..6 {
            assert_eq!(outcome(&breaker, true, start), None);
        }
        for _ in 0..4 {
            assert_eq!(outcome(&breaker, false, start), None);
            assert_eq!(outcome(&breaker, true, start), None);
        }
        // 14 requests, 4 failures; each further failure-success pair adds one of each.
        for _ in 0..5 {
            assert_eq!(outcome(&breaker, false, start), None);
            assert_eq!(outcome(&breaker, true, start), None);
        }
        // 24 requests, 9 failures: three more failures make 12 of 27, the fourth 13 of 28.
        for _ in 0..4 {
            assert_eq!(outcome(&breaker, false, start), None);
        }
        // 28 requests, 13 failures; the next makes 14 of 29 (below half), then 15 of 30.
        assert_eq!(outcome(&breaker, false, start), None);
        assert_eq!(
            outcome(&breaker, false, start),
            transition(BreakerState::Closed, BreakerState::Open)
        );
    }

    #[test]
    fn old_buckets_age_out_of_the_window() {
        let breaker = CircuitBreaker::new(ratio_settings());
        let start = breaker.origin;
        for _ in 0..9 {
            assert_eq!(outcome(&breaker, false, start), None);
        }
        // A window and a bucket later those nine have aged out (in a slot nobody has
        // reused), so one more failure is one request.
        let later = start + Duration::from_secs(11);
        assert_eq!(outcome(&breaker, false, later), None);
        assert_eq!(breaker.state(later), BreakerState::Closed);
        // Within the window they still count.
        let inside = CircuitBreaker::new(ratio_settings());
        for _ in 0..9 {
            outcome(&inside, false, inside.origin);
        }
        assert_eq!(
            outcome(&inside, false, inside.origin + Duration::from_secs(9)),
            transition(BreakerState::Closed, BreakerState::Open)
        );
    }

    #[test]
    fn a_reused_bucket_starts_from_zero() {
        let breaker = CircuitBreaker::new(ratio_settings());
        let start = breaker.origin;
        for _ in 0..9 {
            outcome(&breaker, false, start);
        }
        // Same slot of the ring one window later: the old counts must not leak in.
        let same_slot = start + Duration::from_secs(10);
        for _ in 0..9 {
            assert_eq!(outcome(&breaker, true, same_slot), None);
        }
        assert_eq!(outcome(&breaker, false, same_slot), None);
    }

    #[test]
    fn probe_limits_are_clamped_so_the_breaker_cannot_wedge() {
        let breaker = opened(BreakerSettings {
            half_open_max_probes: 0,
            success_threshold: 0,
            ..settings()
        });
        let start = breaker.origin;
        let later = start + Duration::from_secs(30);
        assert_eq!(
            outcome(&breaker, true, later),
            transition(BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert_eq!(breaker.settings().half_open_max_probes, 0);
    }

    /// Small deterministic generator so each thread's outcomes differ without a dependency.
    fn next_random(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn assert_valid(word: StateWord, max_probes: u32, success_threshold: u32) {
        match word.state {
            BreakerState::Closed | BreakerState::Open => {
                assert_eq!((word.probes, word.successes), (0, 0), "{word:?}");
            }
            BreakerState::HalfOpen => {
                assert!(word.probes <= max_probes, "{word:?}");
                assert!(word.successes < success_threshold, "{word:?}");
            }
        }
    }

    #[test]
    fn concurrent_callers_keep_the_invariants() {
        const THREADS: usize = 4;
        const OPERATIONS: usize = 100_000;
        const MAX_PROBES: u32 = 3;
        const SUCCESS_THRESHOLD: u32 = 4;
        let breaker = CircuitBreaker::new(BreakerSettings {
            failure_threshold: 4,
            failure_ratio: Some(0.6),
            min_requests: 8,
            window: MILLISECOND,
            open_timeout: Duration::from_micros(5),
            half_open_max_probes: MAX_PROBES,
            success_threshold: SUCCESS_THRESHOLD,
        });
        let base = breaker.origin;
        // Shared clock in nanoseconds: every call moves time forward a little.
        let clock = AtomicU64::new(0);
        // Probes outstanding per half-open generation, counted by the callers themselves.
        let outstanding: Vec<AtomicI32> = (0..1 << 16).map(|_| AtomicI32::new(0)).collect();
        // Entries into and exits from each state, from the transitions reported.
        let entries: [AtomicUsize; 3] = std::array::from_fn(|_| AtomicUsize::new(0));
        let exits: [AtomicUsize; 3] = std::array::from_fn(|_| AtomicUsize::new(0));
        let tally = |reported: Option<Transition>| {
            if let Some(transition) = reported {
                assert_ne!(transition.from, transition.to);
                exits[transition.from as usize].fetch_add(1, Ordering::Relaxed);
                entries[transition.to as usize].fetch_add(1, Ordering::Relaxed);
            }
        };
        let refused = AtomicUsize::new(0);
        let finished = AtomicBool::new(false);
        let barrier = Barrier::new(THREADS + 2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                barrier.wait();
                while !finished.load(Ordering::Relaxed) {
                    assert_valid(breaker.load(), MAX_PROBES, SUCCESS_THRESHOLD);
                }
            });
            let workers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let (breaker, clock, outstanding, tally, refused, barrier) =
                        (&breaker, &clock, &outstanding, &tally, &refused, &barrier);
                    scope.spawn(move || {
                        let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (thread as u64 + 1);
                        barrier.wait();
                        for _ in 0..OPERATIONS {
                            let now =
                                base + Duration::from_nanos(clock.fetch_add(50, Ordering::Relaxed));
                            let (admission, reported) = breaker.try_acquire(now);
                            tally(reported);
                            let Some(admission) = admission else {
                                refused.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            let slot = &outstanding[admission.generation as usize & 0xFFFF];
                            if admission.is_probe() {
                                let held = slot.fetch_add(1, Ordering::AcqRel) + 1;
                                assert!(held <= MAX_PROBES as i32, "{held} probes outstanding");
                                std::thread::yield_now();
                                // Counted down before the slot is freed, so a caller that
                                // takes the freed slot never sees it counted twice.
                                slot.fetch_sub(1, Ordering::AcqRel);
                            }
                            let roll = next_random(&mut seed) % 100;
                            if roll < 5 {
                                breaker.release(admission);
                            } else {
                                // Enough failures while closed to trip often, mostly successes when probing.
                                let success = if admission.is_probe() {
                                    roll < 80
                                } else {
                                    roll < 75
                                };
                                tally(breaker.record(admission, success, now));
                            }
                            if roll == 99
                                && thread == 0
                                && next_random(&mut seed).is_multiple_of(50)
                            {
                                tally(breaker.reset(now));
                            }
                            assert_valid(breaker.load(), MAX_PROBES, SUCCESS_THRESHOLD);
                        }
                    })
                })
                .collect();
            barrier.wait();
            let joined: Vec<bool> = workers
                .into_iter()
                .map(|worker| worker.join().is_ok())
                .collect();
            // Stop the watcher before asserting, or a failed worker would leave it spinning.
            finished.store(true, Ordering::Relaxed);
            assert!(joined.iter().all(|ok| *ok), "a worker panicked");
        });
        let last = breaker.load().state;
        for state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            let index = state as usize;
            let started_here = usize::from(state == BreakerState::Closed);
            let ended_here = usize::from(state == last);
            assert_eq!(
                started_here + entries[index].load(Ordering::Relaxed),
                exits[index].load(Ordering::Relaxed) + ended_here,
                "reported transitions do not chain for {state:?}"
            );
            assert!(
                entries[index].load(Ordering::Relaxed) > 0,
                "never entered {state:?}"
            );
        }
        assert!(refused.load(Ordering::Relaxed) > 0);
    }
}
