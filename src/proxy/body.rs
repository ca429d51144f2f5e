//! The request-body phase ([`read`]) and the bodies it and the response phase hand on. Requests: no body, a small body read whole (no task, no channel),
//! or a large/unknown-length body streamed through a bounded channel fed by a task on the
//! worker (actix's payload cannot leave its thread; hyper's connection task needs `Send`).
//! Responses: the upstream's body polled directly by actix, with its length kept so a sized
//! response is not re-chunked.

use super::context::Ctx;
use crate::base::error::GatewayError;
pub use crate::upstream::body::{ProxyBody, RequestBodyError};
use crate::upstream::body::{ResponseBody, ResponseBodyError};
use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header as ax;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Body;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Bodies up to this size with a known length are read whole before forwarding.
pub const BUFFER_LIMIT: u64 = 64 * 1024;
/// Chunks in flight between the client reader and the upstream writer: bounds memory per
/// streamed request to a few chunks (actix reads up to 64 KiB per chunk).
const CHANNEL_CHUNKS: usize = 4;

/// Set by the body pump when the client sent more than `max_body_size`.
pub type TooLargeFlag = Rc<Cell<bool>>;

/// What the body pump has moved so far.
#[derive(Default)]
pub struct ProgressState {
    /// When data last arrived: a request whose body is still arriving is not timed out (the
    /// route timeout counts from the last progress, like NGINX's send/read timeouts).
    pub last: Cell<Option<tokio::time::Instant>>,
    /// Body bytes received from the client.
    pub bytes: Cell<u64>,
    /// Whether the pump is waiting for the client's next chunk (not for the upstream to take
    /// the last one): a wait that times out then is the client's stall, not the upstream's.
    pub reading: Cell<bool>,
}

pub type Progress = Rc<ProgressState>;

/// Why a small body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body was larger than the allowed maximum.
    #[error("request body larger than the allowed maximum")]
    TooLarge,
    /// Reading from the client failed.
    #[error("{0}")]
    Client(actix_web::error::PayloadError),
    /// The body's length was not its Content-Length.
    #[error("request body does not match its Content-Length")]
    LengthMismatch,
}

/// Reads a small body of known length whole.
pub async fn read_small(
    payload: &mut actix_web::web::Payload,
    len: u64,
    max: u64,
) -> Result<Bytes, ReadError> {
    let mut buf = bytes::BytesMut::with_capacity(len as usize);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(ReadError::Client)?;
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    // HTTP/2 does not tie the body to content-length as HTTP/1.1 framing does.
    if buf.len() as u64 != len {
        return Err(ReadError::LengthMismatch);
    }
    Ok(buf.freeze())
}

/// Starts streaming the client's body upstream; `first` is a chunk already read. `trailers`
/// is where an HTTP/2 client's trailers arrive (the vendored actix-http's slot): they follow
/// the body upstream.
pub fn stream(
    mut payload: actix_web::web::Payload,
    first: Option<Bytes>,
    len: Option<u64>,
    max: u64,
    (too_large, progress): (TooLargeFlag, Progress),
    trailers: Option<actix_http::h2::Trailers>,
) -> ProxyBody {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let (trailers_tx, trailers_rx) = match trailers {
        Some(slot) => {
            let (t, r) = tokio::sync::oneshot::channel();
            (Some((slot, t)), Some(r))
        }
        None => (None, None),
    };
    actix_web::rt::spawn(async move {
        let mut seen: u64 = 0;
        let mut next = first.map(Ok);
        loop {
            let item = match next.take() {
                Some(i) => Some(i),
                None => {
                    progress.reading.set(true);
                    let item = payload.next().await;
                    progress.reading.set(false);
                    item
                }
            };
            let Some(item) = item else {
                if len.is_some_and(|n| n != seen) {
                    let short =
                        RequestBodyError::Client("body shorter than its Content-Length".into());
                    let _ = tx.send(Err(short)).await;
                } else if let Some((slot, t)) = trailers_tx {
                    if let Some(map) = slot.take() {
                        let _ = t.send(super::headers::trailers_to_upstream(&map));
                    }
                }
                break;
            };
            progress.last.set(Some(tokio::time::Instant::now()));
            let msg = match item {
                // An HTTP/2 client's empty DATA frame (one ending the stream, most often):
                // nothing to send. Passed on, it became an empty DATA frame without
                // END_STREAM upstream, and an HTTP/2 server counts those as abuse (h2 sends
                // GOAWAY ENHANCE_YOUR_CALM after 100 on a connection: 1 gRPC call in 100
                // failed under load).
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => {
                    seen += chunk.len() as u64;
                    progress.bytes.set(seen);
                    if seen > max {
                        too_large.set(true);
                        let _ = tx.send(Err(RequestBodyError::TooLarge)).await;
                        break;
                    }
                    Ok(chunk)
                }
                Err(e) => Err(RequestBodyError::Client(e.to_string())),
            };
            let stop = msg.is_err();
            if tx.send(msg).await.is_err() || stop {
                break;
            }
        }
    });
    ProxyBody::Stream {
        rx,
        len,
        trailers: trailers_rx,
    }
}

