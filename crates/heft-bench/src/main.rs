//! `heft-bench`: heft's hot paths under closed-loop load, each beside the
//! same statement run directly against PostgreSQL at the same concurrency in
//! the same run, so every target prints as a ratio.
//!
//! `cargo build --profile dist --workspace && target/dist/heft-bench` starts both services
//! (release binaries next to this one) on fresh PostgreSQL databases, seeds
//! through the API, runs the phases, prints a table and writes
//! `docs/BENCHMARKS.md`.
#![forbid(unsafe_code)]

mod bare;
mod cli;
mod clients;
mod floor;
mod load;
mod phases;
mod report;
mod sample;
mod spans;
mod stack;

use anyhow::Context;
use clap::Parser;

use crate::{cli::Args, phases::Bench, stack::Stack};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse().tuned();
    if let Some(database_url) = &args.serve_bare {
        return bare::serve(database_url, args.bare_listen).await;
    }
    eprintln!("starting both services on fresh PostgreSQL databases");
    let stack = Stack::start(&args.postgres_url).await?;
    let mut bench = Bench::prepare(args, stack).await?;
    for phase in bench.args.phases_to_run() {
        bench.run(phase).await?;
    }
    let (args, report) = bench.finish().await?;

    let text = report::render(&args, &report);
    println!("{text}");
    if args.report.as_os_str() != "-" {
        std::fs::write(&args.report, &text)
            .with_context(|| format!("cannot write {}", args.report.display()))?;
        eprintln!("wrote {}", args.report.display());
    }
    let missed = report.missed();
    if missed > 0 {
        eprintln!("{missed} target(s) not met");
    }
    Ok(())
}
