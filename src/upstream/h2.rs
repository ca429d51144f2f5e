//! HTTP/2 to upstreams (`protocol` "h2", "h2c", "auto"): hyper's HTTP/2 client connections,
//! one per server per worker thread, shared by the worker's requests to that server. A further
//! connection is opened only while every open one has as many streams in use as the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` allows (hyper would queue the request on a full one).
//! Connections and their tasks stay on the worker thread, like the HTTP/1.1 pool's: hyper
//! spawns its per-stream tasks through a local executor, so nothing needs `Send`.
//!
//! With "auto", a server whose TLS handshake does not choose "h2" by ALPN is remembered as an
//! HTTP/1.1 server, and its requests go to the HTTP/1.1 pool from then on.
//!
//! A WebSocket handshake goes on a stream as an extended CONNECT (RFC 8441) when the server's
//! SETTINGS allow it ([`send_websocket`]), else back to the caller for an HTTP/1.1 upgrade.

use super::body::{ProxyBody, ResponseBody};
use super::client::{self, ForwardError, Lease, SendError, Target, Transport};
use crate::config::model::UpstreamProtocol;
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Attempts on pooled connections that turn out closed before the request was sent.
const STALE_RETRIES: usize = 3;
/// Connections per server per worker at most; past that, requests queue on the least busy.
const MAX_CONNECTIONS_PER_SERVER: usize = 8;
/// A connection with no stream open for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the pool drops closed and idle connections (checked on each request).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The request body on an HTTP/2 connection: a type of its own, so hyper's generic client
/// code (its dispatch channel) is instantiated apart from the HTTP/1.1 pool's and stays as
/// inlined there as it was without HTTP/2 (callgrind: about 360 instructions per HTTP/1.1
/// request).
pub struct H2Body(ProxyBody);

impl http_body::Body for H2Body {
    type Data = bytes::Bytes;
    type Error = super::body::RequestBodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// Runs hyper's HTTP/2 tasks on the current worker thread (`spawn_local`): hyper-util's
/// `TokioExecutor` needs `Send` futures, and the gateway's bodies are not `Send`.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        drop(actix_web::rt::spawn(fut));
    }
}

/// What the pool and the connection's task both know about a connection.
struct Shared {
    /// Streams the server allows at once (its SETTINGS_MAX_CONCURRENT_STREAMS), as last seen.
    max: Cell<usize>,
    /// Streams this worker has open on it.
    open: Cell<usize>,
    /// When its last stream ended.
    idle_since: Cell<Instant>,
    /// The server's first SETTINGS frame has been applied (or the connection is over).
    settled: Cell<bool>,
    /// Told when `settled` becomes true.
    settled_notify: tokio::sync::Notify,
    /// The server allows extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL, RFC 8441).
    extended_connect: Cell<bool>,
}

impl Shared {
    /// Resolves once the server's SETTINGS are known.
    async fn settled(&self) {
        if !self.settled.get() {
            // Single-threaded: nothing can notify between the check and the registration.
            self.settled_notify.notified().await;
        }
    }

    fn settle(&self) {
        if !self.settled.get() {
            self.settled.set(true);
            self.settled_notify.notify_waiters();
        }
    }
}

/// A stream's place on its connection, given back when dropped (with the lease that holds it).
pub struct Stream(Rc<Shared>);

impl Stream {
    fn open(shared: &Rc<Shared>) -> Stream {
        shared.open.set(shared.open.get() + 1);
        Stream(shared.clone())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let open = self.0.open.get().saturating_sub(1);
        self.0.open.set(open);
        if open == 0 {
            self.0.idle_since.set(Instant::now());
        }
    }
}

struct Conn {
    sender: http2::SendRequest<H2Body>,
    shared: Rc<Shared>,
}

impl Conn {
    fn has_room(&self) -> bool {
        self.shared.open.get() < self.shared.max.get()
    }

