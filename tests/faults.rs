//! Upstream faults (issue 8): a broken upstream gives the client a clean error or a cleanly cut
//! response, never a hang, and never poisons the connection pool.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::*;

const ROUTES: &str = r#"[{"path":"/{*rest}","upstream":"u","timeout":"2s"}]"#;

/// A raw upstream sending `bytes` on the n-th connection, then resetting or closing.
fn scripted_upstream(
    script: impl Fn(usize) -> (&'static [u8], bool) + Send + 'static,
) -> std::net::SocketAddr {
    RawUpstream::start(move |n| {
        let (bytes, reset) = script(n);
        (
            bytes,
            if reset {
                Then::Reset
            } else {
                Then::Close(Duration::from_millis(100))
            },
        )
    })
    .addr
}

/// Reads a response until EOF (or 5 s); returns (bytes, closed by the peer).
fn read_all(addr: std::net::SocketAddr, req: &[u8]) -> (Vec<u8>, bool) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

#[test]
fn upstream_sending_less_than_its_content_length_cuts_the_response_cleanly() {
    let addr = scripted_upstream(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-part",
            false,
        )
    });
    let gw = Gateway::start(&config(&format!("http://{addr}"), ROUTES, ""));
    let (out, closed) = read_all(gw.addr, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "client left hanging: {text}");
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("content-length: 100"),
        "{text}"
    );
    assert!(
        text.ends_with("only-part"),
        "the client must see a short body, not a padded one: {text}"
    );
}

#[test]
fn upstream_reset_mid_response_cuts_the_response_cleanly() {
    let addr = scripted_upstream(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst-bytes",
            true,
        )
    });
    let gw = Gateway::start(&config(&format!("http://{addr}"), ROUTES, ""));
    let (out, closed) = read_all(gw.addr, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        closed,
        "client left hanging: {}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn upstream_reset_before_answering_is_502() {
    let addr = scripted_upstream(|_| (b"", true));
    let gw = Gateway::start(&config(&format!("http://{addr}"), ROUTES, ""));
    let res = raw_get(gw.addr, "/a", "x");
    assert!(res.starts_with("HTTP/1.1 502"), "{res}");
}

#[test]
fn upstream_sending_more_than_its_content_length_does_not_poison_the_pool() {
    let addr = scripted_upstream(|n| {
        if n == 0 {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokGARBAGE-THAT-IS-NOT-HTTP\r\n\r\n",
                false,
            )
        } else {
            (b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond", false)
        }
    });
    let gw = Gateway::start(&config(&format!("http://{addr}"), ROUTES, ""));
    let first = raw_get(gw.addr, "/a", "x");
    assert!(
        first.starts_with("HTTP/1.1 200") && first.ends_with("\r\n\r\nok"),
        "{first}"
    );
    std::thread::sleep(Duration::from_millis(50));
    let second = raw_get(gw.addr, "/b", "x");
    assert!(
        second.starts_with("HTTP/1.1 200") && second.ends_with("second"),
        "{second}"
    );
}

#[test]
fn an_upstream_name_that_does_not_resolve_is_a_prompt_gateway_error() {
    let cfg = config("http://kairos-test-upstream.invalid:8080", ROUTES, "")
        .replace(r#""servers""#, r#""connect_timeout":"1s","servers""#);
    let gw = Gateway::start(&cfg);
    let start = Instant::now();
    let res = raw_get(gw.addr, "/a", "x");
    // 502 when the resolver answers NXDOMAIN, 504 when it cannot be reached within the
    // connect timeout; either way a JSON error, well before the client's own timeout.
    assert!(
        res.starts_with("HTTP/1.1 502") || res.starts_with("HTTP/1.1 504"),
        "{res}"
    );
    assert!(res.contains("\"request_id\""), "{res}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
}
