//! Several instances as one (`cluster.config_store`): one real etcd (Debian's etcd-server)
//! and three gateway processes, all started here on free loopback ports. A config written on
//! one instance is served by all three within 1 s; a PUT that lost the race gets 412; an
//! invalid document in etcd is refused by every instance while the last good one serves;
//! etcd down for 10 s fails no request, and the next change arrives after it returns; a
//! watch cut across a compaction reads the key again; a frozen etcd is noticed; etcd over TLS with a client
//! certificate, and with auth enabled (user and password, a token invalidated across a
//! restart), is followed and written. With two endpoints, a watch on a frozen first one moves
//! to the second; a write whose answer is lost is read back; the ETag is the revision of the
//! document returned; a value that is not UTF-8 is refused alone.

mod support;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const TOKEN: &str = "cluster-etcd-test-admin-token-0123456789";
const KEY: &str = "/kairos/test/config";

/// The shared document: upstream `u` and one route per path, each answering from `u`.
fn document(upstream: &str, paths: &[&str]) -> Value {
    let routes: Vec<Value> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| json!({ "name": format!("r{i}"), "path": p, "upstream": "u" }))
        .collect();
    json!({
        "version": 1,
        "upstreams": { "u": { "servers": [{ "url": upstream }] } },
        "routes": routes,
    })
}

fn status(gw: &GatewayProcess) -> Value {
    blocking_client()
        .get(gw.url("/_kairos/status"))
        .bearer_auth(TOKEN)
        .send()
        .and_then(|r| r.json())
        .unwrap_or(Value::Null)
}

fn code(gw: &GatewayProcess, path: &str) -> u16 {
    blocking_client()
        .get(gw.url(path))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// `GET /_kairos/config` on `gw`: the document and its ETag.
fn get_config(gw: &GatewayProcess) -> (Value, String) {
    let res = blocking_client()
        .get(gw.url("/_kairos/config"))
        .bearer_auth(TOKEN)
        .send()
        .expect("GET config");
    assert_eq!(res.status(), 200);
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    (res.json().unwrap(), etag)
}

/// `PUT /_kairos/config` on `gw` with `If-Match: etag`: status, ETag, body.
fn put_config(gw: &GatewayProcess, doc: &Value, etag: &str) -> (u16, Option<String>, Value) {
    let res = blocking_client()
        .put(gw.url("/_kairos/config"))
        .bearer_auth(TOKEN)
        .header("if-match", etag)
        .body(doc.to_string())
        .send()
        .expect("PUT config");
    let status = res.status().as_u16();
    let tag = res
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    (status, tag, res.json().unwrap_or(Value::Null))
}

fn metric_of(gw: &GatewayProcess, name: &str) -> Option<f64> {
    let text = blocking_client()
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    metric(&text, name, &[])
}

/// Runs the binary's CLI with the admin token in the environment.
fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kairos-rs"))
        .args(args)
        .env("KAIROS_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run kairos-rs")
}