    fn expired(&self, now: Instant) -> bool {
        self.sender.is_closed()
            || (self.shared.open.get() == 0
                && now.saturating_duration_since(self.shared.idle_since.get()) >= IDLE_TIMEOUT)
    }
}

/// One server's HTTP/2 connections on this worker.
#[derive(Default)]
struct Server {
    conns: Vec<Conn>,
    /// "auto" only: the server chose HTTP/1.1 by ALPN.
    http1: bool,
    /// A connection being made: requests that find no room wait for it instead of making
    /// one each (a burst would otherwise open a connection per request).
    connecting: Option<Rc<tokio::sync::Notify>>,
}

#[derive(Default)]
struct Pool {
    servers: rustc_hash::FxHashMap<u64, Server>,
    swept: Option<Instant>,
}

/// Where a request goes, as the pool sees it.
enum Pick {
    /// A stream on an open connection.
    Stream(http2::SendRequest<H2Body>, Stream),
    /// The server speaks HTTP/1.1 ("auto").
    Http1,
    /// No connection with room: a new one.
    Connect,
    /// No connection with room, and one is being made: wait for it, then pick again.
    Wait(Rc<tokio::sync::Notify>),
}

impl Pool {
    fn pick(&mut self, key: u64, now: Instant) -> Pick {
        match self.swept {
            Some(t) if now.saturating_duration_since(t) < SWEEP_EVERY => {}
            _ => self.sweep(now),
        }
        let server = self.servers.entry(key).or_default();
        if server.http1 {
            return Pick::Http1;
        }
        server.conns.retain(|c| !c.sender.is_closed());
        let least_busy = server.conns.iter().min_by_key(|c| c.shared.open.get());
        match least_busy {
            Some(c) if c.has_room() || server.conns.len() >= MAX_CONNECTIONS_PER_SERVER => {
                Pick::Stream(c.sender.clone(), Stream::open(&c.shared))
            }
            _ => match &server.connecting {
                Some(n) => Pick::Wait(n.clone()),
                None => {
                    server.connecting = Some(Rc::default());
                    Pick::Connect
                }
            },
        }
    }

    /// Drops closed connections and those idle past [`IDLE_TIMEOUT`] (dropping the last
    /// sender of a connection closes it), and the servers left with none.
    fn sweep(&mut self, now: Instant) {
        self.swept = Some(now);
        self.servers.retain(|_, s| {
            s.conns.retain(|c| !c.expired(now));
            s.http1 || s.connecting.is_some() || !s.conns.is_empty()
        });
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Sends `req` over HTTP/2 (or HTTP/1.1 to an "auto" server that chose it) and waits for the
/// response head.
pub(super) async fn send(
    mut req: http::Request<ProxyBody>,
    target: &Target<'_>,
) -> Result<(http::Response<ResponseBody>, Lease), SendError> {
    let mut attempt = 0;
    while attempt <= STALE_RETRIES {
        let (mut sender, stream, reused) = match lease(target).await {
            Ok(Some(leased)) => leased,
            // The server speaks HTTP/1.1 ("auto"): its connections are in the HTTP/1.1 pool.
            Ok(None) => return client::send(req, target).await,
            Err(error) => {
                return Err(SendError {
                    error,
                    unsent: Some(req),
                })
            }
        };
        absolute_form(&mut req, target.https);
        match sender.try_send_request(req.map(H2Body)).await {
            Ok(res) => return Ok((res.map(ResponseBody::Hyper), client::h2_lease(stream))),
            Err(mut e) => match e.take_message().map(|r| r.map(|b| b.0)) {
                // The connection closed (GOAWAY) before the request was sent: another one.
                Some(r) if reused && attempt < STALE_RETRIES => {
                    req = r;
                    attempt += 1;
                }
                unsent => {
                    let e = e.into_error();
                    let error = match refused(&e) {
                        true => ForwardError::Refused(client::chain(&e)),
                        false => client::classify(e),
                    };
                    return Err(SendError { error, unsent });
                }
            },
        }
    }
    Err(ForwardError::Protocol("no usable connection".into()).into())
}

/// Whether the server refused the stream without processing it (RFC 9113 8.7): its GOAWAY
/// (NO_ERROR, a graceful close) named a last stream below this one, or the request came after
/// that GOAWAY, or it answered RST_STREAM REFUSED_STREAM. h2 reports a GOAWAY's reason only to
/// the streams above its last stream id and to new ones; the streams below it that the
/// connection's close cuts off fail with a broken pipe instead.
fn refused(e: &hyper::Error) -> bool {
    use std::error::Error;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return h.is_remote()
                && match h.reason() {
                    Some(h2::Reason::NO_ERROR) => h.is_go_away(),
                    Some(h2::Reason::REFUSED_STREAM) => h.is_reset(),
                    _ => false,
                };
        }
        source = s.source();
    }
    false
}

