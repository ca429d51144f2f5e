//! CORS as a real browser sees it: headless Chromium loads a page from one loopback origin
//! (a support `Upstream` serving `tests/browser/cors_page.html`) and calls the gateway, another
//! origin (another port), with `fetch`. The page posts what it could read back to its own
//! origin's `/report`. Nothing is mocked: the browser enforces CORS, the gateway answers, a real
//! upstream records what reached it. A second test opens WebSockets from two origins
//! (`tests/browser/websocket_page.html`): the gateway checks their `Origin` itself. A third
//! opens one over HTTP/2 (RFC 8441 extended CONNECT) on a TLS listener
//! (`tests/browser/websocket_h2_page.html`).
//!
//! Chromium is required (`scripts/test.sh` installs it): without it the test fails, it is never
//! skipped.

mod support;

use serde_json::{json, Value};
use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{Gateway, Recorded, Reply, Upstream};

const PAGE: &str = include_str!("browser/cors_page.html");
const WS_PAGE: &str = include_str!("browser/websocket_page.html");
const WS_H2_PAGE: &str = include_str!("browser/websocket_h2_page.html");
const SECRET: &str = "cors-browser-test-secret-with-32-bytes!";
/// How long the pages get to report back (Chromium's first start on a busy 2-core machine
/// takes a few seconds).
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs the process-wide jsonwebtoken crypto provider (the gateway's ring-backed one) that
/// signs the test's token; `jsonwebtoken::encode` cannot sign without one.
fn install_jwt_crypto() {
    kairos_rs::edge::auth::crypto::install();
}

/// A valid HS256 token for the gateway's `jwt_validation`, signed with `jsonwebtoken`.
fn token() -> String {
    install_jwt_crypto();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({ "sub": "browser-user", "iat": now, "exp": now + 600 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("HMAC key"),
    )
    .expect("sign the test token")
}

/// A loopback server for one page: `GET /` is the page (filled in once the gateway's address
/// is known), `POST /report` records what the page could read.
struct PageServer {
    server: Upstream,
    html: Arc<OnceLock<String>>,
}

impl PageServer {
    fn start() -> PageServer {
        let html: Arc<OnceLock<String>> = Arc::default();
        let page = html.clone();
        let server = Upstream::start(move |r: &Recorded| serve_page(&page, r));
        PageServer { server, html }
    }

    /// The page's origin, as the browser serializes it.
    fn origin(&self) -> String {
        self.server.url()
    }

    fn fill(&self, role: &str, gateway: &str, token: &str, frame: &str) {
        self.fill_page(PAGE, role, gateway, token, frame);
    }

    fn fill_page(&self, page: &str, role: &str, gateway: &str, token: &str, frame: &str) {
        let html = page
            .replace("{{GATEWAY_WS}}", &gateway.replacen("http://", "ws://", 1))
            .replace("{{ROLE}}", role)
            .replace("{{GATEWAY}}", gateway)
            .replace("{{TOKEN}}", token)
            .replace("{{FRAME}}", frame);
        self.html.set(html).expect("page filled once");
    }

    /// The page's report, once it arrived.
    fn report(&self) -> Option<Value> {
        self.server
            .requests()
            .into_iter()
            .find(|r| r.method == "POST" && r.target == "/report")
            .map(|r| serde_json::from_slice(&r.body).expect("report is JSON"))
    }
}

fn serve_page(page: &OnceLock<String>, r: &Recorded) -> Reply {
    match (r.method.as_str(), r.target.as_str()) {
        ("GET", "/") => match page.get() {
            Some(html) => Reply::ok(html)
                .header("content-type", "text/html; charset=utf-8")
                .header("cache-control", "no-store"),
            None => Reply::ok("page not ready").status(503),
        },
        ("POST", "/report") => Reply::ok("").status(204),
        _ => Reply::ok("not found").status(404),
    }
}

/// Headless Chromium in a process group of its own, with a throwaway profile. Dropping it kills
/// the whole group (renderers, zygotes, GPU process), also when the test panics.
struct Chromium {
    child: Child,
    profile: tempfile::TempDir,
}

impl Chromium {
    fn launch(url: &str) -> Chromium {
        Self::launch_with(url, &[])
    }

    /// As [`Chromium::launch`], with more command-line switches.
    fn launch_with(url: &str, switches: &[&str]) -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log file");
        let spawned = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-breakpad",
                "--disable-crash-reporter",
                "--metrics-recording-only",
                "--mute-audio",
                // Page console messages and script errors go to the log (shown on failure).
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(switches)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "`chromium` is not on PATH: this test needs a real browser. Install it with \
                 `apt-get install -y chromium` (scripts/test.sh does that)."
            ),
            Err(e) => panic!("cannot start chromium: {e}"),
        };
        Chromium { child, profile }
    }

    /// The end of Chromium's log without the D-Bus noise of a machine with no session bus,
    /// for failure messages.
    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("dbus")).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The group id is the child's pid (process_group(0)).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `cors` object of the routes: only the allowed page's origin.
