//! heft users service: accounts (argon2id passwords, preferred unit) and the
//! cascade that purges a deleted user's entries in the entries service.
#![forbid(unsafe_code)]

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicI64},
};

use heft_proto::users::v1::user_service_server::UserServiceServer;
use heft_service::{
    config::{CommonArgs, DatabaseUrl},
    keyed::KeyedHash,
    metrics::{self, FloatGauge, Metrics, StateLabels},
    pagination::{PageTokens, generate_key},
    server::{self, InternalCredentials, MAX_MESSAGE_BYTES, Serving},
};
use prometheus_client::metrics::{family::Family, gauge::Gauge};
use tokio::{net::TcpListener, sync::watch};

pub mod api;
pub mod cascade;
pub mod domain;
pub mod password;
pub mod store;

/// The service name health checks and reflection know it by.
pub const SERVICE_NAME: &str = "heft.users.v1.UserService";

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "heft-users", version, about = "heft users service")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exit 0 when the service at HEFT_USERS_LISTEN reports SERVING (for container health checks).
    Healthcheck,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HEFT_USERS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// sqlite://path or postgres://user:password@host/database.
    #[arg(
        long,
        env = "HEFT_USERS_DATABASE_URL",
        default_value = "sqlite://data/users.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,
    /// Where the entries service listens (for the cascade).
    #[arg(
        long,
        env = "HEFT_ENTRIES_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub entries_url: String,
    /// Where `/metrics` is served (Prometheus text format); empty turns it off.
    #[arg(
        long,
        env = "HEFT_USERS_METRICS_LISTEN",
        default_value = "127.0.0.1:9051"
    )]
    pub metrics_listen: String,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub hashing: password::HashingArgs,
    #[command(flatten)]
    pub cascade: cascade::CascadeArgs,
}

/// Binds `HEFT_USERS_LISTEN` and serves until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    serve_with_listener(config, listener, server::shutdown_signal()).await
}

/// Migrates the database, then serves on `listener` until `shutdown`
/// resolves; the purge dispatcher runs alongside and stops with it.
pub async fn serve_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let tokens = config.common.tokens()?;
    config
        .common
        .check_exposure(&tokens, listener.local_addr()?)?;
    let store = store::open(config.database_url.expose()).await?;
    let page_tokens = PageTokens::new(store.signing_key("page_token", &generate_key()).await?);
    let throttle_keys = KeyedHash::new(store.signing_key("login_throttle", &generate_key()).await?);
    let hasher = password::PasswordHasher::new(&config.hashing)?;
    let entries = server::channel(
        &config.entries_url,
        config.common.client_tls()?,
        std::time::Duration::from_secs(1),
    )?;
    let cascade = Arc::new(cascade::Cascade::new(
        store.clone(),
        entries,
        InternalCredentials::new(config.common.outgoing_internal_token())?,
        config.cascade.clone(),
    ));
    let metrics_listener = metrics::bind(&config.metrics_listen).await?;
    let (metrics, refresh_metrics) = service_metrics(store.clone(), hasher.clone());
    let api = api::UserApi::new(
        store.clone(),
        hasher,
        domain::LoginThrottle::default(),
        throttle_keys,
        page_tokens,
        cascade.clone(),
    );

    let (stop_dispatcher, dispatcher_stopped) = watch::channel(false);
    let dispatcher = tokio::spawn(cascade.run_dispatcher(dispatcher_stopped));

    let (router, health) = server::base_router(
        SERVICE_NAME,
        tokens,
        &config.common.limits,
        metrics.clone(),
        config.common.server_tls()?,
    )
    .await?;
    let router = router.add_service(
        UserServiceServer::new(api)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    );
    let served = server::serve(
        Serving {
            router,
            health,
            service_name: SERVICE_NAME,
            listener,
            grace: config.common.shutdown_grace(),
            ready: Arc::new(move || {
                let store = store.clone();
                Box::pin(async move { store.ping().await.is_ok() })
            }),
            metrics: metrics_listener.map(|listener| (listener, metrics, refresh_metrics)),
        },
        shutdown,
    )
    .await;

    let _ = stop_dispatcher.send(true);
    if tokio::time::timeout(config.common.shutdown_grace(), dispatcher)
        .await
        .is_err()
    {
        tracing::warn!("purge dispatcher did not stop in time; its claimed jobs will be retried");
    }
    served
}

/// The shared series, and heft-users' own: the purge queue as the database
/// has it (so every replica reports the same), and hashes in flight.
fn service_metrics(
    store: Arc<dyn store::UserStore>,
    hasher: password::PasswordHasher,
) -> (Arc<Metrics>, metrics::Refresh) {
    let mut metrics = Metrics::new(SERVICE_NAME);
    let purge_jobs = Family::<StateLabels, Gauge>::default();
    let oldest_pending = FloatGauge::default();
    let hashes_in_flight = Gauge::<i64, AtomicI64>::default();
    let registry = metrics.registry_mut();
    registry.register(
        "heft_purge_jobs",
        "purge jobs by state (pending or purged)",
        purge_jobs.clone(),
    );
    registry.register(
        "heft_purge_oldest_pending_age_seconds",
        "age of the oldest pending purge job; 0 when none is pending",
        oldest_pending.clone(),
    );
    registry.register(
        "heft_password_hashes_in_flight",
        "argon2 hashes running or holding a slot",
        hashes_in_flight.clone(),
    );
    let metrics = Arc::new(metrics);
    let refresh: metrics::Refresh = {
        let metrics = metrics.clone();
        Arc::new(move || {
            let (metrics, store, hasher) = (metrics.clone(), store.clone(), hasher.clone());
            let (purge_jobs, oldest_pending, hashes_in_flight) = (
                purge_jobs.clone(),
                oldest_pending.clone(),
                hashes_in_flight.clone(),
            );
            Box::pin(async move {
                let (size, idle) = store.pool_connections();
                metrics.set_pool_connections(size, idle);
                hashes_in_flight.set(i64::try_from(hasher.in_flight()).unwrap_or(i64::MAX));
                match store.purge_queue_stats().await {
                    Ok(stats) => {
                        purge_jobs
                            .get_or_create(&StateLabels { state: "pending" })
                            .set(stats.pending);
                        purge_jobs
                            .get_or_create(&StateLabels { state: "purged" })
                            .set(stats.purged);
                        oldest_pending.set(
                            stats
                                .oldest_pending_age
                                .map_or(0.0, |age| age.as_secs_f64()),
                        );
                    }
                    Err(error) => tracing::warn!(
                        error = %heft_service::error::DisplayChain(&error),
                        "cannot read the purge queue for metrics"
                    ),
                }
            })
        })
    };
    (metrics, refresh)
}

/// The body of the `heft-users` binary (and of `heft users`).
pub async fn main(cli: Cli) -> std::process::ExitCode {
    let config = cli.config;
    server::main(
        "heft-users",
        matches!(cli.command, Some(Command::Healthcheck)),
        &config.common,
        healthcheck(&config),
        run(config.clone()),
    )
    .await
}

/// The `healthcheck` subcommand: true when the service reports SERVING.
pub async fn healthcheck(config: &Config) -> anyhow::Result<bool> {
    let url = server::local_url(config.listen, config.common.tls_cert.is_some());
    server::healthcheck(&url, config.common.client_tls()?).await
}
