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
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
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
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
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
