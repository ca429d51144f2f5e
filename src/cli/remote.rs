//! The operator CLI against a running gateway, through its admin API: deploy a config, check
//! an upstream's health, export metrics, list routes, list tenants and export their usage. A gateway is named by URL
//! (`--gateway`) or by environment (`--environment`) in a small CLI config file:
//!
//! ```json
//! { "environments": { "prod": { "url": "https://gw.example.com:8080", "token_env": "KAIROS_PROD_TOKEN" } } }
//! ```
//!
//! The admin token comes from the environment variable `token_env` names (default
//! `KAIROS_ADMIN_TOKEN`), never from the file or the command line.

use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the gateway is.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// The gateway's base URL, e.g. http://127.0.0.1:8080 (token from KAIROS_ADMIN_TOKEN).
    #[arg(long)]
    pub gateway: Option<String>,
    /// An environment of the CLI config file (its URL and the variable holding its token).
    #[arg(long, short)]
    pub environment: Option<String>,
    /// The CLI config file (default $KAIROS_CLI_CONFIG, else ~/.config/kairos/cli.json).
    #[arg(long)]
    pub cli_config: Option<PathBuf>,
}

impl RemoteArgs {
    pub fn is_set(&self) -> bool {
        self.gateway.is_some() || self.environment.is_some()
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UsageFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MetricsFormat {
    Prometheus,
    Json,
}

/// Why a remote command failed; each kind has its exit code.
#[derive(Debug)]
pub enum RemoteError {
    /// Bad usage or CLI config (exit 1).
    Usage(String),
    /// The config was refused, locally or by the gateway (exit 2).
    Invalid(String),
    /// No answer from the gateway (exit 3).
    Unreachable(String),
    /// The gateway refused the token, or there is none (exit 4).
    Unauthorized(String),
    /// No such upstream or environment (exit 5).
    NotFound(String),
    /// Anything else the gateway answered (exit 1).
    Failed(String),
}

impl RemoteError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RemoteError::Usage(_) | RemoteError::Failed(_) => 1,
            RemoteError::Invalid(_) => 2,
            RemoteError::Unreachable(_) => 3,
            RemoteError::Unauthorized(_) => 4,
            RemoteError::NotFound(_) => 5,
        }
    }
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteError::Usage(m)
            | RemoteError::Invalid(m)
            | RemoteError::Unreachable(m)
            | RemoteError::Unauthorized(m)
            | RemoteError::NotFound(m)
            | RemoteError::Failed(m) => f.write_str(m),
        }
    }
}

/// A gateway to talk to.
pub struct Gateway {
    pub url: String,
    token: Option<String>,
    /// The variable the token should come from, for messages.
    token_env: String,
    client: reqwest::blocking::Client,
}

impl Gateway {
    /// Resolves `--gateway` or `--environment` (with the token from the environment).
    pub fn resolve(args: &RemoteArgs) -> Result<Gateway, RemoteError> {
        Self::resolve_with_env(args, &|k| std::env::var(k).ok())
    }

    pub fn resolve_with_env(
        args: &RemoteArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Gateway, RemoteError> {
        let (url, token_env) = match (&args.gateway, &args.environment) {
            (Some(url), None) => (url.clone(), "KAIROS_ADMIN_TOKEN".to_string()),
            (None, Some(name)) => environment(args.cli_config.as_deref(), name, env)?,
            (Some(_), Some(_)) => {
                return Err(RemoteError::Usage(
                    "give --gateway URL or --environment NAME, not both".into(),
                ))
            }
            (None, None) => {
                return Err(RemoteError::Usage(
                    "which gateway? give --gateway URL or --environment NAME".into(),
                ))
            }
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(RemoteError::Usage(format!(
                "gateway URL `{url}` must start with http:// or https://"
            )));
        }
        crate::base::tls::install_crypto_provider();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| RemoteError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Gateway {
            url: url.trim_end_matches('/').to_string(),
            token: env(&token_env).filter(|t| !t.is_empty()),
            token_env,
            client,
        })
    }

    /// Sends a request to an admin path; the body of a 2xx answer.
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<String, RemoteError> {
        self.send(method, path, body, None).map(|(text, _)| text)
    }

