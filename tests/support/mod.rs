//! Test harness: a real upstream HTTP server on 127.0.0.1:0 that records what it received, and
//! a gateway started in-process (or as the real binary) on a free loopback port.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent on the request line.
    pub target: String,
    pub version: http::Version,
    /// Headers in the order received; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// The gateway's end of the connection the request came on.
    pub peer: SocketAddr,
    /// The body, kept only up to 1 MiB.
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the upstream answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    /// Wait this long before sending the response head.
    pub delay: Duration,
    /// When set, the reply is what this future gives (a blocking query that answers when
    /// something changes); the fields above are ignored.
    pub later: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>>,
}

pub enum ReplyBody {
    Bytes(Vec<u8>),
    /// `n` zero bytes in 64 KiB chunks; `sized` sends a Content-Length, otherwise chunked.
    Zeros {
        n: u64,
        sized: bool,
    },
    /// Chunks as they are sent on the channel; the body ends when the sender is dropped (a
    /// watch stream).
    Chunks(tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>),
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![],
            body: ReplyBody::Bytes(body.as_bytes().to_vec()),
            delay: Duration::ZERO,
            later: None,
        }
    }
    /// A reply that `f` gives later.
    pub fn later(f: impl std::future::Future<Output = Reply> + Send + 'static) -> Reply {
        let mut r = Reply::ok("");
        r.later = Some(Box::pin(f));
        r
    }
    pub fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A real HTTP/1.1 server on 127.0.0.1:0 (hyper), recording every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Answers "ok" to everything.
    pub fn start_ok() -> Upstream {
        Self::start(|_| Reply::ok("ok"))
    }

    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Upstream {
        Self::start_on(
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream"),
            handler,
        )
    }

    pub fn start_on(
        listener: std::net::TcpListener,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let seen2 = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let (stream, peer) = tokio::select! {
                        r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                        _ = &mut stop_rx => break,
                    };
                    let seen = seen2.clone();
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let svc =
                            hyper::service::service_fn(move |req: http::Request<Incoming>| {
                                let seen = seen.clone();
                                let handler = handler.clone();
                                async move {
                                    Ok::<_, Infallible>(
                                        serve_one(req, peer, &seen, &*handler).await,
                                    )
                                }
                            });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    });
                }
            });
        });
        Upstream {
            addr,
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_one(
    req: http::Request<Incoming>,
    peer: SocketAddr,
    seen: &Mutex<Vec<Recorded>>,
    handler: &Handler,
) -> http::Response<BoxBody> {
    let (parts, mut body) = req.into_parts();
    let mut rec = Recorded {
        method: parts.method.to_string(),
        // As on the request line: origin-form unless the gateway sent something else.
        target: parts.uri.to_string(),
        version: parts.version,
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len: 0,
        peer,
        body: Vec::new(),
    };
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            rec.body_len += data.len() as u64;
            if rec.body.len() < (1 << 20) {
                rec.body
                    .extend_from_slice(&data[..data.len().min((1 << 20) - rec.body.len())]);
            }
        }
    }
    let mut reply = handler(&rec);
    seen.lock().expect("lock").push(rec);
    if let Some(later) = reply.later.take() {
        reply = later.await;
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut builder = http::Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        builder = builder.header(k, v);
    }
    let body: BoxBody = match reply.body {
        ReplyBody::Bytes(b) => Full::new(Bytes::from(b))
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
        ReplyBody::Zeros { n, sized } => {
            if sized {
                builder = builder.header("content-length", n.to_string());
            }
            let chunk = Bytes::from(vec![0u8; 64 * 1024]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, std::io::Error>(Frame::data(chunk.slice(..take as usize))),
                        left - take,
                    ))
                }
            });
            StreamBody::new(stream).boxed_unsync()
        }
        ReplyBody::Chunks(rx) => {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))), rx))
            });
            StreamBody::new(stream).boxed_unsync()
        }
    };
    builder.body(body).expect("response")
}

/// A gateway running in-process on its own actix system thread.
pub struct Gateway {
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Starts a gateway with `config` (JSON text); `server.host`/`port` are replaced by a free
    /// loopback port.
    pub fn start(config: &str) -> Gateway {
        Self::start_in(config, std::path::Path::new("."))
    }

