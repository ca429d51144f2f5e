//! The gateway side of the admin web UI (issue 23), against the real binary and a real
//! upstream: the embedded UI files (types, caching, precompressed siblings, security headers,
//! `admin.ui: false`), the token on every API the UI uses and not on its files, the log ring
//! (`/_kairos/logs`), the live stream (`/_kairos/events`), the stats history, the keys API and
//! the reload history.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const TOKEN: &str = "admin-ui-api-test-token-0123456789";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ui/dist");

/// A config with upstream `u` and the given routes, the admin token from `${UI_API_TOKEN}`,
/// and the given top-level keys merged in (objects merged one level deep).
fn config(up: &Upstream, routes: Value, extra: Value) -> String {
    let mut c = json!({
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "workers": 1},
        "admin": {"token": "${UI_API_TOKEN}", "watch_config": false},
        "upstreams": {"u": {"servers": [{"url": up.url()}]}},
        "routes": routes,
        "logging": {"format": "json", "level": "info", "access_log": true}
    });
    for (k, v) in extra.as_object().unwrap() {
        match (c.get_mut(k), v) {
            (Some(Value::Object(have)), Value::Object(add)) => {
                for (k2, v2) in add {
                    have.insert(k2.clone(), v2.clone());
                }
            }
            _ => c[k] = v.clone(),
        }
    }
    c.to_string()
}

fn start(config: &str) -> GatewayProcess {
    GatewayProcess::start_with_env(config, &[("UI_API_TOKEN", TOKEN)])
}

fn http() -> reqwest::blocking::Client {
    install_crypto_provider();
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn get(
    c: &reqwest::blocking::Client,
    url: String,
    headers: &[(&str, &str)],
) -> reqwest::blocking::Response {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().unwrap()
}

fn header<'a>(res: &'a reqwest::blocking::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn assert_secured(res: &reqwest::blocking::Response, what: &str) {
    assert_eq!(header(res, "content-security-policy"), CSP, "{what}");
    assert_eq!(header(res, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header(res, "x-frame-options"), "DENY", "{what}");
    assert_eq!(header(res, "referrer-policy"), "no-referrer", "{what}");
}

/// The files of ui/dist/assets that are not precompressed siblings.
fn built_assets() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("{DIST}/assets"))
        .expect("ui/dist/assets: merge the frontend branch (uif) for its built assets")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".br") && !n.ends_with(".gz"))
        .collect();
    names.sort();
    names
}

