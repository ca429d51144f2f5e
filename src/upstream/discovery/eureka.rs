//! Eureka discovery: the application's instances from `GET {endpoint}/apps/{APP}`, then every
//! `refresh` the registry's recent changes from `GET {endpoint}/apps/delta` (ADDED, MODIFIED,
//! DELETED instances of this application). An instance's `weight` metadata (Spring Cloud's
//! convention) is its weight. The delta covers only the last few minutes, so a
//! `refresh` over a minute, every tenth poll, the first poll after a failed one and any poll
//! over a minute after the last success fetch the application whole instead (a delta missed
//! during an outage is lost for good). A 404 for the application means "no instance" only
//! from a registry that has answered (its delta answers 200), not from a wrong `endpoint`. Only
//! instances whose status is UP are used; each on its enabled port (http), or its secure
//! port (https) when that is the only one enabled or `scheme` is "https".

use super::{get, http_client, parse, Answer, DiscoveryError, Endpoint, Source, MAX_BODY};
use crate::config::model::DiscoverySource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Polls between two full fetches.
const FULL_EVERY: u32 = 10;
/// A delta covers about the last three minutes (Eureka's default retention); after this long
/// without a successful poll, the next one fetches the application whole.
const DELTA_TRUSTED_FOR: Duration = Duration::from_secs(60);

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
    /// Set by any failed poll: the deltas missed meanwhile are unknown, so the next poll
    /// fetches the application whole.
    needs_full: bool,
    /// When a poll last succeeded.
    last_ok: Option<Instant>,
    /// The registry answered 200 at least once (so a 404 for the application means it has
    /// no instance, not a wrong `endpoint`).
    answered: bool,
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
            needs_full: true,
            last_ok: None,
            answered: false,
        })
    }

    async fn full(
        &mut self,
        client: &reqwest::Client,
    ) -> Result<BTreeMap<String, Instance>, DiscoveryError> {
        let app: String = form_urlencoded::byte_serialize(self.app.as_bytes()).collect();
        let url = format!("{}/apps/{app}", self.endpoint);
        match get(client, &url, &[], MAX_BODY).await {
            Ok((_, body)) => {
                self.answered = true;
                let doc: AppDoc = parse(&url, &body)?;
                Ok(doc
                    .application
                    .instance
                    .into_vec()
                    .into_iter()
                    .map(|i| (i.id(), i))
                    .collect())
            }
            // Eureka answers 404 for an application with no instance registered; so does any
            // server at a wrong `endpoint`. It means "no instance" only from a registry that
            // is known to answer: one that answered before, or answers its delta now.
            Err(e @ DiscoveryError::Status { status: 404, .. }) => {
                if !self.answered {
                    let delta = format!("{}/apps/delta", self.endpoint);
                    if get(client, &delta, &[], MAX_BODY).await.is_err() {
                        return Err(e);
                    }
                    self.answered = true;
                }
                Ok(BTreeMap::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the next poll fetches the application whole: at first, after an error, when
    /// the last success is older than a delta covers, when `refresh` itself is, and every
    /// [`FULL_EVERY`]th poll.
    fn wants_full(&self, now: Instant) -> bool {
        self.needs_full
            || self.instances.is_none()
            || self.refresh > DELTA_TRUSTED_FOR
            || self
                .last_ok
                .is_none_or(|t| now.saturating_duration_since(t) > DELTA_TRUSTED_FOR)
            || self.polls.is_multiple_of(FULL_EVERY)
    }

    async fn delta(
        &mut self,
        client: &reqwest::Client,
        known: &mut BTreeMap<String, Instance>,
    ) -> Result<(), DiscoveryError> {
        let url = format!("{}/apps/delta", self.endpoint);
        let (_, body) = get(client, &url, &[], MAX_BODY).await?;
        self.answered = true;
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
        let full = self.wants_full(Instant::now());
        self.polls = self.polls.wrapping_add(1);
        let polled = if full {
            self.full(&client).await
        } else {
            let mut known = self.instances.clone().unwrap_or_default();
            self.delta(&client, &mut known).await.map(|()| known)
        };
        let instances = match polled {
            Ok(i) => i,
            Err(e) => {
                self.needs_full = true;
                return Err(e);
            }
        };
        self.needs_full = false;
        self.last_ok = Some(Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(refresh: Duration) -> Eureka {
        let cfg = DiscoverySource::Eureka {
            endpoint: "http://127.0.0.1:1/eureka".into(),
            app: "LEGACY".into(),
            refresh,
        };
        crate::base::tls::install_crypto_provider();
        Eureka::new(&cfg, false).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn deltas_only_after_a_recent_success() {
        let mut e = source(Duration::from_secs(30));
        let now = Instant::now();
        assert!(e.wants_full(now), "first poll");
        e.instances = Some(BTreeMap::new());
        e.needs_full = false;
        e.last_ok = Some(now);
        e.polls = 1;
        assert!(!e.wants_full(now), "a delta right after a success");
        assert!(
            e.wants_full(now + Duration::from_secs(61)),
            "the last success is older than a delta covers"
        );
        e.needs_full = true;
        assert!(e.wants_full(now), "after an error");
        e.needs_full = false;
        e.polls = FULL_EVERY;
        assert!(e.wants_full(now), "every tenth poll");
        let mut slow = source(Duration::from_secs(90));
        slow.instances = Some(BTreeMap::new());
        slow.needs_full = false;
        slow.last_ok = Some(now);
        slow.polls = 1;
        assert!(slow.wants_full(now), "refresh longer than a delta covers");
    }
}
