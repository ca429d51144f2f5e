//! A config sent back to the admin API as `GET /_kairos/config` gave it: each secret still
//! reading `<redacted>` (or a URL whose userinfo reads `<redacted>`) keeps the running
//! config's value at the same path. The web UI's editor and `curl | edit | curl -X PUT` can
//! then change a config that holds literal secrets without ever seeing them.
//!
//! The substitution is made in the text, token by token, so every other byte (and so every
//! line an error names) stays where the editor has it. A `<redacted>` with nothing to keep
//! (no running string at that path, or a URL whose other parts changed) is refused, naming
//! the path: it would otherwise become a secret that reads `<redacted>`.

use crate::config::position::PositionIndex;
use std::collections::HashMap;

const REDACTED: &str = "<redacted>";

/// `text` with its redacted secrets put back from `running` (the config in effect, as
/// written). `Err` names the first path whose `<redacted>` has no running value to keep.
pub fn unredact(text: &str, running: &str) -> Result<String, String> {
    if !text.contains(REDACTED) {
        return Ok(text.to_string());
    }
    let Ok(running) = serde_json::from_str::<serde_json::Value>(running) else {
        return Err("the running config is not JSON: nothing to put back".into());
    };
    let mut kept = HashMap::new();
    strings(&running, String::new(), &mut kept);
    let index = PositionIndex::build(text);
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for (path, range) in &index.strings {
        let Some(token) = text.get(range.clone()) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<String>(token) else {
            continue;
        };
        let Some(restored) = restore(&value, kept.get(path.as_str()).copied()) else {
            if value.contains(REDACTED) {
                return Err(format!(
                    "`{path}` reads \"{value}\" but the running config has no secret there to keep: write the secret itself or a ${{NAME}} reference"
                ));
            }
            continue;
        };
        out.push_str(&text[at..range.start]);
        out.push_str(&serde_json::Value::String(restored.to_string()).to_string());
        at = range.end;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

/// The running value a redacted string stands for: `<redacted>` for the whole string, or a
/// URL whose userinfo alone was replaced (scheme, host and the rest unchanged).
fn restore<'a>(value: &str, running: Option<&'a str>) -> Option<&'a str> {
    let running = running?;
    if value == REDACTED {
        return Some(running);
    }
    let (scheme, rest) = value.split_once("://")?;
    let host = rest.strip_prefix(REDACTED)?.strip_prefix('@')?;
    let (r_scheme, r_rest) = running.split_once("://")?;
    let authority_end = r_rest.find(['/', '?', '#']).unwrap_or(r_rest.len());
    let at = r_rest[..authority_end].rfind('@')?;
    (r_scheme == scheme && &r_rest[at + 1..] == host).then_some(running)
}

/// Every string of `v` by its path, spelled as [`PositionIndex`] spells them.
fn strings<'a>(v: &'a serde_json::Value, path: String, out: &mut HashMap<String, &'a str>) {
    match v {
        serde_json::Value::String(s) => {
            out.insert(path, s);
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                strings(item, crate::config::position::join_key(&path, k), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = r#"{"admin": {"token": "s3cret"},
  "rate_limiting": {"redis_url": "redis://user:pw@127.0.0.1:6379/0"},
  "api_keys": {"keys": {"a": {"key_hash": "sha256:abc"}, "b": {"key": "${B_KEY}"}}}}"#;

    #[test]
    fn redacted_secrets_come_back_in_place() {
        let mut v: serde_json::Value = serde_json::from_str(RUNNING).unwrap();
        super::super::redact(&mut v);
        let edited = serde_json::to_string_pretty(&v)
            .unwrap()
            .replace("\"${B_KEY}\"", "\"${B_KEY}\", \"permissions\": [\"x\"]");
        let back = unredact(&edited, RUNNING).unwrap();
        let got: serde_json::Value = serde_json::from_str(&back).unwrap();
        assert_eq!(got["admin"]["token"], "s3cret");
        assert_eq!(
            got["rate_limiting"]["redis_url"],
            "redis://user:pw@127.0.0.1:6379/0"
        );
        assert_eq!(got["api_keys"]["keys"]["a"]["key_hash"], "sha256:abc");
        assert_eq!(got["api_keys"]["keys"]["b"]["permissions"][0], "x");
        // Line for line: every error line the editor shows still matches.
        assert_eq!(back.lines().count(), edited.lines().count());
        assert!(!back.contains(REDACTED));
    }

    #[test]
    fn a_redacted_value_with_nothing_to_keep_is_refused() {
        let moved = r#"{"admin": {"token": "<redacted>"}, "jwt": {"secret": "<redacted>"}}"#;
        let e = unredact(moved, RUNNING).unwrap_err();
        assert!(e.contains("`jwt.secret`"), "{e}");
        // A URL whose host changed keeps nothing: the old password must not go to a new host.
        let url = r#"{"rate_limiting": {"redis_url": "redis://<redacted>@10.0.0.9:6379/0"}}"#;
        let e = unredact(url, RUNNING).unwrap_err();
        assert!(e.contains("`rate_limiting.redis_url`"), "{e}");
        // Nothing redacted: the text is returned as it is.
        let plain = "{\"admin\": {\"token\": \"new\"}}";
        assert_eq!(unredact(plain, RUNNING).unwrap(), plain);
    }
}
