//! Distributed tracing: a server span per request and a client span per upstream attempt,
//! exported as OTLP/HTTP protobuf (what Jaeger, Tempo and the OpenTelemetry Collector ingest)
//! in batches from one background thread.
//!
//! The sampling decision is made before anything is recorded: a request with a W3C
//! `traceparent` from a caller `tracing.trust_incoming` trusts (by default a peer in
//! `server.trusted_proxies`) follows its caller's sampled flag (parent-based); anyone else's
//! context is not continued (else any client could force 100% sampling and choose trace ids):
//! the request starts a new trace, and a recorded span keeps the caller's context as an OTLP
//! span link (and its `tracestate` is not sent upstream). A new trace is recorded
//! with probability `tracing.sampling_rate`, decided from its (random) trace id the way the
//! OpenTelemetry SDKs' TraceIdRatioBased sampler does. Recorded or not, the trace id goes upstream in
//! `traceparent` (with our span id as the parent id and the decision in its flags, so services
//! behind the gateway follow the edge's decision) and back to the client in `X-Trace-Id`.
//!
//! Why not the OpenTelemetry SDK and opentelemetry-otlp: measured with callgrind on the proxy
//! path, they cost ~34,000 instructions per recorded request (two spans), 24,000 of them in
//! the exporter's SpanData -> protobuf conversion (every attribute key and value formatted
//! through `Display`). A span here is its ids and times plus one byte buffer: the name and
//! attributes are written into it in the OTLP protobuf wire format as they are recorded (no
//! per-attribute allocation, nothing to convert later), and the exporter only frames it. The
//! tests decode what it sends with the official opentelemetry-proto types.
//!
//! Export never blocks a request: finished spans go into a bounded queue (`try_send`); when
//! it is full the span is dropped, and when the collector fails the batch is dropped; both
//! are counted in `kairos_tracing_spans_dropped_total`.

use crate::base::redact::{redact_path_and_query, redact_query, url_for_log};
use crate::config::model::{TraceTrust, TracingConfig};
use crate::observability::metrics::Metrics;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Spans waiting for export before new ones are dropped.
const MAX_PENDING_SPANS: usize = 4096;
/// Spans per export request.
const MAX_BATCH: usize = 512;

/// The response header that carries the trace id to the client.
pub const TRACE_ID_HEADER: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("x-trace-id");
/// W3C trace context, sent upstream.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// W3C trace context's vendor part; dropped when the caller's trace is not continued.
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
/// The same name for looking it up in the client's request (a `&str` key would be parsed,
/// and allocated, on every lookup).
const TRACEPARENT_IN: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("traceparent");

/// Where finished spans go; shared by the requests being recorded. Submitting never wakes the
/// export thread except when a full batch is waiting: one futex wake per 512 spans, not one
/// per span (with the proxy pinned to one CPU, a wake per span halved its throughput at
/// sampling 1.0).
struct Sink {
    /// Spans travel by value: the box a request holds its span in is freed on the request's
    /// own thread (cheaper than a free from the export thread).
    tx: SyncSender<SpanRecord>,
    /// Spans in the queue, approximately (the exporter subtracts what it drains).
    queued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    exporter: std::thread::Thread,
    queue_full: prometheus::IntCounter,
}

impl Sink {
    fn submit(&self, span: SpanRecord) {
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

/// The tracer of one runtime: the sampling rate and the export thread's queue.
pub struct Tracing {
    sink: Arc<Sink>,
    sampling_rate: f64,
    trust: TraceTrust,
    /// A new trace is recorded when the low 63 bits of its id's last 8 bytes are below this.
    sample_below: u64,
    export_timeout: Duration,
    /// Signalled by the export thread when it has exported everything and stopped.
    stopped: Mutex<mpsc::Receiver<()>>,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("cannot start the span export thread: {0}")]
    ExportThread(std::io::Error),
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("sampling_rate", &self.sampling_rate)
            .finish()
    }
}

