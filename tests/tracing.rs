//! OpenTelemetry tracing end to end: the real binary exports OTLP/HTTP to a receiver on
//! loopback, which decodes the spans with opentelemetry-proto; the upstream records the
//! `traceparent` it was sent.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::collections::HashMap;
use std::time::Duration;
use support::*;

const TOKEN: &str = "tracing-test-token-0123456789";
const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// A gateway whose callers on loopback are trusted proxies (their trace context is continued).
fn config(up: &str, tracing: &str) -> String {
    config_in(up, tracing, r#","trusted_proxies":["127.0.0.1/32"]"#)
}

fn config_in(up: &str, tracing: &str, server_extra: &str) -> String {
    format!(
        r#"{{"version":1,"server":{{"workers":1{server_extra}}},
        "admin":{{"token":"{TOKEN}"}},
        "upstreams":{{"users":{{"servers":[{{"url":"{up}"}}]}},
                     "dead":{{"servers":[{{"url":"http://127.0.0.1:9"}}]}}}},
        "routes":[{{"name":"get-user","path":"/users/{{id}}","upstream":"users"}},
                  {{"name":"gone","path":"/gone","upstream":"dead"}}],
        "logging":{{"access_log":true}},
        "tracing":{tracing}}}"#
    )
}

/// An OTLP/HTTP collector: a recording upstream that answers 200 with an empty export
/// response (a valid protobuf message).
fn collector() -> Upstream {
    Upstream::start(|_| Reply::ok("").header("content-type", "application/x-protobuf"))
}

/// Every span the collector received, with its resource's service.name.
fn spans(collector: &Upstream) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for req in collector.requests() {
        assert_eq!(req.target, "/v1/traces");
        assert_eq!(req.header("content-type"), Some("application/x-protobuf"));
        let export = ExportTraceServiceRequest::decode(req.body.as_ref()).expect("OTLP protobuf");
        for rs in export.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push((service.clone(), span));
                }
            }
        }
    }
    out
}

fn attrs(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// (version, trace id, parent id, flags) of a traceparent header.
fn split_traceparent(v: &str) -> (String, String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "{v}");
    (p[0].into(), p[1].into(), p[2].into(), p[3].into())
}

