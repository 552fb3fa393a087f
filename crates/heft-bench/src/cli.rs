//! The command line.

use std::{path::PathBuf, time::Duration};

use clap::Parser;

use crate::load::Load;

#[derive(Debug, Clone, Parser)]
#[command(name = "heft-bench", about = "heft against raw SQL, on PostgreSQL")]
pub struct Args {
    /// Admin URL of the PostgreSQL server; fresh databases are created on it.
    #[arg(
        long,
        env = "HEFT_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// Closed-loop workers per phase (the same for the raw statements).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// HTTP/2 connections the workers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Measured seconds per phase, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Warm-up seconds per phase, not measured.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Entries seeded through BatchCreateEntries before the phases.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: usize,
    /// Users the seeded entries are spread over.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Entry counts of the DeleteUser phases.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub purge_sizes: Vec<usize>,
    /// Where to write the report; `-` for nowhere.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    pub report: PathBuf,
    /// A smoke run: tiny sizes, one-second phases, no report.
    #[arg(long)]
    pub quick: bool,
    /// Only these phases (for profiling one path); a partial run writes no report.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub phases: Vec<Phase>,
    /// Serve the bare reference server on this database instead (the bench
    /// starts it so, beside heft-entries).
    #[arg(long, hide = true)]
    pub serve_bare: Option<String>,
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    pub bare_listen: std::net::SocketAddr,
}

/// The phases, in the order a run takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Get,
    /// GetEntry with traces off, on with an always-off sampler, and exported.
    Traces,
    /// GetEntry and CreateEntry with a scoped credential and a user token.
    Access,
    List,
    /// ListEntries for users whose entries were imported just before, with
    /// no ANALYZE since: one far heavier than the others.
    ListFresh,
    Create,
    /// UpdateEntry of a note against the UPDATE alone.
    Update,
    /// ListEntryChanges, pages of 500 anywhere in the feed.
    Feed,
    Batch,
    Login,
    /// Authenticate with more clients than the hashing queue admits.
    LoginOverload,
    Purge,
}

impl Args {
    pub fn tuned(mut self) -> Self {
        if self.quick {
            self.duration_secs = 1;
            self.warmup_secs = 0;
            self.entries = 2_000;
            self.users = 4;
            self.concurrency = self.concurrency.min(8);
            self.connections = self.connections.min(2);
            self.purge_sizes = vec![500];
            self.report = PathBuf::from("-");
        }
        if !self.phases.is_empty() {
            self.report = PathBuf::from("-");
        }
        self
    }

    pub fn runs(&self, phase: Phase) -> bool {
        self.phases.is_empty() || self.phases.contains(&phase)
    }

    /// The phases this run takes, in order.
    pub fn phases_to_run(&self) -> Vec<Phase> {
        use clap::ValueEnum as _;
        Phase::value_variants()
            .iter()
            .copied()
            .filter(|&phase| self.runs(phase))
            .collect()
    }

    /// A phase's load on `workers` workers.
    pub fn load(&self, workers: usize) -> Load {
        Load {
            workers,
            warmup: Duration::from_secs(self.warmup_secs),
            duration: Duration::from_secs(self.duration_secs),
        }
    }
}