    pub fn start_in(config: &str, base: &std::path::Path) -> Gateway {
        let cfg = kairos_rs::config::load_str(config, "test-config", base)
            .unwrap_or_else(|e| panic!("{e}"));
        let state =
            Arc::new(kairos_rs::runtime::SharedState::new(cfg).unwrap_or_else(|e| panic!("{e}")));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind gateway");
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let bound = kairos_rs::server::bind(state, Some(listener)).expect("gateway bind");
                tx.send((bound.addr, bound.server.handle()))
                    .expect("send addr");
                let _ = bound.server.await;
            });
        });
        let (addr, handle) = rx.recv().expect("gateway started");
        Gateway {
            addr,
            handle,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let h = self.handle.clone();
        let _ = std::thread::spawn(move || block_on(h.stop(false))).join();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a future to completion on a fresh current-thread runtime (for sync tests).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt")
        .block_on(f)
}

/// A config with one upstream `u` at `upstream_url`, the given routes (JSON array text) and
/// extra top-level keys (JSON object members, may be empty).
pub fn config(upstream_url: &str, routes: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    format!(
        r#"{{"version":1,"server":{{"workers":1}},"upstreams":{{"u":{{"servers":[{{"url":"{upstream_url}"}}]}}}},"routes":{routes},"logging":{{"access_log":false,"level":"error"}}{extra}}}"#
    )
}

/// The Prometheus text of `/_kairos/metrics`, fetched with the admin token.
pub async fn scrape_metrics(gw: &Gateway, token: &str) -> String {
    client()
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body")
}

/// A plain HTTP client that does not follow redirects.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("client")
}

/// The builder of [`client`], for tests that need more settings. Always use this (not
/// `reqwest::Client::builder()`): it installs the TLS crypto provider reqwest needs.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
}

/// reqwest is built without a TLS crypto provider of its own: it uses the process default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The value of one sample in Prometheus text exposition: `name` with exactly these labels
/// (in any order). `None` if the series is absent.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let mut got: Vec<(String, String)> = Vec::new();
            for pair in rest.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"")?;
                got.push((k.to_string(), v.trim_end_matches('"').to_string()));
            }
            let mut want: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            got.sort();
            want.sort();
            (got == want).then(|| value.parse().ok()).flatten()
        })
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends raw bytes on a new connection and returns everything read until the server closes
/// or `timeout` passes.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a [`RawUpstream`] ends a connection after answering.
#[derive(Clone, Copy)]
pub enum Then {
    /// Wait, then close.
    Close(Duration),
    /// Reset the connection (RST) at once.
    Reset,
    /// Keep the connection and answer every further request the same way, pausing this
    /// long after each answer.
    KeepServing(Duration),
}

/// An upstream on raw sockets, for framing and faults no real server would produce: on its
/// n-th connection (from 0) it reads a request, writes `script(n).0` byte for byte, then does
/// `script(n).1`.
pub struct RawUpstream {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests answered (a read with data followed by a complete write).
    pub answered: Arc<std::sync::atomic::AtomicUsize>,
}

