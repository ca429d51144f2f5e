//! The OTLP exporter of the span export thread: `opentelemetry-otlp`'s OTLP/HTTP protobuf
//! exporter (batching into protobuf, gzip, retry with back-off honouring `Retry-After`),
//! over a blocking reqwest client of ours that adds the configured export headers; or its
//! OTLP/gRPC exporter (tonic, gzip, the configured headers as metadata, retry honouring the
//! server's RetryInfo) on a single-threaded tokio runtime owned by the export thread; and the
//! resource (service.name, service.version, host.name, service.instance.id, configured
//! attributes) its spans carry.
//!
//! Compression: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION itself whenever it
//! is given no compression, and its builder has no way to say "none". The config layer already
//! resolved the variable beneath `tracing.compression`, so the client below is the last word
//! on the wire: a body the exporter gzipped against the config's `"none"` is sent as the
//! plain protobuf it was (only that contradictory setting pays for the round trip).

use crate::config::model::{OtlpProtocol, TracingConfig};
use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use opentelemetry_otlp::{
    Compression, ExporterBuildError, Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::Resource;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};

/// The most of a collector's answer that is read (the exporter only needs its status).
const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

/// The exporter for this config, and for gRPC the runtime its channel lives on (the export
/// thread drives each export on it). Everything is passed explicitly: the config layer
/// already applied the OTEL_* variables beneath the config's own keys.
pub(super) fn otlp_exporter(
    cfg: &TracingConfig,
) -> Result<
    (
        opentelemetry_otlp::SpanExporter,
        Option<tokio::runtime::Runtime>,
    ),
    ExporterBuildError,
> {
    match cfg.protocol {
        OtlpProtocol::HttpProtobuf => Ok((http_exporter(cfg)?, None)),
        OtlpProtocol::Grpc => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    ExporterBuildError::InternalFailure(format!(
                        "cannot start the gRPC export runtime: {e}"
                    ))
                })?;
            // The channel's worker is spawned on this runtime.
            let exporter = {
                let _in = rt.enter();
                grpc_exporter(cfg)?
            };
            Ok((exporter, Some(rt)))
        }
    }
}

fn grpc_exporter(
    cfg: &TracingConfig,
) -> Result<opentelemetry_otlp::SpanExporter, ExporterBuildError> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(cfg.endpoint.clone())
        .with_protocol(Protocol::Grpc)
        .with_timeout(cfg.export_timeout)
        .with_interceptor(GrpcHeaders::new(cfg));
    if cfg.endpoint.starts_with("https://") {
        let tls = match &cfg.ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        builder = builder.with_tls_config(tls);
    }
    if cfg.gzip {
        builder = builder.with_compression(Compression::Gzip);
    }
    let mut exporter = builder.build()?;
    exporter.set_resource(&resource(cfg));
    Ok(exporter)
}

fn http_exporter(
    cfg: &TracingConfig,
) -> Result<opentelemetry_otlp::SpanExporter, ExporterBuildError> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(cfg.endpoint.clone())
        .with_protocol(Protocol::HttpBinary)
        // The retries' deadline, and each request's timeout in the client below.
        .with_timeout(cfg.export_timeout)
        .with_http_client(BlockingClient::new(cfg));
    if cfg.gzip {
        builder = builder.with_compression(Compression::Gzip);
    }
    let mut exporter = builder.build()?;
    exporter.set_resource(&resource(cfg));
    Ok(exporter)
}

/// The resource every exported span carries.
pub fn resource(cfg: &TracingConfig) -> Resource {
    let mut base = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance_id()),
    ];
    if let Some(host) = host_name() {
        base.push(KeyValue::new("host.name", host));
    }
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(base)
        .with_attributes(
            cfg.resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_service_name(cfg.service_name.clone())
        .build()
}

/// This process's `service.instance.id`: random, the same across config reloads.
fn instance_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{:032x}", fastrand::u128(1..)))
        .clone()
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..len])
        .ok()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

/// The exporter's HTTP client: blocking reqwest (the export thread is a plain thread), built
/// on first use on that thread. The configured headers are set last, so that they win over
/// any the exporter read from the environment itself.
struct BlockingClient {
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The resolved `tracing.compression`: whether bodies go out gzipped.
    gzip: bool,
    timeout: Duration,
    /// The only CA certificates the collector is trusted by (`tracing.ca_file`).
    ca_pem: Option<Vec<u8>>,
    /// The endpoint is `http://`: no TLS, so no certificate store is loaded.
    plain: bool,
    client: OnceLock<Result<reqwest::blocking::Client, String>>,
}

