//! The sections that watch and steer the gateway rather than route traffic: `admin` (token,
//! metrics access, config watching), `logging`, and `tracing` with its OTLP endpoint (and the
//! deprecated Jaeger one).

use super::V;
use crate::config::error::{did_you_mean, ConfigError};
use crate::config::model::{
    AdminConfig, LogFormat, LoggingConfig, OtlpProtocol, Propagator, TraceTrust, TracingConfig,
};
use crate::config::raw::{RawAdmin, RawLogging, RawTracing};
use std::path::Path;
use std::time::Duration;

/// The OTLP/HTTP port of Jaeger, Tempo and the OpenTelemetry Collector.
const OTLP_HTTP_PORT: u16 = 4318;
/// Their OTLP/gRPC port.
const OTLP_GRPC_PORT: u16 = 4317;

/// Why a tracing endpoint is not a usable URL.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("\"{text}\" is not a URL: {source}")]
    NotAUrl {
        text: String,
        source: http::uri::InvalidUri,
    },
    #[error("\"{text}\" must start with http:// or https://")]
    BadScheme { text: String },
    #[error("\"{text}\" has no host")]
    NoHost { text: String },
}

pub(super) fn admin_config(v: &mut V, admin: Option<&RawAdmin>) -> AdminConfig {
    match admin {
        None => AdminConfig {
            watch_config: true,
            ui: true,
            ..AdminConfig::default()
        },
        Some(a) => {
            if let Some(t) = &a.token {
                if t.len() < 16 {
                    v.err_hint("admin.token", "admin token is shorter than 16 characters", "generate one with `openssl rand -hex 32` and pass it as \"${KAIROS_ADMIN_TOKEN}\"");
                }
            }
            AdminConfig {
                token: a.token.clone(),
                public_metrics: a.public_metrics.unwrap_or(false),
                watch_config: a.watch_config.unwrap_or(true),
                allowed_env: a.allowed_env.clone().unwrap_or_default(),
                ui: a.ui.unwrap_or(true),
            }
        }
    }
}

pub(super) fn logging_config(v: &mut V, l: &RawLogging, base_dir: &Path) -> LoggingConfig {
    let format = match l.format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        Some(other) => {
            v.err_hint(
                "logging.format",
                format!("unknown log format `{other}`"),
                "use \"json\" or \"pretty\"",
            );
            LogFormat::Json
        }
    };
    let level = l.level.clone().unwrap_or_else(|| "info".into());
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if !LEVELS.contains(&level.as_str()) {
        let hint = did_you_mean(&level, LEVELS)
            .unwrap_or_else(|| "use trace, debug, info, warn, error or off".into());
        v.err_hint(
            "logging.level",
            format!("unknown log level `{level}`"),
            hint,
        );
    }
    let file = l.file.as_deref().and_then(|f| {
        if f.trim().is_empty() {
            v.err_hint(
                "logging.file",
                "the log file path is empty",
                "remove `file` to log to stderr",
            );
            return None;
        }
        let path = super::resolve_path(base_dir, f);
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                v.err_hint(
                    "logging.file",
                    format!("the folder {} does not exist", dir.display()),
                    "create it, or point `file` into an existing folder",
                );
                None
            }
            _ => Some(path),
        }
    });
    LoggingConfig {
        format,
        level,
        access_log: l.access_log.unwrap_or(true),
        file,
    }
}

