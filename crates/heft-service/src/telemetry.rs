//! Logs and traces. `HEFT_LOG` is a tracing filter, `HEFT_LOG_FORMAT` picks
//! human-readable lines or one JSON object per line (with the `trace_id`
//! and `span_id` of the span it was written in, when traces are exported).
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) set, spans
//! are exported over OTLP/gRPC, configured by the standard `OTEL_*`
//! variables; unset, no exporter exists and the exporter's spans are never
//! created ([`crate::trace`]).

use std::{fmt, io::IsTerminal, time::Duration};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, filter_fn},
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    prelude::*,
    registry::LookupSpan,
};

use crate::trace;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// What must outlive the service: the span exporter, flushed by
/// [`Telemetry::shutdown`].
#[derive(Debug, Default)]
#[must_use = "spans held by the exporter are lost unless it is shut down"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still held, waiting at most `within`. The exporter
    /// blocks its caller, so it runs beside the runtime, which keeps
    /// driving the exporter's connection meanwhile.
    pub async fn shutdown(self, within: Duration) {
        let Some(provider) = self.tracer_provider else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(within));
        match tokio::time::timeout(within + Duration::from_millis(100), flushed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "spans not flushed at shutdown"),
            Ok(Err(_)) | Err(_) => tracing::warn!("spans not flushed at shutdown in time"),
        }
    }
}

/// Installs the global subscriber, and the span exporter when an OTLP
/// endpoint is configured, for the service `service_name` (the default of
/// `OTEL_SERVICE_NAME`). Safe to call more than once (tests start several
/// services in one process): later calls keep the first configuration.
pub fn init(filter: &str, format: LogFormat, service_name: &str) -> anyhow::Result<Telemetry> {
    let log_filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid HEFT_LOG filter {filter:?}: {e}"))?;
    if !otlp_endpoint_configured() {
        // The filter for the whole subscriber: a callsite it disables costs
        // nothing at all, and no exporter's span is ever built.
        let _already_initialised = tracing_subscriber::registry()
            .with(log_filter)
            .with(log_layer(format))
            .try_init();
        return Ok(Telemetry::default());
    }
    let provider = tracer_provider(service_name)?;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("heft"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        // No log event becomes a span event: no log field reaches a collector.
        .with_filter(filter_fn(trace::is_exported_span));
    // The exporter's spans carry semantic-convention fields for a
    // collector; the log keeps its own spans.
    let log_filter = log_filter.and(filter_fn(|metadata| !trace::is_exported_span(metadata)));
    let installed = tracing_subscriber::registry()
        .with(log_layer(format).with_filter(log_filter))
        .with(spans)
        .try_init()
        .is_ok();
    if !installed {
        // The first configuration wins; this exporter would never see a span.
        return Ok(Telemetry::default());
    }
    trace::start_exporting();
    Ok(Telemetry {
        tracer_provider: Some(provider),
    })
}

/// Log lines on stderr, for people or one JSON object each.
fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .map_event_format(WithTraceIds)
            .with_writer(std::io::stderr)
            .boxed(),
    }
}

fn otlp_endpoint_configured() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The OTLP/gRPC exporter behind a batch processor, both configured by the
/// standard variables (endpoint, headers, timeout, `OTEL_BSP_*`, sampler).
/// The processor exports from a thread of its own over a connection driven
/// by this runtime, so it never blocks a worker.
fn tracer_provider(default_service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot set up the OTLP exporter: {e}"))?;
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(default_service_name.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Puts `trace_id` and `span_id` first in each JSON line written inside an
/// exported span.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = trace::current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}
