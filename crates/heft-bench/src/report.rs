//! The report: one table row per measure, CPU per call, resources per
//! phase and notes, rendered as docs/BENCHMARKS.md.

use std::fmt::Write as _;

use chrono::Utc;

use crate::{cli::Args, load::Measured, stack::Usage};

/// One row of the report.
pub struct Row {
    pub measure: String,
    pub heft: String,
    pub floor: String,
    pub ratio: Option<f64>,
    pub target: &'static str,
    pub met: Option<bool>,
}

/// Where one call's CPU went, for heft and for its floor.
pub struct CpuRow {
    pub measure: String,
    pub heft: Measured,
    pub floor: Option<Measured>,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub cpu: Vec<CpuRow>,
    /// Each service's resources (heft-users, then heft-entries) per phase.
    pub usage: Vec<(String, Vec<Usage>)>,
    pub details: Vec<String>,
    pub postgres_version: String,
}

/// Throughput and latency of a closed loop, as every such cell shows them.
pub fn throughput(measured: &Measured) -> String {
    format!(
        "{:.0} rps (p50 {:.2} ms, p99 {:.2} ms, {} errors)",
        measured.rps(),
        measured.percentile_ms(50.0),
        measured.percentile_ms(99.0),
        measured.errors
    )
}

pub fn mib(value: Option<f64>) -> String {
    value.map_or("not measured".to_owned(), |mib| format!("{mib:.0} MiB"))
}

impl Report {
    /// heft against its floor: their throughputs, the ratio and where the
    /// CPU went.
    pub fn ratio(
        &mut self,
        measure: &str,
        heft: &Measured,
        raw: &Measured,
        target: &'static str,
        at_least: Option<f64>,
    ) {
        let ratio = heft.rps() / raw.rps().max(1e-9);
        self.rows.push(Row {
            measure: measure.to_owned(),
            heft: throughput(heft),
            floor: throughput(raw),
            ratio: Some(ratio),
            target,
            met: at_least.map(|least| ratio >= least && heft.errors == 0),
        });
        for (what, measured) in [("heft", heft), ("raw", raw)] {
            if let Some(error) = &measured.first_error {
                self.details
                    .push(format!("{measure} ({what}): first error: {error}"));
            }
        }
        self.cpu.push(CpuRow {
            measure: measure.to_owned(),
            heft: heft.clone(),
            floor: Some(raw.clone()),
        });
    }

    /// How many rows missed their target.
    pub fn missed(&self) -> usize {
        self.rows
            .iter()
            .filter(|row| row.met == Some(false))
            .count()
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown".to_owned(), |(_, model)| model.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or("unknown".to_owned(), |kib| {
            format!("{} GiB", kib / 1024 / 1024)
        });
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {memory}, Linux {}; {}",
        kernel.trim(),
        syscall_mitigations()
    )
}

/// The kernel's mitigations that make each syscall and context switch dearer
/// (SRSO's "Safe RET" on AMD doubled a gRPC round trip's CPU on one machine):
/// runs are comparable only where these agree.
fn syscall_mitigations() -> String {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/vulnerabilities/{name}"))
            .map_or_else(|_| "unknown".to_owned(), |state| state.trim().to_owned())
    };
    format!(
        "spec_rstack_overflow: {}; retbleed: {}; spectre_v2: {}",
        read("spec_rstack_overflow"),
        read("retbleed"),
        read("spectre_v2")
    )
}

pub fn render(args: &Args, report: &Report) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# heft benchmarks\n");
    let _ = writeln!(
        text,
        "Produced by `heft-bench` (see the README); every ratio is measured in the same run \
         as its floor: the same statement run directly against the same PostgreSQL table \
         at the same concurrency. Where the time goes: `docs/profiles/` (flamegraphs \
         from `bench/profile.sh`).\n"
    );
    let _ = writeln!(text, "- date: {}", Utc::now().format("%Y-%m-%d %H:%M UTC"));
    let _ = writeln!(text, "- machine: {}", machine());
    let _ = writeln!(text, "- PostgreSQL: {}", report.postgres_version);
    let _ = writeln!(text, "- rustc: {}", command_output("rustc", &["-V"]));
    let _ = writeln!(
        text,
        "- heft: {}",
        command_output("git", &["rev-parse", "--short", "HEAD"])
    );
    let _ = writeln!(
        text,
        "- load: closed loop, {} workers over {} HTTP/2 connections (BatchCreateEntries: {}, \
         Authenticate: {}, GetUser beside it: 4), \
         {} s warm-up excluded, {} s measured per phase (heft and its floor in turns, five slices each, so that a slow spell of the machine weighs on both alike); {} entries seeded over {} users; \
         both services ({} builds) with tokens, on loopback\n",
        args.concurrency,
        args.connections,
        args.concurrency.min(8),
        args.concurrency
            .min(5 * std::thread::available_parallelism().map_or(2, usize::from)),
        args.warmup_secs,
        args.duration_secs,
        args.entries,
        args.users,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "optimised"
        }
    );
    let _ = writeln!(
        text,
        "| measure | heft | floor (raw SQL) | ratio | target | met |"
    );
    let _ = writeln!(text, "|---|---|---|---:|---|---|");
    for row in &report.rows {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} |",
            row.measure,
            row.heft,
            row.floor,
            row.ratio.map_or("–".to_owned(), |r| format!("{r:.2}")),
            row.target,
            match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }
    if !report.cpu.is_empty() {
        let _ = writeln!(text, "\n## CPU per call\n");
        let _ = writeln!(
            text,
            "Microseconds of CPU per call in each process while the calls were measured \
             (heft-bench is the client: tonic for heft, sqlx for the floor; the service is \
             heft-entries, or the bare server in its rows; PostgreSQL is every server \
             process), and how many of the {} cores they kept busy together. \
             A ratio below 1 is what heft spends beyond its floor on a machine that the \
             client, the service and the database share.\n",
            std::thread::available_parallelism().map_or(0, usize::from)
        );
        let _ = writeln!(
            text,
            "| call | heft: client | service | PostgreSQL | all | cores busy | \
             floor: client | PostgreSQL | all | cores busy |"
        );
        let _ = writeln!(text, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in &report.cpu {
            let heft = row.heft.cpu_per_call_us();
            let floor = match &row.floor {
                Some(floor) => {
                    let split = floor.cpu_per_call_us();
                    format!(
                        "{:.0} µs | {:.0} µs | {:.0} µs | {:.2}",
                        split.client,
                        split.database,
                        split.total(),
                        floor.cores_busy()
                    )
                }
                None => "– | – | – | –".into(),
            };
            let _ = writeln!(
                text,
                "| {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.2} | {floor} |",
                row.measure,
                heft.client,
                heft.service,
                heft.database,
                heft.total(),
                row.heft.cores_busy()
            );
        }
    }
    let _ = writeln!(text, "\n## Resources per phase\n");
    let _ = writeln!(
        text,
        "| phase | heft-users peak RSS | heft-users CPU | heft-entries peak RSS | heft-entries CPU |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|");
    for (phase, usage) in &report.usage {
        let _ = writeln!(
            text,
            "| {phase} | {:.0} MiB | {:.1} s | {:.0} MiB | {:.1} s |",
            usage[0].max_rss_mib, usage[0].cpu_seconds, usage[1].max_rss_mib, usage[1].cpu_seconds
        );
    }
    if !report.details.is_empty() {
        let _ = writeln!(text, "\n## Notes\n");
        for detail in &report.details {
            let _ = writeln!(text, "- {detail}");
        }
    }
    text
}
