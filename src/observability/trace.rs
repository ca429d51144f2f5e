//! Distributed tracing: a server span per request and a client span per upstream attempt,
//! exported through the OpenTelemetry SDK's OTLP exporter (`opentelemetry-otlp`, OTLP/HTTP
//! protobuf: what Jaeger, Tempo, the OpenTelemetry Collector and hosted backends ingest) in
//! batches from one background thread.
//!
//! The sampling decision is made before anything is recorded: a request with a W3C
//! `traceparent` from a caller `tracing.trust_incoming` trusts (by default a peer in
//! `server.trusted_proxies`) follows its caller's sampled flag (parent-based); anyone else's
//! context is not continued (else any client could force 100% sampling and choose trace ids):
//! the request starts a new trace, and a recorded span keeps the caller's context as a span
//! link (and its `tracestate` and `baggage` are left out of the upstream request). A new trace
//! is recorded as the SDK's `TraceIdRatioBased` sampler decides from its (random) trace id
//! (the same comparison, with the bound computed once per runtime). Recorded or not, the
//! trace id goes upstream in `traceparent` (with our span id as the parent id and the
//! decision in its flags, so services behind the gateway follow the edge's decision) and back
//! to the client in `X-Trace-Id`.
//!
//! Cost: an unsampled request costs a trace id, one comparison and the `traceparent` it sends
//! on, all on the stack. A sampled request records its spans as ids, times and a
//! `Vec<KeyValue>`; the SDK's `SpanData` is built from them on the export thread, so the
//! request's thread does no more than collect attributes.
//!
//! Export never blocks a request: finished spans go into a bounded queue (`try_send`); when
//! it is full the span is dropped, and when an export fails (after the exporter's retries,
//! which honour `Retry-After`) the batch is dropped, and so are the batches of a back-off
//! after it (1 s, doubling to 30 s while failures go on), without being encoded or sent; at
//! the end of a back-off a few spans of the batch try the collector, the rest is dropped. A
//! collector that is down costs one small attempt per back-off, not an encoding and a
//! connection per batch. Both kinds of drop are counted in
//! `kairos_tracing_spans_dropped_total` by `reason`. (The SDK's own BatchSpanProcessor
//! drops without telling anyone how many: this queue is the same bounded design, with the
//! counts.)

use crate::base::redact::{redact_path_and_query, redact_query, url_for_log};
use crate::config::model::{Propagator, TraceTrust, TracingConfig};
use crate::observability::metrics::Metrics;
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

mod export;
pub mod ops;
mod propagate;

use propagate::{hex_into, Inject};
pub use propagate::{parse_traceparent, traceparent, Parent, BAGGAGE, TRACEPARENT, TRACESTATE};

/// Spans waiting for export before new ones are dropped.
const MAX_PENDING_SPANS: usize = 4096;
/// Spans per export request.
const MAX_BATCH: usize = 512;

/// The response header that carries the trace id to the client.
pub const TRACE_ID_HEADER: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("x-trace-id");

/// Where finished spans go; shared by the requests being recorded. Submitting never wakes the
/// export thread except when a full batch is waiting: one futex wake per 512 spans, not one
/// per span (with the proxy pinned to one CPU, a wake per span halved its throughput at
/// sampling 1.0).
struct Sink {
    tx: SyncSender<Queued>,
    /// Spans in the queue, approximately (the exporter subtracts what it drains).
    queued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    exporter: std::thread::Thread,
    queue_full: prometheus::IntCounter,
}

/// A finished span waiting for export: a request's, or one of the gateway's own operations
/// (built by the SDK through `tracing-opentelemetry`, see [`ops`]).
enum Queued {
    Request(SpanRecord),
    Sdk(Box<SpanData>),
}

impl Queued {
    fn into_span_data(self, scope: &InstrumentationScope) -> SpanData {
        match self {
            Queued::Request(s) => s.into_span_data(scope),
            Queued::Sdk(s) => *s,
        }
    }
}

