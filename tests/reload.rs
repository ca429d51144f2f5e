//! Hot reload and the admin API, against the real binary with a config file: 50 reloads
//! (file rewrites picked up by the watcher, SIGHUP, POST reload and PUT config, mixed) under
//! continuous traffic without a failed or mixed request; invalid configs change nothing;
//! servers' live state survives; the admin API's guard, redaction, dry run and persistence.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const TOKEN: &str = "reload-admin-token-0123456789";

/// Config version `gen`: `/v` goes to upstream `a` on even versions and `b` on odd ones,
/// rewritten to `/gen<gen>`; every version also has `/keep`. Written as GatewayProcess
/// writes its file (loopback, port 0, JSON logs), so nothing but the routes differs.
fn version(gen: u32, a: &Upstream, b: &Upstream) -> String {
    let target = if gen.is_multiple_of(2) { "a" } else { "b" };
    serde_json::json!({
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "workers": 2},
        "admin": {"token": TOKEN},
        "upstreams": {
            "a": {"servers": [{"url": a.url()}]},
            "b": {"servers": [{"url": b.url()}]}
        },
        "routes": [
            {"name": "v", "path": "/v", "upstream": target, "rewrite": format!("/gen{gen}")},
            {"name": "keep", "path": "/keep", "upstream": "a"},
            {"name": format!("extra-{gen}"), "path": format!("/extra/{gen}"), "upstream": "b"}
        ],
        "logging": {"format": "json", "level": "info", "access_log": false}
    })
    .to_string()
}

/// An upstream that answers with its name and the path it was asked for.
fn named(name: &'static str) -> Upstream {
    Upstream::start(move |r| Reply::ok(&format!("{name}:{}", r.target)))
}

/// An admin GET with the token, as JSON.
fn admin_json(c: &reqwest::blocking::Client, gw: &GatewayProcess, path: &str) -> serde_json::Value {
    c.get(gw.url(path))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// An admin call with the token and a body: status and JSON answer.
fn admin_send(
    c: &reqwest::blocking::Client,
    method: reqwest::Method,
    url: String,
    body: String,
) -> (u16, serde_json::Value) {
    let res = c
        .request(method, url)
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or_default())
}

