//! The config store (`cluster.config_store`): the shared part of the config (routes,
//! upstreams, policies) is one JSON document in an etcd key; the instance's file gives the
//! rest. A task on the background runtime reads the key, then watches it from the revision
//! read (a compaction makes it read again), and applies every revision through the validated
//! reload path; an invalid document is refused and the last good one keeps serving. With etcd
//! unreachable the gateway keeps serving and reconnects with back-off (at most 5 s apart, ±20%).
//! Admin writes are a compare-and-swap on the key's revision ([`ConfigStore::write`]).

pub mod etcd;

use super::reload::{self, Applied, ReloadError};
use super::SharedState;
use crate::config::{ConfigError, ConfigErrors};
use etcd::{Etcd, EtcdError, WatchMsg, Written};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// First and longest wait between two attempts to reach etcd (each ±20%, so that instances
/// cut off together do not come back in step).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often a watching instance checks that etcd still answers (a frozen etcd keeps the
/// watch's connection open); a failed check drops the watch and reconnects.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// What `/_kairos/status` tells of the store.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStatus {
    /// The key's revision whose document runs here.
    pub config_revision: Option<i64>,
    /// The latest revision of the key seen (refused or not).
    pub store_revision: Option<i64>,
    /// "ok" or "unreachable".
    pub config_store: &'static str,
    /// The last problem: etcd unreachable, or the refused document's first error.
    pub last_error: Option<String>,
}

struct Inner {
    status: StoreStatus,
    /// The document in effect, as stored.
    document: Option<Arc<str>>,
    /// The instance's own file text (server, logging, admin, cluster).
    local: String,
    /// What was last logged: reachable or not (nothing before the first attempt).
    logged: Option<bool>,
}

