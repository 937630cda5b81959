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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::gcra::{Decision, Rate};

/// KEYS[1]: the key. ARGV[1]: interval in microseconds, ARGV[2]: burst.
/// Returns {allowed, remaining, reset_us, retry_after_us}.
const GCRA_SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local nxt = tat + interval
if nxt - now > tolerance then
  return {0, 0, tat - now, nxt - tolerance - now}
end
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1)
return {1, math.floor((tolerance - (nxt - now)) / interval), nxt - now, 0}
";

pub struct RedisStore {
    url: String,
    client: redis::Client,
    timeout: Duration,
    /// Made on first use, inside the runtime that serves requests (the manager spawns its
    /// connection task on the current runtime).
    manager: OnceLock<ConnectionManager>,
    script: redis::Script,
    /// Set while Redis is failing, so the outage is logged once.
    failing: AtomicBool,
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
/// A store's identity: its URL and timeout.
type StoreIdentity = (String, Duration);

static STORES: LazyLock<Mutex<HashMap<StoreIdentity, Weak<RedisStore>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl RedisStore {
    /// The store for `url`; an invalid URL is an error for the config.
    pub fn shared(url: &str, timeout: Duration) -> Result<Arc<RedisStore>, String> {
        let client =
            redis::Client::open(url).map_err(|error| format!("invalid Redis URL: {error}"))?;
        let mut stores = STORES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        stores.retain(|_, store| store.strong_count() > 0);
        let identity = (url.to_string(), timeout);
        if let Some(store) = stores.get(&identity).and_then(Weak::upgrade) {
            return Ok(store);
        }
        let store = Arc::new(RedisStore {
            url: url.to_string(),
            client,
            timeout,
            manager: OnceLock::new(),
            script: redis::Script::new(GCRA_SCRIPT),
            failing: AtomicBool::new(false),
        });
        stores.insert(identity, Arc::downgrade(&store));
        Ok(store)
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

    async fn invoke(&self, key: &str, rate: Rate) -> Result<Decision, String> {
        let mut manager = self.manager()?;
        let interval_micros = (rate.interval / 1_000).max(1);
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
