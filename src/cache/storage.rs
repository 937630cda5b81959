//! The response cache's memory store: Pingora's `Storage` over TinyUFO.
//!
//! TinyUFO (Pingora's own S3-FIFO cache with TinyLFU admission) caps the store by weight, and
//! its admission keeps a stream of one-off URLs from flushing the popular ones: a new entry
//! may be refused when the cache is full of entries used more often. Weights are in KiB
//! (TinyUFO weighs with a `u16`), so an entry is at most 64 MiB.
//!
//! Bodies are kept whole as `Bytes`; a hit hands out a cheap clone and can be sliced for
//! ranges. Readers of a key being filled wait on Pingora's cache lock, so the store needs no
//! partial-write support. A side index (key hash → primary key, size, expiry) serves what
//! TinyUFO cannot: purging by URL prefix, dropping expired entries on `cleanup_interval`, and
//! the size and entry counts for the metrics.

use std::any::Any;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use tinyufo::TinyUfo;

pub use super::index::{EntryIndex, url_has_prefix};

/// What `CacheMeta` needs to be rebuilt (Pingora's meta is not `Clone`, and rebuilding it is
/// cheaper than its serialized form).
struct StoredMeta {
    fresh_until: SystemTime,
    updated: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
}

impl StoredMeta {
    fn of(meta: &CacheMeta) -> StoredMeta {
        StoredMeta {
            fresh_until: meta.fresh_until(),
            updated: meta.updated(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: meta.response_header_copy(),
        }
    }

    fn meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.updated,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        if let Some(variance) = self.variance {
            meta.set_variance(variance);
        }
        meta
    }
}

/// One stored answer.
struct Entry {
    hash: u64,
    stored: StoredMeta,
    body: Bytes,
}

impl Entry {
    /// What the entry counts against `max_size`: its body and a rough header size.
    fn size(&self) -> u64 {
        let header: usize = self
            .stored
            .header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        (self.body.len() + header + 64) as u64
    }
}

/// What the admin API, the metrics and the cleanup need of a store, memory or disk: each
/// keeps an [`EntryIndex`] and can forget an answer; the rest is common.
pub trait CacheStore: Storage + Sync + Send {
    /// The configured cap in bytes.
    fn max_size(&self) -> u64;
    fn index(&self) -> &EntryIndex;
    /// Removes the answer `hash` from the store and its index; whether it was stored.
    fn forget(&self, hash: u64) -> bool;

    /// Bytes and entries stored now, and entries evicted so far.
    fn usage(&self) -> (u64, u64, u64) {
        self.index().usage()
    }

    /// Removes every entry whose URL starts with `prefix` (see [`url_has_prefix`]).
    fn purge_prefix(&self, prefix: &str) -> usize {
        let doomed = self
            .index()
            .hashes_where(|indexed| url_has_prefix(&indexed.primary, prefix));
        doomed.iter().filter(|hash| self.forget(**hash)).count()
    }

    /// Drops the entries that can no longer be served, even stale.
    fn drop_expired(&self, now: SystemTime) -> usize {
        let doomed = self
            .index()
            .hashes_where(|indexed| indexed.unusable_after <= now);
        doomed.iter().filter(|hash| self.forget(**hash)).count()
    }

    /// What `Storage::purge` does: an invalidation takes every `Vary` variant of the URL, an
    /// eviction the one answer.
    fn purge_target(&self, target: PurgeTarget<'_>, purge_type: PurgeType) -> PurgeOutcome {
        let hash = short_hash(target.key().combined_bin());
        let removed = match purge_type {
            PurgeType::Invalidation => self.forget_url_of(hash),
            PurgeType::Eviction => self.forget(hash),
        };
        if removed {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        }
    }

    /// Removes the answer `hash` and every `Vary` variant of its URL.
    fn forget_url_of(&self, hash: u64) -> bool {
        let primary = self.index().primary_of(hash);
        let mut removed = self.forget(hash);
        if let Some(primary) = primary {
            for variant in self
                .index()
                .hashes_where(|indexed| indexed.primary == primary)
            {
                removed |= self.forget(variant);
            }
        }
        removed
    }
}