fn route_cors(origin: &str) -> Value {
    json!({
        "allowed_origins": [origin],
        "allowed_headers": ["Content-Type", "Authorization"],
        "expose_headers": ["X-Request-Id"]
    })
}

#[test]
fn a_browser_reads_only_what_the_cors_policy_allows() {
    let started = Instant::now();
    // The API behind the gateway.
    let api = Upstream::start(|r: &Recorded| {
        if r.method == "POST" && r.target == "/private/data" {
            Reply::ok(&format!("private: {}", String::from_utf8_lossy(&r.body)))
        } else {
            Reply::ok("hello from the api").header("x-secret", "not exposed")
        }
    });
    // The page the routes allow, and one from another origin (another port).
    let allowed = PageServer::start();
    let other = PageServer::start();

    // The top-level policy allows the other page; both routes override it with their own, which
    // allows only the first page: a route's `cors` replaces the top-level one, it is not merged.
    let mut cfg: Value = serde_json::from_str(&support::config(
        &api.url(),
        &json!([
            { "name": "open", "path": "/open/{*rest}", "upstream": "u",
              "cors": route_cors(&allowed.origin()) },
            { "name": "private", "path": "/private/{*rest}", "upstream": "u", "auth": "jwt",
              "cors": route_cors(&allowed.origin()) }
        ])
        .to_string(),
        "",
    ))
    .expect("config JSON");
    cfg["cors"] = json!({
        "allowed_origins": [other.origin()],
        "allowed_headers": ["Content-Type", "Authorization"]
    });
    cfg["jwt_validation"] = json!({ "secret": SECRET, "algorithm": "HS256" });
    let gateway = Gateway::start(&cfg.to_string());
    let gateway_origin = format!("http://{}", gateway.addr);

    let token = token();
    allowed.fill(
        "allowed",
        &gateway_origin,
        &token,
        &format!(r#"<iframe src="{}/"></iframe>"#, other.origin()),
    );
    other.fill("other", &gateway_origin, "", "");

    let launched = Instant::now();
    let browser = Chromium::launch(&format!("{}/", allowed.origin()));
    let reported = support::wait_until(REPORT_TIMEOUT, || {
        allowed.report().is_some() && other.report().is_some()
    });
    assert!(
        reported,
        "no report from the pages within {REPORT_TIMEOUT:?} (allowed page: {}, other page: {}). \
         Chromium's log:\n{}",
        allowed.report().map_or("none".into(), |v| v.to_string()),
        other.report().map_or("none".into(), |v| v.to_string()),
        browser.log_tail()
    );
    drop(browser);
    let browser_time = launched.elapsed();

    let mine = allowed.report().expect("report");
    let theirs = other.report().expect("report");
    eprintln!("allowed page: {mine:#}\nother page: {theirs:#}");
    assert_eq!(mine["script_error"], Value::Null, "{mine}");
    assert_eq!(theirs["script_error"], Value::Null, "{theirs}");

    // (1) The allowed origin reads the body and the exposed X-Request-Id of a simple GET, and
    // not a header the policy does not expose.
    let simple = &mine["results"]["simple"];
    assert_eq!(simple["status"], 200, "{simple}");
    assert_eq!(simple["body"], "hello from the api");
    assert_eq!(simple["secret"], Value::Null, "X-Secret is not exposed");
    let seen = api
        .requests()
        .into_iter()
        .find(|r| r.target == "/open/hello?from=allowed")
        .expect("the simple GET reached the api");
    assert_eq!(
        simple["request_id"].as_str(),
        seen.header("x-request-id"),
        "the page read the gateway's X-Request-Id"
    );

    // (2) Another origin: fetch rejects (the browser hides the response). The simple GET was
    // sent (CORS protects reading, not sending); the preflighted POST never left the browser,
    // because the gateway refused its preflight.
    for case in ["simple", "preflighted"] {
        let r = &theirs["results"][case];
        assert!(
            r["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("TypeError")),
            "the other origin's {case} fetch was not blocked: {r}"
        );
    }
    let requests = api.requests();
    assert!(requests
        .iter()
        .any(|r| r.target == "/open/hello?from=other"));
    assert!(
        !requests.iter().any(|r| r.target.starts_with("/open/echo")),
        "a request whose preflight was refused reached the api"
    );

    // (3) Authorization plus a JSON body: the preflight (which carries no token) was answered by
    // the gateway, then the actual request with the token went through.
    let pre = &mine["results"]["preflighted"];
    assert_eq!(pre["status"], 200, "{pre}");
    assert_eq!(pre["body"], r#"private: {"hello":"gateway"}"#);
    assert!(pre["request_id"].is_string(), "{pre}");
    let post = requests
        .iter()
        .find(|r| r.method == "POST" && r.target == "/private/data")
        .expect("the authorized POST reached the api");
    assert_eq!(post.header("content-type"), Some("application/json"));
    let options: Vec<&str> = requests
        .iter()
        .filter(|r| r.method == "OPTIONS")
        .map(|r| r.target.as_str())
        .collect();
    assert!(
        options.is_empty(),
        "the api received preflights: {options:?}"
    );

    // (4) The gateway's own 401 carries the CORS headers: the page reads its status and
    // request id; the api never saw the request.
    let unauthorized = &mine["results"]["unauthorized"];
    assert_eq!(unauthorized["status"], 401, "{unauthorized}");
    assert!(unauthorized["request_id"].is_string(), "{unauthorized}");
    assert!(!requests
        .iter()
        .any(|r| r.target == "/private/data?from=allowed"));

    eprintln!(
        "Chromium launch to both reports {:.1}s, whole test {:.1}s",
        browser_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_browser_page_talks_over_a_websocket_and_another_origin_is_refused() {
    let echo = support::WsEcho::start();
    let allowed = PageServer::start();
    let other = PageServer::start();
    let gateway = Gateway::start(&support::config(
        &echo.url(),
        &json!([{ "name": "ws", "path": "/ws", "upstream": "u",
                      "cors": route_cors(&allowed.origin()) }])
        .to_string(),
        "",
    ));
    let gateway_origin = format!("http://{}", gateway.addr);
    allowed.fill_page(
        WS_PAGE,
        "allowed",
        &gateway_origin,
        "",
        &format!(r#"<iframe src="{}/"></iframe>"#, other.origin()),
    );
    other.fill_page(WS_PAGE, "other", &gateway_origin, "", "");
    let browser = Chromium::launch(&format!("{}/", allowed.origin()));
    let reported = support::wait_until(REPORT_TIMEOUT, || {
        allowed.report().is_some() && other.report().is_some()
    });
    assert!(
        reported,
        "no report from the pages within {REPORT_TIMEOUT:?}. Chromium's log:\n{}",
        browser.log_tail()
    );
    drop(browser);
    let mine = allowed.report().expect("report");
    let theirs = other.report().expect("report");
    eprintln!("allowed page: {mine:#}\nother page: {theirs:#}");
    // The allowed origin: the socket opened, the echo came back through the gateway, and the
    // page's close code reached the upstream, whose close reply the page saw.
    assert_eq!(mine["events"], json!(["open"]), "{mine}");
    assert_eq!(mine["echo"], "hello from allowed");
    assert_eq!(mine["close_code"], 4003);
    assert_eq!(mine["close_reason"], "page done");
    // Another origin: the gateway refused the handshake (403), the browser saw a failed
    // socket (1006), and the upstream never got a connection from it.
    assert_eq!(theirs["events"], json!(["error"]), "{theirs}");
    assert_eq!(theirs["close_code"], 1006);
    assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_browser_opens_a_websocket_over_http2() {
    let (dir, pem, _) = support::self_signed_tls(&["localhost"], &[]);
    let echo = support::WsEcho::start();
    let warm = Upstream::start_ok();
    let page = PageServer::start();
    let token = "t0k3n-for-the-browser-websocket-test";
    let gateway = Gateway::start_in(
        &json!({
            "server": { "workers": 1, "tls": { "cert": "server.pem", "key": "server.key" } },
            "upstreams": {
                "u": { "servers": [{ "url": echo.url() }] },
                "warm": { "servers": [{ "url": warm.url() }] }
            },
            "routes": [
                { "name": "ws", "path": "/ws", "upstream": "u", "cors": route_cors(&page.origin()) },
                { "name": "warm", "path": "/warm", "upstream": "warm" }
            ],
            "admin": { "token": token },
            "logging": { "access_log": false }
        })
        .to_string(),
        dir.path(),
    );
    let gateway_origin = format!("https://localhost:{}", gateway.addr.port());
    page.fill_page(WS_H2_PAGE, "h2", &gateway_origin, "", "");
    // The gateway's certificate is self-signed; the page's origin stays plain HTTP.
    let browser = Chromium::launch_with(
        &format!("{}/", page.origin()),
        &["--ignore-certificate-errors"],
    );
    let reported = support::wait_until(REPORT_TIMEOUT, || page.report().is_some());
    assert!(
        reported,
        "no report from the page within {REPORT_TIMEOUT:?}. Chromium's log:\n{}",
        browser.log_tail()
    );
    drop(browser);
    let report = page.report().expect("report");
    eprintln!("page: {report:#}");
    assert_eq!(report["events"], json!(["open"]), "{report}");
    assert_eq!(report["echo"], "hello from h2");
    assert_eq!(report["close_code"], 4003);
    assert_eq!(report["close_reason"], "page done");
    // The handshake was an extended CONNECT (an HTTP/1.1 one would be counted as a GET 101).
    let metrics = support::block_on(async {
        let root = reqwest::Certificate::from_pem(pem.as_bytes()).expect("certificate");
        support::client_builder()
            .add_root_certificate(root)
            .build()
            .expect("client")
            .get(format!("{gateway_origin}/_kairos/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    });
    let requests = |method: &str, status: &str| {
        support::metric(
            &metrics,
            "kairos_requests_total",
            &[("method", method), ("route", "ws"), ("status", status)],
        )
    };
    assert_eq!(requests("CONNECT", "200"), Some(1.0), "{metrics}");
    assert_eq!(requests("GET", "101"), None);
    assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}