    /// As [`Gateway::call`], with an `If-Match` sent when given; the answer's `ETag` too.
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        if_match: Option<&str>,
    ) -> Result<(String, Option<String>), RemoteError> {
        let Some(token) = &self.token else {
            return Err(RemoteError::Unauthorized(format!(
                "no admin token: set {} (the gateway's admin.token)",
                self.token_env
            )));
        };
        let url = format!("{}{path}", self.url);
        let mut req = self.client.request(method, &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        if let Some(tag) = if_match {
            req = req.header("if-match", tag);
        }
        let res = req.send().map_err(|e| {
            RemoteError::Unreachable(format!(
                "cannot reach the gateway at {}: {}",
                self.url,
                crate::upstream::client::chain(&e)
            ))
        })?;
        let status = res.status().as_u16();
        let etag = res
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = res.text().unwrap_or_default();
        match status {
            200..=299 => Ok((text, etag)),
            401 => Err(RemoteError::Unauthorized(format!(
                "the gateway at {} refused the admin token (from {})",
                self.url, self.token_env
            ))),
            400 => Err(RemoteError::Invalid(describe_error(&text))),
            412 => Err(RemoteError::Failed(format!(
                "{url}: the gateway's config changed while deploying (another operator?); nothing was changed: try again"
            ))),
            404 => Err(RemoteError::NotFound(format!(
                "{url}: not found (is this a kairos-rs gateway of this version?)"
            ))),
            _ => Err(RemoteError::Failed(format!(
                "{url}: {status}: {}",
                describe_error(&text)
            ))),
        }
    }

    pub fn get(&self, path: &str) -> Result<String, RemoteError> {
        self.call(reqwest::Method::GET, path, None)
    }
}

/// The URL and token variable of environment `name` in the CLI config file.
fn environment(
    file: Option<&Path>,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String), RemoteError> {
    let path = match file {
        Some(p) => p.to_path_buf(),
        None => match env("KAIROS_CLI_CONFIG") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(env("HOME").unwrap_or_default()).join(".config/kairos/cli.json"),
        },
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        RemoteError::Usage(format!(
            "cannot read the CLI config {}: {e} (it names environments: {{\"environments\": {{\"{name}\": {{\"url\": \"...\", \"token_env\": \"...\"}}}}}})",
            path.display()
        ))
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| RemoteError::Usage(format!("{}: invalid JSON: {e}", path.display())))?;
    let Some(envs) = v.get("environments").and_then(|e| e.as_object()) else {
        return Err(RemoteError::Usage(format!(
            "{}: no \"environments\" object",
            path.display()
        )));
    };
    let Some(e) = envs.get(name) else {
        let known: Vec<&str> = envs.keys().map(String::as_str).collect();
        return Err(RemoteError::NotFound(format!(
            "no environment `{name}` in {} (known: {})",
            path.display(),
            known.join(", ")
        )));
    };
    let url = e.get("url").and_then(|u| u.as_str()).ok_or_else(|| {
        RemoteError::Usage(format!(
            "{}: environments.{name}.url is missing",
            path.display()
        ))
    })?;
    let token_env = e
        .get("token_env")
        .and_then(|t| t.as_str())
        .unwrap_or("KAIROS_ADMIN_TOKEN");
    Ok((url.to_string(), token_env.to_string()))
}

/// A gateway error body in one line, with config errors listed.
fn describe_error(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.trim().chars().take(500).collect();
    };
    let mut out = v["error"]["message"]
        .as_str()
        .unwrap_or("error")
        .to_string();
    if let Some(errors) = v["errors"].as_array() {
        let source = v["source"].as_str().unwrap_or("config");
        for e in errors {
            let at = match (e["line"].as_u64(), e["column"].as_u64()) {
                (Some(l), Some(c)) => format!("{l}:{c}: "),
                _ => String::new(),
            };
            out.push_str(&format!(
                "\n  {source}:{at}{}: {}",
                e["path"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            ));
            if let Some(h) = e["hint"].as_str() {
                out.push_str(&format!(" ({h})"));
            }
        }
    }
    out
}

