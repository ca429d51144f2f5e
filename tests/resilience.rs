//! Upstream resilience end to end, with real upstream servers on loopback that are stopped,
//! made to fail and restarted: retries to the next server, active health checks, outlier
//! ejection, the circuit breaker, and what `/_kairos/upstreams` and the metrics say.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const TOKEN: &str = "resilience-admin-token-0123";

/// A config with one upstream `u` over `servers` (URLs), `upstream_extra` merged into the
/// upstream's object, and one catch-all route.
fn cfg(servers: &[String], upstream_extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|s| format!(r#"{{"url":"{s}"}}"#))
        .collect();
    let extra = if upstream_extra.is_empty() {
        String::new()
    } else {
        format!(",{upstream_extra}")
    };
    format!(
        r#"{{"version":1,"server":{{"workers":2}},"admin":{{"token":"{TOKEN}"}},
        "upstreams":{{"u":{{"servers":[{}]{extra}}}}},
        "routes":[{{"name":"all","path":"/{{*rest}}","upstream":"u"}}],
        "logging":{{"access_log":false,"level":"error"}}}}"#,
        list.join(",")
    )
}

/// An upstream that answers with its name, or 500 while `fail` is set.
fn named(name: &'static str, fail: Arc<AtomicBool>) -> Upstream {
    Upstream::start(move |_| {
        if fail.load(Ordering::Relaxed) {
            Reply::ok("failing").status(500)
        } else {
            Reply::ok(name)
        }
    })
}

fn restart(addr: SocketAddr, name: &'static str) -> Upstream {
    let listener = std::net::TcpListener::bind(addr).expect("rebind the same port");
    Upstream::start_on(listener, move |_| Reply::ok(name))
}

/// A loopback address nothing listens on.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

async fn admin_json(gw: &Gateway, path: &str) -> serde_json::Value {
    client()
        .get(gw.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The `/_kairos/upstreams` entry of server `url`.
async fn server_state(gw: &Gateway, url: &str) -> serde_json::Value {
    let v = admin_json(gw, "/_kairos/upstreams").await;
    v["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"] == url)
        .cloned()
        .unwrap_or_else(|| panic!("{url} not in {v}"))
}

async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    match c.get(url).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test]
async fn get_is_retried_on_the_next_server_and_post_is_not_duplicated() {
    let failing = Arc::new(AtomicBool::new(true));
    let a = named("a", failing.clone());
    let b = named("b", Arc::default());
    let gw = Gateway::start(&cfg(
        &[a.url(), b.url()],
        r#""outlier_detection":{"enabled":false},
           "retries":{"attempts":1,"backoff":"1ms","on":["connect_error","500"]}"#,
    ));
    let c = client();
    for _ in 0..6 {
        assert_eq!(get(&c, &gw.url("/x")).await, (200, "b".into()));
    }
    assert_eq!(
        a.count(),
        3,
        "round robin sent every other request to a first"
    );
    assert_eq!(b.count(), 6);

    // POST is not idempotent: a's 500 goes back to the client, and b never sees the request.
    let (a0, b0) = (a.count(), b.count());
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = c.post(gw.url("/order")).body("one").send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 500, 500]);
    assert_eq!(a.count() - a0, 2, "each POST sent exactly once");
    assert_eq!(b.count() - b0, 2);

    let m = scrape_metrics(&gw, TOKEN).await;
    assert_eq!(
        metric(&m, "kairos_upstream_retries_total", &[("upstream", "u")]),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &m,
            "kairos_upstream_errors_total",
            &[("upstream", "u"), ("kind", "status_5xx")]
        ),
        Some(5.0)
    );
}

#[tokio::test]
async fn a_request_that_never_left_is_retried_whatever_its_method() {
    let dead = dead_url();
    let live = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &[dead.clone(), live.url()],
        r#""outlier_detection":{"enabled":false}"#,
    ));
    let c = client();
    for i in 0..4 {
        let r = c
            .post(gw.url("/pay"))
            .body(format!("payment {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "connect errors are retried by default");
    }
    assert_eq!(live.count(), 4, "each POST arrived once");
    let bodies: Vec<String> = live
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies, ["payment 0", "payment 1", "payment 2", "payment 3"]);
}

