//! Writing the config file: atomically, keeping the previous file as `<path>.bak`, with the
//! old file's mode and owner.

use std::path::{Path, PathBuf};

/// The config could not be written to its file; the file and the running config are
/// unchanged.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot persist the config to {}: {error}; the file and the running config are unchanged",
    path.display()
)]
pub struct PersistError {
    /// The config file as given (not the file a symlink points to).
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// Writes `text` to `path` atomically: a temp file in the same directory, fsync, then rename
/// over the old file, whose previous content is kept as `<path>.bak`. On any failure the old
/// file is untouched.
pub fn persist(path: &Path, text: &str) -> Result<(), PersistError> {
    use std::io::Write;
    // Through a symlink, the file it points to is replaced (the link stays a link).
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = match real.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.json".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = std::fs::metadata(&real).ok();
    let fail = |error: std::io::Error| PersistError {
        path: path.to_path_buf(),
        error,
    };
    let write = || -> std::io::Result<()> {
        // A temp file left by a crash is ours to replace; anything else there fails below.
        let _ = std::fs::remove_file(&tmp);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
            // The old file's mode (a config with secrets is often 0600), else owner-only.
            opts.mode(old.as_ref().map_or(0o600, |m| m.mode() & 0o7777));
        }
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        if let Some(m) = &old {
            use std::os::unix::fs::MetadataExt;
            // Keep the owner too (possible as root; otherwise the file is already ours).
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if old.is_some() {
            std::fs::copy(&real, dir.join(format!("{name}.bak")))?;
        }
        std::fs::rename(&tmp, &real)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    // The rename is done: the new file is what a restart reads. Syncing the directory makes
    // the rename itself durable; if that fails the file is still right, so it is only said.
    if let Err(e) = std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
        tracing::warn!(error = %e, dir = %dir.display(), "config written, but its directory could not be synced");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text() {
        let e = PersistError {
            path: "conf/gw.json".into(),
            error: std::io::Error::other("disk full"),
        };
        assert_eq!(
            e.to_string(),
            "cannot persist the config to conf/gw.json: disk full; the file and the running \
             config are unchanged"
        );
    }
}
