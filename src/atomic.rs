//! Atomic file and directory writes, the bottom layer every writer uses: a
//! reader (another process, a crashed run's successor) sees either the old
//! complete file or directory or the new one, never a half-written one.
//!
//! Files are written to a hidden sibling (`.NAME.tmp.PID`), fsynced and
//! renamed over the final name; directories are filled under a sibling and
//! swapped in with [`replace_dir`].

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `path` with a suffix like `.tmp.<pid>`, in the same directory (so a rename is atomic).
pub fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.{tag}.{}", std::process::id()))
}

/// Writes a file and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Replaces directory `dst` by `src` (both on one filesystem): a reader sees
/// either the old complete directory or the new one, never a half-written one.
pub fn replace_dir(src: &Path, dst: &Path) -> Result<()> {
    if let Ok(d) = std::fs::File::open(src) {
        let _ = d.sync_all();
    }
    let old = sibling(dst, "old");
    if dst.exists() {
        std::fs::rename(dst, &old).map_err(|e| Error::io(dst, e))?;
    }
    std::fs::rename(src, dst).map_err(|e| Error::io(dst, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    if let Some(parent) = dst.parent() {
        if let Ok(d) = std::fs::File::open(if parent.as_os_str().is_empty() { Path::new(".") } else { parent }) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a synced temporary sibling renamed
/// over `path`; the sibling is removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, "tmp");
    let result = write_synced(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