#[tokio::test]
async fn a_timed_out_attempt_moves_on_only_when_asked_and_never_past_the_route_timeout() {
    let slow = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_secs(3)));
    let fast = Upstream::start(|_| Reply::ok("fast"));
    let gw = Gateway::start(&cfg(
        &[slow.url(), fast.url()],
        r#""attempt_timeout":"200ms","outlier_detection":{"enabled":false},
           "retries":{"attempts":1,"backoff":"1ms","on":["timeout"]}"#,
    ));
    let c = client();
    for _ in 0..2 {
        let started = Instant::now();
        assert_eq!(get(&c, &gw.url("/t")).await, (200, "fast".into()));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    assert_eq!(slow.count(), 1);
    // Without the timeout condition the slow server's 504 is final.
    let gw = Gateway::start(&cfg(
        &[slow.url()],
        r#""attempt_timeout":"200ms","retries":{"attempts":1}"#,
    ));
    assert_eq!(get(&c, &gw.url("/t")).await.0, 504);
}

#[tokio::test]
async fn circuit_opens_fails_fast_half_opens_and_closes() {
    let failing = Arc::new(AtomicBool::new(true));
    let up = named("up", failing.clone());
    let gw = Gateway::start(&cfg(
        &[up.url()],
        r#""outlier_detection":{"enabled":false},"retries":{"attempts":0},
           "circuit_breaker":{"failure_threshold":3,"recovery_timeout":"1s","half_open_requests":1}"#,
    ));
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/c")).await.0, 500);
    }
    assert_eq!(server_state(&gw, &up.url()).await["circuit"], "open");
    let m = scrape_metrics(&gw, TOKEN).await;
    let url = up.url();
    let labels = [("upstream", "u"), ("server", url.as_str())];
    assert_eq!(metric(&m, "kairos_circuit_state", &labels), Some(1.0));

    // Open: answered at once, without contacting the server.
    let seen = up.count();
    let mut fail_fast = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let r = c.get(gw.url("/c")).send().await.unwrap();
        fail_fast.push(started.elapsed());
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("x-request-id"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "no_healthy_upstream");
    }
    assert_eq!(up.count(), seen, "an open circuit never reaches the server");
    fail_fast.sort();
    println!(
        "fail-fast round trip through the gateway: median {:?}, max {:?}",
        fail_fast[10], fail_fast[19]
    );

    // After the recovery timeout one probe goes through; it fails and the circuit reopens.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&c, &gw.url("/c")).await.0, 500);
    assert_eq!(up.count(), seen + 1);
    assert_eq!(get(&c, &gw.url("/c")).await.0, 503);
    assert_eq!(server_state(&gw, &up.url()).await["circuit"], "open");

    // The server recovers: the next probe succeeds and closes the circuit.
    failing.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&c, &gw.url("/c")).await, (200, "up".into()));
    assert_eq!(server_state(&gw, &up.url()).await["circuit"], "closed");
    for _ in 0..5 {
        assert_eq!(get(&c, &gw.url("/c")).await.0, 200);
    }
    let m = scrape_metrics(&gw, TOKEN).await;
    assert_eq!(metric(&m, "kairos_circuit_state", &labels), Some(0.0));
}

