//! WebSockets through the gateway: a real tokio-tungstenite echo server behind it and a real
//! tokio-tungstenite client in front: messages of every kind and size, close codes, the edge
//! chain on the handshake, the idle timeout, metrics, a reload and a graceful shutdown while a
//! socket is open.

mod support;

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ws_url(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}")
}

async fn connect(addr: SocketAddr, path: &str) -> Client {
    let (ws, res) = tokio_tungstenite::connect_async(ws_url(addr, path))
        .await
        .expect("handshake through the gateway");
    assert_eq!(res.status(), 101);
    assert!(res.headers().contains_key("x-request-id"));
    ws
}

/// The handshake's refusal: the HTTP status the gateway (or upstream) answered.
async fn refused(req: tokio_tungstenite::tungstenite::handshake::client::Request) -> u16 {
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("the handshake was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("handshake failed otherwise: {e}"),
    }
}

/// The next data or close message (pings and pongs the library answers are skipped).
async fn next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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

fn ws_config(upstream: &str, route_extra: &str, extra: &str) -> String {
    config(
        upstream,
        &format!(r#"[{{"name":"ws","path":"/ws","upstream":"u"{route_extra}}}]"#),
        extra,
    )
}

#[test]
fn text_binary_ping_large_messages_and_close_codes_pass_both_ways() {
    let echo = WsEcho::start();
    let gw = Gateway::start(&ws_config(&echo.url(), "", ""));
    rt().block_on(async {
        let mut ws = connect(gw.addr, "/ws").await;
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
        // 16 MiB each way, in one message.
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
        // The client closes with its code: the upstream's echo of it comes back.
        let mut ws = connect(gw.addr, "/ws").await;
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
}

#[test]
fn the_handshake_reaches_the_upstream_with_its_websocket_headers_and_forwarding_headers() {
    let echo = WsEcho::start();
    let gw = Gateway::start(&ws_config(&echo.url(), "", ""));
    rt().block_on(async {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = ws_url(gw.addr, "/ws?room=7").into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "chat.v2, chat.v1".parse().unwrap(),
        );
        let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(res.headers()["sec-websocket-protocol"], "chat.v2");
        assert_eq!(
            res.headers()["upgrade"].to_str().unwrap().to_lowercase(),
            "websocket"
        );
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
        assert_eq!(get("upgrade"), "websocket");
        assert_eq!(get("connection").to_lowercase(), "upgrade");
        assert_eq!(get("sec-websocket-version"), "13");
        assert!(!get("sec-websocket-key").is_empty());
        assert_eq!(get("sec-websocket-protocol"), "chat.v2, chat.v1");
        assert_eq!(get("x-forwarded-for"), "127.0.0.1");
        assert!(!get("x-request-id").is_empty());
    });
    assert!(echo
        .headers
        .lock()
        .unwrap()
        .iter()
        .any(|(k, _)| k == "host"));
}

#[test]
fn a_refused_handshake_never_reaches_the_upstream() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
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
            "rate_limit":{{"per_ip":{{"rps":1,"burst":1}}}}}}
        ],
        "api_keys":{{"keys":{{"k":{{"key_hash":"{}"}}}}}},
        "logging":{{"access_log":false,"level":"error"}}}}"#,
        echo.url(),
        kairos_rs::base::hash::format_hash(&kairos_rs::base::hash::hash(key)),
    ));
    rt().block_on(async {
        // No key: 401, and the upstream never sees a connection.
        let req = ws_url(gw.addr, "/keyed").into_client_request().unwrap();
        assert_eq!(refused(req).await, 401);
        // An origin the route's CORS policy does not allow: 403 (cross-site WebSocket
        // hijacking), even though browsers never preflight a WebSocket.
        let mut req = ws_url(gw.addr, "/browser").into_client_request().unwrap();
        req.headers_mut()
            .insert("origin", "https://evil.example".parse().unwrap());
        assert_eq!(refused(req).await, 403);
        // Over the rate limit: 429.
        let _first = connect(gw.addr, "/limited").await;
        let req = ws_url(gw.addr, "/limited").into_client_request().unwrap();
        assert_eq!(refused(req).await, 429);
        assert_eq!(
            echo.accepted.load(Ordering::SeqCst),
            1,
            "only the admitted one"
        );
        // Admitted: the right key, the allowed origin.
        let mut req = ws_url(gw.addr, "/keyed").into_client_request().unwrap();
        req.headers_mut().insert("x-api-key", key.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::text("k")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("k"));
        let mut req = ws_url(gw.addr, "/browser").into_client_request().unwrap();
        req.headers_mut()
            .insert("origin", "https://app.example".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::text("o")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("o"));
    });
}

