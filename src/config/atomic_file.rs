//! Replacing a file so that a crash or power loss at any moment leaves either the old or the
//! new content whole, never a mix or an empty file: the admin API's overlay is written this
//! way.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The overlay may hold credentials' digests: a new file is readable by its owner only.
const NEW_FILE_MODE: u32 = 0o600;

/// `path` with `suffix` added to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Replaces `path` with `contents`, keeping the previous content as `<path>.bak` (one backup,
/// replaced each time).
///
/// The new content goes to a temporary file in the same directory (a rename is only atomic
/// within one file system), which is flushed to disk before it is renamed over `path`; the
/// directory is then flushed so the rename itself survives a crash. The backup is made the
/// same way, before the file is replaced, so at every moment `path` holds a whole version.
/// A file that exists keeps its permissions.
pub fn replace_with_backup(path: &Path, contents: &[u8]) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mode = match fs::metadata(path) {
        Ok(metadata) => {
            let mode = metadata.permissions().mode() & 0o7777;
            let previous = fs::read(path)?;
            write_and_rename(&sibling(path, ".bak"), &previous, mode)?;
            mode
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => NEW_FILE_MODE,
        Err(error) => return Err(error),
    };
    write_and_rename(path, contents, mode)?;
    File::open(&directory)?.sync_all()
}

/// Writes `contents` to a temporary sibling of `target`, flushes it, and renames it over
/// `target`.
fn write_and_rename(target: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let temporary = sibling(target, &format!(".tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temporary)?;
        // `mode` at creation is masked by the umask; set it as asked.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(directory: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replacing_keeps_one_backup_of_the_previous_version_and_no_temporary_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("loom.overlay.json");
        replace_with_backup(&path, b"first").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(names(directory.path()), ["loom.overlay.json"]);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        replace_with_backup(&path, b"second").unwrap();
        replace_with_backup(&path, b"third").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"third");
        assert_eq!(fs::read(sibling(&path, ".bak")).unwrap(), b"second");
        assert_eq!(
            names(directory.path()),
            ["loom.overlay.json", "loom.overlay.json.bak"]
        );
    }

    #[test]
    fn an_existing_files_permissions_are_kept() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("overlay.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        replace_with_backup(&path, b"new").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read(sibling(&path, ".bak")).unwrap(), b"old");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_whole() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("overlay.json");
        fs::write(&path, b"old").unwrap();
        // The temporary file's name is taken by a directory: creating it fails.
        fs::create_dir(sibling(&path, &format!(".tmp.{}", std::process::id()))).unwrap();
        assert!(replace_with_backup(&path, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }
}
