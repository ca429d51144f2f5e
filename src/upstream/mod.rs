//! Upstreams at run time: each configured upstream with its servers' live state, its
//! balancer, health checkers, outlier detection, circuit breakers and retry budget.

pub mod balancer;
pub mod body;
pub mod breaker;
pub mod client;
pub mod health;
pub mod retry;
pub mod server;

use crate::config::model::UpstreamConfig;
use crate::observability::metrics::UpstreamSeries;
use balancer::{Balancer, ServerSpec};
use breaker::Admission;
use server::{AttemptResult, ServerState};
use std::sync::{Arc, OnceLock};

/// One upstream as the request path sees it.
pub struct Upstream {
    pub config: UpstreamConfig,
    pub balancer: Balancer,
    /// Live state of each server, in server order.
    pub servers: Vec<Arc<ServerState>>,
    pub budget: retry::RetryBudget,
    /// TLS settings used for `https://` servers of this upstream.
    pub tls: Arc<rustls::ClientConfig>,
    /// Connection-pool key of each server, in server order.
    pub pool_keys: Vec<u64>,
    pub metrics: UpstreamSeries,
    checkers: OnceLock<health::Checkers>,
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
    pub fn new_from(
        config: UpstreamConfig,
        tls: Arc<rustls::ClientConfig>,
        metrics: UpstreamSeries,
        previous: Option<&Upstream>,
    ) -> Self {
        let specs: Vec<ServerSpec<'_>> = config
            .servers
            .iter()
            .map(|s| ServerSpec {
                id: &s.url,
                weight: s.weight,
            })
            .collect();
        let balancer = Balancer::new(config.strategy, &specs);
        let servers = config
            .servers
            .iter()
            .map(|entry| {
                // Health is only kept while the same checks keep it current: a server marked
                // down by a check that a reload removes would stay down for good.
                previous
                    .filter(|p| {
                        p.config.circuit_breaker == config.circuit_breaker
                            && p.config.health_check == config.health_check
                    })
                    .and_then(|p| {
                        // The URL as written and the address it resolved to: the same server.
                        let i = p.config.servers.iter().position(|s| {
                            s.url == entry.url
                                && s.authority == entry.authority
                                && s.https == entry.https
                        })?;
                        p.servers.get(i).cloned()
                    })
                    .unwrap_or_else(|| Arc::new(ServerState::new(config.circuit_breaker.clone())))
            })
            .collect();
        let pool_keys = config
            .servers
            .iter()
            .map(|s| {
                crate::upstream::client::pool_key(
                    s.https,
                    &s.authority,
                    &tls,
                    config.max_response_header_size,
                )
            })
            .collect();
        Upstream {
            budget: retry::RetryBudget::new(&config.retries),
            config,
            balancer,
            servers,
            tls,
            pool_keys,
            metrics,
            checkers: OnceLock::new(),
        }
    }

    /// Starts the active health checks (once; a runtime that is only validated never does).
    pub fn start_health_checks(&self) {
        if let Some(cfg) = &self.config.health_check {
            self.checkers.get_or_init(|| {
                health::start(
                    &self.config.name,
                    cfg,
                    &self.config.servers,
                    &self.servers,
                    &self.tls,
                )
            });
        }
    }

    /// Records one attempt's result on server `idx`: averages, breaker, and the outlier
    /// detector, which may eject the server.
    pub fn record(
        &self,
        idx: usize,
        now: u64,
        admission: Admission,
        result: AttemptResult,
        latency_ns: u64,
    ) {
        let Some(server) = self.servers.get(idx) else {
            return;
        };
        let limits = self.config.outlier.as_ref().map_or((0, 0), |o| {
            (o.consecutive_gateway_failures, o.consecutive_5xx)
        });
        if server.record(now, admission, result, latency_ns, limits) {
            self.maybe_eject(idx, now);
        }
    }

    /// Ejects server `idx` unless that would take out more than the allowed share.
    fn maybe_eject(&self, idx: usize, now: u64) {
        let Some(o) = &self.config.outlier else {
            return;
        };
        let server = &self.servers[idx];
        if server.ejected(now) {
            return;
        }
        let max = self.servers.len() * o.max_ejection_percent as usize / 100;
        let ejected = self.servers.iter().filter(|s| s.ejected(now)).count();
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
            server = self.config.servers[idx].url,
            ejected_for_ms = length,
            "upstream server ejected after consecutive failures"
        );
        self.metrics.ejection(idx);
    }
}
