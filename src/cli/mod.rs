//! The command line: `kairos-rs [--config FILE]` serves; subcommands validate and inspect
//! configs. main.rs runs what is parsed here.

pub mod cluster;
pub mod demo;
pub mod remote;

pub use crate::admin::render::{render_routes, render_table, Format};

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "kairos-rs",
    version,
    about = "A fast HTTP API gateway and reverse proxy"
)]
pub struct Cli {
    /// Config file to serve. Without it, an embedded demo config runs with a built-in echo upstream.
    #[arg(long, short, global = true, env = "KAIROS_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Check or describe config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect routes.
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// Create, hash and list API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check a running gateway's upstreams.
    #[command(subcommand)]
    Health(HealthCommand),
    /// List a running gateway's upstreams and where their servers come from.
    #[command(subcommand)]
    Upstreams(UpstreamsCommand),
    /// Read a running gateway's metrics.
    #[command(subcommand)]
    Metrics(MetricsCommand),
    /// Purge a running gateway's response cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// A running gateway's tenants and their usage.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Several instances as one: the config store.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run the built-in echo upstream alone.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = crate::cli::demo::DEMO_ECHO_ADDR)]
        listen: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file; prints every error with its location.
    Validate { file: PathBuf },
    /// Validate a config file here, then apply it on a running gateway (PUT /_kairos/config:
    /// validated again, persisted, applied).
    Deploy {
        file: PathBuf,
        #[command(flatten)]
        remote: crate::cli::remote::RemoteArgs,
    },
    /// Print the JSON Schema of the config file.
    Schema,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Write the shared part of the config file (--config; every member but server,
    /// logging, admin and cluster) into the empty key its cluster.config_store names.
    Bootstrap {
        /// Overwrite the key when it holds a config already.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new random key: prints the key once (hand it to the client) and the config
    /// entry holding only its hash.
    Generate {
        /// The key's name: the caller's identity in logs and metrics.
        #[arg(long)]
        name: String,
        /// Permissions to put in the entry (repeat the flag for several).
        #[arg(long = "permission")]
        permissions: Vec<String>,
    },
    /// Print the `key_hash` of a key read from standard input (kept out of the shell history
    /// and the process list).
    Hash,
    /// List the keys of a config file: name, permissions, rate limit (never a hash).
    List,
}

/// The `keys generate` output: the key, and the entry for `api_keys.keys`.
pub fn generate_key(
    name: &str,
    permissions: &[String],
) -> Result<String, crate::edge::auth::api_key::RandomFailed> {
    let key = crate::edge::auth::api_key::generate()?;
    let entry = serde_json::json!({
        name: {
            "key_hash": crate::base::hash::format_hash(&crate::base::hash::hash(&key)),
            "permissions": permissions,
        }
    });
    let entry = serde_json::to_string_pretty(&entry).unwrap_or_default();
    Ok(format!(
        "API key for `{name}` (shown once; the gateway stores only its hash):\n\n  {key}\n\n\
         Add this to \"api_keys\".\"keys\" in the config:\n\n{entry}\n"
    ))
}

/// The `keys list` table.
pub fn render_keys(cfg: &crate::config::Config) -> String {
    let Some(keys) = &cfg.api_keys else {
        return "no api_keys section\n".into();
    };
    let rows: Vec<[String; 3]> = keys
        .keys
        .iter()
        .map(|k| {
            [
                k.name.clone(),
                if k.permissions.is_empty() {
                    "-".into()
                } else {
                    k.permissions.join(",")
                },
                k.rate_limit
                    .map(|r| format!("{} rps, burst {}", r.rps, r.burst))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(4);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(11);
    let mut out = String::new();
    out.push_str(&format!(
        "{:<w0$}  {:<w1$}  RATE LIMIT\n",
        "NAME", "PERMISSIONS"
    ));
    for r in rows {
        out.push_str(&format!("{:<w0$}  {:<w1$}  {}\n", r[0], r[1], r[2]));
    }
    out
}

#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// List the routes of a config file (--config), or of a running gateway (--gateway or
    /// --environment).
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        remote: crate::cli::remote::RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum HealthCommand {
    /// The live state of an upstream's servers; exits 1 unless every one is available.
    Check {
        #[arg(long)]
        upstream: String,
        #[command(flatten)]
        remote: crate::cli::remote::RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum UpstreamsCommand {
    /// Every upstream with its source (static, dns, consul, kubernetes, eureka), its discovery
    /// status and its servers.
    List {
        #[command(flatten)]
        remote: crate::cli::remote::RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Remove stored answers (DELETE /_kairos/cache): by key, route, path prefix, or all.
    Purge {
        /// A key as the key template renders it, e.g. "GET:/api/users/42:".
        #[arg(long, group = "what")]
        key: Option<String>,
        /// Every answer of this route.
        #[arg(long, group = "what")]
        route: Option<String>,
        /// Every answer whose path starts with this.
        #[arg(long, group = "what")]
        prefix: Option<String>,
        /// Everything.
        #[arg(long, group = "what")]
        all: bool,
        #[command(flatten)]
        remote: crate::cli::remote::RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// The tenants of a running gateway.
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        remote: crate::cli::remote::RemoteArgs,
    },
    /// A tenant's daily counts (admitted and refused requests) for billing.
    Usage {
        /// The tenant id.
        tenant: String,
        /// First day, YYYY-MM-DD (default: the first of this month, UTC).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (default: today, UTC).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = crate::cli::remote::UsageFormat::Table)]
        format: crate::cli::remote::UsageFormat,
        #[command(flatten)]
        remote: crate::cli::remote::RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Print the gateway's metrics: the Prometheus text, or its samples as JSON.
    Export {
        #[arg(long, value_enum, default_value_t = crate::cli::remote::MetricsFormat::Prometheus)]
        format: crate::cli::remote::MetricsFormat,
        #[command(flatten)]
        remote: crate::cli::remote::RemoteArgs,
    },
}