impl Tracing {
    /// Starts the export thread.
    pub fn new(cfg: &TracingConfig, metrics: &Metrics) -> Result<Self, TracingError> {
        // The exporter's HTTP client (reqwest) takes the process's default TLS provider.
        crate::base::tls::install_crypto_provider();
        let (tx, rx) = mpsc::sync_channel(MAX_PENDING_SPANS);
        let (stopped_tx, stopped_rx) = mpsc::sync_channel(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let exporter = Exporter {
            rx,
            queued: queued.clone(),
            stop: stop.clone(),
            stopped: stopped_tx,
            endpoint: cfg.endpoint.clone(),
            endpoint_log: url_for_log(&cfg.endpoint),
            timeout: cfg.export_timeout,
            resource: encode_resource(&cfg.service_name),
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
            sampling_rate: cfg.sampling_rate,
            trust: cfg.trust_incoming,
            sample_below: ratio_bound(cfg.sampling_rate),
            export_timeout: cfg.export_timeout,
            stopped: Mutex::new(stopped_rx),
        })
    }

    /// Decides whether to record this request and, if so, starts its server span.
    /// `trusted_proxy` says whether a peer address is in `server.trusted_proxies`.
    pub fn start(
        &self,
        req: &actix_web::HttpRequest,
        request_id: &actix_web::http::header::HeaderValue,
        trusted_proxy: impl FnOnce(std::net::IpAddr) -> bool,
    ) -> RequestTrace {
        let incoming = req
            .headers()
            .get(&TRACEPARENT_IN)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        // An untrusted caller's context becomes a link of a new trace, never its parent.
        let (parent, link) = match incoming {
            Some(p) if self.trusts(req, trusted_proxy) => (Some(p), None),
            other => (None, other),
        };
        let trace_id = parent.as_ref().map_or_else(random_trace_id, |p| p.trace_id);
        let sampled = match &parent {
            Some(p) => p.sampled,
            None => ratio_sampled(&trace_id, self.sample_below),
        };
        let span_id = random_span_id();
        let mut trace_hex = [0u8; 32];
        hex_into(&trace_id, &mut trace_hex);
        if !sampled {
            return RequestTrace {
                trace_id,
                span_id,
                trace_hex,
                continued: parent.is_some(),
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
            384,
        );
        server.default_name = Some(
            crate::config::model::MethodSet::NAMES
                .iter()
                .find(|m| **m == method)
                .copied()
                .unwrap_or("HTTP"),
        );
        let b = &mut server.body;
        if let Some(l) = &link {
            // Span.links (13): Link { bytes trace_id = 1; bytes span_id = 2; }
            put_len_prefix(b, SPAN_LINK, field_len(16) + field_len(8));
            put_bytes(b, 1, &l.trace_id);
            put_bytes(b, 2, &l.span_id);
        }
        put_attr_str(b, "http.request.method", method.as_bytes());
        put_attr_str(b, "url.path", req.path().as_bytes());
        let scheme: &[u8] = if req.app_config().secure() {
            b"https"
        } else {
            b"http"
        };
        put_attr_str(b, "url.scheme", scheme);
        if !req.query_string().is_empty() {
            // Names only: a value may be a token or an API key (base::redact).
            put_attr_str(b, "url.query", redact_query(req.query_string()).as_bytes());
        }
        if let Some(peer) = req.peer_addr() {
            let mut ip = Vec::with_capacity(39);
            crate::base::net::push_ip(&mut ip, peer.ip());
            put_attr_str(b, "client.address", &ip);
        }
        // An OTLP string must be UTF-8. A request id is ASCII by construction (the client's
        // passes request_id::sane, or it is generated hex); `is_ascii` checks a word at a
        // time, where `to_str` checks byte by byte.
        if request_id.as_bytes().is_ascii() {
            put_attr_str(b, "kairos.request_id", request_id.as_bytes());
        }
        RequestTrace {
            trace_id,
            span_id,
            trace_hex,
            continued: parent.is_some(),
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

/// The tracing state of one request.
pub struct RequestTrace {
    pub trace_id: [u8; 16],
    /// The server span's id; when the request is not recorded, the parent id sent upstream.
    pub span_id: [u8; 8],
    /// `trace_id` in lower-case hex, for X-Trace-Id, `traceparent` and logs.
    trace_hex: [u8; 32],
    /// The trace is the caller's (a trusted `traceparent`), so its `tracestate` goes along.
    continued: bool,
    server: Option<Box<SpanRecord>>,
    client: Option<Box<SpanRecord>>,
    sink: Option<Arc<Sink>>,
}

impl RequestTrace {
    pub fn is_recording(&self) -> bool {
        self.server.is_some()
    }

    /// Whether the request continues its caller's trace; if not, the caller's `tracestate`
    /// belongs to another trace and must not go upstream.
    pub fn continues_caller(&self) -> bool {
        self.continued
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
            let method = match s.default_name {
                Some("HTTP") => "HTTP",
                _ => method,
            };
            let b = &mut s.body;
            put_len_prefix(b, SPAN_NAME, method.len() + 1 + template.len());
            b.extend_from_slice(method.as_bytes());
            b.push(b' ');
            b.extend_from_slice(template.as_bytes());
            s.default_name = None;
            put_attr_str(b, "http.route", template.as_bytes());
            put_attr_str(b, "kairos.route", route_name.as_bytes());
        }
    }

    /// Records the request's tenant on the server span (`kairos.tenant`).
    pub fn tenant(&mut self, tenant: &str) {
        if let Some(s) = &mut self.server {
            put_attr_str(&mut s.body, "kairos.tenant", tenant.as_bytes());
        }
    }

    /// Starts a client span for an upstream attempt (when recording) and returns the
    /// `traceparent` to send upstream.
    pub fn start_attempt(
        &mut self,
        method: &str,
        path_and_query: &str,
        server: &crate::config::model::ServerEntry,
        upstream: &str,
        resend_count: u32,
    ) -> http::HeaderValue {
        let Some(span) = &mut self.server else {
            return traceparent_hex(&self.trace_hex, &self.span_id, false);
        };
        if resend_count == 0 {
            put_attr_str(&mut span.body, "kairos.upstream", upstream.as_bytes());
        }
        let mut client = SpanRecord::new(
            self.trace_id,
            random_span_id(),
            self.span_id,
            false,
            SpanKind::Client,
            256,
        );
        let b = &mut client.body;
        put_bytes(b, SPAN_NAME, method.as_bytes());
        if resend_count > 0 {
            put_attr_int(b, "http.request.resend_count", i64::from(resend_count));
        }
        put_attr_str(b, "http.request.method", method.as_bytes());
        put_attr_str(b, "server.address", server.host.as_bytes());
        put_attr_int(b, "server.port", i64::from(server.port));
        let path_and_query = redact_path_and_query(path_and_query);
        let authority = server.authority.as_str();
        let scheme: &[u8] = if server.https {
            b"https://"
        } else {
            b"http://"
        };
        let url_len = scheme.len() + authority.len() + path_and_query.len();
        put_attr_prefix(b, "url.full", url_len);
        b.extend_from_slice(scheme);
        b.extend_from_slice(authority.as_bytes());
        b.extend_from_slice(path_and_query.as_bytes());
        let value = traceparent_hex(&self.trace_hex, &client.span_id, true);
        if let Some(old) = self.client.replace(Box::new(client)) {
            self.submit(*old);
        }
        value
    }

    /// Records the outcome of the current upstream attempt.
    pub fn attempt_result(&mut self, status: Option<u16>, error: Option<&'static str>) {
        let Some(span) = &mut self.client else { return };
        if let Some(s) = status {
            put_attr_int(&mut span.body, "http.response.status_code", i64::from(s));
            span.error |= s >= 500;
        }
        if let Some(e) = error {
            put_attr_str(&mut span.body, "error.type", e.as_bytes());
            span.error = true;
        }
    }

    /// Ends the spans: the client span first, then the server span with the final status.
    pub fn finish(&mut self, status: u16) {
        if let Some(client) = self.client.take() {
            self.submit(*client);
        }
        if let Some(mut server) = self.server.take() {
            put_attr_int(
                &mut server.body,
                "http.response.status_code",
                i64::from(status),
            );
            server.error = status >= 500;
            self.submit(*server);
        }
    }

    fn submit(&self, mut span: SpanRecord) {
        span.end = crate::base::clock::unix_nanos();
        if let Some(sink) = &self.sink {
            sink.submit(span);
        }
    }

    /// The trace id and our span id in lower-case hex, for logs.
    pub fn ids_hex(&self) -> ([u8; 32], [u8; 16]) {
        let mut s = [0u8; 16];
        hex_into(&self.span_id, &mut s);
        (self.trace_hex, s)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpanKind {
    Server = 2,
    Client = 3,
}

/// A span as it will be exported: its ids and times, and `body`, the rest of its OTLP `Span`
/// message (name, attributes) already encoded.
#[derive(Debug)]
struct SpanRecord {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// All zero for a root span.
    parent: [u8; 8],
    remote_parent: bool,
    kind: SpanKind,
    start: u64,
    end: u64,
    error: bool,
    /// The name for a span whose `body` has none: a server span never routed is named after
    /// its method ("HTTP" for a method outside the standard ones, as the semantic
    /// conventions say).
    default_name: Option<&'static str>,
    body: Vec<u8>,
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
        SpanRecord {
            trace_id,
            span_id,
            parent,
            remote_parent,
            kind,
            start: crate::base::clock::unix_nanos(),
            end: 0,
            error: false,
            default_name: None,
            body: Vec::with_capacity(capacity),
        }
    }
}

/// The bound [`ratio_sampled`] compares with: `rate` of 2^63 (a rate of 1 or more samples
/// everything, 0 nothing).
fn ratio_bound(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else if rate > 0.0 {
        (rate * (1u64 << 63) as f64) as u64
    } else {
        0
    }
}

/// Whether a new trace with this (random) id is recorded.
fn ratio_sampled(trace_id: &[u8; 16], below: u64) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < below
}

fn random_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

fn random_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// Every byte's two lower-case hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    table
};

/// Writes `bytes` as lower-case hex into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// A W3C `traceparent` header: `00-<trace id>-<parent id>-<flags>`.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> http::HeaderValue {
    let mut trace_hex = [0u8; 32];
    hex_into(trace_id, &mut trace_hex);
    traceparent_hex(&trace_hex, span_id, sampled)
}

/// [`traceparent`] with the trace id already in hex.
fn traceparent_hex(trace_hex: &[u8; 32], span_id: &[u8; 8], sampled: bool) -> http::HeaderValue {
    let mut buf = [b'-'; 55];
    buf[0] = b'0';
    buf[1] = b'0';
    buf[3..35].copy_from_slice(trace_hex);
    hex_into(span_id, &mut buf[36..52]);
    buf[53] = b'0';
    buf[54] = if sampled { b'1' } else { b'0' };
    // SAFETY: the buffer is digits, lower-case hex and dashes: visible ASCII, a valid header
    // value (checking it byte by byte cost a fifth of the unsampled tracing overhead).
    unsafe { http::HeaderValue::from_maybe_shared_unchecked(bytes::Bytes::copy_from_slice(&buf)) }
}

/// A parsed `traceparent`.
#[derive(Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Parses a W3C `traceparent` (trace-context level 1 and later versions' first fields).
/// Invalid values (bad hex, upper case, all-zero ids, version ff) are `None`: a new trace.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
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
            *o = (digit(s[2 * i])? << 4) | digit(s[2 * i + 1])?;
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
    let trace_id = hex::<16>(&v[3..35])?;
    let span_id = hex::<8>(&v[36..52])?;
    let [flags] = hex::<1>(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// The export thread: batches spans and posts them to the collector.
struct Exporter {
    rx: mpsc::Receiver<SpanRecord>,
    queued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    stopped: SyncSender<()>,
    endpoint: String,
    /// `endpoint` as the log shows it: no userinfo, no query.
    endpoint_log: String,
    timeout: Duration,
    /// The encoded `Resource` message (service.name and friends), the same in every request.
    resource: Vec<u8>,
    exported: prometheus::IntCounter,
    failed: prometheus::IntCounter,
    delay: Duration,
}

impl Exporter {
    fn run(self) {
        let client = reqwest::blocking::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| tracing::error!(error = %e, "cannot build the OTLP HTTP client; spans will be dropped"))
            .ok();
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(MAX_BATCH);
        let mut failing = false;
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
                self.export(client.as_ref(), &mut batch, &mut failing);
                if !full {
                    break;
                }
            }
            if stop {
                let _ = self.stopped.try_send(());
                return;
            }
            // Woken early when a full batch is waiting or on stop.
            std::thread::park_timeout(self.delay);
        }
    }

    fn export(
        &self,
        client: Option<&reqwest::blocking::Client>,
        batch: &mut Vec<SpanRecord>,
        failing: &mut bool,
    ) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let body = encode_request(&self.resource, batch);
        batch.clear();
        let result = match client {
            None => Err("no HTTP client".to_string()),
            Some(c) => c
                .post(&self.endpoint)
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                // Without the URL: it may carry credentials (logged as `endpoint_log`).
                .map_err(|e| e.without_url().to_string())
                .and_then(|res| {
                    if res.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("collector answered {}", res.status()))
                    }
                }),
        };
        match result {
            Ok(()) => {
                self.exported.inc_by(n);
                if std::mem::replace(failing, false) {
                    tracing::info!(endpoint = %self.endpoint_log, "span export recovered");
                }
            }
            Err(e) => {
                self.failed.inc_by(n);
                // Once per outage, not once per batch.
                if !std::mem::replace(failing, true) {
                    tracing::warn!(endpoint = %self.endpoint_log, error = %e, "span export failed; spans are dropped until the collector answers (see kairos_tracing_spans_dropped_total)");
                }
            }
        }
    }
}

