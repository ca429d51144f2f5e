//! The admin API's OpenAPI document (src/admin/openapi.json) against the code:
//! - its `Config` component and the `Raw*` components under it are the config's JSON Schema
//!   (`kairos-rs config schema`), hoisted into `components.schemas`: the request bodies of
//!   `PUT /_kairos/config` and `POST /_kairos/config/validate` and the answer of
//!   `GET /_kairos/config` reference it. `KAIROS_BLESS=1 cargo test --test openapi` rewrites
//!   the document when the schema changed;
//! - every operation, called on a real gateway in the ways that give each documented status,
//!   answers with a status the document lists for it, and a JSON body that matches the
//!   documented schema (a checker for the JSON Schema subset the document uses).

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const TOKEN: &str = "openapi-test-admin-token-0123456789";
const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/admin/openapi.json");

fn committed() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DOC_PATH).unwrap()).unwrap()
}

/// `doc` with the config's JSON Schema as `components.schemas.Config` and its `$defs` hoisted
/// next to it (`#/$defs/X` becomes `#/components/schemas/X`).
fn with_config_schema(mut doc: Value) -> Value {
    let text = kairos_rs::config::json_schema().replace("\"#/$defs/", "\"#/components/schemas/");
    let mut schema: Value = serde_json::from_str(&text).unwrap();
    let obj = schema.as_object_mut().unwrap();
    let defs = obj.remove("$defs").unwrap_or_else(|| json!({}));
    obj.remove("$schema");
    let schemas = doc["components"]["schemas"].as_object_mut().unwrap();
    // What an earlier bless put there goes first, so a removed config type leaves no trace.
    schemas.retain(|k, _| k != "Config" && !k.starts_with("Raw"));
    schemas.insert("Config".into(), schema);
    for (k, v) in defs.as_object().unwrap() {
        schemas.insert(k.clone(), v.clone());
    }
    doc
}

#[test]
fn the_document_carries_the_current_config_schema() {
    let doc = committed();
    let expected = with_config_schema(doc.clone());
    if std::env::var_os("KAIROS_BLESS").is_some() {
        let mut text = serde_json::to_string_pretty(&expected).unwrap();
        text.push('\n');
        std::fs::write(DOC_PATH, text).unwrap();
        return;
    }
    assert!(
        doc == expected,
        "src/admin/openapi.json does not carry the current config schema: run \
         `KAIROS_BLESS=1 cargo test --test openapi`"
    );
    for (path, method) in [
        ("/_kairos/config", "put"),
        ("/_kairos/config/validate", "post"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/Config",
            "{method} {path}"
        );
    }
}

/// Checks `value` against `schema` (resolving `$ref`s in `doc`); the errors, with their JSON
/// paths.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix('#')
            .and_then(|p| doc.pointer(p))
            .unwrap_or_else(|| panic!("unresolved $ref {r}"));
        return check(doc, target, value, at, errors);
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let is = |t: &str| match t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "string" => value.is_string(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            "number" => value.is_number(),
            "integer" => {
                value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            other => panic!("type {other} not known to the checker"),
        };
        if !types.iter().any(|t| is(t)) {
            errors.push(format!("{at}: {value} is not of type {types:?}"));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            errors.push(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    if let Some(c) = schema.get("const") {
        if c != value {
            errors.push(format!("{at}: {value} is not {c}"));
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let matching = options
                .iter()
                .filter(|o| {
                    let mut e = Vec::new();
                    check(doc, o, value, at, &mut e);
                    e.is_empty()
                })
                .count();
            let ok = match key {
                "oneOf" => matching == 1,
                _ => matching >= 1,
            };
            if !ok {
                errors.push(format!("{at}: {value} matches {matching} of its {key}"));
            }
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(doc, s, value, at, errors);
        }
    }
    if let Some(obj) = value.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(name) {
                errors.push(format!("{at}: required `{name}` is missing"));
            }
        }
        for (k, v) in obj {
            let path = format!("{at}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(doc, s, v, &path, errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{path}: not a documented property"))
                    }
                    Some(s @ Value::Object(_)) => check(doc, s, v, &path, errors),
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, v) in list.iter().enumerate() {
            check(doc, items, v, &format!("{at}[{i}]"), errors);
        }
    }
}

#[test]
fn the_checker_catches_what_it_should() {
    let doc = json!({"components": {"schemas": {"N": {"type": ["string", "null"]}}}});
    let schema = json!({
        "type": "object", "required": ["a"],
        "properties": {"a": {"type": "integer"}, "b": {"$ref": "#/components/schemas/N"},
                       "c": {"enum": ["x", "y"]}, "d": {"type": "array", "items": {"type": "string"}}},
        "additionalProperties": false
    });
    let mut e = Vec::new();
    check(
        &doc,
        &schema,
        &json!({"a": 1, "b": null, "c": "x", "d": ["s"]}),
        "$",
        &mut e,
    );
    assert!(e.is_empty(), "{e:?}");
    check(
        &doc,
        &schema,
        &json!({"b": 3, "c": "z", "d": [1], "e": 0}),
        "$",
        &mut e,
    );
    assert_eq!(e.len(), 5, "{e:?}");
}

