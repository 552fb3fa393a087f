//! heft users service: accounts (argon2id passwords, preferred unit) and the
//! cascade that purges a deleted user's entries in the entries service.
#![forbid(unsafe_code)]

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicI64},
};

use heft_proto::codec::MAX_MESSAGE_BYTES;
use heft_proto::users::v1::user_service_server::UserServiceServer;
use heft_service::{
    auth::CredentialsCommand,
    changes::{self, ListTokens},
    client::{self, InternalCredentials},
    config::{CommonArgs, DatabaseUrl},
    db::Database,
    host::{self, Host},
    keyed::KeyedHash,
    metrics::{self, FloatGauge, StateLabels},
};
use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch};

pub mod api;
pub mod cascade;
pub mod domain;
pub mod password;
pub mod store;
pub mod tokens;

/// How often a scrape may read the purge queue from the database.
const METRICS_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// Credentials for HEFT_CREDENTIALS_FILE.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// The keys that sign user tokens.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCommand {
    /// Add a new signing key: tokens are signed with it within 30 s, and the
    /// old key stays published until every token it signed has expired.
    Rotate,
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
    #[command(flatten)]
    pub tokens: tokens::TokenArgs,
}

/// Migrates the database, then serves on `listener` until `shutdown`
/// resolves; the purge dispatcher runs alongside and stops with it.
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
    let throttle_keys = KeyedHash::new(database.shared_key("login_throttle").await?);
    let hasher = password::PasswordHasher::new(&config.hashing)?;
    let entries = client::to_peer(&config.common, "HEFT_ENTRIES_URL", &config.entries_url)?;
    let cascade = Arc::new(cascade::Cascade::new(
        store.clone(),
        entries,
        InternalCredentials::new(config.common.outgoing_internal_token())?,
        config.cascade.clone(),
    ));
    let user_tokens = tokens::UserTokens::open(store.clone(), &config.tokens).await?;
    host.accept_user_tokens(user_tokens.clone());
    let refresh = register_metrics(host.registry(), store.clone(), hasher.clone());
    // The purge queue is read from the database: at most once per interval.
    let refresh = metrics::at_most_every(METRICS_REFRESH, refresh);
    let api = api::UserApi::new(
        store.clone(),
        hasher,
        domain::LoginThrottle::default(),
        throttle_keys,
        list_tokens.clone(),
        cascade.clone(),
        user_tokens,
    );

    let (stop_dispatcher, dispatcher_stopped) = watch::channel(false);
    let sweeper = tokio::spawn(sweep_login_throttle(
        store.clone(),
        domain::LoginThrottle::default(),
        dispatcher_stopped.clone(),
    ));
    let changes_sweeper = tokio::spawn({
        let store = store.clone();
        changes::sweep_expired(
            "user_changes",
            list_tokens.changes.clone(),
            move |before, limit| {
                let store = store.clone();
                async move { store.remove_user_changes_before(before, limit).await }
            },
            dispatcher_stopped.clone(),
        )
    });
    let dispatcher = tokio::spawn(cascade.run_dispatcher(dispatcher_stopped));
    let service = UserServiceServer::new(api)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let served = host
        .serve(service, api::METHODS, Some(refresh), shutdown)
        .await;

    let _ = stop_dispatcher.send(true);
    sweeper.abort();
    changes_sweeper.abort();
    if tokio::time::timeout(config.common.shutdown_grace(), dispatcher)
        .await
        .is_err()
    {
        tracing::warn!("purge dispatcher did not stop in time; its claimed jobs will be retried");
    }
    served
}

/// Throttle rows whose window is over limit nothing: removed every minute,
/// a bounded batch per statement, so the table holds only the emails tried
/// within the last window.
async fn sweep_login_throttle(
    store: Arc<dyn store::UserStore>,
    throttle: domain::LoginThrottle,
    mut stopped: watch::Receiver<bool>,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
    const BATCH: u32 = 1_000;
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        loop {
            match store
                .remove_expired_login_throttles(throttle.window, BATCH)
                .await
            {
                Ok(removed) if removed == u64::from(BATCH) => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(error = %heft_service::error::DisplayChain(&error), "cannot sweep the login throttle");
                    break;
                }
            }
        }
    }
}

/// heft-users' own series: the purge queue as the database has it (so every
/// replica reports the same), and hashes in flight.
fn register_metrics(
    registry: &mut Registry,
    store: Arc<dyn store::UserStore>,
    hasher: password::PasswordHasher,
) -> metrics::Refresh {
    let purge_jobs = Family::<StateLabels, Gauge>::default();
    let oldest_pending = FloatGauge::default();
    let hashes_in_flight = Gauge::<i64, AtomicI64>::default();
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
    Arc::new(move || {
        let (store, hasher) = (store.clone(), hasher.clone());
        let (purge_jobs, oldest_pending, hashes_in_flight) = (
            purge_jobs.clone(),
            oldest_pending.clone(),
            hashes_in_flight.clone(),
        );
        Box::pin(async move {
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
}

/// The body of the `heft-users` binary (and of `heft users`).
pub async fn main(cli: Cli) -> std::process::ExitCode {
    match &cli.command {
        Some(Command::Credentials(command)) => {
            return host::run_command(command.run(&mut std::io::stdout()));
        }
        Some(Command::Keys(KeysCommand::Rotate)) => {
            return host::run_command(rotate_keys(&cli.config).await);
        }
        _ => {}
    }
    let healthcheck = matches!(cli.command, Some(Command::Healthcheck));
    let (listen, common) = (cli.config.listen, cli.config.common.clone());
    host::main(
        "heft-users",
        healthcheck,
        listen,
        &common,
        |listener, shutdown| serve_with_listener(cli.config, listener, shutdown),
    )
    .await
}

async fn rotate_keys(config: &Config) -> anyhow::Result<()> {
    let database = Database::open(config.database_url.expose(), &store::MIGRATIONS).await?;
    let kid = tokens::rotate(store::on(&database).as_ref()).await?;
    println!("new token signing key {kid}: in use within 30 s on every replica");
    Ok(())
}
