//! Config reload: read and validate fully, build the new runtime next to the old one (carrying
//! over what keeps its identity), then swap it in whole. Reloads are serialized; a config
//! that fails anywhere changes nothing. Triggers: SIGHUP, `POST /_kairos/config/reload`,
//! `PUT /_kairos/config`, and a watcher on the config file.

use crate::config::model::{Config, RouteConfig};
use crate::config::{ConfigError, ConfigErrors};
use crate::runtime::{Runtime, SharedState};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// What a reload changes, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub upstreams_added: Vec<String>,
    pub upstreams_removed: Vec<String>,
    pub upstreams_changed: Vec<String>,
    /// `upstream url`.
    pub servers_added: Vec<String>,
    pub servers_removed: Vec<String>,
    /// Sections whose settings changed: jwt_validation, api_keys, rate_limiting, cors,
    /// tracing, admin.
    pub settings_changed: Vec<String>,
    /// Settings that only take effect on restart (listener, workers, logging).
    pub needs_restart: Vec<String>,
}

impl Diff {
    pub fn between(old: &Config, new: &Config) -> Diff {
        let mut d = Diff::default();
        // By name: 10,000 routes are compared in linear time.
        let old_routes: std::collections::HashMap<&str, &RouteConfig> =
            old.routes.iter().map(|r| (r.name.as_str(), r)).collect();
        let new_names: std::collections::HashSet<&str> =
            new.routes.iter().map(|r| r.name.as_str()).collect();
        // The same route: equal in everything, its upstream compared by name (indexes shift
        // when upstreams are added or removed).
        let same = |o: &RouteConfig, r: &RouteConfig| {
            old.upstreams[o.upstream].name == new.upstreams[r.upstream].name
                && RouteConfig {
                    upstream: r.upstream,
                    ..o.clone()
                } == *r
        };
        for r in &new.routes {
            match old_routes.get(r.name.as_str()) {
                None => d.routes_added.push(r.name.clone()),
                Some(o) if !same(o, r) => d.routes_changed.push(r.name.clone()),
                Some(_) => {}
            }
        }
        for o in &old.routes {
            if !new_names.contains(o.name.as_str()) {
                d.routes_removed.push(o.name.clone());
            }
        }
        for u in &new.upstreams {
            let Some(o) = old.upstreams.iter().find(|o| o.name == u.name) else {
                d.upstreams_added.push(u.name.clone());
                d.servers_added
                    .extend(u.servers.iter().map(|s| format!("{} {}", u.name, s.url)));
                continue;
            };
            if format!("{o:?}") != format!("{u:?}") {
                d.upstreams_changed.push(u.name.clone());
            }
            for s in &u.servers {
                if !o.servers.iter().any(|x| x.url == s.url) {
                    d.servers_added.push(format!("{} {}", u.name, s.url));
                }
            }
            for s in &o.servers {
                if !u.servers.iter().any(|x| x.url == s.url) {
                    d.servers_removed.push(format!("{} {}", u.name, s.url));
                }
            }
        }
        for o in &old.upstreams {
            if !new.upstreams.iter().any(|u| u.name == o.name) {
                d.upstreams_removed.push(o.name.clone());
                d.servers_removed
                    .extend(o.servers.iter().map(|s| format!("{} {}", o.name, s.url)));
            }
        }
        let (a, b) = (&old.server, &new.server);
        let restart = [
            ("server.host", a.host != b.host),
            ("server.port", a.port != b.port),
            ("server.workers", a.workers != b.workers),
            (
                "server.tls",
                format!("{:?}", a.tls) != format!("{:?}", b.tls),
            ),
            ("server.h2c", a.h2c != b.h2c),
            ("server.keep_alive", a.keep_alive != b.keep_alive),
            (
                "server.max_connections",
                a.max_connections != b.max_connections,
            ),
            (
                "server.client_header_timeout",
                a.client_header_timeout != b.client_header_timeout,
            ),
            (
                "server.shutdown_timeout",
                a.shutdown_timeout != b.shutdown_timeout,
            ),
            (
                "logging",
                format!("{:?}", old.logging) != format!("{:?}", new.logging),
            ),
            (
                "admin.watch_config",
                old.admin.watch_config != new.admin.watch_config,
            ),
        ];
        // Compared through Debug (secrets print as redacted or as hashes; nothing of it is
        // shown, only the section names).
        let sections = [
            (
                "jwt_validation",
                format!("{:?}", old.jwt) != format!("{:?}", new.jwt),
            ),
            (
                "api_keys",
                format!("{:?}", old.api_keys) != format!("{:?}", new.api_keys),
            ),
            ("rate_limiting", old.rate_limiting != new.rate_limiting),
            ("cors", old.cors != new.cors),
            (
                "tracing",
                format!("{:?}", old.tracing) != format!("{:?}", new.tracing),
            ),
            (
                "admin",
                format!("{:?}", old.admin) != format!("{:?}", new.admin),
            ),
        ];
        d.settings_changed = sections
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(k, _)| k.to_string())
            .collect();
        d.needs_restart = restart
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(k, _)| k.to_string())
            .collect();
        d
    }

    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }
}

