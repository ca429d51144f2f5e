//! WebSocket proxying (RFC 6455 over HTTP/1.1): the handshake is a request like any other
//! (routing, the whole edge chain, the request transforms, the balancer, breaker and retries
//! until a response head arrives), sent on a connection of its own; a 101 from the upstream
//! turns both connections into one byte relay until either side closes.
//!
//! A WebSocket over HTTP/2 (RFC 8441) is an extended CONNECT with `:protocol = websocket` on
//! one stream: routed as the GET handshake it stands for, through the same edge chain; the
//! gateway sends the upstream an RFC 6455 handshake over HTTP/1.1 (its own
//! `Sec-WebSocket-Key`, the upstream's `Sec-WebSocket-Accept` checked), answers the client
//! 200, and relays the stream's DATA frames to and from the upstream connection with the same
//! relay.
//!
//! The relay does not decode messages: it copies bytes and follows only the frame headers
//! ([`Frames`]), so that it can end a socket between two frames with a close frame of its own
//! (1001 "going away") when the gateway shuts down. Ends: either side closing, no byte either
//! way for the route's `websocket_idle_timeout`, or the shutdown's deadline.

use super::body::{BodyWatch, ProxyBody};
use super::context::Ctx;
use super::route::Routed;
use crate::base::error::GatewayError;
use crate::base::hash::websocket_accept;
use crate::edge::auth::Identity;
use crate::observability::metrics::Metrics;
use actix_web::body::{BodySize, MessageBody};
use actix_web::http::{header as ax, ConnectionType, Method, StatusCode, Version};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Bytes read from the upstream at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Chunks in flight from the upstream to the client: bounds a socket's memory when the client
/// reads slower than the upstream writes.
const CHANNEL_CHUNKS: usize = 2;
/// At shutdown, how long a direction may take to reach the end of the frame it is in before
/// the socket is closed without a close frame.
const FRAME_END_WAIT: Duration = Duration::from_secs(1);
/// After the gateway's close frames, how long the peers have to answer theirs.
const CLOSE_REPLY_WAIT: Duration = Duration::from_millis(500);

