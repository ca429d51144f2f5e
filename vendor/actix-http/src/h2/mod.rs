//! HTTP/2 protocol.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use actix_codec::{AsyncRead, AsyncWrite};
use bytes::Bytes;
use futures_core::{ready, Stream};
use h2::{
    server::{Builder, Connection, Handshake},
    RecvStream,
};
use tokio::time::{sleep_until, Sleep};

use crate::{
    config::ServiceConfig,
    error::{DispatchError, PayloadError},
    OnConnectData,
};

mod dispatcher;
mod service;

pub use self::{dispatcher::Dispatcher, service::H2Service};

/// HTTP/2 peer stream.
pub struct Payload {
    stream: RecvStream,
    /// Where the request's trailers go once its data has ended (kairos patch).
    trailers: Option<Trailers>,
}

impl Payload {
    pub(crate) fn new(stream: RecvStream) -> Self {
        Self {
            stream,
            trailers: None,
        }
    }
}

/// The trailers of an HTTP/2 message (kairos patch, see vendor/README.md).
///
/// Requests: the dispatcher puts one into every HTTP/2 request's extensions; it holds the
/// request's trailers once the payload has returned its end. Responses: a response that
/// carries one in its extensions ends with a trailers frame holding what was [`set`] by the
/// time its body returned its end (an end-of-stream DATA frame when nothing was set).
///
/// [`set`]: Trailers::set
#[derive(Debug, Clone, Default)]
pub struct Trailers(std::rc::Rc<std::cell::RefCell<Option<crate::header::HeaderMap>>>);

impl Trailers {
    /// Stores the trailers (replacing any stored before).
    pub fn set(&self, trailers: crate::header::HeaderMap) {
        *self.0.borrow_mut() = Some(trailers);
    }

    /// Takes the trailers out, if there are any.
    pub fn take(&self) -> Option<crate::header::HeaderMap> {
        self.0.borrow_mut().take()
    }
}

impl Stream for Payload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();

        match ready!(Pin::new(&mut this.stream).poll_data(cx)) {
            Some(Ok(chunk)) => {
                let len = chunk.len();

                match this.stream.flow_control().release_capacity(len) {
                    Ok(()) => Poll::Ready(Some(Ok(chunk))),
                    Err(err) => Poll::Ready(Some(Err(err.into()))),
                }
            }
            Some(Err(err)) => Poll::Ready(Some(Err(err.into()))),
            None => {
                // The data has ended: keep the trailers, if any (kairos patch).
                if let Some(slot) = &this.trailers {
                    match ready!(this.stream.poll_trailers(cx)) {
                        Ok(Some(map)) => slot.set(map.into()),
                        Ok(None) => {}
                        Err(err) => return Poll::Ready(Some(Err(err.into()))),
                    }
                    this.trailers = None;
                }
                Poll::Ready(None)
            }
        }
    }
}

/// The `:protocol` pseudo-header of an extended CONNECT request (RFC 8441; kairos patch, see
/// vendor/README.md), in the request's extensions. Such a request's head is marked
/// [`ConnectionType::Upgrade`](crate::ConnectionType::Upgrade), as an HTTP/1.1 request with
/// `Connection: upgrade` is.
#[derive(Debug, Clone)]
pub struct Protocol(h2::ext::Protocol);

impl Protocol {
    /// The protocol the client asks for, such as `websocket`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// HTTP/2 limits for one connection (kairos patch, see vendor/README.md).
///
/// Insert one into the connection's extensions from the `on_connect` callback. Without it the
/// connection behaves as upstream actix-http: h2's defaults, and keep-alive is only a PING
/// interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS (h2's default: unlimited); a stream over it is refused
    /// with RST_STREAM(REFUSED_STREAM).
    pub max_concurrent_streams: Option<u32>,
    /// SETTINGS_MAX_HEADER_LIST_SIZE, enforced while the header block is read (h2's default
    /// 16 MiB): an oversized block gets 431, or GOAWAY if the client keeps sending it.
    pub max_header_list_size: Option<u32>,
    /// Streams the client may reset before they are accepted (h2's default 20).
    pub max_pending_accept_reset_streams: Option<usize>,
    /// Streams the server may reset for the client's protocol errors (h2's default 1024).
    pub max_local_error_reset_streams: Option<usize>,
    /// Streams the client may reset before their response is complete, plus one for every two
    /// streams answered; one more closes the connection with GOAWAY(ENHANCE_YOUR_CALM). With a
    /// value set, a reset stream's service future is dropped (the work it started is cancelled).
    pub max_client_resets: Option<usize>,
    /// Close (GOAWAY) a connection with no open stream after the keep-alive time (PINGs are
    /// not activity), or after the client request timeout if it never completed a request head.
    pub close_idle: bool,
    /// Advertise SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): clients may send extended
    /// CONNECT requests, which reach the service marked as upgrades with their [`Protocol`].
    pub extended_connect: bool,
}

impl Limits {
    pub(crate) fn of(conn_data: &OnConnectData) -> Self {
        conn_data
            .0
            .as_ref()
            .and_then(|ext| ext.get::<Limits>())
            .copied()
            .unwrap_or_default()
    }
}

pub(crate) fn handshake_with_timeout<T>(
    io: T,
    config: &ServiceConfig,
    conn_data: &OnConnectData,
) -> HandshakeWithTimeout<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut builder = Builder::new();
    builder
        .initial_window_size(config.h2_initial_window_size())
        .initial_connection_window_size(config.h2_initial_connection_window_size());
    let limits = Limits::of(conn_data);
    if let Some(max) = limits.max_concurrent_streams {
        builder.max_concurrent_streams(max);
    }
    if let Some(max) = limits.max_header_list_size {
        builder.max_header_list_size(max);
    }
    if let Some(max) = limits.max_pending_accept_reset_streams {
        builder.max_pending_accept_reset_streams(max);
    }
    if limits.max_local_error_reset_streams.is_some() {
        builder.max_local_error_reset_streams(limits.max_local_error_reset_streams);
    }
    if limits.extended_connect {
        builder.enable_connect_protocol();
    }

    HandshakeWithTimeout {
        handshake: builder.handshake(io),
        timer: config
            .client_request_deadline()
            .map(|deadline| Box::pin(sleep_until(deadline.into()))),
    }
}

pub(crate) struct HandshakeWithTimeout<T: AsyncRead + AsyncWrite + Unpin> {
    handshake: Handshake<T>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Future for HandshakeWithTimeout<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Result<(Connection<T, Bytes>, Option<Pin<Box<Sleep>>>), DispatchError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();

        match Pin::new(&mut this.handshake).poll(cx)? {
            // return the timer on success handshake; its slot can be re-used for h2 ping-pong
            Poll::Ready(conn) => Poll::Ready(Ok((conn, this.timer.take()))),
            Poll::Pending => match this.timer.as_mut() {
                Some(timer) => {
                    ready!(timer.as_mut().poll(cx));
                    Poll::Ready(Err(DispatchError::SlowRequestTimeout))
                }
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use static_assertions::assert_impl_all;

    use super::*;

    assert_impl_all!(Payload: Unpin, Send, Sync);
}
