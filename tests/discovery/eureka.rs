//! Eureka: the registry and its deltas.

use super::*;

/// One instance as Eureka's REST API documents it (JSON form of InstanceInfo).
fn eureka_instance(id: &str, port: u16, status: &str, action: &str) -> serde_json::Value {
    serde_json::json!({
        "instanceId": id,
        "hostName": "legacy-host",
        "app": "LEGACY",
        "ipAddr": "127.0.0.1",
        "status": status,
        "overriddenStatus": "UNKNOWN",
        "port": {"$": port, "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90, "registrationTimestamp": 1700000000000u64,
                      "lastRenewalTimestamp": 1700000000000u64, "evictionTimestamp": 0, "serviceUpTimestamp": 1700000000000u64},
        "metadata": {"@class": "java.util.Collections$EmptyMap"},
        "homePageUrl": format!("http://legacy-host:{port}/"),
        "statusPageUrl": format!("http://legacy-host:{port}/info"),
        "healthCheckUrl": format!("http://legacy-host:{port}/health"),
        "vipAddress": "legacy",
        "secureVipAddress": "legacy",
        "isCoordinatingDiscoveryServer": "false",
        "lastUpdatedTimestamp": "1700000000000",
        "lastDirtyTimestamp": "1700000000000",
        "actionType": action
    })
}

#[test]
fn eureka_registry_then_deltas_up_instances_only() {
    let a = Upstream::start(|_| Reply::ok("a"));
    let b = Upstream::start(|_| Reply::ok("b"));
    let (pa, pb) = (a.addr.port(), b.addr.port());
    // The registry's instances of LEGACY, and the delta it serves now.
    let registry = Arc::new(Mutex::new(vec![eureka_instance(
        "legacy-a", pa, "UP", "ADDED",
    )]));
    let delta: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let (reg, d) = (registry.clone(), delta.clone());
    let eureka = Upstream::start(move |r| {
        let json = if r.target == "/eureka/apps/LEGACY" {
            let list = reg.lock().unwrap().clone();
            // One instance is written as the object itself, not a list of one (XStream).
            let instance = match list.len() {
                1 => list[0].clone(),
                _ => serde_json::Value::Array(list),
            };
            serde_json::json!({"application": {"name": "LEGACY", "instance": instance}})
        } else if r.target == "/eureka/apps/delta" {
            let instances = d.lock().unwrap().clone();
            let apps = if instances.is_empty() {
                serde_json::json!([])
            } else {
                serde_json::json!([{"name": "LEGACY", "instance": instances},
                    {"name": "OTHER", "instance": [eureka_instance("other-1", 9, "UP", "ADDED")]}])
            };
            serde_json::json!({"applications": {"versions__delta": "2", "apps__hashcode": "UP_2_",
                "application": apps}})
        } else {
            return Reply::ok("").status(404);
        };
        Reply::ok(&json.to_string()).header("content-type", "application/json")
    });
    let gw = gateway(
        &format!(
            r#"{{"type":"eureka","endpoint":"{}/eureka","app":"LEGACY","refresh":"200ms"}}"#,
            eureka.url()
        ),
        "round_robin",
    );
    let c = blocking_client();
    converge("the registered instance is used", || get(&c, &gw).1 == "a");
    assert_eq!(
        eureka.requests()[0].header("accept"),
        Some("application/json")
    );
    // `b` registers UP, and an instance that is DOWN is left out.
    let added = vec![
        eureka_instance("legacy-b", pb, "UP", "ADDED"),
        eureka_instance("legacy-down", 9, "DOWN", "ADDED"),
    ];
    registry.lock().unwrap().extend(added.clone());
    *delta.lock().unwrap() = added;
    converge("the added instance is used", || {
        spread(&c, &gw, 6).len() == 2
    });
    assert!(eureka
        .requests()
        .iter()
        .any(|r| r.target == "/eureka/apps/delta"));
    // `a` is cancelled.
    registry.lock().unwrap().remove(0);
    *delta.lock().unwrap() = vec![eureka_instance("legacy-a", pa, "UP", "DELETED")];
    converge("the deleted instance is left out", || {
        spread(&c, &gw, 6).keys().all(|k| k == "b")
    });
    let up = admin_upstream(&gw);
    assert_eq!(up["source"], "eureka");
    assert_eq!(up["servers"].as_array().map(Vec::len), Some(1));
}

