//! Serving a heft service: health, reflection, the RPC layer, graceful
//! shutdown; and the client side of calls between the services.

use std::{future::Future, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
};
use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::{
        Channel, ClientTlsConfig, Endpoint, Server, ServerTlsConfig,
        server::{Router, TcpIncoming},
    },
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{
    layer::util::{Identity, Stack},
    limit::GlobalConcurrencyLimitLayer,
    load_shed::LoadShedLayer,
};

use crate::{
    auth::{Secret, Tokens},
    config::ServerLimits,
    metrics::{self, Metrics},
    rpc_layer::{REQUEST_ID_HEADER, RequestId, RpcLayer},
};

/// Load shedding outside, the RPC layer (auth, request id, metrics) inside.
pub type HeftRouter = Router<Stack<RpcLayer, Stack<ShedLoad, Identity>>>;

/// Refuses a call at once (RESOURCE_EXHAUSTED) when `max_in_flight` calls
/// are already running on this listener, rather than queueing it.
pub type ShedLoad = Stack<GlobalConcurrencyLimitLayer, LoadShedLayer>;

fn shed_load_beyond(max_in_flight: usize) -> ShedLoad {
    Stack::new(
        GlobalConcurrencyLimitLayer::new(max_in_flight.max(1)),
        LoadShedLayer::new(),
    )
}

const MAX_PENDING_RESET_STREAMS: usize = 20;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Limits every call, whatever deadline the caller asked for.
const MAX_REQUEST_DURATION: Duration = Duration::from_secs(30);
/// Bounds the memory a single request or response can claim (the codec
/// bounds each method further: see `heft_proto::codec`).
pub use heft_proto::codec::DEFAULT_MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES;

/// A router with health, reflection (v1 and v1alpha) and the RPC layer; the
/// caller adds its own service. Health says NOT_SERVING until [`serve`].
pub async fn base_router(
    service_name: &str,
    tokens: Tokens,
    limits: &ServerLimits,
    metrics: Arc<Metrics>,
    tls: Option<ServerTlsConfig>,
) -> anyhow::Result<(HeftRouter, HealthReporter)> {
    if tokens.is_open() {
        tracing::warn!(
            "NO TOKENS CONFIGURED: every call is accepted without authentication; \
             set HEFT_API_TOKENS and HEFT_INTERNAL_TOKEN outside development"
        );
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;

    let reflection = || {
        // Reflection lists exactly what this port serves, and describes each
        // of those services, both reflection versions included.
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(heft_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .with_service_name(service_name)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let router = server
        .timeout(MAX_REQUEST_DURATION)
        .max_concurrent_streams(limits.max_concurrent_streams)
        // hyper's guard against reset floods (CVE-2023-44487), which tonic
        // turns off unless told.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_keepalive_interval(Some(Duration::from_secs(
            limits.http2_keepalive_secs.max(1),
        )))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .layer(shed_load_beyond(limits.max_in_flight))
        .layer(RpcLayer::new(tokens, metrics))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((router, health))
}

/// How long this call may still run: the caller's `grpc-timeout`, capped
/// by the server's own limit. Long work (a purge) stops in time to answer,
/// rather than being cut off by the deadline.
pub fn time_budget<T>(request: &tonic::Request<T>) -> Duration {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(MAX_REQUEST_DURATION, |timeout| {
            timeout.min(MAX_REQUEST_DURATION)
        })
}

/// `grpc-timeout` is at most 8 digits and a unit (gRPC over HTTP/2).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Asks whether the service can do its work now (its database answers).
pub type ReadinessProbe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// How often readiness is checked, and how long one check may take.
const READINESS_INTERVAL: Duration = Duration::from_secs(1);
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything [`serve`] runs for one service.
pub struct Serving {
    pub router: HeftRouter,
    pub health: HealthReporter,
    pub service_name: &'static str,
    pub listener: TcpListener,
    pub grace: Duration,
    pub ready: ReadinessProbe,
    /// `/metrics` on its own listener, if enabled.
    pub metrics: Option<(TcpListener, Arc<Metrics>, metrics::Refresh)>,
}

/// Serves until `shutdown` resolves, then reports NOT_SERVING, stops
/// accepting, and waits at most `grace` for in-flight calls. Meanwhile
/// health follows readiness: NOT_SERVING while the database is unreachable.
pub async fn serve(serving: Serving, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let Serving {
        router,
        health,
        service_name,
        listener,
        grace,
        ready,
        metrics,
    } = serving;
    let address = listener.local_addr()?;
    let (stopping, stopped) = watch::channel(false);
    let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };

    // The first answer is known before the first call is accepted.
    let ready_now = check_readiness(&ready).await;
    report_readiness(&health, service_name, None, ready_now).await;
    let readiness = tokio::spawn(follow_readiness(
        health.clone(),
        service_name,
        ready,
        ready_now,
        stopped.clone(),
    ));
    let metrics_server = match metrics {
        Some((metrics_listener, metrics, refresh)) => {
            tracing::info!(address = %metrics_listener.local_addr()?, "serving metrics");
            Some(tokio::spawn(metrics::serve(
                metrics_listener,
                metrics,
                refresh,
                until_stopped(stopped.clone()),
            )))
        }
        None => None,
    };
    tracing::info!(%address, service = service_name, "serving");

    let draining = Arc::new(Notify::new());
    let signal = {
        let draining = draining.clone();
        let health = health.clone();
        async move {
            shutdown.await;
            let _ = stopping.send(true);
            tracing::info!(
                service = service_name,
                "shutting down: draining in-flight calls"
            );
            set_health(&health, service_name, ServingStatus::NotServing).await;
            draining.notify_one();
        }
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::select! {
        served = router.serve_with_incoming_shutdown(incoming, signal) => served?,
        () = async { draining.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "grace period over: dropping in-flight calls");
        }
    }
    let _ = readiness.await;
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    tracing::info!(service = service_name, "stopped");
    Ok(())
}