// ---- OTLP protobuf (opentelemetry/proto/collector/trace/v1/trace_service.proto) -----------

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Field tag with wire type: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
fn put_tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_tag(buf, field, 2);
    put_varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// Length of a length-delimited field with a one-byte tag.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// `Span.name` (field 5) and `Span.attributes` (field 9), length-delimited: their tags.
const SPAN_NAME: u32 = 5;
const SPAN_ATTRIBUTE: u32 = 9;
/// `Span.links` (field 13).
const SPAN_LINK: u32 = 13;

/// Tag and length of a length-delimited field whose `len` bytes the caller writes next.
fn put_len_prefix(buf: &mut Vec<u8>, field: u32, len: usize) {
    put_tag(buf, field, 2);
    put_varint(buf, len as u64);
}

/// A `KeyValue { string key = 1; AnyValue value = 2; }` attribute (field 9 of `Span`, 1 of
/// `Resource`) whose value is a string of `len` bytes the caller writes next
/// (`AnyValue { string string_value = 1; }`).
fn put_attr_prefix_in(buf: &mut Vec<u8>, field: u32, key: &str, len: usize) {
    put_key_value_head(buf, field, key, field_len(len));
    put_len_prefix(buf, 1, len);
}

/// A `KeyValue` up to its `AnyValue`'s body, which is `any_len` bytes the caller writes next.
fn put_key_value_head(buf: &mut Vec<u8>, field: u32, key: &str, any_len: usize) {
    put_len_prefix(buf, field, field_len(key.len()) + field_len(any_len));
    put_bytes(buf, 1, key.as_bytes());
    put_len_prefix(buf, 2, any_len);
}