/// The outcome of the last reload attempt, for `/_kairos/status`.
#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    /// RFC 3339.
    pub at: String,
    pub result: &'static str,
    pub trigger: &'static str,
    pub duration_ms: f64,
    pub error: Option<String>,
}

/// A successful reload.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub diff: Diff,
    pub duration_ms: f64,
    /// SHA-256 of the config text now in effect.
    pub config_hash: String,
    /// The text was the same as the one in effect: nothing was rebuilt.
    pub unchanged: bool,
}

/// Runs `f` on the reload thread: one thread for all reload work (validation, building the
/// new runtime, persisting), so reloads are serialized, never run on a worker, and run at a
/// lower CPU priority (nice 19) than the workers: on a busy machine, config work yields to
/// traffic instead of taking time slices from it. Measured (benches/reload.sh, a 10,000-route
/// config, the gateway pinned to one saturated CPU, 10 reloads/s asked for): throughput
/// during reloads 0.60 of the steady rate at nice 0, 0.84 at nice 10, 0.92 at nice 19; the
/// price is that a reload waits for spare CPU (2.2 s under that saturation, 46 ms idle).
pub fn on_reload_thread<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> tokio::sync::oneshot::Receiver<R> {
    type Job = Box<dyn FnOnce() + Send>;
    static JOBS: std::sync::OnceLock<Option<std::sync::Mutex<std::sync::mpsc::Sender<Job>>>> =
        std::sync::OnceLock::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // A panic in one reload must not take the reload thread with it; the caller sees
        // the dropped answer.
        if let Ok(out) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let _ = tx.send(out);
        }
    });
    let sender = JOBS.get_or_init(|| {
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kairos-reload".into())
            .spawn(move || {
                lower_priority();
                while let Ok(job) = jobs_rx.recv() {
                    job();
                }
            })
            .ok()
            .map(|_| std::sync::Mutex::new(jobs_tx))
    });
    match sender {
        Some(s) => {
            if let Err(e) = s.lock().unwrap_or_else(|e| e.into_inner()).send(job) {
                // The thread is gone: run here rather than never.
                (e.0)();
            }
        }
        None => job(),
    }
    rx
}

/// Nice 19 for the calling thread (Linux applies setpriority to one thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread; no memory is shared.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 19) != 0 {
            tracing::debug!("could not lower the reload thread's priority");
        }
    }
}

/// Why a reload did not take effect (either way nothing changed).
#[derive(Debug)]
pub enum ReloadError {
    /// The config is invalid.
    Invalid(ConfigErrors),
    /// The config is valid but could not be written to the config file.
    Persist(PersistError),
}

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

impl SharedState {
    /// Reads, validates and applies the config file. `trigger` names the cause in logs.
    pub fn reload_file(&self, trigger: &'static str) -> Result<Applied, ConfigErrors> {
        let Some(path) = self.config_path() else {
            return Err(ConfigErrors {
                source_name: "<none>".into(),
                errors: vec![ConfigError::new(
                    "",
                    "the gateway runs without a config file (no --config): nothing to reload",
                )],
            });
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigErrors {
            source_name: path.display().to_string(),
            errors: vec![ConfigError::new(
                "",
                format!("cannot read config file: {e}"),
            )],
        });
        match text {
            Ok(text) => self
                .apply_text(&text, &path, trigger, None)
                .map_err(|e| match e {
                    ReloadError::Invalid(e) => e,
                    ReloadError::Persist(m) => ConfigErrors {
                        source_name: path.display().to_string(),
                        errors: vec![ConfigError::new("", m.to_string())],
                    },
                }),
            Err(e) => {
                self.record_failure(trigger, Instant::now(), &e.to_string());
                tracing::error!(
                    trigger,
                    "config reload failed; the running config stays in effect:\n{e}"
                );
                Err(e)
            }
        }
    }

