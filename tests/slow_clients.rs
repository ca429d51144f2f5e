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
