//! Hosting a heft service: one place builds, for either service, the
//! listener's checks (tokens, exposure), the tonic server with its limits,
//! health, reflection, the RPC layer, the readiness probe, `/metrics`, and
//! graceful shutdown. A service brings its API, its database and any series
//! of its own.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
};
use tonic::{
    body::Body,
    server::NamedService,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{
    Service, layer::util::Stack, limit::GlobalConcurrencyLimitLayer, load_shed::LoadShedLayer,
};

use crate::{
    auth::{Access, LiveTokens, Policy, UserTokenVerifier},
    config::CommonArgs,
    db::{Database, Migrations},
    message_limit::{LARGE_CALLS_AT_ONCE, MessageLimitLayer},
    metrics::{self, Metrics, Refresh},
    rpc_layer::{Gate, RpcLayer},
};

/// Refuses a call at once (RESOURCE_EXHAUSTED) when `max_in_flight` calls
/// are already running on this listener, rather than queueing it.
type ShedLoad = Stack<GlobalConcurrencyLimitLayer, LoadShedLayer>;

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

/// How often readiness is checked, and how long one check may take.
const READINESS_INTERVAL: Duration = Duration::from_secs(1);
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// A service's place to run: a listener that passed the exposure check, its
/// metrics, and its open, migrated database.
pub struct Host {
    service_name: &'static str,
    database: Database,
    common: CommonArgs,
    tokens: LiveTokens,
    user_tokens: Option<Arc<dyn UserTokenVerifier>>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    metrics: Metrics,
}

impl Host {
    /// Checks the tokens, and that `listener` is not exposed without them,
    /// binds the metrics address (empty: no metrics), and opens and
    /// migrates the database at `database_url`.
    pub async fn new(
        service_name: &'static str,
        common: &CommonArgs,
        metrics_listen: &str,
        listener: TcpListener,
        database_url: &str,
        migrations: &Migrations,
    ) -> anyhow::Result<Self> {
        let tokens = common.tokens()?;
        common.check_exposure(&tokens, listener.local_addr()?)?;
        if tokens.is_open() {
            tracing::warn!(
                "NO TOKENS CONFIGURED: every call is accepted without authentication; \
                 set HEFT_API_TOKENS and HEFT_INTERNAL_TOKEN outside development"
            );
        }
        let metrics_listener = metrics::bind(metrics_listen).await?;
        Ok(Self {
            service_name,
            database: Database::open(database_url, migrations).await?,
            common: common.clone(),
            tokens: LiveTokens::new(tokens),
            user_tokens: None,
            listener,
            metrics_listener,
            metrics: Metrics::new(service_name),
        })
    }

    /// The service's database, for its store and keys.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Accept user tokens (`Authenticate`'s `access_token`), checked by `verifier`.
    pub fn accept_user_tokens(&mut self, verifier: Arc<dyn UserTokenVerifier>) {
        self.user_tokens = Some(verifier);
    }

    /// Where the service registers series of its own, beside the shared ones.
    pub fn registry(&mut self) -> &mut Registry {
        self.metrics.registry_mut()
    }

    /// Serves `service` until `shutdown` resolves, then reports NOT_SERVING,
    /// stops accepting, and waits at most the grace period for in-flight
    /// calls. Each call must pass its method's rule in `methods` (method
    /// name, access). Meanwhile health follows readiness: NOT_SERVING while
    /// `database` does not answer; SIGHUP re-reads the credentials. Before
    /// each scrape, the pool's figures are read, and `refresh` brings the
    /// service's own series up to date.
    pub async fn serve<S>(
        self,
        service: S,
        methods: &[(&str, Access)],
        refresh: Option<Refresh>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let Host {
            service_name,
            database,
            common,
            tokens,
            user_tokens,
            listener,
            metrics_listener,
            metrics,
        } = self;
        let metrics = Arc::new(metrics);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;

        let reflection = || {
            // Reflection lists exactly what this port serves, and describes
            // each of those services, both reflection versions included.
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
        let mut server = Server::builder();
        if let Some(tls) = common.server_tls()? {
            server = server.tls_config(tls)?;
        }
        let limits = &common.limits;
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
            .layer(RpcLayer::new(
                Gate {
                    tokens: tokens.clone(),
                    policy: Arc::new(Policy::new(service_name, methods)),
                    user_tokens,
                },
                metrics.clone(),
            ))
            .layer(MessageLimitLayer::new(LARGE_CALLS_AT_ONCE))
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(service);

        let address = listener.local_addr()?;
        let grace = common.shutdown_grace();
        let (stopping, stopped) = watch::channel(false);
        let ready: ReadinessProbe = {
            let database = database.clone();
            Arc::new(move || {
                let database = database.clone();
                Box::pin(async move { database.ping().await.is_ok() })
            })
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
        let reloads = tokio::spawn(reload_credentials_on_sighup(
            common.clone(),
            tokens,
            stopped.clone(),
        ));
        let metrics_server = match metrics_listener {
            Some(metrics_listener) => {
                tracing::info!(address = %metrics_listener.local_addr()?, "serving metrics");
                let mut stopped = stopped.clone();
                Some(tokio::spawn(metrics::serve(
                    metrics_listener,
                    metrics.clone(),
                    refresh_before_scrape(metrics, database, refresh),
                    async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
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
        reloads.abort();
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        tracing::info!(service = service_name, "stopped");
        Ok(())
    }
}

/// Re-reads the credentials on every SIGHUP until shutdown. A list that
/// does not load leaves the one in force, and says why.
async fn reload_credentials_on_sighup(
    common: CommonArgs,
    tokens: LiveTokens,
    mut stopped: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP: credentials reload only on restart");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return,
                received = hangups.recv() => if received.is_none() { return },
            }
            match common.tokens() {
                Ok(reloaded) => {
                    tokens.replace(reloaded);
                    tracing::info!("credentials reloaded");
                }
                Err(error) => tracing::error!(
                    error = format!("{error:#}"),
                    "credentials not reloaded: the previous ones stay in force"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (common, tokens, stopped.wait_for(|stop| *stop).await);
    }
}

/// The pool's figures, then the service's own series.
fn refresh_before_scrape(
    metrics: Arc<Metrics>,
    database: Database,
    service_refresh: Option<Refresh>,
) -> Refresh {
    Arc::new(move || {
        let (size, idle) = database.pool_connections();
        metrics.set_pool_connections(size, idle);
        match &service_refresh {
            Some(refresh) => refresh(),
            None => Box::pin(async {}),
        }
    })
}

/// Binds `listen` and runs `serve` on it until SIGINT or SIGTERM.
async fn run<F, Fut>(listen: SocketAddr, serve: F) -> anyhow::Result<()>
where
    F: FnOnce(TcpListener, BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    serve(listener, Box::pin(shutdown_signal())).await
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
type ReadinessProbe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

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

/// The body of a service binary's `main`: either answer the `healthcheck`
/// subcommand (is the service at `listen` SERVING?), or set up logging, bind
/// `listen` and run `serve` on it until SIGINT or SIGTERM.
pub async fn main<F, Fut>(
    binary: &str,
    healthcheck: bool,
    listen: SocketAddr,
    common: &CommonArgs,
    serve: F,
) -> std::process::ExitCode
where
    F: FnOnce(TcpListener, BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    if healthcheck {
        return match crate::client::check_local_service(listen, common).await {
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
    let telemetry = match crate::telemetry::init(&common.log, common.log_format, binary) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("{error:#}");
            return ExitCode::FAILURE;
        }
    };
    let exit = match run(listen, serve).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{binary} failed");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown(common.shutdown_grace()).await;
    exit
}

/// The exit of a subcommand that runs and ends (`credentials new`).
pub fn run_command(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error:#}");
            std::process::ExitCode::FAILURE
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
