//! Tracing subscriber set-up: human or JSON lines, filtered by `RUST_LOG`
//! (default `info`), and with `--otlp-endpoint` the same spans exported to an
//! OpenTelemetry collector over OTLP/gRPC.
//!
//! The export is a `tracing-opentelemetry` layer over the OpenTelemetry SDK's batch
//! processor (its own thread, a bounded queue: a slow or absent collector drops spans,
//! never delays a call) and the `opentelemetry-otlp` tonic exporter. Without the flag
//! none of it is built. Each gRPC call's span continues the caller's W3C trace
//! ([`grpc_span`]), so an emitter's trace shows the server's part of it.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::domain::trace_context::TraceContext;

/// The `service.name` resource attribute of exported spans.
const SERVICE_NAME: &str = "provisiond";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its configuration.
    #[error("cannot export traces to {endpoint}")]
    Otlp {
        /// The `--otlp-endpoint` value.
        endpoint: String,
        /// The exporter's reason.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// What [`init`] started that must be flushed before the process exits: the OTLP
/// pipeline, when configured.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter. Blocks (up to the
    /// exporter's timeout): call it off the runtime's worker threads.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(error = %error, "flushing the OTLP exporter failed");
            }
        }
    }
}

/// Installs the global subscriber: log lines in `format`, plus OTLP export to
/// `otlp_endpoint` when set. Must run inside the Tokio runtime (the exporter's gRPC
/// channel lives on it). A second call (tests) keeps the first subscriber.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Human => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let provider = otlp_endpoint.map(otlp_provider).transpose()?;
    let export = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE_NAME)));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(export)
        .try_init();
    if installed.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
    if let Some(endpoint) = otlp_endpoint {
        tracing::info!(otlp.endpoint = endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// The OpenTelemetry SDK pipeline: batch processor, OTLP/gRPC exporter. The batch
/// settings follow the SDK's `OTEL_BSP_*` environment variables.
fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::Otlp {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build())
}

/// The span of one gRPC call (`method` = its path): a child of the caller's span when
/// it sent a `traceparent`, whose trace id is also on every line logged for the call.
/// Without an exporter the parent is simply not used.
pub fn grpc_span(method: &str, caller: Option<TraceContext>) -> tracing::Span {
    let trace_id = caller.map(|trace| trace.trace_id());
    let span = tracing::info_span!("grpc", method, trace_id);
    if let Some(caller) = caller {
        span.set_parent(remote_context(caller));
    }
    span
}

/// An OpenTelemetry context whose parent is the caller's (remote) span.
fn remote_context(caller: TraceContext) -> opentelemetry::Context {
    let (trace_id, parent_id, flags) = caller.parts();
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(parent_id),
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// An error and its sources on one line: `error: cause: cause`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_parent_keeps_the_callers_ids_and_flags() {
        let caller = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        let context = remote_context(caller);
        let span = context.span();
        let parent = span.span_context();
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_sampled());
        assert!(parent.is_remote());
    }
}