/// A Eureka server: `GET /eureka/apps/LEGACY` from the registry the test keeps, and
/// `GET /eureka/apps/delta` with the changes the test sets.
pub(crate) struct EurekaServer {
    pub(crate) server: Upstream,
    registry: Arc<Mutex<Vec<serde_json::Value>>>,
    delta: Arc<Mutex<Vec<serde_json::Value>>>,
    /// While set, every request is answered 503 (the registry is down).
    outage: Arc<AtomicBool>,
    /// The target of the first request answered after an outage.
    after_outage: Arc<Mutex<Option<String>>>,
}

impl EurekaServer {
    pub(crate) fn start() -> EurekaServer {
        let registry: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let delta: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let outage = Arc::new(AtomicBool::new(false));
        let after_outage: Arc<Mutex<Option<String>>> = Arc::default();
        let (reg, d) = (registry.clone(), delta.clone());
        let (down, after) = (outage.clone(), after_outage.clone());
        let was_down = AtomicBool::new(false);
        let server = Upstream::start(move |r| {
            if down.load(Ordering::SeqCst) {
                was_down.store(true, Ordering::SeqCst);
                return Reply::ok("").status(503);
            }
            if was_down.swap(false, Ordering::SeqCst) {
                *after.lock().unwrap() = Some(r.target.clone());
            }
            let json = if r.target == "/eureka/apps/LEGACY" {
                let list = reg.lock().unwrap().clone();
                if list.is_empty() {
                    return Reply::ok("").status(404);
                }
                serde_json::json!({"application": {"name": "LEGACY", "instance": list}})
            } else if r.target == "/eureka/apps/delta" {
                let instances = d.lock().unwrap().clone();
                serde_json::json!({"applications": {"versions__delta": "3", "apps__hashcode": "UP_3_",
                    "application": [{"name": "LEGACY", "instance": instances}]}})
            } else {
                return Reply::ok("").status(404);
            };
            Reply::ok(&json.to_string()).header("content-type", "application/json")
        });
        EurekaServer {
            server,
            registry,
            delta,
            outage,
            after_outage,
        }
    }

    /// Registers `instance` (its `actionType` ADDED), in the registry and the delta.
    pub(crate) fn register(&self, instance: serde_json::Value) {
        self.registry.lock().unwrap().push(instance.clone());
        *self.delta.lock().unwrap() = vec![instance];
    }

    /// Cancels the instance `id` (on port `port`): gone from the registry, DELETED in the
    /// delta.
    pub(crate) fn cancel(&self, id: &str, port: u16) {
        self.registry
            .lock()
            .unwrap()
            .retain(|i| i["instanceId"] != id);
        *self.delta.lock().unwrap() = vec![eureka_instance(id, port, "UP", "DELETED")];
    }
}

#[test]
fn eureka_instances_come_and_go_under_load_without_a_failed_request() {
    let (a, b, c) = (named("a"), named("b"), named("c"));
    let eureka = EurekaServer::start();
    eureka.register(eureka_instance("legacy-a", a.addr.port(), "UP", "ADDED"));
    eureka.register(eureka_instance("legacy-b", b.addr.port(), "UP", "ADDED"));
    let gw = gateway(
        &format!(
            r#"{{"type":"eureka","endpoint":"{}/eureka","app":"LEGACY","refresh":"200ms"}}"#,
            eureka.server.url()
        ),
        "round_robin",
    );
    let client = blocking_client();
    converge("the first answer is used", || get(&client, &gw).0 == 200);
    converge("both instances are used", || {
        spread(&client, &gw, 6).len() == 2
    });
    let load = Load::start(&gw, 4);
    load.run_for(200);
    eureka.register(eureka_instance("legacy-c", c.addr.port(), "UP", "ADDED"));
    converge("the new instance takes traffic", || c.count() > 0);
    load.run_for(200);
    // `a` goes OUT_OF_SERVICE (a MODIFIED delta), then is cancelled.
    *eureka.delta.lock().unwrap() = vec![eureka_instance(
        "legacy-a",
        a.addr.port(),
        "OUT_OF_SERVICE",
        "MODIFIED",
    )];
    super::kubernetes::quiet("the instance out of service gets no more requests", &a);
    eureka.cancel("legacy-a", a.addr.port());
    drop(a);
    load.run_for(300);
    // The Eureka server goes away: the last known instances keep serving.
    let EurekaServer { server, .. } = eureka;
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
    assert_eq!(up["servers"].as_array().map(Vec::len), Some(2));
    let errors = [("upstream", "u"), ("source", "eureka"), ("result", "error")];
    assert!(metric(&scrape(&gw), "kairos_discovery_updates_total", &errors).unwrap_or(0.0) >= 1.0);
}

