//! The admin API's safety rules (CONFIG.md, "Admin API safety"), against the real binary:
//! `${ENV}` in a config sent to the admin API (only the start file's variables and
//! `admin.allowed_env`; no value from the environment ever echoed), ETag and If-Match on
//! `/_kairos/config`, the admin lockout, and 405 with `Allow` for methods a path does not serve.

mod support;

use support::*;

const TOKEN: &str = "admin-api-test-token-0123456789";
const SECRET: &str = "jwt-secret-from-the-environment-0123456789";

fn client() -> reqwest::blocking::Client {
    blocking_client()
}

/// A config whose admin token comes from `${ADMIN_API_TOKEN}`, with the given routes (JSON)
/// and extra upstreams; `admin.allowed_env` lets admin bodies use `${ADMIN_API_BACKEND}` and
/// `${ADMIN_API_HOST}`.
fn config(up: &Upstream, routes: serde_json::Value, extra: serde_json::Value) -> String {
    let mut upstreams = serde_json::json!({"u": {"servers": [{"url": up.url()}]}});
    if let Some(m) = extra.as_object() {
        for (k, v) in m {
            upstreams[k] = v.clone();
        }
    }
    serde_json::json!({
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "workers": 1},
        "admin": {"token": "${ADMIN_API_TOKEN}", "watch_config": false,
                  "allowed_env": ["ADMIN_API_BACKEND", "ADMIN_API_HOST"]},
        "upstreams": upstreams,
        "routes": routes,
        "logging": {"format": "json", "level": "info", "access_log": false}
    })
    .to_string()
}

fn send(
    c: &reqwest::blocking::Client,
    method: &str,
    url: String,
    body: Option<String>,
    if_match: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = c
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.body(b);
    }
    if let Some(t) = if_match {
        req = req.header("if-match", t);
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().unwrap())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_body_may_reference_only_allowed_variables_and_no_value_from_the_environment_is_echoed() {
    let up = Upstream::start_ok();
    let backend = Upstream::start(|_| Reply::ok("from-backend"));
    let backend_addr = backend.addr.to_string();
    let start = config(
        &up,
        serde_json::json!([{"name": "r", "path": "/r", "upstream": "u"}]),
        serde_json::json!({}),
    );
    let gw = GatewayProcess::start_with_env(
        &start,
        &[
            ("ADMIN_API_TOKEN", TOKEN),
            ("JWT_SECRET", SECRET),
            ("ADMIN_API_BACKEND", &backend_addr),
            ("ADMIN_API_HOST", "api.example.test"),
        ],
    );
    let c = client();
    let file_before = std::fs::read_to_string(gw.config_path()).unwrap();
    let validate = gw.url("/_kairos/config/validate");
    let put = gw.url("/_kairos/config");

    // A route named after a variable the start file does not reference: refused, naming the
    // variable, by the dry run and by PUT; the secret appears nowhere.
    let leaky = config(
        &up,
        serde_json::json!([{"name": "${JWT_SECRET}", "path": "/r", "upstream": "u"}]),
        serde_json::json!({}),
    );
    for (method, url) in [("POST", validate.clone()), ("PUT", put.clone())] {
        let (status, _, body) = send(&c, method, url, Some(leaky.clone()), None);
        assert_eq!(status, 400, "{method}: {body}");
        assert!(!body.contains(SECRET), "{method} echoed the secret: {body}");
        let v = json(&body);
        assert_eq!(v["error"]["code"], "config_invalid");
        assert!(
            body.contains("JWT_SECRET"),
            "{method}: the variable is named: {body}"
        );
    }
    // The same variable anywhere else: refused too.
    let mut elsewhere: serde_json::Value = json(&start);
    elsewhere["jwt_validation"] = serde_json::json!({"secret": "${JWT_SECRET}"});
    let (status, _, body) = send(
        &c,
        "POST",
        validate.clone(),
        Some(elsewhere.to_string()),
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("JWT_SECRET") && !body.contains(SECRET),
        "{body}"
    );

    // An allowed variable in a name: names never come from the environment.
    let named = config(
        &up,
        serde_json::json!([{"name": "${ADMIN_API_HOST}", "path": "/r", "upstream": "u"}]),
        serde_json::json!({}),
    );
    let (status, _, body) = send(&c, "POST", validate.clone(), Some(named), None);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("routes[0].name") && !body.contains("api.example.test"),
        "{body}"
    );

    let routes = json(&send(&c, "GET", gw.url("/_kairos/routes"), None, None).2);
    assert_eq!(routes[0]["name"], "r", "nothing refused was applied");
    assert_eq!(
        std::fs::read_to_string(gw.config_path()).unwrap(),
        file_before
    );

    // Allowed variables work; the diff, the route listing, the upstream listing, the metrics
    // and the log show the references, never the values.
    let next = config(
        &up,
        serde_json::json!([
            {"name": "r", "path": "/r", "upstream": "u"},
            {"name": "b", "path": "/b", "host": "${ADMIN_API_HOST}", "upstream": "backend"}
        ]),
        serde_json::json!({"backend": {"servers": [{"url": "http://${ADMIN_API_BACKEND}"}]}}),
    );
    let (status, _, body) = send(&c, "POST", validate.clone(), Some(next.clone()), None);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(&backend_addr), "{body}");
    assert_eq!(
        json(&body)["diff"]["servers_added"],
        serde_json::json!(["backend http://${ADMIN_API_BACKEND}"])
    );
    let (status, _, body) = send(&c, "PUT", put.clone(), Some(next.clone()), None);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(&backend_addr), "{body}");

    let res = c
        .get(gw.url("/b"))
        .header("host", "api.example.test")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().unwrap(), "from-backend");

    let (_, _, routes) = send(&c, "GET", gw.url("/_kairos/routes"), None, None);
    assert!(!routes.contains("api.example.test"), "{routes}");
    assert_eq!(json(&routes)[1]["host"], "${ADMIN_API_HOST}");
    let (_, _, upstreams) = send(&c, "GET", gw.url("/_kairos/upstreams"), None, None);
    assert!(!upstreams.contains(&backend_addr), "{upstreams}");
    assert!(
        upstreams.contains("http://${ADMIN_API_BACKEND}"),
        "{upstreams}"
    );
    let (_, _, metrics) = send(&c, "GET", gw.url("/_kairos/metrics"), None, None);
    assert!(
        !metrics.contains(&backend_addr),
        "a metric label holds the value"
    );
    let logs = gw.logs().join("\n");
    assert!(!logs.contains(SECRET), "a log line holds the secret");
    assert!(
        !logs.contains(&backend_addr),
        "a log line holds the value: {logs}"
    );
}

