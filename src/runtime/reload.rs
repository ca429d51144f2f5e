//! Config reload: read and validate fully, build the new runtime next to the old one (carrying
//! over what keeps its identity), then swap it in whole. Reloads are serialized; a config
//! that fails anywhere changes nothing. Triggers: SIGHUP, `POST /_kairos/config/reload`,
//! `PUT /_kairos/config`, and a watcher on the config file.

use super::diff::Diff;
use super::persist::PersistError;
use super::{Runtime, SharedState};
use crate::config::{ConfigError, ConfigErrors};
use serde::Serialize;
use std::path::Path;
use std::time::{Instant, SystemTime};

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

/// Reload attempts `GET /_kairos/config/history` keeps (the newest).
pub const HISTORY_LEN: usize = 50;

/// One reload attempt as the reload history shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// RFC 3339.
    pub ts: String,
    /// `startup`, `file` (the watcher), `admin` (the admin API), `store` (the config store)
    /// or `signal` (SIGHUP).
    pub trigger: &'static str,
    /// `applied`, `refused` (nothing changed) or `unchanged` (the text in effect again).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<RecordedError>>,
}

/// A reason a reload was refused: where in the config, and what.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedError {
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Errors a record keeps at most (the first ones).
const RECORDED_ERRORS: usize = 20;

/// The history's name of a reload trigger.
fn history_trigger(trigger: &str) -> &'static str {
    match trigger {
        "startup" => "startup",
        "file" => "file",
        "store" => "store",
        "sighup" => "signal",
        _ => "admin",
    }
}

/// Adds a reload attempt to the state's history.
pub(crate) fn record(
    state: &SharedState,
    trigger: &str,
    outcome: &'static str,
    config_hash: Option<String>,
    errors: Option<Vec<RecordedError>>,
) {
    state.record_reload(ReloadRecord {
        ts: crate::base::clock::rfc3339(SystemTime::now()),
        trigger: history_trigger(trigger),
        outcome,
        config_hash,
        errors,
    });
}

