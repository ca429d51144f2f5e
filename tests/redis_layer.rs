//! The shared Redis layer against real servers started by each test on free loopback ports:
//! mutual TLS (a redis-server with `--tls-auth-clients yes` and certificates made here), a
//! Sentinel group (one master, one replica, three sentinels) failing over under load, a
//! three-master Cluster holding rate limits, quotas and the response cache, the cache shared
//! over TLS and through Sentinel, and passwords in `redis_url` kept out of logs and answers.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

const ADMIN: &str = "redis-layer-admin-token-0123456789";

fn get(c: &reqwest::blocking::Client, url: &str, tenant: Option<&str>) -> u16 {
    let mut req = c.get(url);
    if let Some(t) = tenant {
        req = req.header("X-Tenant-Id", t);
    }
    req.send().expect("request").status().as_u16()
}

fn ready(c: &reqwest::blocking::Client, gw: &Gateway) -> (u16, Value) {
    let res = c.get(gw.url("/_kairos/ready")).send().expect("ready");
    (res.status().as_u16(), res.json().expect("ready json"))
}

fn metrics(c: &reqwest::blocking::Client, gw: &Gateway) -> String {
    c.get(gw.url("/_kairos/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .expect("metrics")
        .text()
        .expect("metrics body")
}

fn redis_up(c: &reqwest::blocking::Client, gw: &Gateway, role: &str) -> Option<f64> {
    metric(&metrics(c, gw), "kairos_redis_up", &[("role", role)])
}

/// A gateway config: `/api` limited per IP (3 at once, then 1 per 100 s) and globally (5 at
/// once), `/open` unlimited; tenants `acme` (3 a day) and `globex` (5 a day) identified by
/// header; rate limits and quotas in the Redis `redis` names (`tls`: its `redis_tls`).
fn gateway_config(up: &Upstream, redis: Value, tls: Option<Value>, on_error: &str) -> String {
    let mut rl = json!({
        "backend": "redis", "on_backend_error": on_error, "redis_timeout": "500ms",
        "per_ip": {"rps": 0.01, "burst": 3}, "global": {"rps": 0.01, "burst": 5}
    });
    let mut store = json!({"backend": "redis"});
    for v in [&mut rl, &mut store] {
        v["redis_url"] = redis.clone();
        if let Some(t) = &tls {
            v["redis_tls"] = t.clone();
        }
    }
    json!({
        "admin": {"token": ADMIN, "watch_config": false},
        "upstreams": {"u": {"servers": [{"url": up.url()}]}},
        "routes": [
            {"name": "api", "path": "/api", "upstream": "u"},
            {"name": "open", "path": "/open", "upstream": "u", "rate_limit": {"inherit": false}}
        ],
        "logging": {"access_log": false},
        "rate_limiting": rl,
        "tenancy": {"identify_by": ["header"], "quota_store": store},
        "tenants": {
            "acme": {"quotas": {"daily_requests": 3, "monthly_requests": 1000}},
            "globex": {"quotas": {"daily_requests": 5, "monthly_requests": 1000}}
        }
    })
    .to_string()
}

/// `/api` from one client: three admitted, then the per-IP limit refuses (429, not the 503
/// that `on_backend_error: deny` answers when Redis did not decide). `acme` and `globex`
/// each get their daily quota on `/open` and no more.
fn assert_limits_and_quotas_hold(c: &reqwest::blocking::Client, gw: &Gateway) {
    let api: Vec<u16> = (0..5).map(|_| get(c, &gw.url("/api"), None)).collect();
    assert_eq!(api, [200, 200, 200, 429, 429]);
    let acme: Vec<u16> = (0..4)
        .map(|_| get(c, &gw.url("/open"), Some("acme")))
        .collect();
    assert_eq!(acme, [200, 200, 200, 429]);
    let globex: Vec<u16> = (0..6)
        .map(|_| get(c, &gw.url("/open"), Some("globex")))
        .collect();
    assert_eq!(globex, [200, 200, 200, 200, 200, 429]);
}

#[test]
fn mutual_tls_carries_rate_limits_and_quotas_and_a_missing_certificate_is_reported() {
    let pki = TestPki::new("redis");
    let redis = RedisServer::start_tls(&pki);
    let up = Upstream::start_ok();
    let c = blocking_client();
    let tls = json!({"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key});
    let gw = Gateway::start(&gateway_config(&up, json!(redis.url()), Some(tls), "deny"));
    assert_limits_and_quotas_hold(&c, &gw);
    let (status, body) = ready(&c, &gw);
    assert_eq!(status, 200, "{body}");
    for role in ["rate_limit", "quota"] {
        assert_eq!(
            body["redis"][role],
            json!({"target": "single", "status": "ok"}),
            "{body}"
        );
    }
    assert_eq!(redis_up(&c, &gw, "rate_limit"), Some(1.0));
    assert_eq!(redis_up(&c, &gw, "quota"), Some(1.0));
    // No cache in this config: no series for it.
    assert_eq!(redis_up(&c, &gw, "cache"), None);

    // The counts are in that Redis (read over TLS with the same certificates).
    let client = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(&pki.client_cert).unwrap(),
                client_key: std::fs::read(&pki.client_key).unwrap(),
            }),
            root_cert: Some(std::fs::read(&pki.ca).unwrap()),
        },
    )
    .unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("kairos:*").query(&mut conn).unwrap();
    assert!(
        keys.iter().any(|k| k.starts_with("kairos:rl:per_ip:")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("kairos:quota:4:acme:d:")),
        "{keys:?}"
    );

    // Without a client certificate the server refuses the handshake: with deny, limited
    // routes answer 503 and the gateway is not ready; the quota store admits uncounted.
    let ca_only = json!({"ca_file": pki.ca});
    let gw = Gateway::start(&gateway_config(
        &up,
        json!(redis.url()),
        Some(ca_only),
        "deny",
    ));
    assert_eq!(get(&c, &gw.url("/api"), None), 503);
    let (status, body) = ready(&c, &gw);
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["redis"]["rate_limit"]["status"], "unreachable",
        "{body}"
    );
    assert_eq!(body["redis"]["quota"]["status"], "unreachable", "{body}");
    assert!(body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["check"] == "rate_limit_backend"));
    assert_eq!(redis_up(&c, &gw, "rate_limit"), Some(0.0));
    assert_eq!(get(&c, &gw.url("/open"), Some("acme")), 200);

    // A server certificate from another CA is not trusted either.
    let other = TestPki::new("other");
    let wrong_ca =
        json!({"ca_file": other.ca, "cert_file": pki.client_cert, "key_file": pki.client_key});
    let gw = Gateway::start(&gateway_config(
        &up,
        json!(redis.url()),
        Some(wrong_ca),
        "deny",
    ));
    assert_eq!(get(&c, &gw.url("/api"), None), 503);
    assert_eq!(
        ready(&c, &gw).1["redis"]["rate_limit"]["status"],
        "unreachable"
    );
}

