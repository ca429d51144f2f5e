//! DNS discovery (hickory-resolver): A or AAAA records with the configured port, or SRV
//! records with their own port, weight and priority (every priority is kept: the upstream
//! uses the lowest one with an available server, as RFC 2782 asks; target names are resolved
//! to addresses, and a target without any is skipped: an error only when every target is
//! without one or a lookup fails for another reason). The answer is kept for its
//! TTL, and never longer than `refresh`; the resolver's cache is capped the same way.

use super::{Answer, DiscoveryError, Endpoint, Source};
use crate::config::model::{DiscoverySource, DnsRecord};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::time::{Duration, Instant};

pub struct Dns {
    resolver: TokioResolver,
    name: String,
    record: DnsRecord,
    port: u16,
    refresh: Duration,
    https: bool,
}

impl Dns {
    pub fn new(cfg: &DiscoverySource, https: bool) -> Result<Dns, DiscoveryError> {
        let DiscoverySource::Dns {
            name,
            record,
            port,
            resolvers,
            refresh,
        } = cfg
        else {
            return Err(DiscoveryError::Setup("not a DNS source".into()));
        };
        let setup = |e: NetError| DiscoveryError::Dns {
            name: name.clone(),
            reason: format!("resolver setup: {e}"),
        };
        let mut builder = if resolvers.is_empty() {
            TokioResolver::builder_tokio().map_err(setup)?
        } else {
            let servers = resolvers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for c in &mut ns.connections {
                        c.port = addr.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        // The cache never serves an answer older than `refresh`.
        opts.positive_max_ttl = Some(*refresh);
        opts.negative_max_ttl = Some(*refresh);
        let resolver = builder.build().map_err(setup)?;
        Ok(Dns {
            resolver,
            name: name.clone(),
            record: *record,
            port: *port,
            refresh: *refresh,
            https,
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> DiscoveryError {
        DiscoveryError::Dns {
            name: self.name.clone(),
            reason: e.to_string(),
        }
    }

    /// A/AAAA: each address with the configured port.
    async fn addresses(&self) -> Result<Answer, DiscoveryError> {
        let rtype = match self.record {
            DnsRecord::Aaaa => RecordType::AAAA,
            _ => RecordType::A,
        };
        let lookup = match self.resolver.lookup(self.name.as_str(), rtype).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                return Ok(Answer {
                    endpoints: Vec::new(),
                    valid_for: self.refresh,
                })
            }
            Err(e) => return Err(self.error(e)),
        };
        let endpoints = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .map(|host| Endpoint {
                priority: 0,
                host,
                port: self.port,
                weight: 1,
                https: self.https,
            })
            .collect();
        Ok(Answer {
            endpoints,
            valid_for: self.ttl(lookup.valid_until()),
        })
    }

    /// SRV: every target, each resolved to its addresses, with its priority.
    async fn services(&self) -> Result<Answer, DiscoveryError> {
        let lookup = match self
            .resolver
            .lookup(self.name.as_str(), RecordType::SRV)
            .await
        {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                return Ok(Answer {
                    endpoints: Vec::new(),
                    valid_for: self.refresh,
                })
            }
            Err(e) => return Err(self.error(e)),
        };
        let mut valid_until = lookup.valid_until();
        let srvs: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(s.clone()),
                _ => None,
            })
            // RFC 2782: a target of "." means the service is decidedly not available.
            .filter(|s| !s.target.is_root())
            .collect();
        let mut endpoints = Vec::new();
        let mut missing = Vec::new();
        for srv in &srvs {
            let ips = match self.resolver.lookup_ip(srv.target.clone()).await {
                Ok(ips) => ips,
                // A target without addresses (removed before its SRV record, a typo) is
                // skipped, as a client of the SRV record would; the others still serve.
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    missing.push(srv.target.to_string());
                    continue;
                }
                Err(e) => return Err(self.error(format!("target {}: {e}", srv.target))),
            };
            valid_until = valid_until.min(ips.valid_until());
            for ip in ips.iter() {
                endpoints.push(Endpoint {
                    priority: srv.priority,
                    host: ip.to_string(),
                    port: srv.port,
                    // Weight 0 asks for very little traffic (RFC 2782); 1 is the least here.
                    weight: u32::from(srv.weight).max(1),
                    https: self.https,
                });
            }
        }
        if !missing.is_empty() {
            if missing.len() == srvs.len() {
                return Err(self.error(format!(
                    "no SRV target has an address: {}",
                    missing.join(", ")
                )));
            }
            tracing::debug!(name = self.name, targets = ?missing, "SRV targets without an address skipped");
        }
        Ok(Answer {
            endpoints,
            valid_for: self.ttl(valid_until),
        })
    }

    /// Time until the answer expires, within 1 s ..= `refresh` (a TTL of 0 must not turn
    /// into a busy loop).
    fn ttl(&self, valid_until: Instant) -> Duration {
        valid_until
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_secs(1).min(self.refresh), self.refresh)
    }
}

impl Source for Dns {
    async fn next(&mut self) -> Result<Answer, DiscoveryError> {
        match self.record {
            DnsRecord::Srv => self.services().await,
            DnsRecord::A | DnsRecord::Aaaa => self.addresses().await,
        }
    }
}