impl RawUpstream {
    pub fn start(script: impl Fn(usize) -> (&'static [u8], Then) + Send + 'static) -> RawUpstream {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering::SeqCst;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind raw upstream");
        let addr = l.local_addr().expect("addr");
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let answered: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (conns, ans) = (connections.clone(), answered.clone());
        std::thread::spawn(move || {
            for (n, s) in l.incoming().flatten().enumerate() {
                conns.fetch_add(1, SeqCst);
                let (reply, then) = script(n);
                let ans = ans.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 8192];
                    loop {
                        if !matches!(s.read(&mut buf), Ok(n) if n > 0)
                            || s.write_all(reply).is_err()
                        {
                            return;
                        }
                        ans.fetch_add(1, SeqCst);
                        match then {
                            Then::Close(wait) => {
                                std::thread::sleep(wait);
                                return;
                            }
                            Then::Reset => {
                                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                                return;
                            }
                            Then::KeepServing(pause) => std::thread::sleep(pause),
                        }
                    }
                });
            }
        });
        RawUpstream {
            addr,
            connections,
            answered,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// `GET target` with the given Host on a new connection (closed after the response).
pub fn raw_get(addr: SocketAddr, target: &str, host: &str) -> String {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw_exchange(addr, req.as_bytes(), Duration::from_secs(5))
}

/// Resident memory of a process in KiB (VmRSS) and its peak (VmHWM).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The gateway binary run as a child process with a config file.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub stderr_lines: Arc<Mutex<Vec<String>>>,
    /// Dropped with the process: lets a reader that stopped reading close the pipe.
    _stop_reading: Option<std::sync::mpsc::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Writes `config` (port forced to 0, JSON logs) to a temp file and runs the binary on it.
    pub fn start(config: &str) -> GatewayProcess {
        Self::start_with_env(config, &[])
    }

    /// As [`GatewayProcess::start`], with extra environment variables.
    /// As [`GatewayProcess::start`], but nobody reads stderr after the "listening" line: the
    /// pipe stays open and fills up, as with a stalled log consumer.
    pub fn start_unread_stderr(config: &str) -> GatewayProcess {
        let dir = Self::write_config(config);
        Self::spawn(dir, &[], false, None)
    }

    /// As [`GatewayProcess::start`] for a config whose `logging.file` is `log`: the
    /// "listening" line is looked for there.
    pub fn start_logging_to(config: &str, log: &std::path::Path) -> GatewayProcess {
        let dir = Self::write_config(config);
        Self::spawn(dir, &[], true, Some(log))
    }

    /// As [`GatewayProcess::start`], with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> GatewayProcess {
        let dir = Self::write_config(config);
        Self::start_in_dir(dir, env)
    }

    fn write_config(config: &str) -> tempfile::TempDir {
        let mut v: serde_json::Value = serde_json::from_str(config).expect("config json");
        v["server"]["port"] = 0.into();
        v["server"]["host"] = "127.0.0.1".into();
        v["logging"]["format"] = "json".into();
        if v["logging"].get("level").is_none() {
            v["logging"]["level"] = "info".into();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, v.to_string()).expect("write config");
        dir
    }

    /// Runs the binary on `dir/config.json` as it is (say, a config an earlier gateway
    /// persisted); the directory is removed with the process.
    pub fn start_in_dir(dir: tempfile::TempDir, env: &[(&str, &str)]) -> GatewayProcess {
        Self::spawn(dir, env, true, None)
    }

    fn spawn(
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        read_all: bool,
        log_file: Option<&std::path::Path>,
    ) -> GatewayProcess {
        let path = dir.path().join("config.json");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kairos-rs"))
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn kairos-rs");
        let stderr = child.stderr.take().expect("stderr");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines2 = lines.clone();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            let mut reader = std::io::BufReader::new(stderr);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                let text = line.trim_end_matches('\n').to_string();
                line.clear();
                let listening = text.contains("kairos-rs listening");
                if listening {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(text.clone());
                    }
                }
                lines2.lock().expect("lock").push(text);
                if listening && !read_all {
                    // Hold the pipe open, unread, until the process is dropped.
                    let _ = stop_rx.recv();
                    return;
                }
            }
        });
        let line = match log_file {
            None => rx
                .recv_timeout(Duration::from_secs(20))
                .expect("gateway did not start listening"),
            Some(log) => {
                let mut found = None;
                let listening = wait_until(Duration::from_secs(20), || {
                    found = std::fs::read_to_string(log).ok().and_then(|text| {
                        text.lines()
                            .find(|l| l.contains("kairos-rs listening"))
                            .map(str::to_string)
                    });
                    found.is_some()
                });
                assert!(
                    listening,
                    "gateway did not log listening to {}",
                    log.display()
                );
                found.expect("listening line")
            }
        };
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        let addr = parsed["addr"]
            .as_str()
            .expect("addr field")
            .parse()
            .expect("socket addr");
        GatewayProcess {
            child,
            addr,
            stderr_lines: lines,
            _stop_reading: Some(stop_tx),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The config file the gateway was started with.
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("config.json")
    }

    /// Stops the gateway and hands over its directory (config file included).
    pub fn into_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// SIGTERM, then waits (up to 20 s) for the process to exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        self.signal("TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                if !status.success() {
                    // Says why, for a failure seen only under load.
                    let logs = self.logs();
                    let tail = &logs[logs.len().saturating_sub(20)..];
                    eprintln!(
                        "gateway exited with {status} after SIGTERM; its last lines: {tail:#?}"
                    );
                }
                return status.success();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.stderr_lines.lock().expect("lock").clone()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real redis-server on a free loopback port, with nothing persisted; stopped on drop.
