//! Kairos patch: lets the application shape the responses the HTTP/1 dispatcher sends on its
//! own, before any service sees a request (400 for a malformed head, 431 for an oversized one,
//! 408 when a head does not arrive in time).
//!
//! The hook is process-wide and set once. It receives the connection's data (what
//! `on_connect` stored), so an application running several servers can still find the
//! server's own state. Without a hook the dispatcher answers as upstream actix-http does: the
//! status and an empty body.

use std::{net::SocketAddr, sync::OnceLock};

use http::StatusCode;

use crate::{body::BoxBody, ConnectionType, Extensions, Response};

/// What the dispatcher knows when it has to answer by itself.
#[derive(Debug)]
pub struct ProtocolError<'a> {
    /// 400, 408 or 431.
    pub status: StatusCode,
    /// The client's address, when the listener knows it.
    pub peer_addr: Option<SocketAddr>,
    /// The connection's data, as stored by `on_connect`.
    pub conn_data: Option<&'a Extensions>,
}

/// Builds the response head and body for a protocol error. The connection is closed after it.
pub type Responder = fn(&ProtocolError<'_>) -> (Response<()>, BoxBody);

static RESPONDER: OnceLock<Responder> = OnceLock::new();

/// Installs the responder. Returns false (and changes nothing) if one was already set.
pub fn set_responder(responder: Responder) -> bool {
    RESPONDER.set(responder).is_ok()
}

pub(crate) fn respond(
    status: StatusCode,
    peer_addr: Option<SocketAddr>,
    conn_data: Option<&Extensions>,
) -> (Response<()>, BoxBody) {
    let (mut res, body) = match RESPONDER.get() {
        Some(responder) => responder(&ProtocolError {
            status,
            peer_addr,
            conn_data,
        }),
        None => (Response::with_body(status, ()), BoxBody::new(())),
    };
    // The connection is closed after this response: say so (the encoder drops a `Connection`
    // header the responder sets and would otherwise repeat the last request's keep-alive).
    res.head_mut().set_connection_type(ConnectionType::Close);
    (res, body)
}
