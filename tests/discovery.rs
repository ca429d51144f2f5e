//! Service discovery end to end: a gateway whose upstream finds its servers through DNS (a
//! real DNS server on 127.0.0.1, speaking the wire protocol over UDP), Consul, Kubernetes and
//! Eureka (loopback servers replaying those APIs' documented JSON), with real upstream servers.
//! Servers appear and disappear while requests run, and a source that goes down keeps the
//! last known servers.

mod support;

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{block_on, metric, wait_until, Gateway, Reply, ReplyBody, Upstream};

const TOKEN: &str = "discovery-test-admin-token-0123456789";

/// Records by (lowercase name with its final dot, type).
type Zone = HashMap<(String, RecordType), Vec<Record>>;

/// A DNS server on 127.0.0.1:0 (UDP) answering from a zone the test edits.
struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    fn start() -> DnsServer {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        socket.set_nonblocking(true).expect("nonblocking");
        let addr = socket.local_addr().expect("addr");
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let z = zone.clone();
        let thread = std::thread::spawn(move || {
            block_on(async move {
                let socket = tokio::net::UdpSocket::from_std(socket).expect("socket");
                let mut buf = [0u8; 4096];
                loop {
                    let (n, peer) = tokio::select! {
                        r = socket.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                        _ = &mut rx => return,
                    };
                    let Ok(query) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let mut res = Message::response(query.metadata.id, OpCode::Query);
                    res.metadata.message_type = MessageType::Response;
                    res.metadata.authoritative = true;
                    res.metadata.recursion_desired = query.metadata.recursion_desired;
                    res.metadata.recursion_available = true;
                    for q in &query.queries {
                        let key = (q.name().to_ascii().to_lowercase(), q.query_type());
                        let answers = z.lock().unwrap().get(&key).cloned().unwrap_or_default();
                        res.add_answers(answers);
                    }
                    res.queries = query.queries.clone();
                    if let Ok(bytes) = res.to_vec() {
                        let _ = socket.send_to(&bytes, peer).await;
                    }
                }
            })
        });
        DnsServer {
            addr,
            zone,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn set(&self, name: &str, rtype: RecordType, records: Vec<Record>) {
        self.zone
            .lock()
            .unwrap()
            .insert((name.to_string(), rtype), records);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn a_record(name: &str, ip: Ipv4Addr, ttl: u32) -> Record {
    Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, RData::A(A(ip)))
}

fn srv_record(name: &str, priority: u16, weight: u16, port: u16, target: &str) -> Record {
    let srv = SRV::new(priority, weight, port, Name::from_ascii(target).unwrap());
    Record::from_rdata(Name::from_ascii(name).unwrap(), 1, RData::SRV(srv))
}

/// A gateway whose upstream `u` has `discovery` (JSON) and the given strategy; route
/// `/app/...` goes to it.
fn gateway(discovery: &str, strategy: &str) -> Gateway {
    Gateway::start(&format!(
        r#"{{"version":1,"server":{{"workers":2}},"admin":{{"token":"{TOKEN}","watch_config":false}},
        "upstreams":{{"u":{{"discovery":{discovery},"load_balancing":{{"strategy":"{strategy}"}},
            "retries":{{"attempts":2}}}}}},
        "routes":[{{"name":"app","path":"/app/{{*rest}}","upstream":"u"}}],
        "logging":{{"access_log":false,"level":"error"}}}}"#
    ))
}