/// One call and what the document says about it.
struct Call {
    method: &'static str,
    path: &'static str,
    token: bool,
    if_match: Option<String>,
    body: Option<String>,
}

fn call(method: &'static str, path: &'static str) -> Call {
    Call {
        method,
        path,
        token: true,
        if_match: None,
        body: None,
    }
}

impl Call {
    fn anonymous(mut self) -> Self {
        self.token = false;
        self
    }
    fn body(mut self, b: &str) -> Self {
        self.body = Some(b.to_string());
        self
    }
    fn if_match(mut self, etag: &str) -> Self {
        self.if_match = Some(etag.to_string());
        self
    }
}

/// The document's path template that `path` (a concrete path) is an instance of.
fn doc_path<'a>(doc: &'a Value, path: &'a str) -> &'a str {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| {
            let t: Vec<&str> = k.split('/').collect();
            t.len() == segs.len()
                && t.iter()
                    .zip(&segs)
                    .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')))
        })
        .map_or(path, String::as_str)
}

#[test]
fn every_operation_answers_as_documented() {
    let doc = committed();
    let up = Upstream::start_ok();
    let config = json!({
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "workers": 1},
        "admin": {"token": "${OPENAPI_TEST_TOKEN}", "watch_config": false},
        "upstreams": {"u": {"servers": [{"url": up.url()}]}},
        "routes": [
            {"name": "items", "path": "/items/{id}", "upstream": "u", "rewrite": "/v1/items/{id}"},
            {"name": "all", "path": "/{*rest}", "upstream": "u", "host": "api.example.com"}
        ],
        "logging": {"format": "json", "level": "info", "access_log": false},
        "caching": {"enabled": true},
        // Every operation's 401 is exercised: more wrong tokens than the default budget.
        "rate_limiting": {"auth_failures": {"rps": 100, "burst": 200}}
    })
    .to_string();
    let gw = GatewayProcess::start_with_env(&config, &[("OPENAPI_TEST_TOKEN", TOKEN)]);
    install_crypto_provider();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // A reload first, so /status has a last_reload to describe.
    let send = |c: &Call| {
        let mut req = client.request(c.method.parse().unwrap(), gw.url(c.path));
        if c.token {
            req = req.bearer_auth(TOKEN);
        }
        if let Some(e) = &c.if_match {
            req = req.header("if-match", e);
        }
        if let Some(b) = &c.body {
            req = req
                .header("content-type", "application/json")
                .body(b.clone());
        }
        req.send().unwrap()
    };
    let etag = send(&call("GET", "/_kairos/config"))
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let invalid = r#"{"version": 1, "admin": {"token": "x-token-long-enough-0123456789"}, "routes": [{"name": "r"}]}"#;
    let calls = vec![
        call("GET", "/_kairos/health").anonymous(),
        call("GET", "/_kairos/ready").anonymous(),
        call("GET", "/_kairos/metrics"),
        call("GET", "/_kairos/metrics").anonymous(),
        call("GET", "/_kairos/upstreams"),
        call("GET", "/_kairos/upstreams").anonymous(),
        call("GET", "/_kairos/routes"),
        call("GET", "/_kairos/routes").anonymous(),
        call("POST", "/_kairos/config/reload"),
        call("POST", "/_kairos/config/reload").anonymous(),
        call("GET", "/_kairos/status"),
        call("GET", "/_kairos/status").anonymous(),
        call("GET", "/_kairos/config"),
        call("GET", "/_kairos/config").anonymous(),
        call("POST", "/_kairos/config/validate").body(&text),
        call("POST", "/_kairos/config/validate").body(invalid),
        call("POST", "/_kairos/config/validate")
            .body(&text)
            .anonymous(),
        call("PUT", "/_kairos/config").body("{}"),
        call("PUT", "/_kairos/config").body(invalid),
        call("PUT", "/_kairos/config")
            .body(&text)
            .if_match("\"stale\""),
        call("PUT", "/_kairos/config").body(&text).anonymous(),
        call("PUT", "/_kairos/config").body(&text).if_match(&etag),
        call("GET", "/_kairos/openapi.json"),
        call("GET", "/_kairos/openapi.json").anonymous(),
        call("GET", "/_kairos/cache"),
        call("GET", "/_kairos/cache").anonymous(),
        call("DELETE", "/_kairos/cache").body(r#"{"prefix": "/items/"}"#),
        call("DELETE", "/_kairos/cache").body(r#"{"all": false}"#),
        call("DELETE", "/_kairos/cache")
            .body(r#"{"all": true}"#)
            .anonymous(),
        call("GET", "/_kairos/tenants"),
        call("GET", "/_kairos/tenants").anonymous(),
        call("PUT", "/_kairos/tenants/acme")
            .body(r#"{"hosts": ["acme.example.com"], "quotas": {"daily_requests": 10}}"#),
        call("PUT", "/_kairos/tenants/acme")
            .body(r#"{"hosts": ["acme.example.com"]}"#)
            .if_match("\"stale\""),
        call("PUT", "/_kairos/tenants/acme").body(r#"{"quotas": {}}"#),
        call("PUT", "/_kairos/tenants/acme").body("{}").anonymous(),
        call("GET", "/_kairos/tenants/acme"),
        call("GET", "/_kairos/tenants/nobody"),
        call("GET", "/_kairos/tenants/acme").anonymous(),
        call("GET", "/_kairos/tenants/acme/usage"),
        call("GET", "/_kairos/tenants/acme/usage?from=2026-13-01"),
        call("GET", "/_kairos/tenants/nobody/usage"),
        call("GET", "/_kairos/tenants/acme/usage").anonymous(),
        call("DELETE", "/_kairos/tenants/acme").if_match("\"stale\""),
        call("DELETE", "/_kairos/tenants/acme"),
        call("DELETE", "/_kairos/tenants/acme"),
        call("DELETE", "/_kairos/tenants/acme").anonymous(),
        call("GET", "/_kairos/config/schema"),
        call("GET", "/_kairos/config/schema").anonymous(),
        call("GET", "/_kairos/config/history"),
        call("GET", "/_kairos/config/history").anonymous(),
        call("GET", "/_kairos/logs?status=2xx&limit=10"),
        call("GET", "/_kairos/logs?limit=0"),
        call("GET", "/_kairos/logs").anonymous(),
        call("GET", "/_kairos/stats/history"),
        call("GET", "/_kairos/stats/history").anonymous(),
        // A 200 is a stream that does not end: only its refusal here (tests/admin_ui_api.rs
        // reads the stream).
        call("GET", "/_kairos/events").anonymous(),
        call("GET", "/_kairos/keys"),
        call("GET", "/_kairos/keys").anonymous(),
        call("POST", "/_kairos/keys").body(r#"{"name": "partner"}"#),
        call("POST", "/_kairos/keys")
            .body(r#"{"name": "partner"}"#)
            .if_match("\"stale\""),
        call("POST", "/_kairos/keys")
            .body(r#"{"name": "a/b"}"#)
            .if_match("*"),
        call("POST", "/_kairos/keys")
            .body(r#"{"name": "partner", "permissions": ["read"]}"#)
            .if_match("*"),
        call("POST", "/_kairos/keys")
            .body(r#"{"name": "partner"}"#)
            .if_match("*"),
        call("POST", "/_kairos/keys")
            .body(r#"{"name": "partner"}"#)
            .anonymous(),
        call("DELETE", "/_kairos/keys/partner"),
        call("DELETE", "/_kairos/keys/partner").if_match("\"stale\""),
        call("DELETE", "/_kairos/keys/partner").if_match("*"),
        call("DELETE", "/_kairos/keys/partner").if_match("*"),
        call("DELETE", "/_kairos/keys/partner").anonymous(),
    ];
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for c in &calls {
        let res = send(c);
        let status = res.status().as_u16().to_string();
        let is_json = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"));
        let body = res.text().unwrap();
        let label = format!("{} {} ({status})", c.method, c.path);
        let Some(op) = doc["paths"][doc_path(&doc, c.path)].get(c.method.to_ascii_lowercase())
        else {
            problems.push(format!("{label}: not in the document"));
            continue;
        };
        let Some(documented) = op["responses"].get(&status) else {
            problems.push(format!("{label}: status not documented; body {body}"));
            continue;
        };
        seen.insert((c.method, doc_path(&doc, c.path), status.clone()));
        match documented["content"].get("application/json") {
            Some(media) => {
                if !is_json {
                    problems.push(format!("{label}: documented as JSON, answered otherwise"));
                    continue;
                }
                let value: Value = serde_json::from_str(&body).unwrap();
                let mut errors = Vec::new();
                check(&doc, &media["schema"], &value, "$", &mut errors);
                for e in errors {
                    problems.push(format!("{label}: {e}"));
                }
            }
            None => {
                if is_json
                    && documented["content"]
                        .as_object()
                        .is_some_and(|m| !m.is_empty())
                {
                    problems.push(format!("{label}: JSON where the document says otherwise"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every operation of the document was called, and every status above was produced.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let m = method.to_ascii_uppercase();
            assert!(
                seen.iter().any(|(sm, sp, _)| *sm == m && *sp == path),
                "{m} {path} was not exercised"
            );
        }
    }
    for want in ["200", "400", "401", "409", "412"] {
        assert!(
            seen.iter()
                .any(|(m, p, s)| *m == "PUT" && *p == "/_kairos/config" && s == want),
            "PUT /_kairos/config never answered {want}"
        );
    }
}
