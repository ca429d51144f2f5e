//! /_kairos/metrics: access, counter values after known traffic (parsed from the exposition),
//! the official linter (`promtool check metrics`), bounded cardinality and the gauges.

mod support;

use std::time::Duration;
use support::*;

const TOKEN: &str = "metrics-test-token-0123456789";

async fn scrape(gw: &Gateway) -> String {
    let res = client()
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    res.text().await.unwrap()
}

fn config_with(up: &str, failing: &str, routes: &str, admin: &str) -> String {
    format!(
        r#"{{"version":1,"server":{{"workers":1,"request_timeout":"2s"}},
        "admin":{admin},
        "upstreams":{{"users":{{"servers":[{{"url":"{up}"}}]}},
                     "failing":{{"servers":[{{"url":"{failing}"}}]}},
                     "dead":{{"servers":[{{"url":"http://127.0.0.1:9"}}],"connect_timeout":"1s"}}}},
        "routes":{routes},"logging":{{"access_log":false,"level":"error"}}}}"#
    )
}

/// A gateway with the admin token, the three upstreams and ROUTES.
fn gateway(up: &str, failing: &str) -> Gateway {
    Gateway::start(&config_with(
        up,
        failing,
        ROUTES,
        &format!(r#"{{"token":"{TOKEN}"}}"#),
    ))
}

const ROUTES: &str = r#"[
  {"name":"get-user","path":"/users/{id}","methods":["GET","POST"],"upstream":"users"},
  {"name":"broken","path":"/broken","upstream":"failing"},
  {"name":"gone","path":"/gone","upstream":"dead"}
]"#;