/// What the body pump reports back while a streamed body goes upstream. Empty for a body
/// read whole or none: there is no pump to hear from, and nothing is allocated for it.
#[derive(Default)]
pub struct BodyWatch {
    /// Set when a streamed body turned out larger than `max_body_size`.
    pub too_large: Option<TooLargeFlag>,
    /// The streamed body's progress (the route timeout counts from its last chunk).
    pub progress: Option<Progress>,
}

impl BodyWatch {
    /// Whether a streamed body turned out larger than `max_body_size`.
    pub fn too_large(&self) -> bool {
        self.too_large.as_ref().is_some_and(|f| f.get())
    }

    /// A body is about to be streamed: the flag and the progress its pump reports to (the
    /// progress is also the request's, for the bytes its completion records).
    fn pump(&mut self, ctx: &mut Ctx<'_>) -> (TooLargeFlag, Progress) {
        let (too_large, progress) = (TooLargeFlag::default(), Progress::default());
        self.too_large = Some(too_large.clone());
        self.progress = Some(progress.clone());
        ctx.streamed = Some(progress.clone());
        (too_large, progress)
    }
}

/// The request-body phase: prepares the body (the request filter refused a declared length
/// over the maximum; the bytes are counted here as they arrive). Small bodies of
/// known length are read whole (they can be replayed on a retry), larger or chunked ones are
/// streamed; the wait for a body's first bytes is bounded by the route's timeout.
#[inline(always)]
pub async fn read(
    ctx: &mut Ctx<'_>,
    mut payload: actix_web::web::Payload,
    read_timeout: std::time::Duration,
) -> Result<(ProxyBody, BodyWatch), GatewayError> {
    let req = ctx.req;
    let max = ctx.rt.config.server.max_body_size;
    // Checked against `max_body_size` by the request filter already.
    let declared_len = super::request::declared_length(req)?;
    let mut watch = BodyWatch::default();
    ctx.request_bytes = declared_len.unwrap_or(0);
    let unreadable = GatewayError::BadRequest("could not read the request body");
    let body = match declared_len {
        Some(0) => ProxyBody::Empty,
        Some(n) if n <= BUFFER_LIMIT => {
            match tokio::time::timeout(read_timeout, read_small(&mut payload, n, max)).await {
                Err(_) => return Err(GatewayError::RequestTimeout),
                Ok(Ok(b)) => match request_trailers(req).and_then(|slot| slot.take()) {
                    None => ProxyBody::Full(Some(b)),
                    // An HTTP/2 client's trailers after a body read whole: sent after it, as
                    // a streamed body's are (such a request is not replayed by a retry).
                    Some(map) => with_trailers(b, super::headers::trailers_to_upstream(&map)),
                },
                Ok(Err(ReadError::TooLarge)) => return Err(GatewayError::PayloadTooLarge),
                Ok(Err(ReadError::Client(_) | ReadError::LengthMismatch)) => {
                    return Err(unreadable)
                }
            }
        }
        Some(n) => stream(
            payload,
            None,
            Some(n),
            max,
            watch.pump(ctx),
            request_trailers(req),
        ),
        // A gRPC call streams at once: a bidi client may wait for the response head before
        // it sends its first message.
        None if ctx.grpc.is_some() => stream(
            payload,
            None,
            None,
            max,
            watch.pump(ctx),
            request_trailers(req),
        ),
        None if req.version() >= actix_web::http::Version::HTTP_2
            || req.headers().contains_key(ax::TRANSFER_ENCODING) =>
        {
            match tokio::time::timeout(read_timeout, payload.next()).await {
                Err(_) => return Err(GatewayError::RequestTimeout),
                Ok(None) => ProxyBody::Empty,
                Ok(Some(Ok(first))) => stream(
                    payload,
                    Some(first),
                    None,
                    max,
                    watch.pump(ctx),
                    request_trailers(req),
                ),
                Ok(Some(Err(_))) => return Err(unreadable),
            }
        }
        None => ProxyBody::Empty,
    };
    ctx.body_read = matches!(body, ProxyBody::Empty | ProxyBody::Full(_));
    Ok((body, watch))
}

