//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT) through the gateway: an `h2` client
//! sends `CONNECT` with `:protocol = websocket` over h2c and over TLS (ALPN h2), and a
//! tokio-tungstenite client speaks WebSocket over the stream to the same tokio-tungstenite
//! echo upstream as tests/websocket.rs, which the gateway reaches with an RFC 6455 HTTP/1.1
//! handshake: messages of every kind and size, close codes, the edge chain on the handshake,
//! metrics, several sockets on one connection, a reload and a graceful shutdown. Towards an
//! upstream spoken to in HTTP/2, the gateway sends extended CONNECTs itself when the server's
//! SETTINGS allow it: an `h2` WebSocket server in the test takes them.

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<H2Stream>;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One HTTP/2 stream as a byte stream: DATA frames in, DATA frames out, END_STREAM on
/// shutdown.
struct H2Stream {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    buf: Bytes,
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.buf.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                Some(Ok(b)) => {
                    let _ = self.recv.flow_control().release_capacity(b.len());
                    self.buf = b;
                }
            }
        }
        let n = self.buf.len().min(out.remaining());
        out.put_slice(&self.buf.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(n)) if n > 0 => {
                let n = n.min(buf.len());
                self.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(std::io::Error::other)?;
                Poll::Ready(Ok(n))
            }
            Some(Ok(_)) => {
                // No capacity yet: wait for the next increase.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(Err(e)) => Poll::Ready(Err(std::io::Error::other(e))),
            None => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

/// An HTTP/2 connection to the gateway, over h2c (prior knowledge) or TLS with ALPN h2.
async fn h2_connect(addr: SocketAddr, tls_pem: Option<&str>) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // As browsers and HTTP/2 libraries do: the WINDOW_UPDATEs of a 64 KiB window are small
    // writes that Nagle's algorithm would hold back for the server's delayed ACK.
    tcp.set_nodelay(true).unwrap();
    let send = match tls_pem {
        None => {
            let (send, conn) = h2::client::handshake(tcp).await.unwrap();
            drive(send, conn).await
        }
        Some(pem) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect(name, tcp)
                .await
                .unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (send, conn) = h2::client::handshake(tls).await.unwrap();
            drive(send, conn).await
        }
    };
    let send = send.ready().await.unwrap();
    assert!(
        send.is_extended_connect_protocol_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL = 1"
    );
    send
}

/// Runs the connection, once the server's SETTINGS are in: its answer to a PING comes after
/// them.
async fn drive<T>(
    send: h2::client::SendRequest<Bytes>,
    mut conn: h2::client::Connection<T, Bytes>,
) -> h2::client::SendRequest<Bytes>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ping = conn.ping_pong().expect("ping_pong taken once");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    ping.ping(h2::Ping::opaque()).await.unwrap();
    send
}

/// An extended CONNECT for a WebSocket on `path`, with `headers`; the response head and, on
/// a 200, the stream.
async fn extended_connect(
    send: &h2::client::SendRequest<Bytes>,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, Option<H2Stream>) {
    open(send, authority, path, Some("websocket"), headers).await
}

async fn open(
    send: &h2::client::SendRequest<Bytes>,
    authority: &str,
    path: &str,
    protocol: Option<&'static str>,
    headers: &[(&str, &str)],
) -> (http::response::Parts, Option<H2Stream>) {
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .header("sec-websocket-version", "13");
    req = match protocol {
        Some(p) => req
            .uri(format!("https://{authority}{path}"))
            .extension(h2::ext::Protocol::from_static(p)),
        None => req.uri(authority),
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut send = send.clone().ready().await.unwrap();
    let (res, stream) = send.send_request(req.body(()).unwrap(), false).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), res)
        .await
        .expect("a response within 10 s")
        .expect("response");
    let (parts, recv) = res.into_parts();
    if parts.status != 200 {
        return (parts, None);
    }
    let buf = Bytes::new();
    let io = H2Stream {
        send: stream,
        recv,
        buf,
    };
    (parts, Some(io))
}

