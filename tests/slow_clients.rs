//! Slow and idle clients (issue 8): slowloris connections do not delay normal clients and are
//! closed by the header timeout; idle keep-alive connections are closed after `keep_alive`;
//! connections over `max_connections` wait (backpressure) instead of being refused.

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::*;

const ROUTES: &str = r#"[{"path":"/{*rest}","upstream":"u"}]"#;

/// Whether the gateway closes `s` within `limit` (EOF, reset, or an error response then EOF).
fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_starve_normal_clients() {
    let up = Upstream::start_ok();
    let cfg = config(&up.url(), ROUTES, "").replace(
        r#""workers":1"#,
        r#""workers":1,"client_header_timeout":"2s""#,
    );
    let gw = Gateway::start(&cfg);
    // 200 connections that send half a request head and stop.
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let c = client();
    for i in 0..20 {
        let res = c.get(gw.url(&format!("/normal/{i}"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(up.count(), 20, "no slow request reached the upstream");
    // server.client_header_timeout (2 s here) answers 408 and closes the slow connections.
    let first = slow.first_mut().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = [0u8; 64];
    let n = first.read(&mut head).unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    assert!(
        closed_within(first, Duration::from_secs(5)),
        "a slowloris connection was kept open"
    );
    for s in slow.iter_mut().skip(1) {
        assert!(
            closed_within(s, Duration::from_secs(2)),
            "a slowloris connection was kept open"
        );
    }
}

const TOKEN: &str = "slow-clients-token-0123456789";

/// A gateway in front of `up` with these `server` settings and the admin token `TOKEN`.
fn gateway_with(up: &Upstream, server: &str) -> Gateway {
    let cfg = config(
        &up.url(),
        ROUTES,
        &format!(r#""admin":{{"token":"{TOKEN}"}}"#),
    )
    .replace(r#""workers":1"#, &format!(r#""workers":1,{server}"#));
    Gateway::start(&cfg)
}

/// `kairos_http_protocol_errors_total{status="408"}` as the gateway reports it.
fn head_timeouts(gw: &Gateway) -> Option<f64> {
    let m = block_on(scrape_metrics(gw, TOKEN));
    metric(
        &m,
        "kairos_http_protocol_errors_total",
        &[("status", "408")],
    )
}

/// Reads one response (head and `Content-Length` body) from a keep-alive connection.
fn read_response(s: &mut std::net::TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The header timeout covers every request on a keep-alive connection, not only the first
/// (actix-http alone times only the first; vendor/README.md): a client that starts a later
/// request and stalls gets 408 with the JSON error and is disconnected. Idle time between
/// requests is the keep-alive timeout's business and does not count.
#[test]
fn a_stalled_later_request_head_times_out() {
    let up = Upstream::start_ok();
    let gw = gateway_with(&up, r#""client_header_timeout":"1s","keep_alive":"30s""#);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    // Idle for longer than the header timeout, with a stray CRLF (which RFC 9112 says to
    // ignore): still a good keep-alive connection.
    s.write_all(b"\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    // A third request's head starts and stalls.
    let started = std::time::Instant::now();
    s.write_all(b"GET /three HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let res = read_response(&mut s);
    let waited = started.elapsed();
    assert!(res.starts_with("HTTP/1.1 408"), "{res}");
    assert!(res.contains(r#""code":"request_timeout""#), "{res}");
    assert!(res.to_ascii_lowercase().contains("x-request-id: "), "{res}");
    assert!(
        res.to_ascii_lowercase().contains("connection: close"),
        "the 408 must announce the close: {res}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "408 after {waited:?}"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(3)),
        "the stalled connection was kept open"
    );
    assert_eq!(up.count(), 2, "the stalled request reached the upstream");
    assert_eq!(head_timeouts(&gw), Some(1.0));
}

/// A connection that never sends a byte (a preconnect, a TCP health check) is closed after the
/// header timeout without an answer, and is not counted as a failed request.
#[test]
fn a_connection_that_sends_nothing_is_closed_silently() {
    let up = Upstream::start_ok();
    let gw = gateway_with(&up, r#""client_header_timeout":"500ms""#);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let closed = match s.read_to_end(&mut buf) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the silent connection was kept open");
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    assert_eq!(head_timeouts(&gw), Some(0.0));
}

/// Pipelined requests: the part of a next head that arrived with the previous request is timed
/// too, from the moment nothing else is in flight.
#[test]
fn a_stalled_pipelined_head_times_out() {
    let up = Upstream::start_ok();
    let gw = gateway_with(&up, r#""client_header_timeout":"1s","keep_alive":"30s""#);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    let res = read_response(&mut s);
    assert!(res.starts_with("HTTP/1.1 408"), "{res}");
    assert!(
        closed_within(&mut s, Duration::from_secs(3)),
        "the stalled connection was kept open"
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let up = Upstream::start_ok();
    let cfg = config(&up.url(), ROUTES, "")
        .replace(r#""workers":1"#, r#""workers":1,"keep_alive":"300ms""#);
    let gw = Gateway::start(&cfg);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "idle connection kept past keep_alive"
    );
}

/// The keep-alive timeout counts from the last response, not from the first: a connection
/// whose requests come less than `keep_alive` apart is kept for longer than `keep_alive` in all
/// (the timer armed after the first response is moved when it fires, vendor/README.md item
/// 11), and closed once it is idle for `keep_alive`.
#[test]
fn keep_alive_counts_from_the_last_response() {
    let up = Upstream::start_ok();
    let cfg =
        config(&up.url(), ROUTES, "").replace(r#""workers":1"#, r#""workers":1,"keep_alive":"1s""#);
    let gw = Gateway::start(&cfg);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    let started = std::time::Instant::now();
    for i in 0..4 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(600));
        }
        s.write_all(format!("GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let res = read_response(&mut s);
        assert!(res.starts_with("HTTP/1.1 200"), "request {i}: {res:?}");
    }
    assert!(started.elapsed() > Duration::from_millis(1800));
    assert_eq!(up.count(), 4);
    let idle = std::time::Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "idle connection kept past keep_alive"
    );
    assert!(
        idle.elapsed() >= Duration::from_millis(400),
        "closed {:?} after the last response, before keep_alive",
        idle.elapsed()
    );
}

#[test]
fn connections_over_the_cap_wait_instead_of_failing() {
    let up = Upstream::start_ok();
    let cfg = config(&up.url(), ROUTES, "")
        .replace(r#""workers":1"#, r#""workers":1,"max_connections":2"#);
    let gw = Gateway::start(&cfg);
    let get = |s: &mut std::net::TcpStream, path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
    };
    let read_status = |s: &mut std::net::TcpStream, wait: Duration| -> Option<String> {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => Some(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()?
                    .to_string(),
            ),
            _ => None,
        }
    };
    // Two keep-alive connections take the whole cap.
    let mut held: Vec<std::net::TcpStream> = (0..2)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
            get(&mut s, &format!("/held/{i}"));
            assert_eq!(
                read_status(&mut s, Duration::from_secs(5)).as_deref(),
                Some("HTTP/1.1 200 OK")
            );
            s
        })
        .collect();
    // A third is accepted by the kernel, not by the gateway: its request waits.
    let mut waiting = std::net::TcpStream::connect(gw.addr).unwrap();
    get(&mut waiting, "/waiting");
    assert_eq!(read_status(&mut waiting, Duration::from_millis(700)), None);
    assert_eq!(
        up.count(),
        2,
        "the request over the cap reached the upstream"
    );
    // The held connections still work.
    get(&mut held[0], "/held/again");
    assert_eq!(
        read_status(&mut held[0], Duration::from_secs(5)).as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    // One closes: the waiting connection is accepted and answered, not refused.
    held.pop();
    assert_eq!(
        read_status(&mut waiting, Duration::from_secs(5)).as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(up.last().target, "/waiting");
}
