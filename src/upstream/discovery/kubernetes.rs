//! Kubernetes discovery: the service's EndpointSlices (`discovery.k8s.io/v1`, selected by
//! the `kubernetes.io/service-name` label), listed, then watched from the list's
//! `resourceVersion` (with bookmarks, so a reconnect resumes where it was). A watch that
//! answers 410 Gone (the version is too old) starts over with a list.
//!
//! An endpoint is used while it is ready (no `ready` condition counts as ready) and not
//! terminating; when no endpoint of the service is, the terminating ones that still serve
//! are used (as kube-proxy does), so a rollout's last pods finish their traffic.
//!
//! Credentials: in-cluster by default (`KUBERNETES_SERVICE_HOST`/`_PORT`, the pod's
//! service-account token, re-read at each request because it is rotated, and its CA). The
//! pod's token is sent over https only: an http `api_server` gets it only when the config
//! names the `token_file`. Files are read on the blocking pool (the background runtime never waits on the disk).

use super::{http_client, Answer, DiscoveryError, Endpoint, Source};
use crate::config::model::DiscoverySource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How long the API server keeps one watch open before it ends it (we then re-watch).
const WATCH_SECONDS: u64 = 290;
/// The most one watch event line may take.
const MAX_EVENT: usize = 16 << 20;

pub struct Kubernetes {
    namespace: Option<String>,
    service: String,
    port_name: Option<String>,
    api_server: Option<String>,
    token_file: PathBuf,
    token_file_given: bool,
    ca_file: PathBuf,
    https: bool,
    client: Option<(String, reqwest::Client)>,
    /// Slices by name, as last listed and watched.
    slices: BTreeMap<String, Slice>,
    /// Where the watch resumes; `None`: list first.
    version: Option<String>,
    watch: Option<Watch>,
    /// When the last watch was opened.
    watched_at: Option<std::time::Instant>,
}

struct Watch {
    res: reqwest::Response,
    buf: Vec<u8>,
}

#[derive(Deserialize)]
struct List {
    metadata: ListMeta,
    #[serde(default, deserialize_with = "null_as_empty")]
    items: Vec<Slice>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: Option<String>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Slice {
    metadata: ObjectMeta,
    /// `null` for a slice with no endpoints (a service scaled to zero; the API server sends
    /// `"endpoints": null`, kubernetes/kubernetes#135968).
    #[serde(default, deserialize_with = "null_as_empty")]
    endpoints: Vec<SliceEndpoint>,
    /// `null` means "all ports" in the API; then there is nothing to connect to.
    #[serde(default)]
    ports: Option<Vec<SlicePort>>,
}

#[derive(Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    resource_version: Option<String>,
}

#[derive(Deserialize, Clone)]
struct SliceEndpoint {
    #[serde(default, deserialize_with = "null_as_empty")]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Conditions,
}

#[derive(Deserialize, Clone, Default)]
struct Conditions {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Deserialize, Clone)]
struct SlicePort {
    #[serde(default)]
    name: Option<String>,
    port: Option<u16>,
}

/// Reads a file on the blocking pool: the background runtime that runs every source never
/// waits on the disk.
async fn read_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// A list that may be written as `null` (Go's nil slice), read as empty.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A `Status` object (a watch's ERROR event).
#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    message: String,
}

impl Kubernetes {
    pub fn new(cfg: &DiscoverySource, https: bool) -> Result<Kubernetes, DiscoveryError> {
        let DiscoverySource::Kubernetes {
            namespace,
            service_name,
            port_name,
            api_server,
            token_file,
            token_file_given,
            ca_file,
        } = cfg
        else {
            return Err(DiscoveryError::Setup("not a Kubernetes source".into()));
        };
        Ok(Kubernetes {
            namespace: namespace.clone(),
            service: service_name.clone(),
            port_name: port_name.clone(),
            api_server: api_server.clone(),
            token_file: token_file.clone(),
            token_file_given: *token_file_given,
            ca_file: ca_file.clone(),
            https,
            client: None,
            slices: BTreeMap::new(),
            version: None,
            watch: None,
            watched_at: None,
        })
    }

    /// The API server's base URL and a client trusting its CA (set up on first use, so a
    /// missing in-cluster environment is retried like any failure).
    async fn client(&mut self) -> Result<(String, reqwest::Client), DiscoveryError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let base = match &self.api_server {
            Some(url) => url.clone(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                    DiscoveryError::Setup(
                        "not in a cluster (KUBERNETES_SERVICE_HOST is not set); set `api_server`"
                            .into(),
                    )
                })?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let roots = if base.starts_with("https://") {
            let pem = read_file(&self.ca_file).await.map_err(|e| {
                DiscoveryError::Setup(format!("cannot read {}: {e}", self.ca_file.display()))
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(DiscoveryError::Setup(format!(
                    "{} holds no PEM certificate",
                    self.ca_file.display()
                )));
            }
            Some(roots)
        } else {
            None
        };
        // No overall timeout: a watch stays open for minutes; lists set their own.
        let client = http_client(Duration::from_secs(WATCH_SECONDS + 60), roots)?;
        if self.namespace.is_none() {
            let file =
                PathBuf::from(crate::config::validate::SERVICE_ACCOUNT_DIR).join("namespace");
            let ns = read_file(&file)
                .await
                .map(|s| String::from_utf8_lossy(&s).trim().to_string())
                .ok()
                .filter(|s| !s.is_empty());
            self.namespace = Some(ns.unwrap_or_else(|| "default".into()));
        }
        self.client = Some((base.clone(), client.clone()));
        Ok((base, client))
    }

