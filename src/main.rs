//! `heft`: one command for the whole stack. With no subcommand it runs both
//! services in this process on their defaults (SQLite under `./data/`),
//! configured by the same `HEFT_*` variables as their own binaries; Ctrl-C
//! stops both cleanly. `heft users …` and `heft entries …` are `heft-users`
//! and `heft-entries`, with their flags and subcommands.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tokio::{net::TcpListener, sync::watch};

// A list page allocates and frees hundreds of small strings; glibc's malloc
// spent a tenth of heft-entries' CPU doing so (docs/profiles/).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, clap::Parser)]
#[command(
    name = "heft",
    version,
    about = "Run the heft users and entries services"
)]
struct Cli {
    #[command(subcommand)]
    service: Option<Service>,
}

#[derive(Debug, clap::Subcommand)]
enum Service {
    /// Run only the users service (same flags and subcommands as heft-users).
    Users(heft_users::Cli),
    /// Run only the entries service (same flags and subcommands as heft-entries).
    Entries(heft_entries::Cli),
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().service {
        Some(Service::Users(cli)) => return heft_users::main(cli).await,
        Some(Service::Entries(cli)) => return heft_entries::main(cli).await,
        None => run_both().await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("heft: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Both services, each configured from the environment alone.
async fn run_both() -> anyhow::Result<()> {
    let users = heft_users::Cli::try_parse_from(["heft-users"])?.config;
    let entries = heft_entries::Cli::try_parse_from(["heft-entries"])?.config;
    // One process, one exporter: its spans say which service served them.
    let telemetry =
        heft_service::telemetry::init(&users.common.log, users.common.log_format, "heft")?;
    let grace = users.common.shutdown_grace();

    let users_listener = TcpListener::bind(users.listen).await?;
    let entries_listener = TcpListener::bind(entries.listen).await?;
    let (stop, stopped) = watch::channel(false);
    let signal = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    tracing::info!(users = %users.listen, entries = %entries.listen, "starting both heft services");
    let mut users = tokio::spawn(heft_users::serve_with_listener(
        users,
        users_listener,
        signal(stopped.clone()),
    ));
    let mut entries = tokio::spawn(heft_entries::serve_with_listener(
        entries,
        entries_listener,
        signal(stopped),
    ));
    // Whichever ends first (a signal, or a failure to start) stops the other.
    let (first, other) = tokio::select! {
        () = heft_service::host::shutdown_signal() => {
            let _ = stop.send(true);
            (users.await, entries)
        }
        served = &mut users => (served, entries),
        served = &mut entries => (served, users),
    };
    let _ = stop.send(true);
    let second = other.await;
    telemetry.shutdown(grace).await;
    first?.and(second?)
}
