//! gRPC and HTTP/2 upstreams end to end: a gRPC server in the test process (tonic's server
//! side over hyper's HTTP/2, h2c or TLS with ALPN "h2") behind the gateway, called by tonic's
//! client through the gateway over h2c: unary, server-streaming, client-streaming and bidi
//! calls, trailers intact, deadlines, and the gateway's own errors as gRPC statuses.

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use support::*;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

/// The one message of the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.into(),
        n,
    }
}

type MsgStream = Pin<Box<dyn futures_util::Stream<Item = Result<Msg, Status>> + Send>>;

/// A closure as the tower service tonic's server side calls.
#[derive(Clone)]
struct Svc<F>(F);

impl<F, Fut, Req, Res> tonic::codegen::Service<Req> for Svc<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Res, Status>>,
{
    type Response = Res;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Fut {
        (self.0)(req)
    }
}

/// A request as the test server saw it.
struct SeenRequest {
    version: http::Version,
    te: Option<String>,
    authority: Option<String>,
}

/// grpc.health.v1's request and answer (status 1 is SERVING, 2 NOT_SERVING).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// What the test server saw.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<SeenRequest>>,
    /// grpc.health.v1 answers NOT_SERVING while set.
    not_serving: std::sync::atomic::AtomicBool,
    /// grpc.health.v1 checks answered.
    health_checks: AtomicUsize,
    /// TCP connections accepted.
    connections: AtomicUsize,
}

/// The test service `test.Echo`:
/// - `Unary`: "echo:<text>"; text "slow" answers after 2 s.
/// - `Count`: `n` messages "0".."n-1" (`text` "slow": 300 ms apart), then a trailer
///   `x-trailer: kept` with the OK status.
/// - `Sum`: the count and sum of `n` of the messages streamed in.
/// - `Chat`: every message back, upper-cased.
async fn serve(
    req: http::Request<hyper::body::Incoming>,
    seen: Arc<Seen>,
) -> Result<http::Response<tonic::body::Body>, std::convert::Infallible> {
    seen.requests.lock().unwrap().push(SeenRequest {
        version: req.version(),
        te: req
            .headers()
            .get("te")
            .map(|v| v.to_str().unwrap().to_string()),
        authority: req.uri().authority().map(|a| a.to_string()),
    });
    let path = req.uri().path().to_string();
    if path == "/grpc.health.v1.Health/Check" {
        seen.health_checks.fetch_add(1, Ordering::SeqCst);
        let status = match seen.not_serving.load(Ordering::SeqCst) {
            true => 2,
            false => 1,
        };
        let svc = Svc(move |_: Request<HealthCheckRequest>| async move {
            Ok(Response::new(HealthCheckResponse { status }))
        });
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<
            HealthCheckResponse,
            HealthCheckRequest,
        >::default());
        return Ok(grpc.unary(svc, req).await);
    }
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
    let res = match path.rsplit('/').next().unwrap_or_default() {
        "Unary" => {
            let svc = Svc(|r: Request<Msg>| async move {
                let m = r.into_inner();
                if m.text == "slow" {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                let mut res = Response::new(msg(&format!("echo:{}", m.text), m.n));
                res.metadata_mut()
                    .insert("x-served-by", "test-echo".parse().unwrap());
                Ok(res)
            });
            grpc.unary(svc, req).await
        }
        "Count" => {
            let svc = Svc(|r: Request<Msg>| async move {
                let m = r.into_inner();
                let slow = m.text == "slow";
                let items = futures_util::stream::iter(0..m.n).then(move |i| async move {
                    if slow {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Ok(msg(&i.to_string(), i))
                });
                let mut md = tonic::metadata::MetadataMap::new();
                md.insert("x-trailer", "kept".parse().unwrap());
                let end = Status::with_metadata(Code::Ok, "", md);
                let stream: MsgStream =
                    Box::pin(items.chain(futures_util::stream::iter([Err(end)])));
                Ok(Response::new(stream))
            });
            grpc.server_streaming(svc, req).await
        }
        "Sum" => {
            let svc = Svc(|r: Request<tonic::Streaming<Msg>>| async move {
                let mut s = r.into_inner();
                let (mut count, mut sum) = (0u32, 0u32);
                while let Some(m) = s.message().await? {
                    count += 1;
                    sum += m.n;
                }
                Ok(Response::new(msg(&count.to_string(), sum)))
            });
            grpc.client_streaming(svc, req).await
        }
        "Chat" => {
            let svc = Svc(|r: Request<tonic::Streaming<Msg>>| async move {
                let s = r.into_inner();
                let out: MsgStream = Box::pin(
                    s.map(|m| m.map(|m| msg(&m.text.to_uppercase(), m.n)))
                        .take_while(|r| std::future::ready(r.is_ok())),
                );
                Ok(Response::new(out))
            });
            grpc.streaming(svc, req).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    };
    Ok(res)
}

/// Serves `test.Echo` over HTTP/2 on 127.0.0.1:0 from a thread of its own: h2c prior
/// knowledge, or TLS (ALPN "h2") with `tls`.
fn start_server(tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, Arc<Seen>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                seen2.connections.fetch_add(1, Ordering::SeqCst);
                let seen = seen2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| serve(req, seen.clone()));
                    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    h2.max_concurrent_streams(2);
                    match tls {
                        None => {
                            let _ = h2.serve_connection(TokioIo::new(sock), svc).await;
                        }
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            let Ok(s) = acceptor.accept(sock).await else {
                                return;
                            };
                            let _ = h2.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                });
            }
        });
    });
    (addr, seen)
}

