//! A small etcd v3 client over etcd's HTTP/JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/watch`), on the reqwest the gateway already has. The gRPC client crates (etcd-client,
//! etcd-rs) generate their code with protoc at build time; this needs no build step.
//! Keys and values travel base64-encoded, 64-bit numbers as JSON strings (the gateway's
//! protobuf-to-JSON mapping). Endpoints are tried in order, starting with the last one that
//! answered; a write goes to the next only when it reached none (see [`Etcd::put_if`]). With `username`/`password` the client exchanges them for a token
//! (`/v3/auth/authenticate`) and sends it as `Authorization`; https:// endpoints use rustls
//! with the configured CA and client certificate.

use crate::config::model::{ConfigStoreConfig, StoreTls};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a call to etcd failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connect error, timeout, a stream cut).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// An endpoint answered something else than the API's JSON.
    #[error("etcd answered unexpectedly: {0}")]
    Protocol(String),
    /// etcd refused the credentials, or asks for some (auth enabled, none configured).
    #[error("etcd refused access: {0}")]
    Auth(String),
    /// A write was sent and not answered, and the key does not hold what was written: it
    /// may or may not have been applied.
    #[error("etcd did not answer a write; whether it was applied is unknown: {0}")]
    Unknown(String),
}

/// The key's value at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The value, or why it cannot be a document (not UTF-8): refused, as an invalid one.
    pub value: Result<String, String>,
    /// The revision of the key's last change: what a compare-and-swap compares.
    pub mod_revision: i64,
}

/// A read of the key.
#[derive(Debug, Clone)]
pub struct Read {
    /// The store's revision at the read: a watch from the next one misses nothing.
    pub revision: i64,
    pub kv: Option<Kv>,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written: the key's new mod revision.
    Done(i64),
    /// The condition failed: the key's mod revision now (0 when it does not exist).
    Conflict(i64),
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMsg {
    /// The watch is in place.
    Created,
    /// Changes of the key, in revision order (`None` for a deletion), each decoded on its
    /// own: one undecodable value does not hide the ones after it.
    Events(Vec<(i64, Option<Result<String, String>>)>),
    /// The revision asked for was compacted away: read the key again.
    Compacted(i64),
    /// The server ended the watch.
    Canceled(String),
}

/// The client of one key.
pub struct Etcd {
    endpoints: Vec<String>,
    key_b64: String,
    pub key: String,
    timeout: Duration,
    /// User and password, exchanged for a token (never logged).
    credentials: Option<(String, String)>,
    tls: StoreTls,
    /// The auth token in use (etcd's auth enabled).
    token: Mutex<Option<String>>,
    /// The endpoint to try first.
    preferred: AtomicUsize,
}

impl Etcd {
    pub fn new(cfg: &ConfigStoreConfig) -> Etcd {
        Etcd {
            endpoints: cfg.endpoints.clone(),
            key_b64: B64.encode(cfg.key.as_bytes()),
            key: cfg.key.clone(),
            timeout: cfg.timeout,
            credentials: cfg.credentials.clone(),
            tls: cfg.tls.clone(),
            token: Mutex::new(None),
            preferred: AtomicUsize::new(0),
        }
    }

    /// An HTTP client for these calls (no proxy from the environment: etcd is local to the
    /// deployment), with the TLS settings for https:// endpoints.
    pub fn client(&self) -> Result<reqwest::Client, EtcdError> {
        crate::base::tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .tcp_keepalive(Duration::from_secs(10));
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            builder = builder.use_preconfigured_tls(self.tls_config()?);
        }
        builder
            .build()
            .map_err(|e| EtcdError::Protocol(format!("cannot build an HTTP client: {e}")))
    }