/// A WebSocket over a new HTTP/2 stream of `send`.
async fn websocket(send: &h2::client::SendRequest<Bytes>, authority: &str, path: &str) -> Ws {
    let (parts, io) = extended_connect(send, authority, path, &[]).await;
    assert_eq!(parts.status, 200);
    assert!(parts.headers.contains_key("x-request-id"));
    let io = io.unwrap();
    tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Client, None).await
}

/// The next data or close message (pings the library answers are skipped).
async fn next(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("socket open")
            .expect("message");
        if !matches!(m, Message::Ping(_)) {
            return m;
        }
    }
}

fn ws_config(upstream: &str, extra: &str) -> String {
    config(
        upstream,
        r#"[{"name":"ws","path":"/ws","upstream":"u"},
            {"name":"plain","path":"/plain","upstream":"u","websocket":false}]"#,
        extra,
    )
}

#[test]
fn text_binary_ping_large_messages_and_close_codes_pass_both_ways_over_h2c() {
    let echo = WsEcho::start();
    let gw = Gateway::start(&ws_config(&echo.url(), ""));
    let authority = gw.addr.to_string();
    rt().block_on(async {
        let send = h2_connect(gw.addr, None).await;
        let mut ws = websocket(&send, &authority, "/ws").await;
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("hello"));
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));
        // A ping is answered by the upstream (the gateway relays frames, it does not answer).
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        assert_eq!(
            next(&mut ws).await,
            Message::Pong(b"are you there".to_vec().into())
        );
        // 16 MiB each way, in one message (many DATA frames and window updates).
        let big: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        match next(&mut ws).await {
            Message::Binary(b) => assert!(b[..] == big[..], "16 MiB echoed intact"),
            other => panic!("expected the 16 MiB message back, got {other:?}"),
        }
        // The upstream closes with its own code and reason.
        ws.send(Message::text("close-me")).await.unwrap();
        match next(&mut ws).await {
            Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 4002);
                assert_eq!(f.reason.as_str(), "as asked");
            }
            other => panic!("expected the upstream's close frame, got {other:?}"),
        }
        // The client closes with its code, on another stream of the same connection: the
        // upstream's echo of it comes back.
        let mut ws = websocket(&send, &authority, "/ws").await;
        ws.close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "client done".into(),
        }))
        .await
        .unwrap();
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4001),
            other => panic!("expected the close reply, got {other:?}"),
        }
    });
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn the_upstream_gets_an_rfc_6455_handshake_with_the_clients_websocket_headers() {
    let echo = WsEcho::start();
    let gw = Gateway::start(&ws_config(&echo.url(), ""));
    let authority = gw.addr.to_string();
    rt().block_on(async {
        let send = h2_connect(gw.addr, None).await;
        let (parts, io) = extended_connect(
            &send,
            &authority,
            "/ws?room=7",
            &[
                ("sec-websocket-protocol", "chat.v2, chat.v1"),
                ("x-custom", "kept"),
            ],
        )
        .await;
        assert_eq!(parts.status, 200);
        // The upstream's choice of subprotocol; nothing of HTTP/1.1's upgrade.
        assert_eq!(parts.headers["sec-websocket-protocol"], "chat.v2");
        assert!(!parts.headers.contains_key("sec-websocket-accept"));
        assert!(!parts.headers.contains_key("upgrade"));
        assert!(!parts.headers.contains_key("connection"));
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io.unwrap(), Role::Client, None)
                .await;
        ws.send(Message::text("headers")).await.unwrap();
        let Message::Text(j) = next(&mut ws).await else {
            panic!("expected the headers")
        };
        let seen: Vec<(String, String)> = serde_json::from_str(j.as_str()).unwrap();
        let get = |k: &str| {
            seen.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        // tokio-tungstenite's server checked the GET, the key and the version itself.
        assert_eq!(get("upgrade"), "websocket");
        assert_eq!(get("connection").to_lowercase(), "upgrade");
        assert_eq!(get("sec-websocket-version"), "13");
        assert_eq!(get("sec-websocket-key").len(), 24);
        assert_eq!(get("sec-websocket-protocol"), "chat.v2, chat.v1");
        assert_eq!(get("x-custom"), "kept");
        assert_eq!(
            get("host"),
            echo.addr.to_string(),
            "the upstream's own authority"
        );
        assert_eq!(get("x-forwarded-for"), "127.0.0.1");
        assert!(!get("x-request-id").is_empty());
    });
}

