//! Consul discovery: the health endpoint (`GET /v1/health/service/NAME`) with blocking
//! queries. The first query answers at once; each next one passes the `X-Consul-Index` of
//! the last answer and `wait`, so Consul holds it until the service changes or the wait ends.
//! An index that goes backwards (a Consul restart, a snapshot restore) starts over from 0.

use super::{get, http_client, parse, Answer, DiscoveryError, Endpoint, Source, MAX_BODY};
use crate::config::model::DiscoverySource;
use serde::Deserialize;
use std::time::{Duration, Instant};

/// The least time between two queries that return the same index.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

pub struct Consul {
    client: Option<reqwest::Client>,
    /// The query without `index`: `.../v1/health/service/NAME?passing=true&tag=..&dc=..`.
    url: String,
    wait: Duration,
    token: Option<String>,
    /// The last answer's `X-Consul-Index`; 0 before the first.
    index: u64,
    https: bool,
}

/// One entry of the health endpoint's answer (only what is used).
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Node")]
    node: Node,
    #[serde(rename = "Service")]
    service: Service,
}

#[derive(Deserialize)]
struct Node {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct Service {
    /// Empty when the service uses its node's address.
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: u32,
}

impl Consul {
    pub fn new(cfg: &DiscoverySource, https: bool) -> Result<Consul, DiscoveryError> {
        let DiscoverySource::Consul {
            endpoint,
            service_name,
            passing,
            tag,
            datacenter,
            token,
            wait,
        } = cfg
        else {
            return Err(DiscoveryError::Setup("not a Consul source".into()));
        };
        let mut query = form_urlencoded::Serializer::new(String::new());
        if *passing {
            query.append_pair("passing", "true");
        }
        if let Some(t) = tag {
            query.append_pair("tag", t);
        }
        if let Some(dc) = datacenter {
            query.append_pair("dc", dc);
        }
        let service: String = form_urlencoded::byte_serialize(service_name.as_bytes()).collect();
        let url = format!("{endpoint}/v1/health/service/{service}?{}", query.finish());
        // Consul adds up to wait/16 of jitter to a blocking query.
        let timeout = *wait + *wait / 16 + Duration::from_secs(10);
        Ok(Consul {
            client: Some(http_client(timeout, None)?),
            url,
            wait: *wait,
            token: token
                .as_ref()
                .map(|t| String::from_utf8_lossy(&t.0).into_owned()),
            index: 0,
            https,
        })
    }
}

impl Source for Consul {
    async fn next(&mut self) -> Result<Answer, DiscoveryError> {
        let Some(client) = &self.client else {
            return Err(DiscoveryError::Setup("no HTTP client".into()));
        };
        let url = if self.index == 0 {
            self.url.clone()
        } else {
            format!(
                "{}&index={}&wait={}ms",
                self.url.trim_end_matches('?'),
                self.index,
                self.wait.as_millis()
            )
        };
        let mut headers = Vec::new();
        if let Some(t) = &self.token {
            headers.push(("X-Consul-Token", t.as_str()));
        }
        let started = Instant::now();
        let result = get(client, &url, &headers, MAX_BODY).await;
        let (head, body) = match result {
            Ok(x) => x,
            Err(e) => {
                // Start over with a plain query after an error.
                self.index = 0;
                return Err(e);
            }
        };
        let entries: Vec<Entry> = parse(&self.url, &body)?;
        let index = head
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        // Consul's rules for clients: an index that went backwards resets, and 0 is never
        // used for a blocking query.
        let before = self.index;
        self.index = if index < self.index { 0 } else { index.max(1) };
        // A blocking query that came back early without a newer index (a proxy that strips
        // X-Consul-Index, an agent that ignores `index`, an index that went back) must not
        // turn into a tight loop: at most one such query a second.
        if before != 0 && index <= before {
            let spent = started.elapsed();
            if spent < MIN_INTERVAL {
                tokio::time::sleep(MIN_INTERVAL - spent).await;
            }
        }
        let endpoints = entries
            .into_iter()
            .map(|e| Endpoint {
                priority: 0,
                host: if e.service.address.is_empty() {
                    e.node.address
                } else {
                    e.service.address
                },
                port: e.service.port,
                weight: e.service.weights.map_or(1, |w| w.passing.max(1)),
                https: self.https,
            })
            .filter(|e| !e.host.is_empty() && e.port != 0)
            .collect();
        Ok(Answer {
            endpoints,
            valid_for: Duration::ZERO,
        })
    }
}