    /// rustls settings: the CA file's certificates (else the Mozilla root set) and the
    /// client certificate, read from their files now.
    fn tls_config(&self) -> Result<rustls::ClientConfig, EtcdError> {
        let fail = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
            EtcdError::Protocol(format!("TLS {what} {}: {e}", path.display()))
        };
        let certs = |path: &std::path::Path| -> Result<Vec<_>, EtcdError> {
            let pem = std::fs::read(path).map_err(|e| fail("file", path, &e))?;
            rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail("file", path, &e))
        };
        let roots = match &self.tls.ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(path)? {
                    roots.add(c).map_err(|e| fail("CA", path, &e))?;
                }
                roots
            }
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| EtcdError::Protocol(format!("TLS: {e}")))?
        .with_root_certificates(roots);
        let mut cfg = match &self.tls.identity {
            Some((cert, key)) => {
                let pem = std::fs::read(key).map_err(|e| fail("key file", key, &e))?;
                let private = rustls_pemfile::private_key(&mut pem.as_slice())
                    .map_err(|e| fail("key file", key, &e))?
                    .ok_or_else(|| fail("key file", key, &"no private key"))?;
                builder
                    .with_client_auth_cert(certs(cert)?, private)
                    .map_err(|e| fail("client certificate", cert, &e))?
            }
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// The `Authorization` header value: the token, fetched first when there are
    /// credentials and no token yet.
    async fn token(&self, client: &reqwest::Client) -> Result<Option<String>, EtcdError> {
        if self.credentials.is_none() {
            return Ok(None);
        }
        if let Some(t) = lock(&self.token).clone() {
            return Ok(Some(t));
        }
        self.authenticate(client).await.map(Some)
    }

    /// Exchanges the user and password for a token (etcd's simple tokens expire after a
    /// while unused; a 401 makes the caller authenticate again).
    async fn authenticate(&self, client: &reqwest::Client) -> Result<String, EtcdError> {
        let Some((name, password)) = &self.credentials else {
            return Err(EtcdError::Auth(
                "etcd asks for credentials and none are configured".into(),
            ));
        };
        let body = json!({ "name": name, "password": password });
        let v = match self
            .call_once(client, "/v3/auth/authenticate", &body, None)
            .await
        {
            Ok(v) => v,
            Err(EtcdError::Protocol(m)) => return Err(EtcdError::Auth(m)),
            Err(e) => return Err(e),
        };
        let token = v["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| EtcdError::Auth("no token in etcd's answer".into()))?
            .to_string();
        *lock(&self.token) = Some(token.clone());
        Ok(token)
    }

    /// Drops the token in use: etcd refused it (a watch canceled for it); the next call
    /// authenticates again.
    pub fn forget_token(&self) {
        *lock(&self.token) = None;
    }

    /// POSTs `body` to `path` with the token, authenticating again once if etcd refuses it.
    async fn call(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &Value,
    ) -> Result<Value, EtcdError> {
        let token = self.token(client).await?;
        match self.call_once(client, path, body, token.as_deref()).await {
            Err(EtcdError::Auth(_)) if self.credentials.is_some() => {
                let token = self.authenticate(client).await?;
                self.call_once(client, path, body, Some(&token)).await
            }
            other => other,
        }
    }

    /// POSTs `body` to `path` on the first endpoint that answers; its JSON answer.
    async fn call_once(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<Value, EtcdError> {
        self.attempt(client, path, body, token, false)
            .await
            .map_err(Failure::into_error)
    }

    /// POSTs `body` to `path` on the first endpoint that answers. A `write` goes to the next
    /// endpoint only when nothing reached the one before (no connection): one that took the
    /// request and gave no answer may have applied it, and the caller must find out.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &Value,
        token: Option<&str>,
        write: bool,
    ) -> Result<Value, Failure> {
        let n = self.endpoints.len().max(1);
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = EtcdError::Unreachable("no endpoint".into());
        for i in 0..n {
            let idx = (first + i) % n;
            let Some(base) = self.endpoints.get(idx) else {
                break;
            };
            match self.post(client, base, path, body, token).await {
                Ok(v) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(Failure::NoAnswer(e)) if write => return Err(Failure::NoAnswer(e)),
                Err(Failure::NotSent(e) | Failure::NoAnswer(e)) => last = e,
                Err(Failure::Answer(e)) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Err(Failure::Answer(e));
                }
            }
        }
        Err(Failure::NotSent(last))
    }

    /// POSTs `body` to `path` on the endpoint `base` only; its JSON answer.
    async fn post(
        &self,
        client: &reqwest::Client,
        base: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<Value, Failure> {
        let mut req = client
            .post(format!("{base}{path}"))
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        let res = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let err = EtcdError::Unreachable(format!(
                    "{base}: {}",
                    crate::upstream::client::chain(&e)
                ));
                return Err(match e.is_connect() {
                    true => Failure::NotSent(err),
                    false => Failure::NoAnswer(err),
                });
            }
        };
        let status = res.status();
        let text = read_capped(res).await.map_err(Failure::NoAnswer)?;
        if status.is_server_error() {
            // A member without a leader, say: another may answer.
            return Err(Failure::NoAnswer(EtcdError::Unreachable(format!(
                "{base}: {status}: {}",
                short(&text)
            ))));
        }
        if matches!(status.as_u16(), 401 | 403) {
            return Err(Failure::Answer(EtcdError::Auth(format!(
                "{base}: {status}: {}",
                short(&text)
            ))));
        }
        if !status.is_success() {
            return Err(Failure::Answer(EtcdError::Protocol(format!(
                "{base}: {status}: {}",
                short(&text)
            ))));
        }
        serde_json::from_str(&text)
            .map_err(|e| Failure::Answer(EtcdError::Protocol(format!("{base}: not JSON: {e}"))))
    }

    /// Reads the key.
    pub async fn get(&self, client: &reqwest::Client) -> Result<Read, EtcdError> {
        let v = self
            .call(client, "/v3/kv/range", &json!({ "key": self.key_b64 }))
            .await?;
        parse_range(&v)
    }

    /// Asks the endpoint `base` (a watch's own) for the key's count only: a cheap sign of
    /// life while a watch is idle (a frozen or cut-off member keeps its connections open and
    /// says nothing). Another endpoint answering would say nothing of that watch.
    pub async fn probe_at(&self, client: &reqwest::Client, base: &str) -> Result<(), EtcdError> {
        let body = json!({ "key": self.key_b64, "count_only": true });
        let path = "/v3/kv/range";
        let token = self.token(client).await?;
        let answer = match self.post(client, base, path, &body, token.as_deref()).await {
            Err(Failure::Answer(EtcdError::Auth(_))) if self.credentials.is_some() => {
                let token = self.authenticate(client).await?;
                self.post(client, base, path, &body, Some(&token)).await
            }
            other => other,
        };
        answer.map(|_| ()).map_err(Failure::into_error)
    }

    /// The endpoint `base` failed a watch: the next attempt starts with the one after it.
    pub fn pass_over(&self, base: &str) {
        let n = self.endpoints.len().max(1);
        if let Some(idx) = self.endpoints.iter().position(|e| e == base) {
            let _ = self.preferred.compare_exchange(
                idx,
                (idx + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Writes `value` if the key's mod revision is `expected` (0: the key does not exist),
    /// or unconditionally when `expected` is `None`. Sent to one endpoint (the next only when
    /// none could be connected to); unanswered, the key is read back: holding `value`, the
    /// write counts as done, else [`EtcdError::Unknown`].
    pub async fn put_if(
        &self,
        client: &reqwest::Client,
        value: &str,
        expected: Option<i64>,
    ) -> Result<Written, EtcdError> {
        let compare = match expected {
            Some(rev) => json!([{
                "target": "MOD", "key": self.key_b64, "result": "EQUAL",
                "mod_revision": rev.to_string(),
            }]),
            None => json!([]),
        };
        let body = json!({
            "compare": compare,
            "success": [{ "request_put": { "key": self.key_b64, "value": B64.encode(value) } }],
            "failure": [{ "request_range": { "key": self.key_b64 } }],
        });
        let path = "/v3/kv/txn";
        let token = self.token(client).await?;
        let answer = match self
            .attempt(client, path, &body, token.as_deref(), true)
            .await
        {
            // Refused: nothing was applied; once more with a new token.
            Err(Failure::Answer(EtcdError::Auth(_))) if self.credentials.is_some() => {
                let token = self.authenticate(client).await?;
                self.attempt(client, path, &body, Some(&token), true).await
            }
            other => other,
        };
        match answer {
            Ok(v) => parse_txn(&v),
            // Sent and not answered: applied or not, the key tells (a read may go to any
            // endpoint).
            Err(Failure::NoAnswer(e)) => match self.get(client).await {
                Ok(Read { kv: Some(kv), .. }) if kv.value.as_deref() == Ok(value) => {
                    Ok(Written::Done(kv.mod_revision))
                }
                Ok(_) => Err(EtcdError::Unknown(format!(
                    "{e}; the key does not hold the document written"
                ))),
                Err(read) => Err(EtcdError::Unknown(format!(
                    "{e}; the key could not be read: {read}"
                ))),
            },
            Err(f) => Err(f.into_error()),
        }
    }

    /// As [`Etcd::put_if`], from a thread that is not in an async runtime (the reload thread,
    /// the CLI).
    pub fn put_if_blocking(
        &self,
        value: &str,
        expected: Option<i64>,
    ) -> Result<Written, EtcdError> {
        block_on(async {
            let client = self.client()?;
            self.put_if(&client, value, expected).await
        })
    }

    /// As [`Etcd::get`], from a thread that is not in an async runtime.
    pub fn get_blocking(&self) -> Result<Read, EtcdError> {
        block_on(async {
            let client = self.client()?;
            self.get(&client).await
        })
    }

    /// Starts watching the key from revision `from` (inclusive).
    pub async fn watch(&self, client: &reqwest::Client, from: i64) -> Result<Watch, EtcdError> {
        let token = self.token(client).await?;
        match self.watch_once(client, from, token.as_deref()).await {
            Err(EtcdError::Auth(_)) if self.credentials.is_some() => {
                let token = self.authenticate(client).await?;
                self.watch_once(client, from, Some(&token)).await
            }
            other => other,
        }
    }

    async fn watch_once(
        &self,
        client: &reqwest::Client,
        from: i64,
        token: Option<&str>,
    ) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": self.key_b64, "start_revision": from.to_string(),
        }});
        let n = self.endpoints.len().max(1);
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = EtcdError::Unreachable("no endpoint".into());
        for i in 0..n {
            let idx = (first + i) % n;
            let Some(base) = self.endpoints.get(idx) else {
                break;
            };
            // No overall timeout: the answer is a stream that lasts as long as the watch.
            // `hasleader`: etcd cancels the watch when this member loses its leader (a
            // partitioned member would otherwise keep it open and silent).
            let mut req = client
                .post(format!("{base}/v3/watch"))
                .header("content-type", "application/json")
                .header("grpc-metadata-hasleader", "true")
                .body(body.to_string());
            if let Some(t) = token {
                req = req.header("authorization", t);
            }
            // The answer's head comes with the watch's first message: a member that does not
            // send it within the call timeout is passed over like an unreachable one.
            let sent = match tokio::time::timeout(self.timeout, req.send()).await {
                Ok(sent) => sent,
                Err(_) => {
                    last = EtcdError::Unreachable(format!("{base}: watch: no answer"));
                    continue;
                }
            };
            match sent {
                Ok(res) if res.status().is_success() => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(Watch {
                        res,
                        buf: Vec::new(),
                        base: base.clone(),
                    });
                }
                Ok(res) if matches!(res.status().as_u16(), 401 | 403) => {
                    return Err(EtcdError::Auth(format!("{base}: watch: {}", res.status())))
                }
                Ok(res) => {
                    last = EtcdError::Unreachable(format!("{base}: watch: {}", res.status()))
                }
                Err(e) => {
                    last = EtcdError::Unreachable(format!(
                        "{base}: {}",
                        crate::upstream::client::chain(&e)
                    ))
                }
            }
        }
        Err(last)
    }
}

