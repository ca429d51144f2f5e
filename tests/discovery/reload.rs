//! Reloads of a discovered upstream, against the real binary (a reload needs a config file)
//! under a steady load: a reload that keeps the `discovery` settings keeps the running source
//! and its servers; one that changes them switches to the new source's servers and stops the
//! old source; listed servers and discovery replace each other. No request fails throughout.

use super::consul::Consul;
use super::*;
use support::GatewayProcess;

/// The whole config with upstream `u` as given (JSON object text); `gen` adds a route, so
/// each version differs from the last. Written as GatewayProcess writes its file.
fn config(upstream: &str, gen: u32) -> String {
    let upstream: serde_json::Value = serde_json::from_str(upstream).expect("upstream json");
    serde_json::json!({
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0, "workers": 2},
        "admin": {"token": TOKEN, "watch_config": false},
        "upstreams": {"u": upstream},
        "routes": [
            {"name": "app", "path": "/app/{*rest}", "upstream": "u"},
            {"name": format!("gen{gen}"), "path": format!("/gen/{gen}"), "upstream": "u"}
        ],
        "logging": {"format": "json", "level": "info", "access_log": false}
    })
    .to_string()
}

/// Replaces the config through the admin API; it must take effect.
fn put(gw: &GatewayProcess, text: String) {
    let res = blocking_client()
        .put(gw.url("/_kairos/config"))
        .bearer_auth(TOKEN)
        .body(text)
        .send()
        .expect("PUT /_kairos/config");
    let status = res.status().as_u16();
    let body = res.text().unwrap_or_default();
    assert_eq!(status, 200, "{body}");
}

/// The queries the Consul agent got for `service`: (all, without a blocking index).
fn queries(consul: &Consul, service: &str) -> (usize, usize) {
    let prefix = format!("/v1/health/service/{service}?");
    let of: Vec<_> = consul
        .server
        .requests()
        .into_iter()
        .filter(|r| r.target.starts_with(&prefix))
        .collect();
    let plain = of.iter().filter(|r| !r.target.contains("index=")).count();
    (of.len(), plain)
}

#[test]
fn reloads_keep_an_unchanged_source_and_switch_a_changed_one_without_a_failed_request() {
    let consul = Consul::start();
    let (a, b, c, d, e) = (named("a"), named("b"), named("c"), named("d"), named("e"));
    consul.set_service("orders", &[a.addr.port(), b.addr.port()]);
    consul.set_service("orders-v2", &[c.addr.port(), d.addr.port()]);
    let discovered = |service: &str| {
        format!(
            r#"{{"discovery":{{"type":"consul","endpoint":"{}","service_name":"{service}","wait":"5s"}},"retries":{{"attempts":2}}}}"#,
            consul.server.url()
        )
    };
    let gw = GatewayProcess::start(&config(&discovered("orders"), 0));
    let client = blocking_client();
    converge("the first answer is used", || get(&client, &gw).0 == 200);
    converge("both servers are used", || {
        spread(&client, &gw, 6).len() == 2
    });
    let load = Load::start(&gw, 4);
    load.run_for(100);

    // (a) The same discovery settings (another route): the source keeps running (it is
    // not asked afresh) and its servers serve on without a gap.
    assert_eq!(
        queries(&consul, "orders").1,
        1,
        "one query without an index"
    );
    put(&gw, config(&discovered("orders"), 1));
    load.run_for(300);
    assert_eq!(
        queries(&consul, "orders").1,
        1,
        "the reload did not start the source over"
    );
    // Under the load, round-robin turns are shared with the load's requests: six of ours
    // can all land on one server, so ask until both have answered (as before the reload).
    converge("both servers still serve", || {
        spread(&client, &gw, 6).len() == 2
    });
    let up = admin_upstream(&gw);
    assert_eq!(up["discovery"], "ok");
    assert_eq!(up["servers"].as_array().map(Vec::len), Some(2));

    // (b) Another service: its servers take over, the old ones get no more requests.
    put(&gw, config(&discovered("orders-v2"), 2));
    converge("the new service's servers take all traffic", || {
        let s = spread(&client, &gw, 8);
        s.len() == 2 && s.contains_key("c") && s.contains_key("d")
    });
    load.run_for(200);
    let (from_a, from_b) = (a.count(), b.count());
    // The old source is stopped once no request holds the old config: a change of
    // `orders` (which also wakes every blocking query) is no longer asked for.
    let mut last = queries(&consul, "orders").0;
    converge("the old source stops asking", || {
        std::thread::sleep(Duration::from_millis(300));
        let now = queries(&consul, "orders").0;
        std::mem::replace(&mut last, now) == now
    });
    let v2_before = queries(&consul, "orders-v2").0;
    consul.set_service("orders", &[a.addr.port()]);
    converge("the new source follows the change of index", || {
        queries(&consul, "orders-v2").0 > v2_before
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(queries(&consul, "orders").0, last, "the old source stopped");
    load.run_for(200);
    assert_eq!((a.count(), b.count()), (from_a, from_b));

    // (c) Listed servers instead, then discovery again.
    put(
        &gw,
        config(&format!(r#"{{"servers":[{{"url":"{}"}}]}}"#, e.url()), 3),
    );
    converge("the listed server takes all traffic", || {
        spread(&client, &gw, 6).keys().all(|k| k == "e")
    });
    let up = admin_upstream(&gw);
    assert_eq!(up["source"], "static");
    assert_eq!(up["discovery"], serde_json::Value::Null);
    load.run_for(200);
    put(&gw, config(&discovered("orders-v2"), 4));
    converge("the discovered servers are back", || {
        let s = spread(&client, &gw, 8);
        s.len() == 2 && s.contains_key("c") && s.contains_key("d")
    });
    load.run_for(200);
    let (sent, failed) = load.finish();
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}
