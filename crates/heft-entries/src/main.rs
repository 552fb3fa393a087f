#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use heft_entries::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    let healthcheck = matches!(cli.command, Some(Command::Healthcheck));
    heft_service::server::main(
        "heft-entries",
        healthcheck,
        &config.common.clone(),
        heft_entries::healthcheck(&config),
        heft_entries::run(config.clone()),
    )
    .await
}