/// `config deploy FILE`: checks its syntax here, then PUTs it (the gateway validates it
/// fully); prints what changed.
pub fn deploy(gw: &Gateway, file: &Path) -> Result<String, RemoteError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| RemoteError::Usage(format!("cannot read {}: {e}", file.display())))?;
    // Only the syntax is checked here: `${ENV}` references and file paths in the config are
    // the gateway's, not this machine's. The gateway validates fully (and answers 400 with
    // every error) before anything changes.
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
        return Err(RemoteError::Invalid(format!(
            "not deployed: {}:{}:{}: invalid JSON: {e}",
            file.display(),
            e.line(),
            e.column()
        )));
    }
    // The ETag of the config in effect now, sent back as If-Match: should another operator
    // deploy in between, the gateway answers 412 and nothing is overwritten unknowingly.
    let (_, etag) = gw.send(reqwest::Method::GET, "/_kairos/config", None, None)?;
    let (body, _) = gw.send(
        reqwest::Method::PUT,
        "/_kairos/config",
        Some(text),
        etag.as_deref(),
    )?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let applied = &v["applied"];
    if applied["unchanged"].as_bool() == Some(true) {
        return Ok(format!("{}: unchanged (already in effect)\n", gw.url));
    }
    // With a config store the answer names the store revision written.
    let revision = v["revision"]
        .as_i64()
        .map(|r| format!(", config store revision {r}"))
        .unwrap_or_default();
    let mut out = format!(
        "{}: deployed {} in {:.1} ms (sha256 {}{revision})\n",
        gw.url,
        file.display(),
        applied["duration_ms"].as_f64().unwrap_or(0.0),
        applied["config_hash"].as_str().unwrap_or("?")
    );
    if let Some(diff) = applied["diff"].as_object() {
        for (k, items) in diff {
            let items: Vec<&str> = items
                .as_array()
                .map(|a| a.iter().filter_map(|i| i.as_str()).collect())
                .unwrap_or_default();
            if !items.is_empty() {
                out.push_str(&format!(
                    "  {}: {}\n",
                    k.replace('_', " "),
                    items.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

/// `cache purge`: what `DELETE /_kairos/cache` removed, for the purge object `what`.
pub fn cache_purge(gw: &Gateway, what: serde_json::Value) -> Result<String, RemoteError> {
    let body = gw.call(
        reqwest::Method::DELETE,
        "/_kairos/cache",
        Some(what.to_string()),
    )?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| RemoteError::Failed(format!("unexpected answer: {e}")))?;
    let n = v["purged"]
        .as_u64()
        .ok_or_else(|| RemoteError::Failed(format!("unexpected answer: {body}")))?;
    Ok(format!(
        "purged {n} stored answer{}\n",
        if n == 1 { "" } else { "s" }
    ))
}

/// `health check --upstream NAME`: the servers' state; `Ok((text, all_available))`.
pub fn health_check(gw: &Gateway, upstream: &str) -> Result<(String, bool), RemoteError> {
    let body = gw.get("/_kairos/upstreams")?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| RemoteError::Failed(format!("unexpected answer: {e}")))?;
    let list = v["upstreams"].as_array().cloned().unwrap_or_default();
    let Some(u) = list.iter().find(|u| u["name"] == upstream) else {
        let known: Vec<&str> = list.iter().filter_map(|u| u["name"].as_str()).collect();
        return Err(RemoteError::NotFound(format!(
            "no upstream `{upstream}` on {} (known: {})",
            gw.url,
            known.join(", ")
        )));
    };
    let mut out = format!(
        "{:<40}  {:<9}  {:<9}  {:<8}  {:>8}  LAST CHECK\n",
        "SERVER", "AVAILABLE", "HEALTH", "CIRCUIT", "INFLIGHT"
    );
    let mut all = true;
    for s in u["servers"].as_array().into_iter().flatten() {
        let available = s["available"].as_bool().unwrap_or(false);
        all &= available;
        out.push_str(&format!(
            "{:<40}  {:<9}  {:<9}  {:<8}  {:>8}  {}\n",
            s["url"].as_str().unwrap_or("?"),
            if available { "yes" } else { "no" },
            s["health"].as_str().unwrap_or("?"),
            s["circuit"].as_str().unwrap_or("?"),
            s["inflight"].as_u64().unwrap_or(0),
            s["last_check"].as_str().unwrap_or("-"),
        ));
    }
    Ok((out, all))
}

/// `upstreams list`: each upstream with its source and discovery status, then its servers.
pub fn upstreams_list(gw: &Gateway) -> Result<String, RemoteError> {
    let body = gw.get("/_kairos/upstreams")?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| RemoteError::Failed(format!("unexpected answer: {e}")))?;
    let mut out = String::new();
    for u in v["upstreams"].as_array().into_iter().flatten() {
        let servers = u["servers"].as_array().map_or(0, Vec::len);
        out.push_str(&format!(
            "{}  source={}  discovery={}  servers={servers}\n",
            u["name"].as_str().unwrap_or("?"),
            u["source"].as_str().unwrap_or("static"),
            u["discovery"].as_str().unwrap_or("-"),
        ));
        for s in u["servers"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {:<40}  {:<10}  {}\n",
                s["url"].as_str().unwrap_or("?"),
                s["source"].as_str().unwrap_or("static"),
                if s["available"].as_bool().unwrap_or(false) {
                    "available"
                } else {
                    "unavailable"
                },
            ));
        }
    }
    Ok(out)
}

