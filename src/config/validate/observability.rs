//! The sections that watch and steer the gateway rather than route traffic: `admin` (token,
//! metrics access, config watching), `logging`, and `tracing` with its OTLP endpoint (and the
//! deprecated Jaeger one).

use super::V;
use crate::config::error::{did_you_mean, ConfigError};
use crate::config::model::{AdminConfig, LogFormat, LoggingConfig, TraceTrust, TracingConfig};
use crate::config::raw::{RawAdmin, RawLogging, RawTracing};
use std::path::Path;
use std::time::Duration;

/// The OTLP/HTTP port of Jaeger, Tempo and the OpenTelemetry Collector.
const OTLP_HTTP_PORT: u16 = 4318;

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

pub(super) fn tracing_config(v: &mut V, t: &RawTracing) -> Option<TracingConfig> {
    let endpoint = tracing_endpoint(v, t)?;
    let sampling_rate = t.sampling_rate.unwrap_or(0.1);
    if !(0.0..=1.0).contains(&sampling_rate) {
        v.err_hint(
            "tracing.sampling_rate",
            format!("sampling_rate {sampling_rate} is outside 0.0..=1.0"),
            "0.1 records one new trace in ten; 1.0 records all",
        );
    }
    let service_name = t.service_name.clone().unwrap_or_else(|| "kairos-rs".into());
    if service_name.trim().is_empty() {
        v.err("tracing.service_name", "service_name must not be empty");
    }
    let export_timeout = v.duration(
        "tracing.export_timeout",
        &t.export_timeout,
        Duration::from_secs(10),
    );
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
    if !t.enabled.unwrap_or(true) {
        return None;
    }
    Some(TracingConfig {
        endpoint,
        sampling_rate,
        service_name,
        export_timeout,
        trust_incoming,
    })
}

/// The OTLP traces URL from `endpoint`, else from the deprecated `jaeger_endpoint`, else the
/// local collector; `None` (with the error recorded) when the one given is bad.
fn tracing_endpoint(v: &mut V, t: &RawTracing) -> Option<String> {
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
            match parse_otlp_endpoint(e) {
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
        (None, Some(j)) => match jaeger_to_otlp(j) {
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
        (None, None) => format!("http://127.0.0.1:{OTLP_HTTP_PORT}/v1/traces"),
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

/// The OTLP/HTTP endpoint on the host of an old Jaeger collector URL
/// (`http://jaeger:14268/api/traces` -> `http://jaeger:4318/v1/traces`).
fn jaeger_to_otlp(text: &str) -> Result<String, EndpointError> {
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
    Ok(format!("{scheme}://{host}:{OTLP_HTTP_PORT}/v1/traces"))
}
