use std::{
    cell::{Cell, RefCell},
    cmp,
    error::Error as StdError,
    future::Future,
    marker::PhantomData,
    net,
    pin::{pin, Pin},
    rc::Rc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use actix_codec::{AsyncRead, AsyncWrite};
use actix_service::Service;
use actix_utils::future::poll_fn;
use bytes::{Bytes, BytesMut};
use futures_core::ready;
use h2::{
    server::{Connection, SendResponse},
    Ping, PingPong, Reason,
};
use pin_project_lite::pin_project;
use tokio::time::{sleep, Instant, Sleep};

use crate::{
    body::{BodySize, BoxBody, MessageBody},
    config::ServiceConfig,
    h2::Limits,
    header::{
        HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING, UPGRADE,
    },
    service::HttpFlow,
    Extensions, Method, OnConnectData, Payload, Request, Response, ResponseHead,
};

const CHUNK_SIZE: usize = 16_384;

pin_project! {
    /// Dispatcher for HTTP/2 protocol.
    pub struct Dispatcher<T, S, B, X, U> {
        flow: Rc<HttpFlow<S, X, U>>,
        connection: Connection<T, Bytes>,
        conn_data: Option<Rc<Extensions>>,
        config: ServiceConfig,
        peer_addr: Option<net::SocketAddr>,
        ping_pong: Option<H2PingPong>,
        limits: Limits,
        streams: Rc<Streams>,
        idle: Option<Idle>,
        _phantom: PhantomData<B>
    }
}

/// The connection's streams, shared with their tasks (kairos patch: idle close, reset cap).
struct Streams {
    /// Streams accepted and not yet answered (their task is running).
    open: Cell<usize>,
    /// When `open` last became zero (or the connection started).
    idle_since: Cell<Instant>,
    /// Streams answered completely, and streams the client reset before that.
    answered: Cell<usize>,
    resets: Cell<usize>,
    /// The dispatcher, woken when the reset cap is passed.
    waker: RefCell<Option<Waker>>,
}

impl Streams {
    fn over_reset_cap(&self, cap: usize) -> bool {
        self.resets.get() > cap.saturating_add(self.answered.get() / 2)
    }
}

/// Decrements the open streams when a stream's task ends, however it ends.
struct OpenStream(Rc<Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let open = self.0.open.get() - 1;
        self.0.open.set(open);
        if open == 0 {
            self.0.idle_since.set(Instant::now());
        }
    }
}

/// The idle timer: a connection with no open stream is closed after `keep_alive`, or after
/// `head` while it has not received a request.
struct Idle {
    timer: Pin<Box<Sleep>>,
    keep_alive: Duration,
    head: Duration,
    served: bool,
}

impl<T, S, B, X, U> Dispatcher<T, S, B, X, U>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(
        mut conn: Connection<T, Bytes>,
        flow: Rc<HttpFlow<S, X, U>>,
        config: ServiceConfig,
        peer_addr: Option<net::SocketAddr>,
        conn_data: OnConnectData,
        timer: Option<Pin<Box<Sleep>>>,
    ) -> Self {
        let ping_pong = config.keep_alive().duration().map(|dur| H2PingPong {
            timer: timer
                .map(|mut timer| {
                    // reuse timer slot if it was initialized for handshake
                    timer.as_mut().reset((config.now() + dur).into());
                    timer
                })
                .unwrap_or_else(|| Box::pin(sleep(dur))),
            in_flight: false,
            ping_pong: conn.ping_pong().unwrap(),
        });

        let limits = Limits::of(&conn_data);
        let now = Instant::now();
        let head = config.client_request_timeout();
        let idle = match (limits.close_idle, config.keep_alive().duration()) {
            (true, Some(keep_alive)) if !head.is_zero() => Some(Idle {
                timer: Box::pin(tokio::time::sleep_until(now + head.min(keep_alive))),
                keep_alive,
                head,
                served: false,
            }),
            _ => None,
        };

        Self {
            flow,
            config,
            peer_addr,
            connection: conn,
            conn_data: conn_data.0.map(Rc::new),
            ping_pong,
            limits,
            streams: Rc::new(Streams {
                open: Cell::new(0),
                idle_since: Cell::new(now),
                answered: Cell::new(0),
                resets: Cell::new(0),
                waker: RefCell::new(None),
            }),
            idle,
            _phantom: PhantomData,
        }
    }
}

