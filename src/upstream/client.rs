//! The seam between the gateway and its upstream HTTP client: `send` takes a finished request
//! and returns the upstream's response head plus a [`Lease`] on the connection, handed back to
//! the pool when the response body ends. Redirects are never followed.
//!
//! Behind it: the gateway's own HTTP/1.1 client connections ([`super::h1`]), pooled per actix
//! worker thread; a request, its connection and its pool stay on one thread, so there is no
//! cross-thread hand-off, no `Send` bound and no lock. (It replaced hyper's HTTP/1.1 client
//! connections, which had replaced hyper-util's pooled client: see [`super::h1`] for why and
//! what each cost.) A WebSocket handshake goes through hyper's HTTP/1.1 client on a new
//! connection of its own (hyper hands the connection over after a 101). Upstreams whose
//! `protocol` may be HTTP/2 go through [`super::h2`].

use crate::config::model::UpstreamProtocol;
use crate::upstream::body::{ProxyBody, ResponseBody};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Attempts on pooled connections that turn out closed before the response began.
const STALE_RETRIES: usize = 3;

/// Where a request goes: one upstream server as the forwarder needs it.
pub struct Target<'a> {
    /// Identifies the pool of connections to this server (see [`pool_key`]).
    pub pool_key: u64,
    pub https: bool,
    pub authority: &'a http::uri::Authority,
    pub connect_timeout: Duration,
    pub tls: &'a Arc<rustls::ClientConfig>,
    /// Largest response head accepted, in bytes (at least 8 KiB).
    pub max_header_size: usize,
    /// A WebSocket handshake: sent on a new connection that can be upgraded (never a pooled
    /// one; after a 101 it belongs to the socket).
    pub upgrade: bool,
    /// The upstream's protocol (its `tls` offers the matching ALPN protocols).
    pub protocol: UpstreamProtocol,
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
    /// An HTTP/2 server refused the stream without processing it: a GOAWAY whose last stream
    /// id is below it (NGINX sends one after `keepalive_requests` streams on a connection), or
    /// RST_STREAM REFUSED_STREAM. RFC 9113 6.8 and 8.7: it may be sent again, whatever its
    /// method.
    #[error("upstream refused the stream unprocessed: {0}")]
    Refused(String),
}

/// A failed exchange, with the request when it was never written: it can then be sent
/// elsewhere whatever its method or body.
pub struct SendError {
    pub error: ForwardError,
    pub unsent: Option<http::Request<ProxyBody>>,
}

impl From<ForwardError> for SendError {
    fn from(error: ForwardError) -> Self {
        SendError {
            error,
            unsent: None,
        }
    }
}

/// A connection in use; return it with [`Lease::release`] once the response body has ended.
pub struct Lease {
    /// Held until the lease ends (dropping it lets go of the connection or stream).
    _held: Leased,
    /// Counts the request as in flight to its server until the body ends.
    guard: Option<crate::upstream::server::AttemptGuard>,
}

/// What a lease holds: nothing more for an HTTP/1.1 exchange of ours (the response body holds
/// its connection), hyper's connection for a WebSocket handshake, or a stream of a shared
/// HTTP/2 connection.
enum Leased {
    Http1,
    Upgrade { _sender: SendRequest<ProxyBody> },
    H2 { _stream: super::h2::Stream },
}

impl Lease {
    /// Holds `guard` (the server's in-flight count) until the lease ends.
    pub fn hold(&mut self, guard: crate::upstream::server::AttemptGuard) {
        self.guard = Some(guard);
    }

    /// The response body has ended: the server's in-flight count goes down, an HTTP/2
    /// stream's place on its connection is given back. (An HTTP/1.1 connection of ours went
    /// back to the pool as its body ended; an upgraded one belongs to its socket.)
    pub fn release(self) {
        drop(self);
    }
}

/// The pool key of a server: its scheme and authority, and the settings its connections were
/// made with (TLS, the response head limit, the protocol).
pub fn pool_key(
    https: bool,
    authority: &http::uri::Authority,
    tls: &Arc<rustls::ClientConfig>,
    max_header_size: usize,
    protocol: UpstreamProtocol,
) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    https.hash(&mut h);
    protocol.hash(&mut h);
    max_header_size.hash(&mut h);
    authority.as_str().to_ascii_lowercase().hash(&mut h);
    if https {
        (Arc::as_ptr(tls) as usize).hash(&mut h);
    }
    h.finish()
}

/// Whether requests to `target` go through [`send_h2`] (its protocol may be HTTP/2) rather
/// than [`send`].
pub fn uses_h2(target: &Target<'_>) -> bool {
    target.protocol.may_use_h2(target.https)
}

/// Sends `req` to an upstream whose protocol may be HTTP/2 (see [`super::h2`]) and waits for
/// the response head. The caller chooses between this and [`send`] (boxing this one), so the
/// HTTP/1.1 path's future stays as it was.
pub async fn send_h2(
    req: http::Request<ProxyBody>,
    target: &Target<'_>,
) -> Result<(http::Response<ResponseBody>, Lease), SendError> {
    super::h2::send(req, target).await
}

