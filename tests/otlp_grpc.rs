//! OTLP over gRPC (`tracing.protocol: "grpc"`, OTEL_EXPORTER_OTLP_PROTOCOL=grpc): the real
//! binary exports to an in-test gRPC receiver on 127.0.0.1:0, opentelemetry-proto's
//! TraceService served over hyper's HTTP/2, which records the metadata and the message
//! coding of every export.

mod support;

use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use support::*;
use tonic::codec::CompressionEncoding;
use tonic::codegen::Service;

const TOKEN: &str = "otlp-grpc-test-token-0123456789";
const API_KEY: &str = "sk-grpc-config-secret-4711";

/// One export as the receiver got it.
#[derive(Debug, Clone)]
struct Export {
    /// The gRPC metadata (ASCII entries).
    metadata: HashMap<String, String>,
    /// The request's `grpc-encoding` header: the message coding.
    encoding: Option<String>,
    request: ExportTraceServiceRequest,
}

#[derive(Clone, Default)]
struct Receiver {
    exports: Arc<Mutex<Vec<Export>>>,
    /// `grpc-encoding` of the HTTP/2 requests, in order (filled before the service runs).
    encodings: Arc<Mutex<Vec<Option<String>>>>,
    /// Exports still to refuse with UNAVAILABLE (a collector restarting), and how many were.
    refuse: Arc<std::sync::atomic::AtomicUsize>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        use std::sync::atomic::Ordering::SeqCst;
        let refuse = self
            .refuse
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            self.encodings.lock().unwrap().pop();
            self.refused.fetch_add(1, SeqCst);
            return Err(tonic::Status::unavailable("collector restarting"));
        }
        let metadata = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let encoding = self.encodings.lock().unwrap().pop().flatten();
        self.exports.lock().unwrap().push(Export {
            metadata,
            encoding,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves the receiver on 127.0.0.1:0 from a thread of its own; gzip accepted.
fn start_receiver() -> (Receiver, SocketAddr) {
    start_receiver_with(None)
}

/// As [`start_receiver`], over TLS (ALPN h2) when `tls` is given.
fn start_receiver_with(tls: Option<Arc<rustls::ServerConfig>>) -> (Receiver, SocketAddr) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let receiver = Receiver::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let r = receiver.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let server =
                TraceServiceServer::new(r.clone()).accept_compressed(CompressionEncoding::Gzip);
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                let encodings = r.encodings.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let encoding = req
                                .headers()
                                .get("grpc-encoding")
                                .and_then(|v| v.to_str().ok())
                                .map(String::from);
                            encodings.lock().unwrap().push(encoding);
                            let mut server = server.clone();
                            async move { server.call(req).await }
                        },
                    );
                    let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    match acceptor {
                        None => {
                            let _ = h2.serve_connection(TokioIo::new(sock), svc).await;
                        }
                        Some(a) => {
                            if let Ok(tls) = a.accept(sock).await {
                                let _ = h2.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                    }
                });
            }
        });
    });
    (receiver, addr)
}

fn config(up: &str, tracing: &str) -> String {
    format!(
        r#"{{"version":1,"server":{{"workers":1}},
        "admin":{{"token":"{TOKEN}"}},
        "upstreams":{{"users":{{"servers":[{{"url":"{up}"}}]}}}},
        "routes":[{{"name":"get-user","path":"/users/{{id}}","upstream":"users"}}],
        "tracing":{tracing}}}"#
    )
}