async fn set_health(health: &HealthReporter, service_name: &str, status: ServingStatus) {
    for name in ["", service_name] {
        health.set_service_status(name, status).await;
    }
}

async fn check_readiness(ready: &ReadinessProbe) -> bool {
    tokio::time::timeout(READINESS_TIMEOUT, ready())
        .await
        .unwrap_or(false)
}

/// Sets health for a readiness answer, logging changes after the first.
async fn report_readiness(
    health: &HealthReporter,
    service_name: &str,
    was_ready: Option<bool>,
    ready: bool,
) {
    match (was_ready, ready) {
        (Some(false), true) => {
            tracing::info!(service = service_name, "database reachable again: serving")
        }
        (_, false) => tracing::error!(service = service_name, "database unreachable: not serving"),
        _ => {}
    }
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    set_health(health, service_name, status).await;
}

/// Reports SERVING while `ready` says so, NOT_SERVING otherwise, until
/// shutdown (which reports NOT_SERVING for good).
async fn follow_readiness(
    health: HealthReporter,
    service_name: &'static str,
    ready: ReadinessProbe,
    mut was_ready: bool,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(READINESS_INTERVAL) => {}
        }
        let ready_now = check_readiness(&ready).await;
        if *stopped.borrow() {
            return;
        }
        if ready_now != was_ready {
            report_readiness(&health, service_name, Some(was_ready), ready_now).await;
            was_ready = ready_now;
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

/// A lazily connecting channel to the other service: neither service needs
/// the other to be up to start.
pub fn channel(
    url: &str,
    tls: Option<ClientTlsConfig>,
    connect_timeout: Duration,
) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| anyhow::anyhow!("invalid service url {url:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect_lazy())
}

/// Credentials and tracing context for calls from one heft service to the other.
#[derive(Clone)]
pub struct InternalCredentials {
    authorization: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for InternalCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalCredentials")
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

impl InternalCredentials {
    pub fn new(internal_token: Option<&Secret>) -> anyhow::Result<Self> {
        let authorization = internal_token
            .map(|token| MetadataValue::try_from(format!("Bearer {}", token.expose())))
            .transpose()
            .map_err(|_| anyhow::anyhow!("HEFT_INTERNAL_TOKEN must be printable ASCII"))?
            .map(|mut value: AsciiMetadataValue| {
                // Never indexed by HPACK, where a later header could probe it.
                value.set_sensitive(true);
                value
            });
        Ok(Self { authorization })
    }

    /// Wraps `message` with the internal token, the request id being
    /// followed, and a deadline.
    pub fn request<T>(
        &self,
        message: T,
        request_id: Option<&RequestId>,
        deadline: Duration,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(deadline);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        if let Some(id) = request_id.and_then(|id| MetadataValue::try_from(id.0.as_str()).ok()) {
            request.metadata_mut().insert(REQUEST_ID_HEADER, id);
        }
        request
    }
}

/// Asks the health service at `url`; true when it reports SERVING.
pub async fn healthcheck(url: &str, tls: Option<ClientTlsConfig>) -> anyhow::Result<bool> {
    let channel = channel(url, tls, Duration::from_secs(2))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(3));
    let response = client.check(request).await?;
    Ok(response.into_inner().status
        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
}

/// The http(s) URL to reach a listener at `address` from this machine.
pub fn local_url(address: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = match address.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("{scheme}://{host}:{}", address.port())
}

/// The body of a service binary's `main`: either answer the `healthcheck`
/// subcommand, or set up logging and run the service.
pub async fn main(
    binary: &str,
    healthcheck: bool,
    common: &crate::config::CommonArgs,
    check: impl Future<Output = anyhow::Result<bool>>,
    run: impl Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    if healthcheck {
        return match check.await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("{binary} is not serving");
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("{binary} health check failed: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(error) = crate::telemetry::init(&common.log, common.log_format) {
        eprintln!("{error:#}");
        return ExitCode::FAILURE;
    }
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{binary} failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_are_capped() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);

        let mut request = tonic::Request::new(());
        assert_eq!(time_budget(&request), MAX_REQUEST_DURATION);
        request.set_timeout(Duration::from_millis(300));
        assert_eq!(time_budget(&request), Duration::from_millis(300));
        request.set_timeout(Duration::from_secs(3600));
        assert_eq!(time_budget(&request), MAX_REQUEST_DURATION);
    }
}
