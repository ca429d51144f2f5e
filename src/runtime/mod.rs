//! The one live state: config, router and upstreams, behind an atomic pointer. The proxy and
//! the admin endpoints read the same state; a reload builds a new one and swaps it whole, so a
//! request in flight finishes on the state it started with.

mod build;
pub mod diff;
pub mod persist;
pub mod reload;
pub mod store;
pub mod watch;
pub mod worker;

pub use build::Runtime;
pub use diff::Diff;
pub use persist::{persist, PersistError};
pub use watch::{watch, WatchError};
pub use worker::on_reload_thread;

use crate::config::{Config, ConfigErrors};
use crate::observability::metrics::Metrics;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Shared by every worker.
pub struct SharedState {
    live: ArcSwap<Runtime>,
    ready: AtomicBool,
    /// Outlives every runtime: counters keep counting across reloads.
    pub metrics: Arc<Metrics>,
    /// Traffic sampled every second from `metrics` (the admin UI's live view and history).
    pub stats: Arc<crate::observability::stats::Stats>,
    /// Held for the whole of a reload: reloads are serialized.
    reloading: Mutex<()>,
    /// The file the config came from (none in demo mode and for in-process tests).
    config_path: Option<PathBuf>,
    /// The config text in effect and its SHA-256.
    config_text: Mutex<(Arc<str>, String)>,
    last_reload: Mutex<Option<crate::runtime::reload::LastReload>>,
    /// The last [`reload::HISTORY_LEN`] reload attempts, the oldest first.
    reloads: Mutex<std::collections::VecDeque<reload::ReloadRecord>>,
    /// The `${NAME}`s a config sent to the admin API may reference: those of the text the
    /// gateway started from, and its `admin.allowed_env`.
    admin_env: std::collections::HashSet<String>,
    pub started: std::time::SystemTime,
    /// Replaced runtimes that requests still hold.
    retired: Arc<Mutex<Vec<Arc<Runtime>>>>,
    sweeping: Arc<AtomicBool>,
    /// Becomes true when a graceful shutdown begins (open WebSockets close before it ends).
    draining: tokio::sync::watch::Sender<bool>,
    /// The config store, when `cluster.config_store` is set.
    store: std::sync::OnceLock<Arc<store::ConfigStore>>,
}

impl SharedState {
    /// Builds the first runtime from a validated config.
    pub fn new(config: Config) -> Result<Self, ConfigErrors> {
        Self::with_source(config, None, "")
    }

    /// Builds the first runtime from a validated config read from `path` (none in demo mode),
    /// whose text was `text`: what reloads read and what the admin API shows.
    pub fn with_source(
        config: Config,
        path: Option<PathBuf>,
        text: &str,
    ) -> Result<Self, ConfigErrors> {
        let metrics = Arc::new(Metrics::new());
        let admin_env = crate::config::env_references(text)
            .into_iter()
            .map(|(_, name)| name)
            .chain(config.admin.allowed_env.iter().cloned())
            .collect();
        let runtime = Runtime::build(config, &metrics)?;
        runtime.start(&metrics);
        metrics
            .config_last_success
            .set(crate::base::clock::unix_now());
        let startup = reload::ReloadRecord {
            ts: crate::base::clock::rfc3339(std::time::SystemTime::now()),
            trigger: "startup",
            outcome: "applied",
            config_hash: Some(crate::base::hash::hash_text(text)),
            errors: None,
        };
        let stats = Arc::new(crate::observability::stats::Stats::default());
        crate::observability::stats::Stats::start(&stats, metrics.clone());
        Ok(SharedState {
            live: ArcSwap::from_pointee(runtime),
            ready: AtomicBool::new(false),
            metrics,
            stats,
            reloading: Mutex::new(()),
            config_path: path,
            config_text: Mutex::new((Arc::from(text), crate::base::hash::hash_text(text))),
            last_reload: Mutex::new(None),
            reloads: Mutex::new(std::collections::VecDeque::from([startup])),
            admin_env,
            started: std::time::SystemTime::now(),
            retired: Arc::default(),
            sweeping: Arc::default(),
            draining: tokio::sync::watch::channel(false).0,
            store: std::sync::OnceLock::new(),
        })
    }