pub(super) fn tracing_config(
    v: &mut V,
    t: &RawTracing,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &std::path::Path,
) -> Option<TracingConfig> {
    let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    let protocol = otlp_protocol(v, t, &env);
    let endpoint = tracing_endpoint(v, t, &env, protocol)?;
    let (env_rate, parent_based) = sampler_from_env(v, &env);
    let sampling_rate = t.sampling_rate.or(env_rate).unwrap_or(0.1);
    if !(0.0..=1.0).contains(&sampling_rate) {
        v.err_hint(
            "tracing.sampling_rate",
            format!("sampling_rate {sampling_rate} is outside 0.0..=1.0"),
            "0.1 records one new trace in ten; 1.0 records all",
        );
    }
    let env_resource = env("OTEL_RESOURCE_ATTRIBUTES")
        .map(|text| key_values(v, "OTEL_RESOURCE_ATTRIBUTES", &text))
        .unwrap_or_default();
    let service_name = t
        .service_name
        .clone()
        .or_else(|| env("OTEL_SERVICE_NAME"))
        .or_else(|| {
            env_resource
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| "kairos-rs".into());
    if service_name.trim().is_empty() {
        v.err("tracing.service_name", "service_name must not be empty");
    }
    let mut resource_attributes: Vec<(String, String)> = env_resource
        .into_iter()
        .filter(|(k, _)| k != "service.name")
        .collect();
    for (key, value) in t.resource_attributes.iter().flatten() {
        if key == "service.name" {
            v.err_hint(
                format!("tracing.resource_attributes.{key}"),
                "service.name is set by `service_name`",
                "move the value to \"service_name\"",
            );
            continue;
        }
        if key.trim().is_empty() {
            v.err("tracing.resource_attributes", "an attribute name is empty");
            continue;
        }
        resource_attributes.retain(|(k, _)| k != key);
        resource_attributes.push((key.clone(), value.clone()));
    }
    let export_timeout = match (&t.export_timeout, env_millis(v, &env)) {
        (None, Some(from_env)) => from_env,
        (given, _) => v.duration("tracing.export_timeout", given, Duration::from_secs(10)),
    };
    let trust_incoming = match t.trust_incoming.as_deref() {
        None | Some("trusted_proxies") => TraceTrust::TrustedProxies,
        Some("all") => TraceTrust::All,
        Some("none") => TraceTrust::None,
        Some(other) => {
            const TRUST: [&str; 3] = ["trusted_proxies", "all", "none"];
            let hint = did_you_mean(other, TRUST)
                .unwrap_or_else(|| "use \"trusted_proxies\", \"all\" or \"none\"".into());
            v.err_hint(
                "tracing.trust_incoming",
                format!("unknown trust_incoming `{other}`"),
                hint,
            );
            TraceTrust::TrustedProxies
        }
    };
    let gzip = otlp_gzip(v, t, &env);
    if protocol == OtlpProtocol::Grpc && !gzip {
        // The gRPC exporter reads the variable itself and cannot be told "none" (over HTTP
        // the export client undoes it; a gRPC message's coding is the exporter's alone).
        if let Some((name, value)) = otlp_env(&env, "COMPRESSION") {
            if value.trim() == "gzip" {
                v.warnings.push(
                    ConfigError::new(
                        "tracing.compression",
                        format!("over gRPC, {name}=gzip still compresses the exports"),
                    )
                    .with_hint(format!("unset {name} to send them uncompressed")),
                );
            }
        }
    }
    let headers = otlp_headers(v, t, &env);
    let ca_pem = otlp_ca(v, t, &env, base_dir);
    let propagators = propagators(v, t, &env);
    if !t.enabled.unwrap_or(true) {
        return None;
    }
    Some(TracingConfig {
        endpoint,
        sampling_rate,
        parent_based,
        service_name,
        export_timeout,
        trust_incoming,
        headers,
        gzip,
        ca_pem,
        resource_attributes,
        propagators,
        protocol,
    })
}

/// `tracing.propagators`, else OTEL_PROPAGATORS (comma-separated; `none` for nothing), else
/// W3C trace context and baggage. Repeats are dropped with a warning.
fn propagators(v: &mut V, t: &RawTracing, env: &Env) -> Vec<Propagator> {
    let (names, from_env): (Vec<(String, String)>, bool) =
        match (&t.propagators, env("OTEL_PROPAGATORS")) {
            (Some(list), _) => (
                list.iter()
                    .enumerate()
                    .map(|(i, n)| (format!("tracing.propagators[{i}]"), n.clone()))
                    .collect(),
                false,
            ),
            (None, Some(text)) => {
                let names: Vec<&str> = text
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .collect();
                if names == ["none"] {
                    return Vec::new();
                }
                (
                    names
                        .into_iter()
                        .map(|n| ("tracing".to_string(), n.to_string()))
                        .collect(),
                    true,
                )
            }
            (None, None) => return vec![Propagator::TraceContext, Propagator::Baggage],
        };
    let mut out: Vec<Propagator> = Vec::new();
    for (path, name) in names {
        let source = if from_env { "OTEL_PROPAGATORS: " } else { "" };
        match Propagator::from_name(&name) {
            Some(p) if out.contains(&p) => v.warnings.push(
                ConfigError::new(path, format!("{source}propagator `{name}` is listed twice"))
                    .with_hint("remove the repeat"),
            ),
            Some(p) => out.push(p),
            None => {
                let hint = match name.as_str() {
                    "jaeger" | "xray" | "ottrace" => format!(
                        "`{name}` is not built in; use one of {}",
                        Propagator::NAMES.join(", ")
                    ),
                    "none" => "\"none\" stands alone; in the config, [] propagates nothing".into(),
                    _ => did_you_mean(&name, Propagator::NAMES)
                        .unwrap_or_else(|| format!("use one of {}", Propagator::NAMES.join(", "))),
                };
                v.err_hint(path, format!("{source}unknown propagator `{name}`"), hint);
            }
        }
    }
    out
}

/// The environment, with empty values treated as unset (as the OpenTelemetry specification
/// says).
type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// The first of the signal-specific and the general variable that is set, with its name.
fn otlp_env(env: &Env, suffix: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"),
        format!("OTEL_EXPORTER_OTLP_{suffix}"),
    ]
    .into_iter()
    .find_map(|name| env(&name).map(|value| (name, value)))
}

/// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG: the ratio of new traces they ask for
/// (if any) and whether a continued trace follows its caller's decision.
fn sampler_from_env(v: &mut V, env: &Env) -> (Option<f64>, bool) {
    let Some(sampler) = env("OTEL_TRACES_SAMPLER") else {
        return (None, true);
    };
    let ratio = |v: &mut V| match env("OTEL_TRACES_SAMPLER_ARG") {
        None => 1.0,
        Some(arg) => match arg.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                v.warnings.push(
                    ConfigError::new(
                        "tracing",
                        format!("OTEL_TRACES_SAMPLER_ARG `{arg}` is not a ratio in 0.0..=1.0; 1.0 is used"),
                    )
                    .with_hint("set it to e.g. 0.1, or set \"sampling_rate\" in the config"),
                );
                1.0
            }
        },
    };
    match sampler.trim() {
        "always_on" => (Some(1.0), false),
        "always_off" => (Some(0.0), false),
        "traceidratio" => (Some(ratio(v)), false),
        "parentbased_always_on" => (Some(1.0), true),
        "parentbased_always_off" => (Some(0.0), true),
        "parentbased_traceidratio" => (Some(ratio(v)), true),
        other => {
            const KNOWN: [&str; 6] = [
                "always_on",
                "always_off",
                "traceidratio",
                "parentbased_always_on",
                "parentbased_always_off",
                "parentbased_traceidratio",
            ];
            let hint = did_you_mean(other, KNOWN)
                .unwrap_or_else(|| format!("use one of {}", KNOWN.join(", ")));
            v.warnings.push(
                ConfigError::new(
                    "tracing",
                    format!("OTEL_TRACES_SAMPLER `{other}` is not supported; parentbased_traceidratio with sampling_rate is used"),
                )
                .with_hint(hint),
            );
            (None, true)
        }
    }
}

/// OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT, in milliseconds.
fn env_millis(v: &mut V, env: &Env) -> Option<Duration> {
    let (name, value) = otlp_env(env, "TIMEOUT")?;
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
        _ => {
            v.err_hint(
                "tracing",
                format!("{name} `{value}` is not a number of milliseconds"),
                "write e.g. 10000, or set \"export_timeout\" in the config",
            );
            None
        }
    }
}

/// The OTLP transport: `protocol`, else the OTEL_* variable, else http/protobuf. OTLP over
/// HTTP with JSON bodies is not built in.
fn otlp_protocol(v: &mut V, t: &RawTracing, env: &Env) -> OtlpProtocol {
    let (path, source, value) = match (&t.protocol, otlp_env(env, "PROTOCOL")) {
        (Some(p), _) => ("tracing.protocol", "protocol".to_string(), p.clone()),
        (None, Some((name, value))) => ("tracing", name, value),
        (None, None) => return OtlpProtocol::HttpProtobuf,
    };
    match value.trim() {
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        "grpc" => OtlpProtocol::Grpc,
        "http/json" => {
            v.err_hint(
                path,
                format!("{source} `{value}`: this gateway exports OTLP over http/protobuf or grpc"),
                "use \"http/protobuf\" with the collector's OTLP/HTTP port (4318), or \"grpc\" with its port 4317",
            );
            OtlpProtocol::HttpProtobuf
        }
        other => {
            let hint = did_you_mean(other, ["http/protobuf", "grpc", "http/json"])
                .unwrap_or_else(|| "use \"http/protobuf\" or \"grpc\"".into());
            v.err_hint(
                path,
                format!("{source}: unknown OTLP protocol `{other}`"),
                hint,
            );
            OtlpProtocol::HttpProtobuf
        }
    }
}