impl Sink {
    fn submit(&self, span: Queued) {
        // Counted before it is queued, so the exporter never subtracts a span not yet counted.
        let queued = self.queued.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        match self.tx.try_send(span) {
            Ok(()) => {
                if queued == MAX_BATCH {
                    self.exporter.unpark();
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.queue_full.inc();
            }
        }
    }
}

/// The tracer of one runtime: the sampler and the export thread's queue.
pub struct Tracing {
    sink: Arc<Sink>,
    /// The SDK's `TraceIdRatioBased` decision for `sampling_rate`, precomputed: a new trace
    /// is recorded when its id's low 63 bits are under this bound (`None`: always). The SDK
    /// sampler call it replaces cost about 200 instructions per request (a `SamplingResult`
    /// with a `TraceState` built and dropped); a test checks they agree.
    sample_below: Option<u64>,
    /// Whether a continued trace follows its caller's sampled flag.
    parent_based: bool,
    sampling_rate: f64,
    trust: TraceTrust,
    /// Extraction order of the incoming context (`tracing.propagators`).
    propagators: Vec<Propagator>,
    /// The same propagators as a set: the headers written upstream.
    inject: Inject,
    export_timeout: Duration,
    /// Signalled by the export thread when it has exported everything and stopped.
    stopped: Mutex<mpsc::Receiver<()>>,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("cannot start the span export thread: {0}")]
    ExportThread(std::io::Error),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("sampling_rate", &self.sampling_rate)
            .finish()
    }
}

impl Tracing {
    /// Builds the OTLP exporter and starts the export thread.
    pub fn new(cfg: &TracingConfig, metrics: &Metrics) -> Result<Self, TracingError> {
        // The exporter's HTTP client (reqwest) takes the process's default TLS provider.
        crate::base::tls::install_crypto_provider();
        let (otlp, grpc_runtime) = export::otlp_exporter(cfg)?;
        let (tx, rx) = mpsc::sync_channel(MAX_PENDING_SPANS);
        let (stopped_tx, stopped_rx) = mpsc::sync_channel(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let exporter = Exporter {
            rx,
            queued: queued.clone(),
            stop: stop.clone(),
            stopped: stopped_tx,
            otlp,
            grpc_runtime,
            endpoint_log: url_for_log(&cfg.endpoint),
            scope: InstrumentationScope::builder("kairos-rs")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            exported: metrics.spans_exported.clone(),
            failed: metrics.spans_dropped.with_label_values(&["export_failed"]),
            // The SDK's variable, honoured for compatibility: milliseconds between exports
            // (at least 10, so that a 0 cannot make the thread spin).
            delay: std::env::var("OTEL_BSP_SCHEDULE_DELAY")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Duration::from_secs(5), |ms| {
                    Duration::from_millis(ms.max(10))
                }),
        };
        let thread = std::thread::Builder::new()
            .name("kairos-otlp".into())
            .spawn(move || exporter.run())
            .map_err(TracingError::ExportThread)?;
        Ok(Tracing {
            sink: Arc::new(Sink {
                tx,
                queued,
                stop,
                exporter: thread.thread().clone(),
                queue_full: metrics.spans_dropped.with_label_values(&["queue_full"]),
            }),
            sample_below: ratio_bound(cfg.sampling_rate),
            parent_based: cfg.parent_based,
            sampling_rate: cfg.sampling_rate,
            trust: cfg.trust_incoming,
            propagators: cfg.propagators.clone(),
            inject: Inject::of(&cfg.propagators),
            export_timeout: cfg.export_timeout,
            stopped: Mutex::new(stopped_rx),
        })
    }

    /// Whether a new trace with this id is recorded: the SDK's `TraceIdRatioBased` decision.
    fn sample_new(&self, trace_id: &[u8; 16]) -> bool {
        self.sample_below
            .is_none_or(|bound| ratio_draw(trace_id) < bound)
    }

