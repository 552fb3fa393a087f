//! heft entries service: weight entries (stored as given, converted on
//! read), summaries, and `PurgeUserEntries`, the target of the users
//! service's cascade.
#![forbid(unsafe_code)]

use std::{future::Future, net::SocketAddr};

use heft_proto::{
    codec::MAX_BATCH_MESSAGE_BYTES, entries::v1::entry_service_server::EntryServiceServer,
};
use heft_service::{
    auth::CredentialsCommand,
    changes::{self, ListTokens},
    client::{self, InternalCredentials},
    config::{CommonArgs, DatabaseUrl},
    host::{self, Host},
};
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Channel;

pub mod api;
pub mod audit;
pub mod domain;
pub mod purge;
pub mod store;
pub mod token_keys;
pub mod users_client;

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
    /// Credentials for HEFT_CREDENTIALS_FILE.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
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

/// Migrates the database, then serves on `listener` until `shutdown` resolves.
pub async fn serve_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut host = Host::new(
        SERVICE_NAME,
        &config.common,
        &config.metrics_listen,
        listener,
        config.database_url.expose(),
        &store::MIGRATIONS,
    )
    .await?;
    let database = host.database();
    let store = store::on(database);
    let list_tokens = ListTokens::new(
        database.shared_key("page_token").await?,
        config.common.changes_retention_days,
    );
    let users_channel = users_channel(&config)?;
    let token_keys = token_keys::TokenKeys::new(users_channel.clone(), store.clone());
    // Not awaited: the users service need not be up for this one to start.
    tokio::spawn({
        let token_keys = token_keys.clone();
        async move { token_keys.fetch().await }
    });
    host.accept_user_tokens(token_keys);
    let users = users_client(&config, users_channel)?;
    let (stop_sweeping, sweeping_stopped) = watch::channel(false);
    let sweeper = tokio::spawn({
        let store = store.clone();
        changes::sweep_expired(
            "entry_changes",
            list_tokens.changes.clone(),
            move |before, limit| {
                let store = store.clone();
                async move { store.remove_entry_changes_before(before, limit).await }
            },
            sweeping_stopped,
        )
    });
    let api = api::EntryApi::new(store, users, list_tokens.clone(), config.purge.clone());
    // The largest message is BatchCreateEntries's; the codec holds every
    // other method to its own limit (`heft_proto::codec`).
    let service = EntryServiceServer::new(api)
        .max_decoding_message_size(MAX_BATCH_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_BATCH_MESSAGE_BYTES);
    let served = host.serve(service, api::METHODS, None, shutdown).await;
    let _ = stop_sweeping.send(true);
    sweeper.abort();
    served
}

/// The client this service asks whether users exist.
fn users_client(config: &Config, channel: Channel) -> anyhow::Result<users_client::UsersClient> {
    Ok(users_client::UsersClient::new(
        channel,
        InternalCredentials::new(config.common.outgoing_internal_token())?,
    ))
}

/// The channel to the users service.
fn users_channel(config: &Config) -> anyhow::Result<Channel> {
    client::to_peer(&config.common, "HEFT_USERS_URL", &config.users_url)
}

/// The body of the `heft-entries` binary (and of `heft entries`).
pub async fn main(cli: Cli) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = cli.config;
    match cli.command {
        Some(Command::AuditOrphans(args)) => {
            let telemetry = match heft_service::telemetry::init(
                &config.common.log,
                config.common.log_format,
                "heft-entries",
            ) {
                Ok(telemetry) => telemetry,
                Err(error) => {
                    eprintln!("{error:#}");
                    return ExitCode::from(2);
                }
            };
            let audited = audit::run(&config, &args, &mut std::io::stdout()).await;
            telemetry.shutdown(config.common.shutdown_grace()).await;
            match audited {
                Ok(audit::AuditOutcome::Clean) => ExitCode::SUCCESS,
                Ok(audit::AuditOutcome::Orphans) => ExitCode::from(1),
                Ok(audit::AuditOutcome::PurgeRefused) => ExitCode::from(2),
                Err(error) => {
                    eprintln!("audit-orphans aborted: {error:#}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Credentials(command)) => {
            host::run_command(command.run(&mut std::io::stdout()))
        }
        command => {
            let healthcheck = matches!(command, Some(Command::Healthcheck));
            let (listen, common) = (config.listen, config.common.clone());
            host::main(
                "heft-entries",
                healthcheck,
                listen,
                &common,
                |listener, shutdown| serve_with_listener(config, listener, shutdown),
            )
            .await
        }
    }
}
