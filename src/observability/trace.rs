//! OpenTelemetry tracing: a server span per request and a client span per upstream attempt,
//! exported over OTLP/HTTP in batches from a background thread.
//!
//! The sampling decision is made before any span exists, so a request that is not recorded
//! costs two random numbers and a 55-byte header: a request with a W3C `traceparent` follows
//! its caller's sampled flag (parent-based); a new trace is recorded with probability
//! `tracing.sampling_rate`. Either way the trace id goes upstream in `traceparent` (our own
//! span id as its parent id) and back to the client in `X-Trace-Id`, so logs and downstream
//! services correlate even for traces nobody records.
//!
//! Spans are made with the OpenTelemetry API directly, not through `tracing` spans and
//! tracing-opentelemetry: the proxy needs exact control of ids, start and end, and an
//! unsampled request must cost nothing beyond the decision.
//!
//! Export never blocks a request: ended spans go to the SDK's batch processor (a bounded
//! queue drained by its own thread). When the queue is full the span is dropped, and when the
//! collector fails the batch is dropped; both are counted in
//! `kairos_tracing_spans_dropped_total`.

use crate::config::model::TracingConfig;
use crate::observability::metrics::Metrics;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Spans waiting for export before new ones are dropped.
const MAX_PENDING_SPANS: usize = 4096;

/// The response header that carries the trace id to the client.
pub const TRACE_ID_HEADER: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("x-trace-id");
/// W3C trace context, sent upstream.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The tracer of one runtime.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    sampling_rate: f64,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("sampling_rate", &self.sampling_rate)
            .finish()
    }
}

impl Tracing {
    /// Builds the exporter and its batch thread.
    pub fn new(cfg: &TracingConfig, metrics: &Metrics) -> Result<Self, String> {
        // The exporter's HTTP client (reqwest) takes the process's default TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint_and_timeout(&cfg.endpoint, cfg.export_timeout)
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
        let pending = Arc::new(AtomicUsize::new(0));
        let exporter = CountingExporter {
            inner: exporter,
            pending: pending.clone(),
            exported: metrics.spans_exported.clone(),
            failed: metrics.spans_dropped.with_label_values(&["export_failed"]),
        };
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(MAX_PENDING_SPANS * 2)
                    .build(),
            )
            .build();
        let processor = BoundedProcessor {
            inner: batch,
            pending,
            queue_full: metrics.spans_dropped.with_label_values(&["queue_full"]),
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("kairos-rs");
        Ok(Tracing {
            provider,
            tracer,
            sampling_rate: cfg.sampling_rate,
        })
    }

    /// Decides whether to record this request and, if so, starts its server span.
    pub fn start(&self, req: &actix_web::HttpRequest, request_id: &str) -> RequestTrace {
        let parent = req
            .headers()
            .get("traceparent")
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let sampled = match &parent {
            Some(p) => p.is_sampled(),
            None => self.sampling_rate > 0.0 && fastrand::f64() < self.sampling_rate,
        };
        if !sampled {
            let trace_id = parent
                .as_ref()
                .map_or_else(random_trace_id, |p| p.trace_id());
            return RequestTrace {
                trace_id,
                span_id: random_span_id(),
                server: None,
                client: None,
            };
        }
        let parent_cx = match parent {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let method = req.method().as_str();
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.path", req.path().to_string()),
            KeyValue::new(
                "url.scheme",
                if req.app_config().secure() {
                    "https"
                } else {
                    "http"
                },
            ),
            KeyValue::new("kairos.request_id", request_id.to_string()),
        ];
        if !req.query_string().is_empty() {
            attributes.push(KeyValue::new("url.query", req.query_string().to_string()));
        }
        if let Some(peer) = req.peer_addr() {
            attributes.push(KeyValue::new("client.address", peer.ip().to_string()));
        }
        let span = self.tracer.build_with_context(
            self.tracer
                .span_builder(method.to_string())
                .with_kind(SpanKind::Server)
                .with_attributes(attributes),
            &parent_cx,
        );
        let cx = Context::new().with_span(span);
        let sc = cx.span().span_context().clone();
        RequestTrace {
            trace_id: sc.trace_id(),
            span_id: sc.span_id(),
            server: Some(cx),
            client: None,
        }
    }

    /// Exports what is queued and stops the batch thread (blocks up to the export timeout).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "tracer shutdown");
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        // Shutting down waits for the last export: never on the thread that drops us (it may
        // be a worker finishing a request after a reload).
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("kairos-otel-shutdown".into())
            .spawn(move || {
                let _ = provider.shutdown();
            });
    }
}

/// The tracing state of one request.
pub struct RequestTrace {
    pub trace_id: TraceId,
    /// The server span's id, or one of our own when the request is not recorded; it is the
    /// parent id of the `traceparent` sent upstream when no client span is recorded.
    pub span_id: SpanId,
    /// The server span, when recording.
    server: Option<Context>,
    /// Boxed: an SDK span is ~300 bytes, and this struct lives in every request's future.
    client: Option<Box<opentelemetry_sdk::trace::Span>>,
}

impl RequestTrace {
    pub fn is_recording(&self) -> bool {
        self.server.is_some()
    }

    /// Names the server span after the matched route.
    pub fn routed(&self, method: &str, template: &str, route_name: &str) {
        if let Some(cx) = &self.server {
            let span = cx.span();
            span.update_name(format!("{method} {template}"));
            span.set_attribute(KeyValue::new("http.route", template.to_string()));
            span.set_attribute(KeyValue::new("kairos.route", route_name.to_string()));
        }
    }

