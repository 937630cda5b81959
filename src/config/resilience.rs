//! Validation of the resilience settings (circuit breaker, retries, retry budget, passive
//! health, bulkhead) into the runtime policies of [`crate::upstream`].

use std::time::Duration;

use super::schema::{
    CircuitBreakerConfig, OutlierDetectionConfig, RetryBudgetConfig, RetryConfig, UpstreamConfig,
};
use super::validate::either_spelling;
use crate::upstream::breaker::BreakerSettings;
use crate::upstream::outlier::OutlierSettings;
use crate::upstream::retry::{Jitter, RetryCondition, RetryPolicy};

/// Pingora stops after `max_retries` (16) attempts in all.
const MAX_RETRIES: u32 = 15;
/// Pingora's retry buffer holds at most 64 KiB of request body.
const MAX_REPLAY_BODY: u64 = 64 * 1024;
const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::ZERO;
/// Go Loom's bulkhead size when `bulkhead.max_concurrent` is left out.
const GO_DEFAULT_MAX_CONCURRENT: u32 = 100;
/// Go Loom's backoff bounds, for the one a block in Go Loom's spelling leaves out.
const GO_DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
const GO_DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the breaker counts as a failure.
#[derive(Debug, Clone, PartialEq)]
pub struct FailurePolicy {
    pub conditions: Vec<RetryCondition>,
}

impl FailurePolicy {
    pub fn counts(&self, condition: RetryCondition) -> bool {
        self.conditions.contains(&condition)
    }
}

