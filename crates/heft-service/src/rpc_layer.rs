//! A tower layer around every gRPC call: request id, authentication and the
//! method's access rule, a tracing span naming the caller, the exported
//! server span (a child of the caller's `traceparent`), and one log line
//! and the request metrics when the call ends.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{
    auth::{AuthError, Caller, LiveTokens, Policy, UserTokenVerifier},
    error::to_status,
    metrics::Metrics,
};

/// How spans and logs name a path the service does not serve.
const UNKNOWN_METHOD: &str = "unknown";

/// The caller label of a call refused at the gate.
static REFUSED: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("refused"));

/// Metadata key carrying the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id this call is traced under; in the request extensions, and passed on
/// to calls this one makes to the other service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The caller's `x-request-id`, if it is sane, or a new UUID.
    fn from_header(value: Option<&HeaderValue>) -> Self {
        value
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(|v| Self(v.to_owned()))
            .unwrap_or_else(|| Self(uuid::Uuid::new_v4().to_string()))
    }
}

/// The request id of a call, as the layer recorded it.
pub fn request_id<T>(request: &tonic::Request<T>) -> Option<&RequestId> {
    request.extensions().get::<RequestId>()
}

/// The authenticated caller of a call. A call that did not pass through the
/// layer (none in production) counts as anonymous, which no method but a
/// public one admits.
pub fn caller<T>(request: &tonic::Request<T>) -> &Caller {
    static ANONYMOUS: Caller = Caller::Anonymous;
    request.extensions().get::<Caller>().unwrap_or(&ANONYMOUS)
}

/// What the layer checks each call against.
#[derive(Clone)]
pub struct Gate {
    pub tokens: LiveTokens,
    pub policy: Arc<Policy>,
    pub user_tokens: Option<Arc<dyn UserTokenVerifier>>,
}

impl Gate {
    /// Who calls, and whether the method's rule admits them.
    async fn admit(&self, path: &str, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        let access = self.policy.access(path);
        let tokens = self.tokens.current();
        let caller = match (access, authorization) {
            (crate::auth::Access::Public, None) => Caller::Anonymous,
            _ => match tokens.authenticate(authorization)? {
                Ok(caller) => caller,
                Err(token) => match &self.user_tokens {
                    Some(verifier) if crate::auth::looks_like_jwt(token) => {
                        Caller::User(verifier.verify(token).await?)
                    }
                    _ => return Err(AuthError::Invalid),
                },
            },
        };
        caller.authorize(access)?;
        Ok(caller)
    }
}

#[derive(Clone)]
pub struct RpcLayer {
    gate: Gate,
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    pub fn new(gate: Gate, metrics: Arc<Metrics>) -> Self {
        Self { gate, metrics }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            gate: self.gate.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    gate: Gate,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request<Body>> for RpcService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let request_id = RequestId::from_header(request.headers().get(REQUEST_ID_HEADER));
        // A clone of the URI shares its bytes: no copy of the path per call.
        let uri = request.uri().clone();
        // A path this service does not serve is never echoed: callers
        // without a token could otherwise fill the logs with it.
        let method = if self.gate.policy.knows(uri.path()) {
            uri.path()
        } else {
            UNKNOWN_METHOD
        };
        let span = tracing::info_span!(
            "rpc",
            %method,
            request_id = %request_id.0,
            caller = tracing::field::Empty
        );
        let server_span = crate::trace::server_span(method, request.headers(), &request_id.0);
        let response_id = HeaderValue::from_str(&request_id.0).ok();
        request.extensions_mut().insert(request_id);
        let metrics = self.metrics.clone();
        let gate = self.gate.clone();
        // Entered first: inside the call, the current span is the log's,
        // and the current trace context the exporter's.
        let span_for_exporter = server_span.clone();

        Box::pin(
            async move {
                let started = Instant::now();
                let admitted = gate
                    .admit(
                        uri.path(),
                        request
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .map(HeaderValue::as_bytes),
                    )
                    .await;
                let caller_name: Arc<str> = match &admitted {
                    Ok(caller) => caller.label(),
                    Err(_) => REFUSED.clone(),
                };
                let refused = admitted.is_err();
                tracing::Span::current().record("caller", &*caller_name);
                let mut response = match admitted {
                    Ok(caller) => {
                        request.extensions_mut().insert(caller);
                        inner.call(request).await?
                    }
                    Err(error) => to_status(&error).into_http(),
                };
                if let Some(id) = response_id {
                    response.headers_mut().insert(REQUEST_ID_HEADER, id);
                }
                // Errors travel in the headers (trailers-only); success in trailers.
                let grpc_status = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                let elapsed = started.elapsed();
                let code = tonic::Code::from_i32(grpc_status);
                metrics.record_rpc(uri.path(), caller_name, code, elapsed);
                record_outcome(&server_span, code, response.headers());
                if refused {
                    // Counted in the metrics; at info, anyone could flood the log.
                    tracing::debug!(grpc_code = ?code, "rpc refused");
                } else {
                    tracing::info!(
                        grpc_code = ?code,
                        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                        "rpc finished"
                    );
                }
                Ok(response)
            }
            .instrument(span)
            .instrument(span_for_exporter),
        )
    }
}

/// The code and AIP-193 reason of an answer, on the call's exported span.
fn record_outcome(span: &tracing::Span, code: tonic::Code, headers: &http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let reason = match code {
        tonic::Code::Ok => None,
        _ => {
            tonic::Status::from_header_map(headers).and_then(|status| crate::peer::reason(&status))
        }
    };
    crate::trace::record_outcome(span, code, reason.as_deref(), false);
}
