//! The listener: builds the actix server from the live state (plaintext HTTP/1.1 + h2c, or
//! TLS with HTTP/2 via ALPN), and stops it gracefully on SIGTERM/SIGINT.

use crate::runtime::SharedState;
use crate::{admin, proxy};
use actix_web::{web, App, HttpServer};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// A bound, not yet running gateway.
pub struct Bound {
    pub server: actix_web::dev::Server,
    pub addr: SocketAddr,
}

/// Binds the configured address (or uses `listener`) and prepares the server.
pub fn bind(state: Arc<SharedState>, listener: Option<TcpListener>) -> io::Result<Bound> {
    let rt = state.load();
    let cfg = &rt.config.server;
    let listener = match listener {
        Some(l) => l,
        None => listen(&cfg.host, cfg.port).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}:{}: {e}", cfg.host, cfg.port),
            )
        })?,
    };
    let addr = listener.local_addr()?;
    let data = web::Data::from(state.clone());
    // The 400/408/431 that actix-http's parser sends before any service sees a request get the
    // gateway's JSON error, a request id, a metric and an access-log line (vendor/README.md).
    actix_http::protocol_error::set_responder(protocol_error_response);
    let conn_state = state.clone();
    let http = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .service(admin::scope())
            .default_service(web::to(proxy::handle))
    })
    .workers(cfg.workers)
    .keep_alive(cfg.keep_alive)
    // Per worker; at the cap a worker stops accepting and connections queue in the backlog.
    .max_connections(cfg.max_connections.div_ceil(cfg.workers))
    .client_request_timeout(cfg.client_header_timeout)
    .shutdown_timeout(cfg.shutdown_timeout.as_secs().max(1))
    // As NGINX's `tcp_nodelay on`: a small write (an HTTP/2 frame, a WebSocket message) goes
    // out at once instead of waiting for the ACK of the previous one.
    .tcp_nodelay(true)
    .on_connect(move |_, ext| {
        // Read per connection, so a reload applies to new connections.
        ext.insert(h2_limits(&conn_state.load().config.server));
        // Lives in the connection's extensions, so it is dropped when the connection closes.
        ext.insert(Connection::open(conn_state.clone()));
    })
    .disable_signals();
    let http = match &cfg.tls {
        Some(tls) => http.listen_rustls_0_23(
            listener,
            crate::base::tls::server_config(&tls.cert, &tls.key)?,
        )?,
        None if cfg.h2c => http.listen_auto_h2c(listener)?,
        None => http.listen(listener)?,
    };
    let server = http.run();
    state.set_ready(true);
    Ok(Bound { server, addr })
}

/// Streams an HTTP/2 client may reset before they are accepted (h2's default, set explicitly).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the gateway may reset for a client's protocol errors before GOAWAY.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Streams a client may cancel before their response, plus one for every two answered, before
/// GOAWAY(ENHANCE_YOUR_CALM): rapid reset (CVE-2023-44487).
const H2_MAX_CLIENT_RESETS: usize = 100;
/// Header fields a request may have (actix's HTTP/1 parser refuses more with 431).
const MAX_HEADER_FIELDS: u64 = 100;

/// The HTTP/2 limits for one connection (vendor/README.md): the same bounds as HTTP/1.
/// The header list is bounded while it is read; RFC 9113 counts 32 bytes per field on top of
/// names and values, and the pseudo-headers (`:path`), so the bound allows for them and the
/// exact `max_header_size` is still checked once the head is decoded.
fn h2_limits(cfg: &crate::config::model::ServerConfig) -> actix_http::h2::Limits {
    let list = cfg.max_header_size + cfg.max_uri_length + 32 * (MAX_HEADER_FIELDS + 4);
    actix_http::h2::Limits {
        max_concurrent_streams: Some(cfg.h2_max_concurrent_streams),
        max_header_list_size: Some(u32::try_from(list).unwrap_or(u32::MAX)),
        max_pending_accept_reset_streams: Some(H2_MAX_PENDING_ACCEPT_RESETS),
        max_local_error_reset_streams: Some(H2_MAX_LOCAL_ERROR_RESETS),
        max_client_resets: Some(H2_MAX_CLIENT_RESETS),
        close_idle: true,
        // WebSockets over HTTP/2 (RFC 8441): src/proxy/websocket.rs.
        extended_connect: true,
    }
}

