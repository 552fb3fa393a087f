//! OpenTelemetry spans (docs/operations.md, "Traces"): the server span of
//! each call, the client span of each call to the other service, a span per
//! store operation, and the W3C trace context carried in and out.
//!
//! These spans have a target of their own, [`TARGET`]: only the OTLP
//! exporter sees them, never the log, so that their semantic-convention
//! fields do not crowd every log line. Without an exporter none is built:
//! each constructor answers `Span::none()` after one relaxed load.
//! Their fields are ids and codes: never an email, a name, a note or a token.

use std::{
    collections::HashMap,
    fmt::Display,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, TraceContextExt},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span meant for the exporter alone.
pub const TARGET: &str = "heft::otel";

/// W3C trace context header of a call, as the outbox stores it.
const TRACEPARENT: &str = "traceparent";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported from this process (an OTLP endpoint is set).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub(crate) fn start_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether `metadata` is one of the exporter's spans.
pub(crate) fn is_exported_span(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.target() == TARGET
}

/// The server span of one call to `path` (`/package.Service/Method`), the
/// child of the caller's `traceparent` when the headers carry one.
pub fn server_span(path: &str, headers: &http::HeaderMap, request_id: &str) -> Span {
    if !exporting() {
        return Span::none();
    }
    let (service, method) = split_path(path);
    let span = tracing::info_span!(
        target: TARGET,
        "rpc.server",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        "error.type" = Empty,
        otel.status_code = Empty,
        heft.request_id = request_id,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // An unparented span starts a trace of its own: nothing to report.
    let _ = span.set_parent(parent);
    span
}

/// The client span of a call to the other service, `service`/`method`.
pub fn client_span(service: &str, method: &str) -> Span {
    if !exporting() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "rpc.client",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        "error.type" = Empty,
        otel.status_code = Empty,
    )
}

/// The span of one store operation on `system` (`postgresql`, `sqlite`).
pub fn store_span(system: &'static str, operation: &'static str) -> Span {
    if !exporting() {
        return Span::none();
    }
    tracing::debug_span!(
        target: TARGET,
        "db",
        otel.name = operation,
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = operation,
    )
}

/// The root span of one delivery of an outbox job (a purge the dispatcher
/// redelivers): a trace of its own, linked to the span of the call that
/// recorded the job by the `traceparent` stored with it.
pub fn outbox_delivery_span(
    traceparent: Option<&str>,
    user_id: &dyn Display,
    job_id: &dyn Display,
) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "outbox.delivery",
        heft.user_id = %user_id,
        heft.job_id = %job_id,
    );
    if let Some(link) = traceparent.and_then(span_context_of) {
        span.add_link(link);
    }
    span
}

/// How a call ended, on its server or client span: the gRPC code, the
/// AIP-193 reason (or the code's name) as `error.type`, and an error status
/// where the code means the service failed (for a server span: the
/// semantic conventions' list; for a client span: any code but OK).
pub fn record_outcome(span: &Span, code: tonic::Code, reason: Option<&str>, client: bool) {
    if span.is_disabled() {
        return;
    }
    span.record("rpc.grpc.status_code", code as i64);
    if code == tonic::Code::Ok {
        return;
    }
    span.record(
        "error.type",
        reason.unwrap_or_else(|| crate::peer::code_name(code)),
    );
    let server_fault = matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
    );
    if client || server_fault {
        span.record("otel.status_code", "error");
    }
}

/// Puts the trace context of `span` into a call's metadata.
pub fn inject(span: &Span, metadata: &mut tonic::metadata::MetadataMap) {
    if span.is_disabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut MetadataInjector(metadata));
}

/// `future`, to run on a task of its own, in the log span and the trace of
/// the code that spawns it.
pub fn in_current_trace<F: Future>(future: F) -> impl Future<Output = F::Output> {
    use opentelemetry::context::FutureExt as _;
    use tracing::Instrument as _;
    future.in_current_span().with_current_context()
}

/// The `traceparent` of the span this code runs in, to carry on later.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&Context::current(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The span context a stored `traceparent` names, if it is well formed.
fn span_context_of(traceparent: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The trace and span ids of the span this code runs in, as hex.
pub(crate) fn current_ids() -> Option<(String, String)> {
    let context = Context::current();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// `("heft.users.v1.UserService", "DeleteUser")` of `/heft.users.v1.UserService/DeleteUser`.
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""))
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// A store whose every operation is one span ([`store_span`]); the
/// service's store trait is implemented for it by [`traced_store_trait!`].
#[derive(Debug)]
pub struct Traced<S> {
    inner: S,
    system: &'static str,
}

impl<S> Traced<S> {
    pub fn new(inner: S, system: &'static str) -> Self {
        Self { inner, system }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn span(&self, operation: &'static str) -> Span {
        store_span(self.system, operation)
    }
}

/// Declares a store trait (with `async_trait`) and implements it for
/// [`Traced`], each method delegating to the inner store inside its span:
/// the trait is written once, and every store operation is traced.
#[macro_export]
macro_rules! traced_store_trait {
    (
        $(#[$trait_meta:meta])*
        $vis:vis trait $trait:ident {
            $(
                $(#[$meta:meta])*
                async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    ) => {
        $(#[$trait_meta])*
        #[async_trait::async_trait]
        $vis trait $trait: Send + Sync + 'static {
            $( $(#[$meta])* async fn $name(&self $(, $arg: $ty)*) -> $ret; )*
        }

        #[async_trait::async_trait]
        impl<S: $trait> $trait for $crate::trace::Traced<S> {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    ::tracing::Instrument::instrument(
                        self.inner().$name($($arg),*),
                        self.span(stringify!($name)),
                    )
                    .await
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/heft.users.v1.UserService/DeleteUser"),
            ("heft.users.v1.UserService", "DeleteUser")
        );
        assert_eq!(split_path("unknown"), ("unknown", ""));
    }

    #[test]
    fn a_stored_traceparent_names_its_span() {
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let span_context = span_context_of(traceparent).expect("valid");
        assert_eq!(
            span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(span_context.span_id().to_string(), "b7ad6b7169203331");
        assert!(span_context_of("00-garbage").is_none());
    }
}
