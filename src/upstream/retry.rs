//! Retries: which failures are worth another attempt, how long to wait before it, and a
//! retry budget that keeps retries from multiplying the load on an upstream that is already
//! struggling (Envoy's `retry_budget`).
//!
//! Nothing here performs I/O or reads the clock: the gateway asks [`RetryPolicy::retries_on`]
//! whether a failure qualifies, [`RetryPolicy::backoff`] how long to wait, and
//! [`RetryBudget::try_start_retry`] whether the upstream can afford one more retry right now.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A failure of one attempt that a policy may choose to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryCondition {
    /// The connection to the endpoint could not be established.
    ConnectError,
    /// The attempt ran out of time (connect, read, write or per-try timeout).
    Timeout,
    /// The connection was reset or closed before a complete response arrived.
    Reset,
    /// The endpoint answered with this HTTP status.
    Status(u16),
}

impl RetryCondition {
    /// Parses "connect_error" | "timeout" | "reset" | a three-digit HTTP status in 100..=599
    /// such as "502". The error names the offending text, ready for a config error message.
    pub fn parse(text: &str) -> Result<RetryCondition, String> {
        match text {
            "connect_error" => Ok(RetryCondition::ConnectError),
            "timeout" => Ok(RetryCondition::Timeout),
            "reset" => Ok(RetryCondition::Reset),
            _ => parse_status(text).map(RetryCondition::Status).ok_or_else(|| {
                format!(
                    "unknown retry condition \"{text}\" (expected connect_error, timeout, reset \
                     or an HTTP status from 100 to 599)"
                )
            }),
        }
    }
}

/// Exactly three ASCII digits, so "+502", " 502" and "0502" are rejected rather than guessed at.
fn parse_status(text: &str) -> Option<u16> {
    if text.len() != 3 || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let status: u16 = text.parse().ok()?;
    (100..=599).contains(&status).then_some(status)
}

impl FromStr for RetryCondition {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RetryCondition::parse(text)
    }
}

/// Writes the config spelling, so a parsed condition round-trips through logs and the admin API.
impl fmt::Display for RetryCondition {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryCondition::ConnectError => formatter.write_str("connect_error"),
            RetryCondition::Timeout => formatter.write_str("timeout"),
            RetryCondition::Reset => formatter.write_str("reset"),
            RetryCondition::Status(status) => write!(formatter, "{status}"),
        }
    }
}

/// How the backoff delay is randomised. Jitter spreads out the retries of many clients that
/// failed at the same moment, so they do not hit the upstream again in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// Uniform in `[0, delay]`: the widest spread, the default.
    Full,
    /// `delay / 2` plus uniform in `[0, delay / 2]`: keeps at least half of the wait.
    Equal,
    /// Exactly `delay`.
    None,
}

impl Jitter {
    /// Parses "full" | "equal" | "none".
    pub fn parse(text: &str) -> Result<Jitter, String> {
        match text {
            "full" => Ok(Jitter::Full),
            "equal" => Ok(Jitter::Equal),
            "none" => Ok(Jitter::None),
            _ => Err(format!(
                "unknown jitter \"{text}\" (expected full, equal or none)"
            )),
        }
    }
}

impl FromStr for Jitter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Jitter::parse(text)
    }
}

impl fmt::Display for Jitter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::None => "none",
        })
    }
}

/// When and how to retry a failed attempt, per upstream and overridable per route.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retries.
    pub max_retries: u32,
    pub retry_on: Vec<RetryCondition>,
    /// Delay before the first retry; doubles for each retry after it.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub jitter: Jitter,
    /// Time limit for each attempt on its own; `None` leaves only the upstream's timeouts.
    pub per_try_timeout: Option<Duration>,
    /// Retry methods that RFC 9110 does not call idempotent (POST, PATCH, ...): the first
    /// attempt may have taken effect even though it failed.
    pub retry_non_idempotent: bool,
    /// A request body larger than this is not replayed, so that request is not retried.
    pub max_replay_body_bytes: usize,
}

/// Pingora's retry buffer holds at most this much of a request body.
pub const PINGORA_RETRY_BUFFER_BYTES: usize = 64 * 1024;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 1,
            retry_on: vec![
                RetryCondition::ConnectError,
                RetryCondition::Timeout,
                RetryCondition::Reset,
                RetryCondition::Status(502),
                RetryCondition::Status(503),
                RetryCondition::Status(504),
            ],
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            jitter: Jitter::Full,
            per_try_timeout: None,
            retry_non_idempotent: false,
            max_replay_body_bytes: PINGORA_RETRY_BUFFER_BYTES,
        }
    }
}

