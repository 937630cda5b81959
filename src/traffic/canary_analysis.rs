//! Automatic canary analysis: each canary target's error rate and p99 latency over a window
//! are compared with the stable version's over the same window, and a target doing worse by
//! more than the configured margin is rolled back (its weight drops to 0).
//!
//! Requests count themselves with a few relaxed atomic adds (requests, errors, one latency
//! bucket); no lock and no clock read of its own (the logging phase passes the time it has).
//! Windows tumble: the first request after a window ends claims the judgement with a
//! compare-and-swap, reads and clears the counters and compares. The rollback takes effect at
//! once through an atomic flag; the control service then writes the weight 0 to the config
//! overlay ([`take_pending_rollbacks`]) so it survives restarts, as an admin change would.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::metrics::TargetMetrics;
use crate::config::traffic::RollbackPlan;

/// Latency buckets: four per power of two of microseconds (about 19% wide), up to ~70 min.
const LATENCY_BUCKETS: usize = 128;

/// A canary route's state that outlives reloads: counters, rollbacks and their reasons.
pub struct CanaryState {
    route: Arc<str>,
    /// Upstream names in target order, the route's own first.
    names: Vec<Arc<str>>,
    base: Instant,
    /// Milliseconds since `base` at which the current window started.
    window_started: AtomicU64,
    /// The window in milliseconds; 0 when the route has no `rollback:`.
    window_length: AtomicU64,
    plan: Mutex<Option<RollbackPlan>>,
    windows: Vec<WindowCounters>,
    rolled_back: Vec<AtomicBool>,
    metrics: Vec<TargetMetrics>,
    history: Mutex<History>,
}

struct WindowCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

impl Default for WindowCounters {
    fn default() -> Self {
        WindowCounters {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// One target's numbers over a finished window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSummary {
    pub requests: u64,
    pub errors: u64,
    pub p99: Duration,
}

impl WindowSummary {
    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate(),
            "p99_ms": self.p99.as_secs_f64() * 1000.0,
        })
    }
}

#[derive(Default)]
struct History {
    /// The last window judged: each target's numbers and the verdict.
    last_judgement: Option<serde_json::Value>,
    /// Every rollback since the targets last changed, oldest first.
    rollbacks: Vec<serde_json::Value>,
}

/// Rollbacks the control service has yet to write to the overlay: (route, upstream).
static PENDING: LazyLock<Mutex<Vec<(String, String)>>> = LazyLock::new(|| Mutex::new(Vec::new()));
static PENDING_NOTIFY: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Waits until an automatic rollback needs writing to the config.
pub async fn rollback_requested() {
    PENDING_NOTIFY.notified().await
}

/// The rollbacks not yet written to the config, as (route id, upstream) pairs.
pub fn take_pending_rollbacks() -> Vec<(String, String)> {
    PENDING
        .lock()
        .map(|mut pending| std::mem::take(&mut *pending))
        .unwrap_or_default()
}

impl CanaryState {
    pub fn new(route: &Arc<str>, names: &[Arc<str>], plan: Option<RollbackPlan>) -> CanaryState {
        let state = CanaryState {
            route: Arc::clone(route),
            names: names.to_vec(),
            base: Instant::now(),
            window_started: AtomicU64::new(0),
            window_length: AtomicU64::new(0),
            plan: Mutex::new(None),
            windows: names.iter().map(|_| WindowCounters::default()).collect(),
            rolled_back: names.iter().map(|_| AtomicBool::new(false)).collect(),
            metrics: names
                .iter()
                .map(|name| TargetMetrics::new(route, name))
                .collect(),
            history: Mutex::new(History::default()),
        };
        state.set_rollback_plan(plan);
        state
    }