fn status_hash(c: &reqwest::blocking::Client, gw: &GatewayProcess) -> String {
    let v: serde_json::Value = admin_json(c, gw, "/_kairos/status");
    v["config"]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn sha256(text: &str) -> String {
    kairos_rs::base::hash::hash_text(text)
}

/// Writes `text` as an editor would: to a temp file renamed over the config (`atomic`), or
/// in place, in two writes (a half-written file is seen for a moment).
fn write_config(path: &std::path::Path, text: &str, atomic: bool) {
    if atomic {
        let tmp = path.with_extension("swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    } else {
        use std::io::Write;
        let mut f = std::fs::File::create(path).unwrap();
        let (first, second) = text.split_at(text.len() / 2);
        f.write_all(first.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        f.write_all(second.as_bytes()).unwrap();
    }
}

#[test]
fn fifty_reloads_under_traffic_fail_no_request_and_never_mix_configs() {
    let (a, b) = (named("a"), named("b"));
    let gw = GatewayProcess::start(&version(0, &a, &b));
    let path = gw.config_path();
    let c = blocking_client();

    // Clients send continuously; every answer must be 200 and consistent: version N's `/v`
    // goes to the upstream of N's parity, rewritten to /genN.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let newest = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, problems, newest) =
                (stop.clone(), sent.clone(), problems.clone(), newest.clone());
            let url = gw.url("/v");
            let c = c.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match c.get(&url).send() {
                        Ok(res) if res.status() == 200 => {
                            let body = res.text().unwrap_or_default();
                            let ok = body
                                .split_once(":/gen")
                                .and_then(|(name, gen)| Some((name, gen.parse::<u64>().ok()?)))
                                .is_some_and(|(name, gen)| {
                                    let want = if gen.is_multiple_of(2) { "a" } else { "b" };
                                    name == want && gen <= newest.load(Ordering::Acquire)
                                });
                            if !ok {
                                problems
                                    .lock()
                                    .unwrap()
                                    .push(format!("mixed answer: {body}"));
                            }
                        }
                        Ok(res) => problems
                            .lock()
                            .unwrap()
                            .push(format!("status {}", res.status())),
                        Err(e) => problems.lock().unwrap().push(format!("error: {e}")),
                    }
                }
            })
        })
        .collect();

    let mut invalid_checked = 0;
    for gen in 1..=50u32 {
        if gen == 20 {
            // A syntax error, written to the file and reloaded: refused, nothing changes.
            let before = status_hash(&c, &gw);
            write_config(&path, "{\"version\": 1, \"routes\": [", true);
            let res = c
                .post(gw.url("/_kairos/config/reload"))
                .bearer_auth(TOKEN)
                .send()
                .unwrap();
            assert_eq!(res.status(), 400);
            let body: serde_json::Value = res.json().unwrap();
            assert_eq!(body["error"]["code"], "config_invalid");
            assert!(body["errors"][0]["line"].is_number(), "{body}");
            assert_eq!(status_hash(&c, &gw), before);
            invalid_checked += 1;
        }
        if gen == 35 {
            // An unknown upstream, through the API: refused with its path, nothing changes.
            let before = status_hash(&c, &gw);
            let bad = version(gen, &a, &b).replace("\"upstream\":\"a\"", "\"upstream\":\"c\"");
            let res = c
                .put(gw.url("/_kairos/config"))
                .bearer_auth(TOKEN)
                .body(bad)
                .send()
                .unwrap();
            assert_eq!(res.status(), 400);
            let body: serde_json::Value = res.json().unwrap();
            assert!(
                body["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["message"]
                        .as_str()
                        .unwrap()
                        .contains("unknown upstream `c`")),
                "{body}"
            );
            assert_eq!(status_hash(&c, &gw), before);
            invalid_checked += 1;
        }
        let text = version(gen, &a, &b);
        newest.store(u64::from(gen), Ordering::Release);
        match gen % 4 {
            // The watcher picks up an editor's rename.
            0 => write_config(&path, &text, true),
            // An in-place write, then SIGHUP.
            1 => {
                write_config(&path, &text, false);
                gw.signal("HUP");
            }
            // PUT: validated, persisted, applied.
            2 => {
                let res = c
                    .put(gw.url("/_kairos/config"))
                    .bearer_auth(TOKEN)
                    .body(text.clone())
                    .send()
                    .unwrap();
                assert_eq!(res.status(), 200, "{}", res.text().unwrap_or_default());
            }
            // A file write, then POST reload.
            _ => {
                write_config(&path, &text, true);
                let res = c
                    .post(gw.url("/_kairos/config/reload"))
                    .bearer_auth(TOKEN)
                    .send()
                    .unwrap();
                assert_eq!(res.status(), 200, "{}", res.text().unwrap_or_default());
            }
        }
        let want = sha256(&text);
        assert!(
            wait_until(Duration::from_secs(10), || status_hash(&c, &gw) == want),
            "version {gen} never took effect"
        );
        // The new route set answers.
        let body = c.get(gw.url("/v")).send().unwrap().text().unwrap();
        assert!(body.ends_with(&format!(":/gen{gen}")), "{body}");
        let extra = c.get(gw.url(&format!("/extra/{gen}"))).send().unwrap();
        assert_eq!(extra.status(), 200);
    }
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().unwrap();
    }
    let problems = problems.lock().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "{sent} requests during 50 reloads; problems: {}",
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "{:?}",
        &problems[..problems.len().min(10)]
    );
    assert!(sent > 500, "only {sent} requests were sent");
    assert_eq!(invalid_checked, 2);

    let metrics = c
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    // 50 versions applied. A SIGHUP or POST reload rebuilds even the text in effect (files
    // the config names may have changed), so when the watcher applies a version before the
    // operator's reload of it (a busy machine), that version counts twice: at most once more
    // for each of the 25 versions reloaded by SIGHUP or POST.
    let successes = metric(
        &metrics,
        "kairos_config_reloads_total",
        &[("result", "success")],
    )
    .unwrap_or(0.0);
    assert!(
        (50.0..=75.0).contains(&successes),
        "{successes} successful reloads"
    );
    assert!(
        metric(
            &metrics,
            "kairos_config_reloads_total",
            &[("result", "failure")]
        ) >= Some(2.0)
    );
    // Routes a reload removed leave no series behind; the live ones are there.
    assert!(
        !metrics.contains(r#"route="extra-1""#),
        "stale series of a removed route"
    );
    assert!(metrics.contains(r#"route="extra-50""#));
    // Log lines reach stderr from the writer thread in batches (every 20 ms): wait for the
    // last reload's.
    assert!(wait_until(Duration::from_secs(5), || gw.logs().iter().any(
        |l| l.contains("config reloaded") && l.contains("routes_added") && l.contains("extra-50")
    )));
}

#[test]
fn servers_keep_their_health_and_circuit_across_a_reload() {
    let up = Upstream::start_ok();
    let config = |extra_route: bool| {
        let mut routes = vec![
            serde_json::json!({"name": "r", "path": "/r", "upstream": "checked"}),
            serde_json::json!({"name": "d", "path": "/d", "upstream": "broken"}),
        ];
        if extra_route {
            routes.push(serde_json::json!({"name": "new", "path": "/new", "upstream": "checked"}));
        }
        serde_json::json!({
            "version": 1,
            "server": {"host": "127.0.0.1", "port": 0, "workers": 1},
            "admin": {"token": TOKEN, "watch_config": false},
            "upstreams": {
                "checked": {
                    "servers": [{"url": up.url()}, {"url": "http://127.0.0.1:9"}],
                    "health_check": {"path": "/", "interval": "100ms", "timeout": "80ms",
                                     "healthy_threshold": 1, "unhealthy_threshold": 1}
                },
                "broken": {
                    "servers": [{"url": "http://127.0.0.1:9"}],
                    "circuit_breaker": {"failure_threshold": 1, "recovery_timeout": "60s",
                                        "minimum_throughput": 1}
                }
            },
            "routes": routes,
            "logging": {"format": "json", "level": "info", "access_log": false}
        })
        .to_string()
    };
    let gw = GatewayProcess::start(&config(false));
    let c = blocking_client();
    let server = |c: &reqwest::blocking::Client, upstream: &str, i: usize| -> serde_json::Value {
        let v: serde_json::Value = admin_json(c, &gw, "/_kairos/upstreams");
        let u = v["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == upstream)
            .unwrap()
            .clone();
        u["servers"][i].clone()
    };
    // The health check finds the dead server; a failed request opens the other's circuit.
    assert!(wait_until(Duration::from_secs(10), || {
        server(&c, "checked", 1)["health"] == "unhealthy"
    }));
    assert_eq!(c.get(gw.url("/d")).send().unwrap().status(), 502);
    assert_eq!(server(&c, "broken", 0)["circuit"], "open");
    assert_eq!(c.get(gw.url("/d")).send().unwrap().status(), 503);

    std::fs::write(gw.config_path(), config(true)).unwrap();
    let res = c
        .post(gw.url("/_kairos/config/reload"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let applied: serde_json::Value = res.json().unwrap();
    assert_eq!(applied["applied"]["diff"]["routes_added"][0], "new");
    // At once after the swap, before any new check or request could have told it.
    let checked = server(&c, "checked", 1);
    assert_eq!(checked["health"], "unhealthy", "{checked}");
    assert!(checked["last_check"].is_string(), "{checked}");
    assert_eq!(server(&c, "broken", 0)["circuit"], "open");
    assert_eq!(c.get(gw.url("/d")).send().unwrap().status(), 503);
    assert_eq!(c.get(gw.url("/new")).send().unwrap().status(), 200);
}

#[test]
fn the_admin_api_guards_redacts_dry_runs_and_persists() {
    let up = Upstream::start_ok();
    let text = serde_json::json!({
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "workers": 1},
        "admin": {"token": "${RELOAD_TEST_TOKEN}", "watch_config": false},
        "upstreams": {"u": {"servers": [{"url": up.url()}]}},
        "routes": [{"name": "r", "path": "/r", "upstream": "u", "auth": "api_key"}],
        "jwt_validation": {"secret": "a-literal-jwt-secret-of-32-bytes-or-more!!"},
        "api_keys": {"keys": {"partner": {"key_hash": format!("sha256:{}", "ab".repeat(32))}}},
        "rate_limiting": {"backend": "redis", "redis_url": "redis://:hunter2@127.0.0.1:1/0",
                          "per_ip": {"rps": 100}},
        "logging": {"format": "json", "level": "info", "access_log": false}
    })
    .to_string();
    let gw = GatewayProcess::start_with_env(&text, &[("RELOAD_TEST_TOKEN", TOKEN)]);
    let c = blocking_client();

    for (method, path) in [
        ("GET", "/_kairos/config"),
        ("PUT", "/_kairos/config"),
        ("POST", "/_kairos/config/reload"),
        ("POST", "/_kairos/config/validate"),
        ("GET", "/_kairos/routes"),
        ("GET", "/_kairos/status"),
        ("GET", "/_kairos/openapi.json"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let res = c
            .request(m.clone(), gw.url(path))
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(res.status(), 401, "{method} {path} without a token");
        let res = c
            .request(m, gw.url(path))
            .bearer_auth("wrong-token-wrong-token")
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(res.status(), 401, "{method} {path} with a wrong token");
    }

    // Redaction: literal secrets go, ${ENV} references stay.
    let shown = c
        .get(gw.url("/_kairos/config"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    for secret in ["a-literal-jwt-secret", "hunter2", "abababab"] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["admin"]["token"], "${RELOAD_TEST_TOKEN}");
    assert_eq!(v["jwt_validation"]["secret"], "<redacted>");
    assert_eq!(v["api_keys"]["keys"]["partner"]["key_hash"], "<redacted>");
    assert_eq!(
        v["rate_limiting"]["redis_url"],
        "redis://<redacted>@127.0.0.1:1/0"
    );

    // Dry run: the diff, and nothing applied.
    let next = text.replace(r#""name":"r""#, r#""name":"renamed""#);
    let (status, dry) = admin_send(
        &c,
        reqwest::Method::POST,
        gw.url("/_kairos/config/validate"),
        next.clone(),
    );
    assert_eq!(status, 200);
    assert_eq!(dry["diff"]["routes_added"], serde_json::json!(["renamed"]));
    assert_eq!(dry["diff"]["routes_removed"], serde_json::json!(["r"]));
    let (status, _) = admin_send(
        &c,
        reqwest::Method::POST,
        gw.url("/_kairos/config/validate"),
        r#"{"routes": [{"path": "/x", "upstream": "nope"}]}"#.into(),
    );
    assert_eq!(status, 400);
    let routes: serde_json::Value = admin_json(&c, &gw, "/_kairos/routes");
    assert_eq!(routes[0]["name"], "r", "a dry run applies nothing");

    // A persist that fails (its temp file cannot be created) changes nothing.
    let dir = gw.config_path().parent().unwrap().to_path_buf();
    let blocker = dir.join(format!(".config.json.tmp-{}", gw.pid()));
    std::fs::create_dir(&blocker).unwrap();
    let (status, err) = admin_send(
        &c,
        reqwest::Method::PUT,
        gw.url("/_kairos/config"),
        next.clone(),
    );
    assert_eq!(status, 500);
    assert_eq!(err["error"]["code"], "config_persist_failed");
    assert_eq!(std::fs::read_to_string(gw.config_path()).unwrap(), text);
    let routes: serde_json::Value = admin_json(&c, &gw, "/_kairos/routes");
    assert_eq!(routes[0]["name"], "r", "a failed persist applies nothing");
    std::fs::remove_dir(&blocker).unwrap();

    // PUT: applied, persisted (the old file kept as .bak, the mode kept), and in effect after
    // a restart.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(gw.config_path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    let old_file = std::fs::read_to_string(gw.config_path()).unwrap();
    let (status, _) = admin_send(
        &c,
        reqwest::Method::PUT,
        gw.url("/_kairos/config"),
        next.clone(),
    );
    assert_eq!(status, 200);
    assert_eq!(std::fs::read_to_string(gw.config_path()).unwrap(), next);
    let mode = std::fs::metadata(gw.config_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640, "the persisted file keeps the old file's mode");
    assert_eq!(
        std::fs::read_to_string(dir.join("config.json.bak")).unwrap(),
        old_file
    );
    let status: serde_json::Value = admin_json(&c, &gw, "/_kairos/status");
    assert_eq!(status["last_reload"]["result"], "success");
    assert_eq!(status["last_reload"]["trigger"], "api");
    assert_eq!(status["config"]["sha256"], sha256(&next));
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let openapi: serde_json::Value = admin_json(&c, &gw, "/_kairos/openapi.json");
    assert!(openapi["paths"]["/_kairos/config"]["put"].is_object());

    // Restart on the persisted file: the renamed route is in effect.
    let restarted = GatewayProcess::start_in_dir(gw.into_dir(), &[("RELOAD_TEST_TOKEN", TOKEN)]);
    let routes: serde_json::Value = admin_json(&c, &restarted, "/_kairos/routes");
    assert_eq!(routes[0]["name"], "renamed");
}

#[test]
fn the_cli_deploys_checks_exports_and_lists_against_a_gateway() {
    let up = Upstream::start_ok();
    // The token comes from the gateway's environment: the CLI's machine does not have it.
    let base = |route: &str| {
        serde_json::json!({
            "version": 1,
            "server": {"host": "127.0.0.1", "port": 0, "workers": 1},
            "admin": {"token": "${CLI_TEST_ADMIN_TOKEN}", "watch_config": false},
            "upstreams": {"u": {"servers": [{"url": up.url()}]}},
            "routes": [{"name": route, "path": "/r", "upstream": "u"}],
            "logging": {"format": "json", "level": "info", "access_log": false}
        })
        .to_string()
    };
    let gw = GatewayProcess::start_with_env(&base("first"), &[("CLI_TEST_ADMIN_TOKEN", TOKEN)]);
    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str], token: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kairos-rs"))
            .args(args)
            .env("KAIROS_ADMIN_TOKEN", token)
            .env("STAGING_TOKEN", TOKEN)
            .env_remove("KAIROS_CONFIG")
            .env_remove("CLI_TEST_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = gw.url("");
    let cli_config = dir.path().join("cli.json");
    std::fs::write(
        &cli_config,
        serde_json::json!({"environments": {"staging": {"url": url, "token_env": "STAGING_TOKEN"}}})
            .to_string(),
    )
    .unwrap();

    // Deploy through an environment of the CLI config file.
    let file = dir.path().join("next.json");
    std::fs::write(&file, base("second")).unwrap();
    let (code, out, err) = cli(
        &[
            "config",
            "deploy",
            file.to_str().unwrap(),
            "--environment",
            "staging",
            "--cli-config",
            cli_config.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("deployed") && out.contains("routes added: second"),
        "{out}"
    );

    // Routes of the running gateway.
    let (code, out, _) = cli(&["routes", "list", "--gateway", &url], TOKEN);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME") && out.contains("second"), "{out}");

    // Health of an upstream, and of one that does not exist.
    let (code, out, _) = cli(
        &["health", "check", "--upstream", "u", "--gateway", &url],
        TOKEN,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&up.url()), "{out}");
    let (code, _, err) = cli(
        &["health", "check", "--upstream", "x", "--gateway", &url],
        TOKEN,
    );
    assert_eq!(code, 5);
    assert!(
        err.contains("no upstream `x`") && err.contains("known: u"),
        "{err}"
    );

    // Metrics, as Prometheus text and as JSON samples.
    let (code, out, _) = cli(&["metrics", "export", "--gateway", &url], TOKEN);
    assert_eq!(code, 0);
    assert!(
        out.contains("# TYPE kairos_config_reloads_total counter"),
        "{out}"
    );
    let (code, out, _) = cli(
        &["metrics", "export", "--format", "json", "--gateway", &url],
        TOKEN,
    );
    assert_eq!(code, 0);
    let samples: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(samples
        .iter()
        .any(|s| s["name"] == "kairos_config_reloads_total" && s["labels"]["result"] == "success"));

    // The errors an operator meets, each with its own exit code and message.
    let bad = dir.path().join("bad.json");
    // (With the admin token: a config without one is refused before anything else, 409.)
    std::fs::write(
        &bad,
        r#"{"admin": {"token": "${CLI_TEST_ADMIN_TOKEN}"}, "routes": [{"path": "/r", "upstream": "nope"}]}"#,
    )
    .unwrap();
    let (code, _, err) = cli(
        &["config", "deploy", bad.to_str().unwrap(), "--gateway", &url],
        TOKEN,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown upstream `nope`"), "{err}");
    let (code, _, err) = cli(
        &["routes", "list", "--gateway", &url],
        "not-the-token-at-all",
    );
    assert_eq!(code, 4);
    assert!(err.contains("refused the admin token"), "{err}");
    let (code, _, err) = cli(&["routes", "list", "--gateway", &url], "");
    assert_eq!(code, 4);
    assert!(err.contains("KAIROS_ADMIN_TOKEN"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, err) = cli(
        &["routes", "list", "--gateway", &format!("http://{closed}")],
        TOKEN,
    );
    assert_eq!(code, 3);
    assert!(err.contains("cannot reach the gateway"), "{err}");
}

#[test]
fn what_keeps_its_identity_is_carried_over_and_what_changed_is_not() {
    use kairos_rs::observability::metrics::Metrics;
    use kairos_rs::runtime::Runtime;
    kairos_rs::edge::auth::crypto::install();
    let config = |secret: &str, health: bool, sampling: f64| {
        let mut u = serde_json::json!({"servers": [{"url": "http://127.0.0.1:9"}]});
        if health {
            u["health_check"] = serde_json::json!({"path": "/", "interval": "10s"});
        }
        let text = serde_json::json!({
            "version": 1,
            "upstreams": {"u": u},
            "routes": [{"path": "/a", "upstream": "u", "auth": "jwt"}],
            "jwt_validation": {"secret": secret},
            "tracing": {"endpoint": "http://127.0.0.1:9", "sampling_rate": sampling}
        })
        .to_string();
        kairos_rs::config::load_str(&text, "t.json", std::path::Path::new(".")).unwrap()
    };
    let secret = "a-jwt-secret-of-thirty-two-bytes-or-more!";
    let metrics = Metrics::new();
    let first = Runtime::build(config(secret, true, 0.5), &metrics).unwrap();
    let same = Runtime::build_from(config(secret, true, 0.5), &metrics, Some(&first)).unwrap();
    let jwt = |r: &Runtime| r.edge.auth.jwt.clone().unwrap();
    assert!(
        Arc::ptr_eq(&jwt(&first), &jwt(&same)),
        "the JWT verifier is kept"
    );
    assert!(Arc::ptr_eq(
        first.tracing.as_ref().unwrap(),
        same.tracing.as_ref().unwrap()
    ));
    assert!(Arc::ptr_eq(
        &first.upstreams[0].set().states[0],
        &same.upstreams[0].set().states[0]
    ));

    let other_secret = format!("{secret}-rotated");
    let changed =
        Runtime::build_from(config(&other_secret, false, 0.1), &metrics, Some(&same)).unwrap();
    assert!(
        !Arc::ptr_eq(&jwt(&same), &jwt(&changed)),
        "a new secret, a new verifier"
    );
    assert!(!Arc::ptr_eq(
        same.tracing.as_ref().unwrap(),
        changed.tracing.as_ref().unwrap()
    ));
    // Without its health check a server starts afresh: a check that no longer runs could
    // never clear an "unhealthy" it left behind.
    assert!(!Arc::ptr_eq(
        &same.upstreams[0].set().states[0],
        &changed.upstreams[0].set().states[0]
    ));
}