const KEY: &str = "grpc-test-key-0123456789";

fn gateway_config(upstream: &str, protocol: &str, extra_upstream: &str) -> String {
    let key_hash = kairos_rs::base::hash::format_hash(&kairos_rs::base::hash::hash(KEY));
    format!(
        r#"{{"version":1,"server":{{"workers":1}},
        "upstreams":{{"g":{{"servers":[{{"url":"{upstream}"}}],"protocol":"{protocol}"{extra_upstream}}}}},
        "api_keys":{{"header_name":"x-api-key","keys":{{"client":{{"key_hash":"{key_hash}"}}}}}},
        "routes":[
          {{"name":"echo","path":"/test.Echo/{{*m}}","methods":["POST"],"upstream":"g","grpc":true,"timeout":"10s"}},
          {{"name":"locked","path":"/locked.Echo/{{*m}}","methods":["POST"],"upstream":"g","grpc":true,
            "auth":"api_key","rewrite":"/test.Echo/{{m}}"}},
          {{"name":"limited","path":"/limited.Echo/{{*m}}","methods":["POST"],"upstream":"g","grpc":true,
            "rate_limit":{{"per_ip":{{"rps":0.001,"burst":1}}}},"rewrite":"/test.Echo/{{m}}"}}
        ],
        "admin":{{"token":"grpc-admin-token-0123456789"}},
        "logging":{{"access_log":false,"level":"error"}}}}"#
    )
}

async fn channel(gw: &Gateway) -> tonic::client::Grpc<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gateway");
    tonic::client::Grpc::new(ch)
}

async fn unary<S>(
    c: &mut tonic::client::Grpc<S>,
    path: &'static str,
    req: Request<Msg>,
) -> Result<Response<Msg>, Status>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError>,
{
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    c.unary(req, PathAndQuery::from_static(path), ProstCodec::default())
        .await
}

/// `/test.Echo/Count` (server streaming), on a ready channel: the answer's message stream.
async fn count<S>(
    c: &mut tonic::client::Grpc<S>,
    req: Request<Msg>,
) -> Result<tonic::codec::Streaming<Msg>, Status>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError>,
{
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    let path = PathAndQuery::from_static("/test.Echo/Count");
    let res = c.server_streaming(req, path, ProstCodec::default()).await?;
    Ok(res.into_inner())
}

