//! Consul: blocking queries on the health endpoint.

use super::*;

/// A Consul agent's health endpoint with blocking queries, answering the documented shape
/// of `GET /v1/health/service/:service` (Node, Service, Checks per instance).
pub(crate) struct Consul {
    pub(crate) server: Upstream,
    /// Ports of each service's instances, by service name.
    state: Arc<Mutex<HashMap<String, Vec<u16>>>>,
    index: tokio::sync::watch::Sender<u64>,
}

impl Consul {
    pub(crate) fn start() -> Consul {
        let state: Arc<Mutex<HashMap<String, Vec<u16>>>> = Arc::default();
        let (index, rx) = tokio::sync::watch::channel(10u64);
        let st = state.clone();
        let server = Upstream::start(move |r| {
            let (path, query) = r.target.split_once('?').unwrap_or((&r.target, ""));
            let service = path
                .strip_prefix("/v1/health/service/")
                .unwrap_or_default()
                .to_string();
            let query: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let since: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
            let (st, mut rx) = (st.clone(), rx.clone());
            Reply::later(async move {
                if since > 0 {
                    // Hold the query until the index moves past `since` or the wait ends.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|i| *i > since))
                            .await;
                }
                let index = *rx.borrow();
                let ports = st.lock().unwrap().get(&service).cloned();
                // Consul answers an unknown service with an empty list.
                let ports = ports.unwrap_or_default();
                let entries: Vec<serde_json::Value> =
                    ports.iter().map(|p| consul_entry(&service, *p)).collect();
                Reply::ok(&serde_json::to_string(&entries).unwrap())
                    .header("content-type", "application/json")
                    .header("x-consul-index", &index.to_string())
                    .header("x-consul-knownleader", "true")
                    .header("x-consul-lastcontact", "0")
            })
        });
        Consul {
            server,
            state,
            index,
        }
    }

    /// The instances of `orders`.
    pub(crate) fn set(&self, ports: &[u16]) {
        self.set_service("orders", ports);
    }

    pub(crate) fn set_service(&self, service: &str, ports: &[u16]) {
        self.state
            .lock()
            .unwrap()
            .insert(service.to_string(), ports.to_vec());
        self.index.send_modify(|i| *i += 1);
    }
}

/// One instance as Consul's health endpoint documents it.
fn consul_entry(service: &str, port: u16) -> serde_json::Value {
    serde_json::json!({
        "Node": {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "Node": "foobar",
            "Address": "127.0.0.1",
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
            "Meta": {"instance_type": "t2.medium"}
        },
        "Service": {
            "ID": format!("{service}-{port}"),
            "Service": service,
            "Tags": ["v2"],
            "Address": "",
            "TaggedAddresses": {
                "lan": {"address": "127.0.0.1", "port": port},
                "wan": {"address": "127.0.0.1", "port": port}
            },
            "Meta": null,
            "Port": port,
            "Weights": {"Passing": 10, "Warning": 1},
            "Namespace": "default"
        },
        "Checks": [{
            "Node": "foobar",
            "CheckID": format!("service:{service}-{port}"),
            "Name": format!("Service '{service}' check"),
            "Status": "passing",
            "Notes": "",
            "Output": "",
            "ServiceID": format!("{service}-{port}"),
            "ServiceName": service,
            "ServiceTags": ["v2"],
            "Namespace": "default"
        }]
    })
}

#[test]
fn consul_servers_come_and_go_under_load_without_a_failed_request() {
    std::env::set_var("DISCOVERY_TEST_CONSUL_TOKEN", "s3cr3t-acl-token");
    let consul = Consul::start();
    let a = named("a");
    let b = named("b");
    consul.set(&[a.addr.port(), b.addr.port()]);
    let gw = gateway(
        &format!(
            r#"{{"type":"consul","endpoint":"{}","service_name":"orders","tag":"v2","datacenter":"dc1","token":"${{DISCOVERY_TEST_CONSUL_TOKEN}}","wait":"5s"}}"#,
            consul.server.url()
        ),
        "round_robin",
    );
    let c = blocking_client();
    converge("both servers are used", || {
        try_spread(&c, &gw, 6).is_some_and(|s| s.len() == 2)
    });
    let first = consul.server.requests()[0].clone();
    assert_eq!(first.header("x-consul-token"), Some("s3cr3t-acl-token"));
    assert!(first.target.starts_with("/v1/health/service/orders?"));
    for p in ["passing=true", "tag=v2", "dc=dc1"] {
        assert!(first.target.contains(p), "{}", first.target);
    }
    assert!(!first.target.contains("index="));

    let load = Load::start(&gw, 4);
    load.run_for(200);
    // A third server appears.
    let c3 = named("c");
    consul.set(&[a.addr.port(), b.addr.port(), c3.addr.port()]);
    converge("the new server takes traffic", || c3.count() > 0);
    load.run_for(200);
    // `a` is deregistered; it keeps running until it gets no more requests, then stops.
    consul.set(&[b.addr.port(), c3.addr.port()]);
    let mut last = a.count();
    converge("the removed server gets no more requests", || {
        std::thread::sleep(Duration::from_millis(300));
        let now = a.count();
        std::mem::replace(&mut last, now) == now
    });
    drop(a);
    load.run_for(300);
    // The index moved, so later queries blocked on it.
    assert!(consul
        .server
        .requests()
        .iter()
        .any(|r| r.target.contains("index=") && r.target.contains("wait=5000ms")));

    // The agent goes away: the last known servers keep serving.
    let Consul { server, .. } = consul;
    drop(server);
    converge("the failure shows in the admin API", || {
        admin_upstream(&gw)["discovery"]
            .as_str()
            .is_some_and(|s| s != "ok")
    });
    load.run_for(300);
    let (sent, failed) = load.finish();
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let up = admin_upstream(&gw);
    assert_eq!(up["source"], "consul");
    assert_eq!(up["servers"].as_array().map(Vec::len), Some(2));
}

