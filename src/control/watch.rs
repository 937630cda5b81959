//! Notices config file changes by polling its metadata.
//!
//! Polling the path (following symlinks) sees in-place edits, editors' write-and-rename and
//! Kubernetes' `..data` symlink swaps alike, where inotify on the file would lose track after
//! the first rename. One `stat` per interval costs nothing.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// What the watcher compares: taken before a load, so a change that lands while the file is
/// being read is still seen as a change afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    modified: Option<SystemTime>,
    length: u64,
    inode: u64,
    device: u64,
}

pub struct FileWatch {
    path: PathBuf,
    interval: Duration,
    last: Option<Fingerprint>,
}

impl FileWatch {
    /// `loaded` is the fingerprint taken just before the serving config was read.
    pub fn new(path: PathBuf, interval: Duration, loaded: Option<Fingerprint>) -> FileWatch {
        FileWatch {
            path,
            interval,
            last: loaded,
        }
    }

    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// Records the file's current state so that a reload triggered another way (SIGHUP) is
    /// not repeated by the watcher.
    pub fn refresh(&mut self) {
        self.last = fingerprint(&self.path);
    }

    /// Resolves once the file looks different from the last time it was seen. A file that
    /// disappears is not a change: the next version to appear is.
    pub async fn changed(&mut self) {
        loop {
            tokio::time::sleep(self.interval).await;
            let current = fingerprint(&self.path);
            if current.is_some() && current != self.last {
                self.last = current;
                return;
            }
        }
    }
}

pub fn fingerprint(path: &std::path::Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified: metadata.modified().ok(),
        length: metadata.len(),
        inode: metadata.ino(),
        device: metadata.dev(),
    })
}