#[test]
fn ui_files_are_served_with_types_caching_encodings_and_security_headers() {
    let up = Upstream::start_ok();
    let gw = start(&config(&up, json!([]), json!({})));
    let c = http();

    // No token needed for any of it.
    let res = get(&c, gw.url("/_kairos/admin"), &[]);
    assert_eq!(res.status(), 308);
    assert_eq!(header(&res, "location"), "/_kairos/admin/");
    assert_secured(&res, "redirect");

    let index = std::fs::read(format!("{DIST}/index.html")).unwrap();
    let res = get(&c, gw.url("/_kairos/admin/"), &[]);
    assert_eq!(res.status(), 200);
    assert_secured(&res, "index.html");
    assert_eq!(header(&res, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&res, "cache-control"), "no-cache");
    assert_eq!(header(&res, "content-encoding"), "");
    let etag = header(&res, "etag").to_string();
    assert!(etag.starts_with('"'), "etag {etag}");
    assert_eq!(res.bytes().unwrap().as_ref(), index.as_slice());
    // HEAD: the same head, no body, no token either.
    let res = c.head(gw.url("/_kairos/admin/")).send().unwrap();
    assert_eq!(res.status(), 200);
    assert_secured(&res, "HEAD index.html");
    assert_eq!(header(&res, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&res, "etag"), etag);
    assert!(res.bytes().unwrap().is_empty());
    // Revalidation of the no-cache page.
    let res = get(&c, gw.url("/_kairos/admin/"), &[("if-none-match", &etag)]);
    assert_eq!(res.status(), 304);
    assert_secured(&res, "304");

    let assets = built_assets();
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{assets:?}");
    for name in &assets {
        let path = format!("{DIST}/assets/{name}");
        let plain = std::fs::read(&path).unwrap();
        let url = gw.url(&format!("/_kairos/admin/assets/{name}"));
        let want_type = match name.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            "woff2" => "font/woff2",
            "woff" => "font/woff",
            "png" => "image/png",
            "ico" => "image/x-icon",
            "webp" => "image/webp",
            "json" | "map" => "application/json",
            "txt" => "text/plain; charset=utf-8",
            other => panic!("an asset type the test does not know: {other}"),
        };
        let res = get(&c, url.clone(), &[]);
        assert_eq!(res.status(), 200, "{name}");
        assert_secured(&res, name);
        assert_eq!(header(&res, "content-type"), want_type, "{name}");
        assert_eq!(
            header(&res, "cache-control"),
            "public, max-age=31536000, immutable",
            "{name}"
        );
        assert_eq!(header(&res, "content-encoding"), "", "{name}");
        assert_eq!(res.bytes().unwrap().as_ref(), plain.as_slice(), "{name}");
        for (accept, coding, ext) in [
            ("gzip, deflate, br", "br", "br"),
            ("gzip", "gzip", "gz"),
            ("br;q=0, gzip;q=0.8", "gzip", "gz"),
        ] {
            let Ok(compressed) = std::fs::read(format!("{path}.{ext}")) else {
                continue;
            };
            let res = get(&c, url.clone(), &[("accept-encoding", accept)]);
            assert_eq!(res.status(), 200, "{name} {accept}");
            assert_eq!(header(&res, "content-encoding"), coding, "{name} {accept}");
            assert_eq!(header(&res, "vary"), "Accept-Encoding", "{name}");
            assert_eq!(header(&res, "content-type"), want_type, "{name}");
            assert_eq!(
                res.bytes().unwrap().as_ref(),
                compressed.as_slice(),
                "{name} {accept}"
            );
        }
    }
    let res = get(&c, gw.url("/_kairos/admin/assets/nothing-here.js"), &[]);
    assert_eq!(res.status(), 404);
    let res = get(&c, gw.url("/_kairos/admin/../config"), &[]);
    assert_ne!(res.status(), 200);
}