#[tokio::test]
async fn metrics_need_the_token_unless_public() {
    let up = Upstream::start_ok();
    let gw = gateway(&up.url(), &up.url());
    let res = client()
        .get(gw.url("/_kairos/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("x-request-id"));
    let wrong = client()
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth("not-the-token-at-all-000")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(scrape(&gw).await.contains("kairos_build_info"));

    let public = Gateway::start(&config_with(
        &up.url(),
        &up.url(),
        ROUTES,
        r#"{"public_metrics":true}"#,
    ));
    let res = client()
        .get(public.url("/_kairos/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Public metrics open only the metrics: the rest of the scope stays closed.
    let other = client()
        .get(public.url("/_kairos/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
}

#[tokio::test]
async fn counters_match_known_traffic_and_promtool_accepts_the_output() {
    let up = Upstream::start(|_| Reply::ok("hello"));
    let failing = Upstream::start(|_| Reply::ok("oops").status(503));
    let gw = gateway(&up.url(), &failing.url());
    let c = client();
    for i in 0..5 {
        let res = c.get(gw.url(&format!("/users/{i}"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "hello");
    }
    for _ in 0..2 {
        let res = c
            .post(gw.url("/users/1"))
            .body(vec![b'x'; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    for _ in 0..3 {
        assert_eq!(
            c.get(gw.url("/nowhere")).send().await.unwrap().status(),
            404
        );
    }
    assert_eq!(
        c.delete(gw.url("/users/1")).send().await.unwrap().status(),
        405
    );
    for _ in 0..4 {
        assert_eq!(c.get(gw.url("/broken")).send().await.unwrap().status(), 503);
    }
    for _ in 0..2 {
        assert_eq!(c.get(gw.url("/gone")).send().await.unwrap().status(), 502);
    }

    let text = scrape(&gw).await;
    let get = |name: &str, labels: &[(&str, &str)]| {
        metric(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    let ok = [("route", "get-user"), ("method", "GET"), ("status", "200")];
    assert_eq!(get("kairos_requests_total", &ok), 5.0);
    assert_eq!(
        get(
            "kairos_requests_total",
            &[("route", "get-user"), ("method", "POST"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        get(
            "kairos_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        3.0
    );
    // 405: a path matched but no route for the method, so no route either.
    assert_eq!(
        get(
            "kairos_requests_total",
            &[
                ("route", "unmatched"),
                ("method", "DELETE"),
                ("status", "405")
            ]
        ),
        1.0
    );
    assert_eq!(
        get(
            "kairos_requests_total",
            &[("route", "broken"), ("method", "GET"), ("status", "503")]
        ),
        4.0
    );
    assert_eq!(
        get(
            "kairos_request_duration_seconds_count",
            &[("route", "get-user"), ("method", "GET")]
        ),
        5.0
    );
    assert_eq!(
        get(
            "kairos_request_duration_seconds_bucket",
            &[("route", "get-user"), ("method", "GET"), ("le", "+Inf")]
        ),
        5.0
    );
    assert_eq!(
        get("kairos_response_bytes_total", &[("route", "get-user")]),
        7.0 * 5.0
    );
    assert_eq!(
        get("kairos_request_bytes_total", &[("route", "get-user")]),
        2000.0
    );
    assert_eq!(
        get(
            "kairos_upstream_errors_total",
            &[("upstream", "failing"), ("kind", "status_5xx")]
        ),
        4.0
    );
    assert_eq!(
        get(
            "kairos_upstream_errors_total",
            &[("upstream", "dead"), ("kind", "connect")]
        ),
        2.0
    );
    assert_eq!(
        get(
            "kairos_upstream_errors_total",
            &[("upstream", "users"), ("kind", "timeout")]
        ),
        0.0
    );
    assert_eq!(
        get(
            "kairos_upstream_request_duration_seconds_count",
            &[("upstream", "users")]
        ),
        7.0
    );
    assert_eq!(get("kairos_inflight_requests", &[]), 0.0);
    assert_eq!(
        get(
            "kairos_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        get("kairos_config_reloads_total", &[("result", "success")]),
        0.0
    );
    assert!(get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(get("process_open_fds", &[]) > 0.0);

    // The exposition passes Prometheus' own linter.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Counts the series of one metric family.
fn series_count(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .count()
}

#[tokio::test]
async fn ten_thousand_distinct_paths_do_not_grow_the_series() {
    let up = Upstream::start_ok();
    let gw = gateway(&up.url(), &up.url());
    let c = client();
    let send = |i: usize| {
        let c = c.clone();
        let url = if i.is_multiple_of(2) {
            gw.url(&format!("/users/{i}"))
        } else {
            gw.url(&format!("/random/{i}/path"))
        };
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    for i in 0..10 {
        send(i).await;
    }
    let before = scrape(&gw).await;
    let names = [
        "kairos_requests_total",
        "kairos_request_duration_seconds_bucket",
        "kairos_response_bytes_total",
    ];
    let counts: Vec<usize> = names.iter().map(|n| series_count(&before, n)).collect();
    use futures_util::StreamExt;
    let statuses: Vec<u16> = futures_util::stream::iter(10..10_010)
        .map(send)
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5000);
    assert_eq!(statuses.iter().filter(|s| **s == 404).count(), 5000);
    let after = scrape(&gw).await;
    for (n, c) in names.iter().zip(&counts) {
        assert_eq!(series_count(&after, n), *c, "{n} grew with distinct paths");
    }
    assert_eq!(
        metric(
            &after,
            "kairos_requests_total",
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        Some(5005.0)
    );
    assert!(
        !after.contains("/random/"),
        "a raw path leaked into a label"
    );
}

#[tokio::test]
async fn active_connections_follow_open_connections() {
    let up = Upstream::start_ok();
    let gw = gateway(&up.url(), &up.url());
    let gauge = || {
        let addr = gw.addr;
        std::thread::spawn(move || {
            let req = format!(
                "GET /_kairos/metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
            );
            let text = raw_exchange(addr, req.as_bytes(), Duration::from_secs(5));
            // The scrape's own connection is open while it is answered.
            metric(&text, "kairos_active_connections", &[]).unwrap() - 1.0
        })
        .join()
        .unwrap()
    };
    assert!(wait_until(Duration::from_secs(5), || gauge() == 0.0));
    use std::io::{Read, Write};
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
        s.write_all(b"GET /users/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    assert_eq!(gauge(), 3.0);
    drop(open);
    assert!(
        wait_until(Duration::from_secs(5), || gauge() == 0.0),
        "closed connections still counted"
    );
}