/// A body read whole followed by trailers: a stream whose one chunk and trailers are ready.
fn with_trailers(body: Bytes, trailers: http::HeaderMap) -> ProxyBody {
    let len = body.len() as u64;
    let (tx, rx) = mpsc::channel(1);
    // Capacity 1 and nothing sent before: the chunk is queued, never refused.
    let _ = tx.try_send(Ok(body));
    let (t, trailers_rx) = tokio::sync::oneshot::channel();
    let _ = t.send(trailers);
    ProxyBody::Stream {
        rx,
        len: Some(len),
        trailers: Some(trailers_rx),
    }
}

/// Where an HTTP/2 request's trailers arrive (the vendored actix-http's slot in its extensions).
fn request_trailers(req: &actix_web::HttpRequest) -> Option<actix_http::h2::Trailers> {
    use actix_web::HttpMessage;
    if req.version() < actix_web::http::Version::HTTP_2 {
        return None;
    }
    req.extensions().get::<actix_http::h2::Trailers>().cloned()
}

/// The body of an answer: the upstream's as it comes, the upstream's while the cache stores
/// it, or a stored one.
pub enum AnswerBody {
    Upstream(ResponseBody),
    /// Stored by the sink as it passes (the sink is dropped when storing stops).
    Storing(ResponseBody, Option<Box<crate::cache::Sink>>),
    /// A stored body (`None` once sent, or for an answer without a body).
    Stored(Option<Bytes>),
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, ResponseBodyError>>> {
        match self.get_mut() {
            AnswerBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            AnswerBody::Storing(b, sink) => {
                let polled = Pin::new(&mut *b).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(s)) = (frame.data_ref(), sink.as_mut()) {
                            if !s.push(data) {
                                *sink = None;
                            }
                        }
                        if b.is_end_stream() {
                            if let Some(s) = sink.take() {
                                s.finish();
                            }
                        }
                    }
                    Poll::Ready(Some(Err(_))) => *sink = None,
                    Poll::Ready(None) => {
                        if let Some(s) = sink.take() {
                            s.finish();
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
            AnswerBody::Stored(b) => Poll::Ready(b.take().map(|d| Ok(http_body::Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AnswerBody::Upstream(b) | AnswerBody::Storing(b, _) => b.is_end_stream(),
            AnswerBody::Stored(b) => b.is_none(),
        }
    }
}

/// The upstream's response body, handed to actix as is. When it ends, the upstream connection
/// goes back to the pool; if it is dropped early, the connection is closed.
pub struct UpstreamBody {
    body: AnswerBody,
    size: BodySize,
    lease: Option<crate::upstream::client::Lease>,
    /// Longest wait for the next piece of the body.
    idle_timeout: std::time::Duration,
    /// Armed the first time the body is not ready, so fast responses never touch the timer.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the last poll returned Pending: the idle timer measures one continuous wait
    /// for the upstream, never time the client spent not reading.
    waiting: bool,
    /// Records the request's metrics and ends its spans when the body is done or dropped.
    completion: Option<super::completion::Completion>,
    /// What a response transformation read first (boxed: most responses have none, and a
    /// smaller body is cheaper to move).
    transformed: Option<Box<Transformed>>,
    /// Where the upstream's trailers go for an HTTP/2 client (the vendored actix-http sends
    /// them after the body); `None`: they are dropped (HTTP/1.1 clients).
    trailers: Option<actix_http::h2::Trailers>,
    /// A gRPC call: its status from the trailers, its deadline (boxed: most bodies are not).
    grpc: Option<Box<GrpcWatch>>,
}

/// What the body of a gRPC call watches.
struct GrpcWatch {
    call: std::rc::Rc<super::grpc::Call>,
    /// `grpc-timeout` from the call's arrival: when it passes, the call ends with
    /// DEADLINE_EXCEEDED and the upstream's stream is reset.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Bytes a response transformation read first: sent before the rest of the upstream's body,
/// or instead of it when `rest` is false (the body was read whole and rewritten).
struct Transformed {
    prefix: Option<Bytes>,
    rest: bool,
}

/// The upstream stopped sending its body for longer than the route timeout.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error(transparent)]
    Upstream(#[from] ResponseBodyError),
    #[error("upstream sent no body data for {0:?}")]
    Idle(std::time::Duration),
}

impl UpstreamBody {
    /// `len` is the upstream's Content-Length, if it sent one; `status` and `head` decide
    /// whether the response can have a body at all; `completion` is what must happen when the
    /// response is over.
    pub fn new(
        body: AnswerBody,
        len: Option<u64>,
        status: u16,
        head: bool,
        lease: Option<crate::upstream::client::Lease>,
        idle_timeout: std::time::Duration,
        completion: Option<super::completion::Completion>,
    ) -> Self {
        let size = match len {
            // No body by definition (RFC 9110 6.4.1); a 304's Content-Length is set by hand.
            _ if status < 200 || status == 204 || status == 304 => BodySize::None,
            Some(n) => BodySize::Sized(n),
            // A HEAD response without a length describes a chunked GET response.
            None if head => BodySize::Stream,
            None if body.is_end_stream() => BodySize::Sized(0),
            None => BodySize::Stream,
        };
        let mut this = UpstreamBody {
            body,
            size,
            lease,
            idle_timeout,
            idle: None,
            waiting: false,
            completion: None,
            transformed: None,
            trailers: None,
            grpc: None,
        };
        if this.body.is_end_stream() {
            this.release();
        }
        // Recorded when the response is over, also for a body that ended already.
        this.completion = completion;
        this
    }

    /// Sends `prefix` first; then the rest of the upstream's body, or nothing more when `rest`
    /// is false (the upstream's body was read to its end already).
    pub fn set_prefix(&mut self, prefix: Bytes, rest: bool) {
        self.transformed = Some(Box::new(Transformed {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
        }));
    }

    /// Relays the upstream's trailers into `slot` (which the client's response carries).
    pub fn set_trailers(&mut self, slot: actix_http::h2::Trailers) {
        self.trailers = Some(slot);
    }

    /// Watches a gRPC call's body: its status from the trailers, and `deadline`.
    pub fn set_grpc(
        &mut self,
        call: std::rc::Rc<super::grpc::Call>,
        deadline: Option<tokio::time::Instant>,
    ) {
        self.grpc = Some(Box::new(GrpcWatch {
            call,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        }));
    }

    /// The gRPC call's deadline passed: the upstream's stream is reset (its lease dropped)
    /// and the call ends with DEADLINE_EXCEEDED in the trailers.
    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(g) = &mut self.grpc else {
            return false;
        };
        let Some(d) = &mut g.deadline else {
            return false;
        };
        if d.as_mut().poll(cx).is_pending() {
            return false;
        }
        g.deadline = None;
        g.call
            .set_code(crate::base::error::GrpcCode::DeadlineExceeded);
        self.lease = None;
        if let Some(slot) = &self.trailers {
            let mut map = ax::HeaderMap::new();
            map.insert(
                ax::HeaderName::from_static("grpc-status"),
                ax::HeaderValue::from_static("4"),
            );
            map.insert(
                ax::HeaderName::from_static("grpc-message"),
                ax::HeaderValue::from_static("deadline exceeded"),
            );
            slot.set(map);
        }
        true
    }

    /// The body is complete: the connection goes back to the pool, the request is recorded.
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
        self.completion = None;
    }
}

impl MessageBody for UpstreamBody {
    type Error = UpstreamBodyError;

    fn size(&self) -> BodySize {
        self.size
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        if self.grpc.is_some() && self.deadline_passed(cx) {
            self.release();
            return Poll::Ready(None);
        }
        if let Some(t) = &mut self.transformed {
            if let Some(data) = t.prefix.take() {
                if let Some(c) = &mut self.completion {
                    c.response_bytes += data.len() as u64;
                }
                return Poll::Ready(Some(Ok(data)));
            }
            if !t.rest {
                self.release();
                return Poll::Ready(None);
            }
        }
        loop {
            return match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => {
                        if let Some(c) = &mut self.completion {
                            c.response_bytes += data.len() as u64;
                        }
                        if self.body.is_end_stream() {
                            self.release();
                        }
                        self.waiting = false;
                        Poll::Ready(Some(Ok(data)))
                    }
                    // Trailers: kept for an HTTP/2 client, dropped for an HTTP/1.1 one.
                    Err(frame) => {
                        if let Ok(map) = frame.into_trailers() {
                            if let Some(g) = &self.grpc {
                                let status = map.get("grpc-status").map(|v| v.as_bytes());
                                if let Some(s) = super::grpc::status_in(status) {
                                    g.call.set_status(s);
                                }
                            }
                            if let Some(slot) = &self.trailers {
                                slot.set(super::headers::trailers_to_client(&map));
                            }
                        }
                        continue;
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    // A broken body leaves the connection unusable: drop it.
                    self.lease = None;
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(None) => {
                    self.release();
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    let timeout = self.idle_timeout;
                    let fresh_wait = !std::mem::replace(&mut self.waiting, true);
                    let idle = self
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if fresh_wait {
                        idle.as_mut().reset(tokio::time::Instant::now() + timeout);
                    }
                    match idle.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            // Give up on a stalled upstream: drop its connection, end the
                            // client's response with an error (actix closes the connection).
                            self.lease = None;
                            Poll::Ready(Some(Err(UpstreamBodyError::Idle(timeout))))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            };
        }
    }
}