    /// Decides whether to record this request and, if so, starts its server span.
    /// `trusted_proxy` says whether a peer address is in `server.trusted_proxies`.
    pub fn start(
        &self,
        req: &actix_web::HttpRequest,
        request_id: &actix_web::http::header::HeaderValue,
        trusted_proxy: impl FnOnce(std::net::IpAddr) -> bool,
    ) -> RequestTrace {
        let incoming = propagate::extract(&self.propagators, req.headers());
        // An untrusted caller's context becomes a link of a new trace, never its parent.
        let (parent, link) = match incoming {
            Some(p) if self.trusts(req, trusted_proxy) => (Some(p), None),
            other => (None, other.map(|i| i.parent)),
        };
        let trace_id = parent
            .as_ref()
            .map_or_else(random_trace_id, |p| p.parent.trace_id);
        let sampled = match &parent {
            // B3 may leave the decision to us: then the sampler decides on the caller's id.
            Some(p) if self.parent_based && p.decided => p.parent.sampled,
            _ => self.sample_new(&trace_id),
        };
        let parent = parent.map(|p| p.parent);
        let span_id = random_span_id();
        let mut trace_hex = [0u8; 32];
        hex_into(&trace_id, &mut trace_hex);
        if !sampled {
            return RequestTrace {
                trace_id,
                span_id,
                trace_hex,
                continued: parent.is_some(),
                inject: self.inject,
                server: None,
                client: None,
                sink: None,
            };
        }
        let method = req.method().as_str();
        let mut server = SpanRecord::new(
            trace_id,
            span_id,
            parent.as_ref().map_or([0; 8], |p| p.span_id),
            parent.is_some(),
            SpanKind::Server,
            10,
        );
        let method: &'static str = crate::config::model::MethodSet::NAMES
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("HTTP");
        server.name = Cow::Borrowed(method);
        server.link = link.map(|l| (l.trace_id, l.span_id));
        let a = &mut server.attributes;
        let method_value: Value = if method == "HTTP" {
            req.method().as_str().to_string().into()
        } else {
            method.into()
        };
        a.push(KeyValue::new("http.request.method", method_value));
        a.push(KeyValue::new("url.path", req.path().to_string()));
        let scheme = if req.app_config().secure() {
            "https"
        } else {
            "http"
        };
        a.push(KeyValue::new("url.scheme", scheme));
        if !req.query_string().is_empty() {
            // Names only: a value may be a token or an API key (base::redact).
            a.push(KeyValue::new("url.query", redact_query(req.query_string())));
        }
        if let Some(peer) = req.peer_addr() {
            a.push(KeyValue::new("client.address", peer.ip().to_string()));
        }
        if let Ok(id) = request_id.to_str() {
            a.push(KeyValue::new("kairos.request_id", id.to_string()));
        }
        RequestTrace {
            trace_id,
            span_id,
            trace_hex,
            continued: parent.is_some(),
            inject: self.inject,
            server: Some(Box::new(server)),
            client: None,
            sink: Some(self.sink.clone()),
        }
    }

    /// Whether this request's incoming trace context may be continued.
    fn trusts(
        &self,
        req: &actix_web::HttpRequest,
        trusted_proxy: impl FnOnce(std::net::IpAddr) -> bool,
    ) -> bool {
        match self.trust {
            TraceTrust::All => true,
            TraceTrust::None => false,
            TraceTrust::TrustedProxies => req.peer_addr().is_some_and(|a| trusted_proxy(a.ip())),
        }
    }

    /// Exports what is queued and stops the export thread; waits up to the export timeout.
    pub fn shutdown(&self) {
        self.sink.stop.store(true, Ordering::Release);
        self.sink.exporter.unpark();
        if let Ok(stopped) = self.stopped.lock() {
            let _ = stopped.recv_timeout(self.export_timeout + Duration::from_secs(1));
        }
    }
}

// No Drop that stops the exporter: requests still streaming their responses hold the sink
// after the runtime is replaced. The export thread ends by itself, after a last export, once
// the last holder is gone (the queue reports `Disconnected`).