/// The store of one gateway process.
pub struct ConfigStore {
    pub etcd: Etcd,
    /// The instance's config file (relative paths, error messages).
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl ConfigStore {
    /// The source name of a document in errors: `etcd key /kairos/config revision 42`.
    fn source(&self, revision: i64) -> String {
        format!("etcd key {} revision {revision}", self.etcd.key)
    }

    pub fn status(&self) -> StoreStatus {
        lock(&self.inner).status.clone()
    }

    /// The key's document and mod revision, read from etcd now (linearizable), what an edit
    /// starts from and its ETag; after a deletion of the key, the document in effect with
    /// revision 0 (the key absent); `None` before any document. From a thread that is not in
    /// an async runtime.
    pub fn current_document(&self) -> Result<Option<(Arc<str>, i64)>, EtcdError> {
        let read = self.etcd.get_blocking()?;
        Ok(match read.kv {
            Some(kv) => {
                let doc = kv.value.map_err(|why| {
                    EtcdError::Protocol(format!("revision {}: {why}", kv.mod_revision))
                })?;
                Some((Arc::from(doc), kv.mod_revision))
            }
            None => lock(&self.inner).document.clone().map(|d| (d, 0)),
        })
    }

    /// The instance's file text merged with the document in effect.
    pub fn merge_local(&self, local_text: &str) -> Result<String, ConfigErrors> {
        let errors = crate::config::cluster::local_errors(local_text);
        if !errors.is_empty() {
            return Err(ConfigErrors {
                source_name: self.path.display().to_string(),
                errors,
            });
        }
        let doc = lock(&self.inner).document.clone();
        crate::config::cluster::merge(local_text, doc.as_deref().unwrap_or("{}"), "etcd")
    }

    /// The instance's file changed (a reload of it took effect).
    pub fn set_local(&self, local_text: &str) {
        lock(&self.inner).local = local_text.to_string();
    }

    /// The config text made of this instance's file and `document`.
    pub fn merge(&self, document: &str, source: &str) -> Result<String, ConfigErrors> {
        let local = lock(&self.inner).local.clone();
        crate::config::cluster::merge(&local, document, source)
    }

    /// Whether etcd answered; a change is logged once (the cause with it), not every retry.
    fn set_reachable(&self, state: &SharedState, ok: bool, error: Option<String>) {
        let mut inner = lock(&self.inner);
        inner.status.config_store = if ok { "ok" } else { "unreachable" };
        let changed = inner.logged != Some(ok);
        inner.logged = Some(ok);
        if let Some(e) = &error {
            inner.status.last_error = Some(e.clone());
        }
        drop(inner);
        state.metrics.config_store_up.set(i64::from(ok));
        let key = self.etcd.key.as_str();
        match (changed, ok) {
            (true, true) => tracing::info!(key, "config store reachable"),
            (true, false) => tracing::warn!(
                key,
                error = error.as_deref().unwrap_or(""),
                "config store unreachable; serving the config in effect, reconnecting"
            ),
            (false, _) => {}
        }
    }

    fn saw(&self, state: &SharedState, revision: i64) {
        let mut inner = lock(&self.inner);
        let seen = inner.status.store_revision.unwrap_or(0).max(revision);
        inner.status.store_revision = Some(seen);
        state.metrics.config_store_revision.set(seen);
    }

    fn applied(&self, state: &SharedState, revision: i64, document: &str) {
        let mut inner = lock(&self.inner);
        inner.status.config_revision = Some(revision);
        inner.document = Some(Arc::from(document));
        inner.status.last_error = None;
        drop(inner);
        self.saw(state, revision);
        state.metrics.config_revision.set(revision);
    }

    /// Revision `revision` was refused for `error` (both shown together).
    fn refused(&self, state: &SharedState, revision: i64, error: String) {
        let mut inner = lock(&self.inner);
        inner.status.last_error = Some(error);
        let seen = inner.status.store_revision.unwrap_or(0).max(revision);
        inner.status.store_revision = Some(seen);
        state.metrics.config_store_revision.set(seen);
    }

    /// A problem that is not about a revision (an empty key).
    fn problem(&self, error: String) {
        lock(&self.inner).status.last_error = Some(error);
    }

    fn applied_revision(&self) -> i64 {
        lock(&self.inner).status.config_revision.unwrap_or(0)
    }

    /// Applies revision `revision` of the document (on the reload thread): refused when it
    /// is not newer than the one in effect, when it does not merge, when it references a
    /// variable the admin API may not, or when it is invalid.
    fn apply_revision(&self, state: &SharedState, document: &str, revision: i64) {
        if revision <= self.applied_revision() {
            self.saw(state, revision);
            return;
        }
        let source = self.source(revision);
        let merged = self.merge(document, &source).and_then(|text| {
            // The document's own references (the instance's file makes its own).
            let errors = env_errors(state, document);
            match errors.is_empty() {
                true => Ok(text),
                false => Err(ConfigErrors {
                    source_name: source.clone(),
                    errors,
                }),
            }
        });
        let result = match merged {
            Ok(text) => {
                // Recorded as the last step before the swap (nothing fails after it), so
                // that no one sees the new routes with the old revision.
                let record = || {
                    self.applied(state, revision, document);
                    Ok(())
                };
                reload::apply_named(
                    state,
                    &text,
                    &self.path,
                    &source,
                    "store",
                    Some(&record),
                    None,
                )
            }
            Err(e) => {
                let first = e.errors.first().map(|x| x.to_string()).unwrap_or_default();
                reload::record_failure(
                    state,
                    "store",
                    std::time::Instant::now(),
                    &format!("{source}: {first}"),
                );
                tracing::error!(
                    revision,
                    "config store document refused; the running config stays in effect:\n{e}"
                );
                Err(ReloadError::Invalid(e))
            }
        };
        match result {
            Ok(_) => tracing::info!(revision, "config store revision applied"),
            Err(ReloadError::Invalid(e)) => {
                let first = e.errors.first().map(|x| x.to_string()).unwrap_or_default();
                self.refused(
                    state,
                    revision,
                    format!("revision {revision} refused: {first}"),
                );
            }
            Err(e) => self.refused(
                state,
                revision,
                format!("revision {revision} not applied: {e:?}"),
            ),
        }
    }

    /// Writes `document` as the key's next revision if the key is still at `expected` (any
    /// revision when `None`), and applies it here: validated and built first, written to
    /// etcd, then swapped in (run on the reload thread). `Conflict` names the key's revision
    /// when another write came first; `Store` when etcd is unreachable.
    pub fn write(
        &self,
        state: &SharedState,
        document: &str,
        expected: Option<i64>,
    ) -> Result<(Applied, i64), ReloadError> {
        let source = "request body";
        let text = self.merge(document, source).map_err(ReloadError::Invalid)?;
        let revision = std::cell::Cell::new(0);
        let write = || match self.etcd.put_if_blocking(document, expected) {
            Ok(Written::Done(r)) => {
                revision.set(r);
                // The last step before the swap: nothing fails after it.
                self.applied(state, r, document);
                Ok(())
            }
            Ok(Written::Conflict(current)) => Err(ReloadError::Conflict(current)),
            Err(e @ EtcdError::Unknown(_)) => Err(ReloadError::StoreUnknown(e.to_string())),
            Err(e) => Err(ReloadError::Store(e.to_string())),
        };
        let result = reload::apply(state, &text, &self.path, "api", Some(&write), None);
        if let Err(ReloadError::Conflict(current)) = &result {
            self.saw(state, *current);
        }
        Ok((result?, revision.get()))
    }
}

/// The `${NAME}` references of a shared document that are not in the instance's
/// `admin.allowed_env`.
fn env_errors(state: &SharedState, text: &str) -> Vec<ConfigError> {
    crate::config::env_references(text)
        .into_iter()
        .filter(|(_, name)| !state.admin_may_reference(name))
        .map(|(path, name)| {
            ConfigError::new(
                path,
                format!("environment variable `{name}` may not be referenced by the shared config"),
            )
            .with_hint("list it in admin.allowed_env in each instance's file")
        })
        .collect()
}

/// Starts the config store of a gateway whose config has `cluster.config_store`: checks that
/// the instance file gives only its own members, then reads and watches the key on the
/// background runtime. Nothing to do without a config store.
pub fn start(
    state: &Arc<SharedState>,
    path: PathBuf,
    local_text: &str,
) -> Result<(), ConfigErrors> {
    let Some(cfg) = state.load().config.config_store.clone() else {
        return Ok(());
    };
    let errors = crate::config::cluster::local_errors(local_text);
    if !errors.is_empty() {
        return Err(ConfigErrors {
            source_name: path.display().to_string(),
            errors,
        });
    }
    let store = Arc::new(ConfigStore {
        etcd: Etcd::new(&cfg),
        path,
        inner: Mutex::new(Inner {
            status: StoreStatus {
                config_store: "unreachable",
                ..StoreStatus::default()
            },
            document: None,
            local: local_text.to_string(),
            logged: None,
        }),
    });
    state.set_store(store.clone());
    let Some(rt) = crate::base::background::background() else {
        return Err(ConfigErrors {
            source_name: "config store".into(),
            errors: vec![ConfigError::new(
                "cluster",
                "the background runtime did not start",
            )],
        });
    };
    let st = state.clone();
    rt.spawn(async move { follow(st, store).await });
    Ok(())
}

/// Reads the key, then watches it from the next revision, for as long as the process runs.
async fn follow(state: Arc<SharedState>, store: Arc<ConfigStore>) {
    let mut backoff = MIN_BACKOFF;
    // The client (its TLS files read) until it can be built.
    let client = loop {
        match store.etcd.client() {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "the config store client cannot be built; trying again");
                store.set_reachable(&state, false, Some(e.to_string()));
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    // The revision to watch from; none until the key is read (at start, after a compaction).
    let mut from: Option<i64> = None;
    loop {
        // Whether a watch was in place: the back-off starts over after a good connection.
        let mut watched = false;
        match follow_once(&state, &store, &client, &mut from, &mut watched).await {
            Ok(()) => backoff = MIN_BACKOFF,
            Err(e) => {
                store.set_reachable(&state, false, Some(e.to_string()));
                tracing::debug!(error = %e, "config store");
            }
        }
        if watched {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `d` give or take 20%.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// One read (when needed) and one watch, until the watch ends: `Ok` when it ended for a
/// reason that calls for an immediate re-read (a compaction).
async fn follow_once(
    state: &Arc<SharedState>,
    store: &Arc<ConfigStore>,
    client: &reqwest::Client,
    from: &mut Option<i64>,
    watched: &mut bool,
) -> Result<(), EtcdError> {
    let start = match *from {
        Some(r) => r,
        None => {
            let read = store.etcd.get(client).await?;
            store.set_reachable(state, true, None);
            match read.kv {
                Some(kv) => match kv.value {
                    Ok(doc) => apply(state, store, doc, kv.mod_revision).await,
                    Err(why) => undecodable(state, store, kv.mod_revision, &why),
                },
                None => {
                    store.problem(format!(
                        "the key {} is empty: write a config with `kairos-rs cluster bootstrap`",
                        store.etcd.key
                    ));
                    tracing::warn!(
                        key = store.etcd.key.as_str(),
                        "the config store key is empty"
                    );
                }
            }
            let next = read.revision + 1;
            *from = Some(next);
            next
        }
    };
    let mut watch = store.etcd.watch(client, start).await?;
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe.tick().await;
    loop {
        // Reading the stream is cancel-safe (a chunk not yet taken stays in the body).
        let msg = tokio::select! {
            msg = watch.next() => match msg {
                // A token etcd no longer accepts (etcd restarted, say): a new one next time.
                Err(EtcdError::Auth(e)) => {
                    store.etcd.forget_token();
                    return Err(EtcdError::Auth(e));
                }
                other => other?,
            },
            _ = probe.tick() => {
                // The watch's own endpoint: another one answering says nothing of this watch.
                if let Err(e) = store.etcd.probe_at(client, watch.endpoint()).await {
                    store.etcd.pass_over(watch.endpoint());
                    return Err(e);
                }
                continue;
            }
        };
        match msg {
            WatchMsg::Created => {
                *watched = true;
                store.set_reachable(state, true, None);
            }
            WatchMsg::Events(events) => {
                for (revision, value) in events {
                    *from = Some(revision + 1);
                    match value {
                        Some(Ok(doc)) => apply(state, store, doc, revision).await,
                        Some(Err(why)) => undecodable(state, store, revision, &why),
                        None => {
                            store.refused(
                                state,
                                revision,
                                format!(
                                    "the key {} was deleted at revision {revision}; serving the last config",
                                    store.etcd.key
                                ),
                            );
                            tracing::error!(
                                revision,
                                "the config store key was deleted; the running config stays in effect"
                            );
                        }
                    }
                }
            }
            WatchMsg::Compacted(revision) => {
                tracing::info!(
                    revision,
                    "config store compacted past the watch: reading the key again"
                );
                *from = None;
                return Ok(());
            }
            WatchMsg::Canceled(reason) => {
                // A member that lost its leader, say: the next watch starts elsewhere.
                store.etcd.pass_over(watch.endpoint());
                return Err(EtcdError::Unreachable(format!("watch canceled: {reason}")));
            }
        }
    }
}

/// Revision `revision` holds a value that cannot be a document (not UTF-8): refused like an
/// invalid one (counted as a failed reload, shown in the status); the watch goes on past it.
fn undecodable(state: &SharedState, store: &ConfigStore, revision: i64, why: &str) {
    let source = store.source(revision);
    reload::record_failure(
        state,
        "store",
        std::time::Instant::now(),
        &format!("{source}: {why}"),
    );
    tracing::error!(
        revision,
        "config store document refused ({why}); the running config stays in effect"
    );
    store.refused(
        state,
        revision,
        format!("revision {revision} refused: {why}"),
    );
}

/// Applies a revision on the reload thread and waits for it.
async fn apply(
    state: &Arc<SharedState>,
    store: &Arc<ConfigStore>,
    document: String,
    revision: i64,
) {
    let (st, s) = (state.clone(), store.clone());
    let _ = super::on_reload_thread(move || s.apply_revision(&st, &document, revision)).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_is_jittered_by_a_fifth() {
        let waits: Vec<Duration> = (0..200).map(|_| jitter(MAX_BACKOFF)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= MAX_BACKOFF.mul_f64(0.8) && *w <= MAX_BACKOFF.mul_f64(1.2)));
        assert!(waits.iter().any(|w| *w != waits[0]));
    }
}