#[tokio::test]
async fn the_four_kinds_of_calls_pass_with_their_trailers_over_h2c() {
    let (addr, seen) = start_server(None);
    let gw = Gateway::start(&gateway_config(&format!("http://{addr}"), "h2c", ""));
    let mut c = channel(&gw).await;

    // Unary: the answer, its header metadata, and the OK status from the trailers.
    let res = unary(&mut c, "/test.Echo/Unary", Request::new(msg("hi", 7)))
        .await
        .expect("unary call");
    assert_eq!(
        res.metadata().get("x-served-by").unwrap().to_str().unwrap(),
        "test-echo"
    );
    assert_eq!(res.into_inner(), msg("echo:hi", 7));
    {
        let requests = seen.requests.lock().unwrap();
        let last = requests.last().unwrap();
        assert_eq!(
            last.version,
            http::Version::HTTP_2,
            "the upstream got HTTP/2"
        );
        assert_eq!(
            last.te.as_deref(),
            Some("trailers"),
            "TE: trailers passed on"
        );
        assert_eq!(last.authority.as_deref(), Some(addr.to_string().as_str()));
    }

    // Server streaming: every message, then the server's trailer metadata intact.
    let mut stream = count(&mut c, Request::new(msg("", 5)))
        .await
        .expect("server-streaming call");
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.expect("stream message") {
        got.push(m.n);
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("x-trailer").unwrap().to_str().unwrap(), "kept");

    // Client streaming: ten messages up, one answer.
    c.ready().await.unwrap();
    let up = futures_util::stream::iter((1..=10).map(|i| msg("x", i)));
    let res = c
        .client_streaming(
            Request::new(up),
            PathAndQuery::from_static("/test.Echo/Sum"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .expect("client-streaming call");
    assert_eq!(res.into_inner(), msg("10", 55));

    // Bidi: each message answered while the request stream is still open.
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(4);
    let up =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    c.ready().await.unwrap();
    let res = c
        .streaming(
            Request::new(up),
            PathAndQuery::from_static("/test.Echo/Chat"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .expect("bidi call");
    let mut down = res.into_inner();
    for (i, word) in ["one", "two", "three"].iter().enumerate() {
        tx.send(msg(word, i as u32)).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), down.message())
            .await
            .expect("the answer arrives before the request stream ends")
            .unwrap()
            .unwrap();
        assert_eq!(back, msg(&word.to_uppercase(), i as u32));
    }
    drop(tx);
    assert_eq!(down.message().await.unwrap(), None);

    // Every call is counted by route and status.
    let text = scrape_metrics(&gw, "grpc-admin-token-0123456789").await;
    let ok = metric(
        &text,
        "kairos_grpc_responses_total",
        &[("route", "echo"), ("grpc_status", "0")],
    );
    assert_eq!(ok, Some(4.0), "{text}");
}

/// An HTTP/2 connection to the gateway whose calls carry `grpc-timeout: <timeout>` without
/// the client timing them out (tonic's channel enforces a `grpc-timeout` itself).
#[derive(Clone)]
struct GrpcTimeout(
    hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    &'static str,
);

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for GrpcTimeout {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static(self.1));
        Box::pin(self.0.send_request(req))
    }
}

async fn with_grpc_timeout(
    gw: &Gateway,
    timeout: &'static str,
) -> tonic::client::Grpc<GrpcTimeout> {
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let origin = format!("http://{}", gw.addr).parse().unwrap();
    tonic::client::Grpc::with_origin(GrpcTimeout(sender, timeout), origin)
}

#[tokio::test]
async fn deadlines_are_enforced_by_the_gateway() {
    let (addr, _seen) = start_server(None);
    let gw = Gateway::start(&gateway_config(&format!("http://{addr}"), "h2c", ""));

    // No answer head within the call's grpc-timeout: DEADLINE_EXCEEDED from the gateway
    // (the test server ignores grpc-timeout; the client does not time out itself).
    let mut c = with_grpc_timeout(&gw, "300m").await;
    let started = std::time::Instant::now();
    let err = unary(&mut c, "/test.Echo/Unary", Request::new(msg("slow", 0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));

    // A stream still going at the deadline ends with DEADLINE_EXCEEDED in its trailers.
    let mut c = with_grpc_timeout(&gw, "800m").await;
    let req = Request::new(msg("slow", 20));
    let mut stream = count(&mut c, req).await.expect("the stream starts");
    let mut got = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("the stream ended with OK after {got} messages"),
            Err(e) => break e,
        }
    };
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
    assert!((1..20).contains(&got), "{got} messages before the deadline");
    let text = scrape_metrics(&gw, "grpc-admin-token-0123456789").await;
    let exceeded = metric(
        &text,
        "kairos_grpc_responses_total",
        &[("route", "echo"), ("grpc_status", "4")],
    );
    assert_eq!(exceeded, Some(2.0), "{text}");
}

