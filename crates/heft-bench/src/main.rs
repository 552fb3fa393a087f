//! `heft-bench`: heft's hot paths under closed-loop load, each beside the
//! same statement run directly against PostgreSQL at the same concurrency in
//! the same run, so every target prints as a ratio.
//!
//! `cargo build --release --workspace && target/release/heft-bench` starts both services
//! (release binaries next to this one) on fresh PostgreSQL databases, seeds
//! through the API, runs the phases, prints a table and writes
//! `docs/BENCHMARKS.md`.
#![forbid(unsafe_code)]

mod bare;
mod floor;
mod load;
mod report;
mod sample;
mod stack;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use clap::Parser;
use floor::{EntryRow, FloorConnections, raw_pool};
use heft_proto::{
    common::v1::{Weight, WeightUnit},
    entries::v1::{self as entries_pb, entry_service_client::EntryServiceClient},
    google::r#type::Date,
    users::v1::{self as users_pb, user_service_client::UserServiceClient},
};
use load::{CpuProbe, Load, alternate, closed_loop, paced_loop, per_call};
use rand::Rng;
use report::{CpuRow, Report, Row, mib, throughput};
use stack::{API_TOKEN, Sampler, Stack};
use tonic::{metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";
const KG: i32 = WeightUnit::Kilograms as i32;

#[derive(Debug, Clone, Parser)]
#[command(name = "heft-bench", about = "heft against raw SQL, on PostgreSQL")]
struct Args {
    /// Admin URL of the PostgreSQL server; fresh databases are created on it.
    #[arg(
        long,
        env = "HEFT_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Closed-loop workers per phase (the same for the raw statements).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the workers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured seconds per phase, after the warm-up.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Warm-up seconds per phase, not measured.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Entries seeded through BatchCreateEntries before the phases.
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Users the seeded entries are spread over.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Entry counts of the DeleteUser phases.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    purge_sizes: Vec<usize>,
    /// Where to write the report; `-` for nowhere.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    report: PathBuf,
    /// A smoke run: tiny sizes, one-second phases, no report.
    #[arg(long)]
    quick: bool,
    /// Only these phases (for profiling one path); a partial run writes no report.
    #[arg(long, value_enum, value_delimiter = ',')]
    phases: Vec<Phase>,
    /// Serve the bare reference server on this database instead (the bench
    /// starts it so, beside heft-entries).
    #[arg(long, hide = true)]
    serve_bare: Option<String>,
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    bare_listen: std::net::SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Get,
    List,
    Create,
    Batch,
    Login,
    Purge,
}

impl Args {
    fn tuned(mut self) -> Self {
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

    fn runs(&self, phase: Phase) -> bool {
        self.phases.is_empty() || self.phases.contains(&phase)
    }

    /// A phase's load on `workers` workers.
    fn load(&self, workers: usize) -> Load {
        Load {
            workers,
            warmup: Duration::from_secs(self.warmup_secs),
            duration: Duration::from_secs(self.duration_secs),
        }
    }
}

const BARE_GET: &str = "GetEntry on a bare tonic + sqlx server (for scale)";
const BARE_LIST: &str = "ListEntries on a bare tonic + sqlx server (for scale)";

/// The bare reference server (`bare`) and clients of it.
struct Bare {
    clients: Clients,
    cpu: CpuProbe,
    _server: stack::Service,
}

/// The generated clients over a few shared connections, with the token.
#[derive(Clone)]
struct Clients {
    users: Vec<UserServiceClient<Channel>>,
    entries: Vec<EntryServiceClient<Channel>>,
    token: MetadataValue<tonic::metadata::Ascii>,
}

impl Clients {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.token.clone());
        request
    }

    fn users(&self, worker: usize) -> UserServiceClient<Channel> {
        self.users[worker % self.users.len()].clone()
    }

    fn entries(&self, worker: usize) -> EntryServiceClient<Channel> {
        self.entries[worker % self.entries.len()]
            .clone()
            .max_decoding_message_size(heft_proto::codec::MAX_BATCH_MESSAGE_BYTES)
            .max_encoding_message_size(heft_proto::codec::MAX_BATCH_MESSAGE_BYTES)
    }
}

/// What the seeding left: users (with their emails) and every entry id.
struct Seeded {
    users: Vec<(String, String)>,
    entry_ids: Vec<String>,
}

impl Seeded {
    fn any_entry(&self) -> &str {
        &self.entry_ids[rand::thread_rng().gen_range(0..self.entry_ids.len())]
    }

