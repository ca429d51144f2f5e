//! Configuration: the file format (`raw`), its validation (`validate`) into the runtime model
//! (`model`), and the loading pipeline that ties them together with precise error locations.
//!
//! Pipeline: text -> JSON syntax check -> duplicate keys -> `${ENV}` substitution -> typed
//! deserialisation (every unknown field reported, not just the first) -> semantic validation.

pub mod cache;
pub mod cluster;
pub mod cors;
pub mod error;
pub mod model;
pub mod position;
pub mod raw;
pub mod router;
pub mod transform;
pub mod units;
pub mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::Config;

use error::did_you_mean;
use position::PositionIndex;
use serde_json::Value;
use std::path::Path;

/// The demo config baked into the binary: used when no `--config` is given.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.json");

/// Reads the config file at `path`: the one place the gateway reads its config file (at start,
/// and on every reload).
pub fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        source_name: path.display().to_string(),
        errors: vec![ConfigError::new(
            "",
            format!("cannot read config file: {e}"),
        )],
    })
}

/// Validates the text of the config file at `path` (relative paths in it are relative to the
/// file's folder).
pub fn load_text(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(text, &path.display().to_string(), base)
}

/// Reads, validates and builds the config at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_text(&read_file(path)?, path)
}

/// Validates config text. `source_name` names it in errors; `base_dir` resolves relative paths.
pub fn load_str(text: &str, source_name: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    load_str_with_env(text, source_name, base_dir, &|k| std::env::var(k).ok())
}

/// As [`load_str`], with the environment given as a lookup function (for tests).
pub fn load_str_with_env(
    text: &str,
    source_name: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        source_name: source_name.to_string(),
        errors,
    };
    let mut value: Value = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        let mut err = ConfigError::new("", format!("invalid JSON: {msg}"));
        err.line = Some(e.line());
        err.column = Some(e.column());
        fail(vec![err])
    })?;
    let dups = PositionIndex::duplicates_only(text);
    let mut errors: Vec<ConfigError> = dups
        .duplicates
        .iter()
        .map(|(path, _)| ConfigError::new(path.clone(), "key appears twice; only one may be given"))
        .collect();

    plaintext_keys_from_env(&value, &mut errors);
    names_not_from_env(&value, &mut errors);
    let mut filled = Vec::new();
    let mut written = Vec::new();
    substitute_env(
        &mut value,
        &mut String::new(),
        env,
        &mut errors,
        &mut (&mut filled, &mut written),
    );
    // Longest first, so that a value containing another is replaced whole.
    filled.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let hide = |text: &mut String| {
        for (name, val) in &filled {
            if !val.is_empty() && text.contains(val.as_str()) {
                *text = text.replace(val.as_str(), &format!("<value of ${{{name}}}>"));
            }
        }
    };
    let raw = deserialize_collecting(value, &mut errors);

    if let Some(raw) = raw {
        if errors.is_empty() {
            match validate::validate(raw, base_dir, env) {
                Ok(mut cfg) => {
                    show_as_written(&mut cfg, written);
                    for w in &mut cfg.warnings {
                        hide(&mut w.message);
                        if let Some(h) = &mut w.hint {
                            hide(h);
                        }
                    }
                    if cfg.warnings.is_empty() {
                        return Ok(cfg);
                    }
                    let index = PositionIndex::build(text);
                    for w in &mut cfg.warnings {
                        if let Some(p) = index.key(&w.path) {
                            w.line = Some(p.line);
                            w.column = Some(p.column);
                        }
                    }
                    return Ok(cfg);
                }
                Err(errs) => errors.extend(errs),
            }
        }
    }
    let index = PositionIndex::build(text);
    for e in &mut errors {
        hide(&mut e.message);
        if let Some(h) = &mut e.hint {
            hide(h);
        }
        let pos = if e.message.starts_with("unknown field") || e.message.contains("appears twice") {
            index.key(&e.path)
        } else {
            index.value(&e.path)
        };
        if let Some(p) = pos {
            e.line = Some(p.line);
            e.column = Some(p.column);
        }
    }
    errors.sort_by_key(|e| (e.line, e.column));
    Err(fail(errors))
}