impl RetryPolicy {
    pub fn retries_on(&self, condition: RetryCondition) -> bool {
        self.retry_on.contains(&condition)
    }

    /// Whether a request with this method may be retried at all under this policy.
    pub fn permits_method(&self, method: &str) -> bool {
        self.retry_non_idempotent || is_idempotent_method(method)
    }

    /// Delay before retry number `retry` (1-based): `backoff_base * 2^(retry - 1)` capped at
    /// `backoff_max`, then jittered. `random` yields uniform values in `[0, 1)`; values outside
    /// that range (or NaN) are clamped rather than trusted, so a bad source cannot panic here.
    ///
    /// Retry 0 is the first attempt, which never waits, so it gets `Duration::ZERO`. Any retry
    /// number, however large, saturates at `backoff_max` without overflowing.
    pub fn backoff(&self, retry: u32, mut random: impl FnMut() -> f64) -> Duration {
        if retry == 0 {
            return Duration::ZERO;
        }
        let delay = self.exponential_delay(retry);
        match self.jitter {
            Jitter::None => delay,
            Jitter::Full => delay.mul_f64(unit_interval(random())),
            Jitter::Equal => {
                let kept = delay / 2;
                kept + (delay - kept).mul_f64(unit_interval(random()))
            }
        }
    }

    /// [`RetryPolicy::backoff`] with the thread-local `fastrand` generator, for the gateway.
    pub fn backoff_with_thread_random(&self, retry: u32) -> Duration {
        self.backoff(retry, fastrand::f64)
    }

    /// `base * 2^(retry - 1)` capped at `backoff_max`; `retry` is at least 1.
    fn exponential_delay(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1);
        let delay = match 1u32.checked_shl(exponent) {
            Some(factor) => self.backoff_base.saturating_mul(factor),
            // 2^32 and beyond: any non-zero base is already past every representable cap.
            None if self.backoff_base.is_zero() => Duration::ZERO,
            None => Duration::MAX,
        };
        delay.min(self.backoff_max)
    }
}

/// Clamps a random draw into `[0, 1]` so `Duration::mul_f64` can neither panic nor overshoot.
fn unit_interval(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    }
}

