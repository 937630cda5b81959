//! Passive health (outlier detection): an endpoint that fails several real requests in a row is
//! ejected from selection for a while, before the active health check (if any) notices.
//!
//! One [`OutlierDetector`] per upstream, with a slot per endpoint in config order. The request
//! path (`record`, `is_ejected`) touches only atomics. Time is passed in by the caller, so the
//! detector never reads the clock itself and tests control it fully.
//!
//! Differences from Envoy, chosen for simplicity:
//! - Only consecutive failures eject (no success-rate or failure-percentage detection).
//! - The ejection count never decays: Envoy lowers it for every interval an endpoint stays
//!   healthy; here an endpoint that was ejected often keeps its longer ejections until the
//!   upstream is rebuilt (a config change) or restarts.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSettings {
    /// Failures in a row that eject an endpoint; 0 disables ejection.
    pub consecutive_failures: u32,
    /// First ejection's length; each later ejection of the same endpoint adds another.
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// Share of the upstream's endpoints that may be ejected at once (values above 100 mean
    /// 100). See [`OutlierDetector::ejection_limit`] for how it rounds.
    pub max_ejection_percent: u8,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// An ejection that [`OutlierDetector::record`] just made, for logging and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub endpoint: usize,
    pub duration: Duration,
    /// Times this endpoint has been ejected, this ejection included.
    pub count: u32,
}

/// Per-endpoint state, all atomics so the request path never waits on another request.
#[derive(Debug, Default)]
struct EndpointState {
    consecutive_failures: AtomicU32,
    ejection_count: AtomicU32,
    /// Nanoseconds after the detector's origin at which the current ejection ends. Any value
    /// not after "now" (0 included) means not ejected, so expiry needs no write.
    ejected_until: AtomicU64,
}

