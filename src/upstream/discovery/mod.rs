//! Service discovery: a [`Source`] per backend (DNS, Consul, Kubernetes, Eureka) answers with
//! the servers it knows; a [`Watcher`] runs one source on the background runtime and
//! publishes what it last learned as a [`Snapshot`], which the upstream applies
//! ([`super::set::Dynamic`]).
//!
//! Safety rules, whatever the source: a failed answer keeps the last known servers (the
//! snapshot carries the error); a successful answer with no servers empties the upstream;
//! errors back off (0.5 s doubling to 30 s, with jitter), and so does a source whose setup
//! fails (it is set up again, on the blocking pool, until it works). Each change is logged once, here,
//! with the servers added and removed, and counted in `kairos_discovery_updates_total`.

pub mod consul;
pub mod dns;
pub mod eureka;
pub mod kubernetes;

use crate::base::redact::url_without_userinfo;
use crate::config::model::{DiscoveryConfig, DiscoverySource, ServerEntry};
use crate::observability::metrics::Metrics;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// One server a source found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Lower is preferred: a higher priority is used only while no server of a lower one is
    /// available (DNS SRV; 0 for the other sources). First, so endpoints sort by it.
    pub priority: u16,
    /// An IP address or a host name.
    pub host: String,
    pub port: u16,
    /// Relative weight, clamped to 1..=1000 when the set is built.
    pub weight: u32,
    pub https: bool,
}

impl Endpoint {
    /// The URL that names this server in logs, metrics and the admin API.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("{scheme}://[{ip}]:{}", self.port),
            _ => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }

    /// The server as the request path uses it; `None` if its host cannot be a URL's host
    /// (a source's answer is not trusted to be well formed).
    pub fn entry(&self) -> Option<ServerEntry> {
        let url = self.url();
        match crate::config::validate::parse_server_url(&url) {
            Ok((https, authority, host_header, url)) => Some(ServerEntry {
                url,
                https,
                host: authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port: self.port,
                authority,
                host_header,
                weight: self.weight.clamp(1, 1000),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "discovered server ignored: not a valid address");
                None
            }
        }
    }
}

/// One successful answer of a source.
#[derive(Debug)]
pub struct Answer {
    pub endpoints: Vec<Endpoint>,
    /// How long before the source should be asked again (DNS: the TTL up to `refresh`;
    /// Eureka: `refresh`; zero for sources whose next call itself waits for a change).
    pub valid_for: Duration,
}

/// Why a source gave no answer; the last known servers stay in use.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("DNS lookup of {name} failed: {reason}")]
    Dns { name: String, reason: String },
    // URLs are shown without their userinfo (an endpoint may be `http://user:pass@host`),
    // and a request error's source without its URL (build it with [`DiscoveryError::request`]).
    #[error("request to {} failed: {}", url_without_userinfo(.url), crate::upstream::client::chain(.source))]
    Request { url: String, source: reqwest::Error },
    #[error("{} answered {status}", url_without_userinfo(.url))]
    Status { url: String, status: u16 },
    #[error("{} answered with a body that is not the expected JSON: {reason}", url_without_userinfo(.url))]
    Body { url: String, reason: String },
    #[error("{0}")]
    Setup(String),
    #[error("the answer lists {0} servers, more than the {MAX_SERVERS} an upstream takes")]
    TooMany(usize),
}

/// The most servers one answer may list: a larger answer is an error (the last known servers
/// stay), as rebuilding an upstream's set and balancer gets costly beyond.
pub const MAX_SERVERS: usize = 5_000;

impl DiscoveryError {
    /// A failed request to `url`; reqwest's error loses its copy of the URL, which may hold
    /// credentials (the variant's own URL is shown redacted).
    pub fn request(url: &str, source: reqwest::Error) -> DiscoveryError {
        DiscoveryError::Request {
            url: url.to_string(),
            source: source.without_url(),
        }
    }
}

/// A discovery backend. The first call answers at once; later calls may wait for a change
/// (a Consul blocking query, a Kubernetes watch) and return when there is one.
pub trait Source: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<Answer, DiscoveryError>> + Send;
}

