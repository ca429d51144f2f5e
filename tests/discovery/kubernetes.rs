//! Kubernetes: EndpointSlices listed and watched.

use super::*;

/// The EndpointSlice of `ports` (ready unless listed in `terminating`), as the
/// `discovery.k8s.io/v1` API serves it.
fn slice(version: &str, addresses: &[(&str, bool)], port: u16) -> serde_json::Value {
    named_slice("stock-abc12", version, addresses, port)
}

/// As [`slice`], for the slice `name` (a service's pods may expose its named port on
/// different container ports: one slice per port).
fn named_slice(
    name: &str,
    version: &str,
    addresses: &[(&str, bool)],
    port: u16,
) -> serde_json::Value {
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
            "name": name,
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

type Events = Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>;

/// A Kubernetes API server serving the EndpointSlices of `stock`: a list (the slices set by
/// the test, at their version) and a watch stream that the test feeds event by event.
pub(crate) struct ApiServer {
    pub(crate) server: Upstream,
    listed: Arc<Mutex<(String, Vec<serde_json::Value>)>>,
    events: Arc<Mutex<Events>>,
}

impl ApiServer {
    pub(crate) fn start() -> ApiServer {
        let listed: Arc<Mutex<(String, Vec<serde_json::Value>)>> = Arc::default();
        let events: Arc<Mutex<Events>> = Arc::default();
        let (l, ev) = (listed.clone(), events.clone());
        let server = Upstream::start(move |r| api_reply(r, &l, &ev));
        ApiServer {
            server,
            listed,
            events,
        }
    }

    /// What a list answers from now on.
    pub(crate) fn list(&self, version: &str, items: Vec<serde_json::Value>) {
        *self.listed.lock().unwrap() = (version.to_string(), items);
    }

    pub(crate) fn watching(&self) -> bool {
        self.events.lock().unwrap().is_some()
    }

    /// Sends one event on the open watch.
    pub(crate) fn send(&self, event: serde_json::Value) {
        let tx = self
            .events
            .lock()
            .unwrap()
            .clone()
            .expect("a watch is open");
        tx.send(format!("{event}\n").into_bytes())
            .expect("watch open");
    }
}

/// The API server's answer: 401 without the token, a watch stream, or the list.
fn api_reply(
    r: &support::Recorded,
    listed: &Mutex<(String, Vec<serde_json::Value>)>,
    events: &Mutex<Events>,
) -> Reply {
    if r.header("authorization") != Some("Bearer k8s-test-token") {
        return Reply::ok(r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Unauthorized","code":401}"#).status(401);
    }
    if r.target.contains("watch=1") {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *events.lock().unwrap() = Some(tx);
        let mut reply = Reply::ok("").header("content-type", "application/json");
        reply.body = ReplyBody::Chunks(rx);
        return reply;
    }
    let (version, items) = listed.lock().unwrap().clone();
    let list = serde_json::json!({
        "kind": "EndpointSliceList",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"resourceVersion": version},
        "items": items
    });
    Reply::ok(&list.to_string()).header("content-type", "application/json")
}

/// A token file for the API server above, in a temp dir.
pub(crate) fn token_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "k8s-test-token\n").unwrap();
    dir
}

/// Waits until `server` got no request for a while (it left the set).
pub(crate) fn quiet(what: &str, server: &Upstream) {
    let mut last = server.count();
    converge(what, || {
        std::thread::sleep(Duration::from_millis(300));
        let now = server.count();
        std::mem::replace(&mut last, now) == now
    });
}

#[test]
fn kubernetes_endpoints_come_and_go_under_load_without_a_failed_request() {
    let (a, b, c) = (named("a"), named("b"), named("c"));
    let ip = "127.0.0.1";
    let api = ApiServer::start();
    api.list(
        "10",
        vec![named_slice("stock-a", "10", &[(ip, false)], a.addr.port())],
    );
    let dir = token_dir();
    let gw = gateway(
        &format!(
            r#"{{"type":"kubernetes","namespace":"shop","service_name":"stock","port_name":"http","api_server":"{}","token_file":"{}"}}"#,
            api.server.url(),
            dir.path().join("token").display()
        ),
        "round_robin",
    );
    let client = blocking_client();
    converge("the listed endpoint is used", || get(&client, &gw).1 == "a");
    converge("a watch is open", || api.watching());
    let load = Load::start(&gw, 4);
    load.run_for(200);
    // Two more slices appear (pods exposing `http` on other ports).
    api.send(serde_json::json!({"type": "ADDED", "object": named_slice("stock-b", "11", &[(ip, false)], b.addr.port())}));
    api.send(serde_json::json!({"type": "ADDED", "object": named_slice("stock-c", "12", &[(ip, false)], c.addr.port())}));
    converge("the new endpoints take traffic", || {
        b.count() > 0 && c.count() > 0
    });
    load.run_for(200);
    // `a`'s pod terminates (still serving), then its slice goes away; it finishes what it
    // has and gets no new request.
    api.send(serde_json::json!({"type": "MODIFIED", "object": named_slice("stock-a", "13", &[(ip, true)], a.addr.port())}));
    quiet("the terminating endpoint gets no more requests", &a);
    api.send(serde_json::json!({"type": "DELETED", "object": named_slice("stock-a", "14", &[(ip, true)], a.addr.port())}));
    drop(a);
    load.run_for(300);
    // The API server goes away (the watch ends, new ones are refused): the last known
    // endpoints keep serving.
    let ApiServer { server, events, .. } = api;
    events.lock().unwrap().take();
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
    assert_eq!(up["source"], "kubernetes");
    assert_eq!(up["servers"].as_array().map(Vec::len), Some(2));
    let errors = [
        ("upstream", "u"),
        ("source", "kubernetes"),
        ("result", "error"),
    ];
    assert!(metric(&scrape(&gw), "kairos_discovery_updates_total", &errors).unwrap_or(0.0) >= 1.0);
}
