//! Crash-safe file writes: a file is either its old content or its new content,
//! never half of one, even under SIGKILL or power loss.
use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory,
/// fsync, rename over the target, fsync of the directory (so the rename itself
/// survives a crash). On error the temporary file is removed and `path` untouched.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot fsync {}", tmp.display()))?;
        crate::platform::test_pause::in_write(path);
        fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path);
    Ok(())
}

/// The temporary name used by [`write_atomic`]: hidden, next to the target, and
/// unique per process so two writers never share it.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Appends one line (the caller's `line` must end in '\n') with a single write and
/// an fsync, so a kill leaves either the whole line or none of it.
pub(crate) fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f =
        OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open {} for appending", path.display()))?;
    f.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_data().with_context(|| format!("cannot fsync {}", path.display()))?;
    Ok(())
}

fn sync_dir(path: &Path) {
    // Best effort: some filesystems refuse to fsync a directory.
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}
