//! The response cache's Redis and hybrid tiers, with a real redis-server started by the test
//! and two gateway processes sharing it: an answer stored by one is a HIT on the other (the
//! upstream's count proves it), a purge on one removes it for both, Redis killed mid-test
//! never fails a request (bypass with `redis`, memory with `hybrid`) and is picked up again
//! after a restart, and a malformed record in Redis is a miss, counted.

mod support;

use std::time::{Duration, Instant};
use support::*;

const ADMIN: &str = "cache-redis-admin-token-0123456789";

fn cfg(up: &Upstream, redis: &RedisServer, backend: &str) -> String {
    // Info: the process support waits for the "listening" line.
    config(
        &up.url(),
        r#"[{"name":"c","path":"/{*rest}","upstream":"u","cache":{}}]"#,
        &format!(
            r#""admin":{{"token":"{ADMIN}"}},
               "caching":{{"backend":"{backend}","redis_url":"{}","redis_timeout":"500ms"}}"#,
            redis.url()
        ),
    )
    .replace(r#""level":"error""#, r#""level":"info""#)
}

/// An upstream whose answers are fresh for a minute, vary on Accept-Encoding under `/v`, and
/// say which request of their path they answer.
fn upstream() -> Upstream {
    let seen = std::sync::Mutex::new(std::collections::HashMap::<String, usize>::new());
    Upstream::start(move |r| {
        let n = {
            let mut seen = seen.lock().expect("counts");
            let n = seen.entry(r.target.clone()).or_default();
            *n += 1;
            *n
        };
        let reply = Reply::ok(&format!(
            "{} #{n} {}",
            r.target,
            r.header("accept-encoding").unwrap_or("-")
        ))
        .header("cache-control", "max-age=60");
        match r.target.starts_with("/v") {
            true => reply.header("vary", "Accept-Encoding"),
            false => reply,
        }
    })
}

fn hits(up: &Upstream, path: &str) -> usize {
    up.requests().iter().filter(|r| r.target == path).count()
}

/// The Host every request names: instances behind one name share answers (each gateway
/// listens on its own port, and an answer is kept per the host the upstream is told about).
const HOST: &str = "api.example";

/// Status, X-Cache, body.
async fn get(gw: &GatewayProcess, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = client().get(gw.url(path)).header("host", HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let x = res
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, x, res.text().await.expect("body"))
}

/// Polls until `path` answers with X-Cache `want` (at most 10 s): the last answer.
async fn until(gw: &GatewayProcess, path: &str, want: &str) -> (u16, String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(gw, path, &[]).await;
        if a.1 == want || Instant::now() > deadline {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn purge(gw: &GatewayProcess, body: &str) -> u64 {
    let res = client()
        .delete(gw.url("/_kairos/cache"))
        .bearer_auth(ADMIN)
        .body(body.to_string())
        .send()
        .await
        .expect("purge");
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.expect("json");
    v["purged"].as_u64().expect("purged")
}

/// `GET /_kairos/cache`.
async fn inspect(gw: &GatewayProcess) -> serde_json::Value {
    let res = client()
        .get(gw.url("/_kairos/cache"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("inspect");
    assert_eq!(res.status(), 200);
    res.json().await.expect("json")
}

async fn redis_errors(gw: &GatewayProcess) -> f64 {
    let text = client()
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    metric(&text, "kairos_cache_redis_errors_total", &[]).unwrap_or(0.0)
}

/// The keys of the Redis on `port` that match `pattern` (SCAN).
async fn redis_keys(port: u16, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .query_async(&mut c)
            .await
            .expect("scan");
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// The TTL (ms) Redis gives each of the keys matching `pattern`.
async fn ttls(port: u16, pattern: &str) -> Vec<i64> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut out = Vec::new();
    for key in redis_keys(port, pattern).await {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .expect("pttl");
        out.push(ttl);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_stored_by_one_instance_is_a_hit_on_the_other_and_purged_for_both() {
    let redis = RedisServer::start();
    let up = upstream();
    let a = GatewayProcess::start(&cfg(&up, &redis, "redis"));
    let b = GatewayProcess::start(&cfg(&up, &redis, "redis"));
    let first = get(&a, "/x", &[]).await;
    assert_eq!((first.0, first.1.as_str()), (200, "MISS"));
    let other = until(&b, "/x", "HIT").await;
    assert_eq!((other.1.as_str(), other.2.as_str()), ("HIT", "/x #1 -"));
    assert_eq!(hits(&up, "/x"), 1, "the other instance asked the upstream");
    // Kept in Redis for its freshness (60 s) and the route ttl (300 s) after it.
    let kept = ttls(redis.port, "kairos:cache:*").await;
    assert_eq!(kept.len(), 2, "an index and a record");
    assert!(
        kept.iter().all(|t| (300_000..=360_000).contains(t)),
        "{kept:?}"
    );

    // Vary: the other instance gets the stored variant only for the same normalised value.
    get(&a, "/v", &[("accept-encoding", "gzip, br")]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let same = loop {
        let s = get(&b, "/v", &[("accept-encoding", "BR,gzip")]).await;
        if s.1 == "HIT" || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        (same.1.as_str(), same.2.as_str()),
        ("HIT", "/v #1 gzip, br")
    );
    let other_variant = get(&b, "/v", &[("accept-encoding", "identity")]).await;
    assert_eq!(
        (other_variant.1.as_str(), other_variant.2.as_str()),
        ("MISS", "/v #2 identity")
    );
    assert_eq!(hits(&up, "/v"), 2);
    // The inspection shows what the shared tier holds (3 answers: /x and two variants of /v),
    // on the instance that stored none of them too.
    for gw in [&a, &b] {
        let v = inspect(gw).await;
        assert_eq!(v["backend"], "redis");
        assert_eq!(
            v["redis"],
            serde_json::json!({"status": "ok", "entries": 3}),
            "{v}"
        );
        assert_eq!(v["routes"][0]["redis_entries"], 3, "{v}");
    }

    // A purge on one instance removes the answer for both.
    assert_eq!(purge(&a, r#"{"prefix":"/x"}"#).await, 1);
    assert_eq!(get(&b, "/x", &[]).await.1, "MISS");
    assert_eq!(hits(&up, "/x"), 2);
    until(&a, "/x", "HIT").await;
    assert_eq!(purge(&b, r#"{"key":"GET:/x:"}"#).await, 1);
    assert_eq!(get(&a, "/x", &[]).await.1, "MISS");
    // By route, then all: every variant counts, and nothing is left in Redis.
    until(&b, "/x", "HIT").await;
    assert_eq!(purge(&b, r#"{"route":"c"}"#).await, 3);
    assert_eq!(purge(&a, r#"{"all":true}"#).await, 0);
    assert!(redis_keys(redis.port, "kairos:cache:*").await.is_empty());
    assert_eq!(inspect(&b).await["redis"]["entries"], 0);
    assert_eq!(redis_errors(&a).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_never_fails_a_request_and_is_picked_up_again() {
    let mut redis = RedisServer::start();
    let up = upstream();
    let shared = GatewayProcess::start(&cfg(&up, &redis, "redis"));
    let hybrid = GatewayProcess::start(&cfg(&up, &redis, "hybrid"));
    get(&hybrid, "/kept", &[]).await;
    assert_eq!(until(&hybrid, "/kept", "HIT").await.1, "HIT");
    // hybrid: the Redis copy lives at most l2_ttl (default 300 s). The memory copy answers
    // as soon as it is stored; the Redis writes (index and record) may still be on their way.
    let mut kept = Vec::new();
    for _ in 0..200 {
        kept = ttls(redis.port, "kairos:cache:*").await;
        if kept.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        kept.len() == 2 && kept.iter().all(|t| (1..=300_000).contains(t)),
        "{kept:?}"
    );

    redis.kill();
    // redis: every request bypasses the cache, none fails.
    for i in 0..5 {
        let (status, x, body) = get(&shared, "/down", &[]).await;
        assert_eq!((status, x.as_str()), (200, "MISS"), "request {i}");
        assert_eq!(body, format!("/down #{} -", i + 1));
    }
    assert_eq!(hits(&up, "/down"), 5);
    // hybrid: the memory tier goes on: what it holds, and what it stores meanwhile.
    assert_eq!(get(&hybrid, "/kept", &[]).await.1, "HIT");
    assert_eq!(get(&hybrid, "/meanwhile", &[]).await.1, "MISS");
    assert_eq!(get(&hybrid, "/meanwhile", &[]).await.1, "HIT");
    assert_eq!(hits(&up, "/kept"), 1);
    assert_eq!(hits(&up, "/meanwhile"), 1);
    assert!(redis_errors(&shared).await > 0.0);
    assert!(redis_errors(&hybrid).await > 0.0);
    // The inspection says the shared tier is unreachable, and still answers the memory tier.
    let v = inspect(&hybrid).await;
    assert_eq!(v["redis"]["status"], "unreachable", "{v}");
    assert!(v["entries"].as_u64().unwrap_or(0) >= 2, "{v}");

    redis.restart();
    // Back: an answer stored by one instance is a HIT on the other again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let path = format!("/after{n}");
        assert_eq!(get(&hybrid, &path, &[]).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if get(&shared, &path, &[]).await.1 == "HIT" {
            assert_eq!(hits(&up, &path), 1);
            break;
        }
        assert!(Instant::now() < deadline, "Redis was never used again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_in_redis_is_a_miss_and_counted() {
    let redis = RedisServer::start();
    let up = upstream();
    let gw = GatewayProcess::start(&cfg(&up, &redis, "redis"));
    get(&gw, "/m", &[]).await;
    until(&gw, "/m", "HIT").await;
    let records = redis_keys(redis.port, "kairos:cache:e:*").await;
    assert_eq!(records.len(), 1);
    let client = redis::Client::open(redis.url()).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    for (i, garbage) in [b"not a record".as_slice(), b"KC1\0\x00\xc8\xff\xff"]
        .iter()
        .enumerate()
    {
        let _: () = redis::cmd("SET")
            .arg(&records[0])
            .arg(*garbage)
            .query_async(&mut c)
            .await
            .expect("set");
        let before = redis_errors(&gw).await;
        let (status, x, body) = get(&gw, "/m", &[]).await;
        assert_eq!((status, x.as_str()), (200, "MISS"), "garbage {i}");
        assert_eq!(body, format!("/m #{} -", i + 2));
        assert!(redis_errors(&gw).await > before, "garbage {i} not counted");
        // The fetch stored a good record again.
        until(&gw, "/m", "HIT").await;
    }
    // An index naming a header that is not one: a miss, counted.
    let index = redis_keys(redis.port, "kairos:cache:i:*").await;
    assert_eq!(index.len(), 1);
    let _: () = redis::cmd("HSET")
        .arg(&index[0])
        .arg("names")
        .arg("bad name")
        .query_async(&mut c)
        .await
        .expect("hset");
    let before = redis_errors(&gw).await;
    let (status, x, _) = get(&gw, "/m", &[]).await;
    assert_eq!((status, x.as_str()), (200, "MISS"));
    assert!(redis_errors(&gw).await > before, "a bad index not counted");
    // An index that is not a hash is no crash either.
    let _: () = redis::cmd("DEL")
        .arg(&index[0])
        .query_async(&mut c)
        .await
        .expect("del");
    let _: () = redis::cmd("SET")
        .arg(&index[0])
        .arg("x")
        .query_async(&mut c)
        .await
        .expect("set");
    assert_eq!(get(&gw, "/m", &[]).await.0, 200);
    assert_eq!(purge(&gw, r#"{"all":true}"#).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_purges_and_invalidations_reach_the_other_instances_memory() {
    let redis = RedisServer::start();
    let up = upstream();
    let a = GatewayProcess::start(&cfg(&up, &redis, "hybrid"));
    let b = GatewayProcess::start(&cfg(&up, &redis, "hybrid"));
    // b's memory holds a copy of what a stored (read from Redis once, then from memory).
    for (stored, path) in ["/h", "/w"].into_iter().enumerate() {
        get(&a, path, &[]).await;
        // a writes its record to Redis as the response ends: b asked before that would miss
        // and fetch the answer itself.
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_keys(redis.port, "kairos:cache:e:*").await.len() <= stored {
            assert!(Instant::now() < deadline, "{path} never reached Redis");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(until(&b, path, "HIT").await.1, "HIT", "{path}");
        assert_eq!(get(&b, path, &[]).await.1, "HIT", "{path}");
        assert_eq!(hits(&up, path), 1, "{path}");
    }
    // A purge on a: b's memory copy goes too (the broadcast arrives shortly after).
    assert_eq!(purge(&a, r#"{"prefix":"/h"}"#).await, 1);
    let again = until(&b, "/h", "MISS").await;
    assert_eq!((again.1.as_str(), again.2.as_str()), ("MISS", "/h #2 -"));
    // An unsafe method on a invalidates the URI in b's memory as well.
    let res = client()
        .post(a.url("/w"))
        .header("host", HOST)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);
    let after = until(&b, "/w", "MISS").await;
    assert_eq!(after.1, "MISS");
    assert_eq!(
        hits(&up, "/w"),
        3,
        "the first GET, the POST and the GET after it"
    );
}