#[test]
fn admin_ui_false_answers_404_for_every_ui_path() {
    let up = Upstream::start_ok();
    let gw = start(&config(&up, json!([]), json!({"admin": {"ui": false}})));
    let c = http();
    let first = built_assets().into_iter().next().unwrap();
    for path in [
        "/_kairos/admin".to_string(),
        "/_kairos/admin/".to_string(),
        "/_kairos/admin/index.html".to_string(),
        format!("/_kairos/admin/assets/{first}"),
    ] {
        let res = get(&c, gw.url(&path), &[]);
        assert_eq!(res.status(), 404, "{path}");
        assert!(res.headers().get("content-security-policy").is_none());
    }
    // The API stays.
    let res = c
        .get(gw.url("/_kairos/config/schema"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn every_api_the_ui_uses_needs_the_token() {
    let up = Upstream::start_ok();
    let gw = start(&config(&up, json!([]), json!({})));
    let c = http();
    for (method, path) in [("GET", "/_kairos/config/schema"), ("GET", "/_kairos/logs")] {
        let req = |token: Option<&str>| {
            let mut r = c.request(method.parse().unwrap(), gw.url(path));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().unwrap()
        };
        let res = req(None);
        assert_eq!(res.status(), 401, "{method} {path} without a token");
        let body: Value = res.json().unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{method} {path}");
        assert_eq!(
            req(Some("wrong-token-0123456789")).status(),
            401,
            "{method} {path}"
        );
        assert!(
            req(Some(TOKEN)).status().is_success(),
            "{method} {path} with the token"
        );
    }
}

#[test]
fn the_schema_endpoint_serves_what_config_schema_prints() {
    let up = Upstream::start_ok();
    let gw = start(&config(&up, json!([]), json!({})));
    let res = http()
        .get(gw.url("/_kairos/config/schema"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-type"), "application/schema+json");
    let got: Value = res.json().unwrap();
    let want: Value = serde_json::from_str(&kairos_rs::config::json_schema()).unwrap();
    assert_eq!(got, want);
    // The new key is in it.
    let text = kairos_rs::config::json_schema();
    assert!(text.contains("\"ui\""), "admin.ui missing from the schema");
}

fn logs(c: &reqwest::blocking::Client, gw: &GatewayProcess, query: &str) -> Vec<Value> {
    let res = c
        .get(gw.url(&format!("/_kairos/logs{query}")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "logs{query}");
    let body: Value = res.json().unwrap();
    body["lines"].as_array().unwrap().clone()
}

#[test]
fn the_ring_keeps_access_lines_the_log_level_leaves_out_of_the_log() {
    let up = Upstream::start_ok();
    let routes = json!([{"name": "ok", "path": "/ok", "upstream": "u"}]);
    // A filter that leaves the access log's info lines out (RUST_LOG wins over
    // `logging.level`; the gateway's own info lines, "listening" among them, stay): the UI's
    // ring still has them.
    let gw = GatewayProcess::start_with_env(
        &config(&up, routes, json!({})),
        &[
            ("UI_API_TOKEN", TOKEN),
            ("RUST_LOG", "info,kairos::access=warn"),
        ],
    );
    let c = http();
    let res = c
        .get(gw.url("/ok"))
        .header("x-request-id", "rid-quiet-1")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        wait_until(Duration::from_secs(10), || logs(
            &c,
            &gw,
            "?request_id=rid-quiet-1"
        )
        .len()
            == 1),
        "the request's line never reached the ring"
    );
    let line = &logs(&c, &gw, "?request_id=rid-quiet-1")[0];
    assert_eq!(line["kind"], "access");
    assert_eq!(line["route"], "ok");
    assert_eq!(line["status"], 200);
    assert_eq!(line["client"], "127.0.0.1");
    // The log writer writes what waits every 20 ms: long enough for a line to have come.
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.logs().iter().any(|l| l.contains("kairos-rs listening")));
    assert!(
        gw.logs().iter().all(|l| !l.contains("rid-quiet-1")),
        "an access line was written though the filter leaves them out: {:?}",
        gw.logs()
    );
}

#[test]
fn logs_return_the_requests_made_here_and_filter_them() {
    let up = Upstream::start(|r| match r.target.starts_with("/fail") {
        true => Reply::ok("down").status(503),
        false => Reply::ok("fine"),
    });
    let routes = json!([
        {"name": "ok", "path": "/ok", "upstream": "u"},
        {"name": "fail", "path": "/fail", "upstream": "u"}
    ]);
    let gw = start(&config(&up, routes, json!({})));
    let c = http();
    for (path, rid) in [
        ("/ok?api_key=query-secret-value", "rid-ok-1"),
        ("/fail", "rid-fail-1"),
        ("/ok", "rid-ok-2"),
        ("/nowhere", "rid-404-1"),
    ] {
        let res = c
            .get(gw.url(path))
            .header("x-request-id", rid)
            .send()
            .unwrap();
        assert!(res.status().as_u16() >= 200);
    }
    assert!(
        wait_until(Duration::from_secs(10), || logs(
            &c,
            &gw,
            "?request_id=rid-404-1"
        )
        .len()
            == 1),
        "the requests' lines never reached the ring"
    );

    let line = &logs(&c, &gw, "?request_id=rid-ok-1")[0];
    assert_eq!(line["kind"], "access");
    assert_eq!(line["level"], "info");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/ok");
    assert_eq!(line["route"], "ok");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], up.url());
    assert_eq!(line["client"], "127.0.0.1");
    assert!(line["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["ts"].as_str().unwrap().ends_with('Z'));
    assert!(
        line.get("identity").is_none(),
        "unknown fields are absent: {line}"
    );

    let all = logs(&c, &gw, "");
    let text = serde_json::to_string(&all).unwrap();
    assert!(
        !text.contains("query-secret-value"),
        "a query string in the ring: {text}"
    );
    // Newest last.
    let pos = |rid: &str| all.iter().position(|l| l["request_id"] == rid).unwrap();
    assert!(pos("rid-ok-1") < pos("rid-fail-1") && pos("rid-fail-1") < pos("rid-ok-2"));

    let fails = logs(&c, &gw, "?status=5xx");
    assert_eq!(fails.len(), 1, "{fails:?}");
    assert_eq!(fails[0]["request_id"], "rid-fail-1");
    assert_eq!(logs(&c, &gw, "?status=404")[0]["route"], "unmatched");
    let oks = logs(&c, &gw, "?route=ok");
    assert_eq!(oks.len(), 2);
    assert!(oks.iter().all(|l| l["route"] == "ok"));
    assert_eq!(logs(&c, &gw, "?client=127.0.0.1&route=fail").len(), 1);
    assert!(logs(&c, &gw, "?client=10.9.9.9").is_empty());
    let one = logs(&c, &gw, "?limit=1");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["request_id"], "rid-404-1");

    for bad in ["?limit=0", "?limit=5001", "?limit=x", "?status=abc"] {
        let res = c
            .get(gw.url(&format!("/_kairos/logs{bad}")))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().unwrap();
        assert_eq!(body["error"]["code"], "bad_request");
    }
}

/// An open `/_kairos/events` stream, read frame by frame.
struct Events {
    reader: std::io::BufReader<reqwest::blocking::Response>,
}

impl Events {
    fn open(gw: &GatewayProcess) -> Events {
        install_crypto_provider();
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let res = c
            .get(gw.url("/_kairos/events"))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "content-type"), "text/event-stream");
        assert_eq!(header(&res, "cache-control"), "no-store");
        Events {
            reader: std::io::BufReader::new(res),
        }
    }

    /// The next event (comments skipped): its name and its data, parsed.
    fn next(&mut self) -> (String, Value) {
        use std::io::BufRead;
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "the stream ended");
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if !name.is_empty() {
                    return (name, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                assert!(data.is_empty(), "one data line per event");
                data = d.to_string();
            } else {
                assert!(line.starts_with(':'), "not SSE: {line}");
            }
        }
    }

    /// Reads events until `f` accepts one (at most `max` events).
    fn until(&mut self, max: usize, mut f: impl FnMut(&str, &Value) -> bool) -> Value {
        for _ in 0..max {
            let (name, data) = self.next();
            if f(&name, &data) {
                return data;
            }
        }
        panic!("no such event in {max} events");
    }
}

