//! Quotas that outlive the process and the instance, against the real binary: counts kept
//! across a graceful restart and a `kill -9` (file store), one quota shared by two gateways
//! through a real redis-server, and the tenant admin API round trip with the CLI.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::{blocking_client, GatewayProcess, RedisServer, Upstream};

const TOKEN: &str = "tenant-test-admin-token-0123456789";

fn config(up: &Upstream, store: Value, daily: u64) -> String {
    json!({
        "admin": {"token": TOKEN, "watch_config": false},
        "upstreams": {"u": {"servers": [{"url": up.url()}]}},
        "routes": [{"name": "open", "path": "/open", "upstream": "u"}],
        "logging": {"access_log": false},
        "tenancy": {"identify_by": ["header"], "quota_store": store},
        "tenants": {"acme": {"quotas": {"daily_requests": daily, "monthly_requests": 1000}}}
    })
    .to_string()
}

/// Sends one request as `acme`: its status and X-Quota-Remaining.
fn hit(c: &reqwest::blocking::Client, gw: &GatewayProcess) -> (u16, Option<u64>) {
    let res = c
        .get(gw.url("/open"))
        .header("X-Tenant-Id", "acme")
        .send()
        .unwrap();
    let remaining = res
        .headers()
        .get("x-quota-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (res.status().as_u16(), remaining)
}

#[test]
fn file_store_keeps_the_count_across_kill_9_and_a_graceful_restart() {
    let up = Upstream::start_ok();
    let c = blocking_client();
    let store = json!({"backend": "file", "path": "state/quotas.db"});
    let gw = GatewayProcess::start(&config(&up, store, 20));
    for i in 0..4 {
        assert_eq!(hit(&c, &gw), (200, Some(20 - i - 1)));
    }
    // Flushed at most a second later; then the process dies without a chance to write.
    std::thread::sleep(Duration::from_millis(1500));
    let db = gw.config_path().parent().unwrap().join("state/quotas.db");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&db).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the quota file is the owner's only");
    }
    let dir = gw.into_dir(); // SIGKILL
    let mut gw = GatewayProcess::start_in_dir(dir, &[]);
    assert_eq!(
        hit(&c, &gw),
        (200, Some(15)),
        "the 4 before kill -9 were kept"
    );
    assert_eq!(hit(&c, &gw), (200, Some(14)));
    // A graceful stop right after requests writes them at exit (no second to wait).
    assert!(gw.stop());
    let dir = gw.into_dir();
    let gw = GatewayProcess::start_in_dir(dir, &[]);
    assert_eq!(
        hit(&c, &gw),
        (200, Some(13)),
        "the 2 before SIGTERM were kept"
    );
}