impl Idle {
    /// Whether the connection has been idle too long; otherwise arms the timer for the next
    /// check (the stream tasks do not wake the dispatcher: the timer re-checks).
    fn expired(&mut self, streams: &Streams, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let limit = if self.served {
                self.keep_alive
            } else {
                self.head
            };
            let deadline = match streams.open.get() {
                0 => streams.idle_since.get() + limit,
                _ => now + limit,
            };
            if deadline <= now {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
        false
    }
}

struct H2PingPong {
    /// Handle to send ping frames from the peer.
    ping_pong: PingPong,

    /// True when a ping has been sent and is waiting for a reply.
    in_flight: bool,

    /// Timeout for pong response.
    timer: Pin<Box<Sleep>>,
}

impl<T, S, B, X, U> Future for Dispatcher<T, S, B, X, U>
where
    T: AsyncRead + AsyncWrite + Unpin,

    S: Service<Request>,
    S::Error: Into<Response<BoxBody>>,
    S::Future: 'static,
    S::Response: Into<Response<B>>,

    B: MessageBody,
{
    type Output = Result<(), crate::error::DispatchError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();

        if let Some(cap) = this.limits.max_client_resets {
            if this.streams.over_reset_cap(cap) {
                // CVE-2023-44487 (rapid reset): the client cancels streams faster than it lets
                // them finish; stop reading new ones.
                tracing::debug!("h2: too many streams reset by the client; GOAWAY");
                this.connection.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                this.limits.max_client_resets = None;
                this.idle = None;
            } else {
                let mut waker = this.streams.waker.borrow_mut();
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
            }
        }

        loop {
            match Pin::new(&mut this.connection).poll_accept(cx)? {
                Poll::Ready(Some((req, tx))) => {
                    let (mut parts, body) = req.into_parts();
                    // An extended CONNECT's `:protocol` (kairos patch).
                    let protocol = parts.extensions.remove::<h2::ext::Protocol>();
                    let mut payload = crate::h2::Payload::new(body);
                    // The request's trailers, for the service (kairos patch).
                    let trailers = crate::h2::Trailers::default();
                    payload.trailers = Some(trailers.clone());
                    let pl = Payload::H2 { payload };
                    let mut req = Request::with_payload(pl);
                    req.extensions.get_mut().insert(trailers);
                    let head_req = parts.method == Method::HEAD;

                    let head = req.head_mut();
                    head.uri = parts.uri;
                    head.method = parts.method;
                    head.version = parts.version;
                    head.headers = parts.headers.into();
                    head.peer_addr = this.peer_addr;
                    if let Some(protocol) = protocol {
                        head.set_connection_type(crate::ConnectionType::Upgrade);
                        req.extensions
                            .get_mut()
                            .insert(crate::h2::Protocol(protocol));
                    }

                    req.conn_data.clone_from(&this.conn_data);

                    let fut = this.flow.service.call(req);
                    let config = this.config.clone();

                    if let Some(idle) = this.idle.as_mut() {
                        idle.served = true;
                    }
                    let streams = Rc::clone(&this.streams);
                    streams.open.set(streams.open.get() + 1);
                    let open = OpenStream(Rc::clone(&streams));
                    let reset_cap = this.limits.max_client_resets;

                    // multiplex request handling with spawn task
                    tokio::task::spawn_local(async move {
                        let _open = open;
                        let mut tx = tx;
                        let mut fut = pin!(fut);

                        // resolve service call (unless the client resets the stream first).
                        let out = poll_fn(|cx| {
                            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                                return Poll::Ready(Some(out));
                            }
                            match reset_cap {
                                Some(_) => tx.poll_reset(cx).map(|_| None),
                                None => Poll::Pending,
                            }
                        })
                        .await;
                        let Some(out) = out else {
                            streams.resets.set(streams.resets.get() + 1);
                            if reset_cap.is_some_and(|cap| streams.over_reset_cap(cap)) {
                                if let Some(waker) = streams.waker.borrow_mut().take() {
                                    waker.wake();
                                }
                            }
                            return;
                        };

                        // send response.
                        let res = match out {
                            Ok(res) => handle_response(res.into(), tx, config, head_req).await,
                            Err(err) => {
                                let res: Response<BoxBody> = err.into();
                                handle_response(res, tx, config, head_req).await
                            }
                        };
                        if res.is_ok() {
                            streams.answered.set(streams.answered.get() + 1);
                        }

                        // log error.
                        if let Err(err) = res {
                            match err {
                                DispatchError::SendResponse(err) => {
                                    tracing::trace!("Error sending response: {err:?}");
                                }
                                DispatchError::SendData(err) => {
                                    tracing::warn!("Send data error: {err:?}");
                                }
                                DispatchError::ResponseBody(err) => {
                                    tracing::error!("Response payload stream error: {err:?}");
                                }
                            }
                        }
                    });
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),

                Poll::Pending
                    if this
                        .idle
                        .as_mut()
                        .is_some_and(|idle| idle.expired(&this.streams, cx)) =>
                {
                    // No open stream for the keep-alive time (PINGs do not count), or no
                    // request at all: GOAWAY, as for an idle HTTP/1 keep-alive connection.
                    tracing::trace!("h2: idle connection; GOAWAY");
                    this.connection.abrupt_shutdown(Reason::NO_ERROR);
                    this.idle = None;
                }

                Poll::Pending => match this.ping_pong.as_mut() {
                    Some(ping_pong) => loop {
                        if ping_pong.in_flight {
                            // When there is an in-flight ping-pong, poll pong and keep-alive
                            // timer. On successful pong received, update keep-alive timer to
                            // determine the next timing of ping pong.
                            match ping_pong.ping_pong.poll_pong(cx)? {
                                Poll::Ready(_) => {
                                    ping_pong.in_flight = false;

                                    let dead_line = this.config.keep_alive_deadline().unwrap();
                                    ping_pong.timer.as_mut().reset(dead_line.into());
                                }
                                Poll::Pending => {
                                    return ping_pong.timer.as_mut().poll(cx).map(|_| Ok(()));
                                }
                            }
                        } else {
                            // When there is no in-flight ping-pong, keep-alive timer is used to
                            // wait for next timing of ping-pong. Therefore, at this point it serves
                            // as an interval instead.
                            ready!(ping_pong.timer.as_mut().poll(cx));

                            ping_pong.ping_pong.send_ping(Ping::opaque())?;

                            let dead_line = this.config.keep_alive_deadline().unwrap();
                            ping_pong.timer.as_mut().reset(dead_line.into());

                            ping_pong.in_flight = true;
                        }
                    },
                    None => return Poll::Pending,
                },
            }
        }
    }
}