/// An UP instance of LEGACY with `metadata` as Spring Cloud registers it.
fn weighted(id: &str, port: u16, weight: &str) -> serde_json::Value {
    let mut i = eureka_instance(id, port, "UP", "ADDED");
    i["metadata"] = serde_json::json!({"weight": weight, "management.port": "8081"});
    i
}

#[test]
fn eureka_weight_metadata_sets_the_weight_and_series_follow_the_instances() {
    let (light, heavy, plain) = (named("light"), named("heavy"), named("plain"));
    let eureka = EurekaServer::start();
    eureka.register(weighted("legacy-light", light.addr.port(), "1"));
    eureka.register(weighted("legacy-heavy", heavy.addr.port(), "3"));
    let gw = gateway(
        &format!(
            r#"{{"type":"eureka","endpoint":"{}/eureka","app":"LEGACY","refresh":"200ms"}}"#,
            eureka.server.url()
        ),
        "weighted_round_robin",
    );
    let c = blocking_client();
    converge("both instances are used", || {
        get(&c, &gw).0 == 200 && spread(&c, &gw, 8).len() == 2
    });
    // Smooth weighted round robin: exactly 1:3 over whole turns of the sequence.
    let s = spread(&c, &gw, 400);
    assert_eq!(s.get("light"), Some(&100), "{s:?}");
    assert_eq!(s.get("heavy"), Some(&300), "{s:?}");
    let up = admin_upstream(&gw);
    let mut weights: Vec<u64> = up["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["weight"].as_u64())
        .collect();
    weights.sort();
    assert_eq!(weights, [1, 3], "{up}");

    // Each discovered server has its ejection series from the start, at 0, and loses it
    // when it leaves. Metadata without a usable weight counts as 1.
    let series = |port: u16| {
        let server = format!("http://127.0.0.1:{port}");
        metric(
            &scrape(&gw),
            "kairos_upstream_ejections_total",
            &[("upstream", "u"), ("server", &server)],
        )
    };
    assert_eq!(series(light.addr.port()), Some(0.0));
    assert_eq!(series(heavy.addr.port()), Some(0.0));
    eureka.register(weighted("legacy-plain", plain.addr.port(), "heavy"));
    converge("the new instance gets its series", || {
        series(plain.addr.port()) == Some(0.0)
    });
    eureka.cancel("legacy-light", light.addr.port());
    converge("the cancelled instance loses its series", || {
        series(light.addr.port()).is_none()
    });
    let up = admin_upstream(&gw);
    let plain_url = format!("http://127.0.0.1:{}", plain.addr.port());
    let entry = up["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"] == plain_url.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["weight"], 1, "{up}");
}

/// A gateway following LEGACY on `eureka` at `path` (`/eureka` where it is served).
fn eureka_gateway(eureka: &EurekaServer, path: &str) -> Gateway {
    gateway(
        &format!(
            r#"{{"type":"eureka","endpoint":"{}{path}","app":"LEGACY","refresh":"200ms"}}"#,
            eureka.server.url()
        ),
        "round_robin",
    )
}

#[test]
fn eureka_after_an_outage_the_first_poll_fetches_the_application_whole() {
    let (a, b) = (named("a"), named("b"));
    let eureka = EurekaServer::start();
    eureka.register(eureka_instance("legacy-a", a.addr.port(), "UP", "ADDED"));
    eureka.register(eureka_instance("legacy-b", b.addr.port(), "UP", "ADDED"));
    *eureka.delta.lock().unwrap() = Vec::new();
    let gw = eureka_gateway(&eureka, "/eureka");
    let c = blocking_client();
    converge("both instances are used", || {
        get(&c, &gw).0 == 200 && spread(&c, &gw, 6).len() == 2
    });
    converge("deltas are polled", || {
        eureka
            .server
            .requests()
            .iter()
            .any(|r| r.target == "/eureka/apps/delta")
    });
    // The registry goes down; meanwhile `b` is cancelled, and by the time it is back the
    // delta no longer mentions it (its retention passed).
    eureka.outage.store(true, Ordering::SeqCst);
    converge("the outage shows in the admin API", || {
        admin_upstream(&gw)["discovery"]
            .as_str()
            .is_some_and(|s| s.contains("503"))
    });
    eureka
        .registry
        .lock()
        .unwrap()
        .retain(|i| i["instanceId"] != "legacy-b");
    eureka.outage.store(false, Ordering::SeqCst);
    converge("the registry answers again", || {
        eureka.after_outage.lock().unwrap().is_some()
    });
    assert_eq!(
        eureka.after_outage.lock().unwrap().as_deref(),
        Some("/eureka/apps/LEGACY"),
        "the first poll after the outage is a full fetch"
    );
    converge("the instance cancelled during the outage is gone", || {
        spread(&c, &gw, 4).keys().all(|k| k == "a")
    });
    drop(b);
}