/// `metrics export`: the Prometheus text as it is, or its samples as JSON.
pub fn metrics_export(gw: &Gateway, format: MetricsFormat) -> Result<String, RemoteError> {
    let text = gw.get("/_kairos/metrics")?;
    match format {
        MetricsFormat::Prometheus => Ok(text),
        MetricsFormat::Json => {
            let samples: Vec<serde_json::Value> = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(parse_sample)
                .collect();
            let mut s = serde_json::to_string_pretty(&samples).unwrap_or_default();
            s.push('\n');
            Ok(s)
        }
    }
}

/// One line of the Prometheus text format: `name{a="b",c="d"} value`.
fn parse_sample(line: &str) -> Option<serde_json::Value> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut map = serde_json::Map::new();
    let mut rest = labels;
    while let Some((k, after)) = rest.split_once("=\"") {
        // Values escape `"` and `\` with a backslash.
        let mut v = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        v.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => v.push(c),
            }
        }
        map.insert(k.trim_start_matches(',').to_string(), v.into());
        rest = &after[end..];
    }
    Some(serde_json::json!({
        "name": name,
        "labels": map,
        "value": if value.is_finite() { serde_json::json!(value) } else { serde_json::json!(value.to_string()) },
    }))
}

/// `routes list` against a gateway: its routes as a table or JSON.
pub fn routes_list(gw: &Gateway, format: crate::cli::Format) -> Result<String, RemoteError> {
    let body = gw.get("/_kairos/routes")?;
    match format {
        crate::cli::Format::Json => Ok(body),
        crate::cli::Format::Table => {
            let items: Vec<serde_json::Value> = serde_json::from_str(&body)
                .map_err(|e| RemoteError::Failed(format!("unexpected answer: {e}")))?;
            let rows: Vec<[String; 6]> = items
                .iter()
                .map(|r| {
                    let s = |k: &str, default: &str| r[k].as_str().unwrap_or(default).to_string();
                    [
                        s("name", ""),
                        s("methods", "*"),
                        s("host", "*"),
                        s("path", ""),
                        s("upstream", ""),
                        s("rewrite", "-"),
                    ]
                })
                .collect();
            Ok(crate::cli::render_table(
                ["NAME", "METHODS", "HOST", "PATH", "UPSTREAM", "REWRITE"],
                &rows,
            ))
        }
    }
}

