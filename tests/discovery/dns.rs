//! DNS: A records with a port, SRV records, the DNS server going down.

use super::*;

#[test]
fn dns_a_records_follow_the_zone_as_ttls_expire() {
    let one = Upstream::start(|_| Reply::ok("one"));
    let port = one.addr.port();
    // The same port on another loopback address: A records carry no port.
    let two = Upstream::start_on(
        std::net::TcpListener::bind(("127.0.0.2", port)).expect("bind 127.0.0.2"),
        |_| Reply::ok("two"),
    );
    let dns = DnsServer::start();
    dns.set(
        "svc.test.",
        RecordType::A,
        vec![a_record("svc.test.", Ipv4Addr::new(127, 0, 0, 1), 1)],
    );
    let gw = gateway(
        &format!(
            r#"{{"type":"dns","name":"svc.test.","record":"A","port":{port},"resolvers":["{}"],"refresh":"30s"}}"#,
            dns.addr
        ),
        "round_robin",
    );
    let c = blocking_client();
    converge("the first answer is used", || get(&c, &gw).1 == "one");
    let up = admin_upstream(&gw);
    assert_eq!(up["source"], "dns");
    assert_eq!(up["discovery"], "ok");
    assert_eq!(up["servers"][0]["source"], "dns");
    assert_eq!(up["servers"][0]["url"], format!("http://127.0.0.1:{port}"));
    // The CLI shows the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kairos-rs"))
        .args(["upstreams", "list", "--gateway", &gw.url("")])
        .env("KAIROS_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("u  source=dns  discovery=ok  servers=1"),
        "{text}"
    );
    assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");

    // A second address: picked up once the 1 s TTL runs out.
    dns.set(
        "svc.test.",
        RecordType::A,
        vec![
            a_record("svc.test.", Ipv4Addr::new(127, 0, 0, 1), 1),
            a_record("svc.test.", Ipv4Addr::new(127, 0, 0, 2), 1),
        ],
    );
    converge("the new address is added", || {
        spread(&c, &gw, 10).contains_key("two")
    });
    let m = scrape(&gw);
    assert_eq!(
        metric(&m, "kairos_discovery_servers", &[("upstream", "u")]),
        Some(2.0)
    );
    let changed = [("upstream", "u"), ("source", "dns"), ("result", "changed")];
    assert!(metric(&m, "kairos_discovery_updates_total", &changed).unwrap_or(0.0) >= 2.0);

    // The first address goes away.
    dns.set(
        "svc.test.",
        RecordType::A,
        vec![a_record("svc.test.", Ipv4Addr::new(127, 0, 0, 2), 1)],
    );
    converge("the old address is removed", || {
        spread(&c, &gw, 10).keys().all(|k| k == "two")
    });

    // No record at all: a successful empty answer empties the upstream.
    dns.set("svc.test.", RecordType::A, vec![]);
    converge("an empty answer empties the upstream", || {
        get(&c, &gw).0 == 503
    });
    assert_eq!(admin_upstream(&gw)["servers"], serde_json::json!([]));
    drop(two);
}

#[test]
fn dns_srv_records_give_ports_and_weights_and_lowest_priority_wins() {
    let light = Upstream::start(|_| Reply::ok("light"));
    let heavy = Upstream::start(|_| Reply::ok("heavy"));
    let backup = Upstream::start(|_| Reply::ok("backup"));
    let dns = DnsServer::start();
    let name = "_http._tcp.svc.test.";
    dns.set(
        name,
        RecordType::SRV,
        vec![
            srv_record(name, 10, 1, light.addr.port(), "host.test."),
            srv_record(name, 10, 3, heavy.addr.port(), "host.test."),
            srv_record(name, 20, 5, backup.addr.port(), "host.test."),
        ],
    );
    dns.set(
        "host.test.",
        RecordType::A,
        vec![a_record("host.test.", Ipv4Addr::new(127, 0, 0, 1), 1)],
    );
    let gw = gateway(
        &format!(
            r#"{{"type":"dns","name":"{name}","record":"SRV","resolvers":["{}"],"refresh":"1s"}}"#,
            dns.addr
        ),
        "weighted_round_robin",
    );
    let c = blocking_client();
    converge("both servers of the lowest priority are used", || {
        try_spread(&c, &gw, 8).is_some_and(|s| s.contains_key("light") && s.contains_key("heavy"))
    });
    // Smooth weighted round robin: exactly 1:3 over whole turns of the sequence.
    let s = spread(&c, &gw, 400);
    assert_eq!(s.get("light"), Some(&100), "{s:?}");
    assert_eq!(s.get("heavy"), Some(&300), "{s:?}");
    assert_eq!(
        s.get("backup"),
        None,
        "a higher priority is not used: {s:?}"
    );
}

