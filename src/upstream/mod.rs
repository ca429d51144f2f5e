//! Upstreams at run time: each configured upstream with its servers and its balancer.
//! Health checks, the circuit breaker and discovery will live beside the balancer here.

pub mod balancer;

use crate::config::model::UpstreamConfig;
use balancer::Balancer;
use std::sync::Arc;

/// One upstream as the request path sees it.
pub struct Upstream {
    pub config: UpstreamConfig,
    pub balancer: Balancer,
    /// TLS settings used for `https://` servers of this upstream.
    pub tls: Arc<rustls::ClientConfig>,
}

impl Upstream {
    pub fn new(config: UpstreamConfig, tls: Arc<rustls::ClientConfig>) -> Self {
        let balancer = Balancer::new(&config);
        Upstream {
            config,
            balancer,
            tls,
        }
    }
}