    /// Validates `text` (as if it were the file at `path`) and applies it. `persist`, when
    /// given, runs after the new runtime is built and before it is swapped in; its failure
    /// (say, a full disk) leaves everything as it was.
    pub fn apply_text(
        &self,
        text: &str,
        path: &Path,
        trigger: &'static str,
        persist: Option<&dyn Fn() -> Result<(), PersistError>>,
    ) -> Result<Applied, ReloadError> {
        let _serial = self.reload_lock();
        let start = Instant::now();
        let hash = crate::base::hash::hash_text(text);
        // The text in effect again: the watcher seeing an editor's second write or our own
        // persist has nothing to do, and a PUT only writes the file (it may differ on disk).
        // An operator's SIGHUP or POST reload rebuilds anyway: files the config names (CA
        // bundles) may have changed.
        if hash == self.config_hash() && (trigger == "file" || persist.is_some()) {
            if let Some(Err(e)) = persist.map(|p| p()) {
                self.record_failure(trigger, start, &e.to_string());
                tracing::error!(
                    trigger,
                    error = e.to_string().as_str(),
                    "config not persisted"
                );
                return Err(ReloadError::Persist(e));
            }
            return Ok(Applied {
                diff: Diff::default(),
                duration_ms: 0.0,
                config_hash: hash,
                unchanged: true,
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let source = path.display().to_string();
        let built = crate::config::load_str(text, &source, base)
            .and_then(|config| {
                let old = self.load();
                let diff = Diff::between(&old.config, &config);
                Runtime::build_from(config, &self.metrics, Some(&old)).map(|rt| (rt, diff))
            })
            .map_err(ReloadError::Invalid)
            .and_then(|built| match persist.map(|p| p()) {
                Some(Err(e)) => Err(ReloadError::Persist(e)),
                _ => Ok(built),
            });
        match built {
            Ok((runtime, diff)) => {
                for w in &runtime.config.warnings {
                    tracing::warn!("config warning: {w}");
                }
                // The text first: /status and GET /config never show the old text with the
                // new runtime in effect.
                self.set_config_text(text, hash.clone());
                self.swap(runtime);
                let servers: Vec<(String, String)> = diff
                    .servers_removed
                    .iter()
                    .filter_map(|s| s.split_once(' '))
                    .map(|(u, s)| (u.to_string(), s.to_string()))
                    .collect();
                self.metrics
                    .forget(&diff.routes_removed, &diff.upstreams_removed, &servers);
                let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                self.metrics
                    .config_last_success
                    .set(crate::base::clock::unix_now());
                self.set_last_reload(LastReload {
                    at: crate::base::clock::rfc3339(SystemTime::now()),
                    result: "success",
                    trigger,
                    duration_ms,
                    error: None,
                });
                tracing::info!(
                    trigger,
                    duration_ms,
                    routes_added = ?diff.routes_added,
                    routes_removed = ?diff.routes_removed,
                    routes_changed = ?diff.routes_changed,
                    upstreams_added = ?diff.upstreams_added,
                    upstreams_removed = ?diff.upstreams_removed,
                    upstreams_changed = ?diff.upstreams_changed,
                    servers_added = ?diff.servers_added,
                    servers_removed = ?diff.servers_removed,
                    settings_changed = ?diff.settings_changed,
                    "config reloaded"
                );
                if diff.settings_changed.iter().any(|s| s == "admin") {
                    tracing::warn!(
                        "admin settings changed: admin API clients may need the new token"
                    );
                }
                if !diff.needs_restart.is_empty() {
                    tracing::warn!(
                        settings = ?diff.needs_restart,
                        "these settings changed but take effect only after a restart"
                    );
                }
                Ok(Applied {
                    diff,
                    duration_ms,
                    config_hash: hash,
                    unchanged: false,
                })
            }
            Err(ReloadError::Invalid(e)) => {
                let first = e.errors.first().map(|x| x.to_string()).unwrap_or_default();
                self.record_failure(trigger, start, &format!("{}: {first}", e.source_name));
                tracing::error!(
                    trigger,
                    errors = e.errors.len(),
                    "config reload failed; the running config stays in effect:\n{e}"
                );
                Err(ReloadError::Invalid(e))
            }
            Err(ReloadError::Persist(m)) => {
                self.record_failure(trigger, start, &m.to_string());
                tracing::error!(
                    trigger,
                    error = m.to_string().as_str(),
                    "config not persisted; nothing changed"
                );
                Err(ReloadError::Persist(m))
            }
        }
    }

    /// Validates `text` and returns what applying it would change, without applying it.
    pub fn dry_run(&self, text: &str, path: &Path) -> Result<Diff, ConfigErrors> {
        let base = path.parent().unwrap_or(Path::new("."));
        let config = crate::config::load_str(text, &path.display().to_string(), base)?;
        let old = self.load();
        // Validation covers what the runtime build would check; building one here would start
        // its background parts (the span exporter) for nothing.
        Ok(Diff::between(&old.config, &config))
    }

    fn record_failure(&self, trigger: &'static str, start: Instant, error: &str) {
        self.metrics
            .config_reloads
            .with_label_values(&["failure"])
            .inc();
        self.set_last_reload(LastReload {
            at: crate::base::clock::rfc3339(SystemTime::now()),
            result: "failure",
            trigger,
            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
            error: Some(error.to_string()),
        });
    }
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
                let done = on_reload_thread(move || st.reload_file("file").is_ok());
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
        let e = PersistError {
            path: "conf/gw.json".into(),
            error: std::io::Error::other("disk full"),
        };
        assert_eq!(
            e.to_string(),
            "cannot persist the config to conf/gw.json: disk full; the file and the running \
             config are unchanged"
        );
        let e = WatchError::Thread(std::io::Error::other("no threads"));
        assert_eq!(e.to_string(), "cannot start the config watcher: no threads");
    }
}