#[test]
fn eureka_a_404_is_no_instance_only_from_a_registry_that_answers() {
    let a = named("a");
    let eureka = EurekaServer::start();
    // A wrong endpoint path: everything under it is 404. That is an error, not an empty
    // application.
    let wrong = eureka_gateway(&eureka, "/wrong");
    converge("the 404 shows as an error", || {
        admin_upstream(&wrong)["discovery"]
            .as_str()
            .is_some_and(|s| s.contains("/wrong/apps/LEGACY answered 404"))
    });
    // The right endpoint with no instance registered: Eureka's 404 for the application,
    // while its delta answers: no instance (503), status ok.
    let right = eureka_gateway(&eureka, "/eureka");
    converge("the empty application is ok", || {
        admin_upstream(&right)["discovery"] == "ok"
    });
    let (status, body) = get(&blocking_client(), &right);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no_healthy_upstream"), "{body}");
    eureka.register(eureka_instance("legacy-a", a.addr.port(), "UP", "ADDED"));
    converge("the registered instance is used", || {
        get(&blocking_client(), &right).1 == "a"
    });
}

#[test]
fn eureka_credentials_in_the_endpoint_are_sent_and_never_shown() {
    let a = named("a");
    let eureka = EurekaServer::start();
    eureka.register(eureka_instance("legacy-a", a.addr.port(), "UP", "ADDED"));
    const PASSWORD: &str = "pa55-w0rd-secret";
    // As Spring Cloud users write a secured Eureka: the credentials in the URL.
    let endpoint = format!(
        "http://eureka-user:{PASSWORD}@{}/eureka",
        eureka.server.addr
    );
    let config = serde_json::json!({
        "version": 1,
        "server": {"workers": 2},
        "admin": {"token": TOKEN, "watch_config": false},
        "upstreams": {"u": {"discovery": {
            "type": "eureka", "endpoint": endpoint, "app": "LEGACY", "refresh": "200ms"
        }}},
        "routes": [{"name": "app", "path": "/app/{*rest}", "upstream": "u"}],
        "logging": {"access_log": false, "level": "debug"}
    });
    let gw = support::GatewayProcess::start(&config.to_string());
    let c = blocking_client();
    converge("the registered instance is used", || get(&c, &gw).1 == "a");
    // Sent as basic auth.
    assert_eq!(
        eureka.server.requests()[0].header("authorization"),
        Some("Basic ZXVyZWthLXVzZXI6cGE1NS13MHJkLXNlY3JldA==")
    );
    // The registry fails: the error names the URL, without the password.
    eureka.outage.store(true, Ordering::SeqCst);
    converge("the error shows in the admin API", || {
        admin_upstream(&gw)["discovery"]
            .as_str()
            .is_some_and(|s| s.contains("answered 503"))
    });
    let status = admin_upstream(&gw)["discovery"].to_string();
    assert!(
        status.contains(&format!("http://{}/eureka/apps/", eureka.server.addr)),
        "{status}"
    );
    // And the connection refused (a reqwest error, which carries its own copy of the URL).
    let EurekaServer { server, .. } = eureka;
    drop(server);
    converge("the request error shows in the admin API", || {
        admin_upstream(&gw)["discovery"]
            .as_str()
            .is_some_and(|s| s.contains("request to"))
    });
    let admin = blocking_client()
        .get(gw.url("/_kairos/upstreams"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!admin.contains(PASSWORD), "{admin}");
    let shown = blocking_client()
        .get(gw.url("/_kairos/config"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(shown.contains("eureka"), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kairos-rs"))
        .args(["upstreams", "list", "--gateway", &gw.url("")])
        .env("KAIROS_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("discovery=request to"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    let logs = gw.logs().join("\n");
    assert!(logs.contains("service discovery failed"), "{logs}");
    assert!(!logs.contains(PASSWORD), "{logs}");
    drop(a);
}
