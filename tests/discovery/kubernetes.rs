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
    // Malformed JSON from the API server keeps the last known servers, is counted, and
    // starts over with a list.
    converge("a watch is open again", || events.lock().unwrap().is_some());
    let tx = events.lock().unwrap().clone().unwrap();
    tx.send(b"{not json\n".to_vec()).unwrap();
    let errors = [
        ("upstream", "u"),
        ("source", "kubernetes"),
        ("result", "error"),
    ];
    converge("the error is counted", || {
        metric(&scrape(&gw), "kairos_discovery_updates_total", &errors).unwrap_or(0.0) >= 1.0
    });
    converge("the source lists again", || {
        api.requests()
            .iter()
            .filter(|r| !r.target.contains("watch=1"))
            .count()
            == 3
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

/// A private CA and a server configuration whose certificate (for 127.0.0.1) it signed: the
/// CA's PEM, and the server side.
fn pki(name: &str) -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (ca_cert.pem(), cfg)
}

/// TLS in front of a plain server (as the API server's own TLS): each connection is
/// decrypted and relayed to `backend`. [`TlsFront::swap`] changes the certificate and
/// closes the open connections.
struct TlsFront {
    addr: SocketAddr,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    epoch: tokio::sync::watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TlsFront {
    fn start(backend: SocketAddr, cfg: rustls::ServerConfig) -> TlsFront {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(Mutex::new(Arc::new(cfg)));
        let (epoch, epoch_rx) = tokio::sync::watch::channel(0u64);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let cfg = config.clone();
        std::thread::spawn(move || {
            block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let s = tokio::select! {
                        r = l.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.lock().unwrap().clone());
                    let mut epoch = epoch_rx.clone();
                    epoch.mark_unchanged();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(s).await else {
                            return;
                        };
                        let Ok(mut back) = tokio::net::TcpStream::connect(backend).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut tls, &mut back) => {}
                            _ = epoch.changed() => {}
                        }
                    });
                }
            })
        });
        TlsFront {
            addr,
            config,
            epoch,
            stop: Some(stop),
        }
    }

    fn swap(&self, cfg: rustls::ServerConfig) {
        *self.config.lock().unwrap() = Arc::new(cfg);
        self.epoch.send_modify(|e| *e += 1);
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

#[test]
fn kubernetes_in_cluster_https_trusts_only_the_given_ca() {
    let (a, b) = (named("a"), named("b"));
    let ip = "127.0.0.1";
    let api = ApiServer::start();
    api.list(
        "10",
        vec![named_slice("stock-a", "10", &[(ip, false)], a.addr.port())],
    );
    let (ca_pem, server) = pki("cluster");
    let front = TlsFront::start(api.server.addr, server);
    let dir = token_dir();
    std::fs::write(dir.path().join("ca.crt"), ca_pem).unwrap();
    // In-cluster: the API server from KUBERNETES_SERVICE_HOST/PORT over https; the token and
    // CA files from the temp dir instead of the service-account mount.
    let config = serde_json::json!({
        "version": 1,
        "server": {"workers": 2},
        "admin": {"token": TOKEN, "watch_config": false},
        "upstreams": {"u": {"discovery": {
            "type": "kubernetes", "namespace": "shop", "service_name": "stock",
            "port_name": "http",
            "token_file": dir.path().join("token"), "ca_file": dir.path().join("ca.crt")
        }}},
        "routes": [{"name": "app", "path": "/app/{*rest}", "upstream": "u"}],
        "logging": {"access_log": false, "level": "info"}
    });
    let port = front.addr.port().to_string();
    let gw = support::GatewayProcess::start_with_env(
        &config.to_string(),
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ],
    );
    let c = blocking_client();
    converge("the listed endpoint is used", || get(&c, &gw).1 == "a");
    converge("a watch is open", || api.watching());
    api.send(serde_json::json!({"type": "ADDED", "object": named_slice("stock-b", "11", &[(ip, false)], b.addr.port())}));
    converge("the watched endpoint is used", || {
        spread(&c, &gw, 6).len() == 2
    });

    // The API server now shows a certificate from a CA the gateway does not trust: the
    // connection is refused before any request (the token is not sent), counted as an
    // error, and the last known endpoints keep serving.
    let (_, stranger) = pki("stranger");
    let before = api.server.count();
    front.swap(stranger);
    converge("the unknown CA shows in the admin API", || {
        admin_upstream(&gw)["discovery"]
            .as_str()
            .is_some_and(|s| s.contains("certificate"))
    });
    assert_eq!(
        api.server.count(),
        before,
        "no request reached the API server"
    );
    let errors = [
        ("upstream", "u"),
        ("source", "kubernetes"),
        ("result", "error"),
    ];
    assert!(metric(&scrape(&gw), "kairos_discovery_updates_total", &errors).unwrap_or(0.0) >= 1.0);
    assert_eq!(spread(&c, &gw, 10).len(), 2);
}