#[test]
fn events_stream_stats_and_log_lines_over_a_real_streamed_response() {
    let up = Upstream::start_ok();
    let routes = json!([{"name": "ok", "path": "/ok", "upstream": "u"}]);
    let gw = start(&config(&up, routes, json!({})));
    let mut events = Events::open(&gw);
    let url = gw.url("/ok");
    let load = std::thread::spawn(move || {
        let c = reqwest::blocking::Client::new();
        for i in 0..40 {
            let res = c
                .get(&url)
                .header("x-request-id", format!("stream-{i}"))
                .send()
                .unwrap();
            assert_eq!(res.status(), 200);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let log = events.until(200, |name, data| {
        name == "log"
            && data["lines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["request_id"] == "stream-3")
    });
    let line = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["request_id"] == "stream-3")
        .unwrap();
    assert_eq!(line["route"], "ok");
    assert_eq!(line["status"], 200);
    assert_eq!(line["kind"], "access");
    let stats = events.until(200, |name, data| {
        name == "stats" && data["routes"]["ok"]["rps"].as_f64().unwrap_or(0.0) > 0.0
    });
    assert!(stats["ts"].as_u64().unwrap() > 1_700_000_000_000);
    let total = &stats["total"];
    assert!(total["rps"].as_f64().unwrap() > 0.0, "{stats}");
    assert_eq!(total["error_rate"], 0.0);
    assert!(total["p50_ms"].as_f64().unwrap() > 0.0, "{stats}");
    assert!(total["p99_ms"].as_f64().unwrap() >= total["p50_ms"].as_f64().unwrap());
    assert!(total["active"].as_u64().is_some());
    // This stream's own connection, at least.
    assert!(total["connections"].as_u64().unwrap() >= 1, "{stats}");
    let u = &stats["upstreams"]["u"];
    assert!(u["rps"].as_f64().unwrap() >= 0.0, "{stats}");
    load.join().unwrap();

    // The history has the same traffic, bounded.
    let h: Value = http()
        .get(gw.url("/_kairos/stats/history"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["interval_ms"], 1000);
    let total = h["total"].as_array().unwrap();
    assert!(!total.is_empty() && total.len() <= 900);
    let ok = h["routes"]["ok"].as_array().unwrap();
    assert!(ok.len() <= 900);
    assert!(ok.iter().any(|p| p["rps"].as_f64().unwrap() > 0.0), "{h}");
    for p in ok {
        for k in ["ts", "rps", "error_rate", "p50_ms", "p99_ms", "active"] {
            assert!(p.get(k).is_some(), "{k} missing in {p}");
        }
    }
    assert!(h["upstreams"]["u"].as_array().is_some(), "{h}");
}

fn send(
    c: &reqwest::blocking::Client,
    method: &str,
    url: String,
    body: Option<Value>,
    if_match: Option<&str>,
) -> (u16, String, Value) {
    let mut req = c.request(method.parse().unwrap(), url).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    if let Some(t) = if_match {
        req = req.header("if-match", t);
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    let etag = header(&res, "etag").to_string();
    let text = res.text().unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, etag, body)
}

#[test]
fn keys_are_created_shown_once_used_listed_without_hashes_and_deleted() {
    let up = Upstream::start_ok();
    let routes = json!([{"name": "secure", "path": "/secure", "upstream": "u", "auth": "api_key"}]);
    let extra = json!({"api_keys": {"keys": {
        "from-env": {"key": "${UI_API_ENV_KEY}", "permissions": ["read"]}
    }}});
    let gw = GatewayProcess::start_with_env(
        &config(&up, routes, extra),
        &[
            ("UI_API_TOKEN", TOKEN),
            ("UI_API_ENV_KEY", "kairos_env_key_for_the_test_0123456789"),
        ],
    );
    let c = http();
    let keys_url = || gw.url("/_kairos/keys");

    let (status, etag, list) = send(&c, "GET", keys_url(), None, None);
    assert_eq!(status, 200);
    assert!(etag.starts_with('"'));
    assert_eq!(
        list,
        json!({"keys": [{"name": "from-env", "permissions": ["read"], "rate_limit": null,
                         "tenant": null, "source": "env"}]})
    );

    let new = json!({"name": "partner", "permissions": ["orders:read"], "rate_limit": {"rps": 50, "burst": 100}});
    let (status, _, body) = send(&c, "POST", keys_url(), Some(new.clone()), None);
    assert_eq!(status, 428, "{body}");
    let (status, _, body) = send(&c, "POST", keys_url(), Some(new.clone()), Some("\"stale\""));
    assert_eq!(status, 412, "{body}");
    assert_eq!(body["error"]["code"], "config_changed");
    let (status, new_etag, created) = send(&c, "POST", keys_url(), Some(new.clone()), Some(&etag));
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("kairos_") && key.len() > 40, "{key}");
    assert_eq!(created["name"], "partner");
    assert_eq!(
        new_etag,
        format!("\"{}\"", created["config_hash"].as_str().unwrap())
    );
    assert_ne!(new_etag, etag);

    // The key works on a real route at once; a wrong one does not.
    let res = c
        .get(gw.url("/secure"))
        .header("x-api-key", &key)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = c
        .get(gw.url("/secure"))
        .header("x-api-key", "kairos_wrong")
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);

    // Stored as a hash only: never in the file, a listing or the log.
    let file = std::fs::read_to_string(gw.config_path()).unwrap();
    assert!(!file.contains(&key));
    assert!(file.contains("sha256:"));
    let (_, etag_now, list) = send(&c, "GET", keys_url(), None, None);
    assert_eq!(etag_now, new_etag);
    let text = list.to_string();
    assert!(!text.contains("sha256") && !text.contains(&key), "{text}");
    let partner = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "partner")
        .unwrap()
        .clone();
    assert_eq!(
        partner,
        json!({"name": "partner", "permissions": ["orders:read"],
               "rate_limit": {"rps": 50.0, "burst": 100}, "tenant": null, "source": "hash"})
    );
    let (status, _, config) = send(&c, "GET", gw.url("/_kairos/config"), None, None);
    assert_eq!(status, 200);
    assert!(!config.to_string().contains(&key));
    assert!(
        gw.logs().iter().all(|l| !l.contains(&key)),
        "the key in the log"
    );

    // A second key of that name: 409, nothing changed.
    let (status, _, body) = send(&c, "POST", keys_url(), Some(new), Some(&new_etag));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "key_exists");
    for bad in [
        json!({"name": "a/b"}),
        json!({"name": ""}),
        json!({"nam": "x"}),
    ] {
        let (status, _, body) = send(&c, "POST", keys_url(), Some(bad.clone()), Some(&new_etag));
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Delete: If-Match required, stale refused, then gone and refused on the route.
    let one = || gw.url("/_kairos/keys/partner");
    assert_eq!(send(&c, "DELETE", one(), None, None).0, 428);
    assert_eq!(send(&c, "DELETE", one(), None, Some(&etag)).0, 412);
    let (status, after, body) = send(&c, "DELETE", one(), None, Some(&new_etag));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "partner");
    assert_ne!(after, new_etag);
    assert_eq!(send(&c, "DELETE", one(), None, Some(&after)).0, 404);
    let res = c
        .get(gw.url("/secure"))
        .header("x-api-key", &key)
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
    let (_, _, list) = send(&c, "GET", keys_url(), None, None);
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);

    // All of it needs the token.
    for (method, url) in [("GET", keys_url()), ("POST", keys_url()), ("DELETE", one())] {
        let res = c
            .request(method.parse().unwrap(), url)
            .header("if-match", &after)
            .body(json!({"name": "x"}).to_string())
            .send()
            .unwrap();
        assert_eq!(res.status(), 401, "{method}");
    }
}