/// `tenants list` against a gateway: its tenants as a table or JSON.
pub fn tenants_list(gw: &Gateway, format: crate::cli::Format) -> Result<String, RemoteError> {
    let body = gw.get("/_kairos/tenants")?;
    if let crate::cli::Format::Json = format {
        return Ok(body);
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| RemoteError::Failed(format!("unexpected answer: {e}")))?;
    let list = |x: &serde_json::Value| {
        let items: Vec<&str> = x
            .as_array()
            .map(|a| a.iter().filter_map(|i| i.as_str()).collect())
            .unwrap_or_default();
        match items.is_empty() {
            true => "-".to_string(),
            false => items.join(","),
        }
    };
    let num = |x: &serde_json::Value| match x {
        serde_json::Value::Number(n) => n.to_string(),
        _ => "-".to_string(),
    };
    let rows: Vec<[String; 7]> = v["tenants"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            [
                t["id"].as_str().unwrap_or("").to_string(),
                list(&t["hosts"]),
                list(&t["api_keys"]),
                list(&t["routes"]),
                num(&t["rate_limits"]["rps"]),
                num(&t["quotas"]["monthly_requests"]),
                num(&t["quotas"]["daily_requests"]),
            ]
        })
        .collect();
    Ok(crate::cli::render_table(
        [
            "ID", "HOSTS", "API KEYS", "ROUTES", "RPS", "MONTHLY", "DAILY",
        ],
        &rows,
    ))
}

/// `tenants usage ID` against a gateway: daily counts as a table, JSON or CSV.
pub fn tenants_usage(
    gw: &Gateway,
    tenant: &str,
    from: Option<&str>,
    to: Option<&str>,
    format: UsageFormat,
) -> Result<String, RemoteError> {
    let mut path = format!("/_kairos/tenants/{tenant}/usage");
    let query: Vec<String> = [("from", from), ("to", to)]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let body = gw.get(&path)?;
    if let UsageFormat::Json = format {
        return Ok(body);
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| RemoteError::Failed(format!("unexpected answer: {e}")))?;
    let days = v["days"].as_array().map(Vec::as_slice).unwrap_or_default();
    let field = |d: &serde_json::Value, k: &str| match &d[k] {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        _ => String::new(),
    };
    match format {
        UsageFormat::Csv => {
            let mut out = String::from("tenant,date,requests,refused\n");
            for d in days {
                out.push_str(&format!(
                    "{tenant},{},{},{}\n",
                    field(d, "date"),
                    field(d, "requests"),
                    field(d, "refused")
                ));
            }
            Ok(out)
        }
        _ => {
            let rows: Vec<[String; 3]> = days
                .iter()
                .map(|d| [field(d, "date"), field(d, "requests"), field(d, "refused")])
                .collect();
            Ok(crate::cli::render_table(
                ["DATE", "REQUESTS", "REFUSED"],
                &rows,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_parse_with_escaped_labels() {
        let v = parse_sample(r#"kairos_requests_total{route="a\"b",status="200"} 12"#).unwrap();
        assert_eq!(v["name"], "kairos_requests_total");
        assert_eq!(v["labels"]["route"], "a\"b");
        assert_eq!(v["labels"]["status"], "200");
        assert_eq!(v["value"], 12.0);
        let v = parse_sample("process_open_fds 7").unwrap();
        assert_eq!(v["labels"], serde_json::json!({}));
        assert!(parse_sample("garbage").is_none());
    }

    #[test]
    fn environments_come_from_the_cli_config_and_tokens_from_the_environment() {
        let dir = std::env::temp_dir().join(format!("kairos-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cli.json");
        std::fs::write(
            &file,
            r#"{"environments":{"prod":{"url":"http://10.0.0.1:8080/","token_env":"PROD_TOKEN"}}}"#,
        )
        .unwrap();
        let args = |env: &str| RemoteArgs {
            gateway: None,
            environment: Some(env.into()),
            cli_config: Some(file.clone()),
        };
        let lookup = |k: &str| (k == "PROD_TOKEN").then(|| "s3cret".to_string());
        let gw = Gateway::resolve_with_env(&args("prod"), &lookup).unwrap();
        assert_eq!(gw.url, "http://10.0.0.1:8080");
        assert_eq!(gw.token.as_deref(), Some("s3cret"));
        let err = Gateway::resolve_with_env(&args("staging"), &lookup)
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 5);
        assert!(err.to_string().contains("known: prod"), "{err}");
        let none = RemoteArgs {
            gateway: None,
            environment: None,
            cli_config: None,
        };
        assert_eq!(
            Gateway::resolve_with_env(&none, &lookup)
                .err()
                .unwrap()
                .exit_code(),
            1
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
