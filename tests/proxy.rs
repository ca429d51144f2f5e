//! The request path end to end: a real client, the gateway, and a real upstream on loopback
//! that records what it received.

mod support;

use std::time::Duration;
use support::*;

const ROUTES: &str = r#"[
  {"name":"get-user","path":"/api/users/{id}","methods":["GET"],"upstream":"u","rewrite":"/users/{id}"},
  {"name":"update-user","path":"/api/users/{id}","methods":["PUT","PATCH","DELETE"],"upstream":"u","rewrite":"/users/{id}"},
  {"name":"files","path":"/files/{*rest}","upstream":"u","rewrite":"/storage/{rest}"},
  {"name":"any","path":"/any/{*rest}","upstream":"u"}
]"#;

#[tokio::test]
async fn every_method_reaches_the_upstream_with_its_body() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let c = client();
    for m in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let res = c
            .request(method, gw.url("/any/thing"))
            .body(format!("body of {m}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{m}");
        assert_eq!(res.text().await.unwrap(), "ok");
        let seen = up.last();
        assert_eq!(seen.method, m);
        assert_eq!(seen.target, "/any/thing");
        assert_eq!(String::from_utf8_lossy(&seen.body), format!("body of {m}"));
    }
}

#[tokio::test]
async fn params_rewrite_and_query_string() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let c = client();
    let res = c
        .get(gw.url("/api/users/42?expand=team&x=a%20b"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().target, "/users/42?expand=team&x=a%20b");

    c.delete(gw.url("/api/users/7")).send().await.unwrap();
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("DELETE", "/users/7")
    );

    c.get(gw.url("/files/a/b/c.txt?v=1")).send().await.unwrap();
    assert_eq!(up.last().target, "/storage/a/b/c.txt?v=1");

    // Without a rewrite the path goes upstream unchanged.
    c.get(gw.url("/any/x/y?z=1")).send().await.unwrap();
    assert_eq!(up.last().target, "/any/x/y?z=1");
}