#[test]
fn config_history_records_startup_applied_refused_and_signalled_reloads_bounded() {
    let up = Upstream::start_ok();
    let routes = json!([{"name": "ok", "path": "/ok", "upstream": "u"}]);
    let gw = start(&config(&up, routes, json!({})));
    let c = http();
    let history = || {
        send(&c, "GET", gw.url("/_kairos/config/history"), None, None).2["reloads"]
            .as_array()
            .unwrap()
            .clone()
    };
    let (_, etag, _) = send(&c, "GET", gw.url("/_kairos/config"), None, None);
    let h = history();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["trigger"], "startup");
    assert_eq!(h[0]["outcome"], "applied");
    assert_eq!(
        format!("\"{}\"", h[0]["config_hash"].as_str().unwrap()),
        etag
    );

    // A refused PUT: its errors, with path and line.
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let mut bad: Value = serde_json::from_str(&text).unwrap();
    bad["routes"][0]["upstream"] = "nowhere".into();
    let bad_text = serde_json::to_string_pretty(&bad).unwrap();
    let res = c
        .put(gw.url("/_kairos/config"))
        .bearer_auth(TOKEN)
        .header("if-match", &etag)
        .body(bad_text)
        .send()
        .unwrap();
    assert_eq!(res.status(), 400);
    let h = history();
    assert_eq!(h[0]["trigger"], "admin");
    assert_eq!(h[0]["outcome"], "refused");
    assert!(h[0].get("config_hash").is_none());
    let e = &h[0]["errors"][0];
    assert_eq!(e["path"], "routes[0].upstream", "{e}");
    assert!(e["line"].as_u64().unwrap() > 1, "{e}");
    assert!(e["message"].as_str().unwrap().contains("nowhere"), "{e}");

    // An applied one.
    let mut good: Value = serde_json::from_str(&text).unwrap();
    good["routes"][0]["path"] = "/ok2".into();
    let res = c
        .put(gw.url("/_kairos/config"))
        .bearer_auth(TOKEN)
        .header("if-match", &etag)
        .body(good.to_string())
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let new_etag = header(&res, "etag").to_string();
    let (_, etag_now, _) = send(&c, "GET", gw.url("/_kairos/config"), None, None);
    let h = history();
    assert_eq!(h[0]["outcome"], "applied");
    assert_eq!(h[0]["trigger"], "admin");
    assert_eq!(
        format!("\"{}\"", h[0]["config_hash"].as_str().unwrap()),
        etag_now
    );
    let _ = new_etag;
    assert_eq!(h[1]["outcome"], "refused");
    assert_eq!(h[2]["trigger"], "startup");

    // SIGHUP.
    gw.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || history()[0]
        ["trigger"]
        == "signal"));

    // Bounded: the newest 50.
    for _ in 0..50 {
        let (status, _, _) = send(&c, "POST", gw.url("/_kairos/config/reload"), None, None);
        assert_eq!(status, 200);
    }
    let h = history();
    assert_eq!(h.len(), 50);
    assert!(h.iter().all(|r| r["trigger"] == "admin"), "{h:?}");
}