/// The collector's CA certificates: `ca_file` (relative to the config file), else the
/// OTEL_* variable's file (relative to the working directory, as every OTel SDK reads it);
/// checked to hold PEM certificates.
fn otlp_ca(v: &mut V, t: &RawTracing, env: &Env, base_dir: &std::path::Path) -> Option<Vec<u8>> {
    let (path, file) = match (&t.ca_file, otlp_env(env, "CERTIFICATE")) {
        (Some(f), _) => (
            "tracing.ca_file".to_string(),
            super::resolve_path(base_dir, f),
        ),
        (None, Some((name, f))) => (name, std::path::PathBuf::from(f)),
        (None, None) => return None,
    };
    match super::upstreams::read_ca_file(&file) {
        Ok(_) => std::fs::read(&file).ok(),
        Err(e) => {
            v.err_hint(
                path,
                e.to_string(),
                "give a PEM file with the CA certificate(s) that sign the collector's",
            );
            None
        }
    }
}

/// Whether exports are gzipped: `compression`, else the OTEL_* variable, else not.
fn otlp_gzip(v: &mut V, t: &RawTracing, env: &Env) -> bool {
    let (path, source, value) = match (&t.compression, otlp_env(env, "COMPRESSION")) {
        (Some(c), _) => ("tracing.compression", "compression".to_string(), c.clone()),
        (None, Some((name, value))) => ("tracing", name, value),
        (None, None) => return false,
    };
    match value.trim() {
        "gzip" => true,
        "none" => false,
        other => {
            let hint = did_you_mean(other, ["gzip", "none"])
                .unwrap_or_else(|| "use \"gzip\" or \"none\"".into());
            v.err_hint(
                path,
                format!("{source}: unknown compression `{other}`"),
                hint,
            );
            false
        }
    }
}

/// Export headers: the OTEL_* variable's, then the config's over them. Values are never put
/// into an error message: they may be API keys.
fn otlp_headers(v: &mut V, t: &RawTracing, env: &Env) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = match otlp_env(env, "HEADERS") {
        Some((name, text)) => key_values(v, &name, &text),
        None => Vec::new(),
    };
    headers.retain(|(k, _)| {
        let ok = http::HeaderName::from_bytes(k.as_bytes()).is_ok();
        if !ok {
            v.err_hint(
                "tracing",
                format!("OTLP header name `{k}` from the environment is not a valid header name"),
                "fix OTEL_EXPORTER_OTLP_HEADERS (name=value pairs, comma-separated)",
            );
        }
        ok
    });
    for (name, value) in t.headers.iter().flatten() {
        let path = format!("tracing.headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            v.err_hint(
                path,
                format!("`{name}` is not a valid header name"),
                "use letters, digits and '-', e.g. \"x-api-key\"",
            );
            continue;
        }
        if http::HeaderValue::from_str(value).is_err() {
            v.err_hint(
                path,
                "the header value has a character a header cannot carry (a line break or a non-ASCII character)",
                "check the value, or the variable it comes from",
            );
            continue;
        }
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        headers.push((name.clone(), value.clone()));
    }
    headers
}

/// `key=value,key=value` with percent-encoded values (OTEL_RESOURCE_ATTRIBUTES,
/// OTEL_EXPORTER_OTLP_HEADERS). A bad pair is an error naming the variable (not the value).
fn key_values(v: &mut V, name: &str, text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, pair) in text.split(',').enumerate() {
        if pair.trim().is_empty() {
            continue;
        }
        let decoded = pair.split_once('=').and_then(|(k, val)| {
            Some((
                crate::base::net::percent_decode(k.trim())?,
                crate::base::net::percent_decode(val.trim())?,
            ))
        });
        match decoded {
            Some((k, val)) if !k.is_empty() => {
                out.retain(|(existing, _)| *existing != k);
                out.push((k, val));
            }
            _ => v.err_hint(
                "tracing",
                format!(
                    "{name}: entry {} is not key=value with percent-encoded UTF-8",
                    i + 1
                ),
                "write e.g. key1=value1,key2=value%202",
            ),
        }
    }
    out
}

