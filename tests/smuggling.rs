//! Request smuggling (issue 8, first part): ambiguous or malformed framing is refused with 400
//! and the connection closed, and nothing of it reaches the upstream. Exact bytes over raw
//! sockets.

mod support;

use std::time::Duration;
use support::*;

const ROUTES: &str = r#"[{"path":"/{*rest}","upstream":"u"}]"#;
const TOKEN: &str = "smuggling-test-token-0123456789";

fn gateway(up: &Upstream) -> Gateway {
    Gateway::start(&config(
        &up.url(),
        ROUTES,
        &format!(r#""admin":{{"token":"{TOKEN}"}}"#),
    ))
}

/// A refusal actix-http's parser sends itself is still the gateway's error: JSON body with
/// the code and a request id, which the `X-Request-Id` header repeats.
fn assert_gateway_error(res: &str, code: &str) {
    let (head, body) = res.split_once("\r\n\r\n").expect("a response head");
    let head = head.to_ascii_lowercase();
    let rid = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no X-Request-Id:\n{res}"));
    assert!(head.contains("content-type: application/json"), "{res}");
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {res}"));
    assert_eq!(json["error"]["code"], code, "{res}");
    assert_eq!(json["error"]["request_id"], rid, "{res}");
}

fn refused(gw: &Gateway, up: &Upstream, raw: &str) {
    let before = up.count();
    let res = raw_exchange(gw.addr, raw.as_bytes(), Duration::from_secs(3));
    assert!(
        res.starts_with("HTTP/1.1 400"),
        "not refused with 400:\n{raw:?}\n---\n{res}"
    );
    // Exactly one response, then the connection is closed (raw_exchange read to EOF).
    assert_eq!(res.matches("HTTP/1.1 ").count(), 1, "{raw:?}\n---\n{res}");
    assert_gateway_error(&res, "bad_request");
    assert_eq!(
        up.count(),
        before,
        "something reached the upstream for {raw:?}: {:?}",
        up.requests().last()
    );
}

#[test]
fn ambiguous_or_malformed_framing_is_refused() {
    let up = Upstream::start_ok();
    let gw = gateway(&up);
    let smuggled = "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        // CL.TE / TE.CL
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n{smuggled}0\r\n\r\n"),
        // Conflicting or invalid Content-Length
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5a\r\n\r\nhello{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{smuggled}"),
        // Transfer-Encoding whose last coding is not chunked, or is malformed
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        // Whitespace before the colon
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello{smuggled}"),
        // obs-fold (a header continued on the next line)
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello{smuggled}"),
        format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n{smuggled}"),
        // A chunked coding with trailing whitespace or tab
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\nContent-Length: 5\r\n\r\nhello{smuggled}"),
        // Bare CR inside a header line
        format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n{smuggled}"),
    ];
    for raw in &cases {
        refused(&gw, &up, raw);
    }
    let m = block_on(scrape_metrics(&gw, TOKEN));
    let refused = |status| {
        metric(
            &m,
            "kairos_http_protocol_errors_total",
            &[("status", status)],
        )
    };
    assert_eq!(refused("400"), Some(cases.len() as f64), "{m}");
    assert_eq!(refused("431"), Some(0.0));
    assert_eq!(
        metric(
            &m,
            "kairos_requests_total",
            &[
                ("route", "unmatched"),
                ("method", "OTHER"),
                ("status", "400")
            ]
        ),
        Some(cases.len() as f64)
    );
}

/// Heads the parser cannot hold (more than its 96 header fields, or more bytes than its
/// buffer) get 431 with the gateway's JSON error, and the connection is closed.
#[test]
fn oversized_heads_get_431_with_the_json_error() {
    let up = Upstream::start_ok();
    let gw = gateway(&up);
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge = format!("X-Big: {}\r\n", "a".repeat(200 * 1024));
    for extra in [many, huge] {
        let raw = format!("GET /a HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        let res = raw_exchange(gw.addr, raw.as_bytes(), Duration::from_secs(5));
        assert!(
            res.starts_with("HTTP/1.1 431"),
            "{}",
            &res[..res.len().min(300)]
        );
        assert_eq!(res.matches("HTTP/1.1 ").count(), 1, "{res}");
        assert_gateway_error(&res, "headers_too_large");
    }
    assert_eq!(up.count(), 0);
    let m = block_on(scrape_metrics(&gw, TOKEN));
    assert_eq!(
        metric(
            &m,
            "kairos_http_protocol_errors_total",
            &[("status", "431")]
        ),
        Some(2.0),
        "{m}"
    );
}

#[test]
fn an_upstream_response_with_bad_framing_is_502_and_not_reused() {
    // First response has both Content-Length and Transfer-Encoding; a well-formed one follows.
    let up = RawUpstream::start(|n| {
        let reply: &[u8] = if n == 0 {
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        (reply, Then::Close(Duration::from_millis(200)))
    });
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let first = raw_get(gw.addr, "/a", "x");
    assert!(first.starts_with("HTTP/1.1 502"), "{first}");
    let second = raw_get(gw.addr, "/b", "x");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the broken connection was reused"
    );
}