fn put_attr_prefix(buf: &mut Vec<u8>, key: &str, len: usize) {
    put_attr_prefix_in(buf, SPAN_ATTRIBUTE, key, len);
}

/// A string attribute. `value` must be UTF-8 (callers pass `str` bytes, or header bytes
/// already checked).
fn put_attr_str(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    let (k, v) = (key.len(), value.len());
    let any_len = 2 + v;
    let kv_len = 2 + k + 2 + any_len;
    if kv_len < 128 {
        // Every length fits a one-byte varint: tags and lengths written in two pieces.
        buf.reserve(2 + kv_len);
        buf.extend_from_slice(&[(SPAN_ATTRIBUTE << 3 | 2) as u8, kv_len as u8, 0x0a, k as u8]);
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&[0x12, any_len as u8, 0x0a, v as u8]);
        buf.extend_from_slice(value);
        return;
    }
    put_attr_prefix(buf, key, v);
    buf.extend_from_slice(value);
}

/// An integer attribute (`AnyValue { int64 int_value = 3; }`).
fn put_attr_int(buf: &mut Vec<u8>, key: &str, value: i64) {
    put_key_value_head(buf, SPAN_ATTRIBUTE, key, 1 + varint_len(value as u64));
    put_tag(buf, 3, 0);
    put_varint(buf, value as u64);
}