impl std::fmt::Debug for BlockingClient {
    // Header values may be API keys: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("BlockingClient")
            .field("headers", &names)
            .field("gzip", &self.gzip)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl BlockingClient {
    fn new(cfg: &TracingConfig) -> Self {
        // The config layer checked every name and value; one that still fails is skipped.
        let headers = cfg
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let name = http::HeaderName::from_bytes(k.as_bytes()).ok()?;
                let mut value = http::HeaderValue::from_str(v).ok()?;
                value.set_sensitive(true);
                Some((name, value))
            })
            .collect();
        BlockingClient {
            headers,
            gzip: cfg.gzip,
            timeout: cfg.export_timeout,
            ca_pem: cfg.ca_pem.clone(),
            plain: cfg.endpoint.starts_with("http://"),
            client: OnceLock::new(),
        }
    }

    fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self
            .client
            .get_or_init(|| {
                let builder = reqwest::blocking::Client::builder()
                    .timeout(self.timeout)
                    .redirect(reqwest::redirect::Policy::none());
                let builder = match (&self.ca_pem, self.plain) {
                    (Some(pem), _) => builder.tls_certs_only(
                        reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?,
                    ),
                    // Loading the system's certificate store (the default verifier's) took
                    // 17.5M instructions on the first export (callgrind), for a collector
                    // that is never spoken to over TLS.
                    (None, true) => builder.tls_certs_only([]),
                    (None, false) => builder,
                };
                builder.build().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| HttpError::from(format!("cannot build the HTTP client: {e}")))?;
        let (mut parts, body) = request.into_parts();
        for (name, value) in &self.headers {
            parts.headers.insert(name.clone(), value.clone());
        }
        let body = self.configured_coding(&mut parts.headers, body)?;
        let res = client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            // Without the URL: it may carry credentials.
            .map_err(|e| HttpError::from(e.without_url()))?;
        let status = res.status();
        let headers = res.headers().clone();
        let mut body = Vec::new();
        res.take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut body)
            .map_err(HttpError::from)?;
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

impl BlockingClient {
    /// The body in the configured content coding. The exporter gzips on its own when
    /// OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION says gzip, even when `tracing.compression` is
    /// "none" (its builder cannot be told "none"): such a body is sent uncompressed, as the
    /// config says.
    fn configured_coding(
        &self,
        headers: &mut http::HeaderMap,
        body: Bytes,
    ) -> Result<Vec<u8>, HttpError> {
        let gzipped = headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        if self.gzip || !gzipped {
            return Ok(body.to_vec());
        }
        headers.remove(http::header::CONTENT_ENCODING);
        let mut plain = Vec::with_capacity(body.len() * 4);
        flate2::read::GzDecoder::new(body.as_ref())
            .read_to_end(&mut plain)
            .map_err(|e| HttpError::from(format!("cannot undo the exporter's gzip: {e}")))?;
        Ok(plain)
    }
}

impl HttpClient for BlockingClient {
    // The trait is declared with `async_trait`; this is its expanded signature. The request
    // is sent before the future is returned (the export thread polls it at once anyway).
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let result = self.send(request);
        Box::pin(std::future::ready(result))
    }
}

/// The configured export headers as gRPC metadata, set on every export request last, so that
/// they win over any the exporter read from OTEL_EXPORTER_OTLP_HEADERS itself (the config
/// layer already merged that variable beneath them).
#[derive(Clone)]
struct GrpcHeaders(Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>);

impl GrpcHeaders {
    fn new(cfg: &TracingConfig) -> Self {
        // The config layer checked every name and value; one that still fails is skipped.
        GrpcHeaders(
            cfg.headers
                .iter()
                .filter_map(|(k, v)| {
                    let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?;
                    let mut value = MetadataValue::try_from(v.as_str()).ok()?;
                    value.set_sensitive(true);
                    Some((key, value))
                })
                .collect(),
        )
    }
}

impl tonic::service::Interceptor for GrpcHeaders {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        for (k, v) in &self.0 {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(req)
    }
}
