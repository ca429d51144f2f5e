//! The Grafana dashboards against a real Prometheus (Debian's package): Prometheus scrapes the
//! gateway under known traffic, and every PromQL expression in dashboards/*.json must return
//! at least one series. A query that names a metric the gateway does not export fails here.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

const TOKEN: &str = "dashboard-test-token-0123456789";

/// A Prometheus server on a free loopback port, stopped on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: kairos
    metrics_path: /_kairos/metrics
    authorization:
      type: Bearer
      credentials: {TOKEN}
    static_configs:
      - targets: ["{target}"]
"#
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/test.sh installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Runs an instant query; returns the result series.
    async fn query(&self, c: &reqwest::Client, expr: &str) -> Vec<serde_json::Value> {
        let url = format!("{}/api/v1/query?query={}", self.url, percent_encode(expr));
        let res = c.get(url).send().await.unwrap();
        let status = res.status();
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(status, 200, "query {expr} failed: {body}");
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` string in a Grafana dashboard, with the panel title it belongs to.
fn exprs(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(title);
            if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                out.push((title.to_string(), e.to_string()));
            }
            for child in m.values() {
                exprs(child, title, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| exprs(c, title, out)),
        _ => {}
    }
}

fn dashboards() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
}

/// Grafana's variables, as the dashboard's "All" selection resolves them.
fn resolve_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("${route}", ".*")
        .replace("$route", ".*")
        .replace("${upstream}", ".*")
        .replace("$upstream", ".*")
        .replace("${tenant}", ".*")
        .replace("$tenant", ".*")
}

#[tokio::test]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let up = Upstream::start(|_| Reply::ok("hello"));
    let failing = Upstream::start(|_| Reply::ok("oops").status(503));
    // A Eureka server registering `up` as the one UP instance of USERS (discovery metrics).
    let port = up.addr.port();
    let eureka = Upstream::start(move |r| {
        if r.target != "/eureka/apps/USERS" {
            return Reply::ok("").status(404);
        }
        let app = serde_json::json!({"application": {"name": "USERS", "instance": [{
            "instanceId": "users-1", "hostName": "localhost", "app": "USERS",
            "ipAddr": "127.0.0.1", "status": "UP",
            "port": {"$": port, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"}
        }]}});
        Reply::ok(&app.to_string()).header("content-type", "application/json")
    });
    let gw = Gateway::start(&format!(
        r#"{{"version":1,"server":{{"workers":1}},"admin":{{"token":"{TOKEN}"}},
        "upstreams":{{"users":{{"servers":[{{"url":"{}"}}]}},
                     "failing":{{"servers":[{{"url":"{}"}}]}},
                     "dead":{{"servers":[{{"url":"http://127.0.0.1:9"}}]}},
                     "found":{{"discovery":{{"type":"eureka","endpoint":"{}/eureka","app":"USERS","refresh":"1s"}}}}}},
        "routes":[{{"name":"get-user","path":"/users/{{id}}","upstream":"users"}},
                  {{"name":"broken","path":"/broken","upstream":"failing"}},
                  {{"name":"gone","path":"/gone","upstream":"dead"}},
                  {{"name":"found","path":"/found","upstream":"found"}},
                  {{"name":"limited","path":"/limited","upstream":"users",
                    "rate_limit":{{"per_ip":{{"rps":5,"burst":1}}}}}},
                  {{"name":"cached","path":"/cached/{{id}}","upstream":"users","cache":{{}}}}],
        "caching":{{"backend":"memory"}},
        "tenancy":{{"identify_by":["header"],"quota_store":{{"backend":"memory"}}}},
        "tenants":{{"acme":{{"quotas":{{"monthly_requests":1000000,"warn_at":0.5}}}}}},
        "logging":{{"access_log":false,"level":"error"}}}}"#,
        up.url(),
        failing.url(),
        eureka.url()
    ));
    let prom = Prometheus::start(gw.addr);
    let c = client();

    // Traffic of every kind the panels show, spread over several scrapes.
    let traffic = {
        let c = c.clone();
        let base = format!("http://{}", gw.addr);
        tokio::spawn(async move {
            for i in 0.. {
                let _ = c
                    .get(format!("{base}/users/{i}"))
                    .header("X-Tenant-Id", "acme")
                    .send()
                    .await;
                for path in [
                    format!("/users/{i}"),
                    "/broken".into(),
                    "/nowhere".into(),
                    "/limited".into(),
                    "/found".into(),
                    // Hits, and a miss every tenth round.
                    format!("/cached/{}", i / 10),
                ] {
                    let _ = c.get(format!("{base}{path}")).send().await;
                }
                if i % 10 == 0 {
                    let _ = c.get(format!("{base}/gone")).send().await;
                    let _ = c
                        .post(format!("{base}/users/1"))
                        .body(vec![b'x'; 100])
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Prometheus is up and has scraped the gateway several times.
    let mut scraped = false;
    for _ in 0..300 {
        if let Ok(res) = c
            .get(format!(
                "{}/api/v1/query?query={}",
                prom.url,
                percent_encode("count_over_time(up{job=\"kairos\"}[1m])")
            ))
            .send()
            .await
        {
            if let Ok(body) = res.json::<serde_json::Value>().await {
                let n = body["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
                if n >= 5.0 {
                    scraped = true;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(scraped, "Prometheus did not scrape the gateway 5 times");
    let up_now = prom.query(&c, "up{job=\"kairos\"}").await;
    assert_eq!(up_now[0]["value"][1], "1", "scrape failing: {up_now:?}");

    let exported = scrape_metrics(&gw, TOKEN).await;
    let mut checked = 0;
    for file in dashboards() {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let mut found = Vec::new();
        exprs(&json, "", &mut found);
        assert!(!found.is_empty(), "{} has no queries", file.display());
        for (title, expr) in found {
            // Every metric named must be one the gateway exports.
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("kairos_") || w.starts_with("process_"))
            {
                let family = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum");
                assert!(
                    exported.contains(&format!("# TYPE {family} ")),
                    "{}: panel \"{title}\" uses {name}, which the gateway does not export",
                    file.display()
                );
            }
            let q = resolve_variables(&expr);
            let result = prom.query(&c, &q).await;
            // A series of NaN (a quantile over no data) draws nothing: at least one real value.
            assert!(
                result
                    .iter()
                    .any(|r| r["value"][1].as_str().is_some_and(|v| v != "NaN")),
                "{}: panel \"{title}\": no series with a value for {q}: {result:?}",
                file.display()
            );
            checked += 1;
        }
    }
    traffic.abort();
    assert!(checked >= 15, "only {checked} queries checked");
}
