//! Several instances as one: which members of a config belong to the instance (its file:
//! `server`, `logging`, `admin`, `cluster`) and which are shared (the config store's document:
//! everything else), and the merge of the two into the one config text that is validated.

use super::error::{ConfigError, ConfigErrors};
use serde_json::{Map, Value};

/// The members an instance's own file gives when a config store holds the rest.
pub const LOCAL_MEMBERS: [&str; 4] = ["server", "logging", "admin", "cluster"];

/// Members either part may carry (`version` must then agree; the shared one wins).
const EITHER: [&str; 2] = ["$schema", "version"];

/// The errors of an instance file that also carries shared members (they would be silently
/// replaced by the store's document, so they are refused).
pub fn local_errors(file_text: &str) -> Vec<ConfigError> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(file_text) else {
        return Vec::new();
    };
    map.keys()
        .filter(|k| !LOCAL_MEMBERS.contains(&k.as_str()) && !EITHER.contains(&k.as_str()))
        .map(|k| {
            ConfigError::new(
                k.clone(),
                format!("`{k}` comes from the config store when cluster.config_store is set"),
            )
            .with_hint(
                "keep only server, logging, admin and cluster in this file; \
                 `kairos-rs cluster bootstrap` writes the rest into an empty store",
            )
        })
        .collect()
}

/// The shared part of a whole config (every member but the instance's own), as pretty JSON:
/// what `cluster bootstrap` writes into the store. `None` when the text is not a JSON object.
pub fn shared_part(full_text: &str) -> Option<String> {
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(full_text) else {
        return None;
    };
    map.retain(|k, _| !LOCAL_MEMBERS.contains(&k.as_str()));
    let mut text = serde_json::to_string_pretty(&Value::Object(map)).ok()?;
    text.push('\n');
    Some(text)
}

/// The config text made of the instance file's own members and the shared document. The
/// document's text is kept as written (its lines are the lines errors name); the instance's
/// members are added on its last line. A document that is not a JSON object, or that carries
/// an instance's own member, is refused, naming `source_name`.
pub fn merge(
    local_text: &str,
    shared_text: &str,
    source_name: &str,
) -> Result<String, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        source_name: source_name.to_string(),
        errors,
    };
    let shared: Map<String, Value> = match serde_json::from_str::<Value>(shared_text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(fail(vec![ConfigError::new(
                "",
                "the shared config document must be a JSON object",
            )]))
        }
        Err(e) => {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            let mut err = ConfigError::new("", format!("invalid JSON: {msg}"));
            err.line = Some(e.line());
            err.column = Some(e.column());
            return Err(fail(vec![err]));
        }
    };
    let misplaced: Vec<ConfigError> = shared
        .keys()
        .filter(|k| LOCAL_MEMBERS.contains(&k.as_str()))
        .map(|k| {
            ConfigError::new(
                k.clone(),
                format!("`{k}` is each instance's own: it cannot come from the config store"),
            )
            .with_hint("set it in the instance's config file; remove it from the shared document")
        })
        .collect();
    if !misplaced.is_empty() {
        return Err(fail(misplaced));
    }
    let local: Map<String, Value> = match serde_json::from_str::<Value>(local_text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let mut added = String::new();
    for (k, v) in &local {
        let own = LOCAL_MEMBERS.contains(&k.as_str());
        let either = EITHER.contains(&k.as_str()) && !shared.contains_key(k);
        if own || either {
            if !shared.is_empty() || !added.is_empty() {
                added.push_str(", ");
            }
            added.push_str(&Value::String(k.clone()).to_string());
            added.push_str(": ");
            added.push_str(&v.to_string());
        }
    }
    // The document is an object, so its text ends with its closing brace.
    let end = shared_text.trim_end();
    let Some(body) = end.strip_suffix('}') else {
        return Err(fail(vec![ConfigError::new(
            "",
            "the shared config document must be a JSON object",
        )]));
    };
    Ok(format!("{body}{added}}}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = r#"{"version": 1, "server": {"port": 1}, "admin": {"token": "${T}"},
        "cluster": {"config_store": {"type": "etcd", "endpoints": ["http://e:2379"], "key": "/k"}}}"#;

    #[test]
    fn merge_keeps_the_document_lines_and_adds_the_instance_members() {
        let shared = "{\n  \"routes\": []\n}\n";
        let merged = merge(LOCAL, shared, "etcd").unwrap();
        assert!(
            merged.starts_with("{\n  \"routes\": []\n, \"admin\": "),
            "{merged}"
        );
        let v: Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(v["admin"]["token"], "${T}");
        assert_eq!(v["server"]["port"], 1);
        // The shared part of the merge is the document, plus the file's `version`.
        let v: Value = serde_json::from_str(&shared_part(&merged).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"routes": [], "version": 1}));
        let empty = merge(LOCAL, "{}", "etcd").unwrap();
        assert!(serde_json::from_str::<Value>(&empty).is_ok());
    }

    #[test]
    fn a_document_with_an_instance_member_or_not_an_object_is_refused() {
        let e = merge(LOCAL, r#"{"admin": {"token": "x"}}"#, "etcd /k").unwrap_err();
        assert_eq!(e.errors[0].path, "admin");
        assert_eq!(e.source_name, "etcd /k");
        assert!(merge(LOCAL, "[1]", "etcd").is_err());
        let e = merge(LOCAL, "{\n\"routes\": [", "etcd").unwrap_err();
        assert_eq!(e.errors[0].line, Some(2));
    }

    #[test]
    fn split() {
        let full = r#"{"server": {}, "routes": [], "upstreams": {}}"#;
        let v: Value = serde_json::from_str(&shared_part(full).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"routes": [], "upstreams": {}}));
        let errs = local_errors(full);
        assert_eq!(errs.len(), 2);
        assert!(local_errors(LOCAL).is_empty());
    }
}