/// What a watcher last learned.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The last known servers, sorted; `None` before the first successful answer.
    pub endpoints: Option<Arc<[Endpoint]>>,
    /// The last answer's error, while the last known servers are kept.
    pub error: Option<Arc<str>>,
    /// When the source last answered successfully.
    pub updated: Option<SystemTime>,
}

/// A running source, shared by the runtimes that follow it (a reload with the same
/// discovery settings keeps it). The source stops once the last handle is dropped.
#[derive(Clone)]
pub struct Watcher {
    rx: watch::Receiver<Snapshot>,
}

impl Watcher {
    /// Starts the source of `cfg` for `upstream` on the background runtime.
    pub fn start(upstream: &str, cfg: &DiscoveryConfig, metrics: Arc<Metrics>) -> Watcher {
        let (tx, rx) = watch::channel(Snapshot::default());
        if let Some(rt) = crate::base::background::background() {
            crate::base::tls::install_crypto_provider();
            let labels = Labels {
                upstream: upstream.to_string(),
                source: cfg.kind(),
                metrics,
            };
            let _guard = rt.enter();
            let https = cfg.https;
            // Each source is set up inside its task (on the blocking pool: the system DNS
            // resolver reads /etc/resolv.conf), and again after a failure.
            let s = cfg.source.clone();
            match &cfg.source {
                DiscoverySource::Dns { .. } => {
                    rt.spawn(drive(move || dns::Dns::new(&s, https), tx, labels));
                }
                DiscoverySource::Consul { .. } => {
                    rt.spawn(drive(move || consul::Consul::new(&s, https), tx, labels));
                }
                DiscoverySource::Kubernetes { .. } => {
                    rt.spawn(drive(
                        move || kubernetes::Kubernetes::new(&s, https),
                        tx,
                        labels,
                    ));
                }
                DiscoverySource::Eureka { .. } => {
                    rt.spawn(drive(move || eureka::Eureka::new(&s, https), tx, labels));
                }
            }
        }
        Watcher { rx }
    }

    /// What the source last said.
    pub fn snapshot(&self) -> Snapshot {
        self.rx.borrow().clone()
    }

    /// A receiver that wakes on each new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.rx.clone()
    }
}

struct Labels {
    upstream: String,
    source: &'static str,
    metrics: Arc<Metrics>,
}

impl Labels {
    fn count(&self, result: &str) {
        self.metrics
            .discovery_updates
            .with_label_values(&[&self.upstream, self.source, result])
            .inc();
    }
}