/// `kill` and `restart` (same port) simulate an outage; `pause`/`resume` a stalled Redis.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    /// Arguments after the port and data directory (TLS, replication, cluster, sentinel).
    extra: Vec<String>,
    /// Whether the port speaks TLS (`--port 0 --tls-port`).
    tls: bool,
    /// The test's client certificate and CA, for [`RedisServer::connection`] to a TLS server.
    certs: Option<redis::TlsCertificates>,
    _dir: tempfile::TempDir,
}

/// A loopback address that refuses connections for as long as this lives: a TCP socket bound
/// to a free port but never listening. Holding it keeps any other test from taking the port;
/// a port bound and released again could be (a "collector down" test once got its spans
/// accepted by whatever bound the port next).
pub struct RefusedAddr {
    _socket: socket2::Socket,
    pub addr: std::net::SocketAddr,
}

pub fn refused_addr() -> RefusedAddr {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address");
    RefusedAddr {
        _socket: socket,
        addr,
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new(), false)
    }

    /// A redis-server with `extra` arguments; `tls`: the port is its TLS port (no plain one).
    pub fn start_with(extra: Vec<String>, tls: bool) -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            extra,
            tls,
            certs: None,
            _dir: tempfile::tempdir().expect("tempdir"),
        };
        r.restart();
        r
    }

    /// Only TLS on its port, with `pki`'s server certificate; clients must show a certificate
    /// the CA signed (`--tls-auth-clients yes`).
    pub fn start_tls(pki: &TestPki) -> RedisServer {
        Self::start_tls_with(pki, Vec::new())
    }

    /// As [`RedisServer::start_tls`], with more arguments.
    pub fn start_tls_with(pki: &TestPki, more: Vec<String>) -> RedisServer {
        let p = |f: &std::path::Path| f.to_string_lossy().into_owned();
        let mut args = vec![
            "--tls-cert-file".into(),
            p(&pki.server_cert),
            "--tls-key-file".into(),
            p(&pki.server_key),
            "--tls-ca-cert-file".into(),
            p(&pki.ca),
            "--tls-auth-clients".into(),
            "yes".into(),
        ];
        args.extend(more);
        let mut r = Self::start_with(args, true);
        r.certs = Some(pki.certificates());
        r
    }

    /// A replica of the Redis on `master_port`.
    pub fn start_replica(master_port: u16) -> RedisServer {
        Self::start_with(
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master_port.to_string(),
            ],
            false,
        )
    }

    pub fn url(&self) -> String {
        match self.tls {
            true => format!("rediss://127.0.0.1:{}", self.port),
            false => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// A synchronous connection (over TLS with the test's certificates to a TLS server).
    pub fn connection(&self) -> redis::Connection {
        match &self.certs {
            Some(c) => redis::Client::build_with_tls(self.url(), c.clone()),
            None => redis::Client::open(self.url()),
        }
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect to redis-server")
    }

    /// Starts (again) on the same port and waits until it answers PING (a TLS server: until
    /// it accepts connections).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let ports: Vec<&str> = match self.tls {
            true => vec!["--port", "0", "--tls-port", &port],
            false => vec!["--port", &port],
        };
        let child = std::process::Command::new("redis-server")
            .args(&ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        let tls = self.tls;
        assert!(
            wait_until(Duration::from_secs(10), || match tls {
                true => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                false => redis_ping(port),
            }),
            "redis-server did not answer on port {port}"
        );
    }

    /// SIGKILL: connections reset, nothing answers until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// SIGSTOP: connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(self.child.as_ref().map_or(0, |c| c.id()).to_string())
                .status();
        }
        self.kill();
    }
}

/// A private CA, a server certificate it signed for 127.0.0.1 and localhost, and a client
/// certificate it signed; PEM files in a temporary folder.
pub struct TestPki {
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestPki {
    /// The CA and the client certificate, as the redis crate takes them.
    pub fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(&self.client_cert).unwrap(),
                client_key: std::fs::read(&self.client_key).unwrap(),
            }),
            root_cert: Some(std::fs::read(&self.ca).unwrap()),
        }
    }

    pub fn new(name: &str) -> TestPki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>, usages: Vec<rcgen::ExtendedKeyUsagePurpose>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        // The servers' certificate is a client one too: Cluster nodes (and replicas, and
        // sentinels without a client certificate of their own) present it to each other.
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_cert, client_key) = leaf(
            vec!["kairos-client".into()],
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |file: &str, text: &str| {
            let path = dir.path().join(file);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        TestPki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            dir,
        }
    }
}

