//! `rate_limit`: requests per period per key (client IP, route, consumer, header, or a
//! combination), decided exactly (GCRA, [`gcra`]) in this process or shared by a fleet
//! through Redis ([`redis`]).
//!
//! Every response of a limited route reports the client's budget (`RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset`, or Kong's `X-RateLimit-*` spellings); a request
//! over the limit gets 429 with `Retry-After` and is never forwarded.

pub mod gcra;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use pingora::proxy::Session;
use serde::Deserialize;

use self::gcra::{Decision, LocalStore, Rate};
use self::redis::RedisStore;
use super::limit_key::{KeyConfig, KeyInput, LimitKey};
use super::{RequestInput, Verdict};
use crate::config::units::DurationValue;
use crate::gateway::errors::GatewayError;
use crate::observe::metrics;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per `period`; may be fractional (0.5 per second = one every two seconds).
    pub rate: f64,
    pub period: Option<DurationValue>,
    /// The most requests at once; default: `rate` rounded up.
    pub burst: Option<u64>,
    pub key: KeyConfig,
    pub policy: StoreKind,
    pub redis: Option<RedisConfig>,
    pub on_redis_error: FailMode,
    pub headers: HeaderStyle,
    pub cleanup_interval: Option<DurationValue>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    pub timeout: Option<DurationValue>,
    pub prefix: Option<String>,
}

/// What a request gets when Redis cannot decide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Let it through (fail open): a Redis outage must not take the API down.
    #[default]
    Allow,
    /// Refuse it with 503.
    Deny,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF draft).
    #[default]
    Draft,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (Kong's).
    XRatelimit,
    Both,
    None,
}

const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
const DEFAULT_CLEANUP: Duration = Duration::from_secs(60);
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
const DEFAULT_PREFIX: &str = "loom:rl:";

enum Store {
    Local(Arc<LocalStore>),
    Redis {
        store: Arc<RedisStore>,
        /// `<prefix><policy name>:`, before the request's key.
        prefix: String,
        on_error: FailMode,
    },
}

/// The budget a response reports, kept in the request's [`super::PolicyState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until the bucket is full again (rounded up).
    pub reset_seconds: u64,
    pub style: HeaderStyle,
}

impl Quota {
    /// Writes the budget headers.
    /// Writes the budget headers. Names go to Pingora as `&'static str`, which it stores
    /// without copying; small numbers come from a table built once (see [`number`]).
    /// `limit_value` is the limit's header value when the caller has it made already.
    pub fn write(
        &self,
        limit_value: Option<&HeaderValue>,
        mut put: impl FnMut(&HeaderName, HeaderValue),
    ) {
        let names: &[[HeaderName; 3]] = match self.style {
            HeaderStyle::Draft => &DRAFT_ONLY,
            HeaderStyle::XRatelimit => &KONG_ONLY,
            HeaderStyle::Both => &DRAFT_AND_KONG,
            HeaderStyle::None => &[],
        };
        for [limit, remaining, reset] in names {
            put(
                limit,
                limit_value.map_or_else(|| number(self.limit), HeaderValue::clone),
            );
            put(remaining, number(self.remaining));
            put(reset, number(self.reset_seconds));
        }
    }
}

/// `value` as a header value; values up to 1023 are shared from a table (a clone is a
/// reference count, not an allocation).
fn number(value: u64) -> HeaderValue {
    static SMALL: std::sync::LazyLock<Box<[HeaderValue]>> =
        std::sync::LazyLock::new(|| (0..1024u64).map(HeaderValue::from).collect());
    usize::try_from(value)
        .ok()
        .and_then(|index| SMALL.get(index))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(value))
}

// Parsed once: the names go on every answer of a limited route.
const DRAFT: [HeaderName; 3] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
];
const KONG: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-ratelimit-reset"),
];
// Statics, not `&[DRAFT]` at the use: a const with a destructor is not promoted, so each
// answer would build the arrays and drop them again.
static DRAFT_ONLY: [[HeaderName; 3]; 1] = [DRAFT];
static KONG_ONLY: [[HeaderName; 3]; 1] = [KONG];
static DRAFT_AND_KONG: [[HeaderName; 3]; 2] = [DRAFT, KONG];

