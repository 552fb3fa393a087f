#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use heft_users::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    let healthcheck = matches!(cli.command, Some(Command::Healthcheck));
    heft_service::server::main(
        "heft-users",
        healthcheck,
        &config.common.clone(),
        heft_users::healthcheck(&config),
        heft_users::run(config.clone()),
    )
    .await
}