/// A WebSocket handshake to an upstream whose protocol may be HTTP/2: an extended CONNECT
/// (RFC 8441) on a stream of a pooled connection (`h2`) when the server's SETTINGS allow it,
/// else an HTTP/1.1 upgrade on a new connection (`http1`: TLS offering only "http/1.1").
pub async fn send_websocket(
    req: http::Request<ProxyBody>,
    h2: &Target<'_>,
    http1: &Target<'_>,
) -> Result<(http::Response<ResponseBody>, Lease), SendError> {
    match super::h2::send_websocket(req, h2).await {
        Ok(sent) => sent,
        Err(req) => send(req, http1).await,
    }
}

/// A lease on a stream of an HTTP/2 connection.
pub(super) fn h2_lease(stream: super::h2::Stream) -> Lease {
    Lease {
        _held: Leased::H2 { _stream: stream },
        guard: None,
    }
}

/// Sends `req` upstream over a pooled HTTP/1.1 connection (a new one when none is idle) and
/// waits for the response head. A WebSocket handshake goes on a new connection of hyper's.
pub async fn send(
    mut req: http::Request<ProxyBody>,
    target: &Target<'_>,
) -> Result<(http::Response<ResponseBody>, Lease), SendError> {
    if target.upgrade {
        return Box::pin(send_upgrade(req, target)).await;
    }
    let lease = || Lease {
        _held: Leased::Http1,
        guard: None,
    };
    // A request that reached a reused connection's server is sent again at most once (the
    // server may have been slow rather than gone: not a retry the route's policy counts).
    let mut written_again = false;
    for attempt in 0..=STALE_RETRIES {
        let pooled = match attempt < STALE_RETRIES {
            true => super::h1::checkout(target.pool_key),
            false => None,
        };
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            // Boxed: connecting (TLS handshake included) is a large future, and rare next to
            // reusing a pooled connection; inline it would grow every request's future.
            None => match Box::pin(connect(target)).await {
                Ok(io) => super::h1::Conn::new(io, target.max_header_size),
                Err(error) => {
                    return Err(SendError {
                        error,
                        unsent: Some(req),
                    })
                }
            },
        };
        match super::h1::exchange(conn, req, target.pool_key, reused).await {
            Ok(res) => return Ok((res.map(ResponseBody::H1), lease())),
            // The pooled connection was closed by the server: again on another.
            Err(super::h1::Failed {
                error: SendError {
                    unsent: Some(r), ..
                },
                again: true,
                written,
            }) if reused && !(written && written_again) => {
                written_again |= written;
                req = r;
            }
            Err(failed) => return Err(failed.error),
        }
    }
    Err(ForwardError::Protocol("no usable connection".into()).into())
}

/// A WebSocket handshake over HTTP/1.1: on a new connection of hyper's, which hands the
/// connection over after a 101 (`hyper::upgrade::on`).
async fn send_upgrade(
    req: http::Request<ProxyBody>,
    t: &Target<'_>,
) -> Result<(http::Response<ResponseBody>, Lease), SendError> {
    let sender = match connect(t).await {
        Ok(Transport::Tcp(tcp)) => {
            handshake_http1(TokioIo::new(tcp), t.max_header_size, true).await
        }
        Ok(Transport::Tls(tls)) => {
            handshake_http1(TokioIo::new(tls), t.max_header_size, true).await
        }
        Err(e) => Err(e),
    };
    let mut sender = match sender {
        Ok(s) => s,
        Err(error) => {
            return Err(SendError {
                error,
                unsent: Some(req),
            })
        }
    };
    match sender.try_send_request(req).await {
        Ok(res) => Ok((
            res.map(ResponseBody::Hyper),
            Lease {
                _held: Leased::Upgrade { _sender: sender },
                guard: None,
            },
        )),
        Err(mut e) => {
            let unsent = e.take_message();
            Err(SendError {
                error: classify(e.into_error()),
                unsent,
            })
        }
    }
}