/// RFC 9110 section 9.2.2: repeating these has the same effect as sending them once.
pub fn is_idempotent_method(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Envoy's retry budget: retries in flight may be at most `budget_percent` % of the requests
/// in flight to the upstream, but at least `min_retry_concurrency`.
///
/// A fixed retry count multiplies load on an upstream that fails everything (every request
/// becomes `1 + max_retries` requests); the budget ties retries to current traffic instead.
/// Requests and retries are counted separately: the integrator holds a request guard for the
/// whole life of a downstream request and a retry guard for each retry attempt, so a retrying
/// request counts once as a request and once per concurrent retry.
///
/// Lock-free: two atomic counters, and a compare-and-swap loop so concurrent admissions can
/// never together exceed the limit.
#[derive(Debug)]
pub struct RetryBudget {
    /// Fraction of requests in flight (not percent), already validated to be non-negative.
    budget_fraction: f64,
    min_retry_concurrency: u32,
    requests_in_flight: AtomicU64,
    retries_in_flight: AtomicU64,
}

impl RetryBudget {
    /// `budget_percent` may exceed 100 (more retries than requests); a negative or NaN
    /// percent is treated as 0, leaving only `min_retry_concurrency`.
    pub fn new(budget_percent: f64, min_retry_concurrency: u32) -> Self {
        let budget_fraction = if budget_percent.is_nan() || budget_percent < 0.0 {
            0.0
        } else {
            budget_percent / 100.0
        };
        RetryBudget {
            budget_fraction,
            min_retry_concurrency,
            requests_in_flight: AtomicU64::new(0),
            retries_in_flight: AtomicU64::new(0),
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn start_request(&self) -> RequestInFlight<'_> {
        self.increment_requests();
        RequestInFlight { budget: self }
    }

    /// [`RetryBudget::start_request`] with a guard that owns a handle on the budget, for
    /// per-request contexts that must be `'static + Send + Sync`.
    pub fn start_request_owned(self: &Arc<Self>) -> OwnedRequestInFlight {
        self.increment_requests();
        OwnedRequestInFlight {
            budget: Arc::clone(self),
        }
    }

    /// Admits a retry if the budget allows, counting it until the guard drops; `None` means
    /// the upstream is over budget and the failure should go back to the client.
    pub fn try_start_retry(&self) -> Option<RetryInFlight<'_>> {
        // `then`, not `then_some`: an eagerly built guard would be dropped on refusal and
        // release a slot it never held.
        self.try_admit_retry()
            .then(|| RetryInFlight { budget: self })
    }

    /// [`RetryBudget::try_start_retry`] with an owned guard.
    pub fn try_start_retry_owned(self: &Arc<Self>) -> Option<OwnedRetryInFlight> {
        self.try_admit_retry().then(|| OwnedRetryInFlight {
            budget: Arc::clone(self),
        })
    }

    pub fn requests_in_flight(&self) -> u64 {
        self.requests_in_flight.load(Ordering::Relaxed)
    }

    pub fn retries_in_flight(&self) -> u64 {
        self.retries_in_flight.load(Ordering::Relaxed)
    }

    /// Retries that may be in flight right now:
    /// `max(min_retry_concurrency, floor(budget_percent / 100 * requests_in_flight))`.
    pub fn retry_limit(&self) -> u64 {
        // `as` saturates for huge values and maps NaN (infinite percent times zero) to 0.
        let proportional = (self.budget_fraction * self.requests_in_flight() as f64).floor() as u64;
        proportional.max(u64::from(self.min_retry_concurrency))
    }

    fn increment_requests(&self) {
        self.requests_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Admits only if `retries_in_flight + 1 <= limit` at the moment of the swap, so threads
    /// racing for the last slot cannot both take it. Relaxed ordering is enough: the counters
    /// guard no other memory, and the limit is a point-in-time reading of traffic anyway.
    fn try_admit_retry(&self) -> bool {
        let mut current = self.retries_in_flight.load(Ordering::Relaxed);
        loop {
            if current >= self.retry_limit() {
                return false;
            }
            match self.retries_in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(observed) => current = observed,
            }
        }
    }

    fn finish_request(&self) {
        self.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn finish_retry(&self) {
        self.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request counted by a [`RetryBudget`]; dropping it stops the count.
#[must_use = "the request stops counting as soon as the guard is dropped"]
#[derive(Debug)]
pub struct RequestInFlight<'budget> {
    budget: &'budget RetryBudget,
}

impl Drop for RequestInFlight<'_> {
    fn drop(&mut self) {
        self.budget.finish_request();
    }
}

/// A retry admitted by a [`RetryBudget`]; dropping it frees its slot.
#[must_use = "the retry releases its budget slot as soon as the guard is dropped"]
#[derive(Debug)]
pub struct RetryInFlight<'budget> {
    budget: &'budget RetryBudget,
}

impl Drop for RetryInFlight<'_> {
    fn drop(&mut self) {
        self.budget.finish_retry();
    }
}

/// Owned form of [`RequestInFlight`].
#[must_use = "the request stops counting as soon as the guard is dropped"]
#[derive(Debug)]
pub struct OwnedRequestInFlight {
    budget: Arc<RetryBudget>,
}

impl Drop for OwnedRequestInFlight {
    fn drop(&mut self) {
        self.budget.finish_request();
    }
}

/// Owned form of [`RetryInFlight`].
#[must_use = "the retry releases its budget slot as soon as the guard is dropped"]
#[derive(Debug)]
pub struct OwnedRetryInFlight {
    budget: Arc<RetryBudget>,
}

