//! Trace context propagators end to end (`tracing.propagators`, OTEL_PROPAGATORS): W3C trace
//! context and baggage by default, B3 single and multi-header as options. The upstream records
//! the headers it got; an in-test OTLP/HTTP collector decodes the spans with
//! opentelemetry-proto to show which parent the server span took.

mod support;

use kairos_rs::config::load_str_with_env;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::path::Path;
use support::*;

const TOKEN: &str = "propagation-test-token-0123456789";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

/// A gateway with one route; `trusted` makes loopback callers trusted proxies (their context
/// is continued).
fn config(up: &str, tracing: &str, trusted: bool) -> String {
    let trusted = if trusted {
        r#","trusted_proxies":["127.0.0.1/32"]"#
    } else {
        ""
    };
    format!(
        r#"{{"version":1,"server":{{"workers":1{trusted}}},
        "admin":{{"token":"{TOKEN}"}},
        "upstreams":{{"users":{{"servers":[{{"url":"{up}"}}]}}}},
        "routes":[{{"name":"get-user","path":"/users/{{id}}","upstream":"users"}}],
        "tracing":{tracing}}}"#
    )
}

fn collector() -> Upstream {
    Upstream::start(|_| Reply::ok("").header("content-type", "application/x-protobuf"))
}

fn server_spans(col: &Upstream) -> Vec<Span> {
    col.requests()
        .iter()
        .flat_map(|r| {
            ExportTraceServiceRequest::decode(r.body.as_slice())
                .expect("OTLP protobuf")
                .resource_spans
        })
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// (trace id, span id, flags) of a `traceparent`.
fn traceparent(v: &str) -> (String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "{v}");
    (p[1].into(), p[2].into(), p[3].into())
}