/// A Sentinel on a free port watching the master `name` at `master_port` (quorum 2, the
/// master down after 1 s without answers).
pub struct Sentinel {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(name: &str, master_port: u16) -> Sentinel {
        Self::start_with(name, master_port, "", false)
    }

    /// Over TLS only (`--tls-port`), with `pki`'s server certificate and its client
    /// certificate towards a mutual-TLS master; quorum 1.
    pub fn start_tls(name: &str, master_port: u16, pki: &TestPki) -> Sentinel {
        let conf = format!(
            "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-client-cert-file {}\ntls-client-key-file {}\n\
             tls-replication yes\ntls-auth-clients yes\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display(),
            pki.client_cert.display(),
            pki.client_key.display(),
        );
        Self::start_with(name, master_port, &conf, true)
    }

    /// `extra` is appended to the config file; `tls`: the port is a TLS port (no plain one).
    fn start_with(name: &str, master_port: u16, extra: &str, tls: bool) -> Sentinel {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("sentinel.conf");
        let ports = match tls {
            true => format!("port 0\ntls-port {port}\n"),
            false => format!("port {port}\n"),
        };
        let quorum = if tls { 1 } else { 2 };
        std::fs::write(
            &conf,
            format!(
                "{ports}bind 127.0.0.1\ndir {}\n{extra}\
                 sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let child = std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        assert!(
            wait_until(Duration::from_secs(10), || match tls {
                true => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
                false => redis_ping(port),
            }),
            "sentinel did not answer on port {port}"
        );
        Sentinel {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to sentinel")
    }

    /// The port of the master this sentinel names for `name`.
    pub fn master_port(&self, name: &str) -> Option<u16> {
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(name)
            .query(&mut self.connection())
            .ok()?;
        addr.map(|(_, p)| p)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of `n` masters (no replicas) on free ports, its slots assigned by
/// `redis-cli --cluster create`; started and checked `cluster_state:ok` on every node.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        Self::start_with(n, None)
    }

    /// With `pki`: every node speaks only TLS, to clients and to each other
    /// (`--tls-cluster yes`), and wants client certificates.
    pub fn start_with(n: usize, pki: Option<&TestPki>) -> RedisCluster {
        let args: Vec<String> = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
            .map(String::from)
            .to_vec();
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| match pki {
                None => RedisServer::start_with(args.clone(), false),
                Some(pki) => {
                    let mut more = args.clone();
                    more.extend(
                        ["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from),
                    );
                    RedisServer::start_tls_with(pki, more)
                }
            })
            .collect();
        // Bounded: redis-cli waits for the nodes to meet for as long as it takes.
        let mut cli = std::process::Command::new("timeout");
        cli.arg("20").arg("redis-cli");
        if let Some(pki) = pki {
            cli.arg("--tls")
                .arg("--cacert")
                .arg(&pki.ca)
                .arg("--cert")
                .arg(&pki.client_cert)
                .arg("--key")
                .arg(&pki.client_key);
        }
        let out = cli
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|r| format!("127.0.0.1:{}", r.port)))
            .arg("--cluster-yes")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("redis-cli must be installed (scripts/test.sh installs redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            wait_until(Duration::from_secs(20), || nodes.iter().all(|r| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut r.connection())
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            })),
            "the cluster never reached cluster_state:ok"
        );
        RedisCluster { nodes }
    }

    /// `redis+cluster://` (`rediss+cluster://` for TLS nodes) with every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        let scheme = match self.nodes.first().is_some_and(|r| r.tls) {
            true => "rediss+cluster",
            false => "redis+cluster",
        };
        format!("{scheme}://{}", hosts.join(","))
    }

    /// The value of `key`, asked of the node that holds its slot (plain GET on each node;
    /// the others answer MOVED).
    pub fn get(&self, key: &str) -> Option<String> {
        self.nodes.iter().find_map(|r| {
            redis::cmd("GET")
                .arg(key)
                .query::<Option<String>>(&mut r.connection())
                .ok()
                .flatten()
        })
    }

    /// Every key each node holds (`KEYS *`, node by node).
    pub fn keys_per_node(&self) -> Vec<Vec<String>> {
        self.nodes
            .iter()
            .map(|r| {
                redis::cmd("KEYS")
                    .arg("*")
                    .query(&mut r.connection())
                    .unwrap()
            })
            .collect()
    }
}

