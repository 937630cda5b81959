//! `concurrency_limit`: at most `max_concurrent` requests in flight per key (same keys as
//! `rate_limit`); one more gets 429 at once rather than queueing.
//!
//! The count is exact: each key's counter is changed under its map shard's lock, and a key
//! is removed when its last request ends, so the table holds only keys with requests in
//! flight. The slot is a guard kept in the request's policy state, released when the request
//! ends however it ends.

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use pingora::proxy::Session;
use serde::Deserialize;

use super::keyed_hash::DigestMap;
use super::limit_key::{KeyConfig, KeyInput, LimitKey};
use super::shared_state::Registry;
use super::{RequestInput, Verdict};
use crate::gateway::errors::GatewayError;
use crate::observe::metrics;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConcurrencyLimitConfig {
    pub max_concurrent: u32,
    pub key: KeyConfig,
}

#[derive(Debug)]
pub struct ConcurrencyLimit {
    max_concurrent: u32,
    key: LimitKey,
    in_flight: Arc<DigestMap<u32>>,
}

/// One request's place in its key's count.
#[derive(Debug)]
pub struct ConcurrencySlot {
    in_flight: Arc<DigestMap<u32>>,
    key: u128,
}

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        if let Entry::Occupied(mut entry) = self.in_flight.entry(self.key) {
            if *entry.get() <= 1 {
                entry.remove();
            } else {
                *entry.get_mut() -= 1;
            }
        }
    }
}

impl ConcurrencyLimit {
    pub fn compile(
        name: &str,
        config: ConcurrencyLimitConfig,
        report: &mut dyn FnMut(&str, String),
    ) -> Option<ConcurrencyLimit> {
        if config.max_concurrent == 0 {
            report("max_concurrent", "must be at least 1".to_string());
            return None;
        }
        let key = LimitKey::compile(&config.key, report)?;
        // Requests in flight through the previous snapshot still count after a reload.
        static IN_FLIGHT: Registry<DigestMap<u32>> = Registry::new();
        Some(ConcurrencyLimit {
            max_concurrent: config.max_concurrent,
            in_flight: IN_FLIGHT.shared(format!("{name}\u{0}{:?}", config.key), DigestMap::default),
            key,
        })
    }

    /// Takes a slot for `key`, or `None` when the key has all of its slots in use.
    fn acquire(&self, key: u128) -> Option<ConcurrencySlot> {
        let mut count = self.in_flight.entry(key).or_insert(0);
        if *count >= self.max_concurrent {
            return None;
        }
        *count += 1;
        drop(count);
        Some(ConcurrencySlot {
            in_flight: Arc::clone(&self.in_flight),
            key,
        })
    }

    pub fn on_request(&self, session: &Session, input: &mut RequestInput<'_>) -> Verdict {
        let key = self.key.digest(&KeyInput {
            client_ip: input.client_ip,
            route_id: input.route_id,
            consumer: input.state.consumer.as_deref(),
            request: session.req_header(),
        });
        match self.acquire(key) {
            Some(slot) => {
                input.state.concurrency.push(slot);
                Verdict::Continue
            }
            None => {
                metrics::count_rate_limited(input.route_id, input.step_name);
                Verdict::Fail(GatewayError::new(
                    429,
                    "too_many_concurrent_requests",
                    "too many requests in flight",
                ))
            }
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "max_concurrent": self.max_concurrent,
            "key": self.key.describe(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_key_and_given_back() {
        let limit = ConcurrencyLimit::compile(
            "test-counts",
            ConcurrencyLimitConfig {
                max_concurrent: 2,
                key: KeyConfig::default(),
            },
            &mut |field, message| panic!("{field}: {message}"),
        )
        .unwrap();
        let first = limit.acquire(7).unwrap();
        let _second = limit.acquire(7).unwrap();
        assert!(limit.acquire(7).is_none());
        assert!(limit.acquire(8).is_some());
        drop(first);
        let _third = limit.acquire(7).unwrap();
        assert!(limit.acquire(7).is_none());
    }

    #[test]
    fn a_key_with_nothing_in_flight_leaves_the_table() {
        let limit = ConcurrencyLimit::compile(
            "test-table",
            ConcurrencyLimitConfig {
                max_concurrent: 1,
                key: KeyConfig::default(),
            },
            &mut |field, message| panic!("{field}: {message}"),
        )
        .unwrap();
        drop(limit.acquire(1).unwrap());
        assert!(limit.in_flight.is_empty());
    }
}
