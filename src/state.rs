//! The one live state: config, router and upstreams, behind an atomic pointer. The proxy and
//! the admin endpoints read the same state; a reload builds a new one and swaps it whole, so a
//! request in flight finishes on the state it started with.

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::observability::metrics::Metrics;
use crate::observability::trace::Tracing;
use crate::proxy::router::Router;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Everything one request needs, built from one config.
pub struct Runtime {
    pub config: Config,
    pub router: Router,
    pub upstreams: Vec<Upstream>,
    /// Present when tracing is on.
    pub tracing: Option<Tracing>,
    pub auth: crate::auth::Auth,
    /// Present when anything is rate limited.
    pub ratelimit: Option<crate::ratelimit::RateLimiter>,
    /// Unique per runtime in the process: route indexes are only meaningful within one.
    pub generation: u64,
}

impl Runtime {
    /// Builds the runtime for a validated config.
    pub fn build(config: Config, metrics: &Metrics) -> Result<Self, ConfigErrors> {
        static GENERATION: AtomicU64 = AtomicU64::new(1);
        let router = Router::build(&config.routes).map_err(|errors| ConfigErrors {
            source_name: "routes".into(),
            errors,
        })?;
        let tracing = match &config.tracing {
            None => None,
            Some(t) => Some(
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
                        errors: vec![ConfigError::new("tracing.endpoint", e)],
                    })?,
            ),
        };
        let auth = crate::auth::Auth::build(&config).map_err(|e| ConfigErrors {
            source_name: "auth".into(),
            errors: vec![ConfigError::new("jwt_validation", e)],
        })?;
        let ratelimit =
            crate::ratelimit::RateLimiter::build(&config, metrics, None).map_err(|e| {
                ConfigErrors {
                    source_name: "rate_limiting".into(),
                    errors: vec![ConfigError::new("rate_limiting", e)],
                }
            })?;
        let default_tls = crate::proxy::forward::default_tls_config();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let tls = match &u.tls_roots {
                    None => default_tls.clone(),
                    Some(certs) => {
                        let mut roots = rustls::RootCertStore::empty();
                        roots.add_parsable_certificates(certs.iter().cloned());
                        Arc::new(crate::proxy::forward::tls_config_with_roots(roots))
                    }
                };
                {
                    let urls: Vec<&str> = u.servers.iter().map(|s| s.url.as_str()).collect();
                    Upstream::new(u.clone(), tls, metrics.upstream(&u.name, &urls))
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
}

impl SharedState {
    /// Builds the first runtime from a validated config.
    pub fn new(config: Config) -> Result<Self, ConfigErrors> {
        let metrics = Arc::new(Metrics::new());
        let runtime = Runtime::build(config, &metrics)?;
        runtime.start(&metrics);
        Ok(SharedState {
            live: ArcSwap::from_pointee(runtime),
            ready: AtomicBool::new(false),
            metrics,
        })
    }

    /// The current runtime; hold it for the whole request.
    pub fn load(&self) -> Arc<Runtime> {
        self.live.load_full()
    }

    /// Replaces the runtime; requests already running keep the old one.
    pub fn swap(&self, runtime: Runtime) {
        runtime.start(&self.metrics);
        self.live.store(Arc::new(runtime));
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