impl Default for FailurePolicy {
    /// The same conditions a retry policy retries on by default.
    fn default() -> Self {
        FailurePolicy {
            conditions: RetryPolicy::default().retry_on,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BulkheadPlan {
    pub max_concurrent_requests: Option<u32>,
    pub max_concurrent_requests_per_endpoint: Option<u32>,
    /// How long a request waits for a slot; `Duration::MAX` waits until one frees.
    pub queue_timeout: Duration,
    /// Go Loom's `queue_size`: requests that may wait at once; `None` bounds the queue only
    /// by the timeout (Loom's own keys).
    pub max_waiting: Option<u32>,
}

/// Resilience plan of one upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ResiliencePlan {
    pub breaker: Option<(BreakerSettings, FailurePolicy)>,
    pub retry: RetryPolicy,
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
    pub outlier: Option<OutlierSettings>,
    pub bulkhead: BulkheadPlan,
}

/// Collects errors as (key path relative to the upstream or route, message).
pub type Problems = Vec<(String, String)>;

pub fn upstream_plan(upstream: &UpstreamConfig, problems: &mut Problems) -> ResiliencePlan {
    let breaker = upstream
        .circuit_breaker
        .as_ref()
        .map(|config| breaker_settings(config, problems));
    // Without a `retry` block, keep the conservative default: one retry, connect errors only.
    let retry = match &upstream.retry {
        Some(config) => retry_policy(config, "retry", problems),
        None => RetryPolicy {
            max_retries: 1,
            retry_on: vec![RetryCondition::ConnectError],
            ..RetryPolicy::default()
        },
    };
    let budget = upstream.retry_budget.clone().unwrap_or_default();
    let (budget_percent, min_retry_concurrency) = budget_values(&budget, problems);
    let outlier = upstream
        .outlier_detection
        .as_ref()
        .map(|config| outlier_settings(config, problems));
    let bulkhead = bulkhead_plan(upstream, problems);
    ResiliencePlan {
        breaker,
        retry,
        budget_percent,
        min_retry_concurrency,
        outlier,
        bulkhead,
    }
}

fn bulkhead_plan(upstream: &UpstreamConfig, problems: &mut Problems) -> BulkheadPlan {
    for (field, value) in [
        ("max_concurrent_requests", upstream.max_concurrent_requests),
        (
            "max_concurrent_requests_per_endpoint",
            upstream.max_concurrent_requests_per_endpoint,
        ),
    ] {
        if value == Some(0) {
            problems.push((field.to_string(), "must be at least 1".to_string()));
        }
    }
    let per_endpoint = upstream.max_concurrent_requests_per_endpoint;
    let Some(section) = &upstream.bulkhead else {
        return BulkheadPlan {
            max_concurrent_requests: upstream.max_concurrent_requests,
            max_concurrent_requests_per_endpoint: per_endpoint,
            queue_timeout: upstream
                .queue_timeout
                .map_or(DEFAULT_QUEUE_TIMEOUT, |value| value.0),
            max_waiting: None,
        };
    };
    for (field, given) in [
        (
            "max_concurrent_requests",
            upstream.max_concurrent_requests.is_some(),
        ),
        ("queue_timeout", upstream.queue_timeout.is_some()),
    ] {
        if given {
            problems.push((
                "bulkhead".to_string(),
                format!("give either {field} or bulkhead (Go Loom's spelling), not both"),
            ));
        }
    }
    if !section.enabled {
        return BulkheadPlan {
            max_concurrent_requests: None,
            max_concurrent_requests_per_endpoint: per_endpoint,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            max_waiting: None,
        };
    }
    // Go Loom's zero values mean its defaults: 100 in flight, no queue, no time limit.
    let queue_size = section.queue_size.unwrap_or(0);
    if queue_size == 0 && section.timeout.is_some_and(|timeout| !timeout.0.is_zero()) {
        problems.push((
            "bulkhead.timeout".to_string(),
            "bounds the wait in the queue, and queue_size is 0 (nothing waits): \
             give a queue_size or remove the timeout"
                .to_string(),
        ));
    }
    let queue_timeout = if queue_size == 0 {
        Duration::ZERO
    } else {
        section
            .timeout
            .map(|value| value.0)
            .filter(|timeout| !timeout.is_zero())
            .unwrap_or(Duration::MAX)
    };
    BulkheadPlan {
        max_concurrent_requests: Some(
            section
                .max_concurrent
                .filter(|limit| *limit > 0)
                .unwrap_or(GO_DEFAULT_MAX_CONCURRENT),
        ),
        max_concurrent_requests_per_endpoint: per_endpoint,
        queue_timeout,
        max_waiting: Some(queue_size),
    }
}

fn conditions(texts: &[String], key: &str, problems: &mut Problems) -> Vec<RetryCondition> {
    texts
        .iter()
        .enumerate()
        .filter_map(|(index, text)| match RetryCondition::parse(text) {
            Ok(condition) => Some(condition),
            Err(message) => {
                problems.push((format!("{key}[{index}]"), message));
                None
            }
        })
        .collect()
}

fn breaker_settings(
    config: &CircuitBreakerConfig,
    problems: &mut Problems,
) -> (BreakerSettings, FailurePolicy) {
    let defaults = BreakerSettings::default();
    let settings = BreakerSettings {
        failure_threshold: config
            .failure_threshold
            .unwrap_or(defaults.failure_threshold),
        failure_ratio: config.failure_ratio.or(defaults.failure_ratio),
        min_requests: config.min_requests.unwrap_or(defaults.min_requests),
        window: config.window.map_or(defaults.window, |value| value.0),
        open_timeout: config
            .timeout
            .map_or(defaults.open_timeout, |value| value.0),
        half_open_max_probes: config
            .half_open_max_requests
            .unwrap_or(defaults.half_open_max_probes),
        success_threshold: config
            .success_threshold
            .unwrap_or(defaults.success_threshold),
    };
    let prefix = "circuit_breaker";
    if let Some(ratio) = settings.failure_ratio
        && !(ratio > 0.0 && ratio <= 1.0)
    {
        problems.push((
            format!("{prefix}.failure_ratio"),
            "must be greater than 0 and at most 1".to_string(),
        ));
    }
    if settings.failure_threshold == 0 && settings.failure_ratio.is_none() {
        problems.push((
            format!("{prefix}.failure_threshold"),
            "0 disables the consecutive-failure trigger; set failure_ratio too or the breaker never opens".to_string(),
        ));
    }
    if settings.success_threshold == 0 {
        problems.push((
            format!("{prefix}.success_threshold"),
            "must be at least 1".to_string(),
        ));
    }
    if settings.half_open_max_probes == 0 {
        problems.push((
            format!("{prefix}.half_open_max_requests"),
            "must be at least 1".to_string(),
        ));
    }
    if settings.open_timeout.is_zero() {
        problems.push((
            format!("{prefix}.timeout"),
            "must be greater than zero".to_string(),
        ));
    }
    if settings.window.is_zero() {
        problems.push((
            format!("{prefix}.window"),
            "must be greater than zero".to_string(),
        ));
    }
    let failure = match &config.failure_on {
        Some(texts) => FailurePolicy {
            conditions: conditions(texts, &format!("{prefix}.failure_on"), problems),
        },
        None => FailurePolicy::default(),
    };
    (settings, failure)
}

/// Builds a retry policy; `key` is where the block sits (`retry`), for error paths.
pub fn retry_policy(config: &RetryConfig, key: &str, problems: &mut Problems) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let max_retries = config.max_retries.unwrap_or(defaults.max_retries);
    if max_retries > MAX_RETRIES {
        problems.push((
            format!("{key}.max_retries"),
            format!("must be at most {MAX_RETRIES}"),
        ));
    }
    let retry_on = match (&config.retry_on, &config.retryable_codes) {
        (Some(_), Some(_)) => {
            problems.push((
                format!("{key}.retryable_codes"),
                "give either retry_on or retryable_codes (Go Loom's spelling), not both"
                    .to_string(),
            ));
            defaults.retry_on.clone()
        }
        (Some(texts), None) => conditions(texts, &format!("{key}.retry_on"), problems),
        (None, Some(codes)) => {
            go_retry_conditions(codes, &format!("{key}.retryable_codes"), problems)
        }
        (None, None) => defaults.retry_on.clone(),
    };
    let backoff = config.backoff.clone().unwrap_or_default();
    let jitter = match backoff.jitter.as_deref() {
        None => defaults.jitter,
        Some("full") => Jitter::Full,
        Some("equal") => Jitter::Equal,
        Some("none") => Jitter::None,
        Some(other) => {
            problems.push((
                format!("{key}.backoff.jitter"),
                format!("\"{other}\" is not one of full, equal, none"),
            ));
            defaults.jitter
        }
    };
    // Go Loom's defaults for a bound left out go with its spelling: `backoff_base: 1s` alone
    // would otherwise meet Loom's 250ms maximum and be refused.
    let go_spelling = config.backoff_base.is_some() || config.backoff_max.is_some();
    let (default_base, default_max) = if go_spelling {
        (GO_DEFAULT_BACKOFF_BASE, GO_DEFAULT_BACKOFF_MAX)
    } else {
        (defaults.backoff_base, defaults.backoff_max)
    };
    let base = one_spelling(
        problems,
        key,
        ("backoff.base", backoff.base),
        ("backoff_base", config.backoff_base),
    );
    let max = one_spelling(
        problems,
        key,
        ("backoff.max", backoff.max),
        ("backoff_max", config.backoff_max),
    );
    let backoff_base = base.map_or(default_base, |value| value.0);
    let backoff_max = max.map_or(default_max, |value| value.0);
    if backoff_max < backoff_base {
        let (max_key, base_key) = if go_spelling {
            ("backoff_max", "backoff_base")
        } else {
            ("backoff.max", "backoff.base")
        };
        problems.push((
            format!("{key}.{max_key}"),
            format!("must not be smaller than {base_key}"),
        ));
    }
    let max_replay_body = config
        .max_replay_body
        .map_or(defaults.max_replay_body_bytes as u64, |value| value.0);
    if max_replay_body > MAX_REPLAY_BODY {
        problems.push((
            format!("{key}.max_replay_body"),
            "must be at most 64KB (Pingora's retry buffer)".to_string(),
        ));
    }
    if config
        .per_try_timeout
        .is_some_and(|value| value.0.is_zero())
    {
        problems.push((
            format!("{key}.per_try_timeout"),
            "must be greater than zero".to_string(),
        ));
    }
    RetryPolicy {
        max_retries: max_retries.min(MAX_RETRIES),
        retry_on,
        backoff_base,
        backoff_max: backoff_max.max(backoff_base),
        jitter,
        per_try_timeout: config.per_try_timeout.map(|value| value.0),
        retry_non_idempotent: config
            .retry_non_idempotent
            .unwrap_or(defaults.retry_non_idempotent),
        max_replay_body_bytes: max_replay_body.min(MAX_REPLAY_BODY) as usize,
    }
}

/// A setting that Loom and Go Loom spell differently (`(name, value)` each): the value given,
/// or a problem at the Go Loom key when both are.
fn one_spelling<T>(
    problems: &mut Problems,
    key: &str,
    loom: (&str, Option<T>),
    go: (&str, Option<T>),
) -> Option<T> {
    either_spelling(loom.0, loom.1, go.0, go.1).unwrap_or_else(|message| {
        problems.push((format!("{key}.{}", go.0), message));
        None
    })
}

/// Go Loom's `retryable_codes` as retry conditions. Go Loom retries every attempt whose round
/// trip failed (its HTTP transport returns an error for a refused connection, a timeout and a
/// reset alike) and every answer with a listed status, so the statuses come on top of Loom's
/// three connection-failure conditions. An empty list is Go Loom's default, 502, 503 and 504:
/// with the connection failures, that is Loom's default policy.
fn go_retry_conditions(codes: &[u16], key: &str, problems: &mut Problems) -> Vec<RetryCondition> {
    if codes.is_empty() {
        return RetryPolicy::default().retry_on;
    }
    let mut conditions = vec![
        RetryCondition::ConnectError,
        RetryCondition::Timeout,
        RetryCondition::Reset,
    ];
    for (index, code) in codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            problems.push((
                format!("{key}[{index}]"),
                format!("{code} is not an HTTP status (100 to 599)"),
            ));
            continue;
        }
        let condition = RetryCondition::Status(*code);
        if !conditions.contains(&condition) {
            conditions.push(condition);
        }
    }
    conditions
}