/// How one POST to one endpoint failed.
enum Failure {
    /// Nothing reached etcd (no connection): another endpoint may be tried, even for a write.
    NotSent(EtcdError),
    /// Sent, but no usable answer (a timeout, a cut, a 5xx): a read may go to another
    /// endpoint; a write may have been applied.
    NoAnswer(EtcdError),
    /// etcd answered: final.
    Answer(EtcdError),
}

impl Failure {
    fn into_error(self) -> EtcdError {
        match self {
            Failure::NotSent(e) | Failure::NoAnswer(e) | Failure::Answer(e) => e,
        }
    }
}

/// A watch stream: one JSON object per message.
pub struct Watch {
    res: reqwest::Response,
    buf: Vec<u8>,
    base: String,
}

impl Watch {
    /// The endpoint this watch is on.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// The next message; an error when the stream ends or breaks.
    pub async fn next(&mut self) -> Result<WatchMsg, EtcdError> {
        loop {
            if let Some(msg) = self.take_message()? {
                return Ok(msg);
            }
            if self.buf.len() > MAX_ANSWER_BYTES {
                return Err(EtcdError::Protocol(format!(
                    "{}: a watch message of more than {MAX_ANSWER_BYTES} bytes",
                    self.base
                )));
            }
            match self.res.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => {
                    // A last message without its newline (an error that ends the stream).
                    let rest = std::mem::take(&mut self.buf);
                    if !rest.trim_ascii().is_empty() {
                        return self.message(rest.trim_ascii());
                    }
                    return Err(EtcdError::Unreachable(format!(
                        "{}: the watch stream ended",
                        self.base
                    )));
                }
                Err(e) => {
                    return Err(EtcdError::Unreachable(format!(
                        "{}: the watch stream broke: {}",
                        self.base,
                        crate::upstream::client::chain(&e)
                    )))
                }
            }
        }
    }

    /// A whole message from the buffer, if one is there. The gateway ends each with a
    /// newline; a message is also taken when the buffer holds exactly one JSON value.
    fn take_message(&mut self) -> Result<Option<WatchMsg>, EtcdError> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                return Ok(None);
            };
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            return self.message(line).map(Some);
        }
    }

    /// One message's text, parsed.
    fn message(&self, text: &[u8]) -> Result<WatchMsg, EtcdError> {
        let v: Value = serde_json::from_slice(text)
            .map_err(|e| EtcdError::Protocol(format!("{}: watch: not JSON: {e}", self.base)))?;
        parse_watch(&v)
    }
}