/// A close frame with status 1001 ("going away"), as a server sends it (unmasked).
const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Whether `req` is a WebSocket handshake the gateway proxies as one: `GET`, HTTP/1.1,
/// `Connection: upgrade` (a flag actix sets while parsing, checked first), `Upgrade:
/// websocket`, and no body.
pub fn is_handshake(req: &HttpRequest) -> bool {
    if req.head().connection_type() != ConnectionType::Upgrade {
        return false;
    }
    if req.version() == Version::HTTP_2 {
        // Marked as an upgrade by the HTTP/2 dispatcher only for an extended CONNECT.
        return is_extended_connect(req);
    }
    let h = req.headers();
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && h.get(ax::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
            })
        && !h.contains_key(ax::TRANSFER_ENCODING)
        && h.get(ax::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// Whether `req` (an HTTP/2 request marked as an upgrade) is an RFC 8441 WebSocket: a CONNECT
/// whose `:protocol` is `websocket`. A CONNECT without `:protocol`, or with another protocol,
/// is not one.
pub fn is_extended_connect(req: &HttpRequest) -> bool {
    req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<actix_http::h2::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 4.1).
fn new_key() -> String {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    fastrand::fill(&mut nonce);
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// The WebSocket phase, in place of the body, cache, forward and response phases: the
/// handshake forwarded, and on a 101 the relay started; any other answer of the upstream goes
/// to the client as it is.
pub async fn proxy<'a>(
    ctx: &mut Ctx<'a>,
    routed: &Routed<'a, '_>,
    normalized: Option<&str>,
    host: Option<&'a str>,
    identity: Option<&Identity>,
    payload: actix_web::web::Payload,
    idle: Duration,
) -> Result<HttpResponse, GatewayError> {
    // An HTTP/2 client's extended CONNECT: the upstream gets an HTTP/1.1 handshake with a key
    // of the gateway's.
    let h2_key = (ctx.req.version() == Version::HTTP_2).then(new_key);
    let mut up =
        super::upstream_request::build(ctx, routed, normalized, host, identity, ProxyBody::Empty)?;
    up.upgrade = true;
    up.websocket_key = h2_key
        .as_deref()
        .and_then(|k| http::HeaderValue::from_str(k).ok());
    if !routed.route.transforms.is_empty() {
        // Request steps only: a 101 has no body and its headers are the handshake's.
        drop(super::transform::request(ctx, routed, identity, &mut up)?);
    }
    let watch = BodyWatch::default();
    let answer = super::forward::forward(ctx, routed.route, host, &mut up, &watch).await?;
    if answer.parts.status != http::StatusCode::SWITCHING_PROTOCOLS {
        // The upstream refused the upgrade (401, 404, 426...): its answer is the client's.
        return super::response::upstream(ctx, routed.route, answer, None);
    }
    let super::forward::Answer {
        mut parts, lease, ..
    } = answer;
    let upgrades_to_websocket = parts
        .headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let (Some(on_upgrade), true) = (on_upgrade, upgrades_to_websocket) else {
        tracing::warn!(
            request_id = ctx.rid_str(),
            route = routed.route.name.as_str(),
            "upstream answered a WebSocket handshake with 101 but no WebSocket upgrade"
        );
        return Err(GatewayError::UpstreamProtocol);
    };
    let mut res = match &h2_key {
        None => {
            let mut res = HttpResponse::new(StatusCode::SWITCHING_PROTOCOLS);
            // `Connection: upgrade`, and the connection is the socket's from now on.
            res.head_mut().set_connection_type(ConnectionType::Upgrade);
            super::headers::response_headers(&parts.headers, res.headers_mut());
            res.headers_mut()
                .insert(ax::UPGRADE, ax::HeaderValue::from_static("websocket"));
            res
        }
        Some(key) => {
            // RFC 8441 5: the stream is the socket once the client has a 200; the accept
            // value proves the upstream speaks WebSocket and belongs to this handshake only.
            let accepted = parts
                .headers
                .get(http::header::SEC_WEBSOCKET_ACCEPT)
                .is_some_and(|v| v.as_bytes() == websocket_accept(key.as_bytes()).as_bytes());
            if !accepted {
                tracing::warn!(
                    request_id = ctx.rid_str(),
                    route = routed.route.name.as_str(),
                    "upstream answered a WebSocket handshake with a wrong Sec-WebSocket-Accept"
                );
                return Err(GatewayError::UpstreamProtocol);
            }
            let mut res = HttpResponse::new(StatusCode::OK);
            super::headers::response_headers(&parts.headers, res.headers_mut());
            res.headers_mut().remove(ax::SEC_WEBSOCKET_ACCEPT);
            res
        }
    };
    res.headers_mut().insert(
        crate::observability::request_id::HEADER_NAME,
        ctx.rid.clone(),
    );
    // The request is complete once the socket is open: its duration is the handshake's, not
    // the socket's lifetime (the socket has metrics of its own).
    drop(ctx.complete(res.status().as_u16()));
    let draining = ctx
        .req
        .app_data::<actix_web::web::Data<crate::runtime::SharedState>>()
        .map(|s| s.draining());
    let shutdown_timeout = ctx.rt.config.server.shutdown_timeout;
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let relay = Relay {
        metrics: ctx.shared.1.clone(),
        idle,
        last: Rc::new(Cell::new(Instant::now())),
    };
    actix_web::rt::spawn(relay.run(on_upgrade, payload, tx, draining, shutdown_timeout, lease));
    Ok(res.set_body(RelayBody { rx }).map_into_boxed_body())
}

/// The 101's body: what the upstream sends, as the relay task hands it on.
struct RelayBody {
    rx: mpsc::Receiver<Bytes>,
}

impl MessageBody for RelayBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.get_mut().rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

/// One open socket's relay.
struct Relay {
    metrics: Arc<Metrics>,
    idle: Duration,
    /// When a byte last went either way.
    last: Rc<Cell<Instant>>,
}

/// Why one direction of the relay stopped.
enum Stopped {
    /// Its source ended (a close, EOF) or its destination went away.
    Ended,
    /// The gateway is shutting down and the direction reached a frame boundary: its close
    /// frame was sent.
    Closed,
}

impl Relay {
    async fn run(
        self,
        on_upgrade: hyper::upgrade::OnUpgrade,
        payload: actix_web::web::Payload,
        tx: mpsc::Sender<Bytes>,
        draining: Option<watch::Receiver<bool>>,
        shutdown_timeout: Duration,
        lease: Option<crate::upstream::client::Lease>,
    ) {
        let upgraded = match on_upgrade.await {
            Ok(u) => hyper_util::rt::TokioIo::new(u),
            Err(e) => {
                tracing::warn!(error = %e, "WebSocket upgrade of the upstream connection failed");
                return;
            }
        };
        let m = &self.metrics;
        m.websockets_open.inc();
        m.websockets_total.inc();
        let _open = OpenGuard(m.clone());
        let (mut from_up, mut to_up) = tokio::io::split(upgraded);
        // Set when the shutdown's deadline passes: each direction closes at its next frame
        // boundary.
        let (close_tx, close_rx) = watch::channel(false);
        let downstream = {
            let (last, mut close, tx) = (self.last.clone(), close_rx.clone(), tx);
            let bytes = m.websocket_bytes.with_label_values(&["upstream_to_client"]);
            async move {
                let mut frames = Frames::default();
                loop {
                    let mut buf = BytesMut::with_capacity(READ_CHUNK);
                    let n = tokio::select! {
                        n = from_up.read_buf(&mut buf) => n.unwrap_or(0),
                        _ = close.wait_for(|c| *c), if frames.at_boundary() => {
                            let _ = tx.send(Bytes::from_static(&CLOSE_TO_CLIENT)).await;
                            drain(&mut from_up).await;
                            return Stopped::Closed;
                        }
                    };
                    if n == 0 {
                        return Stopped::Ended;
                    }
                    last.set(Instant::now());
                    bytes.inc_by(n as u64);
                    let mut chunk = buf.freeze();
                    if *close.borrow() {
                        // Up to the end of the frame in progress, then the close frame.
                        let cut = frames.to_boundary(&chunk);
                        let head = chunk.split_to(cut);
                        let _ = tx.send(head).await;
                        if frames.at_boundary() {
                            let _ = tx.send(Bytes::from_static(&CLOSE_TO_CLIENT)).await;
                            drain(&mut from_up).await;
                            return Stopped::Closed;
                        }
                        continue;
                    }
                    frames.advance(&chunk);
                    if tx.send(chunk).await.is_err() {
                        return Stopped::Ended;
                    }
                }
            }
        };
        let upstream = {
            let (last, mut close, mut payload) = (self.last.clone(), close_rx, payload);
            let bytes = m.websocket_bytes.with_label_values(&["client_to_upstream"]);
            async move {
                let mut frames = Frames::default();
                loop {
                    let chunk = tokio::select! {
                        c = payload.next() => c,
                        _ = close.wait_for(|c| *c), if frames.at_boundary() => {
                            let _ = to_up.write_all(&close_to_server()).await;
                            let _ = to_up.shutdown().await;
                            return Stopped::Closed;
                        }
                    };
                    let Some(Ok(mut chunk)) = chunk else {
                        let _ = to_up.shutdown().await;
                        return Stopped::Ended;
                    };
                    last.set(Instant::now());
                    bytes.inc_by(chunk.len() as u64);
                    if *close.borrow() {
                        let head = chunk.split_to(frames.to_boundary(&chunk));
                        let _ = to_up.write_all(&head).await;
                        if frames.at_boundary() {
                            let _ = to_up.write_all(&close_to_server()).await;
                            let _ = to_up.shutdown().await;
                            return Stopped::Closed;
                        }
                        continue;
                    }
                    frames.advance(&chunk);
                    if to_up.write_all(&chunk).await.is_err() {
                        return Stopped::Ended;
                    }
                }
            }
        };
        // The upstream's end of the socket ends it: after a close handshake the server closes
        // the connection (RFC 6455 7.1.1), while the client's side may stay open (an HTTP/2
        // stream the client does not end). The client's end leaves the upstream time to
        // answer, and a shutdown's close frames wait for both directions.
        let both = async {
            let (mut downstream, mut upstream) =
                (std::pin::pin!(downstream), std::pin::pin!(upstream));
            tokio::select! {
                d = &mut downstream => {
                    if matches!(d, Stopped::Closed) {
                        upstream.await;
                    }
                }
                _ = &mut upstream => {
                    downstream.await;
                }
            }
        };
        let mut both = std::pin::pin!(both);
        let idle = self.idle_watch();
        let mut idle = std::pin::pin!(idle);
        let shutdown = shutdown_deadline(draining, shutdown_timeout);
        let mut shutdown = std::pin::pin!(shutdown);
        tokio::select! {
            _ = &mut both => {}
            () = &mut idle => {
                tracing::debug!("WebSocket closed after its idle timeout");
            }
            () = &mut shutdown => {
                let _ = close_tx.send(true);
                // Each direction closes at its next frame boundary; then the peers may answer
                // with their own close frames for a moment.
                let _ = tokio::time::timeout(FRAME_END_WAIT + CLOSE_REPLY_WAIT, &mut both).await;
            }
        }
        drop(lease);
    }

    /// Resolves once no byte has gone either way for the idle timeout.
    async fn idle_watch(&self) {
        loop {
            let due = self.last.get() + self.idle;
            if due <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Resolves when the gateway has been shutting down for nearly `shutdown_timeout`: open
/// sockets may finish by themselves until then, and are closed with a close frame just before
/// the server drops every connection left.
async fn shutdown_deadline(draining: Option<watch::Receiver<bool>>, shutdown_timeout: Duration) {
    let Some(mut draining) = draining else {
        return std::future::pending().await;
    };
    if draining.wait_for(|d| *d).await.is_err() {
        return std::future::pending().await;
    }
    let margin = (shutdown_timeout / 4).min(Duration::from_secs(2));
    tokio::time::sleep(shutdown_timeout.saturating_sub(margin)).await;
}

/// After the gateway's close frame to the upstream: what the upstream still sends (its close
/// reply) is read and dropped until it ends its side, so that the close frame was taken before
/// the connection or stream is dropped (h2 discards the queued data of a stream it resets).
async fn drain<R: tokio::io::AsyncRead + Unpin>(from_up: &mut R) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = from_up.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// A close frame with status 1001 as a client sends it: masked (RFC 6455 5.3).
fn close_to_server() -> [u8; 8] {
    let mask = fastrand::u32(..).to_be_bytes();
    [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        CLOSE_TO_CLIENT[2] ^ mask[0],
        CLOSE_TO_CLIENT[3] ^ mask[1],
    ]
}

struct OpenGuard(Arc<Metrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.websockets_open.dec();
    }
}

/// Follows the frame headers of one direction of a socket (RFC 6455 5.2), to know where a
/// frame ends. Payload bytes are skipped, never looked at.
#[derive(Default)]
pub struct Frames {
    /// The header bytes of the frame in progress, while its header is incomplete.
    head: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: u64,
}

impl Frames {
    /// Whether the bytes so far end exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Follows `data`.
    pub fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.step(data);
            data = &data[n..];
        }
    }

    /// How many bytes of `data` reach the next frame boundary (all of them when the frame in
    /// progress does not end in `data`); follows those bytes.
    pub fn to_boundary(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() {
            used += self.step(&data[used..]);
            if self.at_boundary() {
                break;
            }
        }
        used
    }

    /// Consumes the start of `data` (not empty): payload bytes of the current frame, or header
    /// bytes; returns how many.
    fn step(&mut self, data: &[u8]) -> usize {
        if self.left > 0 {
            let n = (data.len() as u64).min(self.left);
            self.left -= n;
            return n as usize;
        }
        let mut used = 0;
        while used < data.len() {
            self.head[self.have] = data[used];
            self.have += 1;
            used += 1;
            if let Some(len) = header_len(&self.head[..self.have]) {
                if self.have == len.0 {
                    self.have = 0;
                    self.left = len.1;
                    break;
                }
            }
        }
        used
    }
}

/// For the first bytes of a frame: the header's full length and the payload length, once
/// enough bytes are known.
fn header_len(h: &[u8]) -> Option<(usize, u64)> {
    if h.len() < 2 {
        return None;
    }
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    let (ext, len) = match h[1] & 0x7f {
        126 if h.len() >= 4 => (2, u64::from(u16::from_be_bytes([h[2], h[3]]))),
        127 if h.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[2..10]);
            (8, u64::from_be_bytes(b))
        }
        126 | 127 => return None,
        n => (0, u64::from(n)),
    };
    Some((2 + ext + mask, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client sends it (masked), with `len` payload bytes.
    fn frame(len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn frames_are_followed_whatever_the_chunking() {
        let mut all = Vec::new();
        for (len, masked) in [
            (0, true),
            (5, false),
            (125, true),
            (126, true),
            (70_000, false),
        ] {
            all.extend(frame(len, masked));
        }
        for chunk in [1, 2, 3, 7, 100, 4096, all.len()] {
            let mut f = Frames::default();
            for c in all.chunks(chunk) {
                f.advance(c);
            }
            assert!(f.at_boundary(), "chunks of {chunk}");
        }
        let mut f = Frames::default();
        f.advance(&all[..all.len() - 1]);
        assert!(!f.at_boundary());
    }

    #[test]
    fn to_boundary_stops_at_the_end_of_the_current_frame() {
        let mut data = frame(10, true);
        let first = data.len();
        data.extend(frame(300, true));
        let mut f = Frames::default();
        // Three bytes into the first frame, then the rest arrives with the next frame.
        f.advance(&data[..3]);
        assert_eq!(f.to_boundary(&data[3..]), first - 3);
        assert!(f.at_boundary());
        // A header split across chunks.
        let mut f = Frames::default();
        let second = &data[first..];
        assert_eq!(f.to_boundary(&second[..2]), 2);
        assert!(!f.at_boundary());
        assert_eq!(f.to_boundary(&second[2..]), second.len() - 2);
        assert!(f.at_boundary());
    }

    #[test]
    fn the_accept_value_is_rfc_6455s() {
        // The example of RFC 6455 1.3.
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let (a, b) = (new_key(), new_key());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
    }

    #[test]
    fn the_gateways_close_frames_say_going_away() {
        assert_eq!(header_len(&CLOSE_TO_CLIENT), Some((2, 2)));
        assert_eq!(
            u16::from_be_bytes([CLOSE_TO_CLIENT[2], CLOSE_TO_CLIENT[3]]),
            1001
        );
        let c = close_to_server();
        assert_eq!(header_len(&c), Some((6, 2)));
        let code = u16::from_be_bytes([c[6] ^ c[2], c[7] ^ c[3]]);
        assert_eq!(code, 1001);
    }
}