#[test]
fn over_tls_with_alpn_h2() {
    let (dir, pem, _) = self_signed_tls(&["localhost"], &[]);
    let echo = WsEcho::start();
    let gw = Gateway::start_in(
        &format!(
            r#"{{"server":{{"workers":1,"tls":{{"cert":"server.pem","key":"server.key"}}}},
            "upstreams":{{"u":{{"servers":[{{"url":"{}"}}]}}}},
            "routes":[{{"name":"ws","path":"/ws","upstream":"u"}}],
            "logging":{{"access_log":false}}}}"#,
            echo.url()
        ),
        dir.path(),
    );
    let authority = format!("localhost:{}", gw.addr.port());
    rt().block_on(async {
        let send = h2_connect(gw.addr, Some(&pem)).await;
        let mut ws = websocket(&send, &authority, "/ws").await;
        for i in 0..3 {
            ws.send(Message::text(format!("secure {i}"))).await.unwrap();
            assert_eq!(next(&mut ws).await, Message::text(format!("secure {i}")));
        }
        let big = vec![42u8; 1 << 20];
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::binary(big));
    });
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn refused_handshakes_never_reach_the_upstream() {
    let echo = WsEcho::start();
    let key = "kairos_ws_key_abcdefghijklmnopqrstuvwxyz0123";
    let gw = Gateway::start(&format!(
        r#"{{"version":1,"server":{{"workers":1}},
        "upstreams":{{"u":{{"servers":[{{"url":"{}"}}]}}}},
        "routes":[
          {{"name":"keyed","path":"/keyed","upstream":"u","auth":"api_key"}},
          {{"name":"browser","path":"/browser","upstream":"u",
            "cors":{{"allowed_origins":["https://app.example"]}}}},
          {{"name":"limited","path":"/limited","upstream":"u",
            "rate_limit":{{"per_ip":{{"rps":1,"burst":1}}}}}},
          {{"name":"posts","path":"/posts","upstream":"u","methods":["POST"]}},
          {{"name":"off","path":"/off","upstream":"u","websocket":false}}
        ],
        "api_keys":{{"keys":{{"k":{{"key_hash":"{}"}}}}}},
        "logging":{{"access_log":false,"level":"error"}}}}"#,
        echo.url(),
        kairos_rs::base::hash::format_hash(&kairos_rs::base::hash::hash(key)),
    ));
    let a = gw.addr.to_string();
    rt().block_on(async {
        let send = h2_connect(gw.addr, None).await;
        let status = |p: (http::response::Parts, Option<H2Stream>)| p.0.status.as_u16();
        // No key: 401.
        assert_eq!(
            status(extended_connect(&send, &a, "/keyed", &[]).await),
            401
        );
        // An origin the route's CORS policy does not allow: 403.
        let evil = [("origin", "https://evil.example")];
        assert_eq!(
            status(extended_connect(&send, &a, "/browser", &evil).await),
            403
        );
        // Over the rate limit: 429.
        let (first, io) = extended_connect(&send, &a, "/limited", &[]).await;
        assert_eq!(first.status, 200);
        assert_eq!(
            status(extended_connect(&send, &a, "/limited", &[]).await),
            429
        );
        // A route that does not allow GET has no WebSockets: 405, as a GET would get.
        let (parts, _) = extended_connect(&send, &a, "/posts", &[]).await;
        assert_eq!(parts.status, 405);
        assert_eq!(parts.headers["allow"], "POST");
        // `websocket: false`, and a protocol other than websocket: refused, not forwarded.
        assert_eq!(status(extended_connect(&send, &a, "/off", &[]).await), 400);
        assert_eq!(
            status(
                open(
                    &send,
                    &a,
                    "/keyed",
                    Some("connect-udp"),
                    &[("x-api-key", key)]
                )
                .await
            ),
            400
        );
        // A plain CONNECT (no `:protocol`) names no path: nothing routes it.
        assert_eq!(status(open(&send, &a, "", None, &[]).await), 404);
        assert_eq!(
            echo.accepted.load(Ordering::SeqCst),
            1,
            "only the admitted one"
        );
        drop(io);
        // Admitted: the right key, the allowed origin.
        let (parts, io) = extended_connect(&send, &a, "/keyed", &[("x-api-key", key)]).await;
        assert_eq!(parts.status, 200);
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io.unwrap(), Role::Client, None)
                .await;
        ws.send(Message::text("k")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("k"));
        let good = [("origin", "https://app.example")];
        let (parts, io) = extended_connect(&send, &a, "/browser", &good).await;
        assert_eq!(parts.status, 200);
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io.unwrap(), Role::Client, None)
                .await;
        ws.send(Message::text("o")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("o"));
    });
}

