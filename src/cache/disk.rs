//! The response cache's on-disk store (`cache.disk_path`): one file per answer, so the cache
//! survives restarts and can be larger than memory.
//!
//! A file holds a magic line, the entry's primary key, Pingora's serialized `CacheMeta`
//! (internal part and header) and the body. An index in memory (rebuilt from the files'
//! heads at start) answers misses without touching the disk and keeps the sizes: when the
//! store passes `max_size`, the least recently used answers are deleted. Files are written
//! to a temporary name and renamed, so a crash never leaves a half-written answer under a
//! real name.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::CacheHashKey;
use pingora_cache::storage::{
    HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
    Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, OrErr, Result};

use super::index::{EntryIndex, unusable_after};
use super::storage::{BodyReader, CacheStore, short_hash};

const MAGIC: &[u8] = b"LOOM-CACHE-1\n";
const EXTENSION: &str = "entry";

pub struct DiskStore {
    directory: PathBuf,
    max_size: u64,
    index: EntryIndex,
}

/// An entry file's parts.
struct Parsed<'a> {
    primary: &'a str,
    internal: &'a [u8],
    header: &'a [u8],
    body_start: usize,
}

fn parse(file: &[u8]) -> Option<Parsed<'_>> {
    let rest = file.strip_prefix(MAGIC)?;
    let length = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = rest.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(bytes) as usize)
    };
    let (primary_length, internal_length, header_length) = (length(0)?, length(4)?, length(8)?);
    let mut at = 12;
    let primary = std::str::from_utf8(rest.get(at..at + primary_length)?).ok()?;
    at += primary_length;
    let internal = rest.get(at..at + internal_length)?;
    at += internal_length;
    let header = rest.get(at..at + header_length)?;
    at += header_length;
    Some(Parsed {
        primary,
        internal,
        header,
        body_start: MAGIC.len() + at,
    })
}

fn encode(primary: &str, internal: &[u8], header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(
        MAGIC.len() + 12 + primary.len() + internal.len() + header.len() + body.len(),
    );
    file.extend_from_slice(MAGIC);
    for part in [primary.as_bytes(), internal, header] {
        file.extend_from_slice(&(part.len() as u32).to_le_bytes());
    }
    file.extend_from_slice(primary.as_bytes());
    file.extend_from_slice(internal);
    file.extend_from_slice(header);
    file.extend_from_slice(body);
    file
}

impl DiskStore {
    /// Opens (creating it if needed) the store in `directory` and indexes the answers already
    /// there; files that cannot be read as entries are removed.
    pub fn open(directory: &Path, max_size: u64) -> std::io::Result<DiskStore> {
        std::fs::create_dir_all(directory)?;
        let store = DiskStore {
            directory: directory.to_path_buf(),
            max_size,
            index: EntryIndex::default(),
        };
        let mut found = 0;
        for item in std::fs::read_dir(directory)? {
            let path = item?.path();
            let hash = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| u64::from_str_radix(stem, 16).ok());
            let is_entry = path
                .extension()
                .is_some_and(|extension| extension == EXTENSION);
            let indexed = match (hash, is_entry) {
                (Some(hash), true) => std::fs::read(&path)
                    .ok()
                    .and_then(|file| store.index_file(hash, &file)),
                _ => None,
            };
            match indexed {
                Some(()) => found += 1,
                // A temporary file of an interrupted write, or not ours to keep.
                None if is_entry || path.to_string_lossy().contains(".partial") => {
                    let _ = std::fs::remove_file(&path);
                }
                None => {}
            }
        }
        log::info!(
            "cache: {found} answer(s), {} bytes found in {}",
            store.index.bytes(),
            directory.display()
        );
        store.evict_to_size();
        Ok(store)
    }

    fn index_file(&self, hash: u64, file: &[u8]) -> Option<()> {
        let parsed = parse(file)?;
        let meta = CacheMeta::deserialize(parsed.internal, parsed.header).ok()?;
        self.index.insert(
            hash,
            parsed.primary.to_string(),
            file.len() as u64,
            unusable_after(&meta),
        );
        Some(())
    }

    fn path_of(&self, hash: u64) -> PathBuf {
        self.directory.join(format!("{hash:016x}.{EXTENSION}"))
    }

    /// Deletes the least recently used answers until the store fits in `max_size`.
    fn evict_to_size(&self) {
        while self.index.bytes() > self.max_size {
            let Some(oldest) = self.index.least_recently_used() else {
                return;
            };
            if self.forget(oldest) {
                self.index.count_eviction();
            }
        }
    }

    async fn write(&self, hash: u64, contents: Vec<u8>) -> std::io::Result<()> {
        let path = self.path_of(hash);
        let partial = self
            .directory
            .join(format!("{hash:016x}.partial{}", fastrand::u64(..)));
        tokio::fs::write(&partial, contents).await?;
        if let Err(error) = tokio::fs::rename(&partial, &path).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(error);
        }
        Ok(())
    }
}

impl CacheStore for DiskStore {
    fn max_size(&self) -> u64 {
        self.max_size
    }

    fn index(&self) -> &EntryIndex {
        &self.index
    }

    fn forget(&self, hash: u64) -> bool {
        let known = self.index.remove(hash);
        if known {
            let _ = std::fs::remove_file(self.path_of(hash));
        }
        known
    }
}

