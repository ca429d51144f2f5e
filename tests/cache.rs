//! The response cache end to end, against a real upstream that scripts its answers and counts
//! what it receives: "served from the cache" is asserted by the upstream's count, not only by
//! `X-Cache`. Every RFC 9111 rule the cache applies has a test; so does each way a wrong
//! answer could leak (private, no-store, Authorization, mixed Vary variants).

mod support;

use support::*;

const TOKEN: &str = "cache-test-token-0123456789abcdef";

fn gateway(up: &Upstream, routes: &str, caching: &str) -> Gateway {
    let extra = format!(r#""admin":{{"token":"{TOKEN}"}},"caching":{caching}"#);
    Gateway::start(&config(&up.url(), routes, &extra))
}

/// One cached route `c` on every path.
fn cached(up: &Upstream) -> Gateway {
    gateway(
        up,
        r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":{"enabled":true}}]"#,
        r#"{"backend":"memory"}"#,
    )
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, String, String, String) {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let h = |n: &str| {
        res.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (x_cache, age) = (h("x-cache"), h("age"));
    (status, x_cache, age, res.text().await.expect("body"))
}

fn hits(up: &Upstream, path: &str) -> usize {
    up.requests().iter().filter(|r| r.target == path).count()
}

#[tokio::test]
async fn a_fresh_answer_is_served_from_the_cache_with_its_age_and_to_head() {
    let up = Upstream::start(|_| {
        Reply::ok("hello")
            .header("cache-control", "max-age=60")
            .header("age", "7")
    });
    let gw = cached(&up);
    let first = get(&gw, "/a", &[]).await;
    assert_eq!(
        (first.0, first.1.as_str(), first.3.as_str()),
        (200, "MISS", "hello")
    );
    let second = get(&gw, "/a", &[]).await;
    assert_eq!(
        (second.0, second.1.as_str(), second.3.as_str()),
        (200, "HIT", "hello")
    );
    // The upstream's own Age counts (RFC 9111 4.2.3).
    assert!(second.2.parse::<u64>().expect("age") >= 7, "{}", second.2);
    let head = client().head(gw.url("/a")).send().await.expect("head");
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-cache"], "HIT");
    assert_eq!(head.headers()["content-length"], "5");
    assert_eq!(hits(&up, "/a"), 1);
    // Another query is another key; the same parameters in another order are not.
    get(&gw, "/a?x=1&y=2", &[]).await;
    let swapped = get(&gw, "/a?y=2&x=1", &[]).await;
    assert_eq!(swapped.1, "HIT");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn no_store_private_set_cookie_and_vary_star_are_never_stored() {
    let up = Upstream::start(|r| {
        let reply = Reply::ok(&format!("for {}", r.header("x-user").unwrap_or("?")));
        match r.target.as_str() {
            "/no-store" => reply.header("cache-control", "no-store, max-age=60"),
            "/private" => reply.header("cache-control", "private, max-age=60"),
            "/cookie" => reply
                .header("cache-control", "max-age=60")
                .header("set-cookie", "s=1"),
            _ => reply
                .header("cache-control", "max-age=60")
                .header("vary", "*"),
        }
    });
    let gw = cached(&up);
    for path in ["/no-store", "/private", "/cookie", "/vary-star"] {
        let a = get(&gw, path, &[("x-user", "alice")]).await;
        let b = get(&gw, path, &[("x-user", "bob")]).await;
        assert_eq!(a.3, "for alice", "{path}");
        assert_eq!(b.3, "for bob", "{path}: another client's answer");
        assert_eq!(b.1, "MISS", "{path}");
        assert_eq!(hits(&up, path), 2, "{path}");
    }
}

#[tokio::test]
async fn an_answer_to_an_authorized_request_is_shared_only_when_the_response_allows_it() {
    let up = Upstream::start(|r| {
        let reply = Reply::ok(&format!(
            "for {}",
            r.header("authorization").unwrap_or("nobody")
        ));
        match r.target.as_str() {
            "/public" => reply.header("cache-control", "public, max-age=60"),
            "/s-maxage" => reply.header("cache-control", "s-maxage=60"),
            _ => reply.header("cache-control", "max-age=60"),
        }
    });
    let gw = cached(&up);
    let a = get(&gw, "/mine", &[("authorization", "Bearer alice")]).await;
    assert_eq!(a.3, "for Bearer alice");
    let b = get(&gw, "/mine", &[]).await;
    assert_eq!(
        b.3, "for nobody",
        "an authorized answer went to another client"
    );
    assert_eq!(hits(&up, "/mine"), 2);
    for path in ["/public", "/s-maxage"] {
        get(&gw, path, &[("authorization", "Bearer alice")]).await;
        let shared = get(&gw, path, &[]).await;
        assert_eq!(shared.1, "HIT", "{path}");
        assert_eq!(hits(&up, path), 1, "{path}");
    }
}

#[tokio::test]
async fn vary_accept_encoding_variants_are_never_mixed_and_are_normalised() {
    let up = Upstream::start(|r| {
        Reply::ok(&format!(
            "encoded {}",
            r.header("accept-encoding").unwrap_or("none")
        ))
        .header("cache-control", "max-age=60")
        .header("vary", "Accept-Encoding")
    });
    let gw = cached(&up);
    let gzip = get(&gw, "/v", &[("accept-encoding", "gzip")]).await;
    let br = get(&gw, "/v", &[("accept-encoding", "br")]).await;
    let none = get(&gw, "/v", &[("accept-encoding", "identity")]).await;
    assert_eq!(gzip.3, "encoded gzip");
    assert_eq!(br.3, "encoded br");
    assert_eq!(none.3, "encoded identity");
    assert_eq!(hits(&up, "/v"), 3);
    let again = get(&gw, "/v", &[("accept-encoding", "br")]).await;
    assert_eq!((again.1.as_str(), again.3.as_str()), ("HIT", "encoded br"));
    // Order, case and spaces of the list do not make another variant.
    get(&gw, "/v", &[("accept-encoding", "gzip, br")]).await;
    let same = get(&gw, "/v", &[("accept-encoding", "BR,gzip")]).await;
    assert_eq!(
        (same.1.as_str(), same.3.as_str()),
        ("HIT", "encoded gzip, br")
    );
    assert_eq!(hits(&up, "/v"), 4);
}

#[tokio::test]
async fn a_route_vary_header_makes_separate_entries() {
    let up = Upstream::start(|r| {
        Reply::ok(&format!(
            "lang {}",
            r.header("accept-language").unwrap_or("-")
        ))
        .header("cache-control", "max-age=60")
    });
    let gw = gateway(
        &up,
        r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":{"vary":["Accept-Language"]}}]"#,
        r#"{}"#,
    );
    assert_eq!(
        get(&gw, "/l", &[("accept-language", "de")]).await.3,
        "lang de"
    );
    assert_eq!(
        get(&gw, "/l", &[("accept-language", "fr")]).await.3,
        "lang fr"
    );
    assert_eq!(get(&gw, "/l", &[("accept-language", "de")]).await.1, "HIT");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_stale_answer_is_revalidated_with_its_validators_and_the_304_headers_merged() {
    let up = Upstream::start(|r| match r.header("if-none-match") {
        Some("\"v1\"") => Reply::ok("")
            .status(304)
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=60")
            .header("x-version", "checked"),
        _ => Reply::ok("body v1")
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=0")
            .header("x-version", "first"),
    });
    let gw = cached(&up);
    assert_eq!(get(&gw, "/r", &[]).await.1, "MISS");
    let res = client().get(gw.url("/r")).send().await.expect("request");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-cache"], "REVALIDATED");
    assert_eq!(res.headers()["x-version"], "checked");
    assert_eq!(res.text().await.expect("body"), "body v1");
    assert_eq!(up.last().header("if-none-match"), Some("\"v1\""));
    // The 304's max-age=60 made it fresh again.
    assert_eq!(get(&gw, "/r", &[]).await.1, "HIT");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn no_cache_answers_are_revalidated_on_every_use() {
    let up = Upstream::start(|r| match r.header("if-none-match") {
        Some(_) => Reply::ok("").status(304).header("etag", "\"n\""),
        None => Reply::ok("nc")
            .header("etag", "\"n\"")
            .header("cache-control", "no-cache, max-age=60"),
    });
    let gw = cached(&up);
    get(&gw, "/nc", &[]).await;
    for _ in 0..2 {
        let r = get(&gw, "/nc", &[]).await;
        assert_eq!((r.1.as_str(), r.3.as_str()), ("REVALIDATED", "nc"));
    }
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn the_clients_own_conditional_request_is_answered_304_from_the_cache() {
    let up = Upstream::start(|_| {
        Reply::ok("cond")
            .header("etag", "W/\"e1\"")
            .header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")
            .header("cache-control", "max-age=60")
    });
    let gw = cached(&up);
    get(&gw, "/c", &[]).await;
    let inm = get(&gw, "/c", &[("if-none-match", "\"other\", \"e1\"")]).await;
    assert_eq!((inm.0, inm.1.as_str(), inm.3.as_str()), (304, "HIT", ""));
    let ims = get(
        &gw,
        "/c",
        &[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")],
    )
    .await;
    assert_eq!(ims.0, 304);
    let older = get(
        &gw,
        "/c",
        &[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")],
    )
    .await;
    assert_eq!((older.0, older.3.as_str()), (200, "cond"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_range_is_served_from_the_complete_stored_answer_or_passed_through() {
    let up = Upstream::start(|r| match r.header("range") {
        Some(_) => Reply::ok("3456")
            .status(206)
            .header("content-range", "bytes 3-6/10"),
        None => Reply::ok("0123456789").header("cache-control", "max-age=60"),
    });
    let gw = cached(&up);
    // A miss with a Range goes upstream as it is; the 206 is not stored.
    let passed = get(&gw, "/range", &[("range", "bytes=3-6")]).await;
    assert_eq!((passed.0, passed.3.as_str()), (206, "3456"));
    get(&gw, "/range", &[]).await;
    let res = client()
        .get(gw.url("/range"))
        .header("range", "bytes=2-4")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], "bytes 2-4/10");
    assert_eq!(res.text().await.expect("body"), "234");
    let suffix = get(&gw, "/range", &[("range", "bytes=-3")]).await;
    assert_eq!((suffix.0, suffix.3.as_str()), (206, "789"));
    let several = get(&gw, "/range", &[("range", "bytes=0-1,4-5")]).await;
    assert_eq!((several.0, several.3.as_str()), (200, "0123456789"));
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn an_unsafe_method_invalidates_its_uri_and_same_origin_locations() {
    let up = Upstream::start(|r| match r.method.as_str() {
        "POST" => Reply::ok("made")
            .status(201)
            .header("location", "/items/2")
            .header("content-location", "http://elsewhere.example/items/3"),
        _ => Reply::ok(&format!("item {}", r.target)).header("cache-control", "max-age=60"),
    });
    let gw = cached(&up);
    for p in ["/items/1", "/items/2", "/items/3"] {
        get(&gw, p, &[]).await;
        assert_eq!(get(&gw, p, &[]).await.1, "HIT");
    }
    let res = client()
        .post(gw.url("/items/1"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 201);
    assert_eq!(get(&gw, "/items/1", &[]).await.1, "MISS");
    assert_eq!(get(&gw, "/items/2", &[]).await.1, "MISS");
    // Another origin's URI is left alone.
    assert_eq!(get(&gw, "/items/3", &[]).await.1, "HIT");
}

#[tokio::test]
async fn an_unsafe_method_invalidates_its_uri_under_every_header_value_of_the_key() {
    // The key holds a request header: each user's answer is its own entry. A POST by one
    // user invalidates the URI, so every user's answer of that path goes; other paths stay.
    let up = Upstream::start(|r| match r.method.as_str() {
        "POST" => Reply::ok("done"),
        _ => Reply::ok(&format!(
            "{} for {}",
            r.target,
            r.header("x-user").unwrap_or("-")
        ))
        .header("cache-control", "max-age=60"),
    });
    let gw = gateway(
        &up,
        r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":{"enabled":true}}]"#,
        r#"{"backend":"memory","cache_key_template":"{method}:{path}:{header.x-user}"}"#,
    );
    for (path, user) in [("/doc", "a"), ("/doc", "b"), ("/other", "a")] {
        get(&gw, path, &[("x-user", user)]).await;
        let again = get(&gw, path, &[("x-user", user)]).await;
        assert_eq!(
            (again.1.as_str(), again.3.clone()),
            ("HIT", format!("{path} for {user}"))
        );
    }
    let res = client()
        .post(gw.url("/doc"))
        .header("x-user", "a")
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);
    // User a's entry is removed at once; user b's by a walk off the worker: wait for it.
    assert_eq!(get(&gw, "/doc", &[("x-user", "a")]).await.1, "MISS");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let b = get(&gw, "/doc", &[("x-user", "b")]).await;
        if b.1 == "MISS" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "user b's answer was kept: {b:?}"
        );
        // A HIT here was served before the walk: it must not have been stored again.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(get(&gw, "/other", &[("x-user", "a")]).await.1, "HIT");
}

#[tokio::test]
async fn concurrent_misses_for_one_key_make_one_upstream_request() {
    let up = Upstream::start(|_| {
        Reply::ok("coalesced")
            .header("cache-control", "max-age=60")
            .delay(std::time::Duration::from_millis(300))
    });
    let gw = cached(&up);
    let all = (0..100).map(|_| get(&gw, "/hot", &[]));
    let answers = futures_util::future::join_all(all).await;
    assert!(answers.iter().all(|a| a.0 == 200 && a.3 == "coalesced"));
    assert_eq!(up.count(), 1);
    let text = scrape_metrics(&gw, TOKEN).await;
    let result = |r| {
        metric(
            &text,
            "kairos_cache_requests_total",
            &[("route", "c"), ("result", r)],
        )
    };
    assert_eq!((result("miss"), result("hit")), (Some(1.0), Some(99.0)));
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_answer_while_the_upstream_is_down() {
    let up = Upstream::start(|r| match r.target.as_str() {
        "/sie" => Reply::ok("kept").header("cache-control", "max-age=0, stale-if-error=600"),
        _ => Reply::ok("gone").header("cache-control", "max-age=0"),
    });
    let url = up.url();
    let gw = Gateway::start(&config(
        &url,
        r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":true}]"#,
        r#""caching":{}"#,
    ));
    assert_eq!(get(&gw, "/sie", &[]).await.3, "kept");
    assert_eq!(get(&gw, "/plain", &[]).await.3, "gone");
    drop(up);
    let stale = get(&gw, "/sie", &[]).await;
    assert_eq!(
        (stale.0, stale.1.as_str(), stale.3.as_str()),
        (200, "STALE", "kept")
    );
    // Without stale-if-error the failure shows.
    assert_eq!(get(&gw, "/plain", &[]).await.0, 502);
}

/// An upstream that numbers its answers per path (`v1`, `v2`, ...): the first answer of a path
/// has `first_cc` as its Cache-Control, the later ones `max-age=60`, after `later_delay`.
fn numbered(
    first_cc: impl Fn(&str) -> &'static str + Send + Sync + 'static,
    later_delay: std::time::Duration,
) -> Upstream {
    let seen = std::sync::Mutex::new(std::collections::HashMap::<String, usize>::new());
    Upstream::start(move |r| {
        let n = {
            let mut seen = seen.lock().expect("counts");
            let n = seen.entry(r.target.clone()).or_default();
            *n += 1;
            *n
        };
        if n == 1 {
            Reply::ok("v1").header("cache-control", first_cc(&r.target))
        } else {
            Reply::ok(&format!("v{n}"))
                .header("cache-control", "max-age=60")
                .delay(later_delay)
        }
    })
}

/// Polls `path` until it answers `body` (at most 10 s): the last answer.
async fn until_body(gw: &Gateway, path: &str, body: &str) -> (u16, String, String, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let a = get(gw, path, &[]).await;
        if a.3 == body || std::time::Instant::now() > deadline {
            return a;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    // The refresh is slow, so the concurrent stale hits all come before it is stored.
    let up = numbered(
        |path| match path {
            "/own" => "max-age=1, stale-while-revalidate=600",
            _ => "max-age=1",
        },
        std::time::Duration::from_millis(500),
    );
    // `/own` carries its own directive; `/conf` gets caching.stale_while_revalidate.
    let gw = gateway(
        &up,
        r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":{}}]"#,
        r#"{"stale_while_revalidate":"600s"}"#,
    );
    for path in ["/own", "/conf"] {
        assert_eq!(get(&gw, path, &[]).await.3, "v1", "{path}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for path in ["/own", "/conf"] {
        let all = (0..20).map(|_| get(&gw, path, &[]));
        for a in futures_util::future::join_all(all).await {
            assert_eq!(
                (a.0, a.1.as_str(), a.3.as_str()),
                (200, "STALE", "v1"),
                "{path}"
            );
        }
        let fresh = until_body(&gw, path, "v2").await;
        assert_eq!(
            (fresh.1.as_str(), fresh.3.as_str()),
            ("HIT", "v2"),
            "{path}"
        );
        // Twenty stale hits, one refetch: the first answer and the refresh.
        assert_eq!(hits(&up, path), 2, "{path}");
    }
    let text = scrape_metrics(&gw, TOKEN).await;
    let stale = metric(
        &text,
        "kairos_cache_requests_total",
        &[("route", "c"), ("result", "stale")],
    );
    assert!(stale.is_some_and(|n| n >= 40.0), "{stale:?}");
}

#[tokio::test]
async fn a_background_refresh_is_conditional_and_a_304_refreshes_the_stored_answer() {
    let up = Upstream::start(|r| match r.header("if-none-match") {
        Some("\"e1\"") => Reply::ok("")
            .status(304)
            .header("etag", "\"e1\"")
            .header("cache-control", "max-age=60"),
        _ => Reply::ok("the body")
            .header("etag", "\"e1\"")
            .header("cache-control", "max-age=1, stale-while-revalidate=600"),
    });
    let gw = cached(&up);
    assert_eq!(get(&gw, "/e", &[]).await.1, "MISS");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let stale = get(&gw, "/e", &[]).await;
    assert_eq!((stale.1.as_str(), stale.3.as_str()), ("STALE", "the body"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let fresh = loop {
        let a = get(&gw, "/e", &[]).await;
        if a.1 == "HIT" || std::time::Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // The 304 made the stored answer fresh again (max-age=60): the body is the stored one.
    assert_eq!((fresh.1.as_str(), fresh.3.as_str()), ("HIT", "the body"));
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("if-none-match"), Some("\"e1\""));
}

#[tokio::test]
async fn stale_while_revalidate_never_applies_to_must_revalidate() {
    let up = numbered(
        |_| "max-age=1, must-revalidate, stale-while-revalidate=600",
        std::time::Duration::ZERO,
    );
    let gw = cached(&up);
    assert_eq!(get(&gw, "/mr", &[]).await.3, "v1");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let a = get(&gw, "/mr", &[]).await;
    assert_ne!(a.1, "STALE");
    assert_eq!(a.3, "v2");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn max_stale_accepts_a_stale_answer_and_only_if_cached_never_goes_upstream() {
    let up = numbered(
        |path| match path {
            // 3 s: still fresh when checked right after the store, even with the upstream's
            // Date a second behind (it has one-second resolution) on a busy machine.
            "/mr" => "max-age=3, must-revalidate",
            _ => "max-age=3",
        },
        std::time::Duration::ZERO,
    );
    let gw = cached(&up);
    // Nothing stored: only-if-cached answers 504 without asking the upstream.
    let res = client()
        .get(gw.url("/none"))
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 504);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_cached");
    assert_eq!(hits(&up, "/none"), 0);
    for path in ["/ms", "/mr"] {
        assert_eq!(get(&gw, path, &[]).await.3, "v1");
    }
    let fresh = get(&gw, "/ms", &[("cache-control", "only-if-cached")]).await;
    assert_eq!((fresh.1.as_str(), fresh.3.as_str()), ("HIT", "v1"));
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    // Stale: only-if-cached alone is not satisfied, with max-stale it is.
    assert_eq!(
        get(&gw, "/ms", &[("cache-control", "only-if-cached")])
            .await
            .0,
        504
    );
    for cc in [
        "max-stale=600",
        "max-stale",
        "only-if-cached, max-stale=600",
    ] {
        let a = get(&gw, "/ms", &[("cache-control", cc)]).await;
        assert_eq!(
            (a.0, a.1.as_str(), a.3.as_str()),
            (200, "STALE", "v1"),
            "{cc}"
        );
    }
    // A max-stale smaller than the staleness is not satisfied.
    let a = get(
        &gw,
        "/ms",
        &[("cache-control", "only-if-cached, max-stale=0")],
    )
    .await;
    assert_eq!(a.0, 504);
    assert_eq!(hits(&up, "/ms"), 1);
    // must-revalidate: never served stale, whatever the client accepts.
    let a = get(&gw, "/mr", &[("cache-control", "max-stale=600")]).await;
    assert_ne!(a.1, "STALE");
    assert_eq!(a.3, "v2");
    assert_eq!(hits(&up, "/mr"), 2);
}

#[tokio::test]
async fn a_body_over_max_object_size_reaches_the_client_whole_and_is_not_stored() {
    let up = Upstream::start(|r| {
        let n = if r.target == "/big" { 200_000 } else { 100_000 };
        Reply {
            status: 200,
            headers: vec![("cache-control".into(), "max-age=60".into())],
            body: ReplyBody::Zeros { n, sized: false },
            delay: std::time::Duration::ZERO,
            later: None,
        }
    });
    let gw = gateway(
        &up,
        r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":{}}]"#,
        r#"{"max_object_size":"150KB"}"#,
    );
    for _ in 0..2 {
        let res = client().get(gw.url("/big")).send().await.expect("request");
        assert_eq!(res.bytes().await.expect("body").len(), 200_000);
    }
    assert_eq!(hits(&up, "/big"), 2);
    // A chunked body under the limit streams to the first client and is stored.
    let first = client()
        .get(gw.url("/small"))
        .send()
        .await
        .expect("request");
    assert_eq!(first.bytes().await.expect("body").len(), 100_000);
    let res = client()
        .get(gw.url("/small"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.headers()["x-cache"], "HIT");
    assert_eq!(res.headers()["content-length"], "100000");
    assert_eq!(res.bytes().await.expect("body").len(), 100_000);
    assert_eq!(hits(&up, "/small"), 1);
}

#[tokio::test]
async fn response_transforms_apply_to_cached_and_fresh_answers_alike() {
    let up = Upstream::start(|_| {
        Reply::ok(r#"{"a":1}"#)
            .header("cache-control", "max-age=60")
            .header("content-type", "application/json")
            .header("server", "origin")
    });
    let gw = gateway(
        &up,
        r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":{},"transformations":[
            {"type":"header_remove","phase":"response","headers":["Server"]},
            {"type":"body_json","phase":"response","ops":[{"op":"set","path":"/b","value":2}]}
        ]}]"#,
        r#"{}"#,
    );
    for expected in ["MISS", "HIT"] {
        let res = client().get(gw.url("/t")).send().await.expect("request");
        assert_eq!(res.headers()["x-cache"], expected);
        assert!(res.headers().get("server").is_none_or(|s| s != "origin"));
        assert_eq!(res.text().await.expect("body"), r#"{"a":1,"b":2}"#);
    }
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn routes_without_cache_and_cache_false_are_untouched() {
    let up = Upstream::start(|_| Reply::ok("x").header("cache-control", "max-age=60"));
    let gw = gateway(
        &up,
        r#"[{"name":"off","path":"/off","upstream":"u","cache":false},
            {"name":"all","path":"/all","upstream":"u"}]"#,
        r#"{"enabled":true}"#,
    );
    let off = client().get(gw.url("/off")).send().await.expect("request");
    assert!(off.headers().get("x-cache").is_none());
    client().get(gw.url("/off")).send().await.expect("request");
    assert_eq!(hits(&up, "/off"), 2);
    // `enabled: true` caches every other route.
    get(&gw, "/all", &[]).await;
    assert_eq!(get(&gw, "/all", &[]).await.1, "HIT");
    assert_eq!(hits(&up, "/all"), 1);
}

#[tokio::test]
async fn request_directives_no_cache_and_max_age_go_to_the_upstream() {
    let up = Upstream::start(|_| Reply::ok("d").header("cache-control", "max-age=60"));
    let gw = cached(&up);
    get(&gw, "/d", &[]).await;
    assert_eq!(
        get(&gw, "/d", &[("cache-control", "no-cache")]).await.1,
        "EXPIRED"
    );
    assert_eq!(get(&gw, "/d", &[("pragma", "no-cache")]).await.1, "EXPIRED");
    assert_eq!(get(&gw, "/d", &[]).await.1, "HIT");
    assert_eq!(up.count(), 3);
}

async fn purge(gw: &Gateway, body: &str) -> (u16, String) {
    let res = client()
        .delete(gw.url("/_kairos/cache"))
        .bearer_auth(TOKEN)
        .body(body.to_string())
        .send()
        .await
        .expect("purge");
    (res.status().as_u16(), res.text().await.expect("body"))
}

#[tokio::test]
async fn the_admin_api_lists_and_purges_by_key_route_prefix_and_all() {
    let up = Upstream::start(|r| {
        Reply::ok(&format!("v {}", r.target))
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language")
    });
    let gw = gateway(
        &up,
        r#"[{"name":"users","path":"/api/users/{*id}","upstream":"u","cache":{}},
            {"name":"other","path":"/other/{*id}","upstream":"u","cache":{}}]"#,
        r#"{"cache_key_template":"{method}:{path}"}"#,
    );
    let fill = || async {
        for p in ["/api/users/1", "/api/users/2", "/other/1"] {
            for lang in ["de", "fr"] {
                get(&gw, p, &[("accept-language", lang)]).await;
            }
        }
    };
    fill().await;
    // The token is required.
    let anonymous = client()
        .get(gw.url("/_kairos/cache"))
        .send()
        .await
        .expect("get");
    assert_eq!(anonymous.status(), 401);
    let listed: serde_json::Value = client()
        .get(gw.url("/_kairos/cache"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["entries"], 6);
    assert_eq!(listed["routes"][0]["route"], "users");
    assert_eq!(listed["routes"][0]["entries"], 4);
    assert_eq!(listed["routes"][1]["entries"], 2);
    // Both variants of one key.
    assert_eq!(
        purge(&gw, r#"{"key":"GET:/api/users/1"}"#).await,
        (200, r#"{"purged":2}"#.into())
    );
    assert_eq!(
        get(&gw, "/api/users/1", &[("accept-language", "de")])
            .await
            .1,
        "MISS"
    );
    assert_eq!(
        get(&gw, "/api/users/2", &[("accept-language", "de")])
            .await
            .1,
        "HIT"
    );
    fill().await;
    assert_eq!(
        purge(&gw, r#"{"route":"other"}"#).await,
        (200, r#"{"purged":2}"#.into())
    );
    assert_eq!(
        get(&gw, "/other/1", &[("accept-language", "de")]).await.1,
        "MISS"
    );
    fill().await;
    assert_eq!(
        purge(&gw, r#"{"prefix":"/api/users/"}"#).await,
        (200, r#"{"purged":4}"#.into())
    );
    assert_eq!(
        get(&gw, "/other/1", &[("accept-language", "fr")]).await.1,
        "HIT"
    );
    fill().await;
    assert_eq!(
        purge(&gw, r#"{"all":true}"#).await,
        (200, r#"{"purged":6}"#.into())
    );
    assert_eq!(
        get(&gw, "/api/users/2", &[("accept-language", "fr")])
            .await
            .1,
        "MISS"
    );
    assert_eq!(purge(&gw, r#"{"all":true,"route":"x"}"#).await.0, 400);
    assert_eq!(purge(&gw, "nope").await.0, 400);
    let text = scrape_metrics(&gw, TOKEN).await;
    assert_eq!(metric(&text, "kairos_cache_entries", &[]), Some(1.0));

    // The CLI goes through the same endpoint.
    fill().await;
    let url = gw.url("");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kairos-rs"))
            .args(["cache", "purge", "--prefix", "/other/", "--gateway", &url])
            .env("KAIROS_ADMIN_TOKEN", TOKEN)
            .env_remove("KAIROS_CONFIG")
            .output()
            .expect("run the cli")
    })
    .await
    .expect("join");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "purged 2 stored answers\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
}

/// Reads a request head from `s` (the test upstream below needs nothing else).
fn read_head(s: &mut std::net::TcpStream) {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        assert!(n > 0, "connection closed before the request head ended");
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
    }
}

#[tokio::test]
async fn a_cacheable_body_streams_to_the_first_client_while_it_is_stored() {
    use std::io::Write;
    use std::time::Duration;
    const BIG: usize = 4 << 20;
    const FIRST: usize = 1 << 20;
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (release, released) = std::sync::mpsc::channel::<()>();
    // One connection only: a second fetch of the body would find nobody to answer it.
    let upstream = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        read_head(&mut s);
        let head = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n\
             Content-Length: {BIG}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(&vec![1u8; FIRST]).expect("first part");
        // The rest only once the client has the first part (or never, if it does not come).
        let go = released.recv_timeout(Duration::from_secs(30)).is_ok();
        if go {
            s.write_all(&vec![2u8; BIG - FIRST]).expect("rest");
        }
        go
    });
    let gw = Gateway::start(&config(
        &format!("http://{addr}"),
        r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":{}}]"#,
        r#""caching":{"max_size":"64MB","max_object_size":"8MB"}"#,
    ));
    let mut res = client().get(gw.url("/big")).send().await.expect("request");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-cache"], "MISS");
    let mut seen = 0usize;
    let mut ones = true;
    while seen < FIRST {
        let chunk = tokio::time::timeout(Duration::from_secs(20), res.chunk())
            .await
            .expect("the first part did not reach the client: the cache holds the body back")
            .expect("chunk")
            .expect("body ended early");
        ones &= chunk.iter().take(FIRST - seen).all(|&b| b == 1);
        seen += chunk.len();
    }
    assert!(ones);
    release.send(()).expect("release");
    while let Some(chunk) = res.chunk().await.expect("chunk") {
        seen += chunk.len();
    }
    assert_eq!(seen, BIG);
    assert!(upstream.join().expect("upstream thread"));
    // Stored while it streamed: the next client gets it whole from the cache.
    let again = client().get(gw.url("/big")).send().await.expect("request");
    assert_eq!(again.headers()["x-cache"], "HIT");
    let body = again.bytes().await.expect("body");
    assert_eq!(body.len(), BIG);
    assert!(body[..FIRST].iter().all(|&b| b == 1) && body[FIRST..].iter().all(|&b| b == 2));
}

#[tokio::test]
async fn many_keys_over_max_size_are_evicted_and_the_bytes_stay_within_it() {
    const MAX: f64 = 1024.0 * 1024.0;
    let up = Upstream::start(|_| Reply {
        status: 200,
        headers: vec![("cache-control".into(), "max-age=600".into())],
        body: ReplyBody::Zeros {
            n: 16 << 10,
            sized: true,
        },
        delay: std::time::Duration::ZERO,
        later: None,
    });
    let gw = gateway(
        &up,
        r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":{}}]"#,
        r#"{"max_size":"1MB","max_object_size":"64KB"}"#,
    );
    // 400 distinct keys of 16 KiB: over six times max_size.
    for i in 0..400 {
        let res = client()
            .get(gw.url(&format!("/k/{i}")))
            .send()
            .await
            .expect("request");
        assert_eq!(res.bytes().await.expect("body").len(), 16 << 10);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (bytes, evictions) = loop {
        // The inspection runs the store's pending maintenance (evictions included).
        let inspect = client()
            .get(gw.url("/_kairos/cache"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("inspect");
        let listed: serde_json::Value = inspect.json().await.expect("json");
        let text = scrape_metrics(&gw, TOKEN).await;
        let bytes = metric(&text, "kairos_cache_bytes", &[]).expect("bytes");
        let evictions = metric(&text, "kairos_cache_evictions_total", &[]).expect("evictions");
        assert_eq!(listed["bytes"].as_f64(), Some(bytes));
        if bytes <= MAX || std::time::Instant::now() > deadline {
            break (bytes, evictions);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(bytes <= MAX, "{bytes} bytes held, max_size {MAX}");
    assert!(bytes > 0.0);
    // At most 64 answers of 16 KiB fit; the rest were evicted (or refused admission).
    assert!(evictions >= 400.0 - 64.0, "{evictions} evictions");
    let entries = metric(
        &scrape_metrics(&gw, TOKEN).await,
        "kairos_cache_entries",
        &[],
    )
    .expect("entries");
    assert!((1.0..=64.0).contains(&entries), "{entries} entries");
}

#[tokio::test]
async fn repeated_query_parameters_in_another_order_are_another_key() {
    let up = Upstream::start(|r| Reply::ok(&r.target).header("cache-control", "max-age=60"));
    let gw = cached(&up);
    assert_eq!(get(&gw, "/q?a=1&a=2", &[]).await.3, "/q?a=1&a=2");
    // `a=2&a=1` means another thing to most applications (the first or last value wins).
    let other = get(&gw, "/q?a=2&a=1", &[]).await;
    assert_eq!(other.3, "/q?a=2&a=1", "another request's answer");
    // Parameters of different names still sort.
    let swapped = get(&gw, "/q?b=1&a=1&a=2", &[]).await;
    assert_eq!(swapped.3, "/q?b=1&a=1&a=2");
    let same = get(&gw, "/q?a=1&b=1&a=2", &[]).await;
    assert_eq!(
        (same.1.as_str(), same.3.as_str()),
        ("HIT", "/q?b=1&a=1&a=2")
    );
    assert_eq!(up.count(), 3);
}

/// Two 16-byte queries that rustc-hash 2 (FxHasher, the `{query_hash}` of the first cache)
/// maps to the same 64 bits: its byte hash is `mix(SEED1 ^ first8, SEED2 ^ last8)`, the
/// 128-bit product folded, so doubling one factor and halving the other collides. Any client
/// can compute such a pair for a victim's query.
fn fx_colliding_queries() -> (String, String) {
    const SEED1: u64 = 0x243f_6a88_85a3_08d3;
    const SEED2: u64 = 0x1319_8a2e_0370_7344;
    const ALPHABET: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$*,;:@";
    let ok = |v: u64| v.to_le_bytes().iter().all(|b| ALPHABET.contains(b));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        let mut out = [0u8; 8];
        for b in &mut out {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = ALPHABET[(seed % ALPHABET.len() as u64) as usize];
        }
        u64::from_le_bytes(out)
    };
    let (x, x2) = loop {
        let x = next();
        let a = SEED1 ^ x;
        if a >> 63 == 0 && ok((a << 1) ^ SEED1) {
            break (x, (a << 1) ^ SEED1);
        }
    };
    let (y, y2) = loop {
        let y = next();
        let b = SEED2 ^ y;
        if b & 1 == 0 && ok((b >> 1) ^ SEED2) {
            break (y, (b >> 1) ^ SEED2);
        }
    };
    let text = |a: u64, b: u64| {
        let mut v = a.to_le_bytes().to_vec();
        v.extend_from_slice(&b.to_le_bytes());
        String::from_utf8(v).expect("ascii")
    };
    (text(x, y), text(x2, y2))
}

#[tokio::test]
async fn a_query_crafted_to_collide_with_another_never_gets_its_answer() {
    let (victim, attacker) = fx_colliding_queries();
    assert_ne!(victim, attacker);
    let up = Upstream::start(|r| Reply::ok(&r.target).header("cache-control", "max-age=60"));
    let gw = cached(&up);
    let planted = get(&gw, &format!("/c?{attacker}"), &[]).await;
    assert_eq!(planted.3, format!("/c?{attacker}"));
    let served = get(&gw, &format!("/c?{victim}"), &[]).await;
    assert_eq!(
        served.3,
        format!("/c?{victim}"),
        "the attacker's answer was served"
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_304_never_relabels_the_stored_body_encoding_or_length() {
    let up = Upstream::start(|r| match r.header("if-none-match") {
        Some(_) => Reply::ok("")
            .status(304)
            .header("etag", "\"e\"")
            .header("content-encoding", "gzip")
            .header("cache-control", "max-age=60"),
        None => Reply::ok("plain body")
            .header("etag", "\"e\"")
            .header("cache-control", "max-age=0, must-revalidate"),
    });
    let gw = cached(&up);
    get(&gw, "/enc", &[]).await;
    let res = client().get(gw.url("/enc")).send().await.expect("request");
    assert_eq!(res.headers()["x-cache"], "REVALIDATED");
    assert!(
        res.headers().get("content-encoding").is_none(),
        "an identity body labelled {:?}",
        res.headers().get("content-encoding")
    );
    assert_eq!(res.headers()["content-length"], "10");
    assert_eq!(res.text().await.expect("body"), "plain body");
    let hit = client().get(gw.url("/enc")).send().await.expect("request");
    assert_eq!(hit.headers()["x-cache"], "HIT");
    assert!(hit.headers().get("content-encoding").is_none());
    assert_eq!(hit.text().await.expect("body"), "plain body");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_304_that_makes_the_answer_private_or_no_store_removes_it() {
    let up = Upstream::start(|r| {
        let cc = match r.target.as_str() {
            "/p" => "private, max-age=60",
            _ => "no-store",
        };
        match r.header("if-none-match") {
            Some(_) => Reply::ok("")
                .status(304)
                .header("etag", "\"e\"")
                .header("cache-control", cc),
            None => Reply::ok(&format!("for {}", r.header("x-user").unwrap_or("?")))
                .header("etag", "\"e\"")
                .header("cache-control", "max-age=0"),
        }
    });
    let gw = cached(&up);
    for path in ["/p", "/ns"] {
        get(&gw, path, &[("x-user", "alice")]).await;
        // Revalidated: the upstream now says the answer is not for a shared cache.
        let checked = get(
            &gw,
            path,
            &[("x-user", "alice"), ("cache-control", "max-age=0")],
        )
        .await;
        assert_eq!(checked.1, "REVALIDATED", "{path}");
        assert_eq!(checked.3, "for alice", "{path}");
        // Another client that accepts a stale answer must not get it from the cache.
        let other = get(
            &gw,
            path,
            &[("x-user", "bob"), ("cache-control", "max-stale")],
        )
        .await;
        assert_ne!(
            other.1, "STALE",
            "{path}: served after the upstream made it {path}"
        );
        assert_eq!(other.3, "for bob", "{path}");
        assert_eq!(hits(&up, path), 3, "{path}");
    }
}

#[tokio::test]
async fn an_unsatisfiable_range_on_a_stored_answer_is_416() {
    let up = Upstream::start(|_| Reply::ok("0123456789").header("cache-control", "max-age=60"));
    let gw = cached(&up);
    get(&gw, "/r", &[]).await;
    for spec in ["bytes=10-", "bytes=20-30", "bytes=-0"] {
        let res = client()
            .get(gw.url("/r"))
            .header("range", spec)
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 416, "{spec}");
        assert_eq!(res.headers()["content-range"], "bytes */10", "{spec}");
        assert_eq!(res.text().await.expect("body"), "", "{spec}");
    }
    // A syntactically invalid range is ignored: the whole answer.
    let whole = get(&gw, "/r", &[("range", "bytes=5-2")]).await;
    assert_eq!((whole.0, whole.3.as_str()), (200, "0123456789"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_revalidated_variant_never_becomes_the_answer_for_every_variant() {
    let up = Upstream::start(|r| {
        if r.method == "POST" {
            return Reply::ok("done");
        }
        match r.header("if-none-match") {
            // The 304 comes late: the entry is invalidated while it is on its way.
            Some(_) => Reply::ok("")
                .status(304)
                .header("etag", "\"e\"")
                .header("vary", "Accept-Encoding")
                .header("cache-control", "max-age=60")
                .delay(std::time::Duration::from_millis(800)),
            None => Reply::ok(&format!(
                "encoded {}",
                r.header("accept-encoding").unwrap_or("none")
            ))
            .header("etag", "\"e\"")
            .header("vary", "Accept-Encoding")
            .header("cache-control", "max-age=0, must-revalidate"),
        }
    });
    let gw = cached(&up);
    assert_eq!(
        get(&gw, "/v", &[("accept-encoding", "gzip")]).await.3,
        "encoded gzip"
    );
    let url = gw.url("/v");
    let revalidating = tokio::spawn(async move {
        client()
            .get(url)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    });
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let posted = client().post(gw.url("/v")).send().await.expect("post");
    assert_eq!(posted.status(), 200);
    assert_eq!(revalidating.await.expect("task"), "encoded gzip");
    let br = get(&gw, "/v", &[("accept-encoding", "br")]).await;
    assert_eq!(br.3, "encoded br", "another variant's answer");
    let none = get(&gw, "/v", &[]).await;
    assert_eq!(none.3, "encoded none", "another variant's answer");
}

#[tokio::test]
async fn an_answer_built_for_one_host_or_scheme_is_never_served_to_another() {
    // The upstream sees the client's host in X-Forwarded-Host (and the scheme in
    // X-Forwarded-Proto) even without `preserve_host`, and builds links from it.
    let up = Upstream::start(|r| {
        Reply::ok(&format!(
            "{}://{}/next",
            r.header("x-forwarded-proto").unwrap_or("?"),
            r.header("x-forwarded-host").unwrap_or("?")
        ))
        .header("cache-control", "max-age=60")
    });
    let gw = cached(&up);
    let at = |host: &'static str| {
        let url = gw.url("/links");
        async move {
            client()
                .get(url)
                .header("host", host)
                .send()
                .await
                .expect("request")
                .text()
                .await
                .expect("body")
        }
    };
    assert_eq!(at("evil.example").await, "http://evil.example/next");
    assert_eq!(
        at("shop.example").await,
        "http://shop.example/next",
        "another host's answer"
    );
    assert_eq!(at("Shop.Example").await, "http://shop.example/next");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_no_cache_answer_is_never_served_stale_when_the_upstream_fails() {
    let up = Upstream::start(|r| match r.header("if-none-match") {
        Some(_) => Reply::ok("upstream failed").status(503),
        None => Reply::ok("needs validation")
            .header("etag", "\"e\"")
            .header("cache-control", "no-cache, max-age=60, stale-if-error=600"),
    });
    let gw = cached(&up);
    assert_eq!(get(&gw, "/nc", &[]).await.3, "needs validation");
    // RFC 9111 5.2.2.4: never used without a successful validation; README: stale-if-error
    // never applies to no-cache.
    let failed = get(&gw, "/nc", &[]).await;
    assert_eq!((failed.0, failed.3.as_str()), (503, "upstream failed"));
    assert_ne!(failed.1, "STALE");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn huge_directive_values_from_the_upstream_never_break_an_answer() {
    let up = Upstream::start(|_| {
        Reply::ok("big numbers").header(
            "cache-control",
            "max-age=18446744073709551615, stale-while-revalidate=18446744073709551615, \
             stale-if-error=18446744073709551615",
        )
    });
    let gw = cached(&up);
    let first = get(&gw, "/huge", &[]).await;
    assert_eq!((first.0, first.3.as_str()), (200, "big numbers"));
    let second = get(&gw, "/huge", &[]).await;
    assert_eq!((second.0, second.1.as_str()), (200, "HIT"));
    assert_eq!(up.count(), 1);
}

/// Tenants never share an answer: a global cached route used by two tenants keeps one entry
/// per tenant (whatever the key template says), and `{tenant}` may be used in a template.
#[tokio::test]
async fn tenants_never_share_an_answer_and_tenant_is_a_key_variable() {
    let up = Upstream::start(|r| {
        let who = r.header("x-tenant-id").unwrap_or("none").to_string();
        Reply::ok(&format!("for {who}")).header("cache-control", "max-age=60")
    });
    let tenancy = r#""tenancy":{"identify_by":["header"],"quota_store":{"backend":"memory"}},
        "tenants":{"acme":{},"globex":{}}"#;
    for template in ["{method}:{path}:{query_hash}", "{tenant}:{path}"] {
        let extra = format!(
            r#""admin":{{"token":"{TOKEN}"}},"caching":{{"backend":"memory","cache_key_template":"{template}"}},{tenancy}"#
        );
        let gw = Gateway::start(&config(
            &up.url(),
            r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":{}}]"#,
            &extra,
        ));
        let path = format!("/t/{}", template.len());
        let acme = get(&gw, &path, &[("x-tenant-id", "acme")]).await;
        assert_eq!((acme.1.as_str(), acme.3.as_str()), ("MISS", "for acme"));
        let globex = get(&gw, &path, &[("x-tenant-id", "globex")]).await;
        assert_eq!(
            (globex.1.as_str(), globex.3.as_str()),
            ("MISS", "for globex"),
            "{template}"
        );
        let none = get(&gw, &path, &[]).await;
        assert_eq!((none.1.as_str(), none.3.as_str()), ("MISS", "for none"));
        let again = get(&gw, &path, &[("x-tenant-id", "acme")]).await;
        assert_eq!((again.1.as_str(), again.3.as_str()), ("HIT", "for acme"));
        assert_eq!(hits(&up, &path), 3, "{template}");
    }
}

#[tokio::test]
async fn a_hit_carries_the_stored_fields_and_is_counted_like_any_answer() {
    let up = Upstream::start(|_| {
        Reply::ok("twelve bytes")
            .header("cache-control", "max-age=60")
            .header("x-one", "first")
            .header("x-one", "second")
            .header("x-cache", "upstream's own")
    });
    let gw = cached(&up);
    for expected in ["MISS", "HIT", "HIT"] {
        let res = client()
            .get(gw.url("/fields"))
            .send()
            .await
            .expect("request");
        let h = res.headers().clone();
        let all = |n: &str| -> Vec<&str> {
            h.get_all(n)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        assert_eq!(all("x-cache"), [expected]);
        assert_eq!(all("x-one"), ["first", "second"], "{expected}");
        assert_eq!(all("content-length"), ["12"], "{expected}");
        assert_eq!(all("cache-control"), ["max-age=60"], "{expected}");
        // A HIT says how old it is; the upstream sent no Age.
        assert_eq!(
            all("age").len(),
            usize::from(expected == "HIT"),
            "{expected}"
        );
        assert_eq!(all("x-request-id").len(), 1, "{expected}");
        assert_eq!(res.text().await.expect("body"), "twelve bytes");
    }
    assert_eq!(hits(&up, "/fields"), 1);
    let text = scrape_metrics(&gw, TOKEN).await;
    let m = |name, labels: &[(&str, &str)]| metric(&text, name, labels);
    assert_eq!(
        m(
            "kairos_requests_total",
            &[("route", "c"), ("method", "GET"), ("status", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(
        m("kairos_response_bytes_total", &[("route", "c")]),
        Some(36.0)
    );
    assert_eq!(
        m(
            "kairos_cache_requests_total",
            &[("route", "c"), ("result", "hit")]
        ),
        Some(2.0)
    );
    assert_eq!(m("kairos_inflight_requests", &[]), Some(0.0));
}
