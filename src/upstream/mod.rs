//! Upstreams at run time: each configured upstream with its servers and its balancer.
//! Health checks, the circuit breaker and discovery will live beside the balancer here.

pub mod balancer;

use crate::config::model::UpstreamConfig;
use crate::observability::metrics::UpstreamSeries;
use balancer::Balancer;
use std::sync::Arc;

/// One upstream as the request path sees it.
pub struct Upstream {
    pub config: UpstreamConfig,
    pub balancer: Balancer,
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
        let balancer = Balancer::new(&config);
        let pool_keys = config
            .servers
            .iter()
            .map(|s| crate::proxy::forward::pool_key(s.https, &s.authority, &tls))
            .collect();
        Upstream {
            config,
            balancer,
            tls,
            pool_keys,
            metrics,
        }
    }
}
