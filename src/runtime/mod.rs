//! The one live state: config, router and upstreams, behind an atomic pointer. The proxy and
//! the admin endpoints read the same state; a reload builds a new one and swaps it whole, so a
//! request in flight finishes on the state it started with.

pub mod reload;

use crate::config::router::Router;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::observability::metrics::Metrics;
use crate::observability::trace::Tracing;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Everything one request needs, built from one config.
pub struct Runtime {
    pub config: Config,
    pub router: Arc<Router>,
    pub upstreams: Vec<Upstream>,
    /// Present when tracing is on.
    pub tracing: Option<Arc<Tracing>>,
    pub auth: crate::edge::auth::Auth,
    /// Present when anything is rate limited.
    pub ratelimit: Option<crate::edge::ratelimit::RateLimiter>,
    /// Unique per runtime in the process: route indexes are only meaningful within one.
    pub generation: u64,
}

impl Runtime {
    /// Builds the runtime for a validated config.
    pub fn build(config: Config, metrics: &Metrics) -> Result<Self, ConfigErrors> {
        Self::build_from(config, metrics, None)
    }

    /// Builds the runtime for a validated config, carrying over from `previous` what keeps
    /// its identity: servers' live state (same upstream, URL, breaker and health-check
    /// settings), TLS client settings (and so the pooled connections keyed by them),
    /// rate-limit buckets (same scope, route and rate), the Redis connection, the JWT verifier
    /// (its JWKS and verified-token cache) and the span exporter.
    pub fn build_from(
        config: Config,
        metrics: &Metrics,
        previous: Option<&Runtime>,
    ) -> Result<Self, ConfigErrors> {
        static GENERATION: AtomicU64 = AtomicU64::new(1);
        let router = match &config.compiled_routes {
            Some(r) => r.clone(),
            None => Arc::new(
                Router::build(&config.routes).map_err(|errors| ConfigErrors {
                    source_name: "routes".into(),
                    errors,
                })?,
            ),
        };
        let query_param = |c: &Config| c.api_keys.as_ref().and_then(|k| k.query_param.clone());
        // The same tracing settings keep their exporter (a thread and its HTTP client).
        let kept_tracing = previous
            .filter(|p| {
                p.config.tracing == config.tracing && query_param(&p.config) == query_param(&config)
            })
            .and_then(|p| p.tracing.clone());
        let tracing = match (&config.tracing, kept_tracing) {
            (None, _) => None,
            (Some(_), Some(kept)) => Some(kept),
            (Some(t), None) => Some(Arc::new(
                Tracing::new(t, metrics)
                    .map(|t| {
                        t.redact_query_param(
                            config
                                .api_keys
                                .as_ref()
                                .and_then(|k| k.query_param.as_deref()),
                        )
                    })
                    .map_err(|e| ConfigErrors {
                        source_name: "tracing".into(),
                        errors: vec![ConfigError::new("tracing.endpoint", e.to_string())],
                    })?,
            )),
        };
        let kept_jwt = previous
            .filter(|p| p.config.jwt == config.jwt)
            .and_then(|p| p.auth.jwt.clone());
        let auth = crate::edge::auth::Auth::build(&config, kept_jwt).map_err(|e| ConfigErrors {
            source_name: "auth".into(),
            errors: vec![ConfigError::new("jwt_validation", e.to_string())],
        })?;
        let ratelimit = crate::edge::ratelimit::RateLimiter::build(
            &config,
            metrics,
            previous.and_then(|p| p.ratelimit.as_ref()),
        )
        .map_err(|e| ConfigErrors {
            source_name: "rate_limiting".into(),
            errors: vec![ConfigError::new("rate_limiting", e.to_string())],
        })?;
        let default_tls = crate::upstream::client::default_tls_config();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let prev =
                    previous.and_then(|p| p.upstreams.iter().find(|x| x.config.name == u.name));
                let tls = match (&u.tls_roots, prev) {
                    (None, _) => default_tls.clone(),
                    (Some(certs), Some(p)) if p.config.tls_roots.as_ref() == Some(certs) => {
                        p.tls.clone()
                    }
                    (Some(certs), _) => {
                        let mut roots = rustls::RootCertStore::empty();
                        roots.add_parsable_certificates(certs.iter().cloned());
                        Arc::new(crate::upstream::client::tls_config_with_roots(roots))
                    }
                };
                {
                    let urls: Vec<&str> = u.servers.iter().map(|s| s.url.as_str()).collect();
                    Upstream::new_from(u.clone(), tls, metrics.upstream(&u.name, &urls), prev)
                }
            })
            .collect();
        Ok(Runtime {
            config,
            router,
            upstreams,
            tracing,
            auth,
            ratelimit,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }
}