/// Whether a Redis on `port` answers PING (RESP over a plain socket).
pub fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A blocking HTTP client with a 10 s timeout (the crypto provider installed first).
pub fn blocking_client() -> reqwest::blocking::Client {
    install_crypto_provider();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A WebSocket echo server on a free loopback port, on its own thread. It echoes text and
/// binary messages; the text "close-me" makes it close with 4002; "headers" makes it answer
/// with the handshake's headers (JSON). Connections accepted are counted.
pub struct WsEcho {
    pub addr: SocketAddr,
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    pub headers: Arc<Mutex<Vec<(String, String)>>>,
    tls: bool,
}

impl WsEcho {
    pub fn start() -> WsEcho {
        Self::start_with(None)
    }

    /// As [`WsEcho::start`], over TLS (`wss`).
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> WsEcho {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(tls)))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> WsEcho {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let (acc, hdrs, is_tls) = (accepted.clone(), headers.clone(), tls.is_some());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (hdrs, tls) = (hdrs.clone(), tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            None => ws_echo_serve(tcp, hdrs).await,
                            Some(acceptor) => {
                                if let Ok(s) = acceptor.accept(tcp).await {
                                    ws_echo_serve(s, hdrs).await;
                                }
                            }
                        }
                    });
                }
            });
        });
        WsEcho {
            addr,
            accepted,
            headers,
            tls: is_tls,
        }
    }

    /// The upstream URL for a gateway config.
    pub fn url(&self) -> String {
        match self.tls {
            false => format!("http://{}", self.addr),
            true => format!("https://localhost:{}", self.addr.port()),
        }
    }
}