enum DispatchError {
    SendResponse(h2::Error),
    SendData(h2::Error),
    ResponseBody(Box<dyn StdError>),
}

async fn handle_response<B>(
    res: Response<B>,
    mut tx: SendResponse<Bytes>,
    config: ServiceConfig,
    head_req: bool,
) -> Result<(), DispatchError>
where
    B: MessageBody,
{
    let (res, body) = res.replace_body(());
    // Trailers the body leaves for the end of the stream (kairos patch).
    let trailers = res.extensions().get::<crate::h2::Trailers>().cloned();

    // prepare response.
    let mut size = body.size();
    let res = prepare_response(config, res.head(), &mut size);
    let eof_or_head = size.is_eof() || head_req;

    // send response head and return on eof.
    let mut stream = tx
        .send_response(res, eof_or_head)
        .map_err(DispatchError::SendResponse)?;

    if eof_or_head {
        return Ok(());
    }

    let mut body = pin!(body);

    // poll response body and send chunks to client
    while let Some(res) = poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        let mut chunk = res.map_err(|err| DispatchError::ResponseBody(err.into()))?;

        'send: loop {
            let chunk_size = cmp::min(chunk.len(), CHUNK_SIZE);

            // reserve enough space and wait for stream ready.
            stream.reserve_capacity(chunk_size);

            match poll_fn(|cx| stream.poll_capacity(cx)).await {
                // No capacity left. drop body and return.
                None => return Ok(()),

                Some(Err(err)) => return Err(DispatchError::SendData(err)),

                Some(Ok(cap)) => {
                    // split chunk to writeable size and send to client
                    let len = chunk.len();
                    let bytes = chunk.split_to(cmp::min(len, cap));

                    stream
                        .send_data(bytes, false)
                        .map_err(DispatchError::SendData)?;

                    // Current chuck completely sent. break send loop and poll next one.
                    if chunk.is_empty() {
                        break 'send;
                    }
                }
            }
        }
    }

    // response body streaming finished. send end of stream and return.
    if let Some(map) = trailers.and_then(|t| t.take()) {
        return stream
            .send_trailers(map.into())
            .map_err(DispatchError::SendData);
    }
    stream
        .send_data(Bytes::new(), true)
        .map_err(DispatchError::SendData)?;

    Ok(())
}