impl EndpointState {
    fn is_ejected_at(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct OutlierDetector {
    settings: OutlierSettings,
    /// Instants are opaque; storing offsets from this origin lets the deadline live in an atomic.
    origin: Instant,
    endpoints: Box<[EndpointState]>,
    ejection_limit: usize,
    /// Taken (try-only, never waited on) while deciding an ejection, so two endpoints reaching
    /// the threshold together cannot both see room under `ejection_limit` and both take it.
    /// The loser keeps its failure count and tries again on its next failure.
    deciding: AtomicBool,
}

impl OutlierDetector {
    /// A detector for `endpoint_count` endpoints; its clock origin is the moment of creation.
    pub fn new(endpoint_count: usize, settings: OutlierSettings) -> Self {
        let ejection_limit = ejection_limit(endpoint_count, settings.max_ejection_percent);
        OutlierDetector {
            settings,
            origin: Instant::now(),
            endpoints: (0..endpoint_count)
                .map(|_| EndpointState::default())
                .collect(),
            ejection_limit,
            deciding: AtomicBool::new(false),
        }
    }

    pub fn settings(&self) -> &OutlierSettings {
        &self.settings
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Endpoints that may be ejected at the same time: `floor(count * percent / 100)`, raised
    /// to 1 when the percent is above 0 (as Envoy does, so small upstreams can eject at all),
    /// but never every endpoint unless the percent is 100: the last endpoint in rotation stays,
    /// since sending traffic to a failing endpoint beats failing every request outright.
    pub fn ejection_limit(&self) -> usize {
        self.ejection_limit
    }

    /// Records a real-traffic outcome for `endpoint`; returns the ejection this failure caused.
    ///
    /// `consecutive_failures` failures in a row eject the endpoint for `base_ejection_time`
    /// times the number of its ejections so far (this one included), capped at
    /// `max_ejection_time`, unless the upstream is already at its [`ejection_limit`]. A success
    /// resets the run. Outcomes of requests that finish while the endpoint is ejected (sent
    /// before the ejection) do not count towards the next ejection. An ejection starts a new
    /// run of failures from zero. Out-of-range endpoints are ignored.
    ///
    /// [`ejection_limit`]: OutlierDetector::ejection_limit
    pub fn record(&self, endpoint: usize, success: bool, now: Instant) -> Option<Ejection> {
        let state = self.endpoints.get(endpoint)?;
        if success {
            // Skipping the store when already 0 keeps healthy traffic from bouncing the
            // cache line between cores.
            if state.consecutive_failures.load(Ordering::Relaxed) != 0 {
                state.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return None;
        }
        if !self.ejection_enabled() {
            return None;
        }
        let now = self.offset_nanos(now);
        if state.is_ejected_at(now) {
            return None;
        }
        let failures = increment_saturating(&state.consecutive_failures);
        if failures < self.settings.consecutive_failures {
            return None;
        }
        let _decision = DecisionGuard::try_take(&self.deciding)?;
        self.eject_if_allowed(endpoint, state, now)
    }

    /// Lock-free; false for out-of-range endpoints.
    pub fn is_ejected(&self, endpoint: usize, now: Instant) -> bool {
        self.endpoints
            .get(endpoint)
            .is_some_and(|state| state.is_ejected_at(self.offset_nanos(now)))
    }

    /// Remaining ejection time, if ejected.
    pub fn ejected_for(&self, endpoint: usize, now: Instant) -> Option<Duration> {
        let state = self.endpoints.get(endpoint)?;
        let until = state.ejected_until.load(Ordering::Relaxed);
        until
            .checked_sub(self.offset_nanos(now))
            .filter(|remaining| *remaining > 0)
            .map(Duration::from_nanos)
    }

    /// Times `endpoint` has been ejected since the detector was built; 0 when out of range.
    pub fn ejection_count(&self, endpoint: usize) -> u32 {
        self.endpoints
            .get(endpoint)
            .map_or(0, |state| state.ejection_count.load(Ordering::Relaxed))
    }

    /// Current run of failures for `endpoint`; 0 when out of range.
    pub fn consecutive_failures(&self, endpoint: usize) -> u32 {
        self.endpoints.get(endpoint).map_or(0, |state| {
            state.consecutive_failures.load(Ordering::Relaxed)
        })
    }

    pub fn ejected_endpoints(&self, now: Instant) -> usize {
        self.ejected_endpoints_at(self.offset_nanos(now))
    }

    /// Admin action: returns `endpoint` to rotation now and clears its run of failures. The
    /// ejection count is kept, so an endpoint that fails again is ejected for longer.
    pub fn reset(&self, endpoint: usize) {
        if let Some(state) = self.endpoints.get(endpoint) {
            state.ejected_until.store(0, Ordering::Relaxed);
            state.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// False when settings make every ejection impossible or zero-length.
    fn ejection_enabled(&self) -> bool {
        self.settings.consecutive_failures > 0
            && self.ejection_limit > 0
            && !self
                .settings
                .base_ejection_time
                .min(self.settings.max_ejection_time)
                .is_zero()
    }

    /// Runs only while holding `deciding`, so the count of ejected endpoints cannot change
    /// underneath it except downwards (expiry, admin reset), which only makes it conservative.
    fn eject_if_allowed(
        &self,
        endpoint: usize,
        state: &EndpointState,
        now: u64,
    ) -> Option<Ejection> {
        // Re-checked: a success or another ejection may have landed since the caller looked.
        if state.is_ejected_at(now)
            || state.consecutive_failures.load(Ordering::Relaxed)
                < self.settings.consecutive_failures
            || self.ejected_endpoints_at(now) >= self.ejection_limit
        {
            return None;
        }
        let count = state
            .ejection_count
            .load(Ordering::Relaxed)
            .saturating_add(1);
        let duration = self
            .settings
            .base_ejection_time
            .saturating_mul(count)
            .min(self.settings.max_ejection_time);
        let until = now.saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        state.ejection_count.store(count, Ordering::Relaxed);
        state.consecutive_failures.store(0, Ordering::Relaxed);
        state.ejected_until.store(until, Ordering::Relaxed);
        Some(Ejection {
            endpoint,
            duration,
            count,
        })
    }

    fn ejected_endpoints_at(&self, now: u64) -> usize {
        self.endpoints
            .iter()
            .filter(|state| state.is_ejected_at(now))
            .count()
    }

    /// Instants before the origin count as the origin; 584 years after it saturate.
    fn offset_nanos(&self, now: Instant) -> u64 {
        let offset = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(offset).unwrap_or(u64::MAX)
    }
}

/// See [`OutlierDetector::ejection_limit`].
fn ejection_limit(endpoint_count: usize, max_ejection_percent: u8) -> usize {
    let percent = usize::from(max_ejection_percent.min(100));
    match percent {
        0 => 0,
        100 => endpoint_count,
        _ => (endpoint_count.saturating_mul(percent) / 100)
            .max(1)
            .min(endpoint_count.saturating_sub(1)),
    }
}

/// Adds one without wrapping, so an endpoint failing for ever never looks fresh again.
fn increment_saturating(counter: &AtomicU32) -> u32 {
    let previous = counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |value| {
            Some(value.saturating_add(1))
        })
        .unwrap_or_else(|value| value);
    previous.saturating_add(1)
}

/// Holds the `deciding` flag; acquire ordering pairs with the release on drop so each decision
/// sees the ejections made by the one before it.
struct DecisionGuard<'flag> {
    flag: &'flag AtomicBool,
}

impl<'flag> DecisionGuard<'flag> {
    fn try_take(flag: &'flag AtomicBool) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| DecisionGuard { flag })
    }
}

impl Drop for DecisionGuard<'_> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Barrier};
    use std::thread;

    fn settings(consecutive_failures: u32, max_ejection_percent: u8) -> OutlierSettings {
        OutlierSettings {
            consecutive_failures,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(35),
            max_ejection_percent,
        }
    }

    /// Records `times` failures and returns the last outcome.
    fn fail(
        detector: &OutlierDetector,
        endpoint: usize,
        times: u32,
        now: Instant,
    ) -> Option<Ejection> {
        (0..times)
            .map(|_| detector.record(endpoint, false, now))
            .last()
            .flatten()
    }

    #[test]
    fn ejects_at_the_threshold() {
        let detector = OutlierDetector::new(4, settings(3, 50));
        let now = Instant::now();
        assert_eq!(detector.record(0, false, now), None);
        assert_eq!(detector.record(0, false, now), None);
        assert!(!detector.is_ejected(0, now));
        assert_eq!(
            detector.record(0, false, now),
            Some(Ejection {
                endpoint: 0,
                duration: Duration::from_secs(10),
                count: 1,
            })
        );
        assert!(detector.is_ejected(0, now));
        assert!(!detector.is_ejected(1, now));
        assert_eq!(detector.ejected_endpoints(now), 1);
        assert_eq!(detector.ejection_count(0), 1);
        assert_eq!(detector.consecutive_failures(0), 0);
    }

    #[test]
    fn ejection_time_grows_then_caps() {
        let detector = OutlierDetector::new(4, settings(2, 50));
        let mut now = Instant::now();
        let mut durations = Vec::new();
        for _ in 0..5 {
            let ejection = fail(&detector, 1, 2, now).expect("threshold reached");
            durations.push(ejection.duration.as_secs());
            now += ejection.duration;
            assert!(!detector.is_ejected(1, now));
        }
        assert_eq!(durations, [10, 20, 30, 35, 35]);
        assert_eq!(detector.ejection_count(1), 5);
    }

    #[test]
    fn huge_ejection_counts_do_not_overflow() {
        let detector = OutlierDetector::new(
            2,
            OutlierSettings {
                consecutive_failures: 1,
                base_ejection_time: Duration::MAX,
                max_ejection_time: Duration::MAX,
                max_ejection_percent: 100,
            },
        );
        let now = Instant::now();
        let ejection = detector.record(0, false, now).expect("threshold reached");
        assert_eq!(ejection.duration, Duration::MAX);
        assert!(detector.is_ejected(0, now + Duration::from_secs(1_000_000_000)));
        detector.endpoints[0]
            .ejection_count
            .store(u32::MAX, Ordering::Relaxed);
        detector.reset(0);
        let ejection = detector.record(0, false, now).expect("threshold reached");
        assert_eq!(ejection.count, u32::MAX);
    }

    #[test]
    fn max_ejection_percent_is_respected() {
        let detector = OutlierDetector::new(4, settings(1, 50));
        let now = Instant::now();
        assert!(detector.record(0, false, now).is_some());
        assert!(detector.record(1, false, now).is_some());
        assert_eq!(detector.record(2, false, now), None);
        assert_eq!(detector.record(3, false, now), None);
        assert_eq!(detector.ejected_endpoints(now), 2);
        // Once a slot frees up, the next failure of an endpoint still over the threshold ejects.
        let later = now + Duration::from_secs(10);
        assert_eq!(detector.ejected_endpoints(later), 0);
        assert!(detector.record(2, false, later).is_some());
    }

    #[test]
    fn ejection_limit_rounding() {
        for (endpoints, percent, limit) in [
            (0, 50, 0),
            (1, 50, 0),
            (1, 99, 0),
            (1, 100, 1),
            (2, 50, 1),
            (2, 10, 1),
            (3, 10, 1),
            (3, 99, 2),
            (10, 50, 5),
            (10, 0, 0),
            (10, 100, 10),
            (10, 255, 10),
        ] {
            let detector = OutlierDetector::new(endpoints, settings(1, percent));
            assert_eq!(
                detector.ejection_limit(),
                limit,
                "{endpoints} endpoints at {percent}%"
            );
        }
    }

    #[test]
    fn a_single_endpoint_is_never_ejected_below_one_hundred_percent() {
        let detector = OutlierDetector::new(1, settings(1, 99));
        let now = Instant::now();
        assert_eq!(fail(&detector, 0, 10, now), None);
        assert!(!detector.is_ejected(0, now));
    }

    #[test]
    fn success_resets_the_run() {
        let detector = OutlierDetector::new(4, settings(3, 50));
        let now = Instant::now();
        assert_eq!(fail(&detector, 0, 2, now), None);
        assert_eq!(detector.record(0, true, now), None);
        assert_eq!(detector.consecutive_failures(0), 0);
        assert_eq!(fail(&detector, 0, 2, now), None);
        assert!(!detector.is_ejected(0, now));
        assert!(detector.record(0, false, now).is_some());
    }

    #[test]
    fn ejection_expires() {
        let detector = OutlierDetector::new(4, settings(2, 50));
        let now = Instant::now();
        fail(&detector, 3, 2, now).expect("threshold reached");
        assert_eq!(detector.ejected_for(3, now), Some(Duration::from_secs(10)));
        let midway = now + Duration::from_secs(4);
        assert_eq!(
            detector.ejected_for(3, midway),
            Some(Duration::from_secs(6))
        );
        assert!(detector.is_ejected(3, midway));
        let expiry = now + Duration::from_secs(10);
        assert!(!detector.is_ejected(3, expiry));
        assert_eq!(detector.ejected_for(3, expiry), None);
        assert_eq!(detector.ejected_endpoints(expiry), 0);
        // The run restarted at the ejection, so one failure after it is not enough.
        assert_eq!(detector.record(3, false, expiry), None);
        assert!(!detector.is_ejected(3, expiry));
    }

    #[test]
    fn failures_while_ejected_are_ignored() {
        let detector = OutlierDetector::new(4, settings(2, 50));
        let now = Instant::now();
        fail(&detector, 0, 2, now).expect("threshold reached");
        assert_eq!(fail(&detector, 0, 10, now), None);
        assert_eq!(detector.consecutive_failures(0), 0);
        assert_eq!(detector.ejection_count(0), 1);
    }

    #[test]
    fn reset_un_ejects_but_keeps_the_count() {
        let detector = OutlierDetector::new(4, settings(2, 50));
        let now = Instant::now();
        fail(&detector, 2, 2, now).expect("threshold reached");
        detector.reset(2);
        assert!(!detector.is_ejected(2, now));
        assert_eq!(detector.ejected_for(2, now), None);
        assert_eq!(detector.ejection_count(2), 1);
        let ejection = fail(&detector, 2, 2, now).expect("threshold reached");
        assert_eq!(ejection.duration, Duration::from_secs(20));
    }

    #[test]
    fn disabled_settings_never_eject() {
        let now = Instant::now();
        let off = OutlierDetector::new(4, settings(0, 50));
        assert_eq!(fail(&off, 0, 100, now), None);
        let zero_time = OutlierDetector::new(
            4,
            OutlierSettings {
                base_ejection_time: Duration::ZERO,
                ..settings(1, 50)
            },
        );
        assert_eq!(fail(&zero_time, 0, 100, now), None);
        let zero_percent = OutlierDetector::new(4, settings(1, 0));
        assert_eq!(fail(&zero_percent, 0, 100, now), None);
        assert_eq!(zero_percent.ejected_endpoints(now), 0);
    }

    #[test]
    fn out_of_range_endpoints_are_ignored() {
        let detector = OutlierDetector::new(2, settings(1, 100));
        let now = Instant::now();
        assert_eq!(detector.record(2, false, now), None);
        assert_eq!(detector.record(usize::MAX, true, now), None);
        assert!(!detector.is_ejected(2, now));
        assert_eq!(detector.ejected_for(2, now), None);
        assert_eq!(detector.ejection_count(2), 0);
        assert_eq!(detector.consecutive_failures(2), 0);
        detector.reset(usize::MAX);
        let empty = OutlierDetector::new(0, OutlierSettings::default());
        assert_eq!(empty.record(0, false, now), None);
        assert_eq!(empty.ejected_endpoints(now), 0);
    }

    #[test]
    fn instants_before_the_origin_do_not_panic() {
        let before = Instant::now();
        let detector = OutlierDetector::new(2, settings(1, 100));
        let ejection = detector
            .record(0, false, before)
            .expect("threshold reached");
        assert_eq!(ejection.duration, Duration::from_secs(10));
        assert!(detector.is_ejected(0, before));
    }

    #[test]
    fn concurrent_failures_eject_an_endpoint_once() {
        const THREADS: usize = 8;
        let detector = Arc::new(OutlierDetector::new(2, settings(5, 100)));
        let now = Instant::now();
        let barrier = Arc::new(Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let detector = Arc::clone(&detector);
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    barrier.wait();
                    (0..1_000)
                        .filter(|_| detector.record(0, false, now).is_some())
                        .count()
                })
            })
            .collect();
        let ejections: usize = workers
            .into_iter()
            .map(|worker| worker.join().expect("worker thread panicked"))
            .sum();
        assert_eq!(ejections, 1);
        assert_eq!(detector.ejection_count(0), 1);
        assert!(detector.is_ejected(0, now));
    }

    #[test]
    fn concurrent_failures_respect_the_ejection_limit() {
        const THREADS: usize = 8;
        const ENDPOINTS: usize = 8;
        let detector = Arc::new(OutlierDetector::new(ENDPOINTS, settings(3, 50)));
        let now = Instant::now();
        let peak = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|thread_index| {
                let detector = Arc::clone(&detector);
                let peak = Arc::clone(&peak);
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    barrier.wait();
                    let mut ejections = 0;
                    for round in 0..2_000 {
                        let endpoint = (thread_index + round) % ENDPOINTS;
                        // Occasional successes interleave with the failures, as in real traffic.
                        let success = round % 7 == 0;
                        if detector.record(endpoint, success, now).is_some() {
                            ejections += 1;
                        }
                        peak.fetch_max(detector.ejected_endpoints(now), Ordering::Relaxed);
                    }
                    ejections
                })
            })
            .collect();
        let ejections: usize = workers
            .into_iter()
            .map(|worker| worker.join().expect("worker thread panicked"))
            .sum();
        assert!(peak.load(Ordering::Relaxed) <= 4);
        assert!((1..=4).contains(&ejections), "{ejections} ejections");
        assert_eq!(detector.ejected_endpoints(now), ejections);
    }
}