pub struct MemoryStore {
    max_size: u64,
    /// The coalescing store: no admission (an answer others wait for must be kept), and an
    /// entry's `updated` is when its fill finished (see `crate::cache::decide::coalesced_hit`).
    coalescing: bool,
    entries: TinyUfo<u64, Arc<Entry>>,
    index: EntryIndex,
}

/// Key hashes are 128-bit digests; 64 bits of one are as good a key.
pub(super) fn short_hash(hash: HashBinary) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(bytes)
}

impl MemoryStore {
    /// A store holding up to `max_size` bytes; with `admission`, TinyUFO may refuse a new
    /// entry in favour of more popular ones, otherwise the store is for coalescing.
    pub fn new(max_size: u64, admission: bool) -> MemoryStore {
        let weight_limit = (max_size / 1024).max(1) as usize;
        // TinyUFO sizes its ghost queue and sketch by the expected number of entries.
        let estimated_entries = (weight_limit / 8).clamp(64, 1 << 20);
        MemoryStore {
            max_size,
            coalescing: !admission,
            entries: TinyUfo::new(weight_limit, estimated_entries),
            index: EntryIndex::default(),
        }
    }

    fn insert(&self, entry: Entry, primary: String) {
        let hash = entry.hash;
        let size = entry.size();
        let unusable_after = entry.stored.fresh_until
            + std::time::Duration::from_secs(u64::from(
                entry
                    .stored
                    .stale_while_revalidate
                    .max(entry.stored.stale_if_error),
            ));
        let weight = size.div_ceil(1024).clamp(1, u64::from(u16::MAX)) as u16;
        // A replaced entry leaves the accounting first.
        self.forget(hash);
        let entry = Arc::new(entry);
        let evicted = if self.coalescing {
            self.entries.force_put(hash, Arc::clone(&entry), weight)
        } else {
            self.entries.put(hash, Arc::clone(&entry), weight)
        };
        let mut admitted = true;
        for gone in &evicted {
            if gone.data.hash == hash && Arc::ptr_eq(&gone.data, &entry) {
                // TinyUFO's admission refused the new entry.
                admitted = false;
            } else if self.index.remove(gone.data.hash) {
                self.index.count_eviction();
            }
        }
        if admitted {
            self.index.insert(hash, primary, size, unusable_after);
        }
    }
}

impl CacheStore for MemoryStore {
    fn max_size(&self) -> u64 {
        self.max_size
    }

    fn index(&self) -> &EntryIndex {
        &self.index
    }