/// A client connection's data: counted in `kairos_active_connections` while it lives, and the
/// way back to the gateway's state for the errors actix-http answers on its own.
struct Connection(Arc<SharedState>);

impl Connection {
    fn open(state: Arc<SharedState>) -> Self {
        state.metrics.active_connections.inc();
        Connection(state)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.metrics.active_connections.dec();
    }
}

/// Answers a request head actix-http refused (malformed: 400, too large: 431, too slow: 408)
/// like any other gateway error: JSON body, fresh `X-Request-Id`, counted in
/// `kairos_http_protocol_errors_total{status}` and `kairos_requests_total{route="unmatched"}`,
/// and an access-log line. The connection is closed after it.
fn protocol_error_response(
    err: &actix_http::protocol_error::ProtocolError<'_>,
) -> (actix_http::Response<()>, actix_web::body::BoxBody) {
    use crate::base::error::GatewayError;
    use crate::observability::{metrics, request_id};
    let error = match err.status.as_u16() {
        408 => GatewayError::HeadTimeout,
        431 => GatewayError::HeadersTooLarge,
        _ => GatewayError::BadRequest("malformed request"),
    };
    let rid = request_id::generate();
    let status = err.status.as_u16();
    if let Some(Connection(state)) = err.conn_data.and_then(|d| d.get::<Connection>()) {
        state.metrics.protocol_error(status);
        if state.load().config.logging.access_log {
            tracing::info!(
                target: "kairos::access",
                route = metrics::UNMATCHED,
                status,
                error = error.code(),
                client = err.peer_addr.map(|a| a.ip().to_string()),
                request_id = rid.to_str().unwrap_or_default(),
                "request refused before routing",
            );
        }
    }
    let (res, body) = error.to_response(&rid).into_parts();
    (res.into(), body)
}

/// Connections the kernel may queue before the gateway accepts them (std's default is 128,
/// which drops connections under a burst; NGINX uses 511, actix 2048).
const BACKLOG: i32 = 2048;

/// A listening socket with SO_REUSEADDR and a deep accept backlog.
fn listen(host: &str, port: u16) -> io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Runs until SIGTERM or SIGINT, then stops accepting and lets in-flight requests finish
/// (bounded by `server.shutdown_timeout`). SIGHUP reloads the config file. The handlers are
/// installed before `ready` runs (it announces the listener): a SIGTERM sent as soon as the
/// gateway says it listens stops it gracefully, not by the signal's default action.
pub async fn run_until_signal(
    server: actix_web::dev::Server,
    state: Arc<SharedState>,
    ready: impl FnOnce(),
) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handle = server.handle();
    let state_for_reload = state.clone();
    let installed = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    ready();
    let (term, int, hup) = installed;
    let signals = async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            tracing::warn!("cannot install signal handlers; stop the gateway with SIGKILL");
            return std::future::pending::<()>().await;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down: no new connections, finishing in-flight requests"
        );
        state.begin_shutdown();
        handle.stop(true).await;
    };
    actix_web::rt::spawn(signals);
    let reloader = state_for_reload.clone();
    let state_for_flush = state_for_reload;
    actix_web::rt::spawn(async move {
        let Ok(mut hup) = hup else {
            tracing::warn!("cannot install the SIGHUP handler; reload with the admin API");
            return;
        };
        while hup.recv().await.is_some() {
            let state = reloader.clone();
            let _ = crate::runtime::on_reload_thread(move || {
                crate::runtime::reload::from_file(&state, "sighup").is_ok()
            })
            .await;
        }
    });
    let result = server.await;
    // Quota counts not yet written (at most a second's) go to the store before exit.
    if let Some(t) = &state_for_flush.load().edge.tenancy {
        if let Err(e) = t.quotas.flush() {
            tracing::warn!(error = %e, "quota counts not written at shutdown");
        }
    }
    result
}
