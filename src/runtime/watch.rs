//! The config-file watcher: reloads when the file changes, following symlinks (Kubernetes
//! ConfigMaps, a link to a file elsewhere).

use super::worker::on_reload_thread;
use super::SharedState;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The config file could not be watched (reloads still come from SIGHUP and the admin API).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch the config file: {0}")]
    Watcher(notify::Error),
    #[error("cannot watch {}: {error}", dir.display())]
    Dir { dir: PathBuf, error: notify::Error },
    #[error("cannot start the config watcher: {0}")]
    Thread(std::io::Error),
}

/// Watches the config file and reloads when it changes. Editors that write a temp file and
/// rename it, or write in several steps, are handled by watching the directory and waiting
/// for 200 ms without events; a half-written file fails validation and changes nothing, and
/// the write that completes it triggers again.
///
/// A config reached through symlinks is followed: the directory of the file the links resolve
/// to is watched too (an edit of a symlink's target elsewhere), and the links are resolved again
/// after every change, so a Kubernetes ConfigMap update (`config.json -> ..data/config.json`,
/// `..data` swapped atomically to a new timestamped directory) reloads the new file. A change
/// that leaves the text as it was reloads nothing.
pub fn watch(state: std::sync::Arc<SharedState>, path: PathBuf) -> Result<(), WatchError> {
    use notify::Watcher;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let target = Arc::new(Mutex::new(Target::resolve(&path)));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watched = Watched {
        name: path.file_name().map(|n| n.to_os_string()),
        target: target.clone(),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(ev) = event {
            if !matches!(ev.kind, notify::EventKind::Access(_)) && watched.concerns(&ev.paths) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(WatchError::Watcher)?;
    let watch_dir = |w: &mut notify::RecommendedWatcher, d: &Path| {
        w.watch(d, notify::RecursiveMode::NonRecursive)
            .map_err(|error| WatchError::Dir {
                dir: d.to_path_buf(),
                error,
            })
    };
    watch_dir(&mut watcher, &dir)?;
    let mut extra = lock(&target).dir_if_other_than(&dir);
    if let Some(d) = &extra {
        // Best effort: the file itself is still watched through its own directory.
        if let Err(e) = watch_dir(&mut watcher, d) {
            tracing::warn!(error = %e, "the config's symlink target is not watched");
        }
    }
    std::thread::Builder::new()
        .name("kairos-config-watch".into())
        .spawn(move || {
            let mut watcher = watcher; // dropped (and the watch ended) with this thread
            while rx.recv().is_ok() {
                // Debounce: until 200 ms pass without another event.
                while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
                // The links may point elsewhere now: follow them before reloading.
                let now = Target::resolve(&path);
                let now_extra = now.dir_if_other_than(&dir);
                if now_extra != extra {
                    if let Some(old) = &extra {
                        // Gone with a ConfigMap swap, usually: nothing to undo then.
                        let _ = watcher.unwatch(old);
                    }
                    if let Some(new) = &now_extra {
                        if let Err(e) = watch_dir(&mut watcher, new) {
                            tracing::warn!(error = %e, "the config's symlink target is not watched");
                        }
                    }
                    extra = now_extra;
                }
                *lock(&target) = now;
                let st = state.clone();
                let done = on_reload_thread(move || super::reload::from_file(&st, "file").is_ok());
                let _ = done.blocking_recv();
            }
        })
        .map_err(WatchError::Thread)?;
    Ok(())
}

/// The file the config path resolves to through its symlinks (the path itself when it is no
/// link, or when it cannot be resolved right now).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    dir: Option<PathBuf>,
    name: Option<OsString>,
}

impl Target {
    fn resolve(path: &Path) -> Target {
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Target {
            dir: real.parent().map(Path::to_path_buf),
            name: real.file_name().map(OsString::from),
        }
    }

    /// The target's directory, when it is not `dir` (which is watched anyway).
    fn dir_if_other_than(&self, dir: &Path) -> Option<PathBuf> {
        let same = match (self.dir.as_deref(), std::fs::canonicalize(dir)) {
            (Some(d), Ok(canonical)) => d == canonical,
            (Some(d), Err(_)) => d == dir,
            (None, _) => true,
        };
        (!same).then(|| self.dir.clone()).flatten()
    }
}

/// Which events concern the config.
struct Watched {
    /// The config file's own name, in its own directory.
    name: Option<OsString>,
    /// The file its symlinks resolve to.
    target: Arc<Mutex<Target>>,
}

impl Watched {
    fn concerns(&self, paths: &[PathBuf]) -> bool {
        if paths.is_empty() {
            return true;
        }
        let target = lock(&self.target);
        paths.iter().any(|p| {
            let name = p.file_name();
            name == self.name.as_deref()
                // A ConfigMap's `..data` link and its timestamped directories.
                || name.is_some_and(|n| n.as_encoded_bytes().starts_with(b".."))
                || (name == target.name.as_deref() && in_dir(p, target.dir.as_deref()))
        })
    }
}

/// Whether `p` is in `dir` (a canonical path), however `p` was spelled.
fn in_dir(p: &Path, dir: Option<&Path>) -> bool {
    let (Some(parent), Some(dir)) = (p.parent(), dir) else {
        return false;
    };
    parent == dir || std::fs::canonicalize(parent).is_ok_and(|c| c == dir)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts() {
        let e = WatchError::Thread(std::io::Error::other("no threads"));
        assert_eq!(e.to_string(), "cannot start the config watcher: no threads");
    }
}
