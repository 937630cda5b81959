//! The side index both stores keep (key hash → URL, size, expiry, last use): what a store
//! itself cannot answer quickly, purging by URL prefix, dropping expired answers, finding the
//! least recently used one, and the size and counts for the metrics.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use pingora_cache::CacheMeta;

/// What the index knows of a stored answer.
pub struct Indexed {
    /// The URL: host, then path and query.
    pub primary: String,
    pub size: u64,
    /// When it can no longer be served, even stale.
    pub unusable_after: SystemTime,
    /// A logical clock: higher was used more recently.
    pub last_used: u64,
}

#[derive(Default)]
pub struct EntryIndex {
    entries: Mutex<HashMap<u64, Indexed>>,
    bytes: AtomicU64,
    evictions: AtomicU64,
    clock: AtomicU64,
}

/// When an answer stops being servable: past its freshness and both stale windows.
pub fn unusable_after(meta: &CacheMeta) -> SystemTime {
    meta.fresh_until()
        + Duration::from_secs(u64::from(
            meta.stale_while_revalidate_sec()
                .max(meta.stale_if_error_sec()),
        ))
}

/// Whether the URL `primary` (host, then path and query) is under `prefix`: `example.com/api/`
/// (host and path) or `/api/` (that path on every host).
pub fn url_has_prefix(primary: &str, prefix: &str) -> bool {
    if prefix.starts_with('/') {
        primary
            .find('/')
            .is_some_and(|start| primary[start..].starts_with(prefix))
    } else {
        primary.starts_with(prefix)
    }
}

impl EntryIndex {
    /// Records (or replaces) the answer `hash`.
    pub fn insert(&self, hash: u64, primary: String, size: u64, unusable_after: SystemTime) {
        let last_used = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut entries) = self.entries.lock() {
            let replaced = entries.insert(
                hash,
                Indexed {
                    primary,
                    size,
                    unusable_after,
                    last_used,
                },
            );
            if let Some(replaced) = replaced {
                self.bytes.fetch_sub(replaced.size, Ordering::Relaxed);
            }
            self.bytes.fetch_add(size, Ordering::Relaxed);
        }
    }

    /// Forgets the answer `hash`; whether it was known.
    pub fn remove(&self, hash: u64) -> bool {
        let removed = self
            .entries
            .lock()
            .ok()
            .and_then(|mut entries| entries.remove(&hash));
        match removed {
            Some(indexed) => {
                self.bytes.fetch_sub(indexed.size, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Marks `hash` used now; whether it is known.
    pub fn touch(&self, hash: u64) -> bool {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        self.entries
            .lock()
            .is_ok_and(|mut entries| match entries.get_mut(&hash) {
                Some(indexed) => {
                    indexed.last_used = now;
                    true
                }
                None => false,
            })
    }

    pub fn primary_of(&self, hash: u64) -> Option<String> {
        self.entries
            .lock()
            .ok()
            .and_then(|entries| entries.get(&hash).map(|indexed| indexed.primary.clone()))
    }

    /// The answers `keep` picks.
    pub fn hashes_where(&self, mut keep: impl FnMut(&Indexed) -> bool) -> Vec<u64> {
        self.entries.lock().map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .iter()
                    .filter(|(_, indexed)| keep(indexed))
                    .map(|(hash, _)| *hash)
                    .collect()
            },
        )
    }

    pub fn least_recently_used(&self) -> Option<u64> {
        self.entries.lock().ok().and_then(|entries| {
            entries
                .iter()
                .min_by_key(|(_, indexed)| indexed.last_used)
                .map(|(hash, _)| *hash)
        })
    }

    pub fn count_eviction(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Bytes and answers held, and answers evicted so far.
    pub fn usage(&self) -> (u64, u64, u64) {
        let entries = self
            .entries
            .lock()
            .map_or(0, |entries| entries.len() as u64);
        (
            self.bytes(),
            entries,
            self.evictions.load(Ordering::Relaxed),
        )
    }
}
