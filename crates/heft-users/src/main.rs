#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use heft_users::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck) = cli.command {
        return match heft_users::healthcheck(&cli.config).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("heft-users is not serving");
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("heft-users health check failed: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(error) =
        heft_service::telemetry::init(&cli.config.common.log, cli.config.common.log_format)
    {
        eprintln!("{error:#}");
        return ExitCode::FAILURE;
    }
    match heft_users::run(cli.config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "heft-users failed");
            ExitCode::FAILURE
        }
    }
}