    fn forget(&self, hash: u64) -> bool {
        let removed = self.entries.remove(&hash).is_some();
        self.index.remove(hash);
        removed
    }
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = short_hash(key.combined_bin());
        Ok(self.entries.get(&hash).map(|entry| {
            let hit: HitHandler = Box::new(BodyReader::new(entry.body.clone()));
            (entry.stored.meta(), hit)
        }))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(BodyWriter {
            store: self,
            hash: short_hash(key.combined_bin()),
            primary: String::from_utf8_lossy(key.primary_key()).into_owned(),
            stored: StoredMeta::of(meta),
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(self.purge_target(target, purge_type))
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let hash = short_hash(key.combined_bin());
        let Some(entry) = self.entries.get(&hash) else {
            return Ok(false);
        };
        let primary = self
            .index
            .primary_of(hash)
            .unwrap_or_else(|| String::from_utf8_lossy(key.primary_key()).into_owned());
        self.insert(
            Entry {
                hash,
                stored: StoredMeta::of(meta),
                body: entry.body.clone(),
            },
            primary,
        );
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A hit: the stored body, whole or a range of it.
pub(super) struct BodyReader {
    body: Bytes,
    done: bool,
}

impl BodyReader {
    pub(super) fn new(body: Bytes) -> BodyReader {
        BodyReader { body, done: false }
    }
}

#[async_trait]
impl HandleHit for BodyReader {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(None);
        }
        Ok(Some(self.body.clone()))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let end = end.unwrap_or(self.body.len());
        if start > end || end > self.body.len() {
            return Error::e_explain(ErrorType::InternalError, "range outside the cached body");
        }
        self.body = self.body.slice(start..end);
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A fill: the body is gathered, and stored whole when the answer is complete. Dropped
/// without `finish` (the upstream failed midway), it stores nothing.
struct BodyWriter {
    store: &'static MemoryStore,
    hash: u64,
    primary: String,
    stored: StoredMeta,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for BodyWriter {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let mut writer = *self;
        let size = writer.body.len();
        if writer.store.coalescing {
            writer.stored.updated = SystemTime::now();
        }
        writer.store.insert(
            Entry {
                hash: writer.hash,
                stored: writer.stored,
                body: writer.body.freeze(),
            },
            writer.primary,
        );
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> &'static MemoryStore {
        Box::leak(Box::new(MemoryStore::new(64 * 1024, true)))
    }

    async fn fill(store: &'static MemoryStore, url: &str, body: &[u8]) {
        let key = CacheKey::new(url.as_bytes().to_vec(), "");
        let now = SystemTime::now();
        let meta = CacheMeta::new(
            now + std::time::Duration::from_secs(60),
            now,
            0,
            0,
            ResponseHeader::build(200, None).unwrap(),
        );
        let trace = pingora_cache::trace::Span::inactive().handle();
        let mut writer = store.get_miss_handler(&key, &meta, &trace).await.unwrap();
        writer
            .write_body(Bytes::copy_from_slice(body), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();
    }

    async fn read(store: &'static MemoryStore, url: &str) -> Option<Bytes> {
        let key = CacheKey::new(url.as_bytes().to_vec(), "");
        let (_, mut hit) = store
            .lookup(&key, &pingora_cache::trace::Span::inactive().handle())
            .await
            .unwrap()?;
        hit.read_body().await.unwrap()
    }

    #[tokio::test]
    async fn filled_entries_are_read_back_and_purged_by_prefix() {
        let store = store();
        fill(store, "example.com/a/1", b"one").await;
        fill(store, "example.com/a/2", b"two").await;
        fill(store, "example.com/b/1", b"three").await;
        assert_eq!(read(store, "example.com/a/1").await.unwrap(), "one");
        assert_eq!(store.usage().1, 3);
        assert_eq!(store.purge_prefix("example.com/a/"), 2);
        assert_eq!(store.purge_prefix("/c"), 0);
        assert_eq!(read(store, "example.com/a/1").await, None);
        assert_eq!(read(store, "example.com/b/1").await.unwrap(), "three");
        assert_eq!(store.usage().1, 1);
        assert_eq!(store.purge_prefix("/b/"), 1);
        assert_eq!(store.usage(), (0, 0, 0));
    }

    #[tokio::test]
    async fn the_store_stays_within_its_size() {
        let store = store();
        let body = vec![7u8; 8 * 1024];
        for index in 0..64 {
            fill(store, &format!("example.com/{index}"), &body).await;
        }
        let (bytes, entries, evictions) = store.usage();
        assert!(bytes <= 72 * 1024, "{bytes}");
        assert!(entries < 64 && evictions > 0, "{entries} {evictions}");
    }

    #[tokio::test]
    async fn a_range_is_read_from_the_stored_body() {
        let store = store();
        fill(store, "example.com/r", b"0123456789").await;
        let key = CacheKey::new(b"example.com/r".to_vec(), "");
        let (_, mut hit) = store
            .lookup(&key, &pingora_cache::trace::Span::inactive().handle())
            .await
            .unwrap()
            .unwrap();
        hit.seek(2, Some(5)).unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "234");
        assert_eq!(hit.read_body().await.unwrap(), None);
    }
}