#[test]
fn two_gateways_share_one_quota_through_redis() {
    let redis = RedisServer::start();
    let up = Upstream::start_ok();
    let c = blocking_client();
    let store = json!({"backend": "redis", "redis_url": redis.url(), "key_prefix": "t1:"});
    let cfg = config(&up, store, 25);
    let gws = [GatewayProcess::start(&cfg), GatewayProcess::start(&cfg)];
    let mut admitted = 0;
    let mut refused = 0;
    for i in 0..60 {
        match hit(&c, &gws[i % 2]) {
            (200, _) => admitted += 1,
            (429, Some(0)) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        (admitted, refused),
        (25, 35),
        "exactly the quota, across both"
    );
    assert_eq!(up.count(), 25);
    // Either gateway reports the shared usage.
    let usage: Value = c
        .get(gws[1].url("/_kairos/tenants/acme/usage"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let days = usage["days"].as_array().unwrap();
    let today = days.last().unwrap();
    assert_eq!(
        (today["requests"].as_u64(), today["refused"].as_u64()),
        (Some(25), Some(35))
    );
}

#[test]
fn admin_api_round_trip_and_cli() {
    let up = Upstream::start_ok();
    let c = blocking_client();
    let gw = GatewayProcess::start(&config(&up, json!({"backend": "memory"}), 5));
    let admin =
        |method: reqwest::Method, path: &str| c.request(method, gw.url(path)).bearer_auth(TOKEN);
    let res = admin(reqwest::Method::GET, "/_kairos/tenants")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    let list: Value = res.json().unwrap();
    assert_eq!(list["tenants"][0]["id"], "acme");
    // A new tenant with its own route: applied at once and persisted.
    let globex = json!({
        "hosts": ["globex.example.com"],
        "routes": [{"name": "globex-reports", "path": "/reports", "upstream": "u"}],
        "quotas": {"daily_requests": 2}
    });
    let res = admin(reqwest::Method::PUT, "/_kairos/tenants/globex")
        .header("if-match", "\"stale\"")
        .json(&globex)
        .send()
        .unwrap();
    assert_eq!(res.status(), 412);
    let res = admin(reqwest::Method::PUT, "/_kairos/tenants/globex")
        .header("if-match", &etag)
        .json(&globex)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let applied: Value = res.json().unwrap();
    let diff = &applied["applied"]["diff"];
    assert!(
        diff["routes_added"]
            .as_array()
            .unwrap()
            .contains(&json!("globex-reports")),
        "{diff}"
    );
    assert!(
        diff["settings_changed"]
            .as_array()
            .unwrap()
            .contains(&json!("tenants")),
        "{diff}"
    );
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(gw.config_path()).unwrap()).unwrap();
    assert_eq!(
        on_disk["tenants"]["globex"]["hosts"][0],
        "globex.example.com"
    );
    let got: Value = admin(reqwest::Method::GET, "/_kairos/tenants/globex")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(got, globex);
    // An invalid tenant is refused with the config error's path; nothing changes.
    let res = admin(reqwest::Method::PUT, "/_kairos/tenants/globex")
        .json(&json!({"api_keys": ["nope"]}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().unwrap();
    assert_eq!(body["errors"][0]["path"], "tenants.globex.api_keys[0]");
    // `identify_by` is ["header"]: the host names nobody here.
    let res = c
        .get(gw.url("/reports"))
        .header("Host", "globex.example.com")
        .send()
        .unwrap();
    assert_eq!(res.status(), 404);
    for expect in [200, 200, 429] {
        let res = c
            .get(gw.url("/reports"))
            .header("X-Tenant-Id", "globex")
            .send()
            .unwrap();
        assert_eq!(res.status(), expect);
    }
    let usage: Value = admin(reqwest::Method::GET, "/_kairos/tenants/globex/usage")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let today = usage["days"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (today["requests"].as_u64(), today["refused"].as_u64()),
        (Some(2), Some(1))
    );
    let date = today["date"].as_str().unwrap().to_string();
    let csv = admin(
        reqwest::Method::GET,
        &format!("/_kairos/tenants/globex/usage?from={date}&to={date}"),
    )
    .header("accept", "text/csv")
    .send()
    .unwrap()
    .text()
    .unwrap();
    assert_eq!(
        csv,
        format!("tenant,date,requests,refused\nglobex,{date},2,1\n")
    );
    // The CLI reads the same.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kairos-rs"))
            .args(args)
            .arg("--gateway")
            .arg(gw.url(""))
            .env("KAIROS_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(&["tenants", "list"]);
    assert!(
        table.contains("globex") && table.contains("globex-reports"),
        "{table}"
    );
    let csv_cli = cli(&[
        "tenants", "usage", "globex", "--from", &date, "--to", &date, "--format", "csv",
    ]);
    assert_eq!(csv_cli, csv);
    // Deleted: its host names nobody, its route is gone.
    let res = admin(reqwest::Method::DELETE, "/_kairos/tenants/globex")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = admin(reqwest::Method::GET, "/_kairos/tenants/globex")
        .send()
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = c
        .get(gw.url("/reports"))
        .header("Host", "globex.example.com")
        .send()
        .unwrap();
    assert_eq!(res.status(), 404);
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(gw.config_path()).unwrap()).unwrap();
    assert!(on_disk["tenants"].get("globex").is_none());
    // Its metric series went with it; acme's stay.
    let metrics = admin(reqwest::Method::GET, "/_kairos/metrics")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!metrics.contains("tenant=\"globex\""), "{metrics}");
    assert!(metrics.contains("kairos_tenant_quota_used_ratio{period=\"day\",tenant=\"acme\"}"));
}

#[test]
fn tenant_rate_limit_is_shared_through_redis() {
    let redis = RedisServer::start();
    let up = Upstream::start_ok();
    let c = blocking_client();
    let cfg = json!({
        "admin": {"token": TOKEN, "watch_config": false},
        "upstreams": {"u": {"servers": [{"url": up.url()}]}},
        "routes": [{"name": "open", "path": "/open", "upstream": "u"}],
        "logging": {"access_log": false},
        "rate_limiting": {"backend": "redis", "redis_url": redis.url()},
        "tenancy": {"identify_by": ["header"], "quota_store": {"backend": "memory"}},
        "tenants": {"acme": {"rate_limits": {"rps": 0.01, "burst": 3}}, "globex": {}}
    })
    .to_string();
    let gws = [GatewayProcess::start(&cfg), GatewayProcess::start(&cfg)];
    let statuses: Vec<u16> = (0..6).map(|i| hit(&c, &gws[i % 2]).0).collect();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429, 429, 429],
        "one bucket for both"
    );
    // Another tenant is not limited.
    let res = c
        .get(gws[0].url("/open"))
        .header("X-Tenant-Id", "globex")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn the_access_log_names_the_tenant() {
    let up = Upstream::start_ok();
    let c = blocking_client();
    let mut v: Value = serde_json::from_str(&config(&up, json!({"backend": "memory"}), 5)).unwrap();
    v["logging"]["access_log"] = true.into();
    let gw = GatewayProcess::start(&v.to_string());
    assert_eq!(hit(&c, &gw).0, 200);
    c.get(gw.url("/open")).send().unwrap();
    let line = |tenant: &str| {
        gw.logs().iter().any(|l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|j| j["target"] == "kairos::access" && j["tenant"] == tenant)
        })
    };
    assert!(
        support::wait_until(Duration::from_secs(5), || line("acme") && line("-")),
        "{:#?}",
        gw.logs()
    );
}

