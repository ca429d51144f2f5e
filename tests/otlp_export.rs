//! The OTLP exporter as operators configure it: export headers, gzip and resource attributes
//! from the `tracing` section and the OTEL_* variables (the config's keys win), retries of a
//! collector that answers 503, and the precedence rules of the config layer. The receiver is
//! an in-test OTLP/HTTP server decoding with opentelemetry-proto.

mod support;

use flate2::read::GzDecoder;
use kairos_rs::config::load_str_with_env;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const TOKEN: &str = "otlp-export-test-token-0123456789";
const API_KEY: &str = "sk-live-config-secret-4711";

fn config(up: &str, tracing: &str) -> String {
    format!(
        r#"{{"version":1,"server":{{"workers":1}},
        "admin":{{"token":"{TOKEN}"}},
        "upstreams":{{"users":{{"servers":[{{"url":"{up}"}}]}}}},
        "routes":[{{"name":"get-user","path":"/users/{{id}}","upstream":"users"}}],
        "tracing":{tracing}}}"#
    )
}

/// The export request in a recorded body, gunzipped when it says so.
fn decode(req: &Recorded) -> ExportTraceServiceRequest {
    let body = match req.header("content-encoding") {
        Some("gzip") => {
            let mut out = Vec::new();
            GzDecoder::new(req.body.as_slice())
                .read_to_end(&mut out)
                .expect("gzip body");
            out
        }
        None => req.body.clone(),
        Some(other) => panic!("unexpected content-encoding {other}"),
    };
    ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf")
}