#[tokio::test]
async fn error_percentage_over_the_window_opens_the_circuit() {
    // Every other request fails: never 3 in a row, but 50% of the window.
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let up = Upstream::start(move |_| {
        if n2.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
            Reply::ok("x").status(503)
        } else {
            Reply::ok("ok")
        }
    });
    let gw = Gateway::start(&cfg(
        &[up.url()],
        r#""outlier_detection":{"enabled":false},"retries":{"attempts":0},
           "circuit_breaker":{"failure_threshold":3,"minimum_throughput":10,
                              "error_percentage_threshold":50,"window":"10s"}"#,
    ));
    let c = client();
    for _ in 0..9 {
        get(&c, &gw.url("/e")).await;
    }
    assert_eq!(server_state(&gw, &up.url()).await["circuit"], "closed");
    get(&c, &gw.url("/e")).await; // the 10th request: 5 of 10 failed (the last one a success)
    get(&c, &gw.url("/e")).await; // 6 of 11
    assert_eq!(server_state(&gw, &up.url()).await["circuit"], "open");
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_server_but_never_too_many() {
    let bad = named("bad", Arc::new(AtomicBool::new(true)));
    let worse = named("worse", Arc::new(AtomicBool::new(true)));
    let good = named("good", Arc::default());
    let gw = Gateway::start(&cfg(
        &[bad.url(), worse.url(), good.url()],
        r#""retries":{"attempts":0},
           "outlier_detection":{"consecutive_5xx":3,"base_ejection_time":"30s",
                                "max_ejection_percent":34}"#,
    ));
    let c = client();
    for _ in 0..30 {
        get(&c, &gw.url("/o")).await;
    }
    // 34% of 3 servers is one: the first to reach 3 failures is out, the other stays in.
    let states = admin_json(&gw, "/_kairos/upstreams").await;
    let servers = states["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .clone();
    let ejected: Vec<&serde_json::Value> =
        servers.iter().filter(|s| s["ejected"] == true).collect();
    assert_eq!(ejected.len(), 1, "{states}");
    assert_eq!(ejected[0]["url"], bad.url(), "{states}");
    assert!(ejected[0]["ejected_for_ms"].as_u64().unwrap() > 25_000);
    let before = bad.count();
    for _ in 0..10 {
        get(&c, &gw.url("/o")).await;
    }
    assert_eq!(bad.count(), before, "an ejected server gets no traffic");
    let m = scrape_metrics(&gw, TOKEN).await;
    let url = bad.url();
    let labels = [("upstream", "u"), ("server", url.as_str())];
    assert_eq!(
        metric(&m, "kairos_upstream_ejections_total", &labels),
        Some(1.0)
    );
    assert_eq!(metric(&m, "kairos_upstream_ejected", &labels), Some(1.0));
}

#[tokio::test]
async fn a_dead_server_is_taken_out_by_the_checker_and_back_within_an_interval() {
    let a = named("a", Arc::default());
    let b = named("b", Arc::default());
    let addr_b = b.addr;
    let url_b = b.url();
    let gw = Gateway::start(&cfg(
        &[a.url(), b.url()],
        r#""outlier_detection":{"enabled":false},"retries":{"attempts":0},
           "health_check":{"path":"/health","interval":"300ms","timeout":"200ms",
                           "healthy_threshold":2,"unhealthy_threshold":2}"#,
    ));
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), async || {
            server_state(&gw, &url_b).await["health"] == "healthy"
        })
        .await
    );
    assert!(b.requests().iter().any(|r| r.target == "/health"));
    drop(b);
    assert!(
        eventually(Duration::from_secs(5), async || {
            server_state(&gw, &url_b).await["health"] == "unhealthy"
        })
        .await
    );
    // Taken out: with retries off, every request still succeeds on a.
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/h")).await, (200, "a".into()));
    }
    let m = scrape_metrics(&gw, TOKEN).await;
    let labels = [("upstream", "u"), ("server", url_b.as_str())];
    assert_eq!(metric(&m, "kairos_upstream_health", &labels), Some(0.0));
    let state = server_state(&gw, &url_b).await;
    assert_eq!(state["last_check_ok"], false);
    assert!(state["last_check"].as_str().unwrap().ends_with('Z'));

    // Back: healthy again within about one interval (two checks at half the interval).
    let b = restart(addr_b, "b");
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), async || {
            server_state(&gw, &url_b).await["health"] == "healthy"
        })
        .await
    );
    let took = back.elapsed();
    println!("unhealthy -> healthy after the server came back: {took:?}");
    assert!(
        eventually(Duration::from_secs(2), async || {
            get(&c, &gw.url("/h")).await.1 == "b"
        })
        .await
    );
    assert!(b.count() > 0);
}