    /// Starts a client span for an upstream attempt (when recording) and returns the
    /// `traceparent` to send upstream.
    pub fn start_attempt(
        &mut self,
        tracing: &Tracing,
        method: &str,
        url: &str,
        authority: &http::uri::Authority,
        upstream: &str,
    ) -> http::HeaderValue {
        let Some(cx) = &self.server else {
            return traceparent(self.trace_id, self.span_id, false);
        };
        cx.span()
            .set_attribute(KeyValue::new("kairos.upstream", upstream.to_string()));
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("server.address", authority.host().to_string()),
            KeyValue::new("url.full", url.to_string()),
        ];
        if let Some(port) = authority.port_u16() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        let span = tracing.tracer.build_with_context(
            tracing
                .tracer
                .span_builder(method.to_string())
                .with_kind(SpanKind::Client)
                .with_attributes(attributes),
            cx,
        );
        use opentelemetry::trace::Span as _;
        let value = traceparent(self.trace_id, span.span_context().span_id(), true);
        if let Some(mut old) = self.client.replace(Box::new(span)) {
            old.end();
        }
        value
    }

    /// Records the outcome of the current upstream attempt.
    pub fn attempt_result(&mut self, status: Option<u16>, error: Option<&'static str>) {
        use opentelemetry::trace::Span as _;
        let Some(span) = &mut self.client else { return };
        if let Some(s) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
            if s >= 500 {
                span.set_attribute(KeyValue::new("error.type", s.to_string()));
                span.set_status(Status::error(""));
            }
        }
        if let Some(e) = error {
            span.set_attribute(KeyValue::new("error.type", e));
            span.set_status(Status::error(e));
        }
    }

    /// Ends the spans: the client span first, then the server span with the final status.
    pub fn finish(&mut self, status: u16) {
        use opentelemetry::trace::Span as _;
        if let Some(mut span) = self.client.take() {
            span.end();
        }
        if let Some(cx) = self.server.take() {
            let span = cx.span();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
                span.set_status(Status::error(""));
            }
            span.end();
        }
    }

    /// The trace id and our span id in lower-case hex, for logs.
    pub fn ids_hex(&self) -> ([u8; 32], [u8; 16]) {
        let mut t = [0u8; 32];
        let mut s = [0u8; 16];
        hex_into(&self.trace_id.to_bytes(), &mut t);
        hex_into(&self.span_id.to_bytes(), &mut s);
        (t, s)
    }

    /// The `X-Trace-Id` response header value.
    pub fn trace_id_header(&self) -> Option<actix_web::http::header::HeaderValue> {
        let mut t = [0u8; 32];
        hex_into(&self.trace_id.to_bytes(), &mut t);
        actix_web::http::header::HeaderValue::from_bytes(&t).ok()
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        // A request dropped before it finished (client gone): end what was started.
        if self.server.is_some() {
            self.finish(499);
        }
    }
}

fn random_trace_id() -> TraceId {
    TraceId::from_bytes(fastrand::u128(1..).to_be_bytes())
}

fn random_span_id() -> SpanId {
    SpanId::from_bytes(fastrand::u64(1..).to_be_bytes())
}

/// Writes `bytes` as lower-case hex into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
}

/// A W3C `traceparent` header: `00-<trace id>-<parent id>-<flags>`.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> http::HeaderValue {
    let mut buf = [b'-'; 55];
    buf[0] = b'0';
    buf[1] = b'0';
    hex_into(&trace_id.to_bytes(), &mut buf[3..35]);
    hex_into(&span_id.to_bytes(), &mut buf[36..52]);
    buf[53] = b'0';
    buf[54] = if sampled { b'1' } else { b'0' };
    http::HeaderValue::from_bytes(&buf).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// Parses a W3C `traceparent` (trace-context level 1 and later versions' first fields).
/// Invalid values (bad hex, upper case, all-zero ids, version ff) are `None`: a new trace.
pub fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
        if s.len() != 2 * N {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
        }
        Some(out)
    }
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let [version] = hex::<1>(&v[0..2])?;
    // Version 00 has exactly these fields; a later version may append more after a dash.
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = TraceId::from_bytes(hex::<16>(&v[3..35])?);
    let span_id = SpanId::from_bytes(hex::<8>(&v[36..52])?);
    let [flags] = hex::<1>(&v[53..55])?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::NONE,
    ))
}

/// Drops spans once `MAX_PENDING_SPANS` wait for export, counting them, so the batch
/// processor's own queue (twice as large) never overflows silently.
#[derive(Debug)]
struct BoundedProcessor {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    queue_full: prometheus::IntCounter,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_SPANS {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.queue_full.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what the collector accepted and what was lost with a failed export.
struct CountingExporter<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    exported: prometheus::IntCounter,
    failed: prometheus::IntCounter,
}

impl<E> std::fmt::Debug for CountingExporter<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CountingExporter")
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(n, Ordering::Relaxed);
        match &result {
            Ok(()) => self.exported.inc_by(n as u64),
            Err(e) => {
                self.failed.inc_by(n as u64);
                tracing::debug!(error = %e, spans = n, "span export failed");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The builder call for endpoint and timeout (a trait method of opentelemetry-otlp).
trait EndpointAndTimeout {
    fn with_endpoint_and_timeout(self, endpoint: &str, timeout: Duration) -> Self;
}

impl<T: opentelemetry_otlp::WithExportConfig> EndpointAndTimeout for T {
    fn with_endpoint_and_timeout(self, endpoint: &str, timeout: Duration) -> Self {
        self.with_endpoint(endpoint).with_timeout(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_rejects() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(good).unwrap();
        assert!(sc.is_sampled());
        assert_eq!(
            traceparent(sc.trace_id(), sc.span_id(), true).as_bytes(),
            good
        );
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse_traceparent(unsampled).unwrap().is_sampled());
        // A later version may carry more fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