/// Whether `s` is exactly one `${NAME}` reference (letters, digits, `_`).
pub fn is_env_reference(s: &str) -> bool {
    s.strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Every `${NAME}` the string values of a config text reference, with each value's JSON
/// path (none when the text is not JSON).
pub fn env_references(text: &str) -> Vec<(String, String)> {
    fn walk(v: &Value, path: &mut String, out: &mut Vec<(String, String)>) {
        match v {
            Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(start) = rest.find("${") {
                    let after = &rest[start + 2..];
                    let Some(end) = after.find('}') else { return };
                    out.push((path.clone(), after[..end].to_string()));
                    rest = &after[end + 1..];
                }
            }
            Value::Array(items) => {
                use std::fmt::Write;
                let len = path.len();
                for (i, item) in items.iter().enumerate() {
                    let _ = write!(path, "[{i}]");
                    walk(item, path, out);
                    path.truncate(len);
                }
            }
            Value::Object(map) => {
                let len = path.len();
                for (k, item) in map {
                    if len > 0 {
                        path.push('.');
                    }
                    path.push_str(k);
                    walk(item, path, out);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        walk(&v, &mut String::new(), &mut out);
    }
    out
}

/// Names are shown everywhere (listings, diffs, logs, metric labels): a route's name, the
/// upstream it names and an upstream's own name may not come from the environment, whose
/// values are never shown.
fn names_not_from_env(root: &Value, errors: &mut Vec<ConfigError>) {
    let refuse = |path: String, errors: &mut Vec<ConfigError>| {
        errors.push(
            ConfigError::new(path, "a name may not contain \"${\"")
                .with_hint("names are shown in listings, diffs and metric labels; values from the environment never are"),
        );
    };
    if let Some(routes) = root.get("routes").and_then(Value::as_array) {
        for (i, r) in routes.iter().enumerate() {
            for field in ["name", "upstream"] {
                if r.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.contains("${"))
                {
                    refuse(format!("routes[{i}].{field}"), errors);
                }
            }
        }
    }
    for (id, t) in root
        .get("tenants")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        for (j, r) in t
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for field in ["name", "upstream"] {
                if r.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.contains("${"))
                {
                    refuse(format!("tenants.{id}.routes[{j}].{field}"), errors);
                }
            }
        }
    }
    if let Some(ups) = root.get("upstreams").and_then(Value::as_object) {
        for name in ups.keys().filter(|k| k.contains("${")) {
            refuse(format!("upstreams.{name}"), errors);
        }
    }
}

/// Keeps, for display, the text as written of values that came from the environment: a
/// server's `url` shows `http://${BACKEND}:9001` in listings, diffs, logs and metric labels,
/// and the route listing's host, path and rewrite read [`Config::written`].
fn show_as_written(cfg: &mut Config, written: Vec<(String, String)>) {
    let written: std::collections::HashMap<String, String> = written.into_iter().collect();
    for u in &mut cfg.upstreams {
        for (i, s) in u.servers.iter_mut().enumerate() {
            if let Some(w) = written.get(&format!("upstreams.{}.servers[{i}].url", u.name)) {
                s.url = w.clone();
            }
        }
    }
    cfg.written = std::sync::Arc::new(written);
}

/// An API key written in the file itself would sit in every copy and backup of the config:
/// `api_keys.keys.*.key` must be exactly a `${ENV}` reference (or use `key_hash`).
fn plaintext_keys_from_env(root: &Value, errors: &mut Vec<ConfigError>) {
    let Some(keys) = root
        .get("api_keys")
        .and_then(|k| k.get("keys"))
        .and_then(Value::as_object)
    else {
        return;
    };
    for (name, entry) in keys {
        if let Some(Value::String(s)) = entry.get("key") {
            if !is_env_reference(s) {
                errors.push(
                    ConfigError::new(
                        format!("api_keys.keys.{name}.key"),
                        "a plaintext key may only come from the environment",
                    )
                    .with_hint(
                        "write \"key\": \"${MY_KEY}\", or store the hash: `kairos-rs keys hash` prints \"key_hash\"",
                    ),
                );
            }
        }
    }
}

/// Replaces `${NAME}` in every string value with the environment variable NAME.
///
/// `path` is the value's JSON path, grown and truncated on the way down (no string per value).
/// `seen.0` collects (name, value) of every substitution, so that no error message can echo
/// a value that came from the environment (a secret, often); `seen.1` (path, text as written)
/// of every string substituted.
type Substituted<'a> = (&'a mut Vec<(String, String)>, &'a mut Vec<(String, String)>);

