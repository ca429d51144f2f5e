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
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc, asked the way the standard library asks the system's `malloc`: the plain entry
/// points when the alignment is one `malloc` guarantees anyway (at most 16 bytes, and at most
/// the size), the aligned ones only for larger alignments. The `mimalloc` crate's own
/// allocator calls `mi_malloc_aligned` for every layout, whose fast path takes only blocks of
/// at most 1 KiB; every larger one (a connection's read buffer, a response's write buffer)
/// went through the generic aligned path and often over-allocated: 2,304 instructions per
/// proxied request in `mi_malloc_aligned` (benches/load/callgrind.sh). A C program's `malloc`
/// replacement, mimalloc returns memory aligned for any type that fits: 16 bytes from 16
/// bytes up, the size's own below (`MI_MAX_ALIGN_SIZE`, and its size classes are multiples
/// of 16 from 16 up).
#[cfg(feature = "mimalloc")]
struct Mimalloc;

/// The alignment `mi_malloc` gives every block of at least this size (`MI_MAX_ALIGN_SIZE`).
#[cfg(feature = "mimalloc")]
const MALLOC_ALIGN: usize = 16;

#[cfg(feature = "mimalloc")]
impl Mimalloc {
    /// Whether a plain `mi_malloc` of `size` bytes is aligned enough for `align`.
    #[inline(always)]
    fn plain(size: usize, align: usize) -> bool {
        align <= MALLOC_ALIGN && align <= size
    }
}

// SAFETY: every pointer comes from mimalloc and goes back to it (`mi_free` takes blocks of
// both the plain and the aligned entry points); each entry point is chosen so the block meets
// the layout's alignment (see `Mimalloc::plain`).
#[cfg(feature = "mimalloc")]
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: as for the impl.
        unsafe {
            if Self::plain(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: as for the impl.
        unsafe {
            if Self::plain(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: as for the impl.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        // SAFETY: as for the impl.
        unsafe {
            if Self::plain(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

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

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::Mimalloc;
    use std::alloc::{GlobalAlloc, Layout};

    /// Every size and alignment a Rust program asks for gets a block aligned as asked, whether
    /// it takes mimalloc's plain or aligned entry point, and keeps its bytes through reallocs
    /// that cross from one entry point to the other.
    #[test]
    fn every_layout_gets_its_alignment_and_keeps_its_bytes() {
        let sizes = [
            1, 2, 3, 7, 8, 9, 12, 15, 16, 17, 24, 40, 48, 100, 1000, 1024, 1025, 1280, 3000, 8192,
            70_000,
        ];
        let aligns = [1, 2, 4, 8, 16, 32, 64, 128, 4096];
        for &size in &sizes {
            for &align in &aligns {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: a non-zero size; each block is freed with its own layout.
                unsafe {
                    let p = Mimalloc.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    for i in 0..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                    // Grown past a threshold, then shrunk below it: both entry points.
                    let grown = size * 3 + 5;
                    let q = Mimalloc.realloc(p, layout, grown);
                    assert_eq!(
                        q as usize % align,
                        0,
                        "realloc {size}->{grown} align {align}"
                    );
                    assert!(
                        (0..size).all(|i| *q.add(i) == (i % 251) as u8),
                        "bytes after growing"
                    );
                    let shrunk = (size / 2).max(1);
                    let grown_layout = Layout::from_size_align(grown, align).expect("layout");
                    let r = Mimalloc.realloc(q, grown_layout, shrunk);
                    assert_eq!(
                        r as usize % align,
                        0,
                        "realloc {grown}->{shrunk} align {align}"
                    );
                    assert!(
                        (0..shrunk).all(|i| *r.add(i) == (i % 251) as u8),
                        "bytes after shrinking"
                    );
                    Mimalloc.dealloc(r, Layout::from_size_align(shrunk, align).expect("layout"));
                    let z = Mimalloc.alloc_zeroed(layout);
                    assert_eq!(
                        z as usize % align,
                        0,
                        "alloc_zeroed size {size} align {align}"
                    );
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    Mimalloc.dealloc(z, layout);
                }
            }
        }
    }
}
