//! Eureka discovery: the application's instances from `GET {endpoint}/apps/{APP}`, then every
//! `refresh` the registry's recent changes from `GET {endpoint}/apps/delta` (ADDED, MODIFIED,
//! DELETED instances of this application). An instance's `weight` metadata (Spring Cloud's
//! convention) is its weight. The delta covers only the last few minutes, so a
//! `refresh` over a minute, and every tenth poll, fetch the application whole instead. Only
//! instances whose status is UP are used; each on its enabled port (http), or its secure
//! port (https) when that is the only one enabled or `scheme` is "https".

use super::{get, http_client, parse, Answer, DiscoveryError, Endpoint, Source, MAX_BODY};
use crate::config::model::DiscoverySource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Polls between two full fetches.
const FULL_EVERY: u32 = 10;

pub struct Eureka {
    client: Option<reqwest::Client>,
    endpoint: String,
    app: String,
    refresh: Duration,
    prefer_https: bool,
    /// Instances by id, from the last full fetch and the deltas since; `None` before the
    /// first full fetch.
    instances: Option<BTreeMap<String, Instance>>,
    polls: u32,
}

#[derive(Deserialize)]
struct AppDoc {
    application: App,
}

#[derive(Deserialize)]
struct DeltaDoc {
    applications: Apps,
}

#[derive(Deserialize)]
struct Apps {
    #[serde(default)]
    application: OneOrMany<App>,
}

#[derive(Deserialize)]
struct App {
    name: String,
    #[serde(default)]
    instance: OneOrMany<Instance>,
}

/// Eureka's JSON (XStream) writes a list of one as the element itself.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::Many(v) => v,
            OneOrMany::One(x) => vec![x],
        }
    }
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Instance {
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    host_name: String,
    #[serde(default)]
    ip_addr: String,
    #[serde(default)]
    status: String,
    port: Option<Port>,
    secure_port: Option<Port>,
    /// Free-form strings; `weight` (as Spring Cloud's weighted load balancer reads it) sets
    /// the instance's weight.
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    /// In deltas: ADDED, MODIFIED or DELETED.
    #[serde(default)]
    action_type: Option<String>,
}

#[derive(Deserialize, Clone)]
struct Port {
    #[serde(rename = "$")]
    number: u16,
    /// "true" or "false" (a string in Eureka's JSON; a bool is accepted too).
    #[serde(rename = "@enabled", default)]
    enabled: serde_json::Value,
}

impl Port {
    fn on(&self) -> bool {
        self.number != 0
            && match &self.enabled {
                serde_json::Value::String(s) => s == "true",
                serde_json::Value::Bool(b) => *b,
                _ => false,
            }
    }
}

impl Instance {
    /// The `weight` metadata (a string in Eureka's JSON, a number accepted too), 1 when
    /// absent or not a positive whole number.
    fn weight(&self) -> u32 {
        let w = self.metadata.as_ref().and_then(|m| match m.get("weight")? {
            serde_json::Value::String(s) => s.trim().parse::<u32>().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        });
        w.filter(|&w| w > 0).unwrap_or(1)
    }

    fn id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.host_name, self.ip_addr))
    }

    fn endpoint(&self, prefer_https: bool) -> Option<Endpoint> {
        if self.status != "UP" {
            return None;
        }
        let host = if self.ip_addr.is_empty() {
            self.host_name.clone()
        } else {
            self.ip_addr.clone()
        };
        let plain = self.port.as_ref().filter(|p| p.on()).map(|p| p.number);
        let secure = self
            .secure_port
            .as_ref()
            .filter(|p| p.on())
            .map(|p| p.number);
        let (port, https) = match (plain, secure) {
            (_, Some(s)) if prefer_https => (s, true),
            (Some(p), _) => (p, false),
            (None, Some(s)) => (s, true),
            (None, None) => return None,
        };
        (!host.is_empty()).then_some(Endpoint {
            priority: 0,
            host,
            port,
            weight: self.weight(),
            https,
        })
    }
}

impl Eureka {
    pub fn new(cfg: &DiscoverySource, https: bool) -> Result<Eureka, DiscoveryError> {
        let DiscoverySource::Eureka {
            endpoint,
            app,
            refresh,
        } = cfg
        else {
            return Err(DiscoveryError::Setup("not a Eureka source".into()));
        };
        Ok(Eureka {
            client: Some(http_client(Duration::from_secs(30), None)?),
            endpoint: endpoint.clone(),
            app: app.clone(),
            refresh: *refresh,
            prefer_https: https,
            instances: None,
            polls: 0,
        })
    }

    async fn full(
        &self,
        client: &reqwest::Client,
    ) -> Result<BTreeMap<String, Instance>, DiscoveryError> {
        let app: String = form_urlencoded::byte_serialize(self.app.as_bytes()).collect();
        let url = format!("{}/apps/{app}", self.endpoint);
        match get(client, &url, &[], MAX_BODY).await {
            Ok((_, body)) => {
                let doc: AppDoc = parse(&url, &body)?;
                Ok(doc
                    .application
                    .instance
                    .into_vec()
                    .into_iter()
                    .map(|i| (i.id(), i))
                    .collect())
            }
            // Eureka answers 404 for an application with no instance registered.
            Err(DiscoveryError::Status { status: 404, .. }) => Ok(BTreeMap::new()),
            Err(e) => Err(e),
        }
    }

    async fn delta(
        &self,
        client: &reqwest::Client,
        known: &mut BTreeMap<String, Instance>,
    ) -> Result<(), DiscoveryError> {
        let url = format!("{}/apps/delta", self.endpoint);
        let (_, body) = get(client, &url, &[], MAX_BODY).await?;
        let doc: DeltaDoc = parse(&url, &body)?;
        for app in doc.applications.application.into_vec() {
            if !app.name.eq_ignore_ascii_case(&self.app) {
                continue;
            }
            for i in app.instance.into_vec() {
                match i.action_type.as_deref() {
                    Some("DELETED") => {
                        known.remove(&i.id());
                    }
                    _ => {
                        known.insert(i.id(), i);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Source for Eureka {
    async fn next(&mut self) -> Result<Answer, DiscoveryError> {
        let Some(client) = self.client.clone() else {
            return Err(DiscoveryError::Setup("no HTTP client".into()));
        };
        let full = self.instances.is_none()
            || self.refresh > Duration::from_secs(60)
            || self.polls.is_multiple_of(FULL_EVERY);
        self.polls = self.polls.wrapping_add(1);
        let instances = if full {
            self.full(&client).await?
        } else {
            let mut known = self.instances.clone().unwrap_or_default();
            self.delta(&client, &mut known).await?;
            known
        };
        let endpoints = instances
            .values()
            .filter_map(|i| i.endpoint(self.prefer_https))
            .collect();
        self.instances = Some(instances);
        Ok(Answer {
            endpoints,
            valid_for: self.refresh,
        })
    }
}