#[test]
fn dns_server_going_down_keeps_the_last_known_servers() {
    let one = Upstream::start(|_| Reply::ok("one"));
    let dns = DnsServer::start();
    dns.set(
        "svc.test.",
        RecordType::A,
        vec![a_record("svc.test.", Ipv4Addr::new(127, 0, 0, 1), 1)],
    );
    let gw = gateway(
        &format!(
            r#"{{"type":"dns","name":"svc.test.","port":{},"resolvers":["{}"],"refresh":"1s"}}"#,
            one.addr.port(),
            dns.addr
        ),
        "round_robin",
    );
    let c = blocking_client();
    converge("the first answer is used", || get(&c, &gw).1 == "one");
    drop(dns);
    converge("the failure shows in the admin API", || {
        admin_upstream(&gw)["discovery"]
            .as_str()
            .is_some_and(|s| s != "ok")
    });
    // Past the TTL and several failed lookups: the server is still used.
    for _ in 0..20 {
        assert_eq!(get(&c, &gw), (200, "one".to_string()));
    }
    let errors = [("upstream", "u"), ("source", "dns"), ("result", "error")];
    assert!(metric(&scrape(&gw), "kairos_discovery_updates_total", &errors).unwrap_or(0.0) >= 1.0);
}

#[test]
fn dns_srv_falls_back_to_the_next_priority_while_the_lowest_one_is_down() {
    let primary = Upstream::start(|_| Reply::ok("primary"));
    let addr = primary.addr;
    let backup = Upstream::start(|_| Reply::ok("backup"));
    let last = Upstream::start(|_| Reply::ok("last"));
    let dns = DnsServer::start();
    let name = "_http._tcp.svc.test.";
    dns.set(
        name,
        RecordType::SRV,
        vec![
            srv_record(name, 10, 1, addr.port(), "host.test."),
            srv_record(name, 20, 1, backup.addr.port(), "host.test."),
            srv_record(name, 30, 1, last.addr.port(), "host.test."),
        ],
    );
    dns.set(
        "host.test.",
        RecordType::A,
        vec![a_record("host.test.", Ipv4Addr::new(127, 0, 0, 1), 1)],
    );
    let gw = Gateway::start(&format!(
        r#"{{"version":1,"server":{{"workers":2}},"admin":{{"token":"{TOKEN}","watch_config":false}},
        "upstreams":{{"u":{{"discovery":{{"type":"dns","name":"{name}","record":"SRV","resolvers":["{}"],"refresh":"1s"}},
            "health_check":{{"path":"/health","interval":"250ms","timeout":"250ms","healthy_threshold":1,"unhealthy_threshold":2}},
            "circuit_breaker":{{"recovery_timeout":"1s"}},
            "retries":{{"attempts":3}}}}}},
        "routes":[{{"name":"app","path":"/app/{{*rest}}","upstream":"u"}}],
        "logging":{{"access_log":false,"level":"error"}}}}"#,
        dns.addr
    ));
    let c = blocking_client();
    converge("the lowest priority takes all traffic", || {
        try_spread(&c, &gw, 6).is_some_and(|s| s.keys().all(|k| k == "primary"))
    });
    let up = admin_upstream(&gw);
    assert_eq!(up["servers"].as_array().map(Vec::len), Some(3), "{up}");
    assert_eq!(up["servers"][0]["priority"], 10, "{up}");

    // The primary stops: once its health check fails, the next priority takes over (and
    // not the one after it); a request that races the check is retried there too.
    drop(primary);
    converge("the next priority takes all traffic", || {
        try_spread(&c, &gw, 6).is_some_and(|s| s.keys().all(|k| k == "backup"))
    });
    let s = spread(&c, &gw, 30);
    assert_eq!(s.get("backup"), Some(&30), "{s:?}");

    // The primary comes back on its address: traffic returns to it.
    let primary = Upstream::start_on(
        std::net::TcpListener::bind(addr).expect("rebind the primary"),
        |_| Reply::ok("primary"),
    );
    converge("the lowest priority takes traffic again", || {
        try_spread(&c, &gw, 6).is_some_and(|s| s.keys().all(|k| k == "primary"))
    });
    drop(primary);
}

#[test]
fn dns_srv_target_without_an_address_is_skipped() {
    let up = Upstream::start(|_| Reply::ok("up"));
    let dns = DnsServer::start();
    let name = "_http._tcp.svc.test.";
    // Two targets; `gone.test.` has no address (its pod went away before its SRV record).
    dns.set(
        name,
        RecordType::SRV,
        vec![
            srv_record(name, 10, 1, up.addr.port(), "host.test."),
            srv_record(name, 10, 1, 9, "gone.test."),
        ],
    );
    dns.set(
        "host.test.",
        RecordType::A,
        vec![a_record("host.test.", Ipv4Addr::new(127, 0, 0, 1), 1)],
    );
    let gw = gateway(
        &format!(
            r#"{{"type":"dns","name":"{name}","record":"SRV","resolvers":["{}"],"refresh":"1s"}}"#,
            dns.addr
        ),
        "round_robin",
    );
    let c = blocking_client();
    converge("the target with an address is used", || {
        get(&c, &gw).1 == "up"
    });
    let up_state = admin_upstream(&gw);
    assert_eq!(up_state["discovery"], "ok", "{up_state}");
    assert_eq!(
        up_state["servers"].as_array().map(Vec::len),
        Some(1),
        "{up_state}"
    );
    // Every target without an address: an error, the last known server stays.
    dns.set("host.test.", RecordType::A, Vec::new());
    converge("the error shows in the admin API", || {
        admin_upstream(&gw)["discovery"]
            .as_str()
            .is_some_and(|s| s.contains("no SRV target has an address"))
    });
    assert_eq!(get(&c, &gw), (200, "up".to_string()));
}