#[test]
fn events_stream_upstream_state_changes_and_applied_reloads() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let up = Upstream::start(
        move |r| match r.target == "/health" && f.load(Ordering::Relaxed) {
            true => Reply::ok("sick").status(503),
            false => Reply::ok("fine"),
        },
    );
    let routes = json!([{"name": "ok", "path": "/ok", "upstream": "u"}]);
    let mut cfg: Value = serde_json::from_str(&config(&up, routes, json!({}))).unwrap();
    cfg["upstreams"]["u"]["health_check"] = json!({
        "path": "/health", "interval": "100ms", "timeout": "100ms",
        "healthy_threshold": 1, "unhealthy_threshold": 1
    });
    let gw = start(&cfg.to_string());
    let mut events = Events::open(&gw);
    failing.store(true, Ordering::Relaxed);
    let down = events.until(500, |name, _| name == "upstream");
    assert_eq!(down["event"], "down", "{down}");
    assert_eq!(down["upstream"], "u");
    assert_eq!(down["server"], up.url());
    assert!(down["detail"].as_str().unwrap().contains("503"), "{down}");
    assert!(down["ts"].as_u64().is_some());
    failing.store(false, Ordering::Relaxed);
    let back = events.until(500, |name, _| name == "upstream");
    assert_eq!(back["event"], "up", "{back}");
    assert_eq!(back["server"], up.url());

    // A reload applied: a config event with the new hash.
    let c = http();
    let (_, etag, _) = send(&c, "GET", gw.url("/_kairos/config"), None, None);
    let mut changed: Value =
        serde_json::from_str(&std::fs::read_to_string(gw.config_path()).unwrap()).unwrap();
    changed["routes"][0]["path"] = "/ok-now".into();
    let res = c
        .put(gw.url("/_kairos/config"))
        .bearer_auth(TOKEN)
        .header("if-match", &etag)
        .body(changed.to_string())
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, new_etag, _) = send(&c, "GET", gw.url("/_kairos/config"), None, None);
    let applied = events.until(500, |name, _| name == "config");
    assert_eq!(
        format!("\"{}\"", applied["config_hash"].as_str().unwrap()),
        new_etag
    );
}

