//! Config reload: read and validate fully, build the new runtime next to the old one (carrying
//! over what keeps its identity), then swap it in whole. Reloads are serialized; a config
//! that fails anywhere changes nothing. Triggers: SIGHUP, `POST /_kairos/config/reload`,
//! `PUT /_kairos/config`, and a watcher on the config file.

use crate::config::model::{Config, RouteConfig};
use crate::config::{ConfigError, ConfigErrors};
use crate::state::{Runtime, SharedState};
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
        ];
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
        let _ = tx.send(f());
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

/// SHA-256 of config text, hex.
pub fn hash_text(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
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
            Ok(text) => self.apply_text(&text, &path, trigger, None),
            Err(e) => {
                self.record_failure(trigger, Instant::now(), &e);
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
        persist: Option<&dyn Fn() -> Result<(), String>>,
    ) -> Result<Applied, ConfigErrors> {
        let _serial = self.reload_lock();
        let start = Instant::now();
        let hash = hash_text(text);
        if hash == self.config_hash() {
            // An editor's second write, or our own persist seen by the watcher.
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
            .and_then(|built| match persist.map(|p| p()) {
                Some(Err(e)) => Err(ConfigErrors {
                    source_name: source.clone(),
                    errors: vec![ConfigError::new("", e)],
                }),
                _ => Ok(built),
            });
        match built {
            Ok((runtime, diff)) => {
                for w in &runtime.config.warnings {
                    tracing::warn!("config warning: {w}");
                }
                self.swap(runtime);
                self.set_config_text(text, hash.clone());
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
                self.metrics.config_last_success.set(unix_now());
                self.set_last_reload(LastReload {
                    at: crate::admin::rfc3339(SystemTime::now()),
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
                    "config reloaded"
                );
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
            Err(e) => {
                self.record_failure(trigger, start, &e);
                Err(e)
            }
        }
    }

    /// Validates `text` and returns what applying it would change, without applying it.
    pub fn dry_run(&self, text: &str, path: &Path) -> Result<Diff, ConfigErrors> {
        let base = path.parent().unwrap_or(Path::new("."));
        let config = crate::config::load_str(text, &path.display().to_string(), base)?;
        let old = self.load();
        let diff = Diff::between(&old.config, &config);
        // Everything the runtime build checks too (e.g. the tracing endpoint), without
        // starting anything.
        Runtime::build(config, &crate::observability::metrics::Metrics::new())?;
        Ok(diff)
    }

    fn record_failure(&self, trigger: &'static str, start: Instant, e: &ConfigErrors) {
        self.metrics
            .config_reloads
            .with_label_values(&["failure"])
            .inc();
        let first = e.errors.first().map(|x| x.to_string()).unwrap_or_default();
        self.set_last_reload(LastReload {
            at: crate::admin::rfc3339(SystemTime::now()),
            result: "failure",
            trigger,
            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
            error: Some(format!("{}: {first}", e.source_name)),
        });
        tracing::error!(
            trigger,
            errors = e.errors.len(),
            "config reload failed; the running config stays in effect:\n{e}"
        );
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes `text` to `path` atomically: a temp file in the same directory, fsync, then rename
/// over the old file, whose previous content is kept as `<path>.bak`. On any failure the old
/// file is untouched.
pub fn persist(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.json".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if path.exists() {
            std::fs::copy(path, dir.join(format!("{name}.bak")))?;
        }
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!(
            "cannot persist the config to {}: {e}; the file and the running config are unchanged",
            path.display()
        )
    })
}

/// Watches the config file and reloads when it changes. Editors that write a temp file and
/// rename it, or write in several steps, are handled by watching the directory and waiting
/// for 200 ms without events; a half-written file fails validation and changes nothing, and
/// the write that completes it triggers again.
pub fn watch(state: std::sync::Arc<SharedState>, path: PathBuf) -> Result<(), String> {
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
    .map_err(|e| format!("cannot watch the config file: {e}"))?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
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
        .map_err(|e| format!("cannot start the config watcher: {e}"))?;
    Ok(())
}