/// The context an upstream attempt is sent with: the span upstream sees as its parent.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    span_id: [u8; 8],
    sampled: bool,
}

/// The tracing state of one request.
pub struct RequestTrace {
    pub trace_id: [u8; 16],
    /// The server span's id; when the request is not recorded, the parent id sent upstream.
    pub span_id: [u8; 8],
    /// `trace_id` in lower-case hex, for X-Trace-Id, `traceparent` and logs.
    trace_hex: [u8; 32],
    /// The trace is the caller's (a trusted context), so its `tracestate` and `baggage` go
    /// along.
    continued: bool,
    /// The propagators whose headers go upstream.
    inject: Inject,
    server: Option<Box<SpanRecord>>,
    client: Option<Box<SpanRecord>>,
    sink: Option<Arc<Sink>>,
}

impl RequestTrace {
    pub fn is_recording(&self) -> bool {
        self.server.is_some()
    }

    /// The X-Trace-Id value for the client.
    pub fn trace_id_header(&self) -> actix_web::http::header::HeaderValue {
        // SAFETY: lower-case hex digits are visible ASCII, a valid header value; the checked
        // constructor's byte-by-byte scan was the largest single cost of unsampled tracing.
        unsafe {
            actix_web::http::header::HeaderValue::from_maybe_shared_unchecked(
                bytes::Bytes::copy_from_slice(&self.trace_hex),
            )
        }
    }

    /// Names the server span after the matched route.
    pub fn routed(&mut self, method: &str, template: &str, route_name: &str) {
        if let Some(s) = &mut self.server {
            // The semantic conventions name a span of an extension method "HTTP {route}".
            let method = match s.name.as_ref() {
                "HTTP" => "HTTP",
                _ => method,
            };
            s.name = Cow::Owned(format!("{method} {template}"));
            s.attributes
                .push(KeyValue::new("http.route", template.to_string()));
            s.attributes
                .push(KeyValue::new("kairos.route", route_name.to_string()));
        }
    }

    /// Records the request's tenant on the server span (`kairos.tenant`).
    pub fn tenant(&mut self, tenant: &str) {
        if let Some(s) = &mut self.server {
            s.attributes
                .push(KeyValue::new("kairos.tenant", tenant.to_string()));
        }
    }

