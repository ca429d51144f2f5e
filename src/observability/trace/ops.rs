//! The gateway's own operations as spans: `tracing` spans with the target [`TARGET`] (a
//! reload is `config.reload`, an active health check `health_check`, a JWKS fetch
//! `jwks.fetch`) become OpenTelemetry spans through `tracing-opentelemetry` and the SDK's
//! tracer, and leave through the same export queue and exporter as the request spans.
//!
//! The layer sees only spans of that target (a per-layer filter decided once per callsite), so
//! the request path's `tracing` macros never build an OpenTelemetry span. While no runtime
//! with tracing is in effect the sampler drops every operation span, and nothing is built
//! past the SDK's non-recording span.

use super::{Queued, Sink, Tracing};
use arc_swap::ArcSwapOption;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, Span, SpanData,
    SpanProcessor,
};
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::layer::{Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of the spans that are exported.
pub const TARGET: &str = "kairos::ops";

/// The export queue of the runtime in effect, if it traces.
static CURRENT: ArcSwapOption<Sink> = ArcSwapOption::const_empty();

/// Routes the operation spans to this runtime's export queue (or nowhere). Called when a
/// runtime goes live.
pub fn activate(tracing: Option<&Tracing>) {
    CURRENT.store(tracing.map(|t| t.sink.clone()));
}

/// The `tracing-opentelemetry` layer of the global subscriber, filtered to [`TARGET`].
pub fn layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let tracer = provider().tracer("kairos-rs");
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(OpsOnly)
}

/// Records the span's OpenTelemetry trace and span id in its `trace_id` and `span_id` fields
/// (declared `Empty` by the span), so that JSON log lines inside it carry them. Nothing is
/// recorded for a span that is not exported.
pub fn record_ids(span: &tracing::Span) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    if sc.is_sampled() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

fn provider() -> &'static SdkTracerProvider {
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        SdkTracerProvider::builder()
            .with_sampler(WhileTracing)
            .with_span_processor(ToQueue)
            .build()
    })
}

/// Spans of [`TARGET`] only; everything else is decided per callsite, once.
struct OpsOnly;

impl<S> Filter<S> for OpsOnly {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        meta.is_span() && meta.target() == TARGET
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if meta.is_span() && meta.target() == TARGET {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }
}

/// Records every operation span while a runtime with tracing is in effect, none otherwise.
#[derive(Debug, Clone)]
struct WhileTracing;

impl ShouldSample for WhileTracing {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        _: TraceId,
        _: &str,
        _: &SpanKind,
        _: &[KeyValue],
        _: &[Link],
    ) -> SamplingResult {
        let decision = if CURRENT.load().is_some() {
            SamplingDecision::RecordAndSample
        } else {
            SamplingDecision::Drop
        };
        SamplingResult {
            decision,
            attributes: Vec::new(),
            trace_state: parent
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// Hands ended operation spans to the export queue of the runtime in effect.
#[derive(Debug)]
struct ToQueue;

impl SpanProcessor for ToQueue {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if let Some(sink) = CURRENT.load_full() {
            sink.submit(Queued::Sdk(Box::new(span)));
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_runtime_that_traces_nothing_is_sampled() {
        CURRENT.store(None);
        let r = WhileTracing.should_sample(
            None,
            TraceId::from_bytes([1; 16]),
            "config.reload",
            &SpanKind::Internal,
            &[],
            &[],
        );
        assert_eq!(r.decision, SamplingDecision::Drop);
    }
}
