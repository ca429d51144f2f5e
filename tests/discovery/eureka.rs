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