/// One connection of [`WsEcho`].
async fn ws_echo_serve<S>(stream: S, hdrs: Arc<Mutex<Vec<(String, String)>>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    use tokio_tungstenite::tungstenite::Message;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    // The callback's error type is tungstenite's (a whole HTTP response).
    #[allow(clippy::result_large_err)]
    let cb = move |req: &Request, mut res: Response| {
        let mut v = seen2.lock().unwrap();
        for (k, val) in req.headers() {
            v.push((k.to_string(), val.to_str().unwrap_or("").to_string()));
        }
        // The first subprotocol the client offers is chosen.
        if let Some(p) = req.headers().get("sec-websocket-protocol") {
            let first = p.to_str().unwrap().split(',').next().unwrap().trim();
            res.headers_mut()
                .insert("sec-websocket-protocol", first.parse().unwrap());
        }
        Ok(res)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
        return;
    };
    *hdrs.lock().unwrap() = seen.lock().unwrap().clone();
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) if t.as_str() == "close-me" => {
                let close = CloseFrame {
                    code: CloseCode::from(4002),
                    reason: "as asked".into(),
                };
                let _ = ws.close(Some(close)).await;
            }
            Message::Text(t) if t.as_str() == "headers" => {
                let j = serde_json::to_string(&*seen.lock().unwrap()).unwrap();
                let _ = ws.send(Message::text(j)).await;
            }
            Message::Text(_) | Message::Binary(_) => {
                let sent = ws.send(msg).await;
                if sent.is_err() {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// A real single-member etcd (Debian's etcd-server) on free loopback ports with a temp data
/// directory; stopped on drop. `kill` and `restart` (same ports, same data) simulate an outage.
/// `start_tls` serves https with a test CA and asks clients for a certificate.
pub struct EtcdServer {
    pub client_port: u16,
    peer_port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    tls: bool,
    /// The auth token, once `enable_auth` has run.
    token: Option<String>,
    /// root's password, once `enable_auth` has run (a restart authenticates again).
    password: Option<String>,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        Self::start_with(false)
    }

    /// etcd on https, its certificate and the client's signed by a test CA (files in
    /// [`EtcdServer::tls_file`]: ca.pem, client.pem, client.key), `--client-cert-auth` on.
    pub fn start_tls() -> EtcdServer {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> EtcdServer {
        let mut e = EtcdServer {
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            tls,
            token: None,
            password: None,
        };
        if tls {
            e.write_certs();
        }
        e.restart();
        e
    }

    /// A file of the test PKI (`start_tls`).
    pub fn tls_file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn write_certs(&self) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "kairos test etcd CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>, cn: &str, usage: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = usage;
            let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "etcd",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client, client_key) =
            leaf(vec![], "kairos", vec![ExtendedKeyUsagePurpose::ClientAuth]);
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server),
            ("server.key", server_key),
            ("client.pem", client),
            ("client.key", client_key),
        ] {
            std::fs::write(self.tls_file(name), pem).unwrap();
        }
    }

    /// The client URL, as `cluster.config_store.endpoints` takes it.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Starts (again) on the same ports and data directory; waits until it answers a read.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = std::process::Command::new("etcd");
        cmd.arg("--name")
            .arg("kairos-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .arg("--initial-cluster")
            .arg(format!("kairos-test={peer}"));
        if self.tls {
            cmd.arg("--cert-file")
                .arg(self.tls_file("server.pem"))
                .arg("--key-file")
                .arg(self.tls_file("server.key"))
                .arg("--trusted-ca-file")
                .arg(self.tls_file("ca.pem"))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd must be installed (scripts/test.sh installs Debian's etcd-server)");
        self.child = Some(child);
        // With auth on, the tokens of before the restart are gone: a new one.
        self.token = None;
        assert!(
            wait_until(Duration::from_secs(20), || match self.password.clone() {
                Some(password) => self.login(&password),
                None => self.get().is_some(),
            }),
            "etcd did not answer on {client}"
        );
    }

    /// SIGKILL: connections reset, nothing answers until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client for the test's own calls (the test CA and client certificate with TLS).
    fn client(&self) -> reqwest::blocking::Client {
        install_crypto_provider();
        let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2));
        if self.tls {
            let pem = |n: &str| std::fs::read(self.tls_file(n)).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut pem("ca.pem").as_slice()) {
                roots.add(c.unwrap()).unwrap();
            }
            let certs: Vec<_> = rustls_pemfile::certs(&mut pem("client.pem").as_slice())
                .map(Result::unwrap)
                .collect();
            let key = rustls_pemfile::private_key(&mut pem("client.key").as_slice())
                .unwrap()
                .unwrap();
            let cfg = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_client_auth_cert(certs, key)
                .unwrap();
            b = b.use_preconfigured_tls(cfg);
        }
        b.build().unwrap()
    }

    fn call(&self, path: &str, body: serde_json::Value) -> Option<serde_json::Value> {
        let mut req = self
            .client()
            .post(format!("{}{path}", self.url()))
            .body(body.to_string());
        if let Some(t) = &self.token {
            req = req.header("authorization", t);
        }
        let res = req.send().ok()?;
        res.status().is_success().then(|| res.json().ok()).flatten()
    }

    /// The range answer for "/" (any read; `None` while etcd does not answer).
    fn get(&self) -> Option<serde_json::Value> {
        self.call("/v3/kv/range", serde_json::json!({ "key": "Lw==" }))
    }

    /// Writes `value` at `key` directly (as etcdctl would); the store's new revision.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        self.put_bytes(key, value.as_bytes())
    }

    /// As [`EtcdServer::put`], any bytes (not UTF-8, say).
    pub fn put_bytes(&self, key: &str, value: &[u8]) -> i64 {
        use base64::Engine;
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let v = self
            .call(
                "/v3/kv/put",
                serde_json::json!({ "key": b64(key.as_bytes()), "value": b64(value) }),
            )
            .expect("etcd put");
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("revision")
    }

    /// Deletes `key` directly; the store's new revision.
    pub fn delete(&self, key: &str) -> i64 {
        use base64::Engine;
        let v = self
            .call(
                "/v3/kv/deleterange",
                serde_json::json!({ "key": base64::engine::general_purpose::STANDARD.encode(key) }),
            )
            .expect("etcd delete");
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("revision")
    }

    /// Turns etcd's auth on with the user `root` (role root) and `password`; later calls of
    /// the test authenticate as root.
    pub fn enable_auth(&mut self, password: &str) {
        use serde_json::json;
        let steps = [
            (
                "/v3/auth/user/add",
                json!({ "name": "root", "password": password }),
            ),
            (
                "/v3/auth/user/grant",
                json!({ "user": "root", "role": "root" }),
            ),
            ("/v3/auth/enable", json!({})),
        ];
        for (path, body) in steps {
            assert!(self.call(path, body).is_some(), "etcd {path} failed");
        }
        self.password = Some(password.to_string());
        assert!(self.login(password), "etcd authenticate");
    }

    /// Sets root's password again (to the same one): etcd invalidates every token issued to
    /// root, the gateway's included. (A restart alone does not: etcd replays the
    /// authentications in its log and the tokens come back.)
    pub fn invalidate_tokens(&mut self) {
        let password = self.password.clone().expect("enable_auth first");
        let changed = self.call(
            "/v3/auth/user/changepw",
            serde_json::json!({ "name": "root", "password": password }),
        );
        assert!(changed.is_some(), "etcd changepw failed");
    }

    /// Authenticates as root; whether etcd gave a token.
    fn login(&mut self, password: &str) -> bool {
        let v = self.call(
            "/v3/auth/authenticate",
            serde_json::json!({ "name": "root", "password": password }),
        );
        self.token = v.and_then(|v| v["token"].as_str().map(str::to_string));
        self.token.is_some()
    }
    /// SIGSTOP: connections stay open but nothing is answered (`resume` with SIGCONT).
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Compacts the store's history up to `revision`: a watch from an older one is refused.
    pub fn compact(&self, revision: i64) {
        let v = self.call(
            "/v3/kv/compaction",
            serde_json::json!({ "revision": revision.to_string(), "physical": true }),
        );
        assert!(v.is_some(), "etcd compaction failed");
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused etcd is resumed first, so that the kill ends it.
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill();
    }
}