    /// Starts a client span for an upstream attempt (when recording); returns the parent to
    /// name in the propagation headers ([`RequestTrace::propagate`]).
    pub fn start_attempt(
        &mut self,
        method: &str,
        path_and_query: &str,
        server: &crate::config::model::ServerEntry,
        upstream: &str,
        resend_count: u32,
    ) -> Outgoing {
        let Some(span) = &mut self.server else {
            return Outgoing {
                span_id: self.span_id,
                sampled: false,
            };
        };
        if resend_count == 0 {
            span.attributes
                .push(KeyValue::new("kairos.upstream", upstream.to_string()));
        }
        let mut client = SpanRecord::new(
            self.trace_id,
            random_span_id(),
            self.span_id,
            false,
            SpanKind::Client,
            8,
        );
        client.name = Cow::Owned(method.to_string());
        let a = &mut client.attributes;
        if resend_count > 0 {
            a.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(resend_count),
            ));
        }
        a.push(KeyValue::new("http.request.method", method.to_string()));
        a.push(KeyValue::new("server.address", server.host.clone()));
        a.push(KeyValue::new("server.port", i64::from(server.port)));
        let scheme = if server.https { "https://" } else { "http://" };
        let path_and_query = redact_path_and_query(path_and_query);
        let mut url = String::with_capacity(
            scheme.len() + server.authority.as_str().len() + path_and_query.len(),
        );
        url.push_str(scheme);
        url.push_str(server.authority.as_str());
        url.push_str(&path_and_query);
        a.push(KeyValue::new("url.full", url));
        let span_id = client.span_id;
        if let Some(old) = self.client.replace(Box::new(client)) {
            self.submit(*old);
        }
        Outgoing {
            span_id,
            sampled: true,
        }
    }

    /// Writes the configured propagators' headers (`traceparent`, `baggage`, `b3`, ...) into
    /// the request going upstream.
    /// Whether the caller's `tracestate` and `baggage` must stay behind (a context not
    /// continued, with the propagator that would carry them configured). The upstream request's
    /// header copy leaves them out; [`RequestTrace::propagate`] counts on it.
    pub fn drops_incoming_context(&self) -> (bool, bool) {
        propagate::dropped(self.inject, self.continued)
    }

    pub fn propagate(&self, headers: &mut http::HeaderMap, out: Outgoing) {
        propagate::inject(
            self.inject,
            headers,
            &self.trace_hex,
            &out.span_id,
            out.sampled,
            self.continued,
        );
    }

    /// Records the outcome of the current upstream attempt.
    pub fn attempt_result(&mut self, status: Option<u16>, error: Option<&'static str>) {
        let Some(span) = &mut self.client else { return };
        if let Some(s) = status {
            span.attributes
                .push(KeyValue::new("http.response.status_code", i64::from(s)));
            span.error |= s >= 500;
        }
        if let Some(e) = error {
            span.attributes.push(KeyValue::new("error.type", e));
            span.error = true;
        }
    }

    /// Ends the spans: the client span first, then the server span with the final status.
    pub fn finish(&mut self, status: u16) {
        if let Some(client) = self.client.take() {
            self.submit(*client);
        }
        if let Some(mut server) = self.server.take() {
            server.attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            server.error = status >= 500;
            self.submit(*server);
        }
    }

    fn submit(&self, mut span: SpanRecord) {
        span.end = SystemTime::now();
        if let Some(sink) = &self.sink {
            sink.submit(Queued::Request(span));
        }
    }

    /// The trace id and our span id in lower-case hex, for logs.
    pub fn ids_hex(&self) -> LogIds {
        let mut span = [0u8; 16];
        hex_into(&self.span_id, &mut span);
        LogIds {
            trace: self.trace_hex,
            span,
        }
    }
}

/// A request's trace id and span id in lower-case hex, as its log lines carry them.
#[derive(Debug, Clone, Copy)]
pub struct LogIds {
    trace: [u8; 32],
    span: [u8; 16],
}

impl LogIds {
    pub fn trace_id(&self) -> &str {
        debug_assert!(self.trace.is_ascii());
        // SAFETY: only `RequestTrace::ids_hex` makes one, from `hex_into`'s lower-case hex
        // digits (ASCII); checking them again cost about 160 instructions an id per line.
        unsafe { std::str::from_utf8_unchecked(&self.trace) }
    }