#[test]
fn an_upstream_that_refuses_or_botches_the_upgrade() {
    // A plain HTTP server: its refusal is the client's answer.
    let plain = Upstream::start(|_| Reply::ok("not a websocket server").status(426));
    let gw = Gateway::start(&ws_config(&plain.url(), ""));
    // A 101 whose Sec-WebSocket-Accept is not the key's: a 502, never a socket.
    let botched = RawUpstream::start(|_| {
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            Then::Close(Duration::from_millis(500)),
        )
    });
    let gw_botched = Gateway::start(&ws_config(&botched.url(), ""));
    rt().block_on(async {
        let send = h2_connect(gw.addr, None).await;
        let (parts, _) = extended_connect(&send, &gw.addr.to_string(), "/ws", &[]).await;
        assert_eq!(parts.status, 426);
        let seen = plain.last();
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.header("upgrade"), Some("websocket"));
        assert!(seen.header("sec-websocket-key").is_some());
        let send = h2_connect(gw_botched.addr, None).await;
        let (parts, io) = extended_connect(&send, &gw_botched.addr.to_string(), "/ws", &[]).await;
        assert_eq!(parts.status, 502);
        assert!(io.is_none());
    });
    assert_eq!(botched.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn sockets_and_requests_share_one_connection_and_are_counted() {
    let echo = WsEcho::start();
    let ok = Upstream::start_ok();
    let token = "t0k3n-for-the-websocket-tests";
    let gw = Gateway::start(&format!(
        r#"{{"version":1,"server":{{"workers":1}},
        "upstreams":{{"u":{{"servers":[{{"url":"{}"}}]}},"ok":{{"servers":[{{"url":"{}"}}]}}}},
        "routes":[{{"name":"ws","path":"/ws","upstream":"u"}},
                  {{"name":"get","path":"/get","upstream":"ok"}}],
        "admin":{{"token":"{token}"}},
        "logging":{{"access_log":false,"level":"error"}}}}"#,
        echo.url(),
        ok.url()
    ));
    let a = gw.addr.to_string();
    rt().block_on(async {
        let send = h2_connect(gw.addr, None).await;
        let mut one = websocket(&send, &a, "/ws").await;
        let mut two = websocket(&send, &a, "/ws").await;
        // An ordinary request on the same connection, between the two sockets' messages.
        let mut plain = send.clone().ready().await.unwrap();
        let req = http::Request::get(format!("http://{a}/get"))
            .body(())
            .unwrap();
        let (res, _) = plain.send_request(req, true).unwrap();
        one.send(Message::text("12345")).await.unwrap();
        two.send(Message::text("abc")).await.unwrap();
        assert_eq!(res.await.unwrap().status(), 200);
        assert_eq!(next(&mut two).await, Message::text("abc"));
        assert_eq!(next(&mut one).await, Message::text("12345"));
        let m = scrape_metrics(&gw, token).await;
        assert_eq!(metric(&m, "kairos_websockets_open", &[]), Some(2.0));
        assert_eq!(metric(&m, "kairos_websockets_total", &[]), Some(2.0));
        // Frames as sent: a client's 5- and 3-byte texts have 6-byte headers (masked), the
        // server's 2-byte ones.
        let bytes = |d: &str| metric(&m, "kairos_websocket_bytes_total", &[("direction", d)]);
        assert_eq!(bytes("client_to_upstream"), Some(20.0));
        assert_eq!(bytes("upstream_to_client"), Some(12.0));
        // One socket closes: the other is still open.
        one.close(None).await.unwrap();
        let mut open = None;
        for _ in 0..100 {
            let m = scrape_metrics(&gw, token).await;
            open = metric(&m, "kairos_websockets_open", &[]);
            if open == Some(1.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(open, Some(1.0), "one socket closed");
        two.send(Message::text("still")).await.unwrap();
        assert_eq!(next(&mut two).await, Message::text("still"));
    });
    assert_eq!(ok.count(), 1);
}

#[test]
fn an_idle_socket_is_closed_and_its_stream_ended() {
    let echo = WsEcho::start();
    let token = "t0k3n-for-the-websocket-tests";
    let gw = Gateway::start(&config(
        &echo.url(),
        r#"[{"name":"ws","path":"/ws","upstream":"u","websocket_idle_timeout":"1s"}]"#,
        &format!(r#""admin":{{"token":"{token}"}}"#),
    ));
    let a = gw.addr.to_string();
    rt().block_on(async {
        let send = h2_connect(gw.addr, None).await;
        let mut ws = websocket(&send, &a, "/ws").await;
        ws.send(Message::text("quiet now")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("quiet now"));
        // Nothing either way for the idle timeout: the stream ends.
        let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed within 5 s");
        assert!(
            !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
            "{end:?}"
        );
        let mut open = None;
        for _ in 0..100 {
            let m = scrape_metrics(&gw, token).await;
            open = metric(&m, "kairos_websockets_open", &[]);
            if open == Some(0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(open, Some(0.0), "the open gauge goes back to 0");
        // The connection is still good for another socket.
        let mut ws = websocket(&send, &a, "/ws").await;
        ws.send(Message::text("again")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("again"));
    });
}

/// One route `/ws` to `upstream` (`upstream_extra`: more keys of its upstream), with time
/// for open sockets to close at shutdown.
fn shutdown_config(upstream: &str, upstream_extra: &str) -> String {
    format!(
        r#"{{"version":1,"server":{{"workers":1,"shutdown_timeout":"3s"}},
        "upstreams":{{"u":{{"servers":[{{"url":"{upstream}"}}]{upstream_extra}}}}},
        "routes":[{{"name":"ws","path":"/ws","upstream":"u"}}],
        "logging":{{"access_log":false}}}}"#
    )
}

#[test]
fn a_reload_keeps_open_sockets_and_a_graceful_shutdown_closes_them_with_1001() {
    let echo = WsEcho::start();
    let cfg = shutdown_config(&echo.url(), "");
    let mut gw = GatewayProcess::start(&cfg);
    let a = gw.addr.to_string();
    rt().block_on(async {
        let send = h2_connect(gw.addr, None).await;
        let mut ws = websocket(&send, &a, "/ws").await;
        ws.send(Message::text("before")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("before"));
        // A reload that changes the routes.
        let path = gw.config_path();
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["routes"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name":"more","path":"/more","upstream":"u"}));
        std::fs::write(&path, v.to_string()).unwrap();
        gw.signal("HUP");
        let c = client();
        let reloaded = async {
            for _ in 0..100 {
                if let Ok(r) = c.get(gw.url("/more")).send().await {
                    if r.status() != 404 {
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        };
        assert!(reloaded.await, "the new route is served");
        ws.send(Message::text("after")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("after"));
        // SIGTERM: the socket stays usable for a while, then gets 1001 before the 3 s are up.
        gw.signal("TERM");
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws.send(Message::text("during")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("during"));
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("expected a close frame 1001, got {other:?}"),
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the gateway exits");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}

/// What an [`H2WsEcho`] saw of one request: method, `:protocol`, headers; then the close
/// codes its socket received.
type Seen = (String, Option<String>, Vec<(String, String)>);
type Closes = std::sync::Arc<std::sync::Mutex<Vec<u16>>>;

/// A WebSocket echo server over HTTP/2 prior knowledge (RFC 8441), with or without
/// `SETTINGS_ENABLE_CONNECT_PROTOCOL`: every extended CONNECT for a WebSocket gets 200 (and
/// the first subprotocol offered), then tokio-tungstenite echoes on the stream.
struct H2WsEcho {
    addr: SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    closes: Closes,
}

impl H2WsEcho {
    fn start(extended_connect: bool) -> H2WsEcho {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let closes: Closes = Default::default();
        let (conns, seen2, closes2) = (connections.clone(), seen.clone(), closes.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    conns.fetch_add(1, Ordering::SeqCst);
                    let (seen, closes) = (seen2.clone(), closes2.clone());
                    tokio::spawn(async move {
                        let mut builder = h2::server::Builder::new();
                        if extended_connect {
                            builder.enable_connect_protocol();
                        }
                        let Ok(mut conn) = builder.handshake::<_, Bytes>(tcp).await else {
                            return;
                        };
                        while let Some(Ok((req, respond))) = conn.accept().await {
                            tokio::spawn(h2_ws_serve(req, respond, seen.clone(), closes.clone()));
                        }
                    });
                }
            });
        });
        H2WsEcho {
            addr,
            connections,
            seen,
            closes,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// One stream of [`H2WsEcho`].
async fn h2_ws_serve(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    closes: Closes,
) {
    let protocol = req
        .extensions()
        .get::<h2::ext::Protocol>()
        .map(|p| p.as_str().to_string());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    seen.lock()
        .unwrap()
        .push((req.method().to_string(), protocol.clone(), headers.clone()));
    if req.method() != http::Method::CONNECT || protocol.as_deref() != Some("websocket") {
        let res = http::Response::builder().status(400).body(()).unwrap();
        let _ = respond.send_response(res, true);
        return;
    }
    let mut res = http::Response::builder().status(200);
    if let Some(p) = req.headers().get("sec-websocket-protocol") {
        let first = p.to_str().unwrap().split(',').next().unwrap().trim();
        res = res.header("sec-websocket-protocol", first);
    }
    let Ok(send) = respond.send_response(res.body(()).unwrap(), false) else {
        return;
    };
    let io = H2Stream {
        send,
        recv: req.into_body(),
        buf: Bytes::new(),
    };
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) if t.as_str() == "close-me" => {
                let close = CloseFrame {
                    code: CloseCode::from(4002),
                    reason: "as asked".into(),
                };
                let _ = ws.close(Some(close)).await;
            }
            Message::Text(_) | Message::Binary(_) => {
                let sent = ws.send(msg).await;
                if sent.is_err() {
                    return;
                }
            }
            Message::Close(f) => closes
                .lock()
                .unwrap()
                .push(f.map_or(1005, |f| u16::from(f.code))),
            _ => {}
        }
    }
    // After the close handshake the stream ends (END_STREAM after the close frame), and stays
    // until the peer ends its side: dropped earlier, it would be reset and the close frame
    // still queued lost.
    let io = ws.get_mut();
    let _ = io.send.send_data(Bytes::new(), true);
    while let Some(Ok(_)) = io.recv.data().await {}
}

fn h2c_upstream_config(upstream: &str) -> String {
    format!(
        r#"{{"version":1,"server":{{"workers":1}},
        "upstreams":{{"u":{{"servers":[{{"url":"{upstream}"}}],"protocol":"h2c"}}}},
        "routes":[{{"name":"ws","path":"/ws","upstream":"u"}}],
        "logging":{{"access_log":false,"level":"error"}}}}"#
    )
}

#[test]
fn an_http2_upstream_that_allows_it_gets_extended_connects_on_one_connection() {
    let up = H2WsEcho::start(true);
    let gw = Gateway::start(&h2c_upstream_config(&up.url()));
    let a = gw.addr.to_string();
    rt().block_on(async {
        // An HTTP/1.1 client: the gateway answers 101 with the accept value of its key.
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{a}/ws?room=1").into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "chat.v2, chat.v1".parse().unwrap(),
        );
        let (mut h1, res) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(res.status(), 101);
        assert_eq!(res.headers()["sec-websocket-protocol"], "chat.v2");
        h1.send(Message::text("over h1")).await.unwrap();
        let Message::Text(t) = h1.next().await.unwrap().unwrap() else {
            panic!("expected the echo")
        };
        assert_eq!(t.as_str(), "over h1");
        // An HTTP/2 client, a second socket on the same upstream connection.
        let send = h2_connect(gw.addr, None).await;
        let mut h2 = websocket(&send, &a, "/ws").await;
        let big = vec![7u8; 1 << 20];
        h2.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(next(&mut h2).await, Message::binary(big));
        h1.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        let m = h1.next().await.unwrap().unwrap();
        assert_eq!(m, Message::binary(vec![1u8, 2, 3]));
        // Close codes both ways.
        h2.send(Message::text("close-me")).await.unwrap();
        match next(&mut h2).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4002),
            other => panic!("expected the upstream's close frame, got {other:?}"),
        }
        h1.close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "client done".into(),
        }))
        .await
        .unwrap();
        loop {
            match h1.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(u16::from(f.code), 4001);
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("expected the close reply, got {other:?}"),
            }
        }
    });
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "one connection");
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for (method, protocol, headers) in &seen {
        assert_eq!(method, "CONNECT");
        assert_eq!(protocol.as_deref(), Some("websocket"));
        let get = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("sec-websocket-version"), Some("13"));
        assert_eq!(get("sec-websocket-key"), None, "not part of RFC 8441");
        assert_eq!(get("upgrade"), None);
        assert!(get("x-request-id").is_some());
    }
    let get = |i: usize, k: &str| {
        seen[i]
            .2
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get(0, "sec-websocket-protocol").as_deref(),
        Some("chat.v2, chat.v1")
    );
}