#[tokio::test]
async fn head_is_allowed_where_get_is_and_keeps_the_length() {
    let up = Upstream::start(|_| Reply::ok("hello world"));
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let res = client().head(gw.url("/api/users/1")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], "11");
    assert_eq!(up.last().method, "HEAD");
    assert!(res.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn errors_404_405_carry_json_and_request_id() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let c = client();

    let res = c.get(gw.url("/nothing/here")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "route_not_found");
    assert_eq!(body["error"]["request_id"], rid);

    let res = c.post(gw.url("/api/users/1")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD, PUT, DELETE, PATCH");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert_eq!(up.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn request_id_is_kept_when_sane_and_replaced_otherwise() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let c = client();
    let res = c
        .get(gw.url("/any/1"))
        .header("x-request-id", "client-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "client-abc.123");
    assert_eq!(up.last().header_all("x-request-id"), vec!["client-abc.123"]);

    let res = c
        .get(gw.url("/any/1"))
        .header("x-request-id", "bad id; rm -rf")
        .send()
        .await
        .unwrap();
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 32);
    assert!(rid.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(up.last().header("x-request-id"), Some(rid.as_str()));

    let res = c.get(gw.url("/any/2")).send().await.unwrap();
    let generated = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(generated, rid);
    assert_eq!(up.last().header("x-request-id"), Some(generated.as_str()));
}

#[tokio::test]
async fn repeated_response_headers_stay_repeated_and_nothing_is_invented() {
    let up = Upstream::start(|_| {
        Reply::ok("{}")
            .header("set-cookie", "a=1; Path=/")
            .header("set-cookie", "b=2; Path=/")
            .header("x-up", "yes")
    });
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let res = client().get(gw.url("/any/c")).send().await.unwrap();
    let cookies: Vec<_> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(cookies, vec!["a=1; Path=/", "b=2; Path=/"]);
    assert_eq!(res.headers()["x-up"], "yes");
    assert_eq!(res.headers()["content-length"], "2");
    assert!(
        res.headers().get("content-type").is_none(),
        "no content-type invented"
    );
    assert!(res.headers().get("transfer-encoding").is_none());
}

#[test]
fn sized_response_keeps_content_length_and_chunked_stays_chunked() {
    let up = Upstream::start(|r| Reply {
        status: 200,
        headers: vec![],
        body: ReplyBody::Zeros {
            n: 300_000,
            sized: r.target.contains("sized"),
        },
        delay: Duration::ZERO,
        later: None,
    });
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let sized = raw_get(gw.addr, "/any/sized", "x");
    let head = sized.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("content-length: 300000"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-type"), "{head}");
    let chunked = raw_get(gw.addr, "/any/stream", "x");
    let head = chunked
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
}

#[test]
fn hop_by_hop_request_headers_are_removed() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let req = b"GET /any/hop HTTP/1.1\r\nHost: client.example\r\nConnection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nUpgrade: websocket\r\nX-End-To-End: kept\r\nAccept: */*\r\n\r\n";
    let res = raw_exchange(gw.addr, req, Duration::from_millis(1500));
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let seen = up.last();
    for h in [
        "connection",
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            seen.header(h).is_none(),
            "{h} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.header("accept"), Some("*/*"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let up = Upstream::start(|_| {
        Reply::ok("ok")
            .header("connection", "x-up-hop")
            .header("x-up-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("trailer", "x-checksum")
            .header("x-kept", "1")
    });
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let res = client().get(gw.url("/any/x")).send().await.unwrap();
    for h in ["x-up-hop", "keep-alive", "proxy-authenticate", "trailer"] {
        assert!(res.headers().get(h).is_none(), "{h} reached the client");
    }
    assert_eq!(res.headers()["x-kept"], "1");
}

#[tokio::test]
async fn forwarded_headers_replace_untrusted_and_extend_trusted() {
    let up = Upstream::start_ok();
    let c = client();
    let send = |gw: &Gateway| {
        c.get(gw.url("/any/x"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "public.example")
            .send()
    };

    let untrusted = Gateway::start(&config(&up.url(), ROUTES, ""));
    send(&untrusted).await.unwrap();
    let seen = up.last();
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(untrusted.addr.to_string().as_str())
    );

    let trusted = Gateway::start(&config(&up.url(), ROUTES, "").replace(
        r#""workers":1"#,
        r#""workers":1,"trusted_proxies":["127.0.0.0/8"]"#,
    ));
    send(&trusted).await.unwrap();
    let seen = up.last();
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("public.example"));
}

#[tokio::test]
async fn host_is_the_upstreams_unless_preserved() {
    let up = Upstream::start_ok();
    let routes =
        r#"[{"path":"/a","upstream":"u"},{"path":"/b","upstream":"u","preserve_host":true}]"#;
    let gw = Gateway::start(&config(&up.url(), routes, ""));
    let c = client();
    c.get(gw.url("/a"))
        .header("host", "client.example")
        .send()
        .await
        .unwrap();
    assert_eq!(up.last().header_all("host"), vec![up.addr.to_string()]);
    c.get(gw.url("/b"))
        .header("host", "client.example")
        .send()
        .await
        .unwrap();
    assert_eq!(up.last().header_all("host"), vec!["client.example"]);
}

#[tokio::test]
async fn routes_can_match_on_host() {
    let a = Upstream::start(|_| Reply::ok("a"));
    let b = Upstream::start(|_| Reply::ok("b"));
    let cfg = format!(
        r#"{{"server":{{"workers":1}},"upstreams":{{"a":{{"servers":[{{"url":"{}"}}]}},"b":{{"servers":[{{"url":"{}"}}]}}}},
        "routes":[{{"path":"/x","host":"API.example.com","upstream":"a"}},{{"path":"/x","upstream":"b"}}],"logging":{{"access_log":false}}}}"#,
        a.url(),
        b.url()
    );
    let gw = Gateway::start(&cfg);
    let c = client();
    let get = |host: &'static str| c.get(gw.url("/x")).header("host", host).send();
    assert_eq!(
        get("api.example.com").await.unwrap().text().await.unwrap(),
        "a"
    );
    assert_eq!(
        get("api.example.com:8080")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "a"
    );
    assert_eq!(
        get("other.example.com")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "b"
    );
}

#[tokio::test]
async fn round_robin_and_weighted_round_robin_spread_requests() {
    let a = Upstream::start(|_| Reply::ok("a"));
    let b = Upstream::start(|_| Reply::ok("b"));
    let mk = |strategy: &str| {
        format!(
            r#"{{"server":{{"workers":1}},"upstreams":{{"u":{{"servers":[{{"url":"{}","weight":3}},{{"url":"{}","weight":1}}],"load_balancing":{{"strategy":"{strategy}"}}}}}},
            "routes":[{{"path":"/x","upstream":"u"}}],"logging":{{"access_log":false}}}}"#,
            a.url(),
            b.url()
        )
    };
    let c = client();
    for (strategy, want) in [("round_robin", "abab"), ("weighted_round_robin", "aaba")] {
        let gw = Gateway::start(&mk(strategy));
        let mut got = String::new();
        for _ in 0..8 {
            got.push_str(
                &c.get(gw.url("/x"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(got, want.repeat(2), "{strategy}");
    }
}

#[tokio::test]
async fn connect_failure_is_502_and_slow_upstream_is_504() {
    // A port that was free a moment ago: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(&config(&format!("http://{dead}"), ROUTES, ""));
    let res = client().get(gw.url("/any/x")).send().await.unwrap();
    assert_eq!(res.status(), 502);
    assert!(res.headers().contains_key("x-request-id"));
    let text = res.text().await.unwrap();
    assert!(text.contains("upstream_connect_failed"), "{text}");
    assert!(
        !text.contains(&dead.port().to_string()),
        "upstream address leaked: {text}"
    );

    let slow = Upstream::start(|_| Reply::ok("late").delay(Duration::from_secs(3)));
    let routes = r#"[{"path":"/slow","upstream":"u","timeout":"300ms"}]"#;
    let gw = Gateway::start(&config(&slow.url(), routes, ""));
    let res = client().get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(res.status(), 504);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[test]
fn upstream_garbage_is_502() {
    let up = RawUpstream::start(|_| (b"THIS IS NOT HTTP\r\n\r\n", Then::Close(Duration::ZERO)));
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let res = raw_get(gw.addr, "/any/x", "x");
    assert!(res.starts_with("HTTP/1.1 502"), "{res}");
    assert!(res.contains("upstream_protocol_error"), "{res}");
}

#[tokio::test]
async fn body_over_the_limit_is_413_by_length_and_while_streaming() {
    let up = Upstream::start_ok();
    let cfg = config(&up.url(), ROUTES, "")
        .replace(r#""workers":1"#, r#""workers":1,"max_body_size":"100KB""#);
    let gw = Gateway::start(&cfg);
    let c = client();

    // Declared too large: refused before anything is read or forwarded.
    let res = c
        .post(gw.url("/any/up"))
        .body(vec![b'x'; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(up.count(), 0);

    // Chunked, no length: caught while streaming, the upstream never gets the whole body.
    let chunks = futures_util::stream::iter(
        (0..50).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 8 * 1024]))),
    );
    let res = c
        .post(gw.url("/any/up"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert!(up.requests().iter().all(|r| r.body_len < 400 * 1024));

    // Just under the limit passes.
    let res = c
        .post(gw.url("/any/up"))
        .body(vec![b'z'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().body_len, 100 * 1024);
}

#[tokio::test]
async fn chunked_request_body_is_streamed_through() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let chunks = futures_util::stream::iter(
        (0..40).map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![i as u8; 10_000]))),
    );
    let res = client()
        .put(gw.url("/any/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.last();
    assert_eq!(seen.body_len, 400_000);
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(&seen.body[..10_000], &vec![0u8; 10_000][..]);
    assert_eq!(seen.body[399_999], 39);
}

#[tokio::test]
async fn status_codes_and_empty_bodies_pass_through() {
    let up = Upstream::start(|r| {
        let code: u16 = r.target.trim_start_matches("/any/").parse().unwrap_or(200);
        Reply {
            status: code,
            headers: vec![],
            body: ReplyBody::Bytes(vec![]),
            delay: Duration::ZERO,
            later: None,
        }
    });
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let c = client();
    for code in [201u16, 204, 301, 304, 404, 418, 500, 503] {
        let res = c.get(gw.url(&format!("/any/{code}"))).send().await.unwrap();
        assert_eq!(
            res.status().as_u16(),
            code,
            "redirects are not followed and statuses pass through"
        );
    }
}

#[tokio::test]
async fn kairos_scope_health_ready_and_token_guard() {
    let up = Upstream::start_ok();
    let token = "0123456789abcdef0123456789abcdef";
    let gw = Gateway::start(&config(
        &up.url(),
        ROUTES,
        &format!(r#""admin":{{"token":"{token}"}}"#),
    ));
    let c = client();
    assert_eq!(
        c.get(gw.url("/_kairos/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = c.get(gw.url("/_kairos/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let res = c.get(gw.url("/_kairos/anything")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("www-authenticate"));
    let res = c
        .get(gw.url("/_kairos/anything"))
        .bearer_auth("wrong-token-wrong-token-wrong-tok")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = c
        .get(gw.url("/_kairos/anything"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let c = client();
    for i in 0..30 {
        let res = c.get(gw.url(&format!("/any/{i}"))).send().await.unwrap();
        assert_eq!(res.text().await.unwrap(), "ok");
    }
    let peers: std::collections::HashSet<_> = up.requests().iter().map(|r| r.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "sequential requests through one worker share one upstream connection"
    );
}

#[test]
fn upstream_closing_idle_connections_causes_no_errors() {
    // Answers one request per connection with keep-alive framing, then hangs up, as an
    // upstream with a short keep-alive timeout does.
    let up = RawUpstream::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::Close(Duration::from_millis(5)),
        )
    });
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    for i in 0..20 {
        let res = raw_exchange(
            gw.addr,
            format!("GET /any/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        assert!(res.starts_with("HTTP/1.1 200"), "request {i}: {res}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.answered.load(std::sync::atomic::Ordering::SeqCst), 20);
}

#[test]
fn not_modified_with_content_length_keeps_the_connection_usable() {
    let up = RawUpstream::start(|_| {
        let reply: &[u8] =
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1234\r\netag: \"v1\"\r\n\r\n";
        (reply, Then::KeepServing(Duration::ZERO))
    });
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let two = b"GET /any/a HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\n\r\nGET /any/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let res = raw_exchange(gw.addr, two, Duration::from_secs(5));
    assert_eq!(res.matches("HTTP/1.1 304 Not Modified").count(), 2, "{res}");
    assert!(
        res.to_ascii_lowercase().contains("content-length: 1234"),
        "{res}"
    );
}

/// `path` gets 400 from the gateway.
fn assert_refused(gw: &Gateway, path: &str) {
    let res = raw_get(gw.addr, path, "x");
    assert!(res.starts_with("HTTP/1.1 400"), "{path}: {res}");
}

#[tokio::test]
async fn dot_segments_are_refused_not_forwarded() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    for path in [
        "/files/../admin",
        "/files/%2e%2E/admin",
        "/files/..%2Fadmin",
        "/files/a/./b",
        "/any/x/..%5cy",
        // A `;`-parameter on a dot segment: Tomcat-style upstreams strip it and resolve `..`.
        "/files/..;/admin",
        "/files/%2e%2e;/admin",
        "/files/..;x=1/admin",
        "/files/.;x/admin",
        "/files/..%3B/admin",
        "/files/a/..;",
    ] {
        assert_refused(&gw, path);
    }
    assert_eq!(up.count(), 0);
    // Dots inside a segment are fine.
    let res = client()
        .get(gw.url("/files/v1.2/..hidden/a.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().target, "/storage/v1.2/..hidden/a.txt");
    // So are parameters on other segments.
    let res = client()
        .get(gw.url("/files/a;v=1/..x;y/b.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().target, "/storage/a;v=1/..x;y/b.txt");
}

/// Paths are normalised before routing and the normalised path goes upstream: runs of slashes
/// merged, escaped unreserved characters decoded; encoded slashes and backslashes refused. So
/// `//files`, `/%66iles` or `/files%2F..` cannot miss the files route and reach another
/// route's upstream path.
#[tokio::test]
async fn paths_are_normalised_before_routing() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    for (path, upstream_target) in [
        ("//files//a.txt", "/storage/a.txt"),
        ("/files///dir//b.txt?x=1", "/storage/dir/b.txt?x=1"),
        ("//any//x", "/any/x"),
        ("/any//x?q=a//b", "/any/x?q=a//b"),
        ("///api//users//7", "/users/7"),
        ("/%66iles/%61.txt", "/storage/a.txt"),
        ("/any/a%20b%3f", "/any/a%20b%3F"),
        ("/%61ny/x%7e", "/any/x~"),
    ] {
        let res = raw_get(gw.addr, path, "x");
        assert!(res.starts_with("HTTP/1.1 200"), "{path}: {res}");
        assert_eq!(up.last().target, upstream_target, "{path}");
    }
    let forwarded = up.count();
    for path in [
        "/%2Ffiles/a",
        "/files%2fa",
        "/%5Cfiles/a",
        "/any/a\\b",
        "/any/a%zz",
        "/any/a%4",
    ] {
        assert_refused(&gw, path);
    }
    assert_eq!(up.count(), forwarded, "a refused path reached the upstream");
}

#[test]
fn odd_host_headers_do_not_break_host_routing() {
    let up = Upstream::start(|_| Reply::ok("host route"));
    let routes = r#"[{"path":"/h","host":"api.example.com","upstream":"u"}]"#;
    let gw = Gateway::start(&config(&up.url(), routes, ""));
    for host in [
        "[",
        "[::1",
        "api.example.com.",
        "user@api.example.com",
        "API.EXAMPLE.COM:80",
    ] {
        let res = raw_get(gw.addr, "/h", host);
        assert!(res.starts_with("HTTP/1.1 "), "{host}: no response");
        let routed = res.contains("host route");
        assert_eq!(routed, !host.starts_with('['), "{host}: {res}");
    }
}

#[tokio::test]
async fn untrusted_client_address_headers_are_dropped_and_cookies_joined() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let c = client_builder().http2_prior_knowledge().build().unwrap();
    c.get(gw.url("/any/x"))
        .header("forwarded", "for=203.0.113.9")
        .header("x-real-ip", "203.0.113.9")
        .header("x-forwarded-port", "443")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    let seen = up.last();
    for h in ["forwarded", "x-real-ip", "x-forwarded-port"] {
        assert!(
            seen.header(h).is_none(),
            "{h} passed through from an untrusted client"
        );
    }
    assert_eq!(seen.header_all("cookie"), vec!["a=1; b=2"]);
}

#[test]
fn get_with_a_chunked_body_keeps_its_body() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let req = b"GET /any/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let res = raw_exchange(gw.addr, req, Duration::from_secs(5));
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(up.last().body, b"hello");
}

#[test]
fn a_stalled_request_body_gets_408_and_a_moving_one_is_not_cut_off() {
    use std::io::{Read, Write};
    let up = Upstream::start(|r| Reply::ok(&r.body_len.to_string()));
    let routes = r#"[{"path":"/any/{*rest}","upstream":"u","timeout":"300ms"}]"#;
    let gw = Gateway::start(&config(&up.url(), routes, ""));

    // Declares 1000 bytes, sends 10, then stalls.
    let res = raw_exchange(
        gw.addr,
        b"POST /any/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789",
        Duration::from_secs(5),
    );
    assert!(res.starts_with("HTTP/1.1 408"), "{res}");
    assert!(res.contains("request_timeout"), "{res}");

    // A chunked upload taking three times the route timeout, always moving: accepted whole.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /any/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    for _ in 0..9 {
        s.write_all(b"a\r\n0123456789\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("90"), "{out}");
}

#[test]
fn an_upstream_that_stalls_mid_body_does_not_hang_the_client() {
    use std::io::{Read, Write};
    // Promises 100 bytes, sends 10, then goes quiet for longer than the route timeout.
    let up = RawUpstream::start(|_| {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
        (reply, Then::KeepServing(Duration::from_secs(10)))
    });
    let routes = r#"[{"path":"/any/{*rest}","upstream":"u","timeout":"300ms"}]"#;
    let gw = Gateway::start(&config(&up.url(), routes, ""));
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /any/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "the gateway kept the client waiting: {text}");
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("0123456789"),
        "{text}"
    );
}

#[tokio::test]
async fn long_uris_get_414_and_large_headers_431() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let c = client();
    let long = format!("/any/{}", "a".repeat(9 * 1024));
    let res = c.get(gw.url(&long)).send().await.unwrap();
    assert_eq!(res.status(), 414);
    assert!(res.headers().contains_key("x-request-id"));
    let res = c
        .get(gw.url("/any/x"))
        .header("x-big", "b".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 431);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "headers_too_large");
    assert_eq!(up.count(), 0);

    let roomy = config(&up.url(), ROUTES, "").replace(
        r#""workers":1"#,
        r#""workers":1,"max_uri_length":"16KB","max_header_size":"64KB""#,
    );
    let gw = Gateway::start(&roomy);
    assert_eq!(c.get(gw.url(&long)).send().await.unwrap().status(), 200);
    let res = c
        .get(gw.url("/any/x"))
        .header("x-big", "b".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Response heads up to `upstreams.*.max_response_header_size` (default 64 KB) pass: a
/// 40 KiB Set-Cookie reaches the client whole; a head over the limit is 502.
#[tokio::test]
async fn large_upstream_response_heads_pass_up_to_the_limit() {
    let up = Upstream::start(|r| {
        let kib = r
            .target
            .trim_start_matches("/any/")
            .parse::<usize>()
            .unwrap_or(1);
        Reply::ok("big head").header("set-cookie", &format!("s={}", "c".repeat(kib << 10)))
    });
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let c = client();
    let res = c.get(gw.url("/any/40")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"].len();
    assert_eq!(cookie, 2 + (40 << 10));
    assert_eq!(res.text().await.unwrap(), "big head");
    let res = c.get(gw.url("/any/100")).send().await.unwrap();
    assert_eq!(res.status(), 502);

    // A lower limit of its own.
    let cfg = format!(
        r#"{{"version":1,"server":{{"workers":1}},"upstreams":{{"u":{{"servers":[{{"url":"{}"}}],
            "max_response_header_size":"32KB"}}}},"routes":{ROUTES},"logging":{{"access_log":false}}}}"#,
        up.url()
    );
    let gw = Gateway::start(&cfg);
    assert_eq!(c.get(gw.url("/any/16")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(gw.url("/any/40")).send().await.unwrap().status(), 502);
}

/// An error answered before the request body was read closes the connection, with
/// `Connection: close` on the wire: the unread body must never be parsed as the next request
/// (nor drained first, for a chunked one).
#[test]
fn errors_before_the_body_is_read_close_the_connection() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&config(&up.url(), ROUTES, ""));
    let cases: [(&str, &[u8]); 3] = [
        // 413 from the declared length; the body (and a smuggled request) follow.
        (
            "413",
            b"POST /any/x HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\nGET /any/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        // 405 on a matched path, with a chunked body that has not ended.
        (
            "405",
            b"POST /api/users/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ),
        // 404 with a body of known length not yet sent.
        (
            "404",
            b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        ),
    ];
    for (status, req) in cases {
        let started = std::time::Instant::now();
        let res = raw_exchange(gw.addr, req, Duration::from_secs(4));
        assert!(res.starts_with(&format!("HTTP/1.1 {status}")), "{res}");
        assert!(
            res.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{res}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{status}: the connection stayed open: {res}"
        );
        assert_eq!(res.matches("HTTP/1.1").count(), 1, "{res}");
    }
    assert_eq!(up.count(), 0);
}

/// A raw HTTP/1.1 upstream on loopback: answers every request `ok` with a Content-Length and
/// never `Connection: close`; with `close_after_each`, closes each connection right after its
/// first response (as a server whose keep-alive timeout is very short does). Counts the
/// connections it accepted.
fn raw_upstream(
    close_after_each: bool,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    // Bodies of known length only (what the test sends).
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + len);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                        || close_after_each
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

/// The gateway's HTTP/1.1 client reuses an upstream connection while the server keeps it, and
/// never fails a request because the server closed an idle one: a connection the server
/// closed is seen as closed when it is taken from the pool (or, when the close races the
/// request, an idempotent request goes again on a new connection).
#[tokio::test]
async fn upstream_connections_are_reused_and_ones_the_server_closed_are_not_used() {
    use std::sync::atomic::Ordering;
    let routes = r#"[{"name":"any","path":"/any/{*rest}","upstream":"u"}]"#;
    let one_worker = |url: &str| {
        format!(
            r#"{{"version":1,"server":{{"workers":1}},"upstreams":{{"u":{{"servers":[{{"url":"{url}"}}]}}}},"routes":{routes},"logging":{{"access_log":false}}}}"#
        )
    };
    let c = client();

    let (url, accepted) = raw_upstream(false);
    let gw = Gateway::start(&one_worker(&url));
    for i in 0..20 {
        let res = c.get(gw.url(&format!("/any/{i}"))).send().await.unwrap();
        assert_eq!(
            (res.status().as_u16(), res.text().await.unwrap().as_str()),
            (200, "ok")
        );
    }
    let res = c
        .post(gw.url("/any/p"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection, kept alive"
    );

    let (url, accepted) = raw_upstream(true);
    let gw = Gateway::start(&one_worker(&url));
    for i in 0..20 {
        // Back to back, or after the close has certainly arrived.
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let res = c.get(gw.url(&format!("/any/{i}"))).send().await.unwrap();
        assert_eq!(res.status(), 200, "request {i}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let res = c
        .post(gw.url("/any/p"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "a POST after the server closed the idle connection"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 21);
}