#[tokio::test]
async fn the_gateways_own_errors_are_grpc_statuses() {
    let (addr, seen) = start_server(None);
    let gw = Gateway::start(&gateway_config(&format!("http://{addr}"), "h2c", ""));
    let mut c = channel(&gw).await;

    // No API key: UNAUTHENTICATED, answered trailers-only by the gateway.
    let err = unary(&mut c, "/locked.Echo/Unary", Request::new(msg("a", 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(err.message(), "missing or invalid credentials");
    // With the key the same call goes through.
    let mut req = Request::new(msg("a", 1));
    req.metadata_mut().insert("x-api-key", KEY.parse().unwrap());
    let res = unary(&mut c, "/locked.Echo/Unary", req).await.unwrap();
    assert_eq!(res.into_inner().text, "echo:a");

    // Rate limit 1: the second call is RESOURCE_EXHAUSTED.
    unary(&mut c, "/limited.Echo/Unary", Request::new(msg("b", 1)))
        .await
        .expect("the first call is within the limit");
    let err = unary(&mut c, "/limited.Echo/Unary", Request::new(msg("b", 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // A service no route serves: UNIMPLEMENTED.
    let err = unary(&mut c, "/other.Service/Call", Request::new(msg("c", 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert_eq!(
        seen.requests.lock().unwrap().len(),
        2,
        "refused calls never reach the upstream"
    );

    // The upstream down: UNAVAILABLE.
    let dead = refused_addr();
    let gw = Gateway::start(&gateway_config(&format!("http://{}", dead.addr), "h2c", ""));
    let mut c = channel(&gw).await;
    let err = unary(&mut c, "/test.Echo/Unary", Request::new(msg("d", 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn concurrent_calls_share_one_connection_up_to_the_servers_stream_limit() {
    let (addr, seen) = start_server(None);
    let gw = Gateway::start(&gateway_config(&format!("http://{addr}"), "h2c", ""));
    let c = channel(&gw).await;
    // Sequential calls: one connection.
    for i in 0..3 {
        let mut c = c.clone();
        unary(&mut c, "/test.Echo/Unary", Request::new(msg("seq", i)))
            .await
            .unwrap();
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    // Four slow streams at once against a server that allows two per connection: a second
    // connection, not a queue behind the first two.
    let started = std::time::Instant::now();
    let calls = (0..4).map(|_| {
        let mut c = c.clone();
        async move {
            let mut s = count(&mut c, Request::new(msg("slow", 2))).await.unwrap();
            let mut n = 0;
            while s.message().await.unwrap().is_some() {
                n += 1;
            }
            n
        }
    });
    let counts = futures_util::future::join_all(calls).await;
    assert_eq!(counts, [2, 2, 2, 2]);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "the calls ran side by side: {:?}",
        started.elapsed()
    );
}

/// A self-signed certificate for localhost: the server's TLS settings (ALPN `alpn`) and a
/// directory holding the certificate as `ca.pem`.
fn tls_server(alpn: &[&[u8]]) -> (Arc<rustls::ServerConfig>, tempfile::TempDir) {
    let (dir, _, cfg) = self_signed_tls(&["localhost"], alpn);
    (cfg, dir)
}

#[tokio::test]
async fn an_h2_upstream_over_tls_by_alpn() {
    let (tls, dir) = tls_server(&[b"h2"]);
    let (addr, seen) = start_server(Some(tls));
    let url = format!("https://localhost:{}", addr.port());
    let cfg = gateway_config(&url, "h2", r#","tls":{"ca_file":"ca.pem"}"#);
    let gw = Gateway::start_in(&cfg, dir.path());
    let mut c = channel(&gw).await;
    let res = unary(&mut c, "/test.Echo/Unary", Request::new(msg("tls", 3)))
        .await
        .expect("unary over h2 with TLS");
    assert_eq!(res.into_inner(), msg("echo:tls", 3));
    let mut s = count(&mut c, Request::new(msg("", 2))).await.unwrap();
    while s.message().await.unwrap().is_some() {}
    let trailers = s.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("x-trailer").unwrap().to_str().unwrap(), "kept");
    let requests = seen.requests.lock().unwrap();
    assert!(requests.iter().all(|r| r.version == http::Version::HTTP_2));
    assert_eq!(
        requests[0].authority.as_deref(),
        Some(format!("localhost:{}", addr.port()).as_str())
    );
}

/// "auto" speaks HTTP/2 to a server whose TLS handshake chooses it, and HTTP/1.1 to one that
/// offers only HTTP/1.1.
#[tokio::test]
async fn auto_follows_the_servers_alpn_choice() {
    let (tls, dir) = tls_server(&[b"h2"]);
    let (addr, seen) = start_server(Some(tls));
    let url = format!("https://localhost:{}", addr.port());
    let gw = Gateway::start_in(
        &gateway_config(&url, "auto", r#","tls":{"ca_file":"ca.pem"}"#),
        dir.path(),
    );
    let mut c = channel(&gw).await;
    unary(&mut c, "/test.Echo/Unary", Request::new(msg("auto", 1)))
        .await
        .expect("auto chose h2");
    assert_eq!(
        seen.requests.lock().unwrap()[0].version,
        http::Version::HTTP_2
    );

    // An HTTP/1.1-only server: plain requests work over HTTP/1.1, twice on one connection.
    let (tls, dir) = tls_server(&[b"http/1.1"]);
    let (addr, versions) = http1_tls_server(tls);
    let cfg = format!(
        r#"{{"version":1,"server":{{"workers":1}},
        "upstreams":{{"u":{{"servers":[{{"url":"https://localhost:{}"}}],"protocol":"auto","tls":{{"ca_file":"ca.pem"}}}}}},
        "routes":[{{"path":"/plain","upstream":"u"}}],"logging":{{"access_log":false}}}}"#,
        addr.port()
    );
    let gw = Gateway::start_in(&cfg, dir.path());
    for _ in 0..2 {
        let res = client().get(gw.url("/plain")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "h1");
    }
    let versions = versions.lock().unwrap();
    assert_eq!(
        versions.as_slice(),
        [http::Version::HTTP_11, http::Version::HTTP_11]
    );
}

/// An HTTP/1.1 server over TLS answering "h1"; records each request's version.
fn http1_tls_server(
    tls: Arc<rustls::ServerConfig>,
) -> (SocketAddr, Arc<Mutex<Vec<http::Version>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<http::Version>>> = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((s, _)) = l.accept().await {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let Ok(s) = acceptor.accept(s).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            seen.lock().unwrap().push(req.version());
                            async {
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(Bytes::from_static(b"h1")),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    (addr, seen)
}

#[test]
fn protocol_config_errors_name_the_fix() {
    let errors = |cfg: &str| {
        kairos_rs::config::load_str(cfg, "test", std::path::Path::new("."))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let up = |url: &str, protocol: &str| {
        format!(
            r#"{{"version":1,"upstreams":{{"u":{{"servers":[{{"url":"{url}"}}],"protocol":"{protocol}"}}}},
            "routes":[{{"path":"/x","upstream":"u","grpc":true}}]}}"#
        )
    };
    let e = errors(&up("http://127.0.0.1:1", "h2x"));
    assert!(
        e.contains("upstreams.u.protocol") && e.contains("unknown protocol `h2x`"),
        "{e}"
    );
    assert!(e.contains("did you mean `h2`?"), "{e}");
    assert!(
        !e.contains("routes[0].grpc"),
        "no error follows from the unknown one: {e}"
    );
    let e = errors(&up("http://127.0.0.1:1", "h2"));
    assert!(
        e.contains("HTTP/2 over TLS") && e.contains("use \"h2c\""),
        "{e}"
    );
    let e = errors(&up("https://127.0.0.1:1", "h2c"));
    assert!(e.contains("HTTP/2 without TLS"), "{e}");
    let e = errors(&up("http://127.0.0.1:1", "http1"));
    assert!(
        e.contains("routes[0].grpc") && e.contains("gRPC needs HTTP/2"),
        "{e}"
    );
    assert!(e.contains("set upstreams.u.protocol to \"h2c\""), "{e}");
    let e = errors(&up("http://127.0.0.1:1", "auto"));
    assert!(e.contains("routes[0].grpc"), "{e}");
    let e = errors(&up("http://127.0.0.1:1", "http1").replace(
        r#""protocol":"http1""#,
        r#""protocol":"http1","health_check":{"grpc_service":""}"#,
    ));
    assert!(
        e.contains("upstreams.u.health_check.grpc_service")
            && e.contains("gRPC health checks need HTTP/2"),
        "{e}"
    );
    assert_eq!(errors(&up("http://127.0.0.1:1", "h2c")), "");
    assert_eq!(errors(&up("https://127.0.0.1:1", "auto")), "");
}

/// The access-log line of a call carries its gRPC status: from the trailers of a streamed
/// answer (written when the call ends), and the gateway's own for a refused call.
#[tokio::test]
async fn the_access_log_names_each_calls_grpc_status() {
    let (addr, _seen) = start_server(None);
    let cfg = gateway_config(&format!("http://{addr}"), "h2c", "")
        .replace(r#""access_log":false"#, r#""access_log":true"#)
        .replace(r#""level":"error""#, r#""level":"info""#);
    let gw = GatewayProcess::start(&cfg);
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = tonic::client::Grpc::new(ch);
    let mut s = count(&mut c, Request::new(msg("", 3))).await.unwrap();
    while s.message().await.unwrap().is_some() {}
    let err = unary(&mut c, "/locked.Echo/Unary", Request::new(msg("a", 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let line_of = |path: &str| {
        let mut found = None;
        wait_until(Duration::from_secs(5), || {
            found = gw.logs().into_iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(&l).ok()?;
                (v["target"] == "kairos::access" && v["path"] == path).then_some(v)
            });
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no access-log line for {path}: {:?}", gw.logs()))
    };
    let streamed = line_of("/test.Echo/Count");
    assert_eq!(streamed["status"], 200);
    assert_eq!(streamed["grpc_status"], 0);
    assert_eq!(streamed["route"], "echo");
    let refused = line_of("/locked.Echo/Unary");
    assert_eq!(refused["status"], 200);
    assert_eq!(refused["grpc_status"], 16);
}

/// Each request's body and trailers, as the upstream got them.
type SeenBodies = Arc<Mutex<Vec<(Bytes, Option<http::HeaderMap>)>>>;

/// An h2c upstream that records the request's body and trailers, and answers "ok" with a
/// trailer `x-resp-trailer: yes`.
fn trailers_upstream() -> (SocketAddr, SeenBodies) {
    use http_body_util::BodyExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: SeenBodies = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((s, _)) = l.accept().await {
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let body = req.into_body().collect().await.unwrap();
                                let trailers = body.trailers().cloned();
                                seen.lock().unwrap().push((body.to_bytes(), trailers));
                                let mut t = http::HeaderMap::new();
                                t.insert("x-resp-trailer", http::HeaderValue::from_static("yes"));
                                let frames = [
                                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                        Bytes::from_static(b"ok"),
                                    )),
                                    Ok(hyper::body::Frame::trailers(t)),
                                ];
                                let body = http_body_util::StreamBody::new(
                                    futures_util::stream::iter(frames),
                                );
                                Ok::<_, std::convert::Infallible>(http::Response::new(body))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    (addr, seen)
}

/// Trailers go both ways on any route between an HTTP/2 client and an HTTP/2 upstream; an
/// HTTP/1.1 client gets the body without them.
#[tokio::test]
async fn request_and_response_trailers_are_relayed_on_a_plain_route() {
    use http_body_util::BodyExt;
    let (addr, seen) = trailers_upstream();
    let cfg = format!(
        r#"{{"version":1,"server":{{"workers":1}},
        "upstreams":{{"u":{{"servers":[{{"url":"http://{addr}"}}],"protocol":"h2c"}}}},
        "routes":[{{"path":"/t","upstream":"u"}}],"logging":{{"access_log":false}}}}"#
    );
    let gw = Gateway::start(&cfg);
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut t = http::HeaderMap::new();
    t.insert("x-req-trailer", http::HeaderValue::from_static("sent"));
    let frames = [
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b"abc"))),
        Ok(hyper::body::Frame::trailers(t)),
    ];
    let req = http::Request::post(format!("http://{}/t", gw.addr))
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap();
    let trailers = body.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["x-resp-trailer"], "yes");
    assert_eq!(body.to_bytes(), "ok");
    {
        let seen = seen.lock().unwrap();
        let (got, trailers) = &seen[0];
        assert_eq!(got, "abc");
        let trailers = trailers
            .as_ref()
            .expect("request trailers reached the upstream");
        assert_eq!(trailers["x-req-trailer"], "sent");
    }

    // A small body with its length declared (read whole by the gateway): its trailers follow
    // it all the same.
    let mut t = http::HeaderMap::new();
    t.insert(
        "x-req-trailer",
        http::HeaderValue::from_static("after a whole body"),
    );
    let frames = [
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b"def"))),
        Ok(hyper::body::Frame::trailers(t)),
    ];
    let req = http::Request::post(format!("http://{}/t", gw.addr))
        .header("te", "trailers")
        .header("content-length", "3")
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    {
        let seen = seen.lock().unwrap();
        let (got, trailers) = &seen[1];
        assert_eq!(got, "def");
        let trailers = trailers
            .as_ref()
            .expect("the trailers of a body read whole reached the upstream");
        assert_eq!(trailers["x-req-trailer"], "after a whole body");
    }

    // HTTP/1.1: the same answer without its trailers.
    let res = client()
        .post(gw.url("/t"))
        .body("xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok");
    assert_eq!(seen.lock().unwrap()[2].0, "xyz");
}

/// `grpc_service` checks a server with grpc.health.v1 over HTTP/2: NOT_SERVING takes it out
/// of the rotation, SERVING brings it back.
#[tokio::test]
async fn grpc_health_checks_follow_the_servers_serving_status() {
    let (addr, seen) = start_server(None);
    let check = r#","health_check":{"grpc_service":"","interval":"100ms","timeout":"90ms",
        "healthy_threshold":1,"unhealthy_threshold":1}"#;
    let gw = Gateway::start(&gateway_config(&format!("http://{addr}"), "h2c", check));
    let server = format!("http://{addr}");
    let health = || async {
        let text = scrape_metrics(&gw, "grpc-admin-token-0123456789").await;
        metric(
            &text,
            "kairos_upstream_health",
            &[("upstream", "g"), ("server", &server)],
        )
    };
    let wait_for = |want: f64| async move {
        for _ in 0..100 {
            if health().await == Some(want) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    for _ in 0..100 {
        if seen.health_checks.load(Ordering::SeqCst) > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.health_checks.load(Ordering::SeqCst) > 1,
        "no gRPC health check arrived"
    );
    assert!(wait_for(1.0).await, "SERVING: healthy");
    seen.not_serving.store(true, Ordering::SeqCst);
    assert!(wait_for(0.0).await, "NOT_SERVING: unhealthy");
    let mut c = channel(&gw).await;
    let err = unary(&mut c, "/test.Echo/Unary", Request::new(msg("x", 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "no healthy server: {err:?}");
    seen.not_serving.store(false, Ordering::SeqCst);
    assert!(wait_for(1.0).await, "SERVING again: healthy");
    unary(&mut c, "/test.Echo/Unary", Request::new(msg("x", 1)))
        .await
        .expect("back in the rotation");
}

/// Hundreds of calls share the one upstream connection: the gateway sends no empty DATA frame
/// without END_STREAM (a client's empty end-of-stream frame is not relayed as one), which an
/// HTTP/2 server counts as abuse (h2 answers GOAWAY ENHANCE_YOUR_CALM after 100 on a
/// connection: before the fix, about one call in a hundred failed).
#[tokio::test]
async fn hundreds_of_calls_keep_the_one_upstream_connection() {
    let (addr, seen) = start_server(None);
    let gw = Gateway::start(&gateway_config(&format!("http://{addr}"), "h2c", ""));
    let mut c = channel(&gw).await;
    for i in 0..400 {
        let res = unary(&mut c, "/test.Echo/Unary", Request::new(msg("n", i)))
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e:?}"));
        assert_eq!(res.get_ref().n, i);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

/// What [`refusing_upstream`] saw: streams refused, and the bodies of the requests answered.
#[derive(Default)]
struct Refusals {
    refused: AtomicUsize,
    answered: Mutex<Vec<(String, String)>>,
    seen_ids: Mutex<std::collections::HashSet<String>>,
}

/// An h2c server (h2's server side) that refuses each request's first stream with RST_STREAM
/// REFUSED_STREAM, as a server shedding load does (RFC 9113 8.7: the request was not
/// processed), and answers 200 "ok" when the same request (its X-Request-Id) comes again.
fn refusing_upstream() -> (SocketAddr, Arc<Refusals>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Refusals::default());
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(sock).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let id = req.headers()["x-request-id"].to_str().unwrap().to_string();
                        if seen.seen_ids.lock().unwrap().insert(id.clone()) {
                            seen.refused.fetch_add(1, Ordering::SeqCst);
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let seen = seen.clone();
                        tokio::spawn(async move {
                            let mut body = req.into_body();
                            let mut got = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                got.extend_from_slice(&chunk);
                            }
                            let got = String::from_utf8_lossy(&got).into_owned();
                            seen.answered.lock().unwrap().push((id, got));
                            let res = http::Response::builder().status(200).body(()).unwrap();
                            if let Ok(mut tx) = respond.send_response(res, false) {
                                let _ = tx.send_data(Bytes::from_static(b"ok"), true);
                            }
                        });
                    }
                });
            }
        });
    });
    (addr, seen)
}

/// A stream the server refused unprocessed (REFUSED_STREAM; the same path takes the streams
/// past the last one of a server's GOAWAY, which NGINX sends after `keepalive_requests`
/// streams on a connection) is sent again to the same server, whatever the method, without
/// using the retry policy (none here) or counting as a failure of the server.
#[tokio::test]
async fn streams_the_server_refused_unprocessed_are_sent_again() {
    let (addr, seen) = refusing_upstream();
    let cfg = format!(
        r#"{{"version":1,"server":{{"workers":1}},
        "upstreams":{{"u":{{"servers":[{{"url":"http://{addr}"}}],"protocol":"h2c",
          "retries":{{"attempts":0}}}}}},
        "routes":[{{"path":"/r/{{*rest}}","upstream":"u"}}],
        "admin":{{"token":"refused-admin-token-0123456789"}},
        "logging":{{"access_log":false,"level":"error"}}}}"#
    );
    let gw = Gateway::start(&cfg);
    let c = client();
    let mut calls = Vec::new();
    for i in 0..40 {
        let c = c.clone();
        let url = gw.url(&format!("/r/{i}"));
        calls.push(tokio::spawn(async move {
            let res = match i % 2 {
                0 => c.get(url).send().await,
                _ => c.post(url).body(format!("body {i}")).send().await,
            }
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
            (res.status().as_u16(), res.text().await.unwrap_or_default())
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let (status, body) = call.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(seen.refused.load(Ordering::SeqCst), 40);
    let answered = seen.answered.lock().unwrap().clone();
    assert_eq!(
        answered.len(),
        40,
        "each request answered once, after its refusal"
    );
    let posted = answered
        .iter()
        .filter(|(_, b)| b.starts_with("body "))
        .count();
    assert_eq!(
        posted, 20,
        "the POST bodies were sent again whole: {answered:?}"
    );
    let metrics = scrape_metrics(&gw, "refused-admin-token-0123456789").await;
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("kairos_upstream_errors_total{") && l.contains("upstream=\"u\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(
        errors.is_empty(),
        "a refused stream is no upstream error: {errors:?}"
    );
}