    pub fn span_id(&self) -> &str {
        debug_assert!(self.span.is_ascii());
        // SAFETY: as in `trace_id`.
        unsafe { std::str::from_utf8_unchecked(&self.span) }
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

/// A span as the request records it: ids, times, name and attributes. The SDK's `SpanData`
/// is built from it on the export thread.
#[derive(Debug)]
struct SpanRecord {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// All zero for a root span.
    parent: [u8; 8],
    remote_parent: bool,
    kind: SpanKind,
    start: SystemTime,
    end: SystemTime,
    error: bool,
    /// A server span never routed is named after its method ("HTTP" for a method outside
    /// the standard ones, as the semantic conventions say).
    name: Cow<'static, str>,
    attributes: Vec<KeyValue>,
    /// The context of an untrusted caller's trace, kept as a link.
    link: Option<([u8; 16], [u8; 8])>,
}

impl SpanRecord {
    fn new(
        trace_id: [u8; 16],
        span_id: [u8; 8],
        parent: [u8; 8],
        remote_parent: bool,
        kind: SpanKind,
        capacity: usize,
    ) -> Self {
        let start = SystemTime::now();
        SpanRecord {
            trace_id,
            span_id,
            parent,
            remote_parent,
            kind,
            start,
            end: start,
            error: false,
            name: Cow::Borrowed(""),
            attributes: Vec::with_capacity(capacity),
            link: None,
        }
    }

    /// The SDK's span: what the OTLP exporter takes.
    fn into_span_data(self, scope: &InstrumentationScope) -> SpanData {
        let links = match self.link {
            None => SpanLinks::default(),
            Some((trace_id, span_id)) => {
                let mut links = SpanLinks::default();
                links.links.push(Link::new(
                    SpanContext::new(
                        TraceId::from_bytes(trace_id),
                        SpanId::from_bytes(span_id),
                        TraceFlags::default(),
                        true,
                        TraceState::default(),
                    ),
                    Vec::new(),
                    0,
                ));
                links
            }
        };
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace_id),
                SpanId::from_bytes(self.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes(self.parent),
            parent_span_is_remote: self.remote_parent,
            span_kind: self.kind,
            name: self.name,
            start_time: self.start,
            end_time: self.end.max(self.start),
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status: if self.error {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: scope.clone(),
        }
    }
}

fn random_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

fn random_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// The export thread: batches spans and hands them to the OTLP exporter.
struct Exporter {
    rx: mpsc::Receiver<Queued>,
    queued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    stopped: SyncSender<()>,
    otlp: opentelemetry_otlp::SpanExporter,
    /// The gRPC exporter's runtime (its channel lives there); none over HTTP.
    grpc_runtime: Option<tokio::runtime::Runtime>,
    /// The endpoint as the log shows it: no userinfo, no query.
    endpoint_log: String,
    scope: InstrumentationScope,
    exported: prometheus::IntCounter,
    failed: prometheus::IntCounter,
    delay: Duration,
}

impl Exporter {
    fn run(self) {
        let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
        let mut health = Health::default();
        loop {
            // Checked before draining, so that nothing submitted before the stop is left.
            let mut stop = self.stop.load(Ordering::Acquire);
            loop {
                while batch.len() < MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(span) => batch.push(span),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            stop = true;
                            break;
                        }
                    }
                }
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == MAX_BATCH;
                self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
                self.export(&mut batch, &mut health);
                if !full {
                    break;
                }
            }
            if stop {
                let _ = self.otlp.shutdown();
                let _ = self.stopped.try_send(());
                return;
            }
            // Woken early when a full batch is waiting or on stop.
            std::thread::park_timeout(self.delay);
        }
    }

    fn export(&self, batch: &mut Vec<Queued>, health: &mut Health) {
        let n = batch.len() as u64;
        if health.retry_at.is_some_and(|at| Instant::now() < at) {
            // The collector failed the last export: this batch is dropped without being
            // encoded or sent, until the back-off is over.
            batch.clear();
            self.failed.inc_by(n);
            return;
        }
        let mut n = n;
        if health.failing && batch.len() > PROBE_SPANS {
            // Still failing at the last try: a few spans find out whether the collector is
            // back; the rest of the batch is dropped unencoded (encoding costs tens of
            // thousands of instructions a span, and would most likely be thrown away).
            let rest = batch.len() - PROBE_SPANS;
            batch.truncate(PROBE_SPANS);
            self.failed.inc_by(rest as u64);
            n = PROBE_SPANS as u64;
        }
        let spans: Vec<SpanData> = batch
            .drain(..)
            .map(|s| s.into_span_data(&self.scope))
            .collect();
        // The exporter retries (honouring Retry-After) within the export timeout.
        let exported = match &self.grpc_runtime {
            Some(rt) => rt.block_on(self.otlp.export(spans)),
            None => futures_executor::block_on(self.otlp.export(spans)),
        };
        match exported {
            Ok(()) => {
                self.exported.inc_by(n);
                if std::mem::take(health).failing {
                    tracing::info!(endpoint = %self.endpoint_log, "span export recovered");
                }
            }
            Err(e) => {
                self.failed.inc_by(n);
                health.backoff = (health.backoff * 2).clamp(EXPORT_BACKOFF_MIN, EXPORT_BACKOFF_MAX);
                health.retry_at = Some(Instant::now() + health.backoff);
                // Once per outage, not once per batch.
                if !std::mem::replace(&mut health.failing, true) {
                    tracing::warn!(endpoint = %self.endpoint_log, error = %e, "span export failed; spans are dropped until the collector answers (see kairos_tracing_spans_dropped_total)");
                }
            }
        }
    }
}