pub struct RateLimit {
    rate: Rate,
    /// As configured, for the admin API.
    requests_per_period: f64,
    period: Duration,
    key: LimitKey,
    store: Store,
    headers: HeaderStyle,
    /// The limit (the burst) as a header value, made once: it goes on every answer.
    limit_value: HeaderValue,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RateLimit")
            .field("rate", &self.rate)
            .field("key", &self.key)
            .finish()
    }
}

fn seconds_rounded_up(duration: Duration) -> u64 {
    duration.as_nanos().div_ceil(1_000_000_000) as u64
}

impl RateLimit {
    /// `name` is the plugin entry's name: a reload that keeps the entry unchanged keeps its
    /// counts, and Redis keys are scoped by it.
    pub fn compile(
        name: &str,
        config: RateLimitConfig,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<RateLimit> {
        if !(config.rate.is_finite() && config.rate > 0.0) {
            report("rate", "must be a number above 0".to_string());
            return None;
        }
        let period = config.period.map_or(DEFAULT_PERIOD, |period| period.0);
        if period.is_zero() {
            report("period", "must be above 0".to_string());
            return None;
        }
        let burst = config
            .burst
            .unwrap_or_else(|| (config.rate.ceil() as u64).max(1));
        if burst == 0 {
            report("burst", "must be at least 1".to_string());
            return None;
        }
        let interval = (period.as_nanos() as f64 / config.rate).round() as u64;
        if interval < 1_000 {
            report(
                "rate",
                "more than a million requests per second cannot be limited exactly; raise period"
                    .to_string(),
            );
            return None;
        }
        // TATs are nanoseconds in a u64; a bucket that takes longer than ten years to fill
        // would overflow them (and means nothing as a rate).
        const TEN_YEARS_NANOS: u128 = 10 * 365 * 24 * 3600 * 1_000_000_000;
        if u128::from(interval) * u128::from(burst) > TEN_YEARS_NANOS {
            report(
                "burst",
                "burst × period / rate must be under ten years".to_string(),
            );
            return None;
        }
        let rate = Rate { interval, burst };
        let key = LimitKey::compile(&config.key, report)?;
        let store = match config.policy {
            StoreKind::Local => {
                if config.redis.is_some() {
                    report("redis", "only used with policy: redis".to_string());
                }
                let cleanup = config
                    .cleanup_interval
                    .map_or(DEFAULT_CLEANUP, |interval| interval.0)
                    .max(Duration::from_secs(1));
                Store::Local(LocalStore::shared(
                    format!("{name}\u{0}{config:?}"),
                    cleanup,
                ))
            }
            StoreKind::Redis => {
                let Some(redis) = &config.redis else {
                    report("redis", "policy: redis needs redis: {url: ...}".to_string());
                    return None;
                };
                let timeout = redis
                    .timeout
                    .map_or(DEFAULT_REDIS_TIMEOUT, |timeout| timeout.0);
                match RedisStore::shared(&redis.url, timeout) {
                    Ok(store) => Store::Redis {
                        store,
                        prefix: format!(
                            "{}{name}:",
                            redis.prefix.as_deref().unwrap_or(DEFAULT_PREFIX)
                        ),
                        on_error: config.on_redis_error,
                    },
                    Err(message) => {
                        report("redis.url", message);
                        return None;
                    }
                }
            }
        };
        Some(RateLimit {
            limit_value: HeaderValue::from(rate.burst),
            rate,
            requests_per_period: config.rate,
            period,
            key,
            store,
            headers: config.headers,
        })
    }

    /// The verdict of a local limit, decided without waiting; `None` for a Redis one (see
    /// [`RateLimit::on_request`]).
    pub fn on_request_local(
        &self,
        session: &Session,
        input: &mut RequestInput<'_>,
    ) -> Option<Verdict> {
        let Store::Local(store) = &self.store else {
            return None;
        };
        let key_input = KeyInput {
            client_ip: input.client_ip,
            route_id: input.route_id,
            consumer: input.state.consumer.as_deref(),
            request: session.req_header(),
        };
        let decision = store.check(self.key.digest(&key_input), input.now, self.rate);
        Some(self.answer(decision, input))
    }

    pub async fn on_request(&self, session: &Session, input: &mut RequestInput<'_>) -> Verdict {
        let key_input = KeyInput {
            client_ip: input.client_ip,
            route_id: input.route_id,
            consumer: input.state.consumer.as_deref(),
            request: session.req_header(),
        };
        let decision = match &self.store {
            Store::Local(store) => store.check(self.key.digest(&key_input), input.now, self.rate),
            Store::Redis {
                store,
                prefix,
                on_error,
            } => {
                let mut key = String::with_capacity(prefix.len() + 32);
                key.push_str(prefix);
                key.push_str(&self.key.text(&key_input));
                // Boxed: the Redis call's state stays out of the future of every request on
                // every route (Pingora boxes the request filter's future).
                match Box::pin(store.check(&key, self.rate)).await {
                    Ok(decision) => decision,
                    Err(_) => {
                        metrics::count_rate_limit_redis_error(input.step_name);
                        return match on_error {
                            FailMode::Allow => Verdict::Continue,
                            FailMode::Deny => Verdict::Fail(GatewayError::new(
                                503,
                                "rate_limit_unavailable",
                                "the rate limit cannot be checked right now",
                            )),
                        };
                    }
                }
            }
        };
        self.answer(decision, input)
    }

    fn answer(&self, decision: Decision, input: &mut RequestInput<'_>) -> Verdict {
        let quota = Quota {
            limit: self.rate.burst,
            remaining: decision.remaining,
            reset_seconds: seconds_rounded_up(decision.reset),
            style: self.headers,
        };
        if decision.allowed {
            // With several limits on a route, the response reports the tightest.
            let tighter = input
                .state
                .rate_limit
                .is_none_or(|current| quota.remaining < current.remaining);
            if tighter {
                input.state.rate_limit = Some(quota);
            }
            return Verdict::Continue;
        }
        metrics::count_rate_limited(input.route_id, input.step_name);
        let retry_after = seconds_rounded_up(decision.retry_after).max(1);
        let mut error = GatewayError::new(429, "rate_limited", "too many requests")
            .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
        quota.write(Some(&self.limit_value), |name, value| {
            error.headers.push((name.clone(), value));
        });
        Verdict::Fail(error)
    }

    /// Whether the limit is kept per client address.
    pub fn keys_on_client_ip(&self) -> bool {
        self.key.uses_client_ip()
    }

    /// Whether responses carry the budget headers (`headers:` other than `none`).
    pub fn writes_headers(&self) -> bool {
        self.headers != HeaderStyle::None
    }

    /// Reports the request's budget on the response.
    pub fn on_response(&self, response: &mut http::response::Parts, quota: Option<&Quota>) {
        if let Some(quota) = quota {
            // The tightest of several limits may be another policy's.
            let own_limit = (quota.limit == self.rate.burst).then_some(&self.limit_value);
            quota.write(own_limit, |name, value| {
                response.headers.insert(name.clone(), value);
            });
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        let (store, redis_prefix, on_error) = match &self.store {
            Store::Local(_) => ("local", None, None),
            Store::Redis {
                prefix, on_error, ..
            } => (
                "redis",
                Some(prefix.clone()),
                Some(match on_error {
                    FailMode::Allow => "allow",
                    FailMode::Deny => "deny",
                }),
            ),
        };
        serde_json::json!({
            "rate": self.requests_per_period,
            "period_seconds": self.period.as_secs_f64(),
            "burst": self.rate.burst,
            "key": self.key.describe(),
            "policy": store,
            "redis_prefix": redis_prefix,
            "on_redis_error": on_error,
            "headers": format!("{:?}", self.headers).to_lowercase(),
        })
    }
}
