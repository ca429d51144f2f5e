//! The request body as the upstream client sends it: none, one buffer, or chunks from a bounded
//! channel fed by the proxy's body pump (then the client's trailers, when it sent any).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// Why a request body stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body larger than the allowed maximum")]
    TooLarge,
    #[error("client request body failed: {0}")]
    Client(String),
}

/// The body sent upstream.
pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    Stream {
        rx: mpsc::Receiver<Result<Bytes, RequestBodyError>>,
        len: Option<u64>,
        /// The trailers, sent by the pump before it closes `rx` (HTTP/2 clients only).
        trailers: Option<oneshot::Receiver<http::HeaderMap>>,
    },
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut *self {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream { rx, trailers, .. } => match rx.poll_recv(cx) {
                Poll::Ready(None) => {
                    let Some(t) = trailers else {
                        return Poll::Ready(None);
                    };
                    let polled = Pin::new(t).poll(cx);
                    if polled.is_ready() {
                        *trailers = None;
                    }
                    polled.map(|r| r.ok().map(|map| Ok(Frame::trailers(map))))
                }
                polled => polled.map(|o| o.map(|r| r.map(Frame::data))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Stream { len: Some(n), .. } => SizeHint::with_exact(*n),
            ProxyBody::Stream { len: None, .. } => SizeHint::default(),
        }
    }
}

/// An upstream's response body: from a connection of ours (HTTP/1.1, [`super::h1`]) or of
/// hyper's (HTTP/2, a WebSocket handshake).
pub enum ResponseBody {
    H1(super::h1::Body),
    Hyper(hyper::body::Incoming),
}

/// A response body that failed before its end.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error(transparent)]
    H1(#[from] super::h1::BodyError),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ResponseBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ResponseBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::H1(b) => b.is_end_stream(),
            ResponseBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::H1(b) => b.size_hint(),
            ResponseBody::Hyper(b) => b.size_hint(),
        }
    }
}