fn recorded_errors(e: &ConfigErrors) -> Vec<RecordedError> {
    e.errors
        .iter()
        .take(RECORDED_ERRORS)
        .map(|x| RecordedError {
            path: x.path.clone(),
            line: x.line,
            message: x.message.clone(),
        })
        .collect()
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

/// Why a reload did not take effect (either way nothing changed).
#[derive(Debug)]
pub enum ReloadError {
    /// The config is invalid.
    Invalid(ConfigErrors),
    /// The config is valid but could not be written to the config file.
    Persist(PersistError),
    /// The config in effect is no longer the one the caller read (`If-Match`): its hash.
    Stale(String),
    /// The config store's key changed since the revision the caller read (a lost
    /// compare-and-swap): the key's revision now.
    Conflict(i64),
    /// The config store could not be written (unreachable); nothing changed.
    Store(String),
    /// The write was sent to the config store and no answer came (a timeout, a 5xx), and
    /// the key does not hold the document since: whether it was applied is unknown.
    StoreUnknown(String),
}

/// Reads, validates and applies the config file. `trigger` names the cause in logs.
pub fn from_file(state: &SharedState, trigger: &'static str) -> Result<Applied, ConfigErrors> {
    let Some(path) = state.config_path() else {
        return Err(ConfigErrors {
            source_name: "<none>".into(),
            errors: vec![ConfigError::new(
                "",
                "the gateway runs without a config file (no --config): nothing to reload",
            )],
        });
    };
    let file_text = crate::config::read_file(&path);
    // With a config store, the file gives the instance's own members; the shared document
    // in effect gives the rest.
    let store = state.store();
    let text = match (&file_text, store) {
        (Ok(t), Some(store)) => store.merge_local(t),
        _ => file_text.clone(),
    };
    match text {
        Ok(text) => {
            let result = apply(state, &text, &path, trigger, None, None);
            if let (Ok(_), Some(store), Ok(local)) = (&result, store, &file_text) {
                store.set_local(local);
            }
            result.map_err(|e| match e {
                ReloadError::Invalid(e) => e,
                ReloadError::Persist(m) => ConfigErrors {
                    source_name: path.display().to_string(),
                    errors: vec![ConfigError::new("", m.to_string())],
                },
                // A file reload sends no If-Match and writes to no store.
                ReloadError::Stale(h) => ConfigErrors {
                    source_name: path.display().to_string(),
                    errors: vec![ConfigError::new("", format!("the config changed to {h}"))],
                },
                ReloadError::Conflict(_) | ReloadError::Store(_) | ReloadError::StoreUnknown(_) => {
                    ConfigErrors {
                        source_name: path.display().to_string(),
                        errors: vec![ConfigError::new(
                            "",
                            "the config store was written meanwhile",
                        )],
                    }
                }
            })
        }
        Err(e) => {
            let span = reload_span(trigger);
            let _in = span.enter();
            span.record("outcome", "unreadable");
            span.record("otel.status_code", "ERROR");
            record_failure(state, trigger, Instant::now(), &e.to_string());
            record(state, trigger, "refused", None, Some(recorded_errors(&e)));
            tracing::error!(
                trigger,
                "config reload failed; the running config stays in effect:\n{e}"
            );
            Err(e)
        }
    }
}

/// The span of one reload (exported as `config.reload` when tracing is on); its log lines
/// carry its trace id.
fn reload_span(trigger: &'static str) -> tracing::Span {
    let span = tracing::info_span!(
        target: crate::observability::trace::ops::TARGET,
        "config.reload",
        trigger,
        outcome = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        "otel.status_code" = tracing::field::Empty,
    );
    crate::observability::trace::ops::record_ids(&span);
    span
}

/// Validates `text` (as if it were the file at `path`) and applies it. `persist`, when
/// given, runs after the new runtime is built and just before it is swapped in (the file
/// write, the config store's compare-and-swap, the store revision recorded); its failure
/// (say, a full disk, a lost race) leaves everything as it was. It runs also when the text
/// is the one in effect (nothing is rebuilt then). `if_match`, when given, lists the config
/// hashes the caller accepts as the one in effect (checked under the reload lock, so two
/// writers cannot both pass it).
pub fn apply(
    state: &SharedState,
    text: &str,
    path: &Path,
    trigger: &'static str,
    persist: Option<&dyn Fn() -> Result<(), ReloadError>>,
    if_match: Option<&[String]>,
) -> Result<Applied, ReloadError> {
    let source = path.display().to_string();
    apply_named(state, text, path, &source, trigger, persist, if_match)
}

/// As [`apply`], with errors naming `source` instead of the file (a config store's key and
/// revision); relative paths still resolve against `path`'s folder.
pub fn apply_named(
    state: &SharedState,
    text: &str,
    path: &Path,
    source: &str,
    trigger: &'static str,
    persist: Option<&dyn Fn() -> Result<(), ReloadError>>,
    if_match: Option<&[String]>,
) -> Result<Applied, ReloadError> {
    let span = reload_span(trigger);
    let result =
        span.in_scope(|| apply_in_span(state, text, (path, source), trigger, persist, if_match));
    let outcome = match &result {
        Ok(a) if a.unchanged => "unchanged",
        Ok(_) => "success",
        Err(ReloadError::Invalid(_)) => "invalid",
        Err(ReloadError::Persist(_)) => "persist_failed",
        Err(ReloadError::Stale(_)) | Err(ReloadError::Conflict(_)) => "stale",
        Err(ReloadError::Store(_)) | Err(ReloadError::StoreUnknown(_)) => "store_unavailable",
    };
    span.record("outcome", outcome);
    if matches!(
        result,
        Err(ReloadError::Invalid(_))
            | Err(ReloadError::Persist(_))
            | Err(ReloadError::Store(_))
            | Err(ReloadError::StoreUnknown(_))
    ) {
        span.record("otel.status_code", "ERROR");
    }
    result
}

fn apply_in_span(
    state: &SharedState,
    text: &str,
    (path, source): (&Path, &str),
    trigger: &'static str,
    persist: Option<&dyn Fn() -> Result<(), ReloadError>>,
    if_match: Option<&[String]>,
) -> Result<Applied, ReloadError> {
    let _serial = state.reload_lock();
    let start = Instant::now();
    if let Some(accepted) = if_match {
        let current = state.config_hash();
        if !accepted.contains(&current) {
            return Err(ReloadError::Stale(current));
        }
    }
    let hash = crate::base::hash::hash_text(text);
    // The text in effect again: the watcher seeing an editor's second write or our own
    // persist has nothing to do, and a PUT only writes the file (it may differ on disk).
    // An operator's SIGHUP or POST reload rebuilds anyway: files the config names (CA
    // bundles) may have changed.
    // A config store's revision with the text in effect (a document written back unchanged)
    // has nothing to rebuild either.
    if hash == state.config_hash() && (matches!(trigger, "file" | "store") || persist.is_some()) {
        if let Some(Err(e)) = persist.map(|p| p()) {
            return Err(persist_failed(state, trigger, start, e));
        }
        record(state, trigger, "unchanged", Some(hash.clone()), None);
        return Ok(Applied {
            diff: Diff::default(),
            duration_ms: 0.0,
            config_hash: hash,
            unchanged: true,
        });
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let built = crate::config::load_str(text, source, base)
        .and_then(|config| {
            let old = state.load();
            let diff = Diff::between(&old.config, &config);
            Runtime::build_from(config, &state.metrics, Some(&old)).map(|rt| (rt, diff))
        })
        .map_err(ReloadError::Invalid)
        .and_then(|built| match persist.map(|p| p()) {
            Some(Err(e)) => Err(e),
            _ => Ok(built),
        });
    match built {
        Ok((runtime, diff)) => Ok(commit(state, runtime, diff, text, hash, trigger, start)),
        Err(ReloadError::Invalid(e)) => {
            let first = e.errors.first().map(|x| x.to_string()).unwrap_or_default();
            record_failure(
                state,
                trigger,
                start,
                &format!("{}: {first}", e.source_name),
            );
            record(state, trigger, "refused", None, Some(recorded_errors(&e)));
            tracing::error!(
                trigger,
                errors = e.errors.len(),
                "config reload failed; the running config stays in effect:\n{e}"
            );
            Err(ReloadError::Invalid(e))
        }
        Err(e) => Err(persist_failed(state, trigger, start, e)),
    }
}

/// Records and logs a failed persist step (a file write, a store write); a lost race
/// (`Stale`, `Conflict`) is the caller's to report, not a failure of the gateway.
fn persist_failed(
    state: &SharedState,
    trigger: &'static str,
    start: Instant,
    e: ReloadError,
) -> ReloadError {
    let message = match &e {
        ReloadError::Persist(m) => m.to_string(),
        ReloadError::Store(m) | ReloadError::StoreUnknown(m) => m.clone(),
        ReloadError::Invalid(_) | ReloadError::Stale(_) | ReloadError::Conflict(_) => return e,
    };
    record_failure(state, trigger, start, &message);
    let error = RecordedError {
        path: String::new(),
        line: None,
        message: message.clone(),
    };
    record(state, trigger, "refused", None, Some(vec![error]));
    tracing::error!(
        trigger,
        error = message.as_str(),
        "config not persisted; nothing changed"
    );
    e
}

/// Validates `text` and returns what applying it would change, without applying it.
pub fn dry_run(state: &SharedState, text: &str, path: &Path) -> Result<Diff, ConfigErrors> {
    let base = path.parent().unwrap_or(Path::new("."));
    let config = crate::config::load_str(text, &path.display().to_string(), base)?;
    let old = state.load();
    // Validation covers what the runtime build would check; building one here would start
    // its background parts (the span exporter) for nothing.
    Ok(Diff::between(&old.config, &config))
}

pub(crate) fn record_failure(
    state: &SharedState,
    trigger: &'static str,
    start: Instant,
    error: &str,
) {
    state
        .metrics
        .config_reloads
        .with_label_values(&["failure"])
        .inc();
    state.set_last_reload(LastReload {
        at: crate::base::clock::rfc3339(SystemTime::now()),
        result: "failure",
        trigger,
        duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        error: Some(error.to_string()),
    });
}

/// Puts a built runtime in effect: the text and the runtime together (so /status and GET
/// /config never show one with the other), then the metrics of removed routes and servers
/// forgotten, and the reload recorded and logged.
fn commit(
    state: &SharedState,
    runtime: Runtime,
    diff: Diff,
    text: &str,
    hash: String,
    trigger: &'static str,
    start: Instant,
) -> Applied {
    for w in &runtime.config.warnings {
        tracing::warn!("config warning: {w}");
    }
    let tenants: Vec<String> = runtime
        .config
        .tenancy
        .iter()
        .flat_map(|t| &t.tenants)
        .map(|t| t.id.clone())
        .collect();
    state.install(text, hash.clone(), runtime);
    state.metrics.forget_tenants(&tenants);
    let servers: Vec<(String, String)> = diff
        .servers_removed
        .iter()
        .filter_map(|s| s.split_once(' '))
        .map(|(u, s)| (u.to_string(), s.to_string()))
        .collect();
    state
        .metrics
        .forget(&diff.routes_removed, &diff.upstreams_removed, &servers);
    let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    state
        .metrics
        .config_reloads
        .with_label_values(&["success"])
        .inc();
    state
        .metrics
        .config_last_success
        .set(crate::base::clock::unix_now());
    state.set_last_reload(LastReload {
        at: crate::base::clock::rfc3339(SystemTime::now()),
        result: "success",
        trigger,
        duration_ms,
        error: None,
    });
    record(state, trigger, "applied", Some(hash.clone()), None);
    crate::observability::events::config_applied(&hash);
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
        tracing::warn!("admin settings changed: admin API clients may need the new token");
    }
    if !diff.needs_restart.is_empty() {
        tracing::warn!(
            settings = ?diff.needs_restart,
            "these settings changed but take effect only after a restart"
        );
    }
    // The replaced runtime is freed by now unless a request still holds it (then the sweep
    // releases its memory), and so is the new config's parse garbage.
    crate::base::memory::release_free_memory();
    Applied {
        diff,
        duration_ms,
        config_hash: hash,
        unchanged: false,
    }
}