fn budget_values(config: &RetryBudgetConfig, problems: &mut Problems) -> (f64, u32) {
    let percent = config.budget_percent.unwrap_or(DEFAULT_BUDGET_PERCENT);
    if !(0.0..=100.0).contains(&percent) {
        problems.push((
            "retry_budget.budget_percent".to_string(),
            "must be between 0 and 100".to_string(),
        ));
    }
    (
        percent.clamp(0.0, 100.0),
        config
            .min_retry_concurrency
            .unwrap_or(DEFAULT_MIN_RETRY_CONCURRENCY),
    )
}

fn outlier_settings(config: &OutlierDetectionConfig, problems: &mut Problems) -> OutlierSettings {
    let defaults = OutlierSettings::default();
    let base_ejection_time = config
        .base_ejection_time
        .map_or(defaults.base_ejection_time, |value| value.0);
    let settings = OutlierSettings {
        consecutive_failures: config
            .consecutive_failures
            .unwrap_or(defaults.consecutive_failures),
        base_ejection_time,
        // An unset maximum never undercuts a base that was set above the default maximum.
        max_ejection_time: config.max_ejection_time.map_or(
            defaults.max_ejection_time.max(base_ejection_time),
            |value| value.0,
        ),
        max_ejection_percent: config
            .max_ejection_percent
            .unwrap_or(defaults.max_ejection_percent),
    };
    if settings.max_ejection_percent > 100 {
        problems.push((
            "outlier_detection.max_ejection_percent".to_string(),
            "must be at most 100".to_string(),
        ));
    }
    if settings.base_ejection_time.is_zero() {
        problems.push((
            "outlier_detection.base_ejection_time".to_string(),
            "must be greater than zero".to_string(),
        ));
    }
    if settings.max_ejection_time < settings.base_ejection_time {
        problems.push((
            "outlier_detection.max_ejection_time".to_string(),
            "must not be smaller than base_ejection_time".to_string(),
        ));
    }
    settings
}