impl Runtime {
    /// Starts what a serving runtime runs in the background (health checks) and points the
    /// per-server gauges at its servers.
    pub fn start(&self, metrics: &Metrics) {
        self.auth.start();
        let mut watched = Vec::new();
        for u in &self.upstreams {
            u.start_health_checks();
            for (entry, state) in u.config.servers.iter().zip(&u.servers) {
                watched.push(crate::observability::metrics::WatchedServer {
                    upstream: u.config.name.clone(),
                    server: entry.url.clone(),
                    state: state.clone(),
                });
            }
        }
        metrics.watch_servers(watched);
    }
}

/// Shared by every worker.
pub struct SharedState {
    live: ArcSwap<Runtime>,
    ready: AtomicBool,
    /// Outlives every runtime: counters keep counting across reloads.
    pub metrics: Arc<Metrics>,
    /// Held for the whole of a reload: reloads are serialized.
    reloading: Mutex<()>,
    /// The file the config came from (none in demo mode and for in-process tests).
    config_path: Mutex<Option<PathBuf>>,
    /// The config text in effect and its SHA-256.
    config_text: Mutex<(Arc<str>, String)>,
    last_reload: Mutex<Option<crate::runtime::reload::LastReload>>,
    pub started: std::time::SystemTime,
    /// Replaced runtimes that requests still hold.
    retired: Arc<Mutex<Vec<Arc<Runtime>>>>,
    sweeping: Arc<AtomicBool>,
}

impl SharedState {
    /// Builds the first runtime from a validated config.
    pub fn new(config: Config) -> Result<Self, ConfigErrors> {
        let metrics = Arc::new(Metrics::new());
        let runtime = Runtime::build(config, &metrics)?;
        runtime.start(&metrics);
        metrics
            .config_last_success
            .set(crate::base::clock::unix_now());
        Ok(SharedState {
            live: ArcSwap::from_pointee(runtime),
            ready: AtomicBool::new(false),
            metrics,
            reloading: Mutex::new(()),
            config_path: Mutex::new(None),
            config_text: Mutex::new((Arc::from(""), String::new())),
            last_reload: Mutex::new(None),
            started: std::time::SystemTime::now(),
            retired: Arc::default(),
            sweeping: Arc::default(),
        })
    }

    /// Records the file the running config came from (what reloads read), if any, and its text.
    pub fn set_config_file(&self, path: Option<PathBuf>, text: &str) {
        *lock(&self.config_path) = path;
        self.set_config_text(text, crate::base::hash::hash_text(text));
    }

    pub fn config_path(&self) -> Option<PathBuf> {
        lock(&self.config_path).clone()
    }

    pub fn config_hash(&self) -> String {
        lock(&self.config_text).1.clone()
    }

    /// The config text in effect, as written (with its `${ENV}` references).
    pub fn config_text(&self) -> Arc<str> {
        lock(&self.config_text).0.clone()
    }

    pub(crate) fn set_config_text(&self, text: &str, hash: String) {
        *lock(&self.config_text) = (Arc::from(text), hash);
    }

    pub(crate) fn reload_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.reloading)
    }

    pub fn last_reload(&self) -> Option<crate::runtime::reload::LastReload> {
        lock(&self.last_reload).clone()
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
}

/// A poisoned lock only means another thread panicked while holding it; the data is plain.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