/// A stream for one request to the target's server: on an open connection with room (then
/// `reused` is true), or on a new one. `None`: the server speaks HTTP/1.1 ("auto"), its
/// connections are in the HTTP/1.1 pool.
async fn lease(
    target: &Target<'_>,
) -> Result<Option<(http2::SendRequest<H2Body>, Stream, bool)>, ForwardError> {
    loop {
        return match POOL.with(|p| p.borrow_mut().pick(target.pool_key, Instant::now())) {
            Pick::Wait(connecting) => {
                // Created before the connect can finish (no await in between): not missed.
                connecting.notified().await;
                continue;
            }
            Pick::Stream(sender, stream) => Ok(Some((sender, stream, true))),
            Pick::Http1 => Ok(None),
            // Boxed: connecting (TLS handshake included) is a large future and rare; inline it
            // made every request's send future larger, and moving it cost memcpy.
            Pick::Connect => Ok(Box::pin(connect_once(target))
                .await?
                .map(|(sender, stream)| (sender, stream, false))),
        };
    }
}

/// [`connect`], with the requests that find no room meanwhile waiting for it.
async fn connect_once(
    t: &Target<'_>,
) -> Result<Option<(http2::SendRequest<H2Body>, Stream)>, ForwardError> {
    let _connecting = Connecting(t.pool_key);
    connect(t).await
}

/// A connect in progress to the server with this pool key; when it is over (done, failed, or
/// its request cancelled), the requests waiting for it pick again.
struct Connecting(u64);

impl Drop for Connecting {
    fn drop(&mut self) {
        let waiting = POOL.with(|p| {
            let mut p = p.borrow_mut();
            p.servers.get_mut(&self.0).and_then(|s| s.connecting.take())
        });
        if let Some(n) = waiting {
            n.notify_waiters();
        }
    }
}