/// The largest answer read from etcd: a document of the admin API's 16 MB limit, base64
/// encoded, with room for the JSON around it.
const MAX_ANSWER_BYTES: usize = 24 << 20;

/// The body of an answer, refused past [`MAX_ANSWER_BYTES`].
async fn read_capped(mut res: reqwest::Response) -> Result<String, EtcdError> {
    let base = res.url().origin().ascii_serialization();
    let mut body = Vec::new();
    loop {
        match res.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(EtcdError::Protocol(format!(
                        "{base}: an answer of more than {MAX_ANSWER_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(EtcdError::Unreachable(format!("{base}: {e}"))),
        }
    }
    String::from_utf8(body).map_err(|_| EtcdError::Protocol(format!("{base}: not UTF-8")))
}

/// Runs `f` on a runtime of its own (the caller is on no runtime).
fn block_on<T>(f: impl std::future::Future<Output = Result<T, EtcdError>>) -> Result<T, EtcdError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EtcdError::Protocol(format!("cannot start a runtime: {e}")))?
        .block_on(f)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

/// An int64 of the gateway's JSON: a string, or absent for 0.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv(v: &Value) -> Kv {
    let value = match v.get("value").and_then(Value::as_str) {
        Some(b) => B64
            .decode(b)
            .map_err(|e| format!("the key's value is not base64: {e}")),
        None => Ok(Vec::new()),
    };
    Kv {
        value: value.and_then(|v| {
            String::from_utf8(v).map_err(|_| "the key's value is not UTF-8 text".to_string())
        }),
        mod_revision: int(&v["mod_revision"]),
    }
}