    /// The config store, when the shared config comes from one.
    pub fn store(&self) -> Option<&Arc<store::ConfigStore>> {
        self.store.get()
    }

    pub(crate) fn set_store(&self, store: Arc<store::ConfigStore>) {
        let _ = self.store.set(store);
    }

    /// Whether a config sent to the admin API may reference `${name}`: a variable the file
    /// the gateway started from references, or one of its `admin.allowed_env`. With a config
    /// store, only `admin.allowed_env`: the instance's file then references its own secrets
    /// (the admin token, etcd's password), which a writer of the shared document must not
    /// be able to put into a route.
    pub fn admin_may_reference(&self, name: &str) -> bool {
        match self.store() {
            Some(_) => self
                .load()
                .config
                .admin
                .allowed_env
                .iter()
                .any(|n| n == name),
            None => self.admin_env.contains(name),
        }
    }

    /// The file the config came from, if any.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config_path.clone()
    }

    pub fn config_hash(&self) -> String {
        lock(&self.config_text).1.clone()
    }

    /// The config text in effect, as written (with its `${ENV}` references).
    pub fn config_text(&self) -> Arc<str> {
        lock(&self.config_text).0.clone()
    }

    /// The config text in effect and its SHA-256, read together.
    pub fn config_text_and_hash(&self) -> (Arc<str>, String) {
        lock(&self.config_text).clone()
    }

    /// Puts a runtime and its config text in effect together, under the text's lock: a reader
    /// of the text or its hash (`/_kairos/status`, `GET /_kairos/config`) sees the old pair or
    /// the new one, and once it sees the new text, the new runtime answers requests (a test
    /// that polled the status hash and then asked for a route caught the old runtime in the
    /// gap between the two when they were set one after the other).
    pub(crate) fn install(&self, text: &str, hash: String, runtime: Runtime) {
        let mut text_and_hash = lock(&self.config_text);
        *text_and_hash = (Arc::from(text), hash);
        self.swap(runtime);
        drop(text_and_hash);
    }

    pub(crate) fn reload_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.reloading)
    }

    pub fn last_reload(&self) -> Option<crate::runtime::reload::LastReload> {
        lock(&self.last_reload).clone()
    }

    /// The reload history, newest first.
    pub fn reload_history(&self) -> Vec<reload::ReloadRecord> {
        lock(&self.reloads).iter().rev().cloned().collect()
    }

    pub(crate) fn record_reload(&self, r: reload::ReloadRecord) {
        let mut h = lock(&self.reloads);
        if h.len() == reload::HISTORY_LEN {
            h.pop_front();
        }
        h.push_back(r);
    }

    pub(crate) fn set_last_reload(&self, r: crate::runtime::reload::LastReload) {
        *lock(&self.last_reload) = Some(r);
    }

    /// The current runtime; hold it for the whole request.
    pub fn load(&self) -> Arc<Runtime> {
        self.live.load_full()
    }

    /// Replaces the runtime; requests already running keep the old one. The old one is
    /// freed here or by a sweep on the background thread once its last request is done, never
    /// by a worker (freeing a large config takes milliseconds).
    pub fn swap(&self, runtime: Runtime) {
        runtime.start(&self.metrics);
        let old = self.live.swap(Arc::new(runtime));
        let mut retired = lock(&self.retired);
        retired.push(old);
        retired.retain(|r| Arc::strong_count(r) > 1);
        if !retired.is_empty() && !self.sweeping.swap(true, Ordering::AcqRel) {
            let (list, flag) = (self.retired.clone(), self.sweeping.clone());
            let sweep = async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    let mut l = lock(&list);
                    l.retain(|r| Arc::strong_count(r) > 1);
                    if l.is_empty() {
                        flag.store(false, Ordering::Release);
                        drop(l);
                        crate::base::memory::release_free_memory();
                        return;
                    }
                }
            };
            match crate::base::background::background() {
                Some(rt) => {
                    rt.spawn(sweep);
                }
                None => self.sweeping.store(false, Ordering::Release),
            }
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A graceful shutdown begins: not ready any more, and open WebSockets are told.
    pub fn begin_shutdown(&self) {
        self.set_ready(false);
        self.draining.send_replace(true);
    }

    /// Watches for the start of a graceful shutdown.
    pub fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining.subscribe()
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data is plain.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
