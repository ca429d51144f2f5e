//! Rate limiting through a real redis-server started by the test on a free loopback port:
//! several gateways sharing one limit under steady load, Redis killed and stalled mid-test
//! (per `on_backend_error`), and recovery when it returns.

mod support;

use std::time::{Duration, Instant};
use support::*;

const ADMIN: &str = "admin-token-for-tests-0123456789";

fn cfg(up: &Upstream, redis: &RedisServer, limits: &str, on_error: &str) -> String {
    config(
        &up.url(),
        r#"[{"name":"api","path":"/api","upstream":"u"},
            {"name":"warm","path":"/warm","upstream":"u","rate_limit":{"inherit":false,"global":{"rps":1,"burst":100}}}]"#,
        &format!(
            r#""admin":{{"token":"{ADMIN}"}},
               "rate_limiting":{{"backend":"redis","redis_url":"{}","on_backend_error":"{on_error}",{limits}}}"#,
            redis.url()
        ),
    )
}

async fn get(url: &str) -> (u16, Duration) {
    let start = Instant::now();
    let res = client().get(url).send().await.expect("request");
    (res.status().as_u16(), start.elapsed())
}

async fn statuses(url: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(url).await.0);
    }
    out
}

fn repeat(status: u16, n: usize) -> Vec<u16> {
    vec![status; n]
}