impl Drop for OwnedRetryInFlight {
    fn drop(&mut self) {
        self.budget.finish_retry();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            jitter,
            ..RetryPolicy::default()
        }
    }

    fn never_called() -> f64 {
        panic!("Jitter::None must not draw a random number")
    }

    #[test]
    fn backoff_grows_exponentially_then_caps() {
        let policy = policy(Jitter::None);
        let delays: Vec<u64> = (1..=6)
            .map(|retry| policy.backoff(retry, never_called).as_millis() as u64)
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 100, 100]);
    }

    #[test]
    fn backoff_for_retry_zero_is_zero() {
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::None] {
            assert_eq!(policy(jitter).backoff(0, || 0.5), Duration::ZERO);
        }
    }

    #[test]
    fn huge_retry_numbers_saturate_at_the_cap() {
        let policy = policy(Jitter::None);
        for retry in [31, 32, 33, 64, 1_000, u32::MAX - 1, u32::MAX] {
            assert_eq!(
                policy.backoff(retry, never_called),
                Duration::from_millis(100)
            );
        }
        let unbounded = RetryPolicy {
            backoff_base: Duration::MAX,
            backoff_max: Duration::MAX,
            jitter: Jitter::Full,
            ..RetryPolicy::default()
        };
        assert_eq!(
            unbounded.backoff(u32::MAX, || 0.999),
            Duration::MAX.mul_f64(0.999)
        );
        let zero_base = RetryPolicy {
            backoff_base: Duration::ZERO,
            ..policy
        };
        assert_eq!(zero_base.backoff(u32::MAX, never_called), Duration::ZERO);
    }

    #[test]
    fn full_jitter_spans_zero_to_delay() {
        let policy = policy(Jitter::Full);
        assert_eq!(policy.backoff(3, || 0.0), Duration::ZERO);
        assert_eq!(policy.backoff(3, || 0.5), Duration::from_millis(20));
        let near_top = policy.backoff(3, || 0.999_999);
        assert!(near_top < Duration::from_millis(40));
        assert!(near_top > Duration::from_micros(39_990));
    }

    #[test]
    fn equal_jitter_keeps_half_the_delay() {
        let policy = policy(Jitter::Equal);
        assert_eq!(policy.backoff(3, || 0.0), Duration::from_millis(20));
        assert_eq!(policy.backoff(3, || 0.5), Duration::from_millis(30));
        let near_top = policy.backoff(3, || 0.999_999);
        assert!(near_top < Duration::from_millis(40));
        assert!(near_top > Duration::from_micros(39_990));
    }

    #[test]
    fn jitter_applies_after_the_cap() {
        let policy = policy(Jitter::Full);
        assert_eq!(policy.backoff(20, || 0.5), Duration::from_millis(50));
    }

    #[test]
    fn out_of_range_random_values_are_clamped() {
        let policy = policy(Jitter::Full);
        assert_eq!(policy.backoff(1, || -3.0), Duration::ZERO);
        assert_eq!(policy.backoff(1, || f64::NAN), Duration::ZERO);
        assert_eq!(policy.backoff(1, || 7.0), Duration::from_millis(10));
        assert_eq!(
            policy.backoff(1, || f64::INFINITY),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn thread_random_backoff_stays_in_range() {
        let policy = policy(Jitter::Equal);
        for _ in 0..1_000 {
            let delay = policy.backoff_with_thread_random(2);
            assert!(delay >= Duration::from_millis(10) && delay <= Duration::from_millis(20));
        }
    }

    #[test]
    fn conditions_parse_and_display() {
        for (text, condition) in [
            ("connect_error", RetryCondition::ConnectError),
            ("timeout", RetryCondition::Timeout),
            ("reset", RetryCondition::Reset),
            ("100", RetryCondition::Status(100)),
            ("502", RetryCondition::Status(502)),
            ("599", RetryCondition::Status(599)),
        ] {
            assert_eq!(RetryCondition::parse(text), Ok(condition));
            assert_eq!(condition.to_string(), text);
            assert_eq!(text.parse::<RetryCondition>(), Ok(condition));
        }
    }

    #[test]
    fn bad_conditions_are_rejected_with_the_text() {
        for text in [
            "", "099", "600", "50", "5020", "+50", " 502", "502 ", "5xx", "Timeout", "reset_",
            "٥٠٢",
        ] {
            let error = RetryCondition::parse(text).expect_err(text);
            assert!(error.contains(&format!("\"{text}\"")), "{error}");
        }
    }

    #[test]
    fn jitter_parses() {
        for (text, jitter) in [
            ("full", Jitter::Full),
            ("equal", Jitter::Equal),
            ("none", Jitter::None),
        ] {
            assert_eq!(Jitter::parse(text), Ok(jitter));
            assert_eq!(jitter.to_string(), text);
        }
        assert!(Jitter::parse("Full").is_err());
        assert!("random".parse::<Jitter>().is_err());
    }

    #[test]
    fn default_policy() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.max_retries, 1);
        assert!(policy.retries_on(RetryCondition::ConnectError));
        assert!(policy.retries_on(RetryCondition::Status(503)));
        assert!(!policy.retries_on(RetryCondition::Status(500)));
        assert_eq!(policy.backoff_base, Duration::from_millis(25));
        assert_eq!(policy.backoff_max, Duration::from_millis(250));
        assert_eq!(policy.jitter, Jitter::Full);
        assert_eq!(policy.max_replay_body_bytes, 65_536);
        assert!(policy.permits_method("GET"));
        assert!(!policy.permits_method("POST"));
        let permissive = RetryPolicy {
            retry_non_idempotent: true,
            ..policy
        };
        assert!(permissive.permits_method("POST"));
    }

    #[test]
    fn budget_floor_applies_with_little_traffic() {
        let budget = RetryBudget::new(20.0, 3);
        let _request = budget.start_request();
        let retries: Vec<_> = (0..3).map_while(|_| budget.try_start_retry()).collect();
        assert_eq!(retries.len(), 3);
        assert!(budget.try_start_retry().is_none());
        assert_eq!(budget.retries_in_flight(), 3);
    }

    #[test]
    fn budget_percent_applies_with_more_traffic() {
        let budget = RetryBudget::new(20.0, 3);
        let requests: Vec<_> = (0..29).map(|_| budget.start_request()).collect();
        // floor(0.2 * 29) = 5.
        assert_eq!(budget.retry_limit(), 5);
        let retries: Vec<_> = (0..10).filter_map(|_| budget.try_start_retry()).collect();
        assert_eq!(retries.len(), 5);
        let _one_more_request = budget.start_request();
        // floor(0.2 * 30) = 6.
        let sixth = budget.try_start_retry();
        assert!(sixth.is_some());
        assert!(budget.try_start_retry().is_none());
        drop(requests);
        assert_eq!(budget.requests_in_flight(), 1);
    }

    #[test]
    fn zero_budget_and_zero_floor_admit_nothing() {
        let budget = RetryBudget::new(0.0, 0);
        let _requests: Vec<_> = (0..100).map(|_| budget.start_request()).collect();
        assert!(budget.try_start_retry().is_none());
        let nonsense = RetryBudget::new(f64::NAN, 0);
        let _request = nonsense.start_request();
        assert!(nonsense.try_start_retry().is_none());
        let infinite = RetryBudget::new(f64::INFINITY, 0);
        assert!(infinite.try_start_retry().is_none());
        let _request = infinite.start_request();
        assert!(infinite.try_start_retry().is_some());
    }

    #[test]
    fn guards_release_their_counts() {
        let budget = Arc::new(RetryBudget::new(20.0, 1));
        {
            let _request = budget.start_request();
            let _owned_request = budget.start_request_owned();
            assert_eq!(budget.requests_in_flight(), 2);
            let retry = budget.try_start_retry_owned();
            assert!(retry.is_some());
            assert!(budget.try_start_retry().is_none());
            drop(retry);
            let retry = budget.try_start_retry();
            assert!(retry.is_some());
            assert_eq!(budget.retries_in_flight(), 1);
        }
        assert_eq!(budget.requests_in_flight(), 0);
        assert_eq!(budget.retries_in_flight(), 0);
    }

    #[test]
    fn owned_guards_are_static_send_and_sync() {
        fn assert_context_safe<T: Send + Sync + 'static>(_: &T) {}
        let budget = Arc::new(RetryBudget::new(20.0, 3));
        let request = budget.start_request_owned();
        assert_context_safe(&request);
        if let Some(retry) = budget.try_start_retry_owned() {
            assert_context_safe(&retry);
        }
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_limit() {
        const THREADS: usize = 16;
        const ROUNDS: usize = 200;
        let budget = Arc::new(RetryBudget::new(20.0, 3));
        // 20 requests: limit max(3, floor(0.2 * 20)) = 4.
        let requests: Vec<_> = (0..20).map(|_| budget.start_request_owned()).collect();
        let peak = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let budget = Arc::clone(&budget);
                let peak = Arc::clone(&peak);
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    let mut admitted = 0;
                    for _ in 0..ROUNDS {
                        barrier.wait();
                        let retry = budget.try_start_retry();
                        if retry.is_some() {
                            admitted += 1;
                        }
                        peak.fetch_max(budget.retries_in_flight() as usize, Ordering::Relaxed);
                        // Every thread holds its guard until all have tried, so exactly the
                        // limit is admitted each round.
                        barrier.wait();
                        drop(retry);
                    }
                    admitted
                })
            })
            .collect();
        let admitted: usize = workers
            .into_iter()
            .map(|worker| worker.join().expect("worker thread panicked"))
            .sum();
        assert_eq!(admitted, 4 * ROUNDS);
        assert!(peak.load(Ordering::Relaxed) <= 4);
        assert_eq!(budget.retries_in_flight(), 0);
        drop(requests);
        assert_eq!(budget.requests_in_flight(), 0);
    }
}
