//! The command line: validate, schema, routes list, version.

use std::process::Command;

fn kairos(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kairos-rs"))
        .args(args)
        .env_remove("KAIROS_CONFIG")
        .output()
        .expect("run kairos-rs")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const GOOD: &str = r#"{
  "upstreams": {"users": {"servers": [{"url": "http://127.0.0.1:9001"}]}},
  "routes": [
    {"name": "get-user", "path": "/api/users/{id}", "methods": ["GET"], "upstream": "users", "rewrite": "/users/{id}"},
    {"path": "/assets/{*rest}", "upstream": "users"}
  ]
}"#;

#[test]
fn committed_schema_matches_the_binary() {
    let out = kairos(&["config", "schema"]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/schema.json"))
            .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    if printed != committed {
        let first = printed
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "config/schema.json is stale (first difference at line {}): run `cargo run -- config schema > config/schema.json`",
            first + 1
        );
    }
    let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema["properties"]["routes"].is_object());
}

#[test]
fn validate_reports_ok_or_every_error_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.json", GOOD);
    let out = kairos(&["config", "validate", &good]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 routes, 1 upstreams)"));

    let bad = write(
        &dir,
        "bad.json",
        &GOOD
            .replace(
                r#""upstream": "users", "rewrite""#,
                r#""upstream": "user", "rewrite""#,
            )
            .replace("9001", "9001/x"),
    );
    let out = kairos(&["config", "validate", &bad]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 errors in config"), "{err}");
    assert!(
        err.contains(&format!("{bad}:2:47: upstreams.users.servers[0].url:")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{bad}:4:85: routes[0].upstream: unknown upstream `user` (did you mean `users`?)"
        )),
        "{err}"
    );

    let out = kairos(&["config", "validate", "/nonexistent/kairos.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn routes_list_as_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.json", GOOD);
    let out = kairos(&["routes", "list", "--config", &good]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("NAME"));
    assert!(
        lines[1].starts_with("get-user")
            && lines[1].contains("GET,HEAD")
            && lines[1].contains("/users/{id}"),
        "{table}"
    );
    assert!(lines[2].starts_with("/assets/{*rest}"), "{table}");

    let out = kairos(&["routes", "list", "--config", &good, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "get-user");
    assert_eq!(v[0]["upstream"], "users");
    assert_eq!(v[0]["timeout"], "30s");
    assert_eq!(v[1]["rewrite"], serde_json::Value::Null);
}

#[test]
fn version_and_help() {
    let out = kairos(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("kairos-rs {}", env!("CARGO_PKG_VERSION"))
    );
    let out = kairos(&["--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in ["serve", "config", "routes", "echo"] {
        assert!(help.contains(cmd), "{help}");
    }
}