/// The first back-off after a failed export, doubled after each further failure.
const EXPORT_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest back-off: a collector back up gets spans again within this.
const EXPORT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Spans sent to a collector that failed the last export, once its back-off is over.
const PROBE_SPANS: usize = 8;

/// How the collector has been answering the export thread.
#[derive(Default)]
struct Health {
    /// The last export failed (the warning was logged; recovery is logged too).
    failing: bool,
    /// The current back-off (zero while exports succeed).
    backoff: Duration,
    /// No export is tried before this: batches are dropped (counted as `export_failed`).
    retry_at: Option<Instant>,
}

/// The bound of `TraceIdRatioBased(ratio)` (opentelemetry_sdk's
/// `sample_based_on_probability`): `None` for a ratio of 1 or more (always).
fn ratio_bound(ratio: f64) -> Option<u64> {
    (ratio < 1.0).then(|| (ratio.max(0.0) * (1u64 << 63) as f64) as u64)
}

/// What `TraceIdRatioBased` compares with its bound: the trace id's low 64 bits, shifted.
fn ratio_draw(trace_id: &[u8; 16]) -> u64 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    u64::from_be_bytes(low) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_precomputed_ratio_decision_is_the_sdk_samplers() {
        use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
        for ratio in [0.0, 1e-9, 0.1, 0.25, 0.5, 0.999, 1.0, 2.0, -1.0] {
            let sdk = Sampler::TraceIdRatioBased(ratio);
            let bound = ratio_bound(ratio);
            let mut sampled = 0;
            for _ in 0..20_000 {
                let id = random_trace_id();
                let theirs = sdk
                    .should_sample(
                        None,
                        TraceId::from_bytes(id),
                        "",
                        &SpanKind::Server,
                        &[],
                        &[],
                    )
                    .decision
                    == SamplingDecision::RecordAndSample;
                let ours = bound.is_none_or(|b| ratio_draw(&id) < b);
                assert_eq!(ours, theirs, "ratio {ratio}");
                sampled += usize::from(ours);
            }
            let expected = ratio.clamp(0.0, 1.0) * 20_000.0;
            assert!(
                (sampled as f64 - expected).abs() <= 400.0,
                "{ratio}: {sampled}"
            );
        }
    }

    #[test]
    fn span_record_becomes_sdk_span_data() {
        let mut span = SpanRecord::new([1; 16], [2; 8], [3; 8], true, SpanKind::Server, 2);
        span.name = Cow::Borrowed("GET /x");
        span.error = true;
        span.link = Some(([4; 16], [5; 8]));
        span.attributes
            .push(KeyValue::new("http.response.status_code", 503_i64));
        let scope = InstrumentationScope::builder("kairos-rs").build();
        let data = span.into_span_data(&scope);
        assert_eq!(data.span_context.trace_id(), TraceId::from_bytes([1; 16]));
        assert_eq!(data.parent_span_id, SpanId::from_bytes([3; 8]));
        assert!(data.parent_span_is_remote);
        assert!(data.span_context.is_sampled());
        assert_eq!(data.name, "GET /x");
        assert_eq!(data.status, Status::error(""));
        assert_eq!(data.links.links.len(), 1);
        assert_eq!(
            data.links.links[0].span_context.span_id(),
            SpanId::from_bytes([5; 8])
        );
        assert!(data.end_time >= data.start_time);
    }
}