    fn url(&self, base: &str, watch: Option<&str>) -> String {
        let ns = self.namespace.as_deref().unwrap_or("default");
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair(
            "labelSelector",
            &format!("kubernetes.io/service-name={}", self.service),
        );
        if let Some(v) = watch {
            q.append_pair("watch", "1");
            q.append_pair("resourceVersion", v);
            q.append_pair("allowWatchBookmarks", "true");
            q.append_pair("timeoutSeconds", &WATCH_SECONDS.to_string());
        }
        format!(
            "{base}/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?{}",
            q.finish()
        )
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        url: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, DiscoveryError> {
        let mut req = client
            .get(url)
            .timeout(timeout)
            .header("Accept", "application/json");
        // Re-read each time: projected service-account tokens are rotated. No file, no token
        // (an API server behind `kubectl proxy` needs none). The pod's own token goes over
        // https only; one from a `token_file` the config names, wherever the config says.
        if self.token_file_given || url.starts_with("https://") {
            if let Ok(token) = read_file(&self.token_file).await {
                let token = String::from_utf8_lossy(&token);
                req = req.header("Authorization", format!("Bearer {}", token.trim()));
            }
        }
        let res = req
            .send()
            .await
            .map_err(|source| DiscoveryError::request(url, source))?;
        let status = res.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(DiscoveryError::Status {
                url: url.to_string(),
                status,
            });
        }
        Ok(res)
    }