async fn metrics_of(url: &str) -> String {
    client()
        .get(format!("{url}/_kairos/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

async fn backend_up(base: &str) -> Option<f64> {
    metric(
        &metrics_of(base).await,
        "kairos_ratelimit_backend_up",
        &[("backend", "redis")],
    )
}

/// Waits until the gateway at `base` reports Redis reachable again.
async fn wait_backend_up(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while backend_up(base).await != Some(1.0) {
        assert!(Instant::now() < deadline, "Redis never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_one_limit_under_steady_load() {
    let redis = RedisServer::start();
    let up = Upstream::start_ok();
    // 100 requests/s for all gateways together, 50 at once: the burst also absorbs pauses of
    // up to 0.5 s in the offered load (a busy test machine), which would otherwise lose
    // capacity that no client asked for in time. With on_backend_error deny, a request Redis did
    // not decide (a call slower than redis_timeout on a busy machine) is a 503: it can be told
    // apart from a decision of the shared limit.
    let config = cfg(&up, &redis, r#""global":{"rps":100,"burst":50}"#, "deny");
    let gateways: Vec<Gateway> = (0..3).map(|_| Gateway::start(&config)).collect();
    // Connect each gateway's worker to Redis before the clock starts, through a route with a
    // budget of its own.
    for gw in &gateways {
        assert_eq!(get(&gw.url("/warm")).await.0, 200);
    }
    // Its bucket is in Redis with a TTL: the time it takes to refill (3 requests at 1/s).
    // The three gateways each sent one.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("kairos:rl:route:4:warm:global:")
        .query(&mut conn)
        .unwrap();
    assert!((2000..=3001).contains(&ttl), "PTTL {ttl}");

    // Each gateway is offered 100 requests/s: three times the limit, steadily, for 4 s.
    let window = Duration::from_secs(4);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for gw in &gateways {
        let url = gw.url("/api");
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            let mut inflight = Vec::new();
            while start.elapsed() < window {
                ticks.tick().await;
                let url = url.clone();
                inflight.push(tokio::spawn(async move { get(&url).await.0 }));
            }
            let mut statuses = Vec::new();
            for t in inflight {
                statuses.push(t.await.expect("request task"));
            }
            statuses
        }));
    }
    let mut per_gateway = Vec::new();
    for t in tasks {
        per_gateway.push(t.await.expect("client task"));
    }
    let all: Vec<u16> = per_gateway.concat();
    // Decisions were made while requests were sent (the 4 s window) and, on a busy machine,
    // for a while after as late ones arrived: the limit allows burst + rate × that span.
    let sent_for = window.as_secs_f64();
    let decided_for = start.elapsed().as_secs_f64();
    let admitted = all.iter().filter(|&&s| s == 200).count() as f64;
    let refused = all.iter().filter(|&&s| s == 429).count();
    let fell_back = all.iter().filter(|&&s| s == 503).count();
    assert_eq!(
        admitted as usize + refused + fell_back,
        all.len(),
        "every answer is 200 or 429 (Redis decided) or 503 (it did not)"
    );

    // Fallbacks first, told apart from the limit's accuracy. Each failed Redis call is one
    // backend error and one 503; requests that came while the backend was marked down are
    // 503s without a call.
    let mut errors = 0.0;
    let mut down = Vec::new();
    for (gw, statuses) in gateways.iter().zip(&per_gateway) {
        let text = metrics_of(&gw.url("")).await;
        let redis_decisions = metric(
            &text,
            "kairos_ratelimit_decision_duration_seconds_count",
            &[("backend", "redis")],
        )
        .unwrap_or(0.0);
        // Every 200 and 429 (and the warm-up) was a Redis decision, every 503 was not.
        let decided = statuses.iter().filter(|&&s| s != 503).count() + 1;
        assert_eq!(
            redis_decisions as usize,
            decided,
            "Redis decisions counted vs 200/429 answers of one gateway ({} requests, {} \
             fallbacks)",
            statuses.len(),
            statuses.len() + 1 - decided
        );
        assert!(
            decided * 2 > statuses.len(),
            "Redis decided only {decided} of this gateway's {} requests: the machine was too \
             busy for Redis to answer within redis_timeout; a fallback, not an inaccurate \
             limit",
            statuses.len()
        );
        errors += metric(
            &text,
            "kairos_ratelimit_backend_errors_total",
            &[("backend", "redis")],
        )
        .expect("the backend error counter");
        if backend_up(&gw.url("")).await != Some(1.0) {
            down.push(gw.url(""));
        }
    }
    assert!(
        errors as usize <= fell_back,
        "{errors} backend errors but only {fell_back} requests fell back"
    );
    if fell_back > 0 {
        println!(
            "Redis did not decide {fell_back} requests ({errors} failed calls, slower than \
             redis_timeout); still marked down at the end: {down:?}"
        );
    }

    // The limit, over what Redis decided. A request that fell back left its token in the
    // shared bucket for the next one (the load is three times the rate), so it costs the
    // count at most one admission: the lower bound drops by the fallbacks, and is exactly
    // the old one when Redis answered every call. The upper bound is not relaxed at all.
    let expected = 50.0 + 100.0 * sent_for;
    let least = 0.95 * expected - fell_back as f64;
    let most = 50.0 + 100.0 * decided_for;
    println!(
        "offered {} over {sent_for:.2} s (last answer at {decided_for:.2} s), admitted {admitted}, \
         expected {expected:.0} ({:.3}), {fell_back} not decided by Redis",
        all.len(),
        admitted / expected
    );
    assert!(
        admitted <= 1.05 * most,
        "Redis admitted {admitted}, more than {:.0} (expected {expected:.0}): the shared limit \
         is inaccurate",
        1.05 * most
    );
    // The lower bound holds only if the clients kept the load at three times the rate: capacity
    // no request asked for in time is lost. Say which of the two failed.
    let planned = 3 * (window.as_millis() / 10) as usize;
    assert!(
        admitted >= least || all.len() * 10 < planned * 9,
        "Redis admitted {admitted}, fewer than {least:.0} (expected {expected:.0}, {fell_back} \
         fallbacks): the shared limit is inaccurate"
    );
    assert!(
        admitted >= least,
        "Redis admitted {admitted}, fewer than {least:.0}, but the clients offered only {} of \
         {planned} planned requests in {sent_for:.1} s: the machine was too busy to keep up \
         the load, so the lower bound could not be tested",
        all.len()
    );
    // Only admitted requests (and the three warm-ups) reached the upstream.
    assert_eq!(up.count(), admitted as usize + 3);
}

#[tokio::test]
async fn in_redis_a_refusal_by_one_limit_leaves_the_others_untouched() {
    let redis = RedisServer::start();
    let up = Upstream::start_ok();
    let config = cfg(
        &up,
        &redis,
        r#""ietf_headers":true,"per_ip":{"rps":0.01,"burst":2},"global":{"rps":0.01,"burst":3}"#,
        "deny",
    )
    .replace(
        r#""workers":1"#,
        r#""workers":1,"trusted_proxies":["127.0.0.1/32"]"#,
    );
    let gw = Gateway::start(&config);
    let c = client();
    let send = |ip: &'static str| {
        let c = c.clone();
        let url = gw.url("/api");
        async move {
            c.get(url)
                .header("x-forwarded-for", ip)
                .send()
                .await
                .expect("request")
        }
    };
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(send("192.0.2.10").await.status().as_u16());
    }
    assert_eq!(a, [200, 200, 429], "per_ip");
    assert_eq!(send("192.0.2.11").await.status(), 200);
    // Global is spent (3): B's second is refused by global alone, and its per-IP bucket keeps
    // the one request it has left.
    let res = send("192.0.2.11").await;
    assert_eq!(res.status(), 429);
    let state = res.headers()["ratelimit"].to_str().unwrap().to_string();
    assert!(state.starts_with(r#""per_ip";r=1;"#), "{state}");
    assert!(state.contains(r#""global";r=0;"#), "{state}");
}

#[test]
fn redis_killed_falls_back_to_local_limits_warns_once_and_recovers() {
    let mut redis = RedisServer::start();
    let up = Upstream::start_ok();
    // Info level: the test reads the warning and the recovery from the log.
    let gw = GatewayProcess::start(
        &cfg(&up, &redis, r#""global":{"rps":0.01,"burst":5}"#, "allow")
            .replace(r#""level":"error""#, r#""level":"info""#),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = gw.url("/api");
    let base = gw.url("");
    rt.block_on(async {
        let mut want = repeat(200, 5);
        want.push(429);
        assert_eq!(statuses(&url, 6).await, want, "the shared limit, in Redis");
    });

    redis.kill();
    rt.block_on(async {
        // The local fallback limiter enforces the same limit in this instance alone.
        let mut got = Vec::new();
        for _ in 0..20 {
            let (status, took) = get(&url).await;
            assert!(took < Duration::from_secs(2), "a request took {took:?}");
            got.push(status);
        }
        let mut want = repeat(200, 5);
        want.extend(repeat(429, 15));
        assert_eq!(got, want);
        let text = metrics_of(&base).await;
        assert_eq!(
            metric(
                &text,
                "kairos_ratelimit_backend_up",
                &[("backend", "redis")]
            ),
            Some(0.0)
        );
        assert!(
            metric(
                &text,
                "kairos_ratelimit_backend_errors_total",
                &[("backend", "redis")]
            ) >= Some(1.0)
        );
        assert_eq!(
            metric(
                &text,
                "kairos_ratelimit_decision_duration_seconds_count",
                &[("backend", "fallback")]
            ),
            Some(20.0)
        );
    });
    let warnings = |text: &str| gw.logs().iter().filter(|l| l.contains(text)).count();
    assert_eq!(
        warnings("rate limit backend unreachable"),
        1,
        "{:#?}",
        gw.logs()
    );
    assert!(
        !gw.logs().iter().any(|l| l.contains("redis://")),
        "the Redis URL is never logged"
    );

    redis.restart();
    rt.block_on(async {
        wait_backend_up(&base).await;
        // A fresh Redis: the shared bucket starts full again.
        let mut want = repeat(200, 5);
        want.push(429);
        assert_eq!(statuses(&url, 6).await, want);
    });
    assert_eq!(warnings("rate limit backend reachable again"), 1);
    assert_eq!(warnings("rate limit backend unreachable"), 1);
}

#[tokio::test]
async fn redis_down_with_deny_answers_503_then_recovers() {
    let mut redis = RedisServer::start();
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        &redis,
        r#""per_ip":{"rps":100,"burst":100}"#,
        "deny",
    ));
    let url = gw.url("/api");
    assert_eq!(get(&url).await.0, 200);
    redis.kill();
    let res = client().get(&url).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limiter_unavailable");
    assert_eq!(statuses(&url, 3).await, repeat(503, 3));
    assert_eq!(up.count(), 1);

    redis.restart();
    wait_backend_up(&gw.url("")).await;
    assert_eq!(statuses(&url, 3).await, repeat(200, 3));
}

#[tokio::test]
async fn a_stalled_redis_costs_at_most_the_timeout() {
    let redis = RedisServer::start();
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        &redis,
        r#""redis_timeout":"100ms","per_ip":{"rps":100,"burst":100}"#,
        "allow",
    ));
    let url = gw.url("/api");
    assert_eq!(get(&url).await.0, 200);
    redis.pause();
    for _ in 0..10 {
        let (status, took) = get(&url).await;
        assert_eq!(status, 200);
        // The first three wait for the timeout (100 ms): after three failures in a row the
        // backend is down and the rest go straight to the fallback.
        assert!(took < Duration::from_secs(1), "a request took {took:?}");
    }
    let text = metrics_of(&gw.url("")).await;
    assert_eq!(
        metric(
            &text,
            "kairos_ratelimit_backend_up",
            &[("backend", "redis")]
        ),
        Some(0.0)
    );
    redis.resume();
    wait_backend_up(&gw.url("")).await;
    assert_eq!(get(&url).await.0, 200);
    let text = metrics_of(&gw.url("")).await;
    let redis_decisions = metric(
        &text,
        "kairos_ratelimit_decision_duration_seconds_count",
        &[("backend", "redis")],
    );
    assert_eq!(redis_decisions, Some(2.0));
}

#[tokio::test]
async fn a_gateway_started_while_redis_is_down_serves_and_picks_it_up_later() {
    let mut redis = RedisServer::start();
    redis.kill();
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        &redis,
        r#""per_ip":{"rps":0.01,"burst":2}"#,
        "allow",
    ));
    let url = gw.url("/api");
    assert_eq!(statuses(&url, 3).await, [200, 200, 429]);
    redis.restart();
    wait_backend_up(&gw.url("")).await;
    assert_eq!(statuses(&url, 3).await, [200, 200, 429]);
}
