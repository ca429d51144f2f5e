//! The seam between the gateway and its upstream HTTP client: `send` takes a finished request
//! and returns the upstream's response head. Behind it, hyper-util's pooled client, one per
//! actix worker thread (so a request and its connection never cross threads) and per
//! (connect timeout, TLS settings) pair. Redirects are never followed.

use super::body::ProxyBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// Idle upstream connections kept per host per worker.
const POOL_IDLE_PER_HOST: usize = 1024;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

thread_local! {
    static CLIENTS: RefCell<Vec<(Duration, usize, HttpClient)>> = const { RefCell::new(Vec::new()) };
}

/// Why an upstream exchange failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("request body: {0}")]
    Body(String),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
}

/// Sends `req` upstream and waits for the response head.
pub async fn send(
    req: http::Request<ProxyBody>,
    connect_timeout: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<http::Response<Incoming>, ForwardError> {
    let key = Arc::as_ptr(tls) as usize;
    let fut = CLIENTS.with(|cell| {
        let mut clients = cell.borrow_mut();
        let idx = match clients
            .iter()
            .position(|(t, k, _)| *t == connect_timeout && *k == key)
        {
            Some(i) => i,
            None => {
                clients.push((connect_timeout, key, new_client(connect_timeout, tls)));
                clients.len() - 1
            }
        };
        clients[idx].2.request(req)
    });
    fut.await.map_err(classify)
}

fn new_client(connect_timeout: Duration, tls: &Arc<rustls::ClientConfig>) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((**tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .set_host(false)
        .build(https)
}

fn classify(e: hyper_util::client::legacy::Error) -> ForwardError {
    use std::error::Error;
    let mut source = e.source();
    let mut timed_out = false;
    let mut body_err = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                timed_out = true;
            }
        }
        if let Some(b) = s.downcast_ref::<super::body::RequestBodyError>() {
            body_err = Some(b.to_string());
        }
        source = s.source();
    }
    if e.is_connect() {
        return if timed_out {
            ForwardError::ConnectTimeout
        } else {
            ForwardError::Connect(chain(&e))
        };
    }
    match body_err {
        Some(b) => ForwardError::Body(b),
        None => ForwardError::Protocol(chain(&e)),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// TLS client settings for upstreams: the Mozilla root set (webpki-roots).
pub fn default_tls_config() -> Arc<rustls::ClientConfig> {
    static CFG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Arc::new(tls_config_with_roots(roots))
    })
    .clone()
}

/// TLS client settings trusting `roots` (plus nothing else).
pub fn tls_config_with_roots(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
