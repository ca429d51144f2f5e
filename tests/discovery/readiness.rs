//! Readiness waits for discovery: while a discovered upstream has no servers and its source
//! has not answered its first time, `/_kairos/ready` answers 503 with the `discovery` check;
//! the first answer, or the first failure, ends the wait.

use super::*;

/// Status and JSON of `/_kairos/ready`.
fn ready(gw: &impl Gw) -> (u16, serde_json::Value) {
    let res = blocking_client()
        .get(gw.url("/_kairos/ready"))
        .send()
        .expect("ready");
    let status = res.status().as_u16();
    (status, res.json().unwrap_or_default())
}

#[test]
fn not_ready_until_the_source_has_answered_its_first_time() {
    let a = named("a");
    let port = a.addr.port();
    // A Consul agent that holds its first answer until the test lets it go.
    let (release, released) = tokio::sync::watch::channel(false);
    let consul = Upstream::start(move |_| {
        let mut released = released.clone();
        Reply::later(async move {
            let _ = released.wait_for(|r| *r).await;
            Reply::ok(&serde_json::json!([{
                "Node": {"Node": "n1", "Address": "127.0.0.1", "Datacenter": "dc1"},
                "Service": {"ID": "orders-1", "Service": "orders", "Address": "127.0.0.1", "Port": port,
                            "Weights": {"Passing": 1, "Warning": 1}},
                "Checks": []
            }]).to_string())
            .header("content-type", "application/json")
            .header("x-consul-index", "7")
        })
    });
    let gw = gateway(
        &format!(
            r#"{{"type":"consul","endpoint":"{}","service_name":"orders","wait":"5s"}}"#,
            consul.url()
        ),
        "round_robin",
    );
    converge("the first query is sent", || consul.count() > 0);
    let (status, v) = ready(&gw);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["status"], "not_ready");
    assert_eq!(v["reasons"][0]["check"], "discovery", "{v}");
    assert!(
        !v.to_string().contains(&consul.url()),
        "no address in the answer: {v}"
    );
    assert_eq!(admin_upstream(&gw)["discovery"], "pending");

    release.send_replace(true);
    converge("ready after the first answer", || ready(&gw).0 == 200);
    assert_eq!(get(&blocking_client(), &gw), (200, "a".to_string()));
}

#[test]
fn a_source_that_fails_its_first_time_ends_the_wait() {
    // Nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let gw = gateway(
        &format!(
            r#"{{"type":"eureka","endpoint":"http://127.0.0.1:{port}/eureka","app":"LEGACY"}}"#
        ),
        "round_robin",
    );
    converge("ready once the first attempt failed", || {
        ready(&gw).0 == 200
    });
    assert!(admin_upstream(&gw)["discovery"]
        .as_str()
        .is_some_and(|s| s.contains("failed")));
    assert_eq!(get(&blocking_client(), &gw).0, 503);
}