    /// Takes the (possibly reloaded) `rollback:` settings; the current window restarts.
    pub fn set_rollback_plan(&self, plan: Option<RollbackPlan>) {
        let length = plan
            .as_ref()
            .map_or(0, |plan| plan.window.as_millis().max(1) as u64);
        if let Ok(mut current) = self.plan.lock() {
            *current = plan;
        }
        self.window_length.store(length, Ordering::Relaxed);
        self.window_started
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn metrics(&self, target: usize) -> &TargetMetrics {
        // `target` comes from the route's own target list, which has the same length.
        &self.metrics[target.min(self.metrics.len() - 1)]
    }

    pub fn is_rolled_back(&self, target: usize) -> bool {
        self.rolled_back
            .get(target)
            .is_some_and(|flag| flag.load(Ordering::Acquire))
    }

    /// A new weight was configured for `target`: if it was rolled back, it takes that weight.
    pub fn lift_rollback(&self, target: usize) {
        if let Some(flag) = self.rolled_back.get(target) {
            flag.store(false, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub fn roll_back_for_test(&self, target: usize) {
        self.rolled_back[target].store(true, Ordering::Relaxed);
    }

    /// Counts one answered request of `target` that took `elapsed` and ended at `now`
    /// (status 0: no answer). Returns whether this request's window judgement rolled a
    /// target back.
    pub fn record(&self, target: usize, status: u16, elapsed: Duration, now: Instant) -> bool {
        let error = status == 0 || status >= 500;
        let metrics = self.metrics(target);
        if error {
            metrics.error.inc();
        } else {
            metrics.success.inc();
        }
        metrics.duration.observe(elapsed.as_secs_f64());
        let length = self.window_length.load(Ordering::Relaxed);
        if length == 0 {
            return false;
        }
        if let Some(window) = self.windows.get(target) {
            window.requests.fetch_add(1, Ordering::Relaxed);
            if error {
                window.errors.fetch_add(1, Ordering::Relaxed);
            }
            window.latency[latency_bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
        }
        let now = now.saturating_duration_since(self.base).as_millis() as u64;
        let started = self.window_started.load(Ordering::Relaxed);
        if now < started.saturating_add(length)
            || self
                .window_started
                .compare_exchange(started, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        self.judge()
    }

    /// Reads and clears the window's counters and rolls back the targets doing worse than
    /// the stable version by more than the margins. Returns whether it rolled one back.
    fn judge(&self) -> bool {
        let Some(plan) = self.plan.lock().ok().and_then(|plan| plan.clone()) else {
            return false;
        };
        let summaries: Vec<WindowSummary> = self.windows.iter().map(take_summary).collect();
        let stable = summaries[0];
        let mut verdicts = Vec::new();
        let mut rolled_back_any = false;
        for (target, &canary) in summaries.iter().enumerate().skip(1) {
            let verdict = if self.is_rolled_back(target) {
                "rolled_back".to_string()
            } else if canary.requests < plan.min_requests || stable.requests < plan.min_requests {
                format!(
                    "not judged: each side needs {} requests in the window",
                    plan.min_requests
                )
            } else {
                match failure_reason(&plan, &stable, &canary) {
                    Some(reason) => {
                        self.roll_back(target, &reason, &stable, &canary);
                        rolled_back_any = true;
                        format!("rolled back: {reason}")
                    }
                    None => "healthy".to_string(),
                }
            };
            verdicts.push(serde_json::json!({
                "upstream": &*self.names[target],
                "window": canary.describe(),
                "verdict": verdict,
            }));
        }
        if let Ok(mut history) = self.history.lock() {
            history.last_judgement = Some(serde_json::json!({
                "at_unix": unix_seconds(),
                "stable": stable.describe(),
                "canaries": verdicts,
            }));
        }
        rolled_back_any
    }

    fn roll_back(
        &self,
        target: usize,
        reason: &str,
        stable: &WindowSummary,
        canary: &WindowSummary,
    ) {
        let upstream = &self.names[target];
        log::warn!(
            "canary rollback on route \"{}\": upstream \"{upstream}\" taken out ({reason}); \
             the stable upstream \"{}\" gets its share",
            self.route,
            self.names[0]
        );
        if let Ok(mut history) = self.history.lock() {
            history.rollbacks.push(serde_json::json!({
                "upstream": &**upstream,
                "at_unix": unix_seconds(),
                "reason": reason,
                "stable": stable.describe(),
                "canary": canary.describe(),
            }));
        }
        // Flagged after the record is kept: whoever sees the target rolled back (the admin
        // API) then finds its reason too.
        self.rolled_back[target].store(true, Ordering::Release);
        self.metrics(target).rollbacks.inc();
        if let Ok(mut pending) = PENDING.lock() {
            pending.push((self.route.to_string(), upstream.to_string()));
        }
        PENDING_NOTIFY.notify_one();
    }

    /// The analysis for the admin API: settings, the last window's verdicts, rollbacks.
    pub fn describe(&self) -> serde_json::Value {
        let plan = self.plan.lock().ok().and_then(|plan| plan.clone());
        let history = self.history.lock();
        let (last, rollbacks) = match &history {
            Ok(history) => (history.last_judgement.clone(), history.rollbacks.clone()),
            Err(_) => (None, Vec::new()),
        };
        serde_json::json!({
            "rollback": plan.map(|plan| serde_json::json!({
                "window_ms": plan.window.as_millis() as u64,
                "min_requests": plan.min_requests,
                "max_error_rate_increase": plan.max_error_rate_increase,
                "max_p99_increase_ms": plan.max_p99_increase.map(|increase| increase.as_millis() as u64),
            })),
            "last_window": last,
            "rollbacks": rollbacks,
        })
    }
}

/// Why `canary` fails against `stable` under `plan`, if it does.
fn failure_reason(
    plan: &RollbackPlan,
    stable: &WindowSummary,
    canary: &WindowSummary,
) -> Option<String> {
    if let Some(margin) = plan.max_error_rate_increase {
        let increase = canary.error_rate() - stable.error_rate();
        if increase > margin {
            return Some(format!(
                "error rate {:.1}% against the stable version's {:.1}%, more than {:.1} points \
                 worse",
                canary.error_rate() * 100.0,
                stable.error_rate() * 100.0,
                margin * 100.0
            ));
        }
    }
    if let Some(margin) = plan.max_p99_increase
        && canary.p99 > stable.p99 + margin
    {
        return Some(format!(
            "p99 latency {} ms against the stable version's {} ms, more than {} ms slower",
            canary.p99.as_millis(),
            stable.p99.as_millis(),
            margin.as_millis()
        ));
    }
    None
}

fn take_summary(window: &WindowCounters) -> WindowSummary {
    let requests = window.requests.swap(0, Ordering::Relaxed);
    let errors = window.errors.swap(0, Ordering::Relaxed);
    let counts: Vec<u64> = window
        .latency
        .iter()
        .map(|bucket| u64::from(bucket.swap(0, Ordering::Relaxed)))
        .collect();
    WindowSummary {
        requests,
        errors,
        p99: percentile(&counts, 0.99),
    }
}

/// The upper bound of the bucket holding the `quantile` of `counts`.
fn percentile(counts: &[u64], quantile: f64) -> Duration {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return Duration::ZERO;
    }
    let rank = ((total as f64) * quantile).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (index, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Duration::from_micros(bucket_upper_micros(index));
        }
    }
    Duration::from_micros(bucket_upper_micros(counts.len() - 1))
}

/// Four buckets per power of two of microseconds; 0-3 µs have one bucket each.
fn latency_bucket(elapsed: Duration) -> usize {
    let micros = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
    if micros < 4 {
        return micros as usize;
    }
    let exponent = 63 - micros.leading_zeros() as usize;
    let sub_bucket = ((micros >> (exponent - 2)) & 3) as usize;
    ((exponent - 1) * 4 + sub_bucket).min(LATENCY_BUCKETS - 1)
}

fn bucket_upper_micros(index: usize) -> u64 {
    if index < 4 {
        return index as u64 + 1;
    }
    let exponent = index / 4 + 1;
    let sub_bucket = (index % 4) as u64;
    (5 + sub_bucket) << (exponent - 2)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> RollbackPlan {
        RollbackPlan {
            window: Duration::from_secs(10),
            min_requests: 10,
            max_error_rate_increase: Some(0.1),
            max_p99_increase: Some(Duration::from_millis(100)),
        }
    }

    fn state() -> CanaryState {
        let names: Vec<Arc<str>> = vec![Arc::from("v1"), Arc::from("v2")];
        CanaryState::new(&Arc::from("analysis-unit"), &names, Some(plan()))
    }

    #[test]
    fn buckets_bound_their_latencies() {
        for micros in [0u64, 1, 3, 4, 5, 7, 8, 100, 1_000, 123_456, 10_000_000] {
            let index = latency_bucket(Duration::from_micros(micros));
            assert!(bucket_upper_micros(index) > micros, "{micros} in {index}");
            if index > 0 {
                assert!(
                    bucket_upper_micros(index - 1) <= micros,
                    "{micros} in {index}"
                );
            }
        }
    }

    #[test]
    fn the_p99_is_the_bucket_of_the_99th_percentile() {
        let mut counts = vec![0u64; LATENCY_BUCKETS];
        counts[latency_bucket(Duration::from_millis(10))] = 99;
        counts[latency_bucket(Duration::from_millis(900))] = 1;
        let p99 = percentile(&counts, 0.99);
        assert!(
            p99 >= Duration::from_millis(10) && p99 < Duration::from_millis(13),
            "{p99:?}"
        );
        counts[latency_bucket(Duration::from_millis(900))] = 2;
        assert!(percentile(&counts, 0.99) >= Duration::from_millis(900));
    }

    #[test]
    fn a_failing_canary_is_rolled_back_at_the_end_of_its_window() {
        let state = state();
        let start = state.base;
        let fast = Duration::from_millis(5);
        for _ in 0..20 {
            assert!(!state.record(0, 200, fast, start));
            assert!(!state.record(1, 503, fast, start));
        }
        assert!(!state.is_rolled_back(1), "judged only when the window ends");
        assert!(state.record(0, 200, fast, start + Duration::from_secs(11)));
        assert!(state.is_rolled_back(1));
        assert!(
            take_pending_rollbacks().contains(&("analysis-unit".to_string(), "v2".to_string()))
        );
        let described = state.describe();
        assert!(
            described["rollbacks"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("error rate"),
            "{described}"
        );
    }

    #[test]
    fn a_slow_canary_is_rolled_back_and_a_healthy_one_is_not() {
        let state = state();
        let start = state.base;
        for _ in 0..20 {
            state.record(0, 200, Duration::from_millis(5), start);
            state.record(1, 200, Duration::from_millis(60), start);
        }
        assert!(!state.record(
            0,
            200,
            Duration::from_millis(5),
            start + Duration::from_secs(11)
        ));
        assert!(
            !state.is_rolled_back(1),
            "55 ms slower is within the 100 ms margin"
        );
        for _ in 0..20 {
            state.record(
                0,
                200,
                Duration::from_millis(5),
                start + Duration::from_secs(12),
            );
            state.record(
                1,
                200,
                Duration::from_millis(400),
                start + Duration::from_secs(12),
            );
        }
        assert!(state.record(
            0,
            200,
            Duration::from_millis(5),
            start + Duration::from_secs(22)
        ));
        assert!(state.is_rolled_back(1));
    }

    #[test]
    fn too_few_requests_are_not_judged() {
        let state = state();
        let start = state.base;
        for _ in 0..5 {
            state.record(0, 200, Duration::from_millis(5), start);
            state.record(1, 500, Duration::from_millis(5), start);
        }
        assert!(!state.record(
            0,
            200,
            Duration::from_millis(5),
            start + Duration::from_secs(11)
        ));
        assert!(!state.is_rolled_back(1));
    }
}