/// The first wait after an error; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs a source until every [`Watcher`] handle is gone: sets it up (again after each
/// failure, with the back-off), publishes each answer, keeps the last known servers on
/// errors, logs each change once.
async fn drive<S, F>(setup: F, tx: watch::Sender<Snapshot>, labels: Labels)
where
    S: Source,
    F: Fn() -> Result<S, DiscoveryError> + Send + Sync + 'static,
{
    for result in ["changed", "unchanged", "error"] {
        labels.count_zero(result);
    }
    let setup = Arc::new(setup);
    let mut backoff = FIRST_BACKOFF;
    let mut source = loop {
        let make = setup.clone();
        let made = tokio::task::spawn_blocking(move || make())
            .await
            .unwrap_or_else(|e| Err(DiscoveryError::Setup(format!("setup failed: {e}"))));
        let e = match made {
            Ok(s) => break s,
            Err(e) => e,
        };
        labels.count("error");
        let text: Arc<str> = Arc::from(e.to_string());
        if tx.borrow().error.as_deref() != Some(&*text) {
            tracing::error!(
                upstream = labels.upstream,
                source = labels.source,
                error = %text,
                "service discovery cannot start; retrying (the upstream keeps the servers it has)"
            );
        }
        tx.send_if_modified(|s| {
            let changed = s.error.as_deref() != Some(&*text);
            s.error = Some(text);
            changed
        });
        let wait = backoff.mul_f64(0.8 + 0.4 * fastrand::f64());
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    };
    backoff = FIRST_BACKOFF;
    loop {
        let answer = tokio::select! {
            _ = tx.closed() => return,
            a = source.next() => a,
        };
        let answer = answer.and_then(|a| match a.endpoints.len() {
            n if n > MAX_SERVERS => Err(DiscoveryError::TooMany(n)),
            _ => Ok(a),
        });
        let wait = match answer {
            Ok(answer) => {
                backoff = FIRST_BACKOFF;
                publish(&tx, &labels, answer.endpoints);
                answer.valid_for
            }
            Err(e) => {
                labels.count("error");
                let text: Arc<str> = Arc::from(e.to_string());
                let repeated = tx.borrow().error.as_deref() == Some(&*text);
                if !repeated {
                    tracing::warn!(
                        upstream = labels.upstream,
                        source = labels.source,
                        error = %text,
                        "service discovery failed; keeping the last known servers"
                    );
                }
                tx.send_if_modified(|s| {
                    let changed = s.error.as_deref() != Some(&*text);
                    s.error = Some(text);
                    changed
                });
                let wait = backoff.mul_f64(0.8 + 0.4 * fastrand::f64());
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl Labels {
    fn count_zero(&self, result: &str) {
        self.metrics
            .discovery_updates
            .with_label_values(&[&self.upstream, self.source, result]);
    }
}

/// The most server URLs one change log line lists (of those added, and of those removed);
/// a larger change is logged with its counts.
const LOGGED_URLS: usize = 10;

/// Publishes a successful answer: a new server set when it differs from the last one.
fn publish(tx: &watch::Sender<Snapshot>, labels: &Labels, mut endpoints: Vec<Endpoint>) {
    endpoints.sort();
    // One server once, at its lowest priority (endpoints sort by priority first).
    let mut seen = std::collections::HashSet::new();
    endpoints.retain(|e| seen.insert((e.host.clone(), e.port, e.https)));
    labels
        .metrics
        .discovery_servers
        .with_label_values(&[&labels.upstream])
        .set(endpoints.len() as i64);
    let now = SystemTime::now();
    let (old, recovered) = {
        let s = tx.borrow();
        (s.endpoints.clone(), s.error.clone())
    };
    if old.as_deref() == Some(&endpoints[..]) {
        labels.count("unchanged");
        if let Some(e) = recovered {
            tracing::info!(
                upstream = labels.upstream,
                source = labels.source,
                previous_error = %e,
                "service discovery answers again"
            );
        }
        tx.send_if_modified(|s| {
            s.updated = Some(now);
            s.error.take().is_some()
        });
        return;
    }
    labels.count("changed");
    let before: &[Endpoint] = old.as_deref().unwrap_or(&[]);
    // Both lists are sorted: a binary search each, not a scan.
    let added = endpoints
        .iter()
        .filter(|e| before.binary_search(e).is_err());
    let removed = before
        .iter()
        .filter(|e| endpoints.binary_search(e).is_err());
    let (added_count, removed_count) = (added.clone().count(), removed.clone().count());
    // A big change (a rollout, a registry coming back) logs counts and the first few URLs,
    // not a line of thousands.
    let added: Vec<String> = added.take(LOGGED_URLS).map(Endpoint::url).collect();
    let removed: Vec<String> = removed.take(LOGGED_URLS).map(Endpoint::url).collect();
    if added_count + removed_count > LOGGED_URLS {
        tracing::info!(
            upstream = labels.upstream,
            source = labels.source,
            servers = endpoints.len(),
            added_count,
            removed_count,
            added_first = ?added,
            removed_first = ?removed,
            "discovered servers changed"
        );
    } else {
        tracing::info!(
            upstream = labels.upstream,
            source = labels.source,
            servers = endpoints.len(),
            added = ?added,
            removed = ?removed,
            "discovered servers changed"
        );
    }
    tx.send_replace(Snapshot {
        endpoints: Some(Arc::from(endpoints)),
        error: None,
        updated: Some(now),
    });
}

/// An HTTP client for a discovery source: no redirects, no proxy from the environment, the
/// gateway's TLS roots (or `roots`), and `timeout` per request.
pub(crate) fn http_client(
    timeout: Duration,
    roots: Option<rustls::RootCertStore>,
) -> Result<reqwest::Client, DiscoveryError> {
    crate::base::tls::install_crypto_provider();
    let tls = match roots {
        Some(r) => crate::upstream::client::tls_config_with_roots(r),
        None => (*crate::upstream::client::default_tls_config()).clone(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!(
            "kairos-rs/",
            env!("CARGO_PKG_VERSION"),
            " discovery"
        ))
        .build()
        .map_err(|e| DiscoveryError::Setup(format!("HTTP client: {e}")))
}

/// GETs `url` and returns its status, headers and body (at most `limit` bytes).
pub(crate) async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    limit: usize,
) -> Result<(http::HeaderMap, bytes::Bytes), DiscoveryError> {
    let mut req = client.get(url).header("Accept", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let request_error = |source| DiscoveryError::request(url, source);
    let mut res = req.send().await.map_err(request_error)?;
    let status = res.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(DiscoveryError::Status {
            url: url.to_string(),
            status,
        });
    }
    let headers = res.headers().clone();
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = res.chunk().await.map_err(request_error)? {
        if body.len() + chunk.len() > limit {
            return Err(DiscoveryError::Body {
                url: url.to_string(),
                reason: format!("longer than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((headers, body.freeze()))
}

/// Parses a JSON body, naming the URL in the error.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    url: &str,
    body: &[u8],
) -> Result<T, DiscoveryError> {
    serde_json::from_slice(body).map_err(|e| DiscoveryError::Body {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// The most of a discovery answer read (a registry of many thousand instances fits).
pub(crate) const MAX_BODY: usize = 32 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A source that always answers one server.
    struct One;

    impl Source for One {
        async fn next(&mut self) -> Result<Answer, DiscoveryError> {
            Ok(Answer {
                endpoints: vec![Endpoint {
                    priority: 0,
                    host: "127.0.0.1".into(),
                    port: 8080,
                    weight: 1,
                    https: false,
                }],
                valid_for: Duration::from_secs(3600),
            })
        }
    }

    /// A source whose setup fails is set up again (with the back-off) until it works; the
    /// error shows meanwhile and is counted.
    #[tokio::test]
    async fn a_failed_setup_is_retried() {
        let metrics = Arc::new(Metrics::new());
        let labels = Labels {
            upstream: "u".into(),
            source: "dns",
            metrics: metrics.clone(),
        };
        let (tx, mut rx) = watch::channel(Snapshot::default());
        let tries = Arc::new(AtomicU32::new(0));
        let t = tries.clone();
        let task = tokio::spawn(drive(
            move || match t.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(DiscoveryError::Setup(
                    "resolver setup: no resolv.conf".into(),
                )),
                _ => Ok(One),
            },
            tx,
            labels,
        ));
        let snap = rx
            .wait_for(|s| s.error.is_some())
            .await
            .map(|s| s.clone())
            .unwrap_or_default();
        assert_eq!(
            snap.error.as_deref(),
            Some("resolver setup: no resolv.conf")
        );
        assert!(snap.endpoints.is_none());
        let snap = rx
            .wait_for(|s| s.endpoints.is_some())
            .await
            .map(|s| s.clone())
            .unwrap_or_default();
        assert_eq!(snap.endpoints.as_deref().map(<[Endpoint]>::len), Some(1));
        assert!(snap.error.is_none());
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        let errors = metrics
            .discovery_updates
            .with_label_values(&["u", "dns", "error"])
            .get();
        assert_eq!(errors, 2);
        drop(rx);
        let _ = task.await;
    }

    #[test]
    fn endpoint_urls_and_entries() {
        let e = Endpoint {
            priority: 0,
            host: "::1".into(),
            port: 8080,
            weight: 5000,
            https: false,
        };
        assert_eq!(e.url(), "http://[::1]:8080");
        let entry = e.entry().expect("valid");
        assert_eq!(entry.authority.as_str(), "[::1]:8080");
        assert_eq!(entry.weight, 1000);
        let bad = Endpoint {
            priority: 0,
            host: "a b".into(),
            port: 1,
            weight: 1,
            https: true,
        };
        assert!(bad.entry().is_none());
    }
}