fn parse_range(v: &Value) -> Result<Read, EtcdError> {
    if v.get("header").is_none() {
        return Err(EtcdError::Protocol(format!(
            "range: {}",
            short(&v.to_string())
        )));
    }
    Ok(Read {
        revision: int(&v["header"]["revision"]),
        kv: v["kvs"].as_array().and_then(|a| a.first()).map(kv),
    })
}

fn parse_txn(v: &Value) -> Result<Written, EtcdError> {
    if v.get("header").is_none() {
        return Err(EtcdError::Protocol(format!(
            "txn: {}",
            short(&v.to_string())
        )));
    }
    if v["succeeded"].as_bool() == Some(true) {
        return Ok(Written::Done(int(&v["header"]["revision"])));
    }
    let current = v["responses"]
        .get(0)
        .and_then(|r| r["response_range"]["kvs"].get(0))
        .map(|k| int(&k["mod_revision"]))
        .unwrap_or(0);
    Ok(Written::Conflict(current))
}

/// Whether a watch's cancel reason is etcd refusing the token or the user: a token that a
/// restart of etcd invalidated, say (the watch answers 200 and cancels; a new token is due).
fn refused_access(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    [
        "permission denied",
        "invalid auth token",
        "user name is empty",
        "authentication failed",
        "revision in header is old",
    ]
    .iter()
    .any(|m| reason.contains(m))
}