#[test]
fn an_upstream_that_refuses_the_upgrade_is_answered_as_is_and_websocket_false_sends_a_plain_get() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let plain = Upstream::start(|_| Reply::ok("not a websocket server").status(426));
    let gw = Gateway::start(&config(
        &plain.url(),
        r#"[{"name":"ws","path":"/ws","upstream":"u"},
            {"name":"off","path":"/off","upstream":"u","websocket":false}]"#,
        "",
    ));
    rt().block_on(async {
        let req = ws_url(gw.addr, "/ws").into_client_request().unwrap();
        assert_eq!(refused(req).await, 426);
        assert_eq!(plain.last().header("upgrade"), Some("websocket"));
        let req = ws_url(gw.addr, "/off").into_client_request().unwrap();
        assert_eq!(refused(req).await, 426);
        assert_eq!(plain.last().header("upgrade"), None, "websocket: false");
    });
}

#[test]
fn an_idle_socket_is_closed_and_metrics_count_sockets_and_bytes() {
    let echo = WsEcho::start();
    let gw = Gateway::start(&ws_config(
        &echo.url(),
        r#","websocket_idle_timeout":"1s""#,
        r#""admin":{"token":"t0k3n-for-the-websocket-tests"}"#,
    ));
    rt().block_on(async {
        let mut ws = connect(gw.addr, "/ws").await;
        ws.send(Message::text("12345")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("12345"));
        let m = scrape_metrics(&gw, "t0k3n-for-the-websocket-tests").await;
        assert_eq!(metric(&m, "kairos_websockets_open", &[]), Some(1.0));
        assert_eq!(metric(&m, "kairos_websockets_total", &[]), Some(1.0));
        // A client frame of 5 bytes has a 6-byte header (masked), the server's a 2-byte one.
        assert_eq!(
            metric(
                &m,
                "kairos_websocket_bytes_total",
                &[("direction", "client_to_upstream")]
            ),
            Some(11.0)
        );
        assert_eq!(
            metric(
                &m,
                "kairos_websocket_bytes_total",
                &[("direction", "upstream_to_client")]
            ),
            Some(7.0)
        );
        // Nothing either way for the idle timeout: the gateway closes the connection.
        let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed within 5 s");
        assert!(
            !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
            "{end:?}"
        );
        let mut open = None;
        for _ in 0..100 {
            let m = scrape_metrics(&gw, "t0k3n-for-the-websocket-tests").await;
            open = metric(&m, "kairos_websockets_open", &[]);
            if open == Some(0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(open, Some(0.0), "the open gauge goes back to 0");
    });
}

#[test]
fn a_reload_keeps_open_sockets_and_a_graceful_shutdown_closes_them_with_1001() {
    let echo = WsEcho::start();
    let cfg = |extra_route: &str| {
        format!(
            r#"{{"version":1,"server":{{"workers":1,"shutdown_timeout":"3s"}},
            "upstreams":{{"u":{{"servers":[{{"url":"{}"}}]}}}},
            "routes":[{{"name":"ws","path":"/ws","upstream":"u"}}{extra_route}],
            "logging":{{"access_log":false}}}}"#,
            echo.url()
        )
    };
    let mut gw = GatewayProcess::start(&cfg(""));
    rt().block_on(async {
        let mut ws = connect(gw.addr, "/ws").await;
        ws.send(Message::text("before")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("before"));
        // A reload that changes the routes (and the route of this socket's runtime goes).
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
        let started = std::time::Instant::now();
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("expected a close frame 1001, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
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

#[test]
fn wss_from_the_client_to_a_wss_upstream() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (dir, pem, server_tls) = self_signed_tls(&["localhost"], &[]);
    let echo = WsEcho::start_tls(server_tls);
    let gw = Gateway::start_in(
        &format!(
            r#"{{"server":{{"workers":1,"tls":{{"cert":"server.pem","key":"server.key"}}}},
            "upstreams":{{"u":{{"servers":[{{"url":"{}"}}],"tls":{{"ca_file":"server.pem"}}}}}},
            "routes":[{{"name":"ws","path":"/ws","upstream":"u"}}],
            "logging":{{"access_log":false}}}}"#,
            echo.url()
        ),
        dir.path(),
    );
    rt().block_on(async {
        // The client trusts the same self-signed certificate and speaks HTTP/1.1 (ALPN).
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
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let req = format!("wss://localhost:{}/ws", gw.addr.port())
            .into_client_request()
            .unwrap();
        let (mut ws, res) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        assert_eq!(res.status(), 101);
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