fn substitute_env(
    v: &mut Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
    seen: &mut Substituted<'_>,
) {
    match v {
        Value::String(s) if s.contains("${") => {
            seen.1.push((path.clone(), s.clone()));
            let filled = &mut *seen.0;
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else {
                    errors.push(
                        ConfigError::new(path.clone(), "unclosed \"${\" in value")
                            .with_hint("write \"${NAME}\""),
                    );
                    return;
                };
                let name = &after[..end];
                match env(name) {
                    Some(val) => {
                        out.push_str(&val);
                        filled.push((name.to_string(), val));
                    }
                    None => errors.push(
                        ConfigError::new(
                            path.clone(),
                            format!("environment variable `{name}` is not set"),
                        )
                        .with_hint(format!("export {name}=... before starting kairos-rs")),
                    ),
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Array(items) => {
            use std::fmt::Write;
            let len = path.len();
            for (i, item) in items.iter_mut().enumerate() {
                let _ = write!(path, "[{i}]");
                substitute_env(item, path, env, errors, seen);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            let len = path.len();
            for (k, item) in map.iter_mut() {
                if len > 0 {
                    path.push('.');
                }
                path.push_str(k);
                substitute_env(item, path, env, errors, seen);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Deserialises into the raw structs, reporting every unknown field and type error: each
/// offending entry is recorded, removed, and deserialisation retried.
fn deserialize_collecting(
    mut value: Value,
    errors: &mut Vec<ConfigError>,
) -> Option<raw::RawConfig> {
    let mut removed: Vec<String> = Vec::new();
    let mut suggested: Vec<String> = Vec::new();
    for _ in 0..64 {
        let err = match serde_path_to_error::deserialize::<_, raw::RawConfig>(&value) {
            Ok(raw) => return Some(raw),
            Err(e) => e,
        };
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let msg = err.inner().to_string();
        let (message, hint) = describe_serde_error(&msg);
        // A missing field is not news after we removed a bad value of the same name, or
        // after an unknown field whose hint already names it (`upstrem` -> `upstream`).
        let missing = missing_field_path(&path, &msg);
        let echo = message.starts_with("missing field")
            && missing.as_deref().is_some_and(|m| {
                removed.iter().any(|r| r == m) || suggested.iter().any(|s| s == m)
            });
        if let Some(field) = hint.as_deref().and_then(|h| h.split('`').nth(1)) {
            let parent = path.rfind(['.', '[']).map_or("", |i| &path[..i]);
            suggested.push(position::join_key(parent, field));
        }
        if !echo {
            let mut e = ConfigError::new(path.clone(), message);
            e.hint = hint;
            errors.push(e);
        }
        if path.is_empty() || !remove_path(&mut value, &path) {
            return None;
        }
        removed.push(path);
    }
    None
}

fn missing_field_path(parent: &str, msg: &str) -> Option<String> {
    let field = msg.split('`').nth(1)?;
    Some(position::join_key(parent, field))
}

/// Turns serde's wording into ours, with a "did you mean" for unknown fields.
fn describe_serde_error(msg: &str) -> (String, Option<String>) {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let hint = did_you_mean(field, expected.iter().copied()).or_else(|| {
            (!expected.is_empty()).then(|| format!("expected one of {}", expected.join(", ")))
        });
        return (format!("unknown field `{field}`"), hint);
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let variant = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let hint = did_you_mean(variant, expected.iter().copied()).or_else(|| {
            (!expected.is_empty()).then(|| format!("expected one of {}", expected.join(", ")))
        });
        return (format!("unknown value `{variant}`"), hint);
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        return (format!("wrong type: {rest}"), None);
    }
    (msg.to_string(), None)
}

/// Removes the entry at a serde_path_to_error path such as `routes[2].upstrem`.
fn remove_path(root: &mut Value, path: &str) -> bool {
    let mut segs: Vec<Seg> = Vec::new();
    for part in path.split('.') {
        let mut p = part;
        let key_end = p.find('[').unwrap_or(p.len());
        if key_end > 0 {
            segs.push(Seg::Key(p[..key_end].to_string()));
        }
        p = &p[key_end..];
        while let Some(rest) = p.strip_prefix('[') {
            let Some(close) = rest.find(']') else {
                return false;
            };
            let Ok(i) = rest[..close].parse() else {
                return false;
            };
            segs.push(Seg::Index(i));
            p = &rest[close + 1..];
        }
    }
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur = root;
    for s in parents {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            // Keep indexes stable for later messages: replace rather than shift.
            a[*i] = Value::Null;
            false
        }
        _ => false,
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

/// The JSON Schema of the config file, as printed by `kairos-rs config schema`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(raw::RawConfig);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}
