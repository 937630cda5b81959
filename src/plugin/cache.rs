//! On-disk cache of compiled plugin modules.
//!
//! Cranelift takes hundreds of milliseconds per plugin, which would be paid again on every start
//! and every graceful upgrade; loading a cached artifact takes about a millisecond. An artifact
//! is machine code, so the cache is only ever a hint: anything unexpected (a missing, truncated,
//! corrupted or incompatible file) is logged, deleted and answered by recompiling.
//!
//! File layout: `[wasmer artifact][sha256 of the artifact: 32 bytes][MAGIC: 8 bytes]`. The
//! checksum is checked before wasmer sees a byte, because wasmer 7.4.2's
//! `Module::deserialize` skips its own layout validation (it calls the `_unchecked` variant)
//! and even the validated variant would not notice a flipped bit inside machine code.
//! The checksum guards against accidents, not against someone who can write to the
//! directory: such a person can run code in the gateway, which is why the directory is 0700.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use log::warn;
use sha2::{Digest, Sha256};
use wasmer::sys::Target;

use super::engine::{COMPILER_SETTINGS, COST_FUNCTION_VERSION, EngineSettings};

/// Ends every cache file; the digit is bumped whenever the layout above changes.
const MAGIC: &[u8; 8] = b"LOOMWC01";
const DIGEST_LEN: usize = 32;
const TRAILER_LEN: usize = DIGEST_LEN + MAGIC.len();
/// Extension of finished cache files; temporary files start with a dot instead.
const EXTENSION: &str = "wasmu";

/// On-disk cache of compiled modules, keyed by the module's sha256, the wasmer version, the
/// target triple and the compiler settings (metering on, cost function version, memory limit),
/// so a different wasmer or setting never loads a stale artifact.
#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: PathBuf,
}

impl ModuleCache {
    /// Opens the cache at `dir`, creating it (mode 0700 on unix) if needed.
    ///
    /// Refuses a directory that group or others can write to: whatever is in it is loaded as
    /// executable code.
    pub fn new(dir: &Path) -> io::Result<ModuleCache> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir)?.permissions().mode();
            if mode & 0o022 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "module cache directory {} is writable by group or others (mode {:o}); \
                         its files are loaded as executable code, so it must be 0700",
                        dir.display(),
                        mode & 0o7777
                    ),
                ));
            }
        }
        Ok(ModuleCache {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory holding the artifacts.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// File name for the artifact of the module whose wasm hashes to `sha256` (hex), compiled
    /// with `settings` on this host.
    ///
    /// Everything that changes the generated code or the module's metadata is hashed into the
    /// name: the wasmer version (the artifact format is version-specific), the target triple and
    /// CPU features (Cranelift uses e.g. AVX when present), the compiler settings, the metering
    /// cost function and initial budget, and the memory limit. The memory limit does not change
    /// code today (memory styles ignore it) but is included so that can never go stale.
    pub fn key(sha256: &str, settings: &EngineSettings) -> String {
        let target = Target::default();
        let descriptor = format!(
            "layout={};wasmer={};triple={};cpu_features={:?};compiler={};metering=on;\
             cost_function=v{};max_fuel={};memory_limit_pages={}",
            String::from_utf8_lossy(MAGIC),
            wasmer::sys::vm::VERSION,
            target.triple(),
            target.cpu_features(),
            COMPILER_SETTINGS,
            COST_FUNCTION_VERSION,
            settings.max_fuel,
            settings.memory_limit_pages,
        );
        let settings_digest = sha256_hex(descriptor.as_bytes());
        format!("{sha256}-{}.{EXTENSION}", &settings_digest[..16])
    }

    /// Loads the artifact stored under `key` into `engine`.
    ///
    /// `None` when there is none or it cannot be used; an unusable file is logged and deleted so
    /// the caller's recompile replaces it.
    pub fn load(&self, engine: &wasmer::Engine, key: &str) -> Option<wasmer::Module> {
        let path = self.path_for(key)?;
        let mut bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                self.discard(&path, &format!("cannot be read: {error}"));
                return None;
            }
        };
        let artifact_len = match verified_artifact_len(&bytes) {
            Ok(len) => len,
            Err(reason) => {
                self.discard(&path, reason);
                return None;
            }
        };
        bytes.truncate(artifact_len);
        // SAFETY: deserializing maps the file's machine code as executable. The bytes are exactly
        // what `store` wrote (checksum verified above) into a 0700 directory, from a module that
        // wasmer compiled and validated with the settings hashed into `key`, and the same
        // settings built `engine`.
        match unsafe { wasmer::Module::deserialize(engine, bytes) } {
            Ok(module) => Some(module),
            Err(error) => {
                self.discard(&path, &format!("was rejected by wasmer: {error}"));
                None
            }
        }
    }

    /// Writes `module`'s artifact under `key`.
    ///
    /// Written to a temporary file and renamed, so a concurrent reader (another worker, or the
    /// old process during a graceful upgrade) sees either nothing or the whole file. Failures are
    /// logged: without the cache the next start merely compiles again. No fsync: a file torn by
    /// a crash fails its checksum and is recompiled.
    pub fn store(&self, module: &wasmer::Module, key: &str) {
        let Some(path) = self.path_for(key) else {
            return;
        };
        let artifact = match module.serialize() {
            Ok(artifact) => artifact,
            Err(error) => {
                warn!("plugin cache: cannot serialize module for {key}: {error}");
                return;
            }
        };
        static NEXT_TEMP_ID: AtomicU64 = AtomicU64::new(0);
        let temp_path = self.dir.join(format!(
            ".{key}.{}.{}.tmp",
            std::process::id(),
            NEXT_TEMP_ID.fetch_add(1, Ordering::Relaxed)
        ));
        let written =
            write_new_file(&temp_path, &artifact).and_then(|()| fs::rename(&temp_path, &path));
        if let Err(error) = written {
            warn!("plugin cache: cannot write {}: {error}", path.display());
            let _ = fs::remove_file(&temp_path);
        }
    }

    /// The path for `key`, or `None` (logged) when `key` is not a plain file name: keys become
    /// paths, and one containing a separator or `..` could point outside the cache.
    fn path_for(&self, key: &str) -> Option<PathBuf> {
        let plain = !key.is_empty()
            && !key.starts_with('.')
            && key
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
        if plain {
            Some(self.dir.join(key))
        } else {
            warn!("plugin cache: refusing key {key:?}: not a plain file name");
            None
        }
    }

    fn discard(&self, path: &Path, reason: &str) {
        warn!(
            "plugin cache: {} {reason}; deleting it and recompiling",
            path.display()
        );
        if let Err(error) = fs::remove_file(path)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!("plugin cache: cannot delete {}: {error}", path.display());
        }
    }
}