/// The OTLP traces URL from `endpoint`, else from the deprecated `jaeger_endpoint`, else
/// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as is), else OTEL_EXPORTER_OTLP_ENDPOINT (a base URL
/// that gets `/v1/traces`), else the local collector; `None` (with the error recorded) when
/// the one given is bad.
fn tracing_endpoint(
    v: &mut V,
    t: &RawTracing,
    env: &Env,
    protocol: OtlpProtocol,
) -> Option<String> {
    let grpc = protocol == OtlpProtocol::Grpc;
    // Over gRPC the service is named by the protocol: every endpoint is used as is.
    let parse = |text: &str| {
        if grpc {
            parse_grpc_endpoint(text)
        } else {
            parse_otlp_endpoint(text)
        }
    };
    let endpoint = match (&t.endpoint, &t.jaeger_endpoint) {
        (Some(e), jaeger) => {
            if jaeger.is_some() {
                v.warnings.push(
                    ConfigError::new(
                        "tracing.jaeger_endpoint",
                        "`jaeger_endpoint` is deprecated and ignored because `endpoint` is set",
                    )
                    .with_hint("remove `jaeger_endpoint`"),
                );
            }
            match parse(e) {
                Ok(url) => url,
                Err(e) => {
                    v.err_hint(
                        "tracing.endpoint",
                        e.to_string(),
                        "write e.g. \"http://127.0.0.1:4318\"",
                    );
                    return None;
                }
            }
        }
        (None, Some(j)) => match jaeger_to_otlp(j, grpc) {
            Ok(url) => {
                v.warnings.push(
                    ConfigError::new(
                        "tracing.jaeger_endpoint",
                        format!(
                            "`jaeger_endpoint` is deprecated; Jaeger takes OTLP, so spans go to {url}"
                        ),
                    )
                    .with_hint(format!(
                        "replace it with \"endpoint\": \"{}\"",
                        url.trim_end_matches("/v1/traces")
                    )),
                );
                url
            }
            Err(e) => {
                v.err_hint(
                    "tracing.jaeger_endpoint",
                    e.to_string(),
                    "use \"endpoint\": \"http://<jaeger-host>:4318\" instead",
                );
                return None;
            }
        },
        (None, None) => {
            let from_env = match (
                env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
                env("OTEL_EXPORTER_OTLP_ENDPOINT"),
            ) {
                (Some(url), _) => Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)),
                (None, Some(base)) if grpc => Some(("OTEL_EXPORTER_OTLP_ENDPOINT", base)),
                (None, Some(base)) => {
                    let url = format!("{}/v1/traces", base.trim_end_matches('/'));
                    Some(("OTEL_EXPORTER_OTLP_ENDPOINT", url))
                }
                (None, None) => None,
            };
            match from_env {
                None if grpc => format!("http://127.0.0.1:{OTLP_GRPC_PORT}"),
                None => format!("http://127.0.0.1:{OTLP_HTTP_PORT}/v1/traces"),
                Some((name, url)) => {
                    if let Err(e) = parse(&url) {
                        v.err_hint(
                            "tracing",
                            format!("{name}: {e}"),
                            format!("set {name} to e.g. \"http://127.0.0.1:4318\", or set \"endpoint\" in the config"),
                        );
                        return None;
                    }
                    if grpc {
                        url.trim_end_matches('/').to_string()
                    } else {
                        url
                    }
                }
            }
        }
    };
    Some(endpoint)
}

/// An OTLP/HTTP traces URL: a base URL gets `/v1/traces`, a URL with a path is kept.
pub fn parse_otlp_endpoint(text: &str) -> Result<String, EndpointError> {
    let uri: http::Uri = text.parse().map_err(|source| EndpointError::NotAUrl {
        text: text.to_string(),
        source,
    })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(EndpointError::BadScheme {
                text: text.to_string(),
            })
        }
    }
    if uri.authority().is_none() {
        return Err(EndpointError::NoHost {
            text: text.to_string(),
        });
    }
    let base = text.trim_end_matches('/');
    Ok(match uri.path() {
        "" | "/" => format!("{base}/v1/traces"),
        _ => text.to_string(),
    })
}

/// An OTLP/gRPC endpoint: `http(s)://host[:port]`, used as given (no trailing slash).
pub fn parse_grpc_endpoint(text: &str) -> Result<String, EndpointError> {
    let uri: http::Uri = text.parse().map_err(|source| EndpointError::NotAUrl {
        text: text.to_string(),
        source,
    })?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
        return Err(EndpointError::BadScheme {
            text: text.to_string(),
        });
    }
    if uri.authority().is_none() {
        return Err(EndpointError::NoHost {
            text: text.to_string(),
        });
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// The OTLP endpoint on the host of an old Jaeger collector URL
/// (`http://jaeger:14268/api/traces` -> `http://jaeger:4318/v1/traces`, or
/// `http://jaeger:4317` over gRPC).
fn jaeger_to_otlp(text: &str, grpc: bool) -> Result<String, EndpointError> {
    let uri: http::Uri = text.parse().map_err(|source| EndpointError::NotAUrl {
        text: text.to_string(),
        source,
    })?;
    let host = uri.host().ok_or_else(|| EndpointError::NoHost {
        text: text.to_string(),
    })?;
    let scheme = match uri.scheme_str() {
        Some("https") => "https",
        _ => "http",
    };
    Ok(if grpc {
        format!("{scheme}://{host}:{OTLP_GRPC_PORT}")
    } else {
        format!("{scheme}://{host}:{OTLP_HTTP_PORT}/v1/traces")
    })
}
