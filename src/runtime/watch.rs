//! The config-file watcher: reloads when the file changes.

use super::worker::on_reload_thread;
use super::SharedState;
use std::path::PathBuf;
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
pub fn watch(state: std::sync::Arc<SharedState>, path: PathBuf) -> Result<(), WatchError> {
    use notify::Watcher;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(ev) = event {
            let ours =
                ev.paths.is_empty() || ev.paths.iter().any(|p| p.file_name() == name.as_deref());
            if ours && !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(WatchError::Watcher)?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|error| WatchError::Dir {
            dir: dir.clone(),
            error,
        })?;
    std::thread::Builder::new()
        .name("kairos-config-watch".into())
        .spawn(move || {
            let _watcher = watcher; // dropped (and the watch ended) with this thread
            while rx.recv().is_ok() {
                // Debounce: until 200 ms pass without another event.
                while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
                let st = state.clone();
                let done = on_reload_thread(move || super::reload::from_file(&st, "file").is_ok());
                let _ = done.blocking_recv();
            }
        })
        .map_err(WatchError::Thread)?;
    Ok(())
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