#[test]
fn a_stalled_redis_quota_store_admits_uncounted_without_waiting_on_every_request() {
    let redis = RedisServer::start();
    let up = Upstream::start_ok();
    let c = blocking_client();
    let store = json!({"backend": "redis", "redis_url": redis.url()});
    let gw = GatewayProcess::start(&config(&up, store, 100));
    assert_eq!(hit(&c, &gw), (200, Some(99)));
    redis.pause();
    let start = std::time::Instant::now();
    for _ in 0..8 {
        assert_eq!(hit(&c, &gw), (200, None), "admitted, no quota to report");
    }
    // One timeout (500 ms), then Redis is left alone for a second: not 8 timeouts.
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
    let metrics = c
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let errors = support::metric(
        &metrics,
        "kairos_tenant_quota_store_errors_total",
        &[("backend", "redis")],
    );
    assert_eq!(errors, Some(8.0));
    redis.resume();
    // Counting resumes once the pause is over.
    assert!(support::wait_until(Duration::from_secs(5), || hit(&c, &gw)
        .1
        .is_some()));
    assert!(gw
        .logs()
        .iter()
        .any(|l| l.contains("quota store (redis) unreachable")));
}

#[test]
fn quotas_added_by_a_reload_count_in_the_configured_file() {
    let up = Upstream::start_ok();
    let c = blocking_client();
    let mut v: Value = serde_json::from_str(&config(
        &up,
        json!({"backend": "file", "path": "quotas.db"}),
        10,
    ))
    .unwrap();
    // No quotas at start: nothing needs the file yet.
    v["tenants"]["acme"] = json!({});
    let gw = GatewayProcess::start(&v.to_string());
    assert_eq!(hit(&c, &gw), (200, None));
    let res = c
        .put(gw.url("/_kairos/tenants/acme"))
        .bearer_auth(TOKEN)
        .json(&json!({"quotas": {"daily_requests": 10}}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().unwrap());
    assert_eq!(hit(&c, &gw), (200, Some(9)));
    assert_eq!(hit(&c, &gw), (200, Some(8)));
    std::thread::sleep(Duration::from_millis(1500));
    let dir = gw.into_dir(); // SIGKILL
    let gw = GatewayProcess::start_in_dir(dir, &[]);
    assert_eq!(
        hit(&c, &gw),
        (200, Some(7)),
        "counted in the file, not in memory"
    );
}