#[test]
fn consul_an_answer_over_the_server_cap_keeps_the_last_servers() {
    let consul = Consul::start();
    let (a, b) = (named("a"), named("b"));
    consul.set(&[a.addr.port(), b.addr.port()]);
    let gw = gateway(
        &format!(
            r#"{{"type":"consul","endpoint":"{}","service_name":"orders","wait":"5s"}}"#,
            consul.server.url()
        ),
        "weighted_round_robin",
    );
    let c = blocking_client();
    converge("both servers are used", || {
        try_spread(&c, &gw, 6).is_some_and(|s| s.len() == 2)
    });
    // 5,001 instances: one more than an upstream takes.
    let many: Vec<u16> = (20_000..25_001).collect();
    consul.set(&many);
    converge("the error shows in the admin API", || {
        admin_upstream(&gw)["discovery"]
            .as_str()
            .is_some_and(|s| s.contains("5001 servers, more than the 5000"))
    });
    let up = admin_upstream(&gw);
    assert_eq!(up["servers"].as_array().map(Vec::len), Some(2), "{up}");
    assert_eq!(spread(&c, &gw, 6).len(), 2);
    // Back under the cap: applied.
    consul.set(&[b.addr.port()]);
    converge("the smaller answer is applied", || {
        admin_upstream(&gw)["discovery"] == "ok" && spread(&c, &gw, 4).keys().all(|k| k == "b")
    });
}

#[test]
fn consul_without_an_index_header_polls_at_most_once_a_second() {
    let a = named("a");
    let port = a.addr.port();
    // A proxy in front of Consul that strips X-Consul-Index and answers at once.
    let consul = Upstream::start(move |_| {
        let entries = serde_json::json!([consul_entry("orders", port)]);
        Reply::ok(&entries.to_string()).header("content-type", "application/json")
    });
    let gw = gateway(
        &format!(
            r#"{{"type":"consul","endpoint":"{}","service_name":"orders","wait":"5s"}}"#,
            consul.url()
        ),
        "round_robin",
    );
    let c = blocking_client();
    converge("the server is used", || get(&c, &gw).1 == "a");
    let before = consul.count();
    std::thread::sleep(Duration::from_millis(2500));
    let queries = consul.count() - before;
    // About two; a tight loop would have sent hundreds.
    assert!(queries <= 4, "{queries} queries in 2.5 s");
    assert!(queries >= 1, "still polling");
    assert_eq!(admin_upstream(&gw)["discovery"], "ok");
}

#[test]
fn consul_a_big_change_is_logged_as_counts_and_the_first_servers() {
    let consul = Consul::start();
    let a = named("a");
    consul.set(&[a.addr.port()]);
    let config = serde_json::json!({
        "version": 1,
        "server": {"workers": 1},
        "admin": {"token": TOKEN, "watch_config": false},
        "upstreams": {"u": {"discovery": {
            "type": "consul", "endpoint": consul.server.url(), "service_name": "orders", "wait": "5s"
        }}},
        "routes": [{"name": "app", "path": "/app/{*rest}", "upstream": "u"}],
        "logging": {"access_log": false, "level": "info"}
    });
    let gw = support::GatewayProcess::start(&config.to_string());
    let c = blocking_client();
    converge("the server is used", || get(&c, &gw).1 == "a");
    // A small change: every URL listed.
    let line = |needle: &str| {
        gw.logs()
            .into_iter()
            .filter(|l| l.contains("discovered servers changed"))
            .find(|l| l.contains(needle))
    };
    let first = line(&a.addr.port().to_string()).expect("the first change is logged");
    assert!(!first.contains("added_count"), "{first}");
    // 300 more instances (a rollout): counts, and only the first ten URLs.
    let mut ports: Vec<u16> = (30_000..30_300).collect();
    ports.push(a.addr.port());
    consul.set(&ports);
    converge("the big change is logged", || line("added_count").is_some());
    let big = line("added_count").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&big).expect("a JSON log line");
    let fields = if v["fields"].is_object() {
        &v["fields"]
    } else {
        &v
    };
    assert_eq!(fields["added_count"], 300, "{big}");
    assert_eq!(fields["removed_count"], 0, "{big}");
    assert_eq!(fields["servers"], 301, "{big}");
    assert_eq!(big.matches("http://127.0.0.1:").count(), 10, "{big}");
}
