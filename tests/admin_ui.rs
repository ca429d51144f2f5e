//! The admin web UI (`ui/`, served at `/_kairos/admin/`) in a real browser: the real gateway
//! binary with a real upstream and a load running, and `ui/e2e/admin.spec.mjs` (node +
//! playwright-core driving Debian's headless Chromium, axe-core for accessibility) checking
//! login, the live dashboard, routes, upstreams, the config editor (schema error at its line,
//! a valid edit applied, a conflicting edit refused), the log viewer, key creation, tenants, the
//! cache, keyboard navigation and the CSP. With `KAIROS_UI_SCREENSHOTS=<dir>` the same run
//! writes the README's screenshots (`scripts/screenshots.sh`).
//!
//! Node, `ui/node_modules` (`cd ui && npm ci`) and Chromium are required (`scripts/test.sh`
//! installs them): without them the test fails, it is never skipped. A second test checks the
//! committed build itself: the JavaScript budget and the precompressed siblings; a third runs
//! the UI's unit tests (`ui/unit/`, node's test runner).

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{GatewayProcess, Recorded, Reply, Upstream};

const TOKEN: &str = "admin-ui-test-token-0123456789abcdef";
const PARTNER_KEY: &str = "partner-key-from-the-environment-0123456789";
/// The UI's JavaScript budget: all of it, gzipped.
const JS_BUDGET_GZ: u64 = 250 * 1024;
/// The longest the browser script may run before the test gives up on it (a guard against a
/// hung browser, not a timing assertion: the script normally takes well under a minute).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

fn config(up: &Upstream, flaky: &Upstream, quota_db: &Path) -> String {
    serde_json::json!({
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "workers": 2},
        "admin": {"token": "${KAIROS_UI_TOKEN}", "watch_config": false},
        "upstreams": {
            "backend": {"servers": [{"url": up.url()}]},
            "flaky": {
                "servers": [{"url": flaky.url()}],
                "health_check": {"path": "/health", "interval": "300ms", "timeout": "250ms",
                                 "healthy_threshold": 1, "unhealthy_threshold": 1}
            }
        },
        "api_keys": {"keys": {"partner": {"key": "${PARTNER_KEY}", "permissions": ["read"]}}},
        "routes": [
            {"name": "api", "path": "/api/{*rest}", "upstream": "backend", "cache": {"ttl": "60s"}},
            {"name": "secure", "path": "/secure/{*rest}", "upstream": "backend", "auth": "api_key"},
            {"name": "flaky", "path": "/flaky/{*rest}", "upstream": "flaky"}
        ],
        "tenancy": {
            "identify_by": ["host"],
            "quota_store": {"backend": "file", "path": quota_db.display().to_string()}
        },
        "tenants": {
            "acme": {"hosts": ["acme.example"], "quotas": {"daily_requests": 100000, "monthly_requests": 1000000}}
        },
        "caching": {"backend": "memory", "max_size": "16MB"},
        "logging": {"format": "json", "level": "info", "access_log": true}
    })
    .to_string()
}

fn upstream() -> Upstream {
    Upstream::start(|r: &Recorded| {
        if r.target.starts_with("/api/fail") {
            Reply::ok(r#"{"error":"boom"}"#).status(500)
        } else {
            Reply::ok(r#"{"ok":true}"#).header("content-type", "application/json")
        }
    })
}

/// A server whose health check passes for two seconds, then fails for two, and so on: its
/// `down` and `up` transitions reach the UI as `upstream` events.
fn flapping() -> Upstream {
    let started = Instant::now();
    Upstream::start(move |r: &Recorded| {
        let healthy = (started.elapsed().as_secs() / 2).is_multiple_of(2);
        match (r.target.as_str(), healthy) {
            ("/health", false) => Reply::ok("failing").status(503),
            _ => Reply::ok("ok"),
        }
    })
}

/// Traffic while the browser looks: a few tens of requests a second with a varying pace, one in
/// ten answered 500 by the upstream, one in seven for the tenant's host. Bounded in count and
/// time; stops when `stop` is set.
fn load(gw_url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let client = support::blocking_client();
        let started = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed)
            && sent < 20_000
            && started.elapsed() < Duration::from_secs(600)
        {
            let path = if sent % 10 == 3 {
                format!("/api/fail/{sent}")
            } else {
                format!("/api/load/{sent}")
            };
            let mut req = client.get(format!("{gw_url}{path}"));
            if sent.is_multiple_of(7) {
                req = req.header("host", "acme.example");
            }
            let _ = req.send();
            sent += 1;
            // 10 to 40 ms between requests, so that requests/s moves from second to second.
            std::thread::sleep(Duration::from_millis(10 + (sent * 7919 % 31)));
        }
        sent
    })
}