/// A connected transport: TCP, or TLS over TCP (boxed: its buffers are large).
pub(super) enum Transport {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// A TCP connection to the target (with TLS for https), within the connect timeout.
pub(super) async fn connect(t: &Target<'_>) -> Result<Transport, ForwardError> {
    let host = t.authority.host();
    let port = t
        .authority
        .port_u16()
        .unwrap_or(if t.https { 443 } else { 80 });
    let addrs: Vec<SocketAddr> = match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            match tokio::time::timeout(t.connect_timeout, tokio::net::lookup_host((host, port)))
                .await
            {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => return Err(ForwardError::Connect(format!("resolving {host}: {e}"))),
                Err(_) => return Err(ForwardError::ConnectTimeout),
            }
        }
    };
    let mut last = ForwardError::Connect(format!("{host} resolved to no address"));
    for addr in addrs {
        let tcp =
            match tokio::time::timeout(t.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    last = ForwardError::Connect(format!("{addr}: {e}"));
                    continue;
                }
                Err(_) => {
                    last = ForwardError::ConnectTimeout;
                    continue;
                }
            };
        let _ = tcp.set_nodelay(true);
        return if t.https {
            let name = server_name(host)
                .map_err(|e| ForwardError::Connect(format!("TLS server name {host}: {e}")))?;
            let handshake = tokio_rustls::TlsConnector::from(t.tls.clone()).connect(name, tcp);
            let tls = match tokio::time::timeout(t.connect_timeout, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(ForwardError::Connect(format!(
                        "TLS handshake with {addr}: {e}"
                    )))
                }
                Err(_) => return Err(ForwardError::ConnectTimeout),
            };
            Ok(Transport::Tls(Box::new(tls)))
        } else {
            Ok(Transport::Tcp(tcp))
        };
    }
    Err(last)
}

/// The TLS server name of an upstream host: an IP address for an IP literal (an IPv6 one
/// without the URL's brackets, and no SNI is sent for it), a DNS name otherwise.
fn server_name(
    host: &str,
) -> Result<rustls::pki_types::ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(rustls::pki_types::ServerName::IpAddress(ip.into())),
        Err(_) => rustls::pki_types::ServerName::try_from(host.to_string()),
    }
}

/// An HTTP/1.1 connection over `io`, accepting response heads up to `max_header_size` bytes;
/// with `upgrades`, a 101 hands the connection over (`hyper::upgrade::on`).
pub(super) async fn handshake_http1<T>(
    io: T,
    max_header_size: usize,
    upgrades: bool,
) -> Result<SendRequest<ProxyBody>, ForwardError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // hyper's read buffer must hold a whole response head, so its ceiling is the head limit
    // (64 KiB by default, not hyper's 400 KB: a large download's buffer grows and shrinks
    // within that, which keeps the mix of sizes the allocator sees small).
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(max_header_size.max(8 << 10))
        .handshake(io)
        .await
        .map_err(|e| ForwardError::Protocol(chain(&e)))?;
    actix_web::rt::spawn(async move {
        let result = match upgrades {
            true => conn.with_upgrades().await,
            false => conn.await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "upstream connection closed with an error");
        }
    });
    Ok(sender)
}

pub(super) fn classify(e: hyper::Error) -> ForwardError {
    use std::error::Error;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<crate::upstream::body::RequestBodyError>() {
            return ForwardError::Body(b.to_string());
        }
        source = s.source();
    }
    ForwardError::Protocol(chain(&e))
}

/// An error with its sources, `outer: inner: innermost`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
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

/// `tls` offering the ALPN protocols of `protocol`: "h2" for h2, "h2" then "http/1.1" for
/// auto, `tls` itself (HTTP/1.1) otherwise. The default settings' variants are made once, so
/// the pool keys (which hash the settings' address) stay the same across reloads.
pub fn tls_for_protocol(
    tls: Arc<rustls::ClientConfig>,
    protocol: UpstreamProtocol,
) -> Arc<rustls::ClientConfig> {
    static DEFAULT_H2: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    static DEFAULT_AUTO: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let (alpn, default): (&[&[u8]], _) = match protocol {
        UpstreamProtocol::Http1 | UpstreamProtocol::H2c => return tls,
        UpstreamProtocol::H2 => (&[b"h2"], &DEFAULT_H2),
        UpstreamProtocol::Auto => (&[b"h2", b"http/1.1"], &DEFAULT_AUTO),
    };
    let with_alpn = |tls: &rustls::ClientConfig| {
        let mut cfg = tls.clone();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    };
    if Arc::ptr_eq(&tls, &default_tls_config()) {
        return default.get_or_init(|| with_alpn(&tls)).clone();
    }
    with_alpn(&tls)
}

/// `tls` offering only "http/1.1" by ALPN, whatever the upstream's protocol: for a WebSocket
/// handshake, which is HTTP/1.1 (made per handshake: they are rare next to requests).
pub fn tls_http1_only(tls: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut cfg = tls.clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// TLS client settings trusting `roots` (plus nothing else), offering HTTP/1.1 by ALPN.
pub fn tls_config_with_roots(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports TLS 1.2 and 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    #[test]
    fn server_names_of_ip_literals_have_no_brackets() {
        let v6: std::net::IpAddr = "::1".parse().unwrap();
        assert_eq!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(v6.into())
        );
        let v4: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            server_name("10.0.0.1").unwrap(),
            ServerName::IpAddress(v4.into())
        );
        assert_eq!(
            server_name("api.example.com").unwrap(),
            ServerName::try_from("api.example.com").unwrap()
        );
        assert!(server_name("bad name").is_err());
    }
}
