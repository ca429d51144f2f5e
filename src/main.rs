//! clap -> config -> run. The only place that uses anyhow.

use anyhow::Context;
use clap::Parser;
use kairos_rs::cli::demo;
use kairos_rs::cli::remote::{self, RemoteError};
use kairos_rs::cli::{
    CacheCommand, Cli, ClusterCommand, Command, ConfigCommand, HealthCommand, KeysCommand,
    MetricsCommand, RoutesCommand, TenantsCommand, UpstreamsCommand,
};
use kairos_rs::{config, observability, runtime as state, server};
use std::process::ExitCode;
use std::sync::Arc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Until the handler is installed, SIGHUP (reload) must not end the process (its default).
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to "ignore" before any thread starts.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    #[cfg(feature = "mimalloc")]
    tune_mimalloc();
    // Usage errors exit 1 (2 means an invalid config); --help and --version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h, which
/// libmimalloc-sys does not name).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Until the gateway is up, freed memory goes back to the OS at once instead of after
/// mimalloc's purge delay, which only runs when the process allocates again: an idle gateway
/// kept a 10,000-route config's parse garbage resident for good (30.5 MB idle with the delay,
/// 24.6 MB without, VmRSS of a release build). [`restore_purge_delay`] puts the delay back once
/// the first runtime is built: purging at once during a reload's build made it slower (more
/// decommits and page faults). After a reload, the reload thread asks for a collection
/// (`mi_collect(true)`: its empty pages and the arenas' scheduled purges) instead.
#[cfg(feature = "mimalloc")]
fn tune_mimalloc() {
    // SAFETY: plain option reading and setting, and a collection call; no pointers.
    let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    PURGE_DELAY.store(delay as i64, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    kairos_rs::base::memory::set_release(|| {
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
}

/// mimalloc's purge delay as it was before [`tune_mimalloc`].
#[cfg(feature = "mimalloc")]
static PURGE_DELAY: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Puts mimalloc's purge delay back (see [`tune_mimalloc`]).
fn restore_purge_delay() {
    #[cfg(feature = "mimalloc")]
    {
        let delay = PURGE_DELAY.load(std::sync::atomic::Ordering::Relaxed);
        // SAFETY: plain option setting; no pointers.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay as std::ffi::c_long) };
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None | Some(Command::Serve) => serve(cli.config),
        Some(Command::Config(ConfigCommand::Schema)) => {
            print!("{}", config::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Config(ConfigCommand::Validate { file })) => match config::load_file(&file) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} routes, {} upstreams)",
                    file.display(),
                    cfg.routes.len(),
                    cfg.upstreams.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprint!("{errors}");
                Ok(ExitCode::from(2))
            }
        },
        Some(Command::Config(ConfigCommand::Deploy { file, remote })) => {
            remote_run(&remote, |gw| remote::deploy(gw, &file))
        }
        Some(Command::Cluster(ClusterCommand::Bootstrap { force })) => {
            let path = cli
                .config
                .context("cluster bootstrap needs --config FILE (a whole config naming cluster.config_store)")?;
            match kairos_rs::cli::cluster::bootstrap(&path, force) {
                Ok(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(remote_failed(&e)),
            }
        }
        Some(Command::Health(HealthCommand::Check { upstream, remote })) => {
            let gw = match remote::Gateway::resolve(&remote) {
                Ok(gw) => gw,
                Err(e) => return Ok(remote_failed(&e)),
            };
            match remote::health_check(&gw, &upstream) {
                Ok((text, all)) => {
                    print!("{text}");
                    if !all {
                        eprintln!("upstream `{upstream}`: not every server is available");
                    }
                    Ok(ExitCode::from(if all { 0 } else { 1 }))
                }
                Err(e) => Ok(remote_failed(&e)),
            }
        }
        Some(Command::Upstreams(UpstreamsCommand::List { remote })) => {
            remote_run(&remote, remote::upstreams_list)
        }
        Some(Command::Cache(CacheCommand::Purge {
            key,
            route,
            prefix,
            all,
            remote,
        })) => {
            let what = match (key, route, prefix, all) {
                (Some(k), _, _, _) => serde_json::json!({ "key": k }),
                (_, Some(r), _, _) => serde_json::json!({ "route": r }),
                (_, _, Some(p), _) => serde_json::json!({ "prefix": p }),
                (_, _, _, true) => serde_json::json!({ "all": true }),
                _ => anyhow::bail!("cache purge needs --key, --route, --prefix or --all"),
            };
            remote_run(&remote, |gw| remote::cache_purge(gw, what))
        }
        Some(Command::Metrics(MetricsCommand::Export { format, remote })) => {
            remote_run(&remote, |gw| remote::metrics_export(gw, format))
        }
        Some(Command::Tenants(TenantsCommand::List { format, remote })) => {
            remote_run(&remote, |gw| remote::tenants_list(gw, format))
        }
        Some(Command::Tenants(TenantsCommand::Usage {
            tenant,
            from,
            to,
            format,
            remote,
        })) => remote_run(&remote, |gw| {
            remote::tenants_usage(gw, &tenant, from.as_deref(), to.as_deref(), format)
        }),
        Some(Command::Routes(RoutesCommand::List { format, remote })) if remote.is_set() => {
            remote_run(&remote, |gw| remote::routes_list(gw, format))
        }
        Some(Command::Routes(RoutesCommand::List { format, .. })) => {
            let path = cli.config.context(
                "routes list needs --config FILE, or --gateway URL / --environment NAME",
            )?;
            match config::load_file(&path) {
                Ok(cfg) => {
                    print!("{}", kairos_rs::cli::render_routes(&cfg, format));
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprint!("{errors}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Some(Command::Keys(KeysCommand::Generate { name, permissions })) => {
            match kairos_rs::cli::generate_key(&name, &permissions) {
                Ok(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => anyhow::bail!(e),
            }
        }
        Some(Command::Keys(KeysCommand::Hash)) => {
            let mut key = String::new();
            std::io::stdin()
                .read_line(&mut key)
                .context("reading the key from standard input")?;
            let key = key.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                eprintln!(
                    "no key on standard input (try: printf %s \"$KEY\" | kairos-rs keys hash)"
                );
                return Ok(ExitCode::from(2));
            }
            println!(
                "{}",
                kairos_rs::base::hash::format_hash(&kairos_rs::base::hash::hash(key))
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Keys(KeysCommand::List)) => {
            let path = cli.config.context("keys list needs --config FILE")?;
            match config::load_file(&path) {
                Ok(cfg) => {
                    print!("{}", kairos_rs::cli::render_keys(&cfg));
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprint!("{errors}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Some(Command::Echo { listen }) => {
            actix_web::rt::System::new().block_on(async move {
                let srv =
                    demo::start(&listen).with_context(|| format!("cannot listen on {listen}"))?;
                eprintln!("kairos echo upstream listening on {listen}");
                srv.await.context("echo server failed")
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs the start-up's config work (parse, validation, the first runtime's build) on a thread
/// of its own that ends with it. The allocator then holds what the config left live in pages
/// of no thread, and a reload that frees the first runtime returns those pages to the OS;
/// pages of the main thread, which sleeps in the server's event loop, were only collected when
/// it allocated again (4.5 MB stayed resident after the first reload of a 10,000-route config).
fn on_own_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Runs a command against a gateway: its output on stdout, or the error and its exit code.
fn remote_run(
    args: &remote::RemoteArgs,
    f: impl FnOnce(&remote::Gateway) -> Result<String, RemoteError>,
) -> anyhow::Result<ExitCode> {
    let result = remote::Gateway::resolve(args).and_then(|gw| f(&gw));
    match result {
        Ok(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(remote_failed(&e)),
    }
}

fn remote_failed(e: &RemoteError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code())
}

fn serve(path: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    let (cfg, text, demo_mode) = match &path {
        Some(p) => {
            let loaded = on_own_thread(|| {
                config::read_file(p)
                    .and_then(|text| config::load_text(&text, p).map(|cfg| (cfg, text)))
                    .map_err(|e| e.to_string())
            });
            match loaded {
                Ok((cfg, text)) => (cfg, text, false),
                Err(errors) => {
                    eprint!("{errors}");
                    if !errors.ends_with('\n') {
                        eprintln!();
                    }
                    return Ok(ExitCode::from(2));
                }
            }
        }
        None => {
            let cfg = config::load_str(
                config::DEMO_CONFIG,
                "config/demo.json (embedded)",
                std::path::Path::new("."),
            )
            .map_err(|e| anyhow::anyhow!("embedded demo config is invalid: {e}"))?;
            (cfg, config::DEMO_CONFIG.to_string(), true)
        }
    };
    let watch = cfg.admin.watch_config;
    // Held to the end of serve(): dropping it writes out the lines still queued.
    let _log_guard = match observability::logging::init(&cfg.logging) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    for w in &cfg.warnings {
        tracing::warn!("config warning: {w}");
    }
    let shared = match on_own_thread(|| state::SharedState::with_source(cfg, path.clone(), &text)) {
        Ok(s) => Arc::new(s),
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    // cluster.config_store: the shared config comes from etcd, read and watched in the
    // background (until its first document the gateway serves nothing and is not ready).
    if let Some(p) = &path {
        if let Err(errors) = state::store::start(&shared, p.clone(), &text) {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    }
    // The state keeps its own copy of the text; this one would idle with the process, and
    // so would the parse's garbage.
    drop(text);
    kairos_rs::base::memory::release_free_memory();
    restore_purge_delay();
    if let (Some(p), true) = (&path, watch) {
        if let Err(e) = kairos_rs::runtime::watch(shared.clone(), p.clone()) {
            tracing::warn!("{e}; reload with SIGHUP or POST /_kairos/config/reload");
        }
    }
    let flush = shared.clone();
    actix_web::rt::System::new().block_on(async move {
        // SIGUSR1 reopens logging.file (logrotate); installed before anything is logged as
        // listening, so a rotation never meets the default action (exit).
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
            Ok(mut usr1) => {
                actix_web::rt::spawn(async move {
                    while usr1.recv().await.is_some() {
                        observability::logging::reopen();
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot install the SIGUSR1 handler; the log file is not reopened"),
        }
        if demo_mode {
            let echo = demo::start(demo::DEMO_ECHO_ADDR)
                .with_context(|| format!("demo echo upstream cannot listen on {}", demo::DEMO_ECHO_ADDR))?;
            actix_web::rt::spawn(echo);
            tracing::info!(echo = demo::DEMO_ECHO_ADDR, "no --config given: serving the embedded demo config");
        }
        let bound = server::bind(shared.clone(), None)?;
        let addr = bound.addr;
        let listening =
            || tracing::info!(addr = %addr, version = env!("CARGO_PKG_VERSION"), "kairos-rs listening");
        server::run_until_signal(bound.server, shared, listening).await.context("server failed")
    })?;
    // Spans of the last requests: export them before the process ends.
    if let Some(t) = &flush.load().tracing {
        t.shutdown();
    }
    Ok(ExitCode::SUCCESS)
}