impl GatewayProcess {
    /// A gateway whose file gives only its own members (server, logging, admin with `token`)
    /// and `cluster.config_store` naming `key` on `etcd`: routes and the rest come from there.
    pub fn start_with_store(etcd: &str, key: &str, token: &str) -> GatewayProcess {
        let store = serde_json::json!({ "type": "etcd", "endpoints": [etcd], "key": key });
        Self::start_with_store_config(store, token, &[])
    }

    /// As [`GatewayProcess::start_with_store`], with the whole `cluster.config_store` object
    /// (credentials, TLS) and extra environment variables.
    pub fn start_with_store_config(
        store: serde_json::Value,
        token: &str,
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let local = serde_json::json!({
            "version": 1,
            "server": { "workers": 1 },
            "admin": { "token": token },
            "logging": { "access_log": false, "level": "info" },
            "cluster": { "config_store": store },
        });
        Self::start_with_env(&local.to_string(), env)
    }
}

/// A TCP relay on a free loopback port to `target` that can be frozen: while frozen it keeps
/// every connection open (and accepts new ones) but passes no byte either way, as a member
/// that is stopped or cut off from the network would. Runs until the process ends.
pub struct FreezableRelay {
    pub port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    /// Frozen one way: requests reach the target, its answers are held back.
    answers_frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl FreezableRelay {
    pub fn start(target: u16) -> FreezableRelay {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let answers_frozen = Arc::new(AtomicBool::new(false));
        let wait = |frozen: &AtomicBool| {
            while frozen.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let (f, af) = (frozen.clone(), answers_frozen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let (f, af) = (f.clone(), af.clone());
                std::thread::spawn(move || {
                    wait(&f);
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                        return;
                    };
                    let pipe =
                        move |mut from: std::net::TcpStream,
                              mut to: std::net::TcpStream,
                              f: Arc<AtomicBool>,
                              one_way: Option<Arc<AtomicBool>>| {
                            use std::io::{Read, Write};
                            let mut buf = [0u8; 16384];
                            loop {
                                let n = match from.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                wait(&f);
                                if let Some(one_way) = &one_way {
                                    wait(one_way);
                                }
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        };
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let f2 = f.clone();
                    std::thread::spawn(move || pipe(c2, s2, f2, None));
                    pipe(server, client, f, Some(af));
                });
            }
        });
        FreezableRelay {
            port,
            frozen,
            answers_frozen,
        }
    }

    /// Passes requests on and holds every answer back: a write is applied, its answer lost.
    pub fn freeze_answers(&self) {
        self.answers_frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn freeze(&self) {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A self-signed certificate for `names` (an IP address becomes an IP SAN), in a temp dir as
/// `server.pem` and `server.key`, and again as `ca.pem` for the clients that trust it; its PEM
/// text; and a rustls server config serving it with ALPN `alpn`.
pub fn self_signed_tls(
    names: &[&str],
    alpn: &[&[u8]],
) -> (tempfile::TempDir, String, Arc<rustls::ServerConfig>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = ck.cert.pem();
    std::fs::write(dir.path().join("server.pem"), &pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pem).unwrap();
    std::fs::write(dir.path().join("server.key"), ck.key_pair.serialize_pem()).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()).into();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (dir, pem, Arc::new(cfg))
}
