//! Service discovery end to end: a gateway whose upstream finds its servers through DNS (a
//! real DNS server on 127.0.0.1, speaking the wire protocol over UDP), Consul, Kubernetes and
//! Eureka (loopback servers replaying those APIs' documented JSON), with real upstream servers.
//! Servers appear and disappear while requests run, and a source that goes down keeps the
//! last known servers.

#[path = "../support/mod.rs"]
mod support;

mod consul;
mod dns;
mod eureka;
mod kubernetes;
mod readiness;
mod reload;

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

/// A gateway in-process or as the real binary (a reload needs a config file).
trait Gw {
    fn url(&self, path: &str) -> String;
}

impl Gw for Gateway {
    fn url(&self, path: &str) -> String {
        Gateway::url(self, path)
    }
}

impl Gw for support::GatewayProcess {
    fn url(&self, path: &str) -> String {
        support::GatewayProcess::url(self, path)
    }
}

/// A GET through the gateway: status and body (status 0 when the request itself failed).
fn get(client: &reqwest::blocking::Client, gw: &impl Gw) -> (u16, String) {
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

fn admin_upstream(gw: &impl Gw) -> serde_json::Value {
    let body: serde_json::Value = blocking_client()
        .get(gw.url("/_kairos/upstreams"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    body["upstreams"][0].clone()
}

fn scrape(gw: &impl Gw) -> String {
    blocking_client()
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// The bodies of `n` requests, counted.
fn spread(client: &reqwest::blocking::Client, gw: &impl Gw, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, body) = get(client, gw);
        assert_eq!(status, 200, "{body}");
        *seen.entry(body).or_default() += 1;
    }
    seen
}

/// As [`spread`], or `None` when a request was not answered 200: for polls that wait for a
/// state (the first answer of a source, a health check) before the exact checks.
fn try_spread(
    client: &reqwest::blocking::Client,
    gw: &impl Gw,
    n: usize,
) -> Option<HashMap<String, usize>> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, body) = get(client, gw);
        if status != 200 {
            return None;
        }
        *seen.entry(body).or_default() += 1;
    }
    Some(seen)
}

fn converge(what: &str, f: impl FnMut() -> bool) {
    assert!(wait_until(Duration::from_secs(20), f), "{what}");
}

/// Requests sent in a loop from several threads until stopped: (sent, failed).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<(u16, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(gw: &impl Gw, threads: usize) -> Load {
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

fn named(body: &'static str) -> Upstream {
    Upstream::start(move |_| Reply::ok(body))
}