fn resource_and_spans(e: &Export) -> Vec<(HashMap<String, String>, Span)> {
    let mut out = Vec::new();
    for rs in &e.request.resource_spans {
        let resource: HashMap<String, String> = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                _ => None,
            })
            .collect();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push((resource.clone(), s.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn spans_go_over_grpc_with_gzip_and_the_configured_metadata() {
    let (receiver, addr) = start_receiver();
    let up = Upstream::start_ok();
    let tracing = format!(
        r#"{{"protocol":"grpc","endpoint":"http://{addr}","sampling_rate":1.0,
            "service_name":"edge-grpc","compression":"gzip",
            "headers":{{"x-api-key":"{API_KEY}"}}}}"#
    );
    let mut gw = GatewayProcess::start_with_env(
        &config(&up.url(), &tracing),
        &[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-api-key=from-env,x-team=core%20team",
        )],
    );
    let c = client();
    for i in 0..3 {
        let res = c.get(gw.url(&format!("/users/{i}"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert!(gw.stop());

    let exports = receiver.exports.lock().unwrap().clone();
    assert!(!exports.is_empty(), "nothing exported over gRPC");
    let mut spans = Vec::new();
    for e in &exports {
        // The config's header wins over the variable's; the variable's other one comes along,
        // percent-decoded.
        assert_eq!(
            e.metadata.get("x-api-key").map(String::as_str),
            Some(API_KEY)
        );
        assert_eq!(
            e.metadata.get("x-team").map(String::as_str),
            Some("core team")
        );
        assert_eq!(e.encoding.as_deref(), Some("gzip"), "not gzipped");
        spans.extend(resource_and_spans(e));
    }
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|(r, s)| {
            assert_eq!(r["service.name"], "edge-grpc");
            s.kind == SpanKind::Server as i32
        })
        .map(|(_, s)| s)
        .collect();
    assert_eq!(servers.len(), 3);
    // Each server span has its client span as a child in the same trace.
    for server in servers {
        assert!(
            spans.iter().any(|(_, s)| s.kind == SpanKind::Client as i32
                && s.trace_id == server.trace_id
                && s.parent_span_id == server.span_id),
            "no client span under {}",
            server.name
        );
    }
}

#[tokio::test]
async fn otel_exporter_otlp_protocol_grpc_and_its_endpoint_from_the_environment() {
    let (receiver, addr) = start_receiver();
    let up = Upstream::start_ok();
    let endpoint = format!("http://{addr}");
    let mut gw = GatewayProcess::start_with_env(
        &config(&up.url(), r#"{"sampling_rate":1.0}"#),
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            // Over gRPC the base endpoint is used as is (no /v1/traces).
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ],
    );
    let res = client().get(gw.url("/users/7")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    assert!(gw.stop());
    let exports = receiver.exports.lock().unwrap().clone();
    let got: Vec<String> = exports
        .iter()
        .flat_map(resource_and_spans)
        .map(|(_, s)| s.trace_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    assert!(got.contains(&trace), "{got:?}");
    // Without compression configured anywhere the messages are not compressed.
    assert!(exports.iter().all(|e| e.encoding.is_none()));
}

#[test]
fn grpc_endpoints_are_used_as_given() {
    use kairos_rs::config::load_str_with_env;
    use kairos_rs::config::model::OtlpProtocol;
    let load = |tracing: &str, env: &[(&str, &str)]| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        load_str_with_env(
            &config("http://127.0.0.1:9", tracing),
            "t.json",
            std::path::Path::new("."),
            &lookup,
        )
        .map_err(|e| e.to_string())
    };
    let t = |tracing: &str, env: &[(&str, &str)]| {
        load(tracing, env)
            .unwrap_or_else(|e| panic!("{e}"))
            .tracing
            .expect("tracing on")
    };
    let d = t(r#"{"protocol":"grpc"}"#, &[]);
    assert_eq!(d.protocol, OtlpProtocol::Grpc);
    assert_eq!(d.endpoint, "http://127.0.0.1:4317");
    assert_eq!(
        t(
            r#"{"protocol":"grpc","endpoint":"https://otel.example:443/"}"#,
            &[]
        )
        .endpoint,
        "https://otel.example:443"
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
    ];
    let e = t("{}", &env);
    assert_eq!(
        (e.protocol, e.endpoint.as_str()),
        (OtlpProtocol::Grpc, "http://collector:4317")
    );
    // The config's protocol wins over the variable.
    let h = t(r#"{"protocol":"http/protobuf"}"#, &env);
    assert_eq!(
        (h.protocol, h.endpoint.as_str()),
        (
            OtlpProtocol::HttpProtobuf,
            "http://collector:4317/v1/traces"
        )
    );
    let err = load(r#"{"protocol":"grpc","endpoint":"collector:4317"}"#, &[]).unwrap_err();
    assert!(err.contains("tracing.endpoint"), "{err}");
    // Compression "none" cannot undo the variable over gRPC: said at load time.
    let warned = load(
        r#"{"protocol":"grpc","compression":"none"}"#,
        &[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        warned.warnings.iter().any(|w| w
            .to_string()
            .contains("OTEL_EXPORTER_OTLP_COMPRESSION=gzip")),
        "{:?}",
        warned.warnings
    );
}

/// A collector that refuses the first exports with UNAVAILABLE (restarting) loses nothing:
/// the exporter retries with back-off, every span arrives once, and nothing is counted as
/// dropped.
#[tokio::test]
async fn a_collector_answering_unavailable_then_ok_loses_no_span() {
    use std::sync::atomic::Ordering::SeqCst;
    let (receiver, addr) = start_receiver();
    receiver.refuse.store(2, SeqCst);
    let up = Upstream::start_ok();
    let tracing = format!(
        r#"{{"protocol":"grpc","endpoint":"http://{addr}","sampling_rate":1.0,
            "export_timeout":"10s"}}"#
    );
    let mut gw = GatewayProcess::start(&config(&up.url(), &tracing));
    let c = client();
    let mut traces = Vec::new();
    for i in 0..3 {
        let res = c.get(gw.url(&format!("/users/{i}"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
        traces.push(res.headers()["x-trace-id"].to_str().unwrap().to_string());
    }
    // The exports are retried until the collector answers (the first batch leaves within the
    // export interval).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while receiver.exports.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no export got through"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let metrics = client()
        .get(gw.url("/_kairos/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(gw.stop());
    assert_eq!(
        receiver.refused.load(SeqCst),
        2,
        "the collector refused twice"
    );
    assert_eq!(
        metric(
            &metrics,
            "kairos_tracing_spans_dropped_total",
            &[("reason", "export_failed")]
        )
        .unwrap_or(0.0),
        0.0
    );
    let servers: Vec<String> = receiver
        .exports
        .lock()
        .unwrap()
        .iter()
        .flat_map(resource_and_spans)
        .filter(|(_, s)| s.kind == SpanKind::Server as i32)
        .map(|(_, s)| s.trace_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let mut sorted = servers.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        servers.len(),
        "a span arrived twice: {servers:?}"
    );
    for t in &traces {
        assert!(servers.contains(t), "{t} lost: {servers:?}");
    }
}

/// gRPC over TLS to a collector with a private CA: trusted through `tracing.ca_file` (only
/// that CA), or through OTEL_EXPORTER_OTLP_CERTIFICATE; without it the collector's
/// certificate is refused, nothing is sent, and the lost spans are counted.
#[tokio::test]
async fn grpc_over_tls_trusts_the_configured_ca_only() {
    let (dir, _, tls) = self_signed_tls(&["127.0.0.1"], &[b"h2"]);
    let ca = dir.path().join("ca.pem");
    let up = Upstream::start_ok();
    for by_env in [false, true] {
        let (receiver, addr) = start_receiver_with(Some(tls.clone()));
        let endpoint = format!("https://127.0.0.1:{}", addr.port());
        let (tracing, env) = match by_env {
            false => (
                format!(
                    r#"{{"protocol":"grpc","endpoint":"{endpoint}","sampling_rate":1.0,
                        "ca_file":"{}"}}"#,
                    ca.display()
                ),
                vec![],
            ),
            true => (
                format!(r#"{{"protocol":"grpc","endpoint":"{endpoint}","sampling_rate":1.0}}"#),
                vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.to_str().unwrap())],
            ),
        };
        let mut gw = GatewayProcess::start_with_env(&config(&up.url(), &tracing), &env);
        let res = client().get(gw.url("/users/1")).send().await.unwrap();
        let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
        assert!(gw.stop());
        let got: Vec<String> = receiver
            .exports
            .lock()
            .unwrap()
            .iter()
            .flat_map(resource_and_spans)
            .map(|(_, s)| s.trace_id.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        assert!(got.contains(&trace), "by_env {by_env}: {got:?}");
    }
    // The Mozilla roots do not know this CA: refused, counted, and the requests unharmed.
    let (receiver, addr) = start_receiver_with(Some(tls));
    let tracing = format!(
        r#"{{"protocol":"grpc","endpoint":"https://127.0.0.1:{}","sampling_rate":1.0,
            "export_timeout":"2s"}}"#,
        addr.port()
    );
    let mut gw = GatewayProcess::start(&config(&up.url(), &tracing));
    let res = client().get(gw.url("/users/2")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let m = client()
            .get(gw.url("/_kairos/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let dropped = metric(
            &m,
            "kairos_tracing_spans_dropped_total",
            &[("reason", "export_failed")],
        )
        .unwrap_or(0.0);
        if dropped >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed export counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gw.stop());
    assert!(receiver.exports.lock().unwrap().is_empty());
}