/// HTTP/2 names the target in `:scheme` and `:authority`, which h2 takes from the URI: the
/// Host header the forwarder set becomes the authority.
fn absolute_form(req: &mut http::Request<ProxyBody>, https: bool) {
    let authority = match req.headers_mut().remove(http::header::HOST) {
        Some(host) => http::uri::Authority::try_from(host.as_bytes()).ok(),
        None => req.uri().authority().cloned(),
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(match https {
        true => http::uri::Scheme::HTTPS,
        false => http::uri::Scheme::HTTP,
    });
    if authority.is_some() {
        parts.authority = authority;
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// A new connection to the target: HTTP/2 with a stream taken on it, or `None` when an "auto"
/// server chose HTTP/1.1 (that connection is put in the HTTP/1.1 pool).
async fn connect(
    t: &Target<'_>,
) -> Result<Option<(http2::SendRequest<H2Body>, Stream)>, ForwardError> {
    let io = client::connect(t).await?;
    let sender = match io {
        Transport::Tls(tls) if !alpn_h2(&tls) => {
            if t.protocol != UpstreamProtocol::Auto {
                return Err(ForwardError::Protocol(
                    "the server did not choose h2 by ALPN".into(),
                ));
            }
            let conn = super::h1::Conn::new(Transport::Tls(tls), t.max_header_size);
            super::h1::pool_put(t.pool_key, conn);
            POOL.with(|p| p.borrow_mut().servers.entry(t.pool_key).or_default().http1 = true);
            return Ok(None);
        }
        Transport::Tls(tls) => handshake(tls, t.max_header_size).await?,
        Transport::Tcp(tcp) => handshake(tcp, t.max_header_size).await?,
    };
    let stream = Stream::open(&sender.shared);
    let pair = (sender.sender.clone(), stream);
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let server = p.servers.entry(t.pool_key).or_default();
        server.conns.push(sender);
    });
    Ok(Some(pair))
}

fn alpn_h2(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> bool {
    tls.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// An HTTP/2 connection over `io` (prior knowledge, or "h2" chosen by ALPN), its task spawned
/// on this worker; the task keeps the server's stream limit current for the pool.
async fn handshake<T>(io: T, max_header_size: usize) -> Result<Conn, ForwardError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let first = Rc::new(FirstFrameRead::default());
    let io = TokioIo::new(FirstFrame::new(io, first.clone()));
    let (sender, conn) = http2::Builder::new(LocalExec)
        .max_header_list_size(u32::try_from(max_header_size).unwrap_or(u32::MAX))
        .handshake::<_, H2Body>(io)
        .await
        .map_err(|e| ForwardError::Protocol(client::chain(&e)))?;
    let shared = Rc::new(Shared {
        max: Cell::new(conn.current_max_send_streams().max(1)),
        open: Cell::new(0),
        idle_since: Cell::new(Instant::now()),
        settled: Cell::new(false),
        settled_notify: tokio::sync::Notify::new(),
        extended_connect: Cell::new(false),
    });
    let watch = shared.clone();
    let mut conn = Box::pin(conn);
    actix_web::rt::spawn(async move {
        let done = std::future::poll_fn(|cx| {
            let polled = conn.as_mut().poll(cx);
            watch.max.set(conn.current_max_send_streams().max(1));
            if !watch.settled.get() {
                if first.done.get() || polled.is_ready() {
                    // hyper's task for the h2 connection read the server's SETTINGS (its
                    // first frame, RFC 9113 3.4) and applied it before this task could run.
                    watch
                        .extended_connect
                        .set(conn.is_extended_connect_protocol_enabled());
                    watch.settle();
                } else {
                    *first.waker.borrow_mut() = Some(cx.waker().clone());
                }
            }
            polled
        })
        .await;
        watch.settle();
        if let Err(e) = done {
            tracing::debug!(error = %e, "upstream HTTP/2 connection closed with an error");
        }
    });
    Ok(Conn { sender, shared })
}

/// A connection's I/O that notes when the first frame the server sent (its SETTINGS) has been
/// read whole; then only a flag test per read.
struct FirstFrame<T> {
    io: T,
    /// The frame header's bytes so far.
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the first frame still to come, once its header is known.
    left: Option<usize>,
    done: Rc<FirstFrameRead>,
}

/// Whether the server's first frame has been read (or the stream ended), and who to wake then.
#[derive(Default)]
struct FirstFrameRead {
    done: Cell<bool>,
    waker: RefCell<Option<std::task::Waker>>,
}

impl FirstFrameRead {
    fn set(&self) {
        self.done.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

impl<T> FirstFrame<T> {
    fn new(io: T, done: Rc<FirstFrameRead>) -> Self {
        FirstFrame {
            io,
            head: [0; 9],
            have: 0,
            left: None,
            done,
        }
    }

    fn follow(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.done.done.get() {
            match self.left {
                None => {
                    let n = (9 - self.have).min(data.len());
                    self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
                    self.have += n;
                    data = &data[n..];
                    if self.have == 9 {
                        let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                        self.left = Some(len as usize);
                    }
                }
                Some(left) => {
                    let n = left.min(data.len());
                    self.left = Some(left - n);
                    data = &data[n..];
                }
            }
            if self.left == Some(0) {
                self.done.set();
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstFrame<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        if !this.done.done.get() {
            match &polled {
                std::task::Poll::Ready(Ok(())) => match &buf.filled()[before..] {
                    // The end of the stream: nothing more will come.
                    [] => this.done.set(),
                    read => this.follow(read),
                },
                std::task::Poll::Ready(Err(_)) => this.done.set(),
                std::task::Poll::Pending => {}
            }
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstFrame<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A WebSocket handshake (`req`: an RFC 6455 `GET` with `Upgrade: websocket` and a
/// `Sec-WebSocket-Key`) to an HTTP/2 server: sent on a stream as an extended CONNECT
/// (RFC 8441) once the server's SETTINGS allow it. Its 2xx comes back as the 101 it stands
/// for (`Upgrade`, and the `Sec-WebSocket-Accept` of the key), the stream upgradable; any
/// other answer as it is. `Err(req)`: the server chose HTTP/1.1 ("auto") or does not allow
/// extended CONNECT; the caller upgrades over HTTP/1.1 instead.
pub(super) async fn send_websocket(
    req: http::Request<ProxyBody>,
    target: &Target<'_>,
) -> Result<Result<(http::Response<ResponseBody>, Lease), SendError>, http::Request<ProxyBody>> {
    let Some(key) = req
        .headers()
        .get(http::header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
    else {
        return Err(req);
    };
    let mut attempt = 0;
    while attempt <= STALE_RETRIES {
        let (mut sender, stream, reused) = match lease(target).await {
            Ok(Some(leased)) => leased,
            Ok(None) => return Err(req),
            Err(error) => {
                return Ok(Err(SendError {
                    error,
                    unsent: Some(req),
                }))
            }
        };
        stream.0.settled().await;
        if !stream.0.extended_connect.get() {
            return Err(req);
        }
        match sender
            .try_send_request(extended_connect(&req, target.https))
            .await
        {
            Ok(res) => {
                let res = as_upgrade(res.map(ResponseBody::Hyper), &key);
                return Ok(Ok((res, client::h2_lease(stream))));
            }
            // The connection closed (GOAWAY) before the request was sent: another one.
            Err(e) if reused && attempt < STALE_RETRIES && e.message().is_some() => attempt += 1,
            Err(e) => {
                return Ok(Err(SendError {
                    error: client::classify(e.into_error()),
                    unsent: Some(req),
                }))
            }
        }
    }
    Ok(Err(
        ForwardError::Protocol("no usable connection".into()).into()
    ))
}

/// The extended CONNECT that stands for the RFC 6455 handshake `req` (RFC 8441 5): `:protocol`
/// websocket, the same target and end-to-end headers, without the HTTP/1.1 upgrade's own
/// (`Upgrade`, `Connection`, `Sec-WebSocket-Key`).
fn extended_connect(req: &http::Request<ProxyBody>, https: bool) -> http::Request<H2Body> {
    let mut out = http::Request::new(ProxyBody::Empty);
    *out.method_mut() = http::Method::CONNECT;
    *out.uri_mut() = req.uri().clone();
    let mut headers = req.headers().clone();
    for h in [
        http::header::UPGRADE,
        http::header::CONNECTION,
        http::header::SEC_WEBSOCKET_KEY,
    ] {
        headers.remove(h);
    }
    *out.headers_mut() = headers;
    out.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    absolute_form(&mut out, https);
    out.map(H2Body)
}

/// An extended CONNECT's 2xx as the RFC 6455 101 it stands for, so that the WebSocket phase
/// sees one kind of answer: `Upgrade: websocket` and the accept value of the handshake's `key`.
fn as_upgrade(mut res: http::Response<ResponseBody>, key: &[u8]) -> http::Response<ResponseBody> {
    if !res.status().is_success() {
        return res;
    }
    *res.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let accept = crate::base::hash::websocket_accept(key);
    let h = res.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}