/// A GET through the gateway: status and body (status 0 when the request itself failed).
fn get(client: &reqwest::blocking::Client, gw: &Gateway) -> (u16, String) {
    match client.get(gw.url("/app/x")).send() {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

fn blocking_client() -> reqwest::blocking::Client {
    support::install_crypto_provider();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn admin_upstream(gw: &Gateway) -> serde_json::Value {
    let body: serde_json::Value = blocking_client()
        .get(gw.url("/_kairos/upstreams"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    body["upstreams"][0].clone()
}

fn scrape(gw: &Gateway) -> String {
    blocking_client()
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// The bodies of `n` requests, counted.
fn spread(client: &reqwest::blocking::Client, gw: &Gateway, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, body) = get(client, gw);
        assert_eq!(status, 200, "{body}");
        *seen.entry(body).or_default() += 1;
    }
    seen
}

fn converge(what: &str, f: impl FnMut() -> bool) {
    assert!(wait_until(Duration::from_secs(20), f), "{what}");
}

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
        let s = spread(&c, &gw, 8);
        s.contains_key("light") && s.contains_key("heavy")
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

/// Requests sent in a loop from several threads until stopped: (sent, failed).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<(u16, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(gw: &Gateway, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
        let url = gw.url("/app/x");
        let threads = (0..threads)
            .map(|_| {
                let (stop, sent, failed, url) =
                    (stop.clone(), sent.clone(), failed.clone(), url.clone());
                std::thread::spawn(move || {
                    let c = blocking_client();
                    while !stop.load(Ordering::Relaxed) {
                        let r = c.get(&url).send();
                        sent.fetch_add(1, Ordering::Relaxed);
                        match r {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.bytes();
                            }
                            Ok(r) => {
                                let s = r.status().as_u16();
                                failed
                                    .lock()
                                    .unwrap()
                                    .push((s, r.text().unwrap_or_default()))
                            }
                            Err(e) => failed.lock().unwrap().push((0, e.to_string())),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            threads,
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits for `n` more requests to be sent.
    fn run_for(&self, n: u64) {
        let target = self.sent() + n;
        assert!(wait_until(Duration::from_secs(30), || self.sent() >= target));
    }

    fn finish(self) -> (u64, Vec<(u16, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), failed)
    }
}

/// A Consul agent's health endpoint with blocking queries, answering the documented shape
/// of `GET /v1/health/service/:service` (Node, Service, Checks per instance).
struct Consul {
    server: Upstream,
    state: Arc<Mutex<Vec<u16>>>,
    index: tokio::sync::watch::Sender<u64>,
}

impl Consul {
    fn start() -> Consul {
        let state: Arc<Mutex<Vec<u16>>> = Arc::default();
        let (index, rx) = tokio::sync::watch::channel(10u64);
        let st = state.clone();
        let server = Upstream::start(move |r| {
            let query: HashMap<String, String> =
                form_urlencoded::parse(r.target.split_once('?').map_or("", |x| x.1).as_bytes())
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
                let ports = st.lock().unwrap().clone();
                let entries: Vec<serde_json::Value> =
                    ports.iter().map(|p| consul_entry(*p)).collect();
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

    fn set(&self, ports: &[u16]) {
        *self.state.lock().unwrap() = ports.to_vec();
        self.index.send_modify(|i| *i += 1);
    }
}

/// One instance as Consul's health endpoint documents it.
fn consul_entry(port: u16) -> serde_json::Value {
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
            "ID": format!("orders-{port}"),
            "Service": "orders",
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
            "CheckID": format!("service:orders-{port}"),
            "Name": "Service 'orders' check",
            "Status": "passing",
            "Notes": "",
            "Output": "",
            "ServiceID": format!("orders-{port}"),
            "ServiceName": "orders",
            "ServiceTags": ["v2"],
            "Namespace": "default"
        }]
    })
}

fn named(body: &'static str) -> Upstream {
    Upstream::start(move |_| Reply::ok(body))
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
    converge("both servers are used", || spread(&c, &gw, 6).len() == 2);
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

/// The EndpointSlice of `ports` (ready unless listed in `terminating`), as the
/// `discovery.k8s.io/v1` API serves it.
fn slice(version: &str, addresses: &[(&str, bool)], port: u16) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = addresses
        .iter()
        .map(|(ip, terminating)| {
            serde_json::json!({
                "addresses": [ip],
                "conditions": {"ready": !terminating, "serving": true, "terminating": terminating},
                "nodeName": "node-1",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": format!("stock-{ip}")}
            })
        })
        .collect();
    serde_json::json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": "stock-abc12",
            "namespace": "shop",
            "resourceVersion": version,
            "labels": {"kubernetes.io/service-name": "stock", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "protocol": "TCP", "port": port}, {"name": "metrics", "protocol": "TCP", "port": 9}]
    })
}

#[test]
fn kubernetes_list_then_watch_with_bookmarks_and_relist_on_410() {
    let a = Upstream::start(|_| Reply::ok("a"));
    let port = a.addr.port();
    let b = Upstream::start_on(
        std::net::TcpListener::bind(("127.0.0.2", port)).expect("bind 127.0.0.2"),
        |_| Reply::ok("b"),
    );
    // The list answers version 100 first, version 200 after the watch expired.
    let listed = Arc::new(Mutex::new(("100", vec![("127.0.0.1", false)])));
    type Events = Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>;
    let events: Arc<Mutex<Events>> = Arc::default();
    let (l, ev) = (listed.clone(), events.clone());
    let api = Upstream::start(move |r| {
        if r.header("authorization") != Some("Bearer k8s-test-token") {
            return Reply::ok(r#"{"kind":"Status","code":401}"#).status(401);
        }
        if r.target.contains("watch=1") {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            *ev.lock().unwrap() = Some(tx);
            let mut reply = Reply::ok("").header("content-type", "application/json");
            reply.body = ReplyBody::Chunks(rx);
            return reply;
        }
        let (version, addrs) = l.lock().unwrap().clone();
        let list = serde_json::json!({
            "kind": "EndpointSliceList",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": version},
            "items": [slice(version, &addrs, port)]
        });
        Reply::ok(&list.to_string()).header("content-type", "application/json")
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "k8s-test-token\n").unwrap();
    let gw = gateway(
        &format!(
            r#"{{"type":"kubernetes","namespace":"shop","service_name":"stock","port_name":"http","api_server":"{}","token_file":"{}"}}"#,
            api.url(),
            dir.path().join("token").display()
        ),
        "round_robin",
    );
    let c = blocking_client();
    converge("the listed endpoint is used", || get(&c, &gw).1 == "a");
    converge("a watch is open", || events.lock().unwrap().is_some());
    let watch = api
        .requests()
        .into_iter()
        .find(|r| r.target.contains("watch=1"))
        .unwrap();
    assert!(
        watch.target.contains("resourceVersion=100"),
        "{}",
        watch.target
    );
    assert!(watch.target.contains("allowWatchBookmarks=true"));
    assert!(watch
        .target
        .contains("labelSelector=kubernetes.io%2Fservice-name%3Dstock"));
    assert!(watch
        .target
        .starts_with("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?"));

    let send = |event: serde_json::Value| {
        let tx = events.lock().unwrap().clone().unwrap();
        tx.send(format!("{event}\n").into_bytes()).unwrap();
    };
    send(
        serde_json::json!({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": {"resourceVersion": "105"}}}),
    );
    send(
        serde_json::json!({"type": "MODIFIED", "object": slice("106", &[("127.0.0.1", false), ("127.0.0.2", false)], port)}),
    );
    converge("the added endpoint is used", || {
        spread(&c, &gw, 6).len() == 2
    });
    // `a`'s pod is terminating: no new requests go to it.
    send(
        serde_json::json!({"type": "MODIFIED", "object": slice("107", &[("127.0.0.1", true), ("127.0.0.2", false)], port)}),
    );
    converge("the terminating endpoint is left out", || {
        spread(&c, &gw, 6).keys().all(|k| k == "b")
    });
    // The watch's version expired: 410 Gone, then a new list (version 200) and a new watch.
    *listed.lock().unwrap() = ("200", vec![("127.0.0.1", false)]);
    let old = events.lock().unwrap().take().unwrap();
    old.send(
        format!(
            "{}\n",
            serde_json::json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version: 100 (150)", "reason": "Expired", "code": 410}})
        )
        .into_bytes(),
    )
    .unwrap();
    converge("the relisted endpoints are used", || {
        spread(&c, &gw, 6).keys().all(|k| k == "a")
    });
    converge("the new watch resumes from the new list", || {
        api.requests()
            .iter()
            .any(|r| r.target.contains("watch=1") && r.target.contains("resourceVersion=200"))
    });
    let lists = api
        .requests()
        .iter()
        .filter(|r| !r.target.contains("watch=1"))
        .count();
    assert_eq!(lists, 2, "one list at start, one after 410 Gone");
    // Malformed JSON from the API server keeps the last known servers.
    converge("a watch is open again", || events.lock().unwrap().is_some());
    let tx = events.lock().unwrap().clone().unwrap();
    tx.send(b"{not json\n".to_vec()).unwrap();
    converge("the error shows in the admin API", || {
        admin_upstream(&gw)["discovery"]
            .as_str()
            .is_some_and(|s| s.contains("not the expected JSON"))
    });
    assert_eq!(get(&c, &gw), (200, "a".to_string()));
    drop(a);
    drop(b);
}

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