    /// A seeded user: (id, email).
    fn any_user(&self) -> &(String, String) {
        &self.users[rand::thread_rng().gen_range(0..self.users.len())]
    }
}

fn new_entry(i: usize) -> entries_pb::NewEntry {
    entries_pb::NewEntry {
        weight: Some(Weight {
            value: 60.0 + (i % 400) as f64 / 10.0,
            unit: KG,
        }),
        recorded_on: Some(day(i)),
        note: String::new(),
    }
}

fn day(i: usize) -> Date {
    sample::date_to_proto(
        NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default()
            + chrono::Days::new((i % 9_000) as u64),
    )
}

async fn create_user(clients: &Clients, worker: usize) -> anyhow::Result<(String, String)> {
    let email = format!("bench-{}@example.com", Uuid::new_v4().simple());
    let user = clients
        .users(worker)
        .create_user(clients.request(users_pb::CreateUserRequest {
            email: email.clone(),
            name: "Bench".into(),
            password: PASSWORD.into(),
            weight_unit: KG,
        }))
        .await?
        .into_inner();
    Ok((user.id, email))
}

/// Imports `count` entries for `user` in batches of 10,000; returns their ids.
async fn import(
    clients: &Clients,
    worker: usize,
    user: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    let mut done = 0;
    while done < count {
        let size = (count - done).min(10_000);
        let response = clients
            .entries(worker)
            .batch_create_entries(clients.request(entries_pb::BatchCreateEntriesRequest {
                user_id: user.to_owned(),
                entries: (done..done + size).map(new_entry).collect(),
            }))
            .await?
            .into_inner();
        ids.extend(response.entries.into_iter().map(|e| e.id));
        done += size;
    }
    Ok(ids)
}

async fn seed(clients: &Clients, args: &Args) -> anyhow::Result<Seeded> {
    let per_user = args.entries / args.users.max(1);
    let tasks: Vec<_> = (0..args.users)
        .map(|i| {
            let clients = clients.clone();
            async move {
                let (user, email) = create_user(&clients, i).await?;
                let ids = import(&clients, i, &user, per_user).await?;
                Ok::<_, anyhow::Error>(((user, email), ids))
            }
        })
        .collect();
    let mut seeded = Seeded {
        users: Vec::new(),
        entry_ids: Vec::new(),
    };
    // Four importers at once keep the database busy without starving it.
    let mut results = futures::stream::iter(tasks).buffer_unordered(4);
    use futures::StreamExt;
    while let Some(result) = results.next().await {
        let (user, ids) = result?;
        seeded.users.push(user);
        seeded.entry_ids.extend(ids);
    }
    Ok(seeded)
}

