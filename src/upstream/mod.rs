//! Upstreams at run time: each configured upstream with its servers and its balancer.
//! Health checks, the circuit breaker and discovery will live beside the balancer here.

pub mod balancer;
pub mod server;

use crate::config::model::UpstreamConfig;
use crate::observability::metrics::UpstreamSeries;
use balancer::{Balancer, ServerSpec};
use server::ServerState;
use std::sync::Arc;

/// One upstream as the request path sees it.
pub struct Upstream {
    pub config: UpstreamConfig,
    pub balancer: Balancer,
    /// Live state of each server, in server order.
    pub servers: Vec<std::sync::Arc<ServerState>>,
    /// TLS settings used for `https://` servers of this upstream.
    pub tls: Arc<rustls::ClientConfig>,
    /// Connection-pool key of each server, in server order.
    pub pool_keys: Vec<u64>,
    pub metrics: UpstreamSeries,
}

impl Upstream {
    pub fn new(
        config: UpstreamConfig,
        tls: Arc<rustls::ClientConfig>,
        metrics: UpstreamSeries,
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
        let servers = config.servers.iter().map(|_| Arc::default()).collect();
        let pool_keys = config
            .servers
            .iter()
            .map(|s| crate::proxy::forward::pool_key(s.https, &s.authority, &tls))
            .collect();
        Upstream {
            config,
            balancer,
            servers,
            tls,
            pool_keys,
            metrics,
        }
    }
}