#[test]
fn an_http2_upstream_that_does_not_allow_it_never_gets_an_extended_connect() {
    // Its SETTINGS say nothing of extended CONNECT: the gateway tries an HTTP/1.1 upgrade,
    // which an HTTP/2-only server cannot answer (502).
    let up = H2WsEcho::start(false);
    let gw = Gateway::start(&h2c_upstream_config(&up.url()));
    rt().block_on(async {
        let send = h2_connect(gw.addr, None).await;
        let (parts, io) = extended_connect(&send, &gw.addr.to_string(), "/ws", &[]).await;
        assert_eq!(parts.status, 502);
        assert!(io.is_none());
    });
    assert!(up.seen.lock().unwrap().is_empty(), "no request on a stream");
}

#[test]
fn a_graceful_shutdown_closes_a_socket_to_an_http2_upstream_with_1001_both_ways() {
    let up = H2WsEcho::start(true);
    let cfg = shutdown_config(&up.url(), r#","protocol":"h2c""#);
    let mut gw = GatewayProcess::start(&cfg);
    let a = gw.addr.to_string();
    rt().block_on(async {
        let send = h2_connect(gw.addr, None).await;
        let mut ws = websocket(&send, &a, "/ws").await;
        ws.send(Message::text("before")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("before"));
        gw.signal("TERM");
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("expected a close frame 1001, got {other:?}"),
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the gateway exits");
        std::thread::sleep(Duration::from_millis(20));
    }
    let closes = up.closes.clone();
    assert!(
        wait_until(Duration::from_secs(5), || !closes
            .lock()
            .unwrap()
            .is_empty()),
        "the upstream got no close frame"
    );
    assert_eq!(*up.closes.lock().unwrap(), vec![1001]);
}
