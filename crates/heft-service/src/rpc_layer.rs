//! A tower layer around every gRPC call: request id, authentication, a tracing
//! span, and one log line when the call ends.

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
    auth::{Caller, Tokens},
    error::to_status,
    metrics::Metrics,
};

/// Metadata key carrying the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The one call that answers without a token (container health checks).
/// `Watch` streams for as long as the client likes, so it needs a token.
const UNAUTHENTICATED_METHOD: &str = "/grpc.health.v1.Health/Check";

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

/// The authenticated caller of a call. Calls that did not pass through the
/// layer (none in production) count as API callers, the least privileged.
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .copied()
        .unwrap_or(Caller::Api)
}

#[derive(Clone)]
pub struct RpcLayer {
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    pub fn new(tokens: Tokens, metrics: Arc<Metrics>) -> Self {
        Self {
            tokens: Arc::new(tokens),
            metrics,
        }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            tokens: self.tokens.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    tokens: Arc<Tokens>,
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
        let method = uri.path();
        let span = tracing::info_span!("rpc", %method, request_id = %request_id.0);
        let response_id = HeaderValue::from_str(&request_id.0).ok();

        let authenticated = if method == UNAUTHENTICATED_METHOD {
            Ok(Caller::Open)
        } else {
            self.tokens.authenticate(
                request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(HeaderValue::as_bytes),
            )
        };
        request.extensions_mut().insert(request_id);
        let metrics = self.metrics.clone();

        Box::pin(
            async move {
                let started = Instant::now();
                let mut response = match authenticated {
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
                metrics.record_rpc(uri.path(), code, elapsed);
                tracing::info!(
                    grpc_code = ?code,
                    elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                    "rpc finished"
                );
                Ok(response)
            }
            .instrument(span),
        )
    }
}
