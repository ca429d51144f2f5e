//! Upstreams at run time: each configured upstream with its servers' live state, its
//! balancer, health checkers, outlier detection, circuit breakers and retry budget. Its
//! servers are listed in the config or found by a discovery source ([`discovery`]); either
//! way a request works on one [`set::ServerSet`].

pub mod balancer;
pub mod body;
pub mod breaker;
pub mod client;
pub mod discovery;
pub mod h1;
pub mod h2;
pub mod health;
pub mod retry;
pub mod server;
pub mod set;

use crate::config::model::UpstreamConfig;
use crate::observability::metrics::{Metrics, UpstreamSeries};
use breaker::Admission;
use server::AttemptResult;
use set::{Before, Dynamic, ServerSet, SetRef};
use std::sync::{Arc, OnceLock};

/// Where an upstream's servers come from. The listed set stays inline (one per upstream):
/// the request path reaches it without another pointer hop.
#[allow(clippy::large_enum_variant)]
enum Servers {
    /// Listed in the config: one set for the runtime's life.
    Listed(ServerSet),
    /// Found by discovery: the current set, replaced as the source changes.
    Discovered(Arc<Dynamic>),
}

/// One upstream as the request path sees it.
pub struct Upstream {
    pub config: UpstreamConfig,
    servers: Servers,
    pub budget: retry::RetryBudget,
    /// TLS settings used for `https://` servers of this upstream.
    pub tls: Arc<rustls::ClientConfig>,
    pub metrics: UpstreamSeries,
    checkers: OnceLock<Arc<health::Checkers>>,
}

impl Upstream {
    pub fn new(
        config: UpstreamConfig,
        tls: Arc<rustls::ClientConfig>,
        metrics: UpstreamSeries,
    ) -> Self {
        Self::new_from(config, tls, metrics, None)
    }

    /// As [`Upstream::new`], keeping the live state (health, circuit, ejection, latency) of
    /// every server `previous` had under the same URL, breaker and health-check settings: a
    /// reload does not forget what the gateway learned about a server that did not change.
    /// A discovered upstream that follows the same source keeps its servers and its watcher;
    /// one that follows another source keeps the servers it had until its first answer.
    pub fn new_from(
        config: UpstreamConfig,
        tls: Arc<rustls::ClientConfig>,
        metrics: UpstreamSeries,
        previous: Option<&Upstream>,
    ) -> Self {
        // Health is only kept while the same checks keep it current: a server marked down by
        // a check that a reload removes would stay down for good.
        let keep_state = previous.is_some_and(|p| {
            p.config.circuit_breaker == config.circuit_breaker
                && p.config.health_check == config.health_check
        });
        let before = previous.map(|p| match &p.servers {
            Servers::Listed(s) => Before::Listed(s),
            Servers::Discovered(d) => Before::Discovered(d),
        });
        let servers = if config.discovery.is_some() {
            Servers::Discovered(Arc::new(Dynamic::new(
                &config,
                tls.clone(),
                before,
                keep_state,
            )))
        } else {
            // Servers that were discovered before keep their state too when listed now.
            let prev = before.filter(|_| keep_state).map(|b| match b {
                Before::Listed(s) => SetRef::Listed(s),
                Before::Discovered(d) => SetRef::Discovered(d.load()),
            });
            Servers::Listed(
                ServerSet::build(
                    &config,
                    config.servers.clone(),
                    Vec::new(),
                    &tls,
                    prev.as_deref(),
                )
                .0,
            )
        };
        Upstream {
            budget: retry::RetryBudget::new(&config.retries),
            config,
            servers,
            tls,
            metrics,
            checkers: OnceLock::new(),
        }
    }