/// Lowercase hex sha256 of `bytes`.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    for byte in Sha256::digest(bytes) {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Length of the artifact in a cache file, after checking the trailer and checksum.
fn verified_artifact_len(file: &[u8]) -> Result<usize, &'static str> {
    let Some(artifact_len) = file.len().checked_sub(TRAILER_LEN) else {
        return Err("is too short to be a cache file");
    };
    let (artifact, trailer) = file.split_at(artifact_len);
    let (digest, magic) = trailer.split_at(DIGEST_LEN);
    if magic != MAGIC {
        return Err("has no Loom cache trailer (truncated, or another format)");
    }
    if Sha256::digest(artifact).as_slice() != digest {
        return Err("fails its checksum (corrupted)");
    }
    Ok(artifact_len)
}

/// Creates `path` (0600 on unix; it must not exist) holding `artifact` and its trailer.
fn write_new_file(path: &Path, artifact: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = io::BufWriter::new(options.open(path)?);
    file.write_all(artifact)?;
    file.write_all(&Sha256::digest(artifact))?;
    file.write_all(MAGIC)?;
    file.into_inner().map_err(io::IntoInnerError::into_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_fuel: u64, memory_limit_pages: u32) -> EngineSettings {
        EngineSettings {
            max_fuel,
            memory_limit_pages,
        }
    }

    #[test]
    fn key_changes_with_every_setting_and_is_stable() {
        let sha = sha256_hex(b"module");
        let base = ModuleCache::key(&sha, &settings(1_000, 16));
        assert_eq!(base, ModuleCache::key(&sha, &settings(1_000, 16)));
        assert!(base.starts_with(&sha) && base.ends_with(".wasmu"), "{base}");
        assert_ne!(base, ModuleCache::key(&sha, &settings(1_001, 16)));
        assert_ne!(base, ModuleCache::key(&sha, &settings(1_000, 17)));
        assert_ne!(
            base,
            ModuleCache::key(&sha256_hex(b"other"), &settings(1_000, 16))
        );
    }

    #[test]
    fn keys_that_are_not_plain_file_names_are_refused() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let cache = ModuleCache::new(dir.path())?;
        for key in ["", "../escape", "a/b", ".hidden", "with space"] {
            assert!(cache.path_for(key).is_none(), "{key:?}");
        }
        assert!(cache.path_for("abc-0123.wasmu").is_some());
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn directory_is_private_and_shared_directories_are_refused() -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir()?;
        let dir = root.path().join("nested").join("cache");
        ModuleCache::new(&dir)?;
        assert_eq!(fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
        let error = ModuleCache::new(&dir).err();
        assert_eq!(
            error.map(|error| error.kind()),
            Some(io::ErrorKind::PermissionDenied)
        );
        Ok(())
    }

    #[test]
    fn trailer_detects_truncation_and_corruption() {
        let artifact = b"pretend machine code".to_vec();
        let mut file = artifact.clone();
        file.extend_from_slice(&Sha256::digest(&artifact));
        file.extend_from_slice(MAGIC);
        assert_eq!(verified_artifact_len(&file), Ok(artifact.len()));

        let mut flipped = file.clone();
        flipped[3] ^= 1;
        assert!(verified_artifact_len(&flipped).is_err());
        assert!(verified_artifact_len(&file[..file.len() - 1]).is_err());
        assert!(verified_artifact_len(&file[..10]).is_err());
        assert!(verified_artifact_len(b"").is_err());
    }
}
