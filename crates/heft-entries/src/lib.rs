//! heft entries service: weight entries (stored as given, converted on
//! read), summaries, and `PurgeUserEntries`, the target of the users
//! service's cascade.
#![forbid(unsafe_code)]

use std::{future::Future, net::SocketAddr, sync::Arc};

use heft_proto::entries::v1::entry_service_server::EntryServiceServer;
use heft_service::{
    config::{CommonArgs, DatabaseUrl},
    metrics::{self, Metrics},
    pagination::{PageTokens, generate_key},
    server::{self, InternalCredentials, Serving},
};
use tokio::net::TcpListener;

pub mod api;
pub mod audit;
pub mod domain;
pub mod purge;
pub mod store;
pub mod users_client;

/// Largest request or response of the service: BatchCreateEntries's. The
/// codec holds every other method to 4 MiB (`heft_proto::codec`).
pub use heft_proto::codec::MAX_BATCH_MESSAGE_BYTES as MAX_MESSAGE_BYTES;

/// The service name health checks and reflection know it by.
pub const SERVICE_NAME: &str = "heft.entries.v1.EntryService";

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "heft-entries", version, about = "heft entries service")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exit 0 when the service at HEFT_ENTRIES_LISTEN reports SERVING (for container health checks).
    Healthcheck,
    /// List entries whose user no longer exists in the users service (exit 0:
    /// none, 1: orphans found, 2: error or purge refused); --purge purges them.
    AuditOrphans(audit::AuditArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HEFT_ENTRIES_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// sqlite://path or postgres://user:password@host/database.
    #[arg(
        long,
        env = "HEFT_ENTRIES_DATABASE_URL",
        default_value = "sqlite://data/entries.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,
    /// Where the users service listens (to check that users exist).
    #[arg(long, env = "HEFT_USERS_URL", default_value = "http://127.0.0.1:50051")]
    pub users_url: String,
    /// Where `/metrics` is served (Prometheus text format); empty turns it off.
    #[arg(
        long,
        env = "HEFT_ENTRIES_METRICS_LISTEN",
        default_value = "127.0.0.1:9052"
    )]
    pub metrics_listen: String,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub purge: purge::PurgeArgs,
}

/// Binds `HEFT_ENTRIES_LISTEN` and serves until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    serve_with_listener(config, listener, server::shutdown_signal()).await
}

/// Migrates the database, then serves on `listener` until `shutdown` resolves.
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
    let users = users_client(&config)?;
    let api = api::EntryApi::new(store.clone(), users, page_tokens, config.purge.clone());

    let metrics_listener = metrics::bind(&config.metrics_listen).await?;
    let metrics = Arc::new(Metrics::new(SERVICE_NAME));
    let refresh_metrics: metrics::Refresh = {
        let (metrics, store) = (metrics.clone(), store.clone());
        Arc::new(move || {
            let (size, idle) = store.pool_connections();
            metrics.set_pool_connections(size, idle);
            Box::pin(async {})
        })
    };
    let (router, health) = server::base_router(
        SERVICE_NAME,
        tokens,
        &config.common.limits,
        metrics.clone(),
        config.common.server_tls()?,
    )
    .await?;
    let router = router.add_service(
        EntryServiceServer::new(api)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    );
    server::serve(
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
    .await
}

/// The client this service asks whether users exist.
fn users_client(config: &Config) -> anyhow::Result<users_client::UsersClient> {
    Ok(users_client::UsersClient::new(
        server::channel(
            &config.users_url,
            config.common.client_tls()?,
            std::time::Duration::from_secs(1),
        )?,
        InternalCredentials::new(config.common.outgoing_internal_token())?,
    ))
}

/// The body of the `heft-entries` binary (and of `heft entries`).
pub async fn main(cli: Cli) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = cli.config;
    match cli.command {
        Some(Command::AuditOrphans(args)) => {
            if let Err(error) =
                heft_service::telemetry::init(&config.common.log, config.common.log_format)
            {
                eprintln!("{error:#}");
                return ExitCode::from(2);
            }
            match audit::run(&config, &args, &mut std::io::stdout()).await {
                Ok(audit::AuditOutcome::Clean) => ExitCode::SUCCESS,
                Ok(audit::AuditOutcome::Orphans) => ExitCode::from(1),
                Ok(audit::AuditOutcome::PurgeRefused) => ExitCode::from(2),
                Err(error) => {
                    eprintln!("audit-orphans aborted: {error:#}");
                    ExitCode::from(2)
                }
            }
        }
        command => {
            server::main(
                "heft-entries",
                matches!(command, Some(Command::Healthcheck)),
                &config.common,
                healthcheck(&config),
                run(config.clone()),
            )
            .await
        }
    }
}

/// The `healthcheck` subcommand: true when the service reports SERVING.
pub async fn healthcheck(config: &Config) -> anyhow::Result<bool> {
    let url = server::local_url(config.listen, config.common.tls_cert.is_some());
    server::healthcheck(&url, config.common.client_tls()?).await
}