fn require_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(o) if o.status.success()),
        "node is required for the admin UI browser test (scripts/test.sh installs Debian's nodejs)"
    );
    for module in ["playwright-core", "axe-core"] {
        assert!(
            ui_dir().join("node_modules").join(module).is_dir(),
            "ui/node_modules/{module} is missing: run `cd ui && npm ci` (scripts/test.sh does)"
        );
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: the admin UI browser test needs Chromium (scripts/test.sh installs it)"
    );
}

#[test]
fn admin_ui_in_chromium() {
    require_tools();
    let up = upstream();
    let flaky = flapping();
    let state = tempfile::tempdir().expect("tempdir");
    let gw = GatewayProcess::start_with_env(
        &config(&up, &flaky, &state.path().join("quotas.db")),
        &[("KAIROS_UI_TOKEN", TOKEN), ("PARTNER_KEY", PARTNER_KEY)],
    );
    let base = gw.url("");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(base.clone(), stop.clone());

    let out = tempfile::tempdir().expect("tempdir");
    let stdout = std::fs::File::create(out.path().join("stdout")).expect("stdout file");
    let stderr = std::fs::File::create(out.path().join("stderr")).expect("stderr file");
    let mut cmd = Command::new("node");
    cmd.arg("e2e/admin.spec.mjs")
        .current_dir(ui_dir())
        .env("KAIROS_URL", &base)
        .env("KAIROS_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let mut child = cmd.spawn().expect("spawn node");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.join().expect("load thread");

    let read = |name: &str| {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(out.path().join(name)) {
            let _ = f.read_to_string(&mut s);
        }
        s
    };
    let (stdout, stderr) = (read("stdout"), read("stderr"));
    println!("{stdout}");
    eprintln!("{stderr}");
    println!("load: {sent} requests sent while the browser ran");
    let Some(status) = status else {
        panic!("the browser script did not finish within {SCRIPT_DEADLINE:?}");
    };
    assert!(status.success(), "the browser script failed ({status})");
    assert!(
        stdout.contains("[admin-ui] all checks passed"),
        "the browser script did not reach its end"
    );
    // The token never reached a log line.
    assert!(
        !gw.logs().iter().any(|l| l.contains(TOKEN)),
        "the admin token appears in the gateway's log"
    );
}

/// The UI's pure logic (the SSE parser with chunks cut anywhere, the schema error filter, the
/// diff, the log filters) under node's test runner: `ui/unit/`, `npm run test:unit`.
#[test]
fn ui_logic_unit_tests() {
    require_tools();
    let out = Command::new("node")
        .arg("unit/run.mjs")
        .current_dir(ui_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run node unit/run.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the UI unit tests failed ({})",
        out.status
    );
    assert!(
        stdout.contains("# fail 0"),
        "no test summary from node --test"
    );
}

/// Every file of the committed build under `ui/dist/`.
fn dist_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read ui/dist") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = vec![];
    walk(&ui_dir().join("dist"), &mut out);
    out.sort();
    out
}

#[test]
fn committed_build_keeps_its_budget_and_precompressed_siblings() {
    let files = dist_files();
    let index =
        std::fs::read_to_string(ui_dir().join("dist/index.html")).expect("ui/dist/index.html");
    // No inline script or style: the CSP (script-src 'self'; style-src 'self') would block it.
    assert!(!index.contains("<script>") && !index.contains("<style") && !index.contains(" style="));
    let mut js_gz = 0u64;
    let mut text_files = 0;
    for path in &files {
        let name = path.to_string_lossy().to_string();
        if name.ends_with(".gz") || name.ends_with(".br") {
            continue;
        }
        let raw = std::fs::read(path).expect("read asset");
        if name.contains("/assets/") {
            // Hashed names: <name>-<hash>.<ext>, and referenced from the page or another asset.
            let file = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            assert!(
                file.rsplit_once('.')
                    .is_some_and(|(stem, _)| stem.contains('-')),
                "{file} has no content hash in its name"
            );
        }
        let text = [".js", ".css", ".html", ".svg", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if !text {
            continue;
        }
        text_files += 1;
        let gz =
            std::fs::read(format!("{name}.gz")).unwrap_or_else(|_| panic!("{name}.gz is missing"));
        let br =
            std::fs::read(format!("{name}.br")).unwrap_or_else(|_| panic!("{name}.br is missing"));
        let mut unzipped = vec![];
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut unzipped)
            .expect("gunzip");
        assert!(unzipped == raw, "{name}.gz is not {name}");
        let mut unbrotli = vec![];
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut unbrotli)
            .expect("brotli");
        assert!(unbrotli == raw, "{name}.br is not {name}");
        if name.ends_with(".js") {
            js_gz += gz.len() as u64;
        }
    }
    assert!(text_files >= 3, "ui/dist holds {text_files} text files");
    println!("UI JavaScript gzipped: {js_gz} bytes (budget {JS_BUDGET_GZ})");
    assert!(
        js_gz <= JS_BUDGET_GZ,
        "the UI's JavaScript is {js_gz} bytes gzipped, over its {JS_BUDGET_GZ}-byte budget"
    );
}