fn prepare_response(
    config: ServiceConfig,
    head: &ResponseHead,
    size: &mut BodySize,
) -> http::Response<()> {
    let mut has_date = false;
    let mut skip_len = size != &BodySize::Stream;

    let mut res = http::Response::new(());
    *res.status_mut() = head.status;
    *res.version_mut() = http::Version::HTTP_2;

    // Content length
    match head.status {
        http::StatusCode::NO_CONTENT
        | http::StatusCode::CONTINUE
        | http::StatusCode::PROCESSING => *size = BodySize::None,
        http::StatusCode::SWITCHING_PROTOCOLS => {
            skip_len = true;
            *size = BodySize::Stream;
        }
        _ => {}
    }

    match size {
        BodySize::None | BodySize::Stream => {}

        BodySize::Sized(0) => {
            #[allow(clippy::declare_interior_mutable_const)]
            const HV_ZERO: HeaderValue = HeaderValue::from_static("0");
            res.headers_mut().insert(CONTENT_LENGTH, HV_ZERO);
        }

        BodySize::Sized(len) => {
            let mut buf = itoa::Buffer::new();

            res.headers_mut().insert(
                CONTENT_LENGTH,
                HeaderValue::from_str(buf.format(*len)).unwrap(),
            );
        }
    };

    // copy headers
    for (key, value) in head.headers.iter() {
        match key {
            // omit HTTP/1.x only headers according to:
            // https://datatracker.ietf.org/doc/html/rfc7540#section-8.1.2.2
            &CONNECTION | &TRANSFER_ENCODING | &UPGRADE => continue,

            &CONTENT_LENGTH if skip_len => continue,
            &DATE => has_date = true,

            // omit HTTP/1.x only headers according to:
            // https://datatracker.ietf.org/doc/html/rfc7540#section-8.1.2.2
            hdr if hdr == HeaderName::from_static("keep-alive")
                || hdr == HeaderName::from_static("proxy-connection") =>
            {
                continue
            }

            _ => {}
        }

        res.headers_mut().append(key, value.clone());
    }

    // set date header
    if !has_date {
        let mut bytes = BytesMut::with_capacity(29);
        config.write_date_header_value(&mut bytes);
        res.headers_mut().insert(
            DATE,
            // SAFETY: serialized date-times are known ASCII strings
            unsafe { HeaderValue::from_maybe_shared_unchecked(bytes.freeze()) },
        );
    }

    res
}