fn failed(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// Times of argon2id hashes at heft's default parameters, in this process:
/// `each` hashes on each of `threads` threads at once.
fn hash_times(threads: usize, each: usize) -> Vec<Duration> {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version, password_hash::SaltString};
    let params = Params::new(19_456, 2, 1, None).unwrap_or_default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    std::thread::scope(|scope| {
        let hashers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    (0..each)
                        .map(|_| {
                            let salt =
                                SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
                            let started = Instant::now();
                            let _ = argon2.hash_password(PASSWORD.as_bytes(), &salt);
                            started.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hashers
            .into_iter()
            .flat_map(|hasher| hasher.join().unwrap_or_default())
            .collect()
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse().tuned();
    if let Some(database_url) = &args.serve_bare {
        return bare::serve(database_url, args.bare_listen).await;
    }
    let c = args.concurrency;
    eprintln!("starting both services on fresh PostgreSQL databases");
    let stack = Stack::start(&args.postgres_url).await?;
    let clients = Clients {
        users: Stack::channels(stack.users.addr, args.connections)
            .await?
            .into_iter()
            .map(UserServiceClient::new)
            .collect(),
        entries: Stack::channels(stack.entries.addr, args.connections)
            .await?
            .into_iter()
            .map(EntryServiceClient::new)
            .collect(),
        token: format!("Bearer {API_TOKEN}").parse()?,
    };
    let pids = [stack.users.pid(), stack.entries.pid()];
    let entries_cpu: CpuProbe = {
        let pid = stack.entries.pid();
        Arc::new(move || stack::cpu_split(pid))
    };
    let users_cpu: CpuProbe = {
        let pid = stack.users.pid();
        Arc::new(move || stack::cpu_split(pid))
    };
    let mut report = Report::default();

    eprintln!(
        "seeding {} entries over {} users through BatchCreateEntries",
        args.entries, args.users
    );
    let seeding = Instant::now();
    let seeded = Arc::new(seed(&clients, &args).await?);
    report.details.push(format!(
        "seeded {} entries over {} users in {:.1} s",
        seeded.entry_ids.len(),
        seeded.users.len(),
        seeding.elapsed().as_secs_f64()
    ));
    let raw = raw_pool(&stack.entries_url, 2).await?;
    let floor_db = Arc::new(FloorConnections::connect(&stack.entries_url, c).await?);
    // For scale: GetEntry and ListEntries on the least a gRPC service over
    // the same table can do, against the same floor.
    let bare = if args.runs(Phase::Get) || args.runs(Phase::List) {
        let server = stack.start_bare().await?;
        let pid = server.pid();
        Some(Bare {
            clients: Clients {
                users: Vec::new(),
                entries: Stack::channels(server.addr, args.connections)
                    .await?
                    .into_iter()
                    .map(EntryServiceClient::new)
                    .collect(),
                token: clients.token.clone(),
            },
            cpu: Arc::new(move || stack::cpu_split(pid)),
            _server: server,
        })
    } else {
        None
    };

    // heft-users after the login phases: at full load, and idle after it.
    let (mut login_rss_mib, mut idle_users_mib) = (None, None);

    if args.runs(Phase::Get) {
        // GetEntry against SELECT by primary key.
        eprintln!("phase: GetEntry");
        let sampler = Sampler::start(&pids);
        let get_through = |clients: &Clients| {
            per_call(
                (clients.clone(), seeded.clone()),
                |(clients, seeded), worker, _| async move {
                    let id = seeded.any_entry().to_owned();
                    clients
                        .entries(worker)
                        .get_entry(clients.request(entries_pb::GetEntryRequest { id, unit: 0 }))
                        .await
                        .map(drop)
                        .map_err(failed)
                },
            )
        };
        let heft_call = get_through(&clients);
        let floor_call = per_call(
            (floor_db.clone(), seeded.clone()),
            |(floor_db, seeded), worker, _| async move {
                let id: Uuid = seeded.any_entry().parse().map_err(failed)?;
                sqlx::query_as::<_, EntryRow>(
                    "SELECT id, user_id, value, unit, recorded_on, note, create_time, update_time
                         FROM entries WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *floor_db.connection(worker).await)
                .await
                .map(drop)
                .map_err(failed)
            },
        );
        let (heft, floor) =
            alternate(args.load(c), &entries_cpu, heft_call, floor_call.clone()).await;
        report
            .usage
            .push(("GetEntry".into(), sampler.finish().await));
        report.ratio("GetEntry", &heft, &floor, "≥ 0.6", Some(0.6));
        if let Some(bare) = &bare {
            let (of_bare, floor) = alternate(
                args.load(c),
                &bare.cpu,
                get_through(&bare.clients),
                floor_call,
            )
            .await;
            report.ratio(BARE_GET, &of_bare, &floor, "—", None);
        }

        // The gRPC round trip alone, through the same server stack and
        // connections with no database behind it: for scale, what a call
        // costs before its statement.
        let health: Vec<HealthClient<Channel>> =
            Stack::channels(stack.entries.addr, args.connections)
                .await?
                .into_iter()
                .map(HealthClient::new)
                .collect();
        let alone = closed_loop(args.load(c), &entries_cpu, move |worker: usize, _: u64| {
            let mut client = health[worker % health.len()].clone();
            async move {
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(drop)
                    .map_err(failed)
            }
        })
        .await;
        report.cpu.push(CpuRow {
            measure: "Health/Check (no database)".into(),
            heft: alone.clone(),
            floor: None,
        });
        report.rows.push(Row {
            measure: "gRPC round trip alone (Health/Check, no database)".into(),
            heft: throughput(&alone),
            floor: "–".into(),
            ratio: None,
            target: "—",
            met: None,
        });
    }

    if args.runs(Phase::List) {
        // ListEntries (a page of 100) against the keyset SELECT it runs.
        eprintln!("phase: ListEntries");
        let sampler = Sampler::start(&pids);
        let list_through = |clients: &Clients| {
            per_call(
                (clients.clone(), seeded.clone()),
                |(clients, seeded), worker, _| async move {
                    let user = seeded.any_user().0.clone();
                    clients
                        .entries(worker)
                        .list_entries(clients.request(entries_pb::ListEntriesRequest {
                            user_id: user,
                            page_size: 100,
                            ..Default::default()
                        }))
                        .await
                        .map(drop)
                        .map_err(failed)
                },
            )
        };
        let heft_call = list_through(&clients);
        let floor_call = per_call(
            (floor_db.clone(), seeded.clone()),
            |(floor_db, seeded), worker, _| async move {
                let user: Uuid = seeded.any_user().0.parse().map_err(failed)?;
                sqlx::query_as::<_, EntryRow>(
                    "SELECT id, user_id, value, unit, recorded_on, note, create_time, update_time
                         FROM entries WHERE user_id = $1
                         ORDER BY recorded_on, create_time, id LIMIT 101",
                )
                .bind(user)
                .fetch_all(&mut *floor_db.connection(worker).await)
                .await
                .map(drop)
                .map_err(failed)
            },
        );
        let (heft, floor) =
            alternate(args.load(c), &entries_cpu, heft_call, floor_call.clone()).await;
        report
            .usage
            .push(("ListEntries".into(), sampler.finish().await));
        report.ratio(
            "ListEntries (page of 100)",
            &heft,
            &floor,
            "≥ 0.6",
            Some(0.6),
        );
        if let Some(bare) = &bare {
            let (of_bare, floor) = alternate(
                args.load(c),
                &bare.cpu,
                list_through(&bare.clients),
                floor_call,
            )
            .await;
            report.ratio(BARE_LIST, &of_bare, &floor, "—", None);
        }
    }

    if args.runs(Phase::Create) {
        // CreateEntry (with a request id) against the INSERT of the same row.
        eprintln!("phase: CreateEntry");
        let sampler = Sampler::start(&pids);
        let heft_call = per_call(
            (clients.clone(), seeded.clone()),
            |(clients, seeded), worker, i| async move {
                let user = seeded.any_user().0.clone();
                let entry = new_entry(i as usize);
                clients
                    .entries(worker)
                    .create_entry(clients.request(entries_pb::CreateEntryRequest {
                        user_id: user,
                        weight: entry.weight,
                        recorded_on: entry.recorded_on,
                        note: "morning".into(),
                        request_id: Uuid::new_v4().to_string(),
                    }))
                    .await
                    .map(drop)
                    .map_err(failed)
            },
        );
        let floor_call = per_call(
            (floor_db.clone(), seeded.clone()),
            |(floor_db, seeded), worker, i| async move {
                let user: Uuid = seeded.any_user().0.parse().map_err(failed)?;
                let now = Utc::now();
                sqlx::query(
                        "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, request_id, create_time, update_time)
                         VALUES ($1, $2, $3, 1, $4, 'morning', $5, $6, $6)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(user)
                    .bind(60.0 + (i % 400) as f64 / 10.0)
                    .bind(NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default() + chrono::Days::new(i % 9_000))
                    .bind(Uuid::new_v4())
                    .bind(now)
                    .execute(&mut *floor_db.connection(worker).await)
                    .await
                    .map(drop)
                    .map_err(failed)
            },
        );
        let (heft, floor) = alternate(args.load(c), &entries_cpu, heft_call, floor_call).await;
        report
            .usage
            .push(("CreateEntry".into(), sampler.finish().await));
        report.ratio("CreateEntry", &heft, &floor, "≥ 0.6", Some(0.6));
    }

    if args.runs(Phase::Batch) {
        // BatchCreateEntries of 1,000 against one UNNEST INSERT of 1,000.
        eprintln!("phase: BatchCreateEntries");
        let batch_workers = c.min(8);
        let sampler = Sampler::start(&pids);
        let heft_call = per_call(
            (clients.clone(), seeded.clone()),
            |(clients, seeded), worker, _| async move {
                let user = seeded.users[worker % seeded.users.len()].0.clone();
                clients
                    .entries(worker)
                    .batch_create_entries(clients.request(entries_pb::BatchCreateEntriesRequest {
                        user_id: user,
                        entries: (0..1_000).map(new_entry).collect(),
                    }))
                    .await
                    .map(drop)
                    .map_err(failed)
            },
        );
        let floor_call = per_call(
            (floor_db.clone(), seeded.clone()),
            |(floor_db, seeded), worker, _| async move {
                let user: Uuid = seeded.users[worker % seeded.users.len()]
                    .0
                    .parse()
                    .map_err(failed)?;
                let ids: Vec<Uuid> = (0..1_000).map(|_| Uuid::now_v7()).collect();
                let values: Vec<f64> = (0..1_000)
                    .map(|i| 60.0 + f64::from(i % 400) / 10.0)
                    .collect();
                let days: Vec<NaiveDate> = (0..1_000u64)
                    .map(|i| {
                        NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default()
                            + chrono::Days::new(i)
                    })
                    .collect();
                sqlx::query(
                        "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
                         SELECT id, $2, value, 1, recorded_on, '', now(), now()
                         FROM UNNEST($1::uuid[], $3::float8[], $4::date[]) AS batch (id, value, recorded_on)",
                    )
                    .bind(&ids)
                    .bind(user)
                    .bind(&values)
                    .bind(&days)
                    .execute(&mut *floor_db.connection(worker).await)
                    .await
                    .map(drop)
                    .map_err(failed)
            },
        );
        let (heft, floor) = alternate(
            args.load(batch_workers),
            &entries_cpu,
            heft_call,
            floor_call,
        )
        .await;
        report
            .usage
            .push(("BatchCreateEntries".into(), sampler.finish().await));
        report.ratio("BatchCreateEntries (1,000 each)", &heft, &floor, "—", None);
    }

    if args.runs(Phase::Login) {
        // Authenticate at full concurrency, with GetUser beside it.
        eprintln!("phase: Authenticate, and GetUser under that load");
        // The floor: one hash alone, the fastest of several, so that a hash
        // slowed by something else on the machine cannot lower the bar.
        let hash = hash_times(1, 7).into_iter().min().unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        // Argon2id is memory-hard: hashes on every core at once share the
        // caches and memory bandwidth, and each is slower than one alone.
        let side_by_side = hash_times(cores, 3).into_iter().min().unwrap_or_default();
        let hash_floor = cores as f64 / hash.as_secs_f64();
        // As many logins at once as the service admits by default (a hashing
        // slot per core and four waiting per slot): more are refused at once by
        // design, which measures the refusal, not the hashing.
        let login_workers = c.min(5 * cores);
        let login = per_call(
            (clients.clone(), seeded.clone()),
            |(clients, seeded), worker, _| async move {
                let email = seeded.any_user().1.clone();
                clients
                    .users(worker)
                    .authenticate(clients.request(users_pb::AuthenticateRequest {
                        email,
                        password: PASSWORD.into(),
                    }))
                    .await
                    .map(drop)
                    .map_err(failed)
            },
        );
        // Throughput first, alone; then GetUser beside the same login load at a
        // steady pace (two callers, a call each per 10 ms), for its p99.
        let sampler = Sampler::start(&pids);
        let logins = closed_loop(args.load(login_workers), &users_cpu, login.clone()).await;
        report
            .usage
            .push(("Authenticate".into(), sampler.finish().await));
        let sampler = Sampler::start(&pids);
        let background = {
            let users_cpu = users_cpu.clone();
            let logins_at_once = args.load(login_workers);
            tokio::spawn(async move { closed_loop(logins_at_once, &users_cpu, login).await })
        };
        let lookups = paced_loop(
            args.load(2),
            Duration::from_millis(10),
            &users_cpu,
            per_call(
                (clients.clone(), seeded.clone()),
                |(clients, seeded), worker, _| async move {
                    let id = seeded.any_user().0.clone();
                    clients
                        .users(worker)
                        .get_user(clients.request(users_pb::GetUserRequest { id }))
                        .await
                        .map(drop)
                        .map_err(failed)
                },
            ),
        )
        .await;
        let background = background.await?;
        let usage_under_logins = sampler.finish().await;
        login_rss_mib = Some(usage_under_logins[0].max_rss_mib);
        report
            .usage
            .push(("Authenticate + GetUser".into(), usage_under_logins));
        let ratio = logins.rps() / hash_floor;
        let side_by_side_floor = cores as f64 / side_by_side.as_secs_f64().max(1e-9);
        report.details.push(format!(
            "Authenticate beside hashes run on every core at once: {cores} hashes side by side take \
             {:.1} ms each at best (one alone {:.1} ms), so {cores} cores hash at most \
             {side_by_side_floor:.1} per second that way; Authenticate reaches {:.2} of that",
            side_by_side.as_secs_f64() * 1000.0,
            hash.as_secs_f64() * 1000.0,
            logins.rps() / side_by_side_floor
        ));
        report.rows.push(Row {
            measure: "Authenticate".into(),
            heft: format!(
                "{:.1} rps (p50 {:.1} ms, p99 {:.1} ms, {} errors)",
                logins.rps(),
                logins.percentile_ms(50.0),
                logins.percentile_ms(99.0),
                logins.errors
            ),
            floor: format!(
                "{cores} cores ÷ {:.1} ms per hash = {hash_floor:.1} rps",
                hash.as_secs_f64() * 1000.0
            ),
            ratio: Some(ratio),
            target: "≥ 0.8",
            met: Some(ratio >= 0.8 && logins.errors == 0),
        });
        let p99 = lookups.percentile_ms(99.0);
        report.rows.push(Row {
            measure: "GetUser p99 under full login load".into(),
            heft: format!(
                "{p99:.2} ms ({:.0} rps, {} errors; logins meanwhile {:.1} rps)",
                lookups.rps(),
                lookups.errors,
                background.rps()
            ),
            floor: "–".into(),
            ratio: None,
            target: "< 10 ms",
            met: Some(p99 < 10.0 && lookups.errors == 0),
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle_users_mib = Some(stack::rss_kib(stack.users.pid()) as f64 / 1024.0);
    }

    if args.runs(Phase::Purge) {
        // DeleteUser with N entries until GetPurgeJob says PURGED, against a
        // bare DELETE of as many rows.
        for &n in &args.purge_sizes {
            eprintln!("phase: DeleteUser with {n} entries");
            let (user, _) = create_user(&clients, 0).await?;
            import(&clients, 0, &user, n).await?;
            let sampler = Sampler::start(&pids);
            let started = Instant::now();
            clients
                .users(0)
                .delete_user(clients.request(users_pb::DeleteUserRequest { id: user.clone() }))
                .await?;
            loop {
                let job = clients
                    .users(0)
                    .get_purge_job(clients.request(users_pb::GetPurgeJobRequest {
                        user_id: user.clone(),
                    }))
                    .await?
                    .into_inner();
                if job.state == users_pb::PurgeState::Purged as i32 {
                    anyhow::ensure!(job.purged_entry_count == n as i64, "purged {job:?}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let heft_time = started.elapsed();
            report
                .usage
                .push((format!("DeleteUser, {n} entries"), sampler.finish().await));

            let bare_user = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
                 SELECT gen_random_uuid(), $1, 70, 1, DATE '2000-01-01' + (i % 9000)::int, '', now(), now()
                 FROM generate_series(1, $2) AS i",
            )
            .bind(bare_user)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .execute(&raw)
            .await?;
            let started = Instant::now();
            sqlx::query("DELETE FROM entries WHERE user_id = $1")
                .bind(bare_user)
                .execute(&raw)
                .await?;
            let bare_time = started.elapsed();
            let ratio = heft_time.as_secs_f64() / bare_time.as_secs_f64().max(1e-9);
            report.rows.push(Row {
                measure: format!("purge {n} entries: DeleteUser to PURGED"),
                heft: format!(
                    "{:.1} ms ({:.2} ms per 1,000)",
                    heft_time.as_secs_f64() * 1000.0,
                    heft_time.as_secs_f64() * 1e6 / n as f64
                ),
                floor: format!("bare DELETE {:.1} ms", bare_time.as_secs_f64() * 1000.0),
                ratio: Some(ratio),
                target: if n >= 100_000 { "≤ 2×" } else { "—" },
                met: (n >= 100_000).then_some(ratio <= 2.0),
            });
        }
    }

    // Memory: the largest resident set of each service over every phase.
    let max_of = |index: usize| {
        report
            .usage
            .iter()
            .map(|(_, usage)| usage[index].max_rss_mib)
            .fold(0.0, f64::max)
    };
    let (users_peak, entries_peak) = (max_of(0), max_of(1));
    report.rows.push(Row {
        measure: "heft-users resident memory".into(),
        heft: format!(
            "peak {users_peak:.0} MiB (at full login load {}), idle after {}",
            mib(login_rss_mib),
            mib(idle_users_mib)
        ),
        floor: "–".into(),
        ratio: None,
        target: "< 100 MiB",
        met: Some(users_peak < 100.0 && idle_users_mib.is_none_or(|idle| idle < 100.0)),
    });
    report.rows.push(Row {
        measure: "heft-entries resident memory".into(),
        heft: format!("peak {entries_peak:.0} MiB"),
        floor: "–".into(),
        ratio: None,
        target: "< 100 MiB",
        met: Some(entries_peak < 100.0),
    });

    report.postgres_version = sqlx::query_scalar("SELECT version()")
        .fetch_one(&raw)
        .await?;
    raw.close().await;
    stack.finish().await?;

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
