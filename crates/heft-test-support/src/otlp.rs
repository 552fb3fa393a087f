//! An OTLP/gRPC trace receiver in the test's process: the collector's own
//! protocol (`opentelemetry.proto.collector.trace.v1.TraceService`), so a
//! service under test exports to it exactly as it would to a collector.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_stream::wrappers::TcpListenerStream;

/// One span as received, with the `service.name` of the process that sent it.
#[derive(Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The attribute `key` as text (strings as they are, numbers printed).
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|attribute| attribute.key == key)
            .and_then(|attribute| attribute.value.as_ref())
            .map(text)
    }

    /// The links of this span, as (trace id, span id).
    pub fn links(&self) -> Vec<(String, String)> {
        self.span
            .links
            .iter()
            .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
            .collect()
    }

    /// Every text the span carries: name, attribute keys and values, events,
    /// links' attributes, status message. What a collector would store.
    pub fn all_text(&self) -> String {
        let mut text = format!("{} {}", self.service, self.span.name);
        let mut add = |attributes: &[KeyValue]| {
            for attribute in attributes {
                text.push(' ');
                text.push_str(&attribute.key);
                text.push('=');
                text.push_str(&attribute.value.as_ref().map(self::text).unwrap_or_default());
            }
        };
        add(&self.span.attributes);
        for event in &self.span.events {
            add(&event.attributes);
        }
        for link in &self.span.links {
            add(&link.attributes);
        }
        for event in &self.span.events {
            text.push(' ');
            text.push_str(&event.name);
        }
        if let Some(status) = &self.span.status {
            text.push(' ');
            text.push_str(&status.message);
        }
        text
    }

    /// How long the span lasted.
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(
            self.span
                .end_time_unix_nano
                .saturating_sub(self.span.start_time_unix_nano),
        )
    }
}

impl fmt::Debug for ReceivedSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} trace={} span={} parent={} {:?}",
            self.service,
            self.span.name,
            self.trace_id(),
            self.span_id(),
            self.parent_span_id(),
            self.duration()
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut collected = self.0.lock().expect("spans");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref())
                .map(text)
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                collected.extend(scope_spans.spans.into_iter().map(|span| ReceivedSpan {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver, serving until dropped.
pub struct OtlpReceiver {
    address: SocketAddr,
    collected: Collected,
    _stop: oneshot::Sender<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let collected = Collected::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(collected.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            address,
            collected,
            _stop: stop,
        }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for a service exporting here.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collected.0.lock().expect("spans").clone()
    }

    /// The spans received once `done` holds for them; panics after `within`.
    pub async fn wait_until(
        &self,
        within: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "spans not received within {within:?}; got {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