#[test]
fn events_stream_an_ejection_and_the_return_when_it_ends() {
    let bad = Upstream::start(|_| Reply::ok("broken").status(503));
    let good = Upstream::start_ok();
    let routes = json!([{"name": "x", "path": "/x", "upstream": "u"}]);
    let mut cfg: Value = serde_json::from_str(&config(&good, routes, json!({}))).unwrap();
    cfg["upstreams"]["u"] = json!({
        "servers": [{"url": bad.url()}, {"url": good.url()}],
        "outlier_detection": {"consecutive_5xx": 2, "base_ejection_time": "300ms",
                              "max_ejection_percent": 50},
        "retries": {"attempts": 0}
    });
    let gw = start(&cfg.to_string());
    let mut events = Events::open(&gw);
    let url = gw.url("/x");
    let load = std::thread::spawn(move || {
        let c = reqwest::blocking::Client::new();
        for _ in 0..20 {
            let _ = c.get(&url).send().unwrap();
        }
    });
    let ejected = events.until(500, |name, data| {
        name == "upstream" && data["event"] == "ejected"
    });
    assert_eq!(ejected["upstream"], "u");
    assert_eq!(ejected["server"], bad.url());
    assert!(
        ejected["detail"].as_str().unwrap().contains("300 ms"),
        "{ejected}"
    );
    let returned = events.until(500, |name, data| {
        name == "upstream" && data["event"] == "returned" && data["server"] == bad.url()
    });
    assert_eq!(returned["upstream"], "u");
    load.join().unwrap();
}