    /// The servers for one request: the listed set, or the discovered set in effect now.
    #[inline]
    pub fn set(&self) -> SetRef<'_> {
        match &self.servers {
            Servers::Listed(s) => SetRef::Listed(s),
            Servers::Discovered(d) => SetRef::Discovered(d.load()),
        }
    }

    /// The discovery state of a discovered upstream (`None` for listed servers).
    pub fn discovery(&self) -> Option<&Arc<Dynamic>> {
        match &self.servers {
            Servers::Discovered(d) => Some(d),
            Servers::Listed(_) => None,
        }
    }

    /// A discovered upstream that has no servers yet and whose source has neither answered
    /// nor failed: the gateway is not ready while one does (a rollout must not send traffic
    /// to an instance whose upstreams are still empty). Servers kept across a reload, a
    /// first answer (even an empty one) or a first failure end the wait.
    pub fn awaits_discovery(&self) -> bool {
        let Servers::Discovered(d) = &self.servers else {
            return false;
        };
        if !d.load().is_empty() {
            return false;
        }
        let snap = d.watcher().map(|w| w.snapshot()).unwrap_or_default();
        snap.endpoints.is_none() && snap.error.is_none()
    }

    /// Where this upstream's servers come from: "static" or the discovery type.
    pub fn source(&self) -> &'static str {
        self.config
            .discovery
            .as_ref()
            .map_or("static", |d| d.kind())
    }

    /// Starts what runs in the background for this upstream (once; a runtime that is only
    /// validated never does): the active health checks and, for a discovered upstream, the
    /// discovery watcher and the task that applies its answers.
    pub fn start(&self, metrics: &Arc<Metrics>) {
        let checkers = self.config.health_check.as_ref().map(|cfg| {
            self.checkers
                .get_or_init(|| {
                    let c = Arc::new(health::Checkers::new(
                        &self.config.name,
                        cfg,
                        &self.tls,
                        self.config.protocol,
                    ));
                    let set = self.set();
                    c.watch(&set.entries, &set.states);
                    c
                })
                .clone()
        });
        if let Servers::Discovered(d) = &self.servers {
            d.start(metrics, checkers);
        }
    }

    /// Records one attempt's result on server `idx`: averages, breaker, and the outlier
    /// detector, which may eject the server.
    pub fn record(
        &self,
        set: &ServerSet,
        idx: usize,
        now: u64,
        admission: Admission,
        result: AttemptResult,
        latency_ns: u64,
    ) {
        let Some(server) = set.states.get(idx) else {
            return;
        };
        let limits = self.config.outlier.as_ref().map_or((0, 0), |o| {
            (o.consecutive_gateway_failures, o.consecutive_5xx)
        });
        if server.record(now, admission, result, latency_ns, limits) {
            self.maybe_eject(set, idx, now);
        }
    }

    /// Ejects server `idx` unless that would take out more than the allowed share.
    fn maybe_eject(&self, set: &ServerSet, idx: usize, now: u64) {
        let Some(o) = &self.config.outlier else {
            return;
        };
        let server = &set.states[idx];
        if server.ejected(now) {
            return;
        }
        let max = set.states.len() * o.max_ejection_percent as usize / 100;
        let ejected = set.states.iter().filter(|s| s.ejected(now)).count();
        if ejected >= max {
            return;
        }
        let base = o.base_ejection_time.as_millis() as u64;
        // A server that stayed in for the longest ejection since its last one starts over.
        if server.ejected_until() + o.max_ejection_time.as_millis() as u64 <= now {
            server.reset_ejections();
        }
        let factor = u64::from(server.ejections()) + 1;
        let length = (base * factor).min(o.max_ejection_time.as_millis() as u64);
        server.eject(now + length);
        tracing::warn!(
            upstream = self.config.name,
            server = set.entries[idx].url,
            ejected_for_ms = length,
            "upstream server ejected after consecutive failures"
        );
        self.metrics.ejection(&set.entries[idx].url);
        let (name, url) = (self.config.name.clone(), set.entries[idx].url.clone());
        let detail = format!("for {length} ms after consecutive failures");
        crate::observability::events::upstream(&name, &url, "ejected", Some(&detail));
        // The end of the ejection, as an event too (unless a health check ended it earlier,
        // or a later ejection extended it).
        if let Some(rt) = crate::base::background::background() {
            let server = server.clone();
            let until = now + length;
            rt.spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(length)).await;
                if server.ejected_until() == until {
                    let detail = "the ejection time passed";
                    crate::observability::events::upstream(&name, &url, "returned", Some(detail));
                }
            });
        }
    }
}