    async fn list(
        &mut self,
        base: &str,
        client: &reqwest::Client,
    ) -> Result<Answer, DiscoveryError> {
        let url = self.url(base, None);
        let mut res = self.send(client, &url, Duration::from_secs(30)).await?;
        let mut body = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|source| DiscoveryError::request(&url, source))?
        {
            if body.len() + chunk.len() > super::MAX_BODY {
                return Err(DiscoveryError::Body {
                    url,
                    reason: "too long".into(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        let list: List = super::parse(&url, &body)?;
        // Without a version there is nothing to watch from: listing again at once would be a
        // busy loop. An error instead (the back-off applies); nothing of the list is used.
        if list
            .metadata
            .resource_version
            .as_deref()
            .is_none_or(str::is_empty)
        {
            return Err(DiscoveryError::Body {
                url,
                reason: "the list has no metadata.resourceVersion".into(),
            });
        }
        self.slices = list
            .items
            .into_iter()
            .map(|s| (s.metadata.name.clone(), s))
            .collect();
        self.version = list.metadata.resource_version;
        Ok(self.answer())
    }

    /// The endpoints of the slices known now.
    fn answer(&self) -> Answer {
        let mut ready = Vec::new();
        let mut draining = Vec::new();
        for slice in self.slices.values() {
            let ports = slice.ports.as_deref().unwrap_or_default();
            let port = match &self.port_name {
                Some(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
                None if ports.len() == 1 => ports.first(),
                None => None,
            };
            let Some(port) = port.and_then(|p| p.port) else {
                continue;
            };
            for e in &slice.endpoints {
                let c = &e.conditions;
                let terminating = c.terminating == Some(true);
                let target = if c.ready != Some(false) && !terminating {
                    &mut ready
                } else if terminating && c.serving == Some(true) {
                    &mut draining
                } else {
                    continue;
                };
                for a in &e.addresses {
                    target.push(Endpoint {
                        priority: 0,
                        host: a.clone(),
                        port,
                        weight: 1,
                        https: self.https,
                    });
                }
            }
        }
        Answer {
            endpoints: if ready.is_empty() { draining } else { ready },
            valid_for: Duration::ZERO,
        }
    }

    /// Reads watch events until one changes the slices (an answer), the watch ends
    /// (`Ok(None)`: watch again from the last version), or it fails.
    async fn follow(&mut self, url: &str) -> Result<Option<Answer>, DiscoveryError> {
        loop {
            let Some(w) = self.watch.as_mut() else {
                return Ok(None);
            };
            if let Some(nl) = w.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = w.buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match self.event(url, &line) {
                    Ok(Some(answer)) => return Ok(Some(answer)),
                    Ok(None) => continue,
                    Err(e @ DiscoveryError::Body { .. }) => {
                        // An event we cannot read may have been a change: skipping it would
                        // lose that change for good. Start over with a list.
                        self.watch = None;
                        self.version = None;
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            if w.buf.len() > MAX_EVENT {
                self.watch = None;
                return Err(DiscoveryError::Body {
                    url: url.to_string(),
                    reason: "watch event too long".into(),
                });
            }
            match w.res.chunk().await {
                Ok(Some(chunk)) => w.buf.extend_from_slice(&chunk),
                Ok(None) => {
                    self.watch = None;
                    return Ok(None);
                }
                Err(source) => {
                    self.watch = None;
                    return Err(DiscoveryError::request(url, source));
                }
            }
        }
    }

    /// Applies one watch event; an answer when the slices changed.
    fn event(&mut self, url: &str, line: &[u8]) -> Result<Option<Answer>, DiscoveryError> {
        let event: Event = super::parse(url, line)?;
        match event.kind.as_str() {
            "BOOKMARK" => {
                let meta: Slice =
                    serde_json::from_value(event.object).map_err(|e| DiscoveryError::Body {
                        url: url.to_string(),
                        reason: e.to_string(),
                    })?;
                if meta.metadata.resource_version.is_some() {
                    self.version = meta.metadata.resource_version;
                }
                Ok(None)
            }
            "ERROR" => {
                let status: Status = serde_json::from_value(event.object).unwrap_or(Status {
                    code: 0,
                    message: String::new(),
                });
                self.watch = None;
                if status.code == 410 {
                    // Gone: the version is too old; list again (routine, not a failure).
                    self.version = None;
                    return Ok(None);
                }
                Err(DiscoveryError::Status {
                    url: format!("{url} (watch: {})", status.message),
                    status: status.code,
                })
            }
            kind @ ("ADDED" | "MODIFIED" | "DELETED") => {
                let slice: Slice =
                    serde_json::from_value(event.object).map_err(|e| DiscoveryError::Body {
                        url: url.to_string(),
                        reason: e.to_string(),
                    })?;
                if slice.metadata.resource_version.is_some() {
                    self.version = slice.metadata.resource_version.clone();
                }
                if kind == "DELETED" {
                    self.slices.remove(&slice.metadata.name);
                } else {
                    self.slices.insert(slice.metadata.name.clone(), slice);
                }
                Ok(Some(self.answer()))
            }
            _ => Ok(None),
        }
    }
}

impl Source for Kubernetes {
    async fn next(&mut self) -> Result<Answer, DiscoveryError> {
        let (base, client) = self.client().await?;
        loop {
            let Some(version) = self.version.clone() else {
                self.watch = None;
                return self.list(&base, &client).await;
            };
            let url = self.url(&base, Some(&version));
            if self.watch.is_none() {
                // A watch that ends at once (a misbehaving proxy) must not become a busy loop.
                if let Some(at) = self.watched_at.replace(std::time::Instant::now()) {
                    let since = at.elapsed();
                    if since < Duration::from_secs(1) {
                        tokio::time::sleep(Duration::from_secs(1) - since).await;
                    }
                }
                match self
                    .send(&client, &url, Duration::from_secs(WATCH_SECONDS + 30))
                    .await
                {
                    Ok(res) => {
                        self.watch = Some(Watch {
                            res,
                            buf: Vec::new(),
                        })
                    }
                    Err(DiscoveryError::Status { status: 410, .. }) => {
                        self.version = None;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(answer) = self.follow(&url).await? {
                return Ok(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An http API server on 127.0.0.1:0 answering one empty list; returns the request head.
    async fn one_list() -> (String, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            l.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let task = tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return String::new();
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body =
                r#"{"kind":"EndpointSliceList","metadata":{"resourceVersion":"1"},"items":[]}"#;
            let res = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(res.as_bytes()).await;
            String::from_utf8_lossy(&head).to_ascii_lowercase()
        });
        (url, task)
    }

    async fn first_request(token_file: &std::path::Path, given: bool) -> String {
        let (url, task) = one_list().await;
        let cfg = DiscoverySource::Kubernetes {
            namespace: Some("shop".into()),
            service_name: "stock".into(),
            port_name: None,
            api_server: Some(url),
            token_file: token_file.to_path_buf(),
            token_file_given: given,
            ca_file: PathBuf::from("/nonexistent/ca.crt"),
        };
        let mut k = Kubernetes::new(&cfg, false).unwrap_or_else(|e| panic!("{e}"));
        let answer = k.next().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(answer.endpoints.is_empty());
        task.await.unwrap_or_default()
    }

    /// The pod's token (the default file) is not sent to an http API server; a token file
    /// the config names is.
    #[tokio::test]
    async fn the_default_token_goes_over_https_only() {
        crate::base::tls::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("kairos-k8s-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("token");
        std::fs::write(&file, "pod-token\n").unwrap_or_else(|e| panic!("{e}"));
        let head = first_request(&file, false).await;
        assert!(head.starts_with("get /apis/discovery.k8s.io/v1/"), "{head}");
        assert!(!head.contains("authorization"), "{head}");
        let head = first_request(&file, true).await;
        assert!(head.contains("authorization: bearer pod-token"), "{head}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