#[tokio::test]
async fn tracecontext_and_baggage_by_default() {
    let up = Upstream::start_ok();
    let col = collector();
    let tracing = format!(r#"{{"endpoint":"{}","sampling_rate":0.0}}"#, col.url());
    let mut gw = GatewayProcess::start(&config(&up.url(), &tracing, true));
    let c = client();

    // A trusted caller's context is continued and its baggage goes along: two headers are
    // joined into one, a malformed member is left out, well-formed ones are kept as sent.
    let res = c
        .get(gw.url("/users/1"))
        .header("traceparent", format!("00-{TRACE}-{SPAN}-01"))
        .header("baggage", "userId=alice,serverNode=DF%2028;ttl=60")
        .header("baggage", "bad key=1, tenant=t1")
        .header("b3", format!("{TRACE}-{SPAN}-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.last();
    let (trace, parent, flags) = traceparent(seen.header("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(parent, SPAN, "the upstream's parent is the gateway's span");
    assert_eq!(
        seen.header_all("baggage"),
        ["userId=alice,serverNode=DF%2028;ttl=60,tenant=t1"]
    );
    // B3 is not configured: its header passes through untouched.
    assert_eq!(
        seen.header("b3"),
        Some(format!("{TRACE}-{SPAN}-1").as_str())
    );
    assert_eq!(seen.header("x-b3-traceid"), None);

    // A malformed traceparent is no context: a new trace; the baggage of a context not
    // continued is not forwarded.
    let res = c
        .get(gw.url("/users/2"))
        .header("traceparent", format!("00-{TRACE}-{SPAN}-zz"))
        .header("baggage", "userId=mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let own = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    assert_ne!(own, TRACE);
    let seen = up.last();
    let (trace, _, _) = traceparent(seen.header("traceparent").unwrap());
    assert_eq!(trace, own);
    assert_eq!(seen.header("baggage"), None);
    assert!(gw.stop());
    // The sampled caller's trace was recorded (parent-based) with the caller's span as parent.
    let spans = server_spans(&col);
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(hex(&spans[0].trace_id), TRACE);
    assert_eq!(hex(&spans[0].parent_span_id), SPAN);

    // An untrusted caller: a new trace, and its baggage stays behind.
    let mut gw = GatewayProcess::start(&config(&up.url(), &tracing, false));
    let res = c
        .get(gw.url("/users/3"))
        .header("traceparent", format!("00-{TRACE}-{SPAN}-01"))
        .header("baggage", "userId=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.last();
    let (trace, _, _) = traceparent(seen.header("traceparent").unwrap());
    assert_ne!(trace, TRACE);
    assert_eq!(seen.header("baggage"), None);
    assert!(gw.stop());
}

#[tokio::test]
async fn b3_single_and_multi_are_read_and_written() {
    let up = Upstream::start_ok();
    let col = collector();
    // Sampling 0: only a caller's sampled flag records a trace.
    let tracing = format!(
        r#"{{"endpoint":"{}","sampling_rate":0.0,"propagators":["b3","b3multi"]}}"#,
        col.url()
    );
    let mut gw = GatewayProcess::start(&config(&up.url(), &tracing, true));
    let c = client();

    // 1. The single header, sampled, with a parent span id of its own.
    let res = c
        .get(gw.url("/users/1"))
        .header("b3", format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90"))
        .header(
            "traceparent",
            "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-trace-id"], TRACE);
    let seen = up.last();
    let b3: Vec<String> = seen
        .header("b3")
        .unwrap()
        .split('-')
        .map(String::from)
        .collect();
    assert_eq!(b3.len(), 3, "{b3:?}");
    assert_eq!((b3[0].as_str(), b3[2].as_str()), (TRACE, "1"));
    assert_ne!(b3[1], SPAN);
    assert_eq!(seen.header("x-b3-traceid"), Some(TRACE));
    assert_eq!(seen.header("x-b3-spanid"), Some(b3[1].as_str()));
    assert_eq!(seen.header("x-b3-sampled"), Some("1"));
    assert_eq!(seen.header("x-b3-parentspanid"), None);
    // W3C trace context is not configured: the caller's traceparent passes untouched.
    assert_eq!(
        seen.header("traceparent"),
        Some("00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
    );

    // 2. The multi-header form with a 64-bit trace id (the low half of a 128-bit one).
    let res = c
        .get(gw.url("/users/2"))
        .header("X-B3-TraceId", "a3ce929d0e0e4736")
        .header("X-B3-SpanId", SPAN)
        .header("X-B3-Sampled", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let padded = "0000000000000000a3ce929d0e0e4736";
    assert_eq!(res.headers()["x-trace-id"], padded);
    let seen = up.last();
    assert_eq!(seen.header("x-b3-traceid"), Some(padded));
    assert!(seen.header("b3").unwrap().starts_with(padded));

    // 3. Malformed B3 (upper-case hex): a new trace, unsampled at rate 0.
    let res = c
        .get(gw.url("/users/3"))
        .header("b3", format!("{}-{SPAN}-1", TRACE.to_uppercase()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let own = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    assert_ne!(own, TRACE);
    let seen = up.last();
    assert_eq!(
        seen.header("b3"),
        Some(format!("{own}-{}-0", &seen.header("x-b3-spanid").unwrap()).as_str())
    );
    assert_eq!(seen.header("x-b3-sampled"), Some("0"));
    assert!(gw.stop());

    // The two sampled callers' traces were recorded with their span as the remote parent.
    let mut spans: Vec<(String, String)> = server_spans(&col)
        .iter()
        .map(|s| (hex(&s.trace_id), hex(&s.parent_span_id)))
        .collect();
    spans.sort();
    assert_eq!(
        spans,
        [
            (padded.to_string(), SPAN.to_string()),
            (TRACE.to_string(), SPAN.to_string())
        ]
    );
}

fn load(tracing: &str, env: &[(&str, &str)]) -> Result<kairos_rs::config::Config, String> {
    let text = config("http://127.0.0.1:9", tracing, false);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    load_str_with_env(&text, "t.json", Path::new("."), &lookup).map_err(|e| e.to_string())
}

#[test]
fn propagators_from_config_and_otel_propagators() {
    use kairos_rs::config::model::Propagator::*;
    let p = |tracing: &str, env: &[(&str, &str)]| {
        load(tracing, env)
            .unwrap_or_else(|e| panic!("{e}"))
            .tracing
            .expect("tracing on")
            .propagators
    };
    assert_eq!(p("{}", &[]), [TraceContext, Baggage]);
    let env = [("OTEL_PROPAGATORS", "b3multi, tracecontext")];
    assert_eq!(p("{}", &env), [B3Multi, TraceContext]);
    // The config's key wins.
    assert_eq!(p(r#"{"propagators":["b3"]}"#, &env), [B3]);
    assert_eq!(p(r#"{"propagators":[]}"#, &env), []);
    assert_eq!(p("{}", &[("OTEL_PROPAGATORS", "none")]), []);

    let err = load(r#"{"propagators":["tracecontext","b4"]}"#, &[]).unwrap_err();
    assert!(
        err.contains("tracing.propagators[1]: unknown propagator `b4`"),
        "{err}"
    );
    assert!(err.contains("t.json:5:"), "{err}");
    assert!(err.contains("did you mean"), "{err}");
    let err = load("{}", &[("OTEL_PROPAGATORS", "tracecontext,jaeger")]).unwrap_err();
    assert!(
        err.contains("OTEL_PROPAGATORS: unknown propagator `jaeger`"),
        "{err}"
    );
    assert!(err.contains("not built in"), "{err}");
}