/// A slice with no endpoints, as the API server writes it: `"endpoints": null`
/// (kubernetes/kubernetes#135968).
fn empty_slice(name: &str, version: &str) -> serde_json::Value {
    let mut s = named_slice(name, version, &[], 1);
    s["endpoints"] = serde_json::Value::Null;
    s
}

/// A gateway following `stock` on `api` (with the test token).
fn k8s_gateway(api: &ApiServer, dir: &tempfile::TempDir) -> Gateway {
    gateway(
        &format!(
            r#"{{"type":"kubernetes","namespace":"shop","service_name":"stock","port_name":"http","api_server":"{}","token_file":"{}"}}"#,
            api.server.url(),
            dir.path().join("token").display()
        ),
        "round_robin",
    )
}

#[test]
fn kubernetes_a_service_scaled_to_zero_empties_the_upstream() {
    let a = named("a");
    let api = ApiServer::start();
    api.list(
        "10",
        vec![named_slice(
            "stock-a",
            "10",
            &[("127.0.0.1", false)],
            a.addr.port(),
        )],
    );
    let dir = token_dir();
    let gw = k8s_gateway(&api, &dir);
    let c = blocking_client();
    converge("the listed endpoint is used", || get(&c, &gw).1 == "a");
    converge("a watch is open", || api.watching());
    // Scaled to zero: the slice stays, with `"endpoints": null`.
    api.send(serde_json::json!({"type": "MODIFIED", "object": empty_slice("stock-a", "11")}));
    converge("the upstream empties", || {
        let (status, body) = get(&c, &gw);
        status == 503 && body.contains("no_healthy_upstream")
    });
    let up = admin_upstream(&gw);
    assert_eq!(up["discovery"], "ok", "{up}");
    assert_eq!(up["servers"].as_array().map(Vec::len), Some(0), "{up}");
    drop(a);

    // The same from a list: a gateway started while the service is at zero.
    api.list("12", vec![empty_slice("stock-a", "12")]);
    let gw2 = k8s_gateway(&api, &dir);
    converge("the listed empty slice is applied", || {
        admin_upstream(&gw2)["discovery"] == "ok"
    });
    let (status, body) = get(&c, &gw2);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no_healthy_upstream"), "{body}");
}

#[test]
fn kubernetes_an_event_that_cannot_be_read_starts_over_with_a_list() {
    let (a, b) = (named("a"), named("b"));
    let ip = "127.0.0.1";
    let api = ApiServer::start();
    api.list(
        "10",
        vec![named_slice("stock-a", "10", &[(ip, false)], a.addr.port())],
    );
    let dir = token_dir();
    let gw = k8s_gateway(&api, &dir);
    let c = blocking_client();
    converge("the listed endpoint is used", || get(&c, &gw).1 == "a");
    converge("a watch is open", || api.watching());
    // The slice moved to `b`, but the event saying so cannot be read (here: a field of the
    // wrong type). Only a new list can tell the gateway.
    api.list(
        "20",
        vec![named_slice("stock-a", "20", &[(ip, false)], b.addr.port())],
    );
    api.send(serde_json::json!({"type": "MODIFIED", "object": {
        "kind": "EndpointSlice", "metadata": {"name": "stock-a", "resourceVersion": "20"},
        "endpoints": "not a list"
    }}));
    converge("the relisted endpoint is used", || {
        spread(&c, &gw, 4).keys().all(|k| k == "b")
    });
    let errors = [
        ("upstream", "u"),
        ("source", "kubernetes"),
        ("result", "error"),
    ];
    assert!(metric(&scrape(&gw), "kairos_discovery_updates_total", &errors).unwrap_or(0.0) >= 1.0);
    converge("the watch resumes from the new list", || {
        api.server
            .requests()
            .iter()
            .any(|r| r.target.contains("watch=1") && r.target.contains("resourceVersion=20"))
    });
}

#[test]
fn kubernetes_a_list_without_a_resource_version_is_an_error() {
    let a = named("a");
    let api = ApiServer::start();
    // No version to watch from (a proxy that rewrote the list, a broken API server).
    api.list(
        "",
        vec![named_slice(
            "stock-a",
            "10",
            &[("127.0.0.1", false)],
            a.addr.port(),
        )],
    );
    let dir = token_dir();
    let gw = k8s_gateway(&api, &dir);
    converge("the error shows in the admin API", || {
        admin_upstream(&gw)["discovery"]
            .as_str()
            .is_some_and(|s| s.contains("resourceVersion"))
    });
    // Listed again only as the back-off allows, never watched.
    std::thread::sleep(Duration::from_secs(1));
    let lists = api.server.count();
    assert!(lists <= 5, "{lists} lists");
    assert!(!api.watching());
    // A proper list: used, then watched.
    api.list(
        "11",
        vec![named_slice(
            "stock-a",
            "11",
            &[("127.0.0.1", false)],
            a.addr.port(),
        )],
    );
    converge("the listed endpoint is used", || {
        get(&blocking_client(), &gw).1 == "a"
    });
    converge("a watch is open", || api.watching());
}
