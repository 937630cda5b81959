//! The response cache and request coalescing, on Pingora's HTTP cache (`pingora-cache`).
//!
//! Pingora runs the cache's state machine (lookup, the cache lock that makes concurrent misses
//! for one key wait for a single fetch, stale-while-revalidate in a background subrequest,
//! stale-if-error, conditional requests, ranges, purge); this module decides what it stores:
//! - [`storage`]: the memory store, TinyUFO with a size cap; [`disk`]: the on-disk store;
//! - [`decide`]: which requests use the cache, their key, which answers are stored and for
//!   how long (`Cache-Control`, `Expires`, `default_ttl`), `Vary`;
//! - coalescing uses the same machinery with a store of its own: identical requests in
//!   flight wait on the lock for one upstream request, and its answer is served to those that
//!   waited for it only ([`decide::coalesced_hit`]).

pub mod decide;
pub mod disk;
pub mod index;
pub mod metrics;
pub mod storage;

use std::sync::OnceLock;
use std::time::Duration;

use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};

use crate::config::cache::CacheStorePlan;
use storage::{CacheStore, MemoryStore};

/// The response cache's store, made once from the first config that caches: Pingora's cache
/// wants `'static` parts, and a store is not rebuilt on reload (its size is kept; a change of
/// `cache.max_size` takes a restart).
static STORE: OnceLock<&'static dyn CacheStore> = OnceLock::new();
/// The coalescing store: entries live only until the requests that waited for them read them.
/// (A store is not rebuilt on reload: a change of `cache.disk_path` takes a restart too.)
static COALESCE_STORE: OnceLock<&'static MemoryStore> = OnceLock::new();
static LOCK: OnceLock<&'static CacheKeyLockImpl> = OnceLock::new();

/// Largest amount of coalesced answers held at once.
const COALESCE_STORE_SIZE: u64 = 64 * 1024 * 1024;
/// A fill that holds the lock longer than this lets the waiters go (they then fetch alone).
const LOCK_AGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The store for `plan` (made on first use): on disk with `disk_path`, else in memory.
pub fn store(plan: &CacheStorePlan) -> &'static dyn CacheStore {
    let store = *STORE.get_or_init(|| {
        let on_disk = plan.disk_path.as_ref().and_then(|directory| {
            match disk::DiskStore::open(directory, plan.max_size) {
                Ok(store) => Some(store),
                Err(error) => {
                    // Validation created the directory; it went away or filled up since.
                    log::error!(
                        "cache: cannot open {}: {error}; caching in memory instead",
                        directory.display()
                    );
                    None
                }
            }
        });
        let store: &'static dyn CacheStore = match on_disk {
            Some(store) => Box::leak(Box::new(store)),
            None => Box::leak(Box::new(MemoryStore::new(plan.max_size, true))),
        };
        metrics::register_store(store);
        store
    });
    if store.max_size() != plan.max_size {
        log::warn!(
            "cache.max_size changed to {} bytes: the running store keeps {} bytes until a restart",
            plan.max_size,
            store.max_size()
        );
    }
    store
}

/// The response cache's store, when a config made it.
pub fn current_store() -> Option<&'static dyn CacheStore> {
    STORE.get().copied()
}

pub fn coalesce_store() -> &'static MemoryStore {
    COALESCE_STORE.get_or_init(|| Box::leak(Box::new(MemoryStore::new(COALESCE_STORE_SIZE, false))))
}

pub fn lock() -> &'static CacheKeyLockImpl {
    *LOCK.get_or_init(|| {
        let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(LOCK_AGE_TIMEOUT));
        lock
    })
}

/// Drops what can no longer be served from both stores (`cache.cleanup_interval`).
pub fn drop_expired() {
    let now = std::time::SystemTime::now();
    if let Some(store) = STORE.get() {
        store.drop_expired(now);
    }
    if let Some(store) = COALESCE_STORE.get() {
        store.drop_expired(now);
    }
}