#[tokio::test]
async fn spans_are_exported_linked_and_propagated() {
    let col = collector();
    let up = Upstream::start_ok();
    let mut gw = GatewayProcess::start(&config(
        &up.url(),
        &format!(
            r#"{{"endpoint":"{}","sampling_rate":1.0,"service_name":"edge-gw"}}"#,
            col.url()
        ),
    ));
    let c = client();

    // 1. A caller that sampled its trace: we continue it.
    let res = c
        .get(gw.url("/users/42?x=1&token=s3cret-value&flag"))
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .header("x-request-id", "req-traced-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-trace-id"], PARENT_TRACE);
    let seen = up.last();
    let (ver, trace, parent, flags) = split_traceparent(seen.header("traceparent").unwrap());
    assert_eq!(
        (ver.as_str(), trace.as_str(), flags.as_str()),
        ("00", PARENT_TRACE, "01")
    );
    assert_ne!(
        parent, PARENT_SPAN,
        "the upstream's parent is our client span"
    );
    assert_eq!(seen.header("tracestate"), Some("vendor=abc"));
    let client_span_id = parent;

    // 2. No traceparent: a new trace, recorded (sampling_rate 1.0).
    let res = c.get(gw.url("/users/7")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let new_trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    assert_eq!(new_trace.len(), 32);
    let (_, trace, _, flags) = split_traceparent(up.last().header("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (new_trace.as_str(), "01"));

    // 3. A caller that did not sample: nothing recorded, the decision and trace id go on.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let res = c
        .get(gw.url("/users/8"))
        .header(
            "traceparent",
            format!("00-{unsampled_trace}-b7ad6b7169203331-00"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-trace-id"], unsampled_trace);
    let (_, trace, _, flags) = split_traceparent(up.last().header("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (unsampled_trace, "00"));

    // 4. No route: a server span with the 404, no client span.
    let res = c
        .get(gw.url("/nowhere"))
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["x-trace-id"], PARENT_TRACE);

    // 5. An upstream that refuses connections: 502, the client span says why.
    let failed_trace = "11111111111111111111111111111111";
    let res = c
        .get(gw.url("/gone"))
        .header("traceparent", format!("00-{failed_trace}-{PARENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);

    // A clean stop exports what is queued.
    assert!(gw.stop());
    let spans = spans(&col);
    assert!(spans.iter().all(|(svc, _)| svc == "edge-gw"));
    let of_trace = |t: &str| -> Vec<&Span> {
        spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| hex(&s.trace_id) == t)
            .collect()
    };
    assert!(
        of_trace(unsampled_trace).is_empty(),
        "an unsampled trace was exported"
    );

    let traced = of_trace(PARENT_TRACE);
    let server: Vec<&&Span> = traced
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    let client_spans: Vec<&&Span> = traced
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert_eq!(server.len(), 2, "{traced:#?}");
    assert_eq!(client_spans.len(), 1, "{traced:#?}");
    let routed = server
        .iter()
        .find(|s| attrs(s).contains_key("http.route"))
        .expect("routed server span");
    assert_eq!(routed.name, "GET /users/{id}");
    assert_eq!(hex(&routed.parent_span_id), PARENT_SPAN);
    // OTLP span flags: sampled, and whether the parent is remote (the caller) or local.
    assert_eq!(routed.flags, 0x301);
    let a = attrs(routed);
    for (k, v) in [
        ("http.request.method", "GET"),
        ("url.path", "/users/42"),
        // Names only (base::redact): a query value may be a credential.
        ("url.query", "x=REDACTED&token=REDACTED&flag"),
        ("url.scheme", "http"),
        ("http.route", "/users/{id}"),
        ("http.response.status_code", "200"),
        ("kairos.route", "get-user"),
        ("kairos.upstream", "users"),
        ("kairos.request_id", "req-traced-1"),
        ("client.address", "127.0.0.1"),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "{k} in {a:?}");
    }
    let cs = client_spans[0];
    assert_eq!(cs.name, "GET");
    assert_eq!(hex(&cs.span_id), client_span_id);
    assert_eq!(
        cs.parent_span_id, routed.span_id,
        "client span is the server span's child"
    );
    let a = attrs(cs);
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["server.address"], "127.0.0.1");
    assert_eq!(
        a["url.full"],
        format!("{}/users/42?x=REDACTED&token=REDACTED&flag", up.url())
    );
    // The upstream itself still got the query as sent.
    assert!(up
        .requests()
        .iter()
        .any(|r| r.target == "/users/42?x=1&token=s3cret-value&flag"));
    // No query value anywhere in what was exported.
    for req in col.requests() {
        assert!(
            !String::from_utf8_lossy(&req.body).contains("s3cret-value"),
            "a query value was exported"
        );
    }
    assert!(cs.start_time_unix_nano >= routed.start_time_unix_nano);
    assert!(cs.end_time_unix_nano <= routed.end_time_unix_nano);
    let unrouted = server
        .iter()
        .find(|s| !attrs(s).contains_key("http.route"))
        .unwrap();
    assert_eq!(attrs(unrouted)["http.response.status_code"], "404");
    assert_eq!(
        unrouted.name, "GET",
        "a span never routed is named after its method"
    );

    let fresh = of_trace(&new_trace);
    assert_eq!(fresh.len(), 2);
    let root = fresh
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert!(
        root.parent_span_id.is_empty(),
        "a new trace's server span is a root"
    );

    let failed = of_trace(failed_trace);
    let failed_client = failed
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("client span of the failed attempt");
    assert_eq!(attrs(failed_client)["error.type"], "connect");
    assert_eq!(failed_client.status.as_ref().map(|s| s.code), Some(2));
    let failed_server = failed
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(attrs(failed_server)["http.response.status_code"], "502");
    assert_eq!(failed_server.status.as_ref().map(|s| s.code), Some(2));

    // Logs carry the same ids.
    let logs = gw.logs();
    let warning = logs
        .iter()
        .find(|l| l.contains("upstream request failed"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .expect("warning for the failed upstream attempt");
    assert_eq!(warning["trace_id"], failed_trace);
    let access = logs
        .iter()
        .filter(|l| l.contains("kairos::access"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["request_id"] == "req-traced-1")
        .expect("access log line");
    assert_eq!(access["trace_id"], PARENT_TRACE);
    assert_eq!(access["span_id"].as_str().unwrap(), hex(&routed.span_id));
}

#[tokio::test]
async fn sampling_zero_records_nothing_but_still_propagates() {
    let col = collector();
    let up = Upstream::start_ok();
    let mut gw = GatewayProcess::start(&config(
        &up.url(),
        &format!(r#"{{"endpoint":"{}","sampling_rate":0.0}}"#, col.url()),
    ));
    let c = client();
    for _ in 0..20 {
        let res = c.get(gw.url("/users/1")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
        let (_, t, _, flags) = split_traceparent(up.last().header("traceparent").unwrap());
        assert_eq!((t.as_str(), flags.as_str()), (trace.as_str(), "00"));
    }
    assert!(gw.stop());
    assert!(spans(&col).is_empty());
}

#[tokio::test]
async fn only_trusted_callers_continue_a_trace_or_force_sampling() {
    let up = Upstream::start_ok();
    let forced = "5bf92f3577b34da6a3ce929d0e0e4736";
    let send = |gw: &GatewayProcess| {
        let url = gw.url("/users/1");
        async move {
            let res = client()
                .get(url)
                .header("traceparent", format!("00-{forced}-{PARENT_SPAN}-01"))
                .header("tracestate", "vendor=abc")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.headers()["x-trace-id"].to_str().unwrap().to_string()
        }
    };

    // 1. An untrusted client's sampled traceparent at sampling 0: a new trace, not recorded;
    // its tracestate (of the other trace) is not sent upstream.
    let col = collector();
    let sampling_zero = format!(r#"{{"endpoint":"{}","sampling_rate":0.0}}"#, col.url());
    let mut gw = GatewayProcess::start(&config_in(&up.url(), &sampling_zero, ""));
    let own = send(&gw).await;
    assert_ne!(own, forced, "an untrusted client chose the trace id");
    let seen = up.last();
    let (_, t, _, flags) = split_traceparent(seen.header("traceparent").unwrap());
    assert_eq!((t.as_str(), flags.as_str()), (own.as_str(), "00"));
    assert_eq!(seen.header("tracestate"), None);
    assert!(gw.stop());
    assert!(spans(&col).is_empty(), "an untrusted client forced a span");

    // 2. The same request from a trusted proxy: continued and recorded.
    let col = collector();
    let sampling_zero = format!(r#"{{"endpoint":"{}","sampling_rate":0.0}}"#, col.url());
    let mut gw = GatewayProcess::start(&config(&up.url(), &sampling_zero));
    assert_eq!(send(&gw).await, forced);
    assert_eq!(up.last().header("tracestate"), Some("vendor=abc"));
    assert!(gw.stop());
    let recorded = spans(&col);
    let server = recorded
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("the trusted proxy's sampled trace is recorded");
    assert_eq!(hex(&server.trace_id), forced);
    assert_eq!(hex(&server.parent_span_id), PARENT_SPAN);
    assert!(server.links.is_empty());

    // 3. trust_incoming "none" (even from a trusted proxy), sampling 1.0: a new root trace
    // that keeps the caller's context as a span link.
    let col = collector();
    let none = format!(
        r#"{{"endpoint":"{}","sampling_rate":1.0,"trust_incoming":"none"}}"#,
        col.url()
    );
    let mut gw = GatewayProcess::start(&config(&up.url(), &none));
    let own = send(&gw).await;
    assert_ne!(own, forced);
    assert!(gw.stop());
    let recorded = spans(&col);
    let server = recorded
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("sampling 1.0 records the new trace");
    assert_eq!(hex(&server.trace_id), own);
    assert!(server.parent_span_id.is_empty(), "a new trace's root");
    assert_eq!(server.links.len(), 1, "{server:#?}");
    assert_eq!(hex(&server.links[0].trace_id), forced);
    assert_eq!(hex(&server.links[0].span_id), PARENT_SPAN);

    // 4. A bad value is a config error with a hint.
    let bad = config(&up.url(), r#"{"trust_incoming":"trusted-proxies"}"#);
    let err = kairos_rs::config::load_str(&bad, "t.json", std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tracing.trust_incoming"), "{err}");
    assert!(err.contains("trusted_proxies"), "{err}");
}

#[tokio::test]
async fn sampling_rate_is_honoured_for_new_traces() {
    let col = collector();
    let up = Upstream::start_ok();
    let mut gw = GatewayProcess::start(&config(
        &up.url(),
        &format!(r#"{{"endpoint":"{}","sampling_rate":0.25}}"#, col.url()),
    ));
    let c = client();
    let mut sampled = 0;
    for _ in 0..400 {
        c.get(gw.url("/users/1")).send().await.unwrap();
        let (_, _, _, flags) = split_traceparent(up.last().header("traceparent").unwrap());
        sampled += usize::from(flags == "01");
    }
    assert!(gw.stop());
    // Binomial(400, 0.25): mean 100, sd ~8.7; 60..140 is more than 4 sd either way.
    assert!((60..=140).contains(&sampled), "sampled {sampled} of 400");
    let servers = spans(&col)
        .iter()
        .filter(|(_, s)| s.kind == SpanKind::Server as i32)
        .count();
    assert_eq!(servers, sampled);
}

#[tokio::test]
async fn collector_down_never_fails_requests_and_drops_are_counted() {
    // A port that refuses connections: every export fails at once.
    let dead = refused_addr();
    let dead_url = format!("http://{}", dead.addr);
    let up = Upstream::start_ok();
    let gw = GatewayProcess::start_with_env(
        &config(
            &up.url(),
            &format!(r#"{{"endpoint":"{dead_url}","sampling_rate":1.0,"export_timeout":"1s"}}"#),
        ),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let c = client();
    for i in 0..50 {
        let res = c
            .get(gw.url(&format!("/users/{i}")))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let mut last = String::new();
    let counted = wait_until(Duration::from_secs(20), || {
        let addr = gw.addr;
        last = std::thread::spawn(move || {
            let req = format!(
                "GET /_kairos/metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
            );
            raw_exchange(addr, req.as_bytes(), Duration::from_secs(5))
        })
        .join()
        .unwrap();
        metric(
            &last,
            "kairos_tracing_spans_dropped_total",
            &[("reason", "export_failed")],
        ) == Some(100.0)
    });
    assert!(counted, "dropped spans not counted:\n{last}");
    assert_eq!(
        metric(&last, "kairos_tracing_spans_exported_total", &[]),
        Some(0.0)
    );
}

#[test]
fn old_jaeger_endpoint_is_accepted_with_a_warning() {
    let text = r#"{"version":1,"upstreams":{"u":{"servers":[{"url":"http://127.0.0.1:9"}]}},
      "routes":[{"path":"/","upstream":"u"}],
      "tracing":{"jaeger_endpoint":"http://jaeger.internal:14268/api/traces"}}"#;
    let cfg = kairos_rs::config::load_str(text, "test.json", std::path::Path::new(".")).unwrap();
    let t = cfg.tracing.expect("tracing on");
    assert_eq!(t.endpoint, "http://jaeger.internal:4318/v1/traces");
    assert_eq!(cfg.warnings.len(), 1);
    let w = cfg.warnings[0].to_string();
    assert!(w.starts_with("3:18: tracing.jaeger_endpoint: "), "{w}");
    assert!(w.contains("deprecated"), "{w}");
    assert!(
        w.contains(r#""endpoint": "http://jaeger.internal:4318""#),
        "{w}"
    );

    let bad = text.replace(
        r#""jaeger_endpoint""#,
        r#""sampling_rate":2,"jaeger_endpoint""#,
    );
    let err = kairos_rs::config::load_str(&bad, "test.json", std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tracing.sampling_rate: sampling_rate 2 is outside 0.0..=1.0"),
        "{err}"
    );
}

/// The string and int attributes of an exported span, and its status code.
fn ops_span<'a>(
    spans: &'a [(String, Span)],
    name: &str,
    outcome: &str,
) -> Option<&'a (String, Span)> {
    spans.iter().find(|(_, s)| {
        s.name == name && attrs(s).get("outcome").map(String::as_str) == Some(outcome)
    })
}

#[tokio::test]
async fn reloads_and_health_checks_are_exported_as_spans_with_their_trace_ids_in_the_logs() {
    let col = collector();
    let up = Upstream::start_ok();
    // Sampling 0: no request is recorded; the gateway's own operations are.
    let tracing = format!(
        r#"{{"endpoint":"{}","sampling_rate":0.0,"service_name":"edge-ops"}}"#,
        col.url()
    );
    let text = config(&up.url(), &tracing).replace(
        r#""users":{"servers":[{"url":"#,
        r#""users":{"health_check":{"path":"/health","interval":"1s","timeout":"500ms"},"servers":[{"url":"#,
    );
    assert!(text.contains("health_check"));
    let mut gw = GatewayProcess::start_with_env(&text, &[("OTEL_BSP_SCHEDULE_DELAY", "50")]);
    let c = client();
    for i in 0..5 {
        let res = c.get(gw.url(&format!("/users/{i}"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let post_reload = |gw: &GatewayProcess| {
        let addr = gw.addr;
        let req = format!(
            "POST /_kairos/config/reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        std::thread::spawn(move || raw_exchange(addr, req.as_bytes(), Duration::from_secs(10)))
            .join()
            .unwrap()
    };
    let answer = post_reload(&gw);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // An invalid file: the reload is refused, and its span says so.
    let path = gw.config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, "{\"version\": 1, \"routes\": [").unwrap();
    let answer = post_reload(&gw);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    std::fs::write(&path, good).unwrap();
    // A health check has run (the first within the interval).
    assert!(wait_until(Duration::from_secs(10), || up
        .requests()
        .iter()
        .any(|r| r.target == "/health")));
    assert!(gw.stop());

    let spans = spans(&col);
    // Only the gateway's own operations: the requests were not sampled.
    for (service, s) in &spans {
        assert_eq!(service, "edge-ops");
        assert!(
            ["config.reload", "health_check"].contains(&s.name.as_str()),
            "unexpected span {}",
            s.name
        );
        assert_eq!(s.kind, SpanKind::Internal as i32);
        assert!(
            s.parent_span_id.is_empty(),
            "an operation is a trace of its own"
        );
    }
    let (_, ok) = ops_span(&spans, "config.reload", "success").expect("a config.reload span");
    assert_eq!(attrs(ok)["trigger"], "api");
    assert_ne!(ok.status.as_ref().map_or(0, |s| s.code), 2);
    let (_, bad) = ops_span(&spans, "config.reload", "invalid").expect("the refused reload");
    assert_eq!(bad.status.as_ref().map(|s| s.code), Some(2), "error status");
    let (_, check) = ops_span(&spans, "health_check", "pass").expect("a health_check span");
    assert_eq!(attrs(check)["upstream"], "users");

    // The reload's log line carries the exported span's trace id.
    let trace = hex(&ok.trace_id);
    let line = gw
        .logs()
        .into_iter()
        .find(|l| l.contains("config reloaded"))
        .expect("a config reloaded line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(v["span"]["trace_id"], trace.as_str(), "{line}");
    assert_eq!(v["span"]["span_id"], hex(&ok.span_id).as_str(), "{line}");
    assert_eq!(v["span"]["name"], "config.reload");
}

#[tokio::test]
async fn a_jwks_fetch_is_a_span_and_its_failure_log_line_carries_the_trace_id() {
    let col = collector();
    let up = Upstream::start_ok();
    // An identity provider that fails: the fetch is recorded with an error status.
    let idp = Upstream::start(|_| Reply::ok("down").status(500));
    let tracing = format!(
        r#"{{"endpoint":"{}","sampling_rate":0.0,"service_name":"edge-ops"}}"#,
        col.url()
    );
    let text = config(&up.url(), &tracing).replace(
        r#""logging":"#,
        &format!(
            r#""jwt_validation":{{"algorithm":"RS256","jwks_url":"{}/jwks.json?key=secret"}},"logging":"#,
            idp.url()
        ),
    );
    let mut gw = GatewayProcess::start_with_env(&text, &[("OTEL_BSP_SCHEDULE_DELAY", "50")]);
    assert!(wait_until(Duration::from_secs(10), || idp.count() > 0));
    assert!(wait_until(Duration::from_secs(10), || gw
        .logs()
        .iter()
        .any(|l| l.contains("JWKS fetch failed"))));
    assert!(gw.stop());
    let spans = spans(&col);
    let (service, fetch) = ops_span(&spans, "jwks.fetch", "failed").expect("a jwks.fetch span");
    assert_eq!(service, "edge-ops");
    assert_eq!(
        fetch.status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );
    let url = &attrs(fetch)["url"];
    assert!(
        url.ends_with("/jwks.json") && !url.contains("secret"),
        "{url}"
    );
    let line = gw
        .logs()
        .into_iter()
        .find(|l| l.contains("JWKS fetch failed"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(
        v["span"]["trace_id"],
        hex(&fetch.trace_id).as_str(),
        "{line}"
    );
}

#[tokio::test]
async fn the_server_span_names_the_tenant() {
    let col = collector();
    let up = Upstream::start_ok();
    let mut v: serde_json::Value = serde_json::from_str(&config(
        &up.url(),
        &format!(r#"{{"endpoint":"{}","sampling_rate":1.0}}"#, col.url()),
    ))
    .unwrap();
    v["tenancy"] =
        serde_json::json!({"identify_by": ["header"], "quota_store": {"backend": "memory"}});
    v["tenants"] = serde_json::json!({"acme": {}});
    let gw = GatewayProcess::start_with_env(&v.to_string(), &[("OTEL_BSP_SCHEDULE_DELAY", "50")]);
    let c = client();
    let res = c
        .get(gw.url("/users/1"))
        .header("x-tenant-id", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = c.get(gw.url("/users/2")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let server_spans = |col: &Upstream| -> Vec<HashMap<String, String>> {
        spans(col)
            .iter()
            .filter(|(_, s)| s.kind == SpanKind::Server as i32)
            .map(|(_, s)| attrs(s))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || server_spans(&col).len() >= 2),
        "spans not exported"
    );
    let got = server_spans(&col);
    let tenants: Vec<Option<&str>> = got
        .iter()
        .map(|a| a.get("kairos.tenant").map(String::as_str))
        .collect();
    assert!(tenants.contains(&Some("acme")), "{got:?}");
    assert!(
        tenants.contains(&None),
        "a request without a tenant has no attribute"
    );
}