#[test]
fn sentinels_and_master_over_mutual_tls() {
    let pki = TestPki::new("sentinel-tls");
    let master = RedisServer::start_tls(&pki);
    let sentinel = Sentinel::start_tls("tlsmaster", master.port, &pki);
    let up = Upstream::start_ok();
    let c = blocking_client();
    let tls = json!({"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key});
    let url = format!("rediss+sentinel://127.0.0.1:{}/tlsmaster", sentinel.port);
    let gw = Gateway::start(&gateway_config(&up, json!(url), Some(tls), "deny"));
    // The sentinel may need a moment to reach the master before it names it.
    poll(10, "the gateway to reach the master", || {
        ready(&c, &gw).1["redis"]["rate_limit"]["status"] == "ok"
    });
    assert_limits_and_quotas_hold(&c, &gw);
    assert_eq!(
        ready(&c, &gw).1["redis"]["quota"],
        json!({"target": "sentinel", "status": "ok"})
    );
}

#[test]
fn redis_settings_are_checked_when_the_config_is_read() {
    let up = Upstream::start_ok();
    let load = |url: &str, tls: Value| {
        kairos_rs::config::load_str(
            &gateway_config(&up, json!(url), Some(tls), "allow"),
            "t",
            std::path::Path::new("."),
        )
        .unwrap_err()
        .to_string()
    };
    let e = load("redis://127.0.0.1:1", json!({"ca_file": "/etc/hostname"}));
    assert!(e.contains("rate_limiting.redis_tls"), "{e}");
    assert!(e.contains("applies only to a TLS URL"), "{e}");
    let e = load(
        "rediss://127.0.0.1:1",
        json!({"cert_file": "/etc/hostname"}),
    );
    assert!(e.contains("needs both `cert_file` and `key_file`"), "{e}");
    let e = load(
        "rediss://127.0.0.1:1",
        json!({"ca_file": "/nonexistent/ca.pem"}),
    );
    assert!(e.contains("rate_limiting.redis_tls.ca_file"), "{e}");
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    // On a Cluster the hash tag follows the key prefix: a brace in it is refused.
    let mut cfg: Value = serde_json::from_str(&gateway_config(
        &up,
        json!("redis+cluster://127.0.0.1:1,127.0.0.1:2"),
        None,
        "allow",
    ))
    .unwrap();
    cfg["rate_limiting"]["key_prefix"] = json!("kairos:{rl}:");
    let e = kairos_rs::config::load_str(&cfg.to_string(), "t", std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rate_limiting.key_prefix"), "{e}");
    assert!(e.contains("must not hold `{` or `}`"), "{e}");
    // The same prefix on a single Redis is fine (the quota store stays on the Cluster).
    cfg["rate_limiting"]["redis_url"] = json!("redis://127.0.0.1:1");
    kairos_rs::config::load_str(&cfg.to_string(), "t", std::path::Path::new("."))
        .expect("braces in a single Redis' prefix");
}

/// Waits until `check` holds, polling every 50 ms, for at most `secs` seconds.
fn poll(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn evalsha_calls(r: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut r.connection())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A master, its replica and three sentinels watching it as `mymaster`; returned once every
/// sentinel knows the replica (in sync) and the two other sentinels, so that a failover can
/// promote it whether asked for or voted on.
fn sentinel_group() -> (RedisServer, RedisServer, Vec<Sentinel>) {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica(master.port);
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start("mymaster", master.port))
        .collect();
    type Entries = Vec<std::collections::HashMap<String, String>>;
    let ask = |s: &Sentinel, what: &str| -> Entries {
        redis::cmd("SENTINEL")
            .arg(what)
            .arg("mymaster")
            .query(&mut s.connection())
            .unwrap_or_default()
    };
    poll(
        30,
        "the sentinels to see the replica and each other",
        || {
            sentinels.iter().all(|s| {
                ask(s, "REPLICAS").iter().any(|x| {
                    x.get("port") == Some(&replica.port.to_string())
                        && x.get("master-link-status").map(String::as_str) == Some("ok")
                }) && ask(s, "SENTINELS").len() == 2
            })
        },
    );
    (master, replica, sentinels)
}

/// The most a 20/s limit with a burst of 10 admits in `elapsed` seconds across one Redis
/// outage: the rate, three bursts (Redis at the start, the fallback during the outage, Redis
/// refilled meanwhile) and 5 decisions replication may have lost.
fn most_admitted(elapsed: f64) -> f64 {
    20.0 * elapsed + 3.0 * 10.0 + 5.0
}

/// A gateway limiting `/api` to 20 requests/s for everyone (10 at once) in the Redis the
/// sentinels name; Redis' absence falls back to this instance's own buckets (allow).
fn sentinel_gateway(up: &Upstream, sentinels: &[Sentinel]) -> Gateway {
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("redis+sentinel://{}/mymaster", hosts.join(","));
    Gateway::start(&config(
        &up.url(),
        r#"[{"name":"api","path":"/api","upstream":"u"}]"#,
        &format!(
            r#""admin":{{"token":"{ADMIN}"}},
               "rate_limiting":{{"backend":"redis","redis_url":"{url}","on_backend_error":"allow",
                                 "redis_timeout":"200ms","global":{{"rps":20,"burst":10}}}}"#
        ),
    ))
}

#[test]
fn a_sentinel_failover_under_load_keeps_rate_limiting_and_moves_to_the_new_master() {
    let (master, replica, sentinels) = sentinel_group();
    let up = Upstream::start_ok();
    let gw = sentinel_gateway(&up, &sentinels);
    let c = blocking_client();
    let (status, body) = ready(&c, &gw);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["redis"]["rate_limit"],
        json!({"target": "sentinel", "status": "ok"})
    );

    // About 60 requests/s offered (three times the limit) for 9 s, from 3 clients; the
    // failover is asked for 2 s in.
    let window = Duration::from_secs(9);
    let start = Instant::now();
    let url = gw.url("/api");
    let loads: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let c = blocking_client();
                let mut out = Vec::new();
                while start.elapsed() < window {
                    let t = start.elapsed();
                    out.push((t, get(&c, &url, None)));
                    std::thread::sleep(
                        Duration::from_millis(50).saturating_sub(start.elapsed() - t),
                    );
                }
                out
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let before = evalsha_calls(&master);
    assert!(
        before > 0,
        "decisions went to the master before the failover"
    );
    let asked_at = start.elapsed();
    let _: String = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("mymaster")
        .query(&mut sentinels[0].connection())
        .expect("SENTINEL FAILOVER");
    poll(20, "the sentinels to name the replica as master", || {
        sentinels
            .iter()
            .all(|s| s.master_port("mymaster") == Some(replica.port))
    });
    let switched_at = start.elapsed();
    // The sentinels leave the old master up and writable for seconds after the switch (they
    // demote it later): decisions move at once only because the gateway retires its
    // connections on the sentinels' +switch-master announcement. (A replica runs no EVALSHA:
    // scripts replicate as their effects.)
    poll(
        3,
        "decisions on the new master within 3 s of the switch",
        || evalsha_calls(&replica) > 0,
    );
    let mut results: Vec<(Duration, u16)> = Vec::new();
    for l in loads {
        results.extend(l.join().expect("load thread"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        switched_at < window - Duration::from_secs(2),
        "the failover took too long to test the load after it ({switched_at:?})"
    );
    // Every answer is a decision: admitted or limited, never an error.
    assert!(
        results.iter().all(|(_, s)| *s == 200 || *s == 429),
        "{results:?}"
    );
    let admitted = results.iter().filter(|(_, s)| *s == 200).count() as f64;
    // The limit holds through the failover: at most the rate over the window plus a burst
    // for each bucket switch (the Redis bucket at the start, the fallback's own while Redis was
    // unavailable, the Redis bucket refilled meanwhile), plus the few writes that asynchronous
    // replication may not have carried to the replica.
    let most = most_admitted(elapsed);
    assert!(admitted <= most, "admitted {admitted} > {most}");
    // And it did not refuse what the limit allows (a busy machine offers less than asked).
    assert!(admitted >= 20.0 * elapsed * 0.6, "admitted only {admitted}");
    // Still limiting after the switch, and still admitting.
    let after: Vec<u16> = results
        .iter()
        .filter(|(t, _)| *t > switched_at + Duration::from_millis(500))
        .map(|(_, s)| *s)
        .collect();
    assert!(after.contains(&429) && after.contains(&200), "{after:?}");
    let during = results.iter().filter(|(t, _)| *t >= asked_at).count();
    assert!(
        during > 50,
        "load went on through the failover ({during} requests)"
    );

    // Decisions go to the new master now (the old one is a replica: READONLY).
    let promoted = evalsha_calls(&replica);
    poll(10, "a decision on the new master", || {
        get(&c, &url, None);
        evalsha_calls(&replica) > promoted
    });
    poll(10, "the backend up again", || {
        metric(
            &metrics(&c, &gw),
            "kairos_ratelimit_backend_up",
            &[("backend", "redis")],
        ) == Some(1.0)
    });
    assert_eq!(redis_up(&c, &gw, "rate_limit"), Some(1.0));
    // The old master is not used any more, although the sentinels leave it up and
    // writable for seconds after the switch (they demote it later): the gateway retired its
    // connections on the sentinels' +switch-master announcement.
    let (old, new) = (evalsha_calls(&master), evalsha_calls(&replica));
    for _ in 0..10 {
        get(&c, &url, None);
    }
    assert_eq!(
        evalsha_calls(&master),
        old,
        "a decision went to the old master"
    );
    assert!(evalsha_calls(&replica) >= new + 10);
}

#[test]
fn the_master_killed_under_load_fails_over_and_rate_limiting_goes_on() {
    let (mut master, replica, sentinels) = sentinel_group();
    let up = Upstream::start_ok();
    let gw = sentinel_gateway(&up, &sentinels);
    let c = blocking_client();
    let url = gw.url("/api");
    // About 40 requests/s (twice the limit) from one client until the test is done.
    let start = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, stop) = (url.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = blocking_client();
            let mut out = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                out.push((start.elapsed(), get(&c, &url, None)));
                std::thread::sleep(Duration::from_millis(25));
            }
            out
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    assert!(evalsha_calls(&master) > 0);
    master.kill();
    let killed_at = start.elapsed();
    // The sentinels see it down after 1 s, agree (quorum 2) and promote the replica.
    poll(30, "the sentinels to promote the replica", || {
        sentinels
            .iter()
            .all(|s| s.master_port("mymaster") == Some(replica.port))
    });
    // The gateway's probe finds the new master through the sentinels.
    poll(15, "decisions on the new master", || {
        evalsha_calls(&replica) > 0
    });
    poll(10, "the backend up again", || {
        metric(
            &metrics(&c, &gw),
            "kairos_ratelimit_backend_up",
            &[("backend", "redis")],
        ) == Some(1.0)
    });
    let back_at = start.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = load.join().expect("load thread");
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        results.iter().all(|(_, s)| *s == 200 || *s == 429),
        "only decisions, no errors: {results:?}"
    );
    let admitted = results.iter().filter(|(_, s)| *s == 200).count() as f64;
    let most = most_admitted(elapsed);
    assert!(admitted <= most, "admitted {admitted} > {most}");
    // Limited during the outage (the fallback's buckets) and after it (Redis again).
    let refused_between = |from: Duration, to: Duration| {
        results
            .iter()
            .any(|(t, s)| *t > from && *t < to && *s == 429)
    };
    assert!(refused_between(
        killed_at + Duration::from_millis(1500),
        back_at
    ));
    assert!(refused_between(back_at, Duration::MAX));
    assert_eq!(redis_up(&c, &gw, "rate_limit"), Some(1.0));
    assert_eq!(ready(&c, &gw).1["redis"]["rate_limit"]["status"], "ok");
}

#[test]
fn a_cluster_holds_multi_key_rate_limits_and_quotas_each_decision_in_one_slot() {
    let cluster = RedisCluster::start(3);
    let up = Upstream::start_ok();
    let c = blocking_client();
    // deny: an answer that Redis did not decide (a CROSSSLOT error, say) would be a 503.
    let gw = Gateway::start(&gateway_config(&up, json!(cluster.url()), None, "deny"));
    assert_limits_and_quotas_hold(&c, &gw);
    let (status, body) = ready(&c, &gw);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["redis"]["quota"],
        json!({"target": "cluster", "status": "ok"})
    );
    // The global bucket is shared: a second client address would get the two left of its 5.
    // (Every key of the anonymous decisions carries one tag; each tenant's keys its own.)
    let keys = cluster.keys_per_node();
    let node_of = |pred: &dyn Fn(&str) -> bool| -> Vec<usize> {
        keys.iter()
            .enumerate()
            .filter(|(_, k)| k.iter().any(|k| pred(k)))
            .map(|(i, _)| i)
            .collect()
    };
    let rl = node_of(&|k| k.starts_with("kairos:rl:"));
    assert_eq!(rl.len(), 1, "per-IP and global keys in one slot: {keys:?}");
    for tenant in ["acme", "globex"] {
        let marker = format!("}}{}:{tenant}:", tenant.len());
        let nodes = node_of(&|k| k.starts_with("kairos:quota:{") && k.contains(&marker));
        assert_eq!(nodes.len(), 1, "{tenant}'s keys in one slot: {keys:?}");
    }
    let all: Vec<&String> = keys.iter().flatten().collect();
    let acme_day = all
        .iter()
        .find(|k| k.contains(":acme:d:"))
        .expect("acme's day key");
    assert_eq!(cluster.get(acme_day).as_deref(), Some("3"));
    let acme_refused = all
        .iter()
        .find(|k| k.contains(":acme:r:"))
        .expect("acme's refused key");
    assert_eq!(cluster.get(acme_refused).as_deref(), Some("1"));

    // The usage export reads a tenant's days in one MGET (one slot).
    let usage: Value = c
        .get(gw.url("/_kairos/tenants/acme/usage"))
        .bearer_auth(ADMIN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let days = usage["days"].as_array().expect("days");
    let today = days.last().expect("today");
    assert_eq!(today["requests"], 3, "{usage}");
    assert_eq!(today["refused"], 1, "{usage}");
}

#[test]
fn a_cluster_over_mutual_tls_holds_rate_limits_and_quotas() {
    let pki = TestPki::new("cluster-tls");
    let cluster = RedisCluster::start_with(3, Some(&pki));
    let up = Upstream::start_ok();
    let c = blocking_client();
    let tls = json!({"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key});
    let gw = Gateway::start(&gateway_config(
        &up,
        json!(cluster.url()),
        Some(tls),
        "deny",
    ));
    assert_limits_and_quotas_hold(&c, &gw);
    assert_eq!(
        ready(&c, &gw).1["redis"]["rate_limit"],
        json!({"target": "cluster", "status": "ok"})
    );
    let keys: usize = cluster.keys_per_node().iter().map(Vec::len).sum();
    assert!(
        keys >= 6,
        "rate-limit and quota keys in the cluster: {keys}"
    );
}

#[test]
fn passwords_in_redis_urls_stay_out_of_logs_errors_and_answers() {
    const PW: &str = "s3cret-pw-4711";
    let dead = free_port();
    let up = Upstream::start_ok();
    let mut cfg: Value = serde_json::from_str(&gateway_config(
        &up,
        json!(format!("redis+cluster://:{PW}@127.0.0.1:{dead}")),
        None,
        "allow",
    ))
    .unwrap();
    cfg["tenancy"]["quota_store"]["redis_url"] =
        json!(format!("redis+sentinel://:{PW}@127.0.0.1:{dead}/mymaster"));
    cfg["caching"] = json!({"enabled": true, "backend": "redis",
                            "redis_url": format!("redis://:{PW}@127.0.0.1:{dead}/0")});
    let gw = GatewayProcess::start(&cfg.to_string());
    let c = blocking_client();
    for _ in 0..5 {
        let api = c.get(gw.url("/api")).send().unwrap().status().as_u16();
        assert!(api == 200 || api == 429, "{api}");
        assert_eq!(
            c.get(gw.url("/open"))
                .header("X-Tenant-Id", "acme")
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    let ready = c
        .get(gw.url("/_kairos/ready"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(ready.contains("unreachable"), "{ready}");
    let config = c
        .get(gw.url("/_kairos/config"))
        .bearer_auth(ADMIN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let metrics = c
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    // The outages were logged (with the error), and the password is nowhere.
    poll(5, "the outage warnings", || {
        let logs = gw.logs().join("\n");
        logs.contains("rate limit backend") && logs.contains("quota store (redis) unreachable")
    });
    let logs = gw.logs().join("\n");
    for (what, text) in [
        ("logs", &logs),
        ("ready", &ready),
        ("config", &config),
        ("metrics", &metrics),
    ] {
        assert!(!text.contains(PW), "the password in {what}: {text}");
    }
    // A URL the config refuses: the error names the key, not the URL.
    let mut bad = cfg.clone();
    bad["rate_limiting"]["redis_url"] = json!(format!("redis+sentinel://:{PW}@h:port/m"));
    let e = kairos_rs::config::load_str(&bad.to_string(), "t", std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rate_limiting.redis_url"), "{e}");
    assert!(!e.contains(PW), "{e}");
}

/// X-Cache and body of `path` through `gw`.
fn cached_get(c: &reqwest::blocking::Client, gw: &Gateway, path: &str) -> (String, String) {
    let res = c
        .get(gw.url(path))
        .header("host", "api.example")
        .send()
        .expect("request");
    assert_eq!(res.status(), 200);
    let x = res
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (x, res.text().expect("body"))
}

/// Two gateways with a hybrid cache in the Redis `url` names: an answer one stored is a HIT
/// on the other (the upstream saw one request), and a purge on one reaches the other's
/// memory copy through the Redis subscription.
/// `conn` connects to the Redis.
fn assert_cache_shared(
    url: &str,
    tls: Option<Value>,
    target: &str,
    conn: &dyn Fn() -> redis::Connection,
) {
    let keys = || -> Vec<String> { redis::cmd("KEYS").arg("*").query(&mut conn()).unwrap() };
    let up = Upstream::start(|r| Reply::ok(&r.target).header("cache-control", "max-age=60"));
    let mut caching = json!({"backend": "hybrid", "redis_url": url, "redis_timeout": "500ms"});
    if let Some(t) = tls {
        caching["redis_tls"] = t;
    }
    let config = json!({
        "admin": {"token": ADMIN, "watch_config": false},
        "upstreams": {"u": {"servers": [{"url": up.url()}]}},
        "routes": [{"name": "c", "path": "/{*rest}", "upstream": "u", "cache": {}}],
        "caching": caching
    })
    .to_string();
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let c = blocking_client();
    // b subscribes on its first use of Redis; its readiness check connects it.
    let (status, body) = ready(&c, &b);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["redis"]["cache"],
        json!({"target": target, "status": "ok"})
    );
    assert_eq!(redis_up(&c, &b, "cache"), Some(1.0));
    assert_eq!(cached_get(&c, &a, "/x").0, "MISS");
    // The Redis write runs after the body reached the client: wait for it.
    poll(10, "a's answer in Redis", || {
        keys().iter().any(|k| k.starts_with("kairos:cache:e:"))
    });
    assert_eq!(cached_get(&c, &b, "/x").0, "HIT");
    assert_eq!(up.count(), 1, "b answered from Redis");
    // Both gateways listen for purges (a gateway not subscribed yet would keep its memory
    // copy for up to l1_ttl, as documented).
    poll(10, "both gateways subscribed", || {
        let n: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("kairos:cache:purge")
            .query(&mut conn())
            .unwrap();
        n.first().is_some_and(|(_, n)| *n == 2)
    });
    let purged: Value = c
        .delete(a.url("/_kairos/cache"))
        .bearer_auth(ADMIN)
        .json(&json!({"all": true}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(purged["purged"].as_u64().unwrap() >= 1, "{purged}");
    // b's memory copy goes too, through the published purge.
    poll(10, "the purge to reach b's memory", || {
        cached_get(&c, &b, "/x").0 == "MISS"
    });
    assert_eq!(up.count(), 2);
}

#[test]
fn the_cache_shares_answers_over_mutual_tls_and_through_sentinel() {
    let pki = TestPki::new("cache");
    let redis = RedisServer::start_tls(&pki);
    let tls = json!({"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key});
    let client = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(&pki.client_cert).unwrap(),
                client_key: std::fs::read(&pki.client_key).unwrap(),
            }),
            root_cert: Some(std::fs::read(&pki.ca).unwrap()),
        },
    )
    .unwrap();
    let conn = || client.get_connection().unwrap();
    assert_cache_shared(&redis.url(), Some(tls), "single", &conn);

    let master = RedisServer::start();
    let sentinel = Sentinel::start("cachemaster", master.port);
    let url = format!("redis+sentinel://127.0.0.1:{}/cachemaster", sentinel.port);
    assert_cache_shared(&url, None, "sentinel", &|| master.connection());
}

#[test]
fn the_cache_on_a_cluster_shares_answers_and_purges_every_master() {
    let cluster = RedisCluster::start(3);
    let up = Upstream::start(|r| Reply::ok(&r.target).header("cache-control", "max-age=60"));
    let config = json!({
        "admin": {"token": ADMIN, "watch_config": false},
        "upstreams": {"u": {"servers": [{"url": up.url()}]}},
        "routes": [{"name": "c", "path": "/{*rest}", "upstream": "u", "cache": {}}],
        "caching": {"backend": "hybrid", "redis_url": cluster.url(), "redis_timeout": "500ms"}
    })
    .to_string();
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let c = blocking_client();
    assert_eq!(
        ready(&c, &b).1["redis"]["cache"],
        json!({"target": "cluster", "status": "ok"})
    );
    let paths: Vec<String> = (0..20).map(|i| format!("/p{i}")).collect();
    for p in &paths {
        assert_eq!(cached_get(&c, &a, p).0, "MISS");
    }
    let cache_keys = |what: &str| -> Vec<usize> {
        cluster
            .keys_per_node()
            .iter()
            .map(|k| {
                k.iter()
                    .filter(|k| k.starts_with(&format!("kairos:cache:{what}")))
                    .count()
            })
            .collect()
    };
    poll(10, "the 20 answers in the cluster", || {
        cache_keys("e:").iter().sum::<usize>() == 20
    });
    // Spread over the masters, each index in its variants' slot.
    let per_node = cache_keys("e:");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "{per_node:?}"
    );
    assert_eq!(cache_keys("i:"), per_node);
    for p in &paths {
        assert_eq!(cached_get(&c, &b, p), ("HIT".to_string(), p.clone()));
    }
    assert_eq!(up.count(), 20);
    poll(10, "both gateways subscribed", || {
        let subscribers: u64 = cluster
            .nodes
            .iter()
            .map(|r| {
                redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg("kairos:cache:purge")
                    .query::<Vec<(String, u64)>>(&mut r.connection())
                    .unwrap()[0]
                    .1
            })
            .sum();
        subscribers == 2
    });
    // A purge finds the answers on every master.
    let purged: Value = c
        .delete(a.url("/_kairos/cache"))
        .bearer_auth(ADMIN)
        .json(&json!({"all": true}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(purged["purged"], 20, "{purged}");
    assert_eq!(cache_keys(""), vec![0, 0, 0]);
    poll(10, "the purge to reach b's memory", || {
        cached_get(&c, &b, "/p0").0 == "MISS"
    });
}