fn parse_watch(v: &Value) -> Result<WatchMsg, EtcdError> {
    if let Some(err) = v.get("error") {
        let reason = short(&err.to_string());
        // gRPC's PermissionDenied and Unauthenticated.
        if matches!(int(&err["grpc_code"]), 7 | 16) || refused_access(&reason) {
            return Err(EtcdError::Auth(format!("watch canceled: {reason}")));
        }
        return Ok(WatchMsg::Canceled(reason));
    }
    let r = &v["result"];
    if r.is_null() {
        return Err(EtcdError::Protocol(format!(
            "watch: {}",
            short(&v.to_string())
        )));
    }
    let compacted = int(&r["compact_revision"]);
    if compacted > 0 {
        return Ok(WatchMsg::Compacted(compacted));
    }
    if r["canceled"].as_bool() == Some(true) {
        let reason = r["cancel_reason"].as_str().unwrap_or("no reason given");
        if refused_access(reason) {
            return Err(EtcdError::Auth(format!("watch canceled: {reason}")));
        }
        return Ok(WatchMsg::Canceled(reason.to_string()));
    }
    if r["created"].as_bool() == Some(true) {
        return Ok(WatchMsg::Created);
    }
    let mut events = Vec::new();
    for e in r["events"].as_array().into_iter().flatten() {
        let item = kv(&e["kv"]);
        // PUT is the enum's zero: the gateway leaves it out.
        let deleted = e["type"].as_str() == Some("DELETE");
        events.push((item.mod_revision, (!deleted).then_some(item.value)));
    }
    Ok(WatchMsg::Events(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_etcd_3_4() {
        let range = json!({"header":{"revision":"7"},"kvs":[{"key":"L2s=","mod_revision":"5","value":"eyJhIjoxfQ=="}],"count":"1"});
        let r = parse_range(&range).unwrap();
        assert_eq!(r.revision, 7);
        assert_eq!(
            r.kv.unwrap(),
            Kv {
                value: Ok("{\"a\":1}".into()),
                mod_revision: 5
            }
        );
        assert!(parse_range(&json!({"header":{"revision":"1"}}))
            .unwrap()
            .kv
            .is_none());
        let ok = json!({"header":{"revision":"8"},"succeeded":true,"responses":[]});
        assert_eq!(parse_txn(&ok).unwrap(), Written::Done(8));
        let lost = json!({"header":{"revision":"8"},"responses":[{"response_range":{"kvs":[{"mod_revision":"6"}]}}]});
        assert_eq!(parse_txn(&lost).unwrap(), Written::Conflict(6));
        let created = json!({"result":{"header":{"revision":"2"},"created":true}});
        assert_eq!(parse_watch(&created).unwrap(), WatchMsg::Created);
        let events = json!({"result":{"events":[{"kv":{"mod_revision":"3","value":"e30="}},{"type":"DELETE","kv":{"mod_revision":"4"}}]}});
        assert_eq!(
            parse_watch(&events).unwrap(),
            WatchMsg::Events(vec![(3, Some(Ok("{}".into()))), (4, None)])
        );
        // A value that is not UTF-8 is refused alone; the event after it stands.
        let bad = json!({"result":{"events":[{"kv":{"mod_revision":"5","value":"//4="}},{"kv":{"mod_revision":"6","value":"e30="}}]}});
        match parse_watch(&bad).unwrap() {
            WatchMsg::Events(events) => {
                assert!(matches!(events[0], (5, Some(Err(_)))));
                assert_eq!(events[1], (6, Some(Ok("{}".into()))));
            }
            other => panic!("{other:?}"),
        }
        let compacted = json!({"result":{"canceled":true,"compact_revision":"2"}});
        assert_eq!(parse_watch(&compacted).unwrap(), WatchMsg::Compacted(2));
        // A token etcd no longer knows (it restarted): an auth error, not an outage.
        let denied = json!({"result":{"created":true,"canceled":true,"cancel_reason":"etcdserver: permission denied"}});
        assert!(matches!(parse_watch(&denied), Err(EtcdError::Auth(_))));
        let invalid = json!({"error":{"grpc_code":16,"http_code":401,"message":"etcdserver: invalid auth token"}});
        assert!(matches!(parse_watch(&invalid), Err(EtcdError::Auth(_))));
        let no_leader = json!({"result":{"canceled":true,"cancel_reason":"etcdserver: no leader"}});
        assert!(matches!(parse_watch(&no_leader), Ok(WatchMsg::Canceled(_))));
    }

    #[tokio::test]
    async fn a_last_message_without_its_newline_is_read() {
        let body = "{\"result\":{\"created\":true}}\n{\"error\":{\"grpc_code\":14,\"message\":\"etcdserver: no leader\"}}";
        let mut watch = Watch {
            res: reqwest::Response::from(http::Response::new(body)),
            buf: Vec::new(),
            base: "http://etcd".into(),
        };
        assert_eq!(watch.next().await.unwrap(), WatchMsg::Created);
        assert!(matches!(watch.next().await, Ok(WatchMsg::Canceled(r)) if r.contains("no leader")));
        assert!(matches!(watch.next().await, Err(EtcdError::Unreachable(_))));
    }
}