#[test]
fn put_honours_if_match_and_refuses_a_lockout_before_anything_else() {
    let up = Upstream::start_ok();
    let start = config(
        &up,
        serde_json::json!([{"name": "first", "path": "/r", "upstream": "u"}]),
        serde_json::json!({}),
    );
    let gw = GatewayProcess::start_with_env(&start, &[("ADMIN_API_TOKEN", TOKEN)]);
    let c = client();
    let put = gw.url("/_kairos/config");
    let route_name = |c: &reqwest::blocking::Client| {
        json(&send(c, "GET", gw.url("/_kairos/routes"), None, None).2)[0]["name"].clone()
    };

    // GET returns the config hash, quoted, as its ETag.
    let (status, headers, _) = send(&c, "GET", put.clone(), None, None);
    assert_eq!(status, 200);
    let etag = headers["etag"].to_str().unwrap().to_string();
    let status_v = json(&send(&c, "GET", gw.url("/_kairos/status"), None, None).2);
    assert_eq!(
        etag,
        format!("\"{}\"", status_v["config"]["sha256"].as_str().unwrap())
    );
    let file_before = std::fs::read_to_string(gw.config_path()).unwrap();

    // Lockout: a config without an admin token is refused with 409 before any other check
    // (even a stale If-Match); nothing is written and the admin API still works.
    let mut no_token: serde_json::Value = json(&start);
    no_token["admin"].as_object_mut().unwrap().remove("token");
    for body in ["{}".to_string(), no_token.to_string()] {
        for tag in [None, Some("\"stale\"")] {
            let (status, _, answer) = send(&c, "PUT", put.clone(), Some(body.clone()), tag);
            assert_eq!(status, 409, "{body}: {answer}");
            assert_eq!(json(&answer)["error"]["code"], "admin_lockout");
        }
    }
    assert_eq!(
        std::fs::read_to_string(gw.config_path()).unwrap(),
        file_before
    );
    assert_eq!(route_name(&c), "first");

    // A stale If-Match: 412, nothing changes.
    let second = start.replace("\"first\"", "\"second\"");
    let (status, headers, body) = send(
        &c,
        "PUT",
        put.clone(),
        Some(second.clone()),
        Some("\"0000\""),
    );
    assert_eq!(status, 412, "{body}");
    assert_eq!(json(&body)["error"]["code"], "config_changed");
    assert_eq!(headers["etag"].to_str().unwrap(), etag);
    assert_eq!(
        std::fs::read_to_string(gw.config_path()).unwrap(),
        file_before
    );
    assert_eq!(route_name(&c), "first");

    // The matching one: applied.
    let (status, _, body) = send(&c, "PUT", put.clone(), Some(second.clone()), Some(&etag));
    assert_eq!(status, 200, "{body}");
    assert_eq!(route_name(&c), "second");
    assert_eq!(std::fs::read_to_string(gw.config_path()).unwrap(), second);

    // The old ETag is stale now: a second writer who read the first config is refused.
    let third = start.replace("\"first\"", "\"third\"");
    let (status, _, _) = send(&c, "PUT", put.clone(), Some(third.clone()), Some(&etag));
    assert_eq!(status, 412);
    assert_eq!(route_name(&c), "second");

    // Without If-Match the PUT is accepted (documented in the README).
    let (status, _, body) = send(&c, "PUT", put.clone(), Some(third), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(route_name(&c), "third");
}

#[test]
fn a_method_a_path_does_not_serve_answers_405_with_allow() {
    let up = Upstream::start_ok();
    let start = config(
        &up,
        serde_json::json!([{"name": "r", "path": "/r", "upstream": "u"}]),
        serde_json::json!({}),
    );
    let gw = GatewayProcess::start_with_env(&start, &[("ADMIN_API_TOKEN", TOKEN)]);
    let c = client();
    for (method, path, allow) in [
        ("TRACE", "/_kairos/upstreams", "GET"),
        ("DELETE", "/_kairos/config", "GET, PUT"),
        ("POST", "/_kairos/config", "GET, PUT"),
        ("GET", "/_kairos/config/reload", "POST"),
        ("PUT", "/_kairos/config/validate", "POST"),
        ("POST", "/_kairos/routes", "GET"),
        ("PATCH", "/_kairos/status", "GET"),
        ("DELETE", "/_kairos/openapi.json", "GET"),
        ("POST", "/_kairos/metrics", "GET"),
        ("POST", "/_kairos/health", "GET"),
        ("PUT", "/_kairos/ready", "GET"),
    ] {
        let (status, headers, body) = send(&c, method, gw.url(path), None, None);
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(headers["allow"].to_str().unwrap(), allow, "{method} {path}");
        let v = json(&body);
        assert_eq!(v["error"]["code"], "method_not_allowed", "{method} {path}");
        assert!(v["error"]["request_id"].is_string());
    }
    // Without the token, a guarded path still says 401 (and the open ones 405).
    let res = c
        .request(reqwest::Method::TRACE, gw.url("/_kairos/upstreams"))
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = c.post(gw.url("/_kairos/health")).send().unwrap();
    assert_eq!(res.status(), 405);
    // A path that does not exist stays 404.
    let (status, _, _) = send(&c, "GET", gw.url("/_kairos/nothing"), None, None);
    assert_eq!(status, 404);
}

#[test]
fn a_config_sent_back_as_get_gave_it_keeps_its_literal_secrets() {
    let up = Upstream::start_ok();
    // Literal secrets (no `${ENV}`): the admin token and a JWT secret.
    let mut start = json(&config(
        &up,
        serde_json::json!([{"name": "first", "path": "/r", "upstream": "u", "auth": "jwt"}]),
        serde_json::json!({}),
    ));
    start["admin"]["token"] = TOKEN.into();
    start["jwt_validation"] = serde_json::json!({"algorithm": "HS256", "secret": SECRET});
    let start = serde_json::to_string_pretty(&start).unwrap();
    let gw = GatewayProcess::start_with_env(&start, &[]);
    let c = client();
    let put = gw.url("/_kairos/config");

    let (status, headers, body) = send(&c, "GET", put.clone(), None, None);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(TOKEN) && !body.contains(SECRET), "{body}");
    let etag = headers["etag"].to_str().unwrap().to_string();
    let shown = serde_json::to_string_pretty(&json(&body)).unwrap();
    assert_eq!(json(&shown)["jwt_validation"]["secret"], "<redacted>");

    // A dry run and a PUT of the redacted text with one change: the secrets are kept.
    let edited = shown.replace("\"first\"", "\"second\"");
    let (status, _, answer) = send(
        &c,
        "POST",
        gw.url("/_kairos/config/validate"),
        Some(edited.clone()),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let (status, _, answer) = send(&c, "PUT", put.clone(), Some(edited), Some(&etag));
    assert_eq!(status, 200, "{answer}");
    let written = json(&std::fs::read_to_string(gw.config_path()).unwrap());
    assert_eq!(written["admin"]["token"], TOKEN);
    assert_eq!(written["jwt_validation"]["secret"], SECRET);
    assert_eq!(written["routes"][0]["name"], "second");
    // The written token still opens the admin API.
    let (status, _, routes) = send(&c, "GET", gw.url("/_kairos/routes"), None, None);
    assert_eq!(status, 200);
    assert_eq!(json(&routes)[0]["name"], "second");

    // `<redacted>` where the running config has no secret: refused, nothing written.
    let mut moved = json(&shown);
    moved["tracing"] = serde_json::json!({"headers": {"x-api-key": "<redacted>"}});
    let before = std::fs::read_to_string(gw.config_path()).unwrap();
    let (status, _, answer) = send(&c, "PUT", put, Some(moved.to_string()), None);
    assert_eq!(status, 400, "{answer}");
    let answer = json(&answer);
    assert_eq!(answer["error"]["code"], "config_invalid");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tracing.headers.x-api-key"),
        "{answer}"
    );
    assert_eq!(std::fs::read_to_string(gw.config_path()).unwrap(), before);
}