#[tokio::test]
async fn rolling_restart_of_two_of_three_servers_under_load_loses_no_request() {
    let names = ["s0", "s1", "s2"];
    let mut servers: Vec<Option<Upstream>> = names
        .iter()
        .map(|n| Some(named(n, Arc::default())))
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.as_ref().unwrap().addr).collect();
    let urls: Vec<String> = servers.iter().map(|s| s.as_ref().unwrap().url()).collect();
    let gw = Arc::new(Gateway::start(&cfg(
        &urls,
        r#""health_check":{"path":"/health","interval":"500ms","timeout":"250ms"},
           "retries":{"attempts":2,"backoff":"5ms"}"#,
    )));

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (gw, stop) = (gw.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get(&c, &gw.url("/load")).await {
                    (200, _) => ok += 1,
                    other => failed.push(other),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, name) in names.iter().enumerate().take(2) {
        let before = servers[i].as_ref().unwrap().count();
        assert!(before > 0, "{name} served before its restart");
        servers[i] = None; // stopped: listener closed, connections reset
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let back = Instant::now();
        servers[i] = Some(restart(addrs[i], name));
        let s = servers[i].as_ref().unwrap();
        assert!(
            eventually(Duration::from_secs(30), async || s
                .requests()
                .iter()
                .any(|r| r.target == "/load"))
            .await,
            "{name} got traffic again after its restart"
        );
        println!(
            "{name}: serving traffic {:?} after it came back",
            back.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    println!(
        "rolling restart: {ok} requests answered 200, {} failed",
        failed.len()
    );
    assert!(ok > 200, "the load ran ({ok} requests)");
    assert!(failed.is_empty(), "client errors: {failed:?}");
}

#[tokio::test]
async fn strategies_route_by_their_rules() {
    // ip_hash: one client address always reaches the same server; X-Forwarded-For is
    // believed from a trusted proxy only.
    let ups: Vec<Upstream> = (0..4).map(|_| Upstream::start_ok()).collect();
    let urls: Vec<String> = ups.iter().map(|u| u.url()).collect();
    let text = cfg(&urls, r#""load_balancing":{"strategy":"ip_hash"}"#).replace(
        r#""workers":2"#,
        r#""workers":2,"trusted_proxies":["127.0.0.1/32"]"#,
    );
    let gw = Gateway::start(&text);
    let c = client();
    let mut placement = std::collections::HashMap::new();
    for client_ip in 0..40 {
        let ip = format!("198.51.100.{client_ip}");
        for _ in 0..3 {
            let before: Vec<usize> = ups.iter().map(|u| u.count()).collect();
            let r = c
                .get(gw.url("/ip"))
                .header("x-forwarded-for", &ip)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let hit = ups
                .iter()
                .zip(&before)
                .position(|(u, b)| u.count() > *b)
                .unwrap();
            assert_eq!(*placement.entry(ip.clone()).or_insert(hit), hit, "{ip}");
        }
    }
    let used: std::collections::HashSet<_> = placement.values().collect();
    assert!(
        used.len() >= 3,
        "40 clients spread over the servers: {placement:?}"
    );

    // least_connections: a server holding slow requests gets no new ones while another is
    // idle.
    let slow = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_millis(800)));
    let fast = Upstream::start(|_| Reply::ok("fast"));
    let gw = Arc::new(Gateway::start(&cfg(
        &[slow.url(), fast.url()],
        r#""load_balancing":{"strategy":"least_connections"}"#,
    )));
    let mut held = Vec::new();
    // Round robin would send half of these to the slow server; least_connections sends
    // it one, then keeps choosing the idle fast server while that one is pending.
    for _ in 0..10 {
        let gw = gw.clone();
        held.push(tokio::spawn(
            async move { get(&client(), &gw.url("/lc")).await },
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for h in held {
        assert_eq!(h.await.unwrap().0, 200);
    }
    assert!(slow.count() <= 2, "slow server got {} of 10", slow.count());
}

#[tokio::test]
async fn every_server_out_means_503_at_once() {
    let gw = Gateway::start(&cfg(
        &[dead_url(), dead_url()],
        r#""health_check":{"interval":"200ms","timeout":"100ms"}"#,
    ));
    let c = client();
    assert!(
        eventually(Duration::from_secs(5), async || {
            let v = admin_json(&gw, "/_kairos/upstreams").await;
            v["upstreams"][0]["servers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["health"] == "unhealthy")
        })
        .await
    );
    let r = c.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    // The admin view needs the token.
    let r = c.get(gw.url("/_kairos/upstreams")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn the_retry_budget_stops_a_retry_storm() {
    // Both servers always fail: without a budget every request would be sent twice.
    let a = named("a", Arc::new(AtomicBool::new(true)));
    let b = named("b", Arc::new(AtomicBool::new(true)));
    let gw = Gateway::start(&cfg(
        &[a.url(), b.url()],
        r#""outlier_detection":{"enabled":false},
           "retries":{"attempts":1,"backoff":"1ms","on":["500"],
                      "budget_percent":20,"min_retries_per_second":0}"#,
    ));
    let c = client();
    for _ in 0..200 {
        assert_eq!(get(&c, &gw.url("/storm")).await.0, 500);
    }
    let m = scrape_metrics(&gw, TOKEN).await;
    let retries = metric(&m, "kairos_upstream_retries_total", &[("upstream", "u")]).unwrap();
    assert!(
        (35.0..=40.0).contains(&retries),
        "20% of 200 requests, less the deposits still short of a whole retry: {retries}"
    );
    assert_eq!(a.count() + b.count(), 200 + retries as usize);
}

/// Clients that stop sending a streamed (chunked) request body are answered 408 once the
/// route's timeout has passed since their last chunk, and nothing is held against the server:
/// its circuit stays closed, it is not ejected, no upstream error is counted, and the next
/// normal request succeeds.
#[tokio::test]
async fn stalled_uploads_are_the_clients_fault_not_the_servers() {
    use std::io::{Read, Write};
    let up = Upstream::start_ok();
    let gw = Gateway::start(&format!(
        r#"{{"version":1,"server":{{"workers":2}},"admin":{{"token":"{TOKEN}"}},
        "upstreams":{{"u":{{"servers":[{{"url":"{}"}}],"retries":{{"attempts":0}},
            "circuit_breaker":{{"failure_threshold":2,"recovery_timeout":"30s"}},
            "outlier_detection":{{"consecutive_gateway_failures":2,"base_ejection_time":"30s",
                                  "max_ejection_percent":100}}}}}},
        "routes":[{{"name":"all","path":"/{{*rest}}","upstream":"u","timeout":"300ms"}}],
        "logging":{{"access_log":false,"level":"error"}}}}"#,
        up.url()
    ));
    let addr = gw.addr;
    let stalled: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(
                    b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                )
                .unwrap();
                // ... and nothing more.
                let mut out = Vec::new();
                let mut buf = [0u8; 4096];
                while !out.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                    }
                }
                String::from_utf8_lossy(&out).into_owned()
            })
        })
        .collect();
    for t in stalled {
        let res = t.join().unwrap();
        assert!(res.starts_with("HTTP/1.1 408"), "{res}");
    }
    let state = server_state(&gw, &up.url()).await;
    assert_eq!(state["circuit"], "closed", "{state}");
    assert_eq!(state["ejected"], false, "{state}");
    let m = scrape_metrics(&gw, TOKEN).await;
    let errors: f64 = m
        .lines()
        .filter(|l| l.starts_with("kairos_upstream_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(errors, 0.0, "upstream errors counted for client stalls");
    assert_eq!(get(&client(), &gw.url("/after")).await, (200, "ok".into()));
}

/// A server whose `/health` answers 200 with a chunked body that never ends (and `/x` the
/// same): the health probe reads a bounded part of it and finishes, so the server is marked.
fn endless_body_server() -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head);
                let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
                while s.write_all(chunk.as_bytes()).is_ok() {}
            });
        }
    });
    url
}

#[tokio::test]
async fn a_health_endpoint_with_an_endless_body_is_still_checked() {
    let url = endless_body_server();
    let gw = Gateway::start(&cfg(
        std::slice::from_ref(&url),
        r#""health_check":{"path":"/health","interval":"20s","timeout":"10s"}"#,
    ));
    assert!(
        eventually(Duration::from_secs(3), async || {
            server_state(&gw, &url).await["health"] == "healthy"
        })
        .await,
        "{}",
        server_state(&gw, &url).await
    );
}