#[async_trait]
impl Storage for DiskStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = short_hash(key.combined_bin());
        if !self.index.touch(hash) {
            return Ok(None);
        }
        let file = match tokio::fs::read(self.path_of(hash)).await {
            Ok(file) => Bytes::from(file),
            Err(_) => {
                self.forget(hash);
                return Ok(None);
            }
        };
        let Some(parsed) = parse(&file) else {
            self.forget(hash);
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(parsed.internal, parsed.header)?;
        let body = file.slice(parsed.body_start..);
        Ok(Some((meta, Box::new(BodyReader::new(body)))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (internal, header) = meta.serialize()?;
        Ok(Box::new(DiskWriter {
            store: self,
            hash: short_hash(key.combined_bin()),
            primary: String::from_utf8_lossy(key.primary_key()).into_owned(),
            unusable_after: unusable_after(meta),
            internal,
            header,
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
        let Ok(file) = tokio::fs::read(self.path_of(hash)).await else {
            return Ok(false);
        };
        let Some(parsed) = parse(&file) else {
            return Ok(false);
        };
        let (internal, header) = meta.serialize()?;
        let primary = parsed.primary.to_string();
        let contents = encode(&primary, &internal, &header, &file[parsed.body_start..]);
        let size = contents.len() as u64;
        self.write(hash, contents)
            .await
            .or_err(ErrorType::InternalError, "rewriting a cached answer's meta")?;
        self.index.insert(hash, primary, size, unusable_after(meta));
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A fill: gathered in memory, then written to its file in one go.
struct DiskWriter {
    store: &'static DiskStore,
    hash: u64,
    primary: String,
    unusable_after: SystemTime,
    internal: Vec<u8>,
    header: Vec<u8>,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for DiskWriter {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let writer = *self;
        let contents = encode(
            &writer.primary,
            &writer.internal,
            &writer.header,
            &writer.body,
        );
        let size = contents.len() as u64;
        if let Err(error) = writer.store.write(writer.hash, contents).await {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("writing a cached answer: {error}"),
            );
        }
        writer
            .store
            .index
            .insert(writer.hash, writer.primary, size, writer.unusable_after);
        writer.store.evict_to_size();
        Ok(MissFinishType::Created(writer.body.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    async fn fill(store: &'static DiskStore, url: &str, body: &[u8]) {
        let key = CacheKey::new(url.as_bytes().to_vec(), "");
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("content-type", "text/plain").unwrap();
        let meta = CacheMeta::new(now + std::time::Duration::from_secs(60), now, 0, 0, header);
        let trace = pingora_cache::trace::Span::inactive().handle();
        let mut writer = store.get_miss_handler(&key, &meta, &trace).await.unwrap();
        writer
            .write_body(Bytes::copy_from_slice(body), true)
            .await
            .unwrap();
        writer.finish().await.unwrap();
    }

    async fn read(store: &'static DiskStore, url: &str) -> Option<(String, Bytes)> {
        let key = CacheKey::new(url.as_bytes().to_vec(), "");
        let trace = pingora_cache::trace::Span::inactive().handle();
        let (meta, mut hit) = store.lookup(&key, &trace).await.unwrap()?;
        let content_type = meta.headers()["content-type"].to_str().unwrap().to_string();
        Some((content_type, hit.read_body().await.unwrap().unwrap()))
    }

    #[tokio::test]
    async fn answers_survive_a_reopen_and_the_size_is_kept() {
        let directory = tempfile::tempdir().unwrap();
        let store: &'static DiskStore =
            Box::leak(Box::new(DiskStore::open(directory.path(), 4096).unwrap()));
        fill(store, "example.com/a", b"first").await;
        fill(store, "example.com/b", b"second").await;
        assert_eq!(
            read(store, "example.com/a").await,
            Some(("text/plain".to_string(), Bytes::from_static(b"first")))
        );
        // A stray partial write and a foreign file.
        std::fs::write(directory.path().join("0000000000000001.partial7"), b"x").unwrap();
        std::fs::write(
            directory.path().join("ffffffffffffffff.entry"),
            b"not an entry",
        )
        .unwrap();
        let reopened: &'static DiskStore =
            Box::leak(Box::new(DiskStore::open(directory.path(), 4096).unwrap()));
        assert_eq!(reopened.usage().1, 2);
        assert_eq!(read(reopened, "example.com/b").await.unwrap().1, "second");
        assert!(!directory.path().join("0000000000000001.partial7").exists());
        assert!(!directory.path().join("ffffffffffffffff.entry").exists());
        // Past max_size the least recently used answer goes: "b" was read last. Each file is
        // its body ("first", "second") plus the same overhead; "c" is sized so that it fits
        // with "b" but not with both.
        let overhead = (reopened.usage().0 - 11) / 2;
        let third = (4096 - 2 * overhead - 6) as usize;
        fill(reopened, "example.com/c", &vec![b'c'; third]).await;
        let (bytes, entries, evictions) = reopened.usage();
        assert!(bytes <= 4096, "{bytes}");
        assert_eq!((entries, evictions), (2, 1));
        assert!(read(reopened, "example.com/a").await.is_none());
        assert!(read(reopened, "example.com/b").await.is_some());
        assert_eq!(reopened.purge_prefix("/c"), 1);
        assert!(read(reopened, "example.com/c").await.is_none());
    }
}
