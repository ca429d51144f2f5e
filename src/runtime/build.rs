//! One runtime: everything a request needs, built from one validated config. A build next to
//! a running runtime carries over what keeps its identity, so a reload loses no warm state.

use crate::config::router::Router;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::edge::Edge;
use crate::observability::metrics::Metrics;
use crate::observability::trace::Tracing;
use crate::upstream::Upstream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Everything one request needs, built from one config.
pub struct Runtime {
    pub config: Config,
    pub router: Arc<Router>,
    pub upstreams: Vec<Upstream>,
    /// Present when tracing is on.
    pub tracing: Option<Arc<Tracing>>,
    /// CORS, authentication and rate limiting.
    pub edge: Edge,
    /// The response cache, when `caching` is configured.
    pub cache: Option<Arc<crate::cache::Cache>>,
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
        // The same tracing settings keep their exporter (a thread and its HTTP client).
        let kept_tracing = previous
            .filter(|p| p.config.tracing == config.tracing)
            .and_then(|p| p.tracing.clone());
        let tracing = match (&config.tracing, kept_tracing) {
            (None, _) => None,
            (Some(_), Some(kept)) => Some(kept),
            (Some(t), None) => Some(Arc::new(Tracing::new(t, metrics).map_err(|e| {
                ConfigErrors {
                    source_name: "tracing".into(),
                    errors: vec![ConfigError::new("tracing.endpoint", e.to_string())],
                }
            })?)),
        };
        let edge =
            Edge::build(&config, metrics, previous.map(|p| (&p.config, &p.edge))).map_err(|e| {
                ConfigErrors {
                    source_name: e.section().into(),
                    errors: vec![ConfigError::new(e.section(), e.to_string())],
                }
            })?;
        // The same cache settings keep the cache and what it holds.
        let cache = match &config.caching {
            None => None,
            Some(c) => match previous
                .and_then(|p| p.cache.as_ref())
                .filter(|kept| kept.config == *c)
            {
                Some(kept) => Some(kept.clone()),
                None => Some(Arc::new(
                    crate::cache::Cache::new(c.clone(), metrics.cache.clone()).map_err(|e| {
                        ConfigErrors {
                            source_name: "caching".into(),
                            errors: vec![ConfigError::new("caching.redis_url", e.to_string())],
                        }
                    })?,
                )),
            },
        };
        let default_tls = crate::upstream::client::default_tls_config();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let prev =
                    previous.and_then(|p| p.upstreams.iter().find(|x| x.config.name == u.name));
                let tls = match (&u.tls_roots, prev) {
                    (None, _) => {
                        crate::upstream::client::tls_for_protocol(default_tls.clone(), u.protocol)
                    }
                    (Some(certs), Some(p))
                        if p.config.tls_roots.as_ref() == Some(certs)
                            && p.config.protocol == u.protocol =>
                    {
                        p.tls.clone()
                    }
                    (Some(certs), _) => {
                        let mut roots = rustls::RootCertStore::empty();
                        roots.add_parsable_certificates(certs.iter().cloned());
                        crate::upstream::client::tls_for_protocol(
                            Arc::new(crate::upstream::client::tls_config_with_roots(roots)),
                            u.protocol,
                        )
                    }
                };
                // Listed servers' ejection counts read 0 before the first ejection.
                for s in &u.servers {
                    metrics
                        .upstream_ejections
                        .with_label_values(&[&u.name, &s.url]);
                }
                Upstream::new_from(u.clone(), tls, metrics.upstream(&u.name), prev)
            })
            .collect();
        Ok(Runtime {
            config,
            router,
            upstreams,
            tracing,
            edge,
            cache,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }
}

impl Runtime {
    /// Starts what a serving runtime runs in the background (health checks, discovery) and
    /// points the per-server gauges at its servers.
    pub fn start(&self, metrics: &Arc<Metrics>) {
        // The gateway's own operation spans go to this runtime's exporter from now on.
        crate::observability::trace::ops::activate(self.tracing.as_deref());
        self.edge.start();
        let mut watched = Vec::new();
        let mut lists: Vec<std::sync::Weak<dyn crate::observability::metrics::ServerList>> =
            Vec::new();
        for u in &self.upstreams {
            u.start(metrics);
            match u.discovery() {
                Some(d) => {
                    let weak: std::sync::Weak<crate::upstream::set::Dynamic> = Arc::downgrade(d);
                    lists.push(weak);
                }
                None => {
                    let set = u.set();
                    for (entry, state) in set.entries.iter().zip(&set.states) {
                        watched.push(crate::observability::metrics::WatchedServer {
                            upstream: u.config.name.clone(),
                            server: entry.url.clone(),
                            state: state.clone(),
                        });
                    }
                }
            }
        }
        metrics.watch_servers(watched, lists);
    }
}