/// `Resource { repeated KeyValue attributes = 1; }`
fn encode_resource(service_name: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    for (key, value) in [
        ("service.name", service_name),
        ("service.version", env!("CARGO_PKG_VERSION")),
        ("telemetry.sdk.name", "kairos-rs"),
        ("telemetry.sdk.language", "rust"),
    ] {
        put_attr_prefix_in(&mut buf, 1, key, value.len());
        buf.extend_from_slice(value.as_bytes());
    }
    buf
}

/// Span flags: W3C sampled, plus whether the parent is remote (OTLP 1.1 span flags).
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// Length of the `Span` message body `encode_span` writes (fields 9, 15 and 16 have
/// one-byte or two-byte tags: 9 is < 16, 15 is < 16, 16 needs two bytes).
fn span_len(s: &SpanRecord) -> usize {
    let mut n = field_len(16) + field_len(8);
    if s.parent != [0; 8] {
        n += field_len(8);
    }
    if let Some(name) = s.default_name {
        n += field_len(name.len());
    }
    n += 1 + 1; // kind
    n += 2 * (1 + 8); // start, end
    n += s.body.len();
    if s.error {
        n += 1 + 1 + 2;
    }
    n + 2 + 4 // flags: two-byte tag, fixed32
}

/// `Span` message body.
fn encode_span(buf: &mut Vec<u8>, s: &SpanRecord) {
    put_bytes(buf, 1, &s.trace_id);
    put_bytes(buf, 2, &s.span_id);
    if s.parent != [0; 8] {
        put_bytes(buf, 4, &s.parent);
    }
    if let Some(name) = s.default_name {
        put_bytes(buf, SPAN_NAME, name.as_bytes());
    }
    put_tag(buf, 6, 0);
    put_varint(buf, s.kind as u64);
    put_tag(buf, 7, 1);
    buf.extend_from_slice(&s.start.to_le_bytes());
    put_tag(buf, 8, 1);
    buf.extend_from_slice(&s.end.max(s.start).to_le_bytes());
    buf.extend_from_slice(&s.body);
    if s.error {
        // Status { StatusCode code = 3; } with STATUS_CODE_ERROR = 2.
        put_tag(buf, 15, 2);
        put_varint(buf, 2);
        put_tag(buf, 3, 0);
        put_varint(buf, 2);
    }
    let mut flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE;
    if s.remote_parent {
        flags |= FLAG_IS_REMOTE;
    }
    put_tag(buf, 16, 5);
    buf.extend_from_slice(&flags.to_le_bytes());
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }` with one
/// resource and one instrumentation scope, written in one pass (lengths computed first).
fn encode_request(resource: &[u8], spans: &[SpanRecord]) -> Vec<u8> {
    // InstrumentationScope { string name = 1; string version = 2; }
    let name = b"kairos-rs";
    let version = env!("CARGO_PKG_VERSION").as_bytes();
    let scope_len = field_len(name.len()) + field_len(version.len());
    // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }
    let span_lens: Vec<usize> = spans.iter().map(span_len).collect();
    let scope_spans_len =
        field_len(scope_len) + span_lens.iter().map(|n| field_len(*n)).sum::<usize>();
    // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
    let resource_spans_len = field_len(resource.len()) + field_len(scope_spans_len);
    let mut out = Vec::with_capacity(field_len(resource_spans_len));
    put_tag(&mut out, 1, 2);
    put_varint(&mut out, resource_spans_len as u64);
    put_bytes(&mut out, 1, resource);
    put_tag(&mut out, 2, 2);
    put_varint(&mut out, scope_spans_len as u64);
    put_tag(&mut out, 1, 2);
    put_varint(&mut out, scope_len as u64);
    put_bytes(&mut out, 1, name);
    put_bytes(&mut out, 2, version);
    for (s, len) in spans.iter().zip(span_lens) {
        put_tag(&mut out, 2, 2);
        put_varint(&mut out, len as u64);
        let before = out.len();
        encode_span(&mut out, s);
        debug_assert_eq!(out.len() - before, len, "span length");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_rejects() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse_traceparent(good).unwrap();
        assert!(p.sampled);
        assert_eq!(traceparent(&p.trace_id, &p.span_id, true).as_bytes(), good);
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse_traceparent(unsampled).unwrap().sampled);
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

    #[test]
    fn span_length_matches_encoding() {
        let mut span = SpanRecord::new([1; 16], [2; 8], [3; 8], true, SpanKind::Server, 0);
        span.end = u64::MAX;
        span.error = true;
        put_attr_str(&mut span.body, "http.request.method", b"PATCH");
        put_attr_str(&mut span.body, "url.path", "x".repeat(300).as_bytes());
        // The fast path (all lengths under 128) and the general one agree.
        for len in [0, 50, 103, 104, 127, 128, 200] {
            let value = "v".repeat(len);
            let mut fast = Vec::new();
            put_attr_str(&mut fast, "url.query", value.as_bytes());
            let mut general = Vec::new();
            put_attr_prefix(&mut general, "url.query", len);
            general.extend_from_slice(value.as_bytes());
            assert_eq!(fast, general, "{len}");
        }
        put_attr_int(&mut span.body, "http.response.status_code", 503);
        put_attr_int(&mut span.body, "server.port", -1);
        put_attr_str(&mut span.body, "url.scheme", b"https");
        span.default_name = Some("PATCH");
        for parent in [[3; 8], [0; 8]] {
            span.parent = parent;
            let mut buf = Vec::new();
            encode_span(&mut buf, &span);
            assert_eq!(buf.len(), span_len(&span));
        }
        let body = encode_request(&encode_resource("svc"), &[span]);
        assert_eq!(body.capacity(), body.len());
    }

    #[test]
    fn ratio_sampling_follows_the_rate() {
        assert!(!ratio_sampled(&[0xff; 16], ratio_bound(0.0)));
        assert!(!ratio_sampled(&[0; 16], ratio_bound(0.0)));
        assert!(ratio_sampled(&[0xff; 16], ratio_bound(1.0)));
        for rate in [0.01, 0.1, 0.5, 0.9] {
            let bound = ratio_bound(rate);
            let n = 100_000;
            let hits = (0..n)
                .filter(|_| ratio_sampled(&random_trace_id(), bound))
                .count();
            let share = hits as f64 / f64::from(n);
            assert!((share - rate).abs() < 0.01, "{rate}: {share}");
        }
    }

    #[test]
    fn varints() {
        for (v, bytes) in [
            (0u64, &[0u8][..]),
            (1, &[1]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf, bytes, "{v}");
            assert_eq!(varint_len(v), bytes.len(), "{v}");
        }
    }
}