#[test]
fn three_instances_follow_one_etcd_key() {
    let upstream = Upstream::start_ok();
    let mut etcd = EtcdServer::start();

    // Bootstrap: a whole config file's shared part goes into the empty key, once.
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.json");
    let mut whole = document(&upstream.url(), &["/one"]);
    whole["admin"] = json!({ "token": "${KAIROS_ADMIN_TOKEN}" });
    whole["cluster"] =
        json!({ "config_store": { "type": "etcd", "endpoints": [etcd.url()], "key": KEY } });
    std::fs::write(&full, whole.to_string()).unwrap();
    let full_arg = full.to_str().unwrap();
    let out = cli(&["cluster", "bootstrap", "--config", full_arg]);
    assert!(out.status.success(), "{out:?}");
    let again = cli(&["cluster", "bootstrap", "--config", full_arg]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("holds a config already"));

    let gws: Vec<GatewayProcess> = (0..3)
        .map(|_| GatewayProcess::start_with_store(&etcd.url(), KEY, TOKEN))
        .collect();
    for gw in &gws {
        assert!(
            wait_until(Duration::from_secs(10), || code(gw, "/one") == 200),
            "instance did not apply the bootstrapped config: {}",
            status(gw)
        );
        let ready = blocking_client()
            .get(gw.url("/_kairos/ready"))
            .send()
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
    let (doc, etag) = get_config(&gws[0]);
    assert_eq!(doc, document(&upstream.url(), &["/one"]));

    // A PUT on instance 1 is served by all three within 1 s.
    let two = document(&upstream.url(), &["/one", "/two"]);
    let (s, new_tag, body) = put_config(&gws[0], &two, &etag);
    // Measured from the write's answer (a loaded machine may take long to answer the PUT).
    let started = Instant::now();
    assert_eq!(s, 200, "{body}");
    let revision = body["revision"].as_i64().expect("revision");
    assert_eq!(new_tag.as_deref(), Some(format!("\"{revision}\"").as_str()));
    let mut arrival = Vec::new();
    for gw in &gws {
        assert!(
            wait_until(Duration::from_secs(1), || code(gw, "/two") == 200),
            "instance did not serve the change within 1 s: {}",
            status(gw)
        );
        arrival.push(started.elapsed());
    }
    println!("PUT on instance 1 served by all three after {arrival:?}");
    assert!(arrival.iter().all(|d| *d < Duration::from_secs(1)));
    for gw in &gws {
        assert!(wait_until(Duration::from_secs(1), || status(gw)
            ["config_revision"]
            == revision));
        assert_eq!(
            metric_of(gw, "kairos_config_revision"),
            Some(revision as f64)
        );
    }

    // The same old ETag again, on instance 2: the key moved on, 412 with the new revision.
    let (s, tag, body) = put_config(&gws[1], &document(&upstream.url(), &["/lost"]), &etag);
    assert_eq!(s, 412, "{body}");
    assert_eq!(body["error"]["code"], "config_changed");
    assert_eq!(tag.as_deref(), Some(format!("\"{revision}\"").as_str()));
    assert_eq!(code(&gws[1], "/lost"), 404);

    // `config deploy` against instance 3 (reads its ETag, PUTs with If-Match).
    let three = dir.path().join("three.json");
    std::fs::write(
        &three,
        document(&upstream.url(), &["/one", "/three"]).to_string(),
    )
    .unwrap();
    let gw3 = format!("http://{}", gws[2].addr);
    let out = cli(&[
        "config",
        "deploy",
        three.to_str().unwrap(),
        "--gateway",
        &gw3,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("config store revision"));
    for gw in &gws {
        assert!(wait_until(Duration::from_secs(1), || code(gw, "/three") == 200));
        assert_eq!(code(gw, "/two"), 404);
    }

    // A tenant added through instance 2's tenant API edits the shared document the same way
    // (a compare-and-swap on the revision it read): every instance has it.
    let res = blocking_client()
        .put(gws[1].url("/_kairos/tenants/acme"))
        .bearer_auth(TOKEN)
        .body(json!({ "hosts": ["acme.example.com"] }).to_string())
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().unwrap_or_default());
    for gw in &gws {
        assert!(wait_until(Duration::from_secs(1), || {
            let list: Value = blocking_client()
                .get(gw.url("/_kairos/tenants"))
                .bearer_auth(TOKEN)
                .send()
                .and_then(|r| r.json())
                .unwrap_or(Value::Null);
            list["tenants"][0]["id"] == "acme"
        }));
        assert_eq!(code(gw, "/three"), 200);
    }
    let good = status(&gws[0])["config_revision"].as_i64().unwrap();

    // An invalid document written straight into etcd: every instance refuses it, says so,
    // and keeps serving the last good one.
    let bad = json!({ "routes": [{ "name": "x", "path": "/bad", "upstream": "missing" }] });
    let bad_rev = etcd.put(KEY, &bad.to_string());
    for gw in &gws {
        // The revision seen and the refusal are shown together.
        assert!(
            wait_until(Duration::from_secs(2), || status(gw)["store_revision"]
                == bad_rev),
            "{}",
            status(gw)
        );
        let st = status(gw);
        assert_eq!(st["config_revision"], good);
        let error = st["config_store_error"].as_str().unwrap_or_default();
        assert!(
            error.contains("refused") && error.contains("missing"),
            "{st}"
        );
        assert_eq!(metric_of(gw, "kairos_config_revision"), Some(good as f64));
        assert_eq!(
            metric_of(gw, "kairos_config_store_revision"),
            Some(bad_rev as f64)
        );
        assert_eq!(code(gw, "/three"), 200);
        assert_eq!(code(gw, "/bad"), 404);
    }

    // etcd down for 10 s: requests to all three go on without one failure; the instances
    // report the store unreachable, stay ready, and take the next change once it is back.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let urls: Vec<String> = gws.iter().map(|g| g.url("/three")).collect();
    let load = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        std::thread::spawn(move || {
            let client = blocking_client();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for url in &urls {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let ok = client.get(url).send().is_ok_and(|r| r.status() == 200);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    etcd.kill();
    let down = Instant::now();
    for gw in &gws {
        assert!(
            wait_until(Duration::from_secs(5), || status(gw)["config_store"]
                == "unreachable"),
            "{}",
            status(gw)
        );
        assert_eq!(metric_of(gw, "kairos_config_store_up"), Some(0.0));
        let ready = blocking_client()
            .get(gw.url("/_kairos/ready"))
            .send()
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    etcd.restart();
    let back = Instant::now();
    for gw in &gws {
        assert!(
            wait_until(Duration::from_secs(8), || status(gw)["config_store"]
                == "ok"),
            "{}",
            status(gw)
        );
    }
    let reconnected = back.elapsed();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("etcd down 10 s: {sent} requests, {failed} failed; reconnected {reconnected:?} after the restart");
    assert!(sent > 300, "only {sent} requests sent");
    assert_eq!(failed, 0);
    // Logged at a change, not at every retry (10 s down is several retries): the loss,
    // then the recovery. (A probe that times out on a loaded machine may add a pair.)
    for gw in &gws {
        let logs = gw.logs();
        let changes: Vec<bool> = logs
            .iter()
            .filter_map(|l| {
                if l.contains("config store unreachable") {
                    Some(false)
                } else if l.contains("config store reachable") {
                    Some(true)
                } else {
                    None
                }
            })
            .collect();
        let losses = changes.iter().filter(|ok| !**ok).count();
        assert!((1..=3).contains(&losses), "{logs:#?}");
        let first_loss = changes.iter().position(|ok| !ok).unwrap();
        assert!(changes[first_loss..].contains(&true), "{logs:#?}");
        assert_eq!(changes.last(), Some(&true), "{logs:#?}");
    }

    // The next change, through instance 2 with the store's revision as If-Match.
    let (_, etag) = get_config(&gws[1]);
    assert_eq!(etag, format!("\"{bad_rev}\""));
    let four = document(&upstream.url(), &["/one", "/four"]);
    let (s, _, body) = put_config(&gws[1], &four, &etag);
    let started = Instant::now();
    assert_eq!(s, 200, "{body}");
    for gw in &gws {
        assert!(
            wait_until(Duration::from_secs(1), || code(gw, "/four") == 200),
            "{}",
            status(gw)
        );
        assert!(wait_until(Duration::from_secs(1), || status(gw)
            ["config_store_error"]
            .is_null()));
    }
    println!(
        "the change after the outage served by all three after {:?}",
        started.elapsed()
    );
    for mut gw in gws {
        assert!(gw.stop());
    }
}

#[test]
fn an_instance_file_with_shared_members_is_refused_and_a_store_without_the_key_keeps_it_unready() {
    let etcd = EtcdServer::start();
    // Routes in the instance file next to a config store: exit 2 naming them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.json");
    let file = json!({
        "admin": { "token": TOKEN },
        "routes": [],
        "cluster": { "config_store": { "type": "etcd", "endpoints": [etcd.url()], "key": KEY } },
    });
    std::fs::write(&path, file.to_string()).unwrap();
    let out = cli(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`routes` comes from the config store"));

    // Bootstrap with etcd unreachable: exit 3, nothing written.
    let whole = dir.path().join("whole.json");
    let closed = format!("http://127.0.0.1:{}", free_port());
    let file = json!({
        "admin": { "token": TOKEN },
        "routes": [],
        "cluster": { "config_store": { "type": "etcd", "endpoints": [closed], "key": KEY } },
    });
    std::fs::write(&whole, file.to_string()).unwrap();
    let out = cli(&["cluster", "bootstrap", "--config", whole.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcd unreachable"));

    // An empty key: the instance runs, answers 404 and is not ready until a document comes.
    let mut gw = GatewayProcess::start_with_store(&etcd.url(), "/kairos/empty", TOKEN);
    assert!(wait_until(Duration::from_secs(5), || status(&gw)
        ["config_store"]
        == "ok"));
    let ready = blocking_client()
        .get(gw.url("/_kairos/ready"))
        .send()
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(status(&gw)["config_store_error"]
        .as_str()
        .unwrap()
        .contains("is empty"));
    let upstream = Upstream::start_ok();
    etcd.put(
        "/kairos/empty",
        &document(&upstream.url(), &["/late"]).to_string(),
    );
    assert!(wait_until(Duration::from_secs(2), || code(&gw, "/late") == 200));
    let ready = blocking_client()
        .get(gw.url("/_kairos/ready"))
        .send()
        .unwrap();
    assert_eq!(ready.status(), 200);
    // A document referencing a variable the instance's file does not allow is refused (a
    // writer of the key cannot pull the gateway's environment into a route).
    let mut leaky = document(&upstream.url(), &["/leak"]);
    leaky["routes"][0]["rewrite"] = json!("/${HOME}");
    etcd.put("/kairos/empty", &leaky.to_string());
    assert!(wait_until(Duration::from_secs(2), || status(&gw)
        ["config_store_error"]
        .as_str()
        .is_some_and(|e| e.contains("`HOME` may not be referenced"))));
    assert_eq!(code(&gw, "/leak"), 404);
    // A document carrying an instance's own member is refused.
    etcd.put("/kairos/empty", r#"{"admin": {"token": "taken-over"}}"#);
    assert!(wait_until(Duration::from_secs(2), || status(&gw)
        ["config_store_error"]
        .as_str()
        .is_some_and(|e| e.contains("each instance's own"))));
    assert_eq!(code(&gw, "/late"), 200);
    assert!(gw.stop());
}

#[test]
fn a_watch_cut_across_a_compaction_reads_the_key_again() {
    let upstream = Upstream::start_ok();
    let mut etcd = EtcdServer::start();
    let key = "/kairos/compacted";
    etcd.put(key, &document(&upstream.url(), &["/a"]).to_string());
    let mut gw = GatewayProcess::start_with_store(&etcd.url(), key, TOKEN);
    assert!(wait_until(Duration::from_secs(5), || code(&gw, "/a") == 200));
    // The gateway frozen while etcd restarts (its watch is cut) and the revisions after the
    // one it watches from are written and compacted away.
    gw.signal("STOP");
    etcd.kill();
    etcd.restart();
    etcd.put(key, &document(&upstream.url(), &["/b"]).to_string());
    let last = etcd.put(key, &document(&upstream.url(), &["/c"]).to_string());
    etcd.compact(last);
    gw.signal("CONT");
    assert!(
        wait_until(Duration::from_secs(10), || code(&gw, "/c") == 200),
        "{}",
        status(&gw)
    );
    assert_eq!(status(&gw)["config_revision"], last);
    assert_eq!(code(&gw, "/b"), 404);
    assert!(gw
        .logs()
        .iter()
        .any(|l| l.contains("compacted past the watch")));
    assert!(gw.stop());
}

/// Starts a gateway on `store`, waits for `path` to be served from the key's document, then
/// writes a new document through it and waits for that one.
fn follows_and_writes(gw: &GatewayProcess, upstream: &Upstream, path: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || code(gw, path) == 200),
        "{}",
        status(gw)
    );
    let (_, etag) = get_config(gw);
    let (s, _, body) = put_config(gw, &document(&upstream.url(), &[path, "/written"]), &etag);
    assert_eq!(s, 200, "{body}");
    assert_eq!(code(gw, "/written"), 200);
    assert_eq!(status(gw)["config_store"], "ok");
}

#[test]
fn etcd_over_tls_with_a_client_certificate() {
    let upstream = Upstream::start_ok();
    let etcd = EtcdServer::start_tls();
    let key = "/kairos/tls";
    etcd.put(key, &document(&upstream.url(), &["/tls"]).to_string());
    let file = |n: &str| etcd.tls_file(n).display().to_string();
    let store = json!({
        "type": "etcd", "endpoints": [etcd.url()], "key": key,
        "tls": { "ca_file": file("ca.pem"), "cert_file": file("client.pem"), "key_file": file("client.key") },
    });
    let mut gw = GatewayProcess::start_with_store_config(store, TOKEN, &[]);
    follows_and_writes(&gw, &upstream, "/tls");

    // Without the client certificate etcd refuses the handshake: nothing is applied, and
    // the status says why.
    let store = json!({
        "type": "etcd", "endpoints": [etcd.url()], "key": key,
        "tls": { "ca_file": file("ca.pem") },
    });
    let mut refused = GatewayProcess::start_with_store_config(store, TOKEN, &[]);
    assert!(wait_until(Duration::from_secs(5), || {
        status(&refused)["config_store_error"].is_string()
    }));
    let st = status(&refused);
    assert_eq!(st["config_store"], "unreachable", "{st}");
    assert!(st["config_revision"].is_null());
    assert_eq!(code(&refused, "/tls"), 404);
    assert!(gw.stop());
    assert!(refused.stop());
}

#[test]
fn etcd_with_auth_enabled_takes_a_user_and_password() {
    const PASSWORD: &str = "etcd-root-password-4711";
    let upstream = Upstream::start_ok();
    let mut etcd = EtcdServer::start();
    let key = "/kairos/auth";
    etcd.put(key, &document(&upstream.url(), &["/auth"]).to_string());
    etcd.enable_auth(PASSWORD);
    let store = json!({
        "type": "etcd", "endpoints": [etcd.url()], "key": key,
        "username": "root", "password": "${ETCD_PASSWORD}",
    });
    let mut gw = GatewayProcess::start_with_store_config(
        store.clone(),
        TOKEN,
        &[("ETCD_PASSWORD", PASSWORD)],
    );
    follows_and_writes(&gw, &upstream, "/auth");

    // etcd restarted, the token the gateway holds no longer valid: etcd cancels the new
    // watch for it (HTTP 200, "invalid auth token"); the gateway authenticates again and the
    // next change arrives.
    etcd.invalidate_tokens();
    etcd.kill();
    etcd.restart();
    let restarted = Instant::now();
    etcd.put(
        key,
        &document(&upstream.url(), &["/auth", "/restarted"]).to_string(),
    );
    assert!(
        wait_until(Duration::from_secs(15), || code(&gw, "/restarted") == 200),
        "{}",
        status(&gw)
    );
    println!(
        "a change after etcd's restart (auth on) arrived after {:?}",
        restarted.elapsed()
    );

    // The instance's file references ${ETCD_PASSWORD}; the shared document may not (only
    // admin.allowed_env): neither written into etcd nor sent through the admin API.
    let mut leaky = document(&upstream.url(), &["/auth", "/leak"]);
    leaky["routes"][1]["rewrite"] = json!("/${ETCD_PASSWORD}");
    etcd.put(key, &leaky.to_string());
    assert!(
        wait_until(Duration::from_secs(2), || status(&gw)["config_store_error"]
            .as_str()
            .is_some_and(
                |e| e.contains("`ETCD_PASSWORD` may not be referenced")
            )),
        "{}",
        status(&gw)
    );
    assert_eq!(code(&gw, "/leak"), 404);
    let (_, etag) = get_config(&gw);
    let (s, _, body) = put_config(&gw, &leaky, &etag);
    assert_eq!(s, 400, "{body}");
    assert!(
        body.to_string()
            .contains("`ETCD_PASSWORD` may not be referenced"),
        "{body}"
    );
    assert!(!body.to_string().contains(PASSWORD));
    assert_eq!(code(&gw, "/leak"), 404);
    let mut admin_token = document(&upstream.url(), &["/auth", "/leak"]);
    admin_token["routes"][1]["rewrite"] = json!("/${KAIROS_ADMIN_TOKEN}");
    let (s, _, body) = put_config(&gw, &admin_token, &etag);
    assert_eq!(s, 400, "{body}");
    assert_eq!(code(&gw, "/restarted"), 200);

    // A wrong password: refused, said in the status; neither password is ever logged.
    const WRONG: &str = "not-the-etcd-password-0815";
    let mut refused =
        GatewayProcess::start_with_store_config(store, TOKEN, &[("ETCD_PASSWORD", WRONG)]);
    assert!(wait_until(Duration::from_secs(5), || {
        status(&refused)["config_store_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused access"))
    }));
    assert!(status(&refused)["config_revision"].is_null());
    assert!(gw.stop());
    assert!(refused.stop());
    for line in gw.logs().iter().chain(refused.logs().iter()) {
        assert!(!line.contains(PASSWORD) && !line.contains(WRONG), "{line}");
    }
}

#[test]
fn a_frozen_etcd_is_noticed_while_serving_goes_on() {
    let upstream = Upstream::start_ok();
    let etcd = EtcdServer::start();
    let key = "/kairos/frozen";
    etcd.put(key, &document(&upstream.url(), &["/x"]).to_string());
    let mut gw = GatewayProcess::start_with_store(&etcd.url(), key, TOKEN);
    assert!(wait_until(Duration::from_secs(5), || code(&gw, "/x") == 200));
    assert!(wait_until(Duration::from_secs(2), || status(&gw)
        ["config_store"]
        == "ok"));
    // SIGSTOP: the watch's connection stays open and silent; the probe notices.
    etcd.pause();
    let paused = Instant::now();
    assert!(
        wait_until(Duration::from_secs(12), || status(&gw)["config_store"]
            == "unreachable"),
        "{}",
        status(&gw)
    );
    println!(
        "a frozen etcd reported unreachable after {:?}",
        paused.elapsed()
    );
    assert_eq!(code(&gw, "/x"), 200);
    assert_eq!(metric_of(&gw, "kairos_config_store_up"), Some(0.0));
    etcd.resume();
    // The worst case: a back-off of 5 s (+20%) and a call's timeout of 2 s; room for a
    // loaded machine.
    assert!(wait_until(Duration::from_secs(15), || status(&gw)
        ["config_store"]
        == "ok"));
    etcd.put(key, &document(&upstream.url(), &["/y"]).to_string());
    assert!(wait_until(Duration::from_secs(2), || code(&gw, "/y") == 200));
    assert!(gw.stop());
}

#[test]
fn the_instance_file_example_is_valid_and_gives_only_its_own_members() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cluster-instance.json");
    let text = std::fs::read_to_string(path).unwrap();
    let env = |k: &str| (k == "KAIROS_ADMIN_TOKEN").then(|| TOKEN.to_string());
    let cfg =
        kairos_rs::config::load_str_with_env(&text, path, std::path::Path::new("config"), &env)
            .unwrap_or_else(|e| panic!("{e}"));
    let store = cfg.config_store.expect("a config store");
    assert_eq!(store.endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!(store.key, "/kairos/config");
    assert!(kairos_rs::config::cluster::local_errors(&text).is_empty());
}

#[test]
fn a_watch_on_a_frozen_member_moves_to_the_next_endpoint() {
    let upstream = Upstream::start_ok();
    let etcd = EtcdServer::start();
    let key = "/kairos/failover";
    etcd.put(key, &document(&upstream.url(), &["/x"]).to_string());
    // The first endpoint reaches etcd through a relay; the second is etcd itself.
    let relay = FreezableRelay::start(etcd.client_port);
    let store = json!({ "type": "etcd", "endpoints": [relay.url(), etcd.url()], "key": key });
    let mut gw = GatewayProcess::start_with_store_config(store, TOKEN, &[]);
    assert!(wait_until(Duration::from_secs(5), || code(&gw, "/x") == 200));
    // The watch is on the relay; frozen, it holds the watch open and silent while the other
    // endpoint answers. The change must still arrive, through the other endpoint.
    relay.freeze();
    let frozen = Instant::now();
    etcd.put(key, &document(&upstream.url(), &["/y"]).to_string());
    assert!(
        wait_until(Duration::from_secs(15), || code(&gw, "/y") == 200),
        "{}",
        status(&gw)
    );
    println!(
        "a change behind a frozen member arrived after {:?}",
        frozen.elapsed()
    );
    assert!(wait_until(Duration::from_secs(2), || status(&gw)
        ["config_store"]
        == "ok"));
    assert!(gw.stop());
}

#[test]
fn the_etag_is_the_revision_of_the_document_returned() {
    let upstream = Upstream::start_ok();
    let etcd = EtcdServer::start();
    let key = "/kairos/etag";
    etcd.put(key, &document(&upstream.url(), &["/a"]).to_string());
    let a = GatewayProcess::start_with_store(&etcd.url(), key, TOKEN);
    let b = GatewayProcess::start_with_store(&etcd.url(), key, TOKEN);
    for gw in [&a, &b] {
        assert!(wait_until(Duration::from_secs(5), || code(gw, "/a") == 200));
    }
    // Two writers start from the same revision, one through each instance; A wins.
    let (_, tag_a) = get_config(&a);
    let (_, tag_b) = get_config(&b);
    assert_eq!(tag_a, tag_b);
    let (s, won, body) = put_config(&a, &document(&upstream.url(), &["/a", "/from-a"]), &tag_a);
    assert_eq!(s, 200, "{body}");
    let (s, lost, body) = put_config(&b, &document(&upstream.url(), &["/a", "/from-b"]), &tag_b);
    assert_eq!(s, 412, "{body}");
    assert_eq!(lost, won);
    // B reads again at once (its watch may not have applied A's write yet): the body is the
    // one its ETag names, A's, so B's edit of it keeps A's change.
    let (mut doc, tag) = get_config(&b);
    assert_eq!(Some(&tag), won.as_ref());
    assert_eq!(doc, document(&upstream.url(), &["/a", "/from-a"]));
    doc["routes"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "r2", "path": "/from-b", "upstream": "u" }));
    let (s, _, body) = put_config(&b, &doc, &tag);
    assert_eq!(s, 200, "{body}");
    for gw in [&a, &b] {
        for path in ["/from-a", "/from-b"] {
            assert!(
                wait_until(Duration::from_secs(1), || code(gw, path) == 200),
                "{path}: {}",
                status(gw)
            );
        }
    }

    // The key deleted: the document in effect keeps serving, its ETag is that of an absent
    // key, and a write with it (create-only) goes through.
    let deleted = etcd.delete(key);
    assert!(wait_until(Duration::from_secs(2), || status(&a)
        ["store_revision"]
        == deleted));
    let (doc, tag) = get_config(&a);
    assert_eq!(tag, "\"0\"");
    assert_eq!(code(&a, "/from-b"), 200);
    let (s, _, body) = put_config(&a, &doc, &tag);
    assert_eq!(s, 200, "{body}");
    let (_, tag) = get_config(&b);
    assert_eq!(Some(tag), Some(format!("\"{}\"", body["revision"])));
    for mut gw in [a, b] {
        assert!(gw.stop());
    }
}

#[test]
fn a_write_whose_answer_is_lost_is_told_by_what_the_key_holds() {
    let upstream = Upstream::start_ok();
    let etcd = EtcdServer::start();
    let key = "/kairos/lost-answer";
    etcd.put(key, &document(&upstream.url(), &["/a"]).to_string());
    // The first endpoint passes requests to etcd and, once frozen, holds its answers back.
    let relay = FreezableRelay::start(etcd.client_port);
    let store = json!({ "type": "etcd", "endpoints": [relay.url(), etcd.url()], "key": key });
    let mut gw = GatewayProcess::start_with_store_config(store, TOKEN, &[]);
    assert!(wait_until(Duration::from_secs(5), || code(&gw, "/a") == 200));
    let (_, tag) = get_config(&gw);
    relay.freeze_answers();
    // The transaction is applied and its answer lost: not tried again elsewhere (it would
    // fail its compare against itself, a 412), but read back: the key holds it, success.
    let (s, new_tag, body) = put_config(&gw, &document(&upstream.url(), &["/a", "/b"]), &tag);
    assert_eq!(s, 200, "{body}");
    let revision = body["revision"].as_i64().expect("revision");
    assert_eq!(new_tag, Some(format!("\"{revision}\"")));
    assert_eq!(code(&gw, "/b"), 200);
    let (doc, tag) = get_config(&gw);
    assert_eq!(tag, format!("\"{revision}\""));
    assert_eq!(doc, document(&upstream.url(), &["/a", "/b"]));
    assert!(gw.stop());
}

#[test]
fn an_undecodable_value_is_refused_and_the_next_one_applies() {
    let upstream = Upstream::start_ok();
    let etcd = EtcdServer::start();
    let key = "/kairos/undecodable";
    etcd.put(key, &document(&upstream.url(), &["/a"]).to_string());
    let mut gw = GatewayProcess::start_with_store(&etcd.url(), key, TOKEN);
    assert!(wait_until(Duration::from_secs(5), || code(&gw, "/a") == 200));
    // Bytes that are not UTF-8 (nor JSON): refused alone, said in the status, counted.
    let bad = etcd.put_bytes(key, &[0xff, 0xfe, 0x00, 0x80]);
    assert!(
        wait_until(Duration::from_secs(2), || status(&gw)["store_revision"]
            == bad),
        "{}",
        status(&gw)
    );
    let st = status(&gw);
    assert!(
        st["config_store_error"]
            .as_str()
            .is_some_and(|e| e.contains("not UTF-8")),
        "{st}"
    );
    assert_eq!(code(&gw, "/a"), 200);
    let metrics = blocking_client()
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    let failures = metric(
        &metrics,
        "kairos_config_reloads_total",
        &[("result", "failure")],
    );
    assert_eq!(failures, Some(1.0), "{metrics}");
    // The watch goes on past it: the next valid document applies within 1 s of its write.
    let good = etcd.put(key, &document(&upstream.url(), &["/a", "/b"]).to_string());
    let written = Instant::now();
    assert!(
        wait_until(Duration::from_secs(1), || code(&gw, "/b") == 200),
        "{}",
        status(&gw)
    );
    println!(
        "the document after an undecodable one applied after {:?}",
        written.elapsed()
    );
    assert_eq!(status(&gw)["config_revision"], good);
    // Also when the undecodable value is what the key holds at start.
    etcd.put_bytes(key, &[0xff]);
    let mut late = GatewayProcess::start_with_store(&etcd.url(), key, TOKEN);
    assert!(wait_until(Duration::from_secs(5), || status(&late)
        ["config_store_error"]
        .as_str()
        .is_some_and(|e| e.contains("not UTF-8"))));
    etcd.put(key, &document(&upstream.url(), &["/c"]).to_string());
    assert!(wait_until(Duration::from_secs(2), || code(&late, "/c") == 200));
    assert!(gw.stop());
    assert!(late.stop());
}