fn string_attrs(
    kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

fn admin_get(gw: &GatewayProcess, path: &str) -> String {
    let addr = gw.addr;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    std::thread::spawn(move || raw_exchange(addr, req.as_bytes(), Duration::from_secs(5)))
        .join()
        .unwrap()
}

#[tokio::test]
async fn headers_gzip_and_resource_attributes_reach_the_collector() {
    let col = Upstream::start(|_| Reply::ok("").header("content-type", "application/x-protobuf"));
    let up = Upstream::start_ok();
    let tracing = format!(
        r#"{{"endpoint":"{}","sampling_rate":1.0,"service_name":"edge",
            "headers":{{"x-api-key":"{API_KEY}","x-tenant":"t1"}},
            "compression":"gzip",
            "resource_attributes":{{"deployment.environment.name":"test"}}}}"#,
        col.url()
    );
    let mut gw = GatewayProcess::start_with_env(
        &config(&up.url(), &tracing),
        &[
            // The config's x-api-key wins; x-team comes from here, percent-decoded.
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=from-env,x-team=core%20team",
            ),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "region=eu-west,service.name=not-this-one",
            ),
            ("OTEL_SERVICE_NAME", "not-this-either"),
        ],
    );
    let c = client();
    for i in 0..3 {
        let res = c.get(gw.url(&format!("/users/{i}"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    // The admin API shows the header redacted.
    let shown = admin_get(&gw, "/_kairos/config");
    assert!(shown.contains("\"x-api-key\""), "{shown}");
    assert!(!shown.contains(API_KEY), "the API key was shown:\n{shown}");
    assert!(gw.stop());

    let requests = col.requests();
    assert!(!requests.is_empty(), "nothing exported");
    let mut servers = 0;
    for req in &requests {
        assert_eq!(req.target, "/v1/traces");
        assert_eq!(req.header("content-encoding"), Some("gzip"));
        assert_eq!(req.header("x-api-key"), Some(API_KEY));
        assert_eq!(req.header("x-team"), Some("core team"));
        assert_eq!(req.header("x-tenant"), Some("t1"));
        let export = decode(req);
        for rs in &export.resource_spans {
            let r = string_attrs(&rs.resource.as_ref().expect("resource").attributes);
            assert_eq!(r["service.name"], "edge", "{r:?}");
            assert_eq!(r["deployment.environment.name"], "test");
            assert_eq!(r["region"], "eu-west");
            assert_eq!(r["service.version"], env!("CARGO_PKG_VERSION"));
            assert_eq!(r["telemetry.sdk.name"], "opentelemetry");
            assert_eq!(r["service.instance.id"].len(), 32);
            assert!(!r["host.name"].is_empty());
            for ss in &rs.scope_spans {
                servers += ss
                    .spans
                    .iter()
                    .filter(|s| s.kind == SpanKind::Server as i32)
                    .count();
            }
        }
    }
    assert_eq!(servers, 3);
    for line in gw.logs() {
        assert!(!line.contains(API_KEY), "the API key was logged: {line}");
    }
}

#[tokio::test]
async fn a_collector_answering_503_then_200_loses_no_batch() {
    let answered = Arc::new(AtomicUsize::new(0));
    let n = answered.clone();
    // Two refusals with Retry-After (the exporter waits and tries again), then success.
    let col = Upstream::start(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::ok("").status(503).header("retry-after", "1")
        } else {
            Reply::ok("").header("content-type", "application/x-protobuf")
        }
    });
    let up = Upstream::start_ok();
    let gw = GatewayProcess::start_with_env(
        &config(
            &up.url(),
            &format!(
                r#"{{"endpoint":"{}","sampling_rate":1.0,"export_timeout":"15s"}}"#,
                col.url()
            ),
        ),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let c = client();
    for i in 0..5 {
        let res = c.get(gw.url(&format!("/users/{i}"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let mut last = String::new();
    let exported = wait_until(Duration::from_secs(30), || {
        last = admin_get(&gw, "/_kairos/metrics");
        metric(&last, "kairos_tracing_spans_exported_total", &[]) == Some(10.0)
    });
    assert!(exported, "spans not exported after the 503s:\n{last}");
    assert_eq!(
        metric(
            &last,
            "kairos_tracing_spans_dropped_total",
            &[("reason", "export_failed")]
        ),
        Some(0.0)
    );
    let requests = col.requests();
    assert!(requests.len() >= 3, "no retry: {} requests", requests.len());
    // What the collector accepted (the answers after the two refusals) holds every span.
    let accepted: HashSet<Vec<u8>> = requests[2..]
        .iter()
        .flat_map(|r| decode(r).resource_spans)
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .map(|s| s.span_id)
        .collect();
    assert_eq!(accepted.len(), 10);
}

fn load(tracing: &str, env: &[(&str, &str)]) -> Result<kairos_rs::config::Config, String> {
    let text = config("http://127.0.0.1:9", tracing);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    load_str_with_env(&text, "t.json", Path::new("."), &lookup).map_err(|e| e.to_string())
}

#[test]
fn otel_variables_apply_beneath_the_config_keys() {
    let t = |tracing: &str, env: &[(&str, &str)]| {
        load(tracing, env)
            .unwrap_or_else(|e| panic!("{e}"))
            .tracing
            .expect("tracing on")
    };
    // OTEL_EXPORTER_OTLP_ENDPOINT is a base URL; the signal's own variable is used as is.
    let base = [(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://otel.internal:4318/base/",
    )];
    assert_eq!(
        t("{}", &base).endpoint,
        "http://otel.internal:4318/base/v1/traces"
    );
    let both = [
        base[0],
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://traces.internal/in",
        ),
    ];
    assert_eq!(t("{}", &both).endpoint, "http://traces.internal/in");
    // `tracing.endpoint` keeps its meaning (a base URL) and wins.
    assert_eq!(
        t(r#"{"endpoint":"http://cfg:4318"}"#, &both).endpoint,
        "http://cfg:4318/v1/traces"
    );
    assert_eq!(t("{}", &[]).endpoint, "http://127.0.0.1:4318/v1/traces");

    let sampler = [
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
    ];
    let s = t("{}", &sampler);
    assert_eq!((s.sampling_rate, s.parent_based), (0.5, false));
    assert_eq!(t(r#"{"sampling_rate":0.2}"#, &sampler).sampling_rate, 0.2);
    let d = t("{}", &[]);
    assert_eq!((d.sampling_rate, d.parent_based), (0.1, true));

    let named = [("OTEL_SERVICE_NAME", "from-env")];
    assert_eq!(t("{}", &named).service_name, "from-env");
    assert_eq!(t(r#"{"service_name":"cfg"}"#, &named).service_name, "cfg");
    let attrs = [("OTEL_RESOURCE_ATTRIBUTES", "service.name=svc,team=a%2Cb")];
    let r = t("{}", &attrs);
    assert_eq!(r.service_name, "svc");
    assert_eq!(r.resource_attributes, vec![("team".into(), "a,b".into())]);

    let env = [
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "authorization=Bearer%20abc",
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "ignored=1"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
    ];
    let h = t(r#"{"headers":{"x-extra":"1"}}"#, &env);
    assert_eq!(
        h.headers,
        vec![
            ("authorization".into(), "Bearer abc".into()),
            ("x-extra".into(), "1".into())
        ]
    );
    assert!(h.gzip);
    assert_eq!(h.export_timeout, Duration::from_millis(2500));
    let c = t(r#"{"compression":"none","export_timeout":"3s"}"#, &env);
    assert!(!c.gzip);
    assert_eq!(c.export_timeout, Duration::from_secs(3));
    // The config's header of the same name wins.
    let over = t(r#"{"headers":{"Authorization":"Bearer cfg"}}"#, &env);
    assert_eq!(
        over.headers,
        vec![("Authorization".into(), "Bearer cfg".into())]
    );
    // Header values are not in Debug output.
    assert!(!format!("{over:?}").contains("Bearer cfg"));
}

#[test]
fn bad_otlp_settings_name_path_line_and_hint() {
    // OTLP/JSON is not built in (gRPC is: tests/otlp_grpc.rs).
    let err = load(r#"{"protocol":"http/json"}"#, &[]).unwrap_err();
    // The tracing section starts on line 5 of the config; the key is named with its hint.
    assert!(
        err.contains("t.json:5:31: tracing.protocol: protocol `http/json`"),
        "{err}"
    );
    assert!(err.contains("use \"http/protobuf\""), "{err}");
    let err = load(r#"{"compression":"gzp"}"#, &[]).unwrap_err();
    assert!(err.contains("tracing.compression"), "{err}");
    assert!(err.contains("did you mean"), "{err}");
    let err = load("{}", &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
    assert!(err.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{err}");
    let err = load("{}", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x")]).unwrap_err();
    assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
    // A bad header value is reported without the value.
    let err = load(r#"{"headers":{"x-api-key":"secret\nvalue"}}"#, &[]).unwrap_err();
    assert!(err.contains("tracing.headers.x-api-key"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    let err = load("{}", &[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]).unwrap_err();
    assert!(err.contains("OTEL_EXPORTER_OTLP_HEADERS: entry 1"), "{err}");
    // A CA file that is missing, or holds no certificate, is named with a hint.
    let err = load(r#"{"ca_file":"/nonexistent/ca.pem"}"#, &[]).unwrap_err();
    assert!(
        err.contains("tracing.ca_file: cannot read /nonexistent/ca.pem"),
        "{err}"
    );
    assert!(err.contains("PEM file with the CA certificate"), "{err}");
    let empty = tempfile::NamedTempFile::new().unwrap();
    let path = empty.path().to_str().unwrap().to_string();
    let err = load("{}", &[("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &path)]).unwrap_err();
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE:")
            && err.contains("no PEM certificate"),
        "{err}"
    );
}

/// Starts a gateway exporting to a fresh collector with this `tracing` section and
/// environment, sends two requests, stops it, and returns what the collector received.
async fn export_with(tracing_extra: &str, env: &[(&str, &str)]) -> Vec<Recorded> {
    let col = Upstream::start(|_| Reply::ok("").header("content-type", "application/x-protobuf"));
    let up = Upstream::start_ok();
    let tracing = format!(
        r#"{{"endpoint":"{}","sampling_rate":1.0{tracing_extra}}}"#,
        col.url()
    );
    let mut gw = GatewayProcess::start_with_env(&config(&up.url(), &tracing), env);
    let c = client();
    for i in 0..2 {
        let res = c.get(gw.url(&format!("/users/{i}"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert!(gw.stop());
    let requests = col.requests();
    assert!(!requests.is_empty(), "nothing exported");
    requests
}

#[tokio::test]
async fn compression_none_in_the_config_wins_over_gzip_in_the_environment() {
    let env = [("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")];
    // The config says none: the collector gets plain protobuf, whatever the variable says.
    let plain = export_with(r#","compression":"none""#, &env).await;
    let mut spans = 0;
    for req in &plain {
        assert_eq!(
            req.header("content-encoding"),
            None,
            "gzipped against the config"
        );
        // Decodes as protobuf without gunzipping.
        let export = ExportTraceServiceRequest::decode(req.body.as_slice()).expect("plain OTLP");
        spans += export
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum::<usize>();
    }
    assert_eq!(spans, 4);
    // Without the key the variable applies.
    let gzipped = export_with("", &env).await;
    for req in &gzipped {
        assert_eq!(req.header("content-encoding"), Some("gzip"));
        assert!(!decode(req).resource_spans.is_empty());
    }
}

/// An OTLP/HTTP collector over TLS with a self-signed certificate for 127.0.0.1: the PEM of
/// its certificate (the CA to trust), its address, and the bodies it received.
fn https_collector() -> (
    tempfile::TempDir,
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use http_body_util::BodyExt;
    let (dir, _, cfg) = self_signed_tls(&["127.0.0.1"], &[]);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = bodies.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((s, _)) = l.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let ok = req.uri().path() == "/v1/traces";
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                if ok {
                                    seen.lock().unwrap().push(body.to_vec());
                                }
                                let mut res = http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::new(),
                                ));
                                if !ok {
                                    *res.status_mut() = http::StatusCode::NOT_FOUND;
                                }
                                Ok::<_, std::convert::Infallible>(res)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    (dir, addr, bodies)
}

/// OTLP/HTTP to an https collector with a private CA, trusted through `tracing.ca_file`.
#[tokio::test]
async fn https_collector_with_a_private_ca() {
    let (dir, addr, bodies) = https_collector();
    let up = Upstream::start_ok();
    let tracing = format!(
        r#"{{"endpoint":"https://127.0.0.1:{}","sampling_rate":1.0,"ca_file":"{}"}}"#,
        addr.port(),
        dir.path().join("ca.pem").display()
    );
    let mut gw = GatewayProcess::start(&config(&up.url(), &tracing));
    let res = client().get(gw.url("/users/5")).send().await.unwrap();
    let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    assert!(gw.stop());
    let got: Vec<String> = bodies
        .lock()
        .unwrap()
        .iter()
        .flat_map(|b| {
            ExportTraceServiceRequest::decode(b.as_slice())
                .expect("OTLP protobuf")
                .resource_spans
        })
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .map(|s| s.trace_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    assert!(got.contains(&trace), "{got:?}");
}
