//! Shared limits: the same GCRA as [`super::gcra`], decided by one Lua script in Redis so
//! that every Loom instance of a fleet draws on one budget.
//!
//! The script reads Redis' own clock (`TIME`), so instances with skewed clocks still agree,
//! and sets the key to expire when its bucket is full again, so Redis keeps no key longer
//! than one refill time. Every decision is one round trip (EVALSHA); there is no local
//! budget, so the fleet never goes over the limit.
//!
//! When Redis cannot answer within `timeout` (down, slow, refusing), the caller applies the
//! policy's `on_redis_error`; the outage is logged once when it starts and once when it ends.
//! During an outage one request per second probes Redis; the others get the failure at once
//! instead of each waiting out the timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::gcra::{Decision, Rate};
use crate::policy::shared_state::Registry;

/// KEYS[1]: the key. ARGV[1]: interval in microseconds (fractional: Lua numbers are doubles,
/// exact to a fraction of a microsecond at today's clock values), ARGV[2]: burst.
/// Returns {allowed, remaining, reset_us, retry_after_us}. `replicate_commands` lets a script
/// that read `TIME` write on Redis before 5.0 (a no-op since).
const GCRA_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local nxt = tat + interval
if nxt - now > tolerance then
  return {0, 0, math.ceil(tat - now), math.ceil(nxt - tolerance - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1)
return {1, math.floor((tolerance - (nxt - now)) / interval), math.ceil(nxt - now), 0}
";

pub struct RedisStore {
    /// For logs: without user name and password.
    url: String,
    client: redis::Client,
    timeout: Duration,
    /// Made on first use, inside the runtime that serves requests (the manager spawns its
    /// connection task on the current runtime).
    manager: OnceLock<ConnectionManager>,
    script: redis::Script,
    /// Set while Redis is failing, so the outage is logged once.
    failing: AtomicBool,
    /// When the last request went to Redis during an outage (milliseconds since `created`).
    last_probe: AtomicU64,
    created: Instant,
}

/// During an outage, at most one request per this interval waits on Redis.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// `url` without its user information.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedisStore")
            .field("url", &self.url)
            .finish()
    }
}

/// Stores by URL and timeout: policies (and snapshots after a reload) share connections.
static STORES: Registry<RedisStore> = Registry::new();

impl RedisStore {
    /// The store for `url`; an invalid URL is an error for the config.
    pub fn shared(url: &str, timeout: Duration) -> Result<Arc<RedisStore>, String> {
        let client =
            redis::Client::open(url).map_err(|error| format!("invalid Redis URL: {error}"))?;
        Ok(
            STORES.shared(format!("{url}\u{0}{timeout:?}"), || RedisStore {
                url: redacted(url),
                client,
                timeout,
                manager: OnceLock::new(),
                script: redis::Script::new(GCRA_SCRIPT),
                failing: AtomicBool::new(false),
                last_probe: AtomicU64::new(0),
                created: Instant::now(),
            }),
        )
    }

    fn manager(&self) -> Result<ConnectionManager, String> {
        if let Some(manager) = self.manager.get() {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // Reconnect attempts run in the background; a request never waits for more
            // than one.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|error| error.to_string())?;
        Ok(self.manager.get_or_init(|| manager).clone())
    }

    /// Decides one request of `key`; `Err` when Redis did not answer in time.
    pub async fn check(&self, key: &str, rate: Rate) -> Result<Decision, String> {
        if self.failing.load(Ordering::Acquire) && !self.take_probe() {
            return Err("Redis is failing; waiting for the next probe".to_string());
        }
        let result = tokio::time::timeout(self.timeout, self.invoke(key, rate)).await;
        let outcome = match result {
            Ok(Ok(decision)) => Ok(decision),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match &outcome {
            Ok(_) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    log::warn!("rate limit: Redis at {} answers again", self.url);
                }
            }
            Err(error) => {
                // The next probe is a full interval after this failure.
                self.last_probe
                    .store(self.created.elapsed().as_millis() as u64, Ordering::Release);
                if !self.failing.swap(true, Ordering::AcqRel) {
                    log::warn!(
                        "rate limit: Redis at {} is failing ({error}); the policies' on_redis_error \
                         applies until it answers again",
                        self.url
                    );
                }
            }
        }
        outcome
    }

    /// Whether this request may probe Redis during an outage (one per [`PROBE_INTERVAL`]).
    fn take_probe(&self) -> bool {
        let now = self.created.elapsed().as_millis() as u64;
        let last = self.last_probe.load(Ordering::Acquire);
        now.saturating_sub(last) >= PROBE_INTERVAL.as_millis() as u64
            && self
                .last_probe
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    async fn invoke(&self, key: &str, rate: Rate) -> Result<Decision, String> {
        let mut manager = self.manager()?;
        let interval_micros = format!("{:.3}", rate.interval as f64 / 1_000.0);
        let reply: Vec<i64> = self
            .script
            .key(key)
            .arg(interval_micros)
            .arg(rate.burst)
            .invoke_async(&mut manager)
            .await
            .map_err(|error| error.to_string())?;
        let [allowed, remaining, reset, retry_after] = reply[..] else {
            return Err(format!("unexpected script reply {reply:?}"));
        };
        let micros = |value: i64| Duration::from_micros(value.max(0) as u64);
        Ok(Decision {
            allowed: allowed == 1,
            remaining: remaining.max(0) as u64,
            reset: micros(reset),
            retry_after: micros(retry_after),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            super::redacted("redis://user:secret@redis.internal:6379/0"),
            "redis://***@redis.internal:6379/0"
        );
        assert_eq!(
            super::redacted("redis://127.0.0.1/0"),
            "redis://127.0.0.1/0"
        );
    }
}
