//! The phases: each measures one of heft's paths, beside its floor where it
//! has one, and adds its rows to the report.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use heft_proto::{entries::v1 as entries_pb, users::v1 as users_pb};
use sqlx::PgPool;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::{
    cli::{Args, Phase},
    clients::{Clients, Seeded},
    floor::{EntryChangeRow, EntryRow, FloorConnections, raw_pool},
    load::{Call, CpuProbe, Measured, alternate, closed_loop, paced_loop, per_call},
    report::{CpuRow, Report, Row, mib, throughput},
    sample::{PASSWORD, kilograms, new_entry, recorded_on},
    spans::SpanCounter,
    stack::{self, Sampler, Stack},
};

/// What every phase works with, and the report they build.
pub struct Bench {
    pub args: Args,
    stack: Stack,
    clients: Clients,
    seeded: Arc<Seeded>,
    /// One connection per worker for the floor's statements.
    floor: Arc<FloorConnections>,
    /// For the bench's own statements, which are not measured against heft.
    raw: PgPool,
    bare: Option<Bare>,
    entries_cpu: CpuProbe,
    users_cpu: CpuProbe,
    report: Report,
    /// heft-users' resident memory at full login load, and idle after it.
    users_mib_at_login_load: Option<f64>,
    users_mib_idle_after_logins: Option<f64>,
    /// Measured once, so that both login phases compare with one ceiling.
    hashing: Option<Hashing>,
    /// The entry feed's token from before the seeding: every seeded entry
    /// is a change after it.
    feed_start: Option<String>,
}

/// The bare reference server (`bare`) and clients of it.
struct Bare {
    clients: Clients,
    cpu: CpuProbe,
    _server: stack::Service,
}

impl Bench {
    /// Connects to the stack, seeds it, opens the floor's connections and,
    /// for the phases that compare with it, starts the bare server.
    pub async fn prepare(args: Args, stack: Stack) -> anyhow::Result<Self> {
        let clients = Clients::connect(&stack, args.connections).await?;
        let mut report = Report::default();
        eprintln!(
            "seeding {} entries over {} users through BatchCreateEntries",
            args.entries, args.users
        );
        // None from a heft without the feed (a run of an older build).
        let feed_start = clients
            .entries(0)
            .list_entry_changes(clients.request(entries_pb::ListEntryChangesRequest::default()))
            .await
            .ok()
            .map(|answer| answer.into_inner().next_change_token);
        let seeding = Instant::now();
        let seeded = Seeded::through(&clients, &args).await?;
        report.details.push(format!(
            "seeded {} entries over {} users in {:.1} s",
            seeded.entry_ids.len(),
            seeded.users.len(),
            seeding.elapsed().as_secs_f64()
        ));
        let raw = raw_pool(&stack.entries_url, 2).await?;
        let floor = FloorConnections::connect(&stack.entries_url, args.concurrency).await?;
        // For scale: GetEntry and ListEntries on the least a gRPC service over
        // the same table can do, against the same floor.
        let bare = if args.runs(Phase::Get) || args.runs(Phase::List) || args.runs(Phase::ListFresh)
        {
            let server = stack.start_bare().await?;
            Some(Bare {
                clients: clients.of_bare(server.addr, args.connections).await?,
                cpu: server.cpu_probe(),
                _server: server,
            })
        } else {
            None
        };
        Ok(Self {
            entries_cpu: stack.entries.cpu_probe(),
            users_cpu: stack.users.cpu_probe(),
            args,
            stack,
            clients,
            seeded: Arc::new(seeded),
            floor: Arc::new(floor),
            raw,
            bare,
            report,
            users_mib_at_login_load: None,
            users_mib_idle_after_logins: None,
            hashing: None,
            feed_start,
        })
    }

    pub async fn run(&mut self, phase: Phase) -> anyhow::Result<()> {
        match phase {
            Phase::Get => self.get().await,
            Phase::Traces => self.traces().await,
            Phase::Access => self.access().await,
            Phase::List => self.list().await,
            Phase::ListFresh => self.list_fresh().await,
            Phase::Create => self.create().await,
            Phase::Update => self.update().await,
            Phase::Feed => self.feed().await,
            Phase::Batch => self.batch().await,
            Phase::Login => self.login().await,
            Phase::LoginOverload => self.login_overload().await,
            Phase::Purge => self.purge().await,
        }
    }

    /// Adds the memory rows, stops everything and hands back the report.
    pub async fn finish(mut self) -> anyhow::Result<(Args, Report)> {
        self.memory();
        self.report.postgres_version = sqlx::query_scalar("SELECT version()")
            .fetch_one(&self.raw)
            .await?;
        self.raw.close().await;
        let Self {
            args,
            stack,
            bare,
            floor,
            report,
            ..
        } = self;
        // Closed before their database is dropped rather than cut off by the
        // forced drop.
        drop((bare, floor));
        stack.finish().await?;
        Ok((args, report))
    }

    /// Samples both services' memory and CPU until [`Self::record_usage`].
    /// The floor of Authenticate, measured before the first login phase.
    fn hashing(&mut self) -> Hashing {
        *self.hashing.get_or_insert_with(Hashing::measure)
    }

    fn sampler(&self) -> Sampler {
        Sampler::start(&[self.stack.users.pid(), self.stack.entries.pid()])
    }

    async fn record_usage(&mut self, phase: impl Into<String>, sampler: Sampler) {
        self.report
            .usage
            .push((phase.into(), sampler.finish().await));
    }

    /// heft-entries and its floor in turns, with the services' resources
    /// recorded as `phase`.
    async fn entries_against_floor(
        &mut self,
        phase: &str,
        workers: usize,
        heft: impl Call + Clone,
        floor: impl Call + Clone,
    ) -> (Measured, Measured) {
        let sampler = self.sampler();
        let measured = alternate(self.args.load(workers), &self.entries_cpu, heft, floor).await;
        self.record_usage(phase, sampler).await;
        measured
    }

    /// A read through heft-entries against its floor, then, for scale,
    /// through the bare server against the same floor.
    async fn read_against_floor<C: Call + Clone>(
        &mut self,
        phase: &str,
        measure: &str,
        calls_through: impl Fn(&Clients) -> C,
        floor: impl Call + Clone,
    ) {
        let load = self.args.load(self.args.concurrency);
        let heft = calls_through(&self.clients);
        let (heft, of_floor) = self
            .entries_against_floor(phase, load.workers, heft, floor.clone())
            .await;
        self.report
            .ratio(measure, &heft, &of_floor, "≥ 0.6", Some(0.6));
        if let Some(bare) = &self.bare {
            let (of_bare, of_floor) =
                alternate(load, &bare.cpu, calls_through(&bare.clients), floor).await;
            let measure = format!("{phase} on a bare tonic + sqlx server (for scale)");
            self.report.ratio(&measure, &of_bare, &of_floor, "—", None);
        }
    }

    /// GetEntry's floor: the SELECT by primary key of any seeded entry.
    fn select_by_id(&self) -> impl Call + Clone + use<> {
        per_call(
            (self.floor.clone(), self.seeded.clone()),
            |(floor, seeded), worker, _| async move {
                let id: Uuid = seeded.any_entry().parse()?;
                select_directly(&floor, worker, id).await
            },
        )
    }

    /// GetEntry against SELECT by primary key.
    async fn get(&mut self) -> anyhow::Result<()> {
        eprintln!("phase: GetEntry");
        let seeded = self.seeded.clone();
        let get_through = move |clients: &Clients| get_entry_through(clients, seeded.clone());
        let floor = self.select_by_id();
        self.read_against_floor("GetEntry", "GetEntry", get_through, floor)
            .await;
        self.round_trip_alone().await
    }

    /// What traces cost: GetEntry against its floor through heft-entries
    /// with no exporter (the stack's own), then through a heft-entries
    /// with an endpoint and an always-off sampler, then through one
    /// exporting every span to a receiver in this process.
    async fn traces(&mut self) -> anyhow::Result<()> {
        eprintln!("phase: GetEntry with traces");
        let receiver = SpanCounter::start().await?;
        let endpoint = || ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
        let settings: [(&str, Vec<(&str, String)>); 3] = [
            ("traces off (no endpoint)", Vec::new()),
            (
                "endpoint set, sampler always_off",
                vec![endpoint(), ("OTEL_TRACES_SAMPLER", "always_off".into())],
            ),
            ("every span exported to a receiver", vec![endpoint()]),
        ];
        let load = self.args.load(self.args.concurrency);
        for (label, env) in settings {
            let server = self.stack.start_entries_with(&env).await?;
            let clients = self
                .clients
                .of_bare(server.addr, self.args.connections)
                .await?;
            let (heft, floor) = alternate(
                load,
                &server.cpu_probe(),
                get_entry_through(&clients, self.seeded.clone()),
                self.select_by_id(),
            )
            .await;
            let measure = format!("GetEntry, {label}");
            self.report.ratio(&measure, &heft, &floor, "—", None);
        }
        self.report.details.push(format!(
            "traces phase: the receiver was sent {} spans",
            receiver.received()
        ));
        Ok(())
    }

    /// What the token check costs: GetEntry of one user's entries with the
    /// API token, a scoped credential and that user's token, and
    /// CreateEntry for that user with the API token and the user token, each
    /// against its floor in the same run.
    async fn access(&mut self) -> anyhow::Result<()> {
        eprintln!("phase: GetEntry and CreateEntry by credential");
        let (user, email) = self.seeded.user_of(0).clone();
        let page = self
            .clients
            .entries(0)
            .list_entries(self.clients.request(entries_pb::ListEntriesRequest {
                user_id: user.clone(),
                page_size: 100,
                ..Default::default()
            }))
            .await?
            .into_inner();
        let ids: Arc<Vec<String>> = Arc::new(page.entries.into_iter().map(|e| e.id).collect());
        let user_token = self
            .clients
            .users(0)
            .authenticate(self.clients.request(users_pb::AuthenticateRequest {
                email,
                password: PASSWORD.into(),
            }))
            .await?
            .into_inner()
            .access_token;
        let pick = |ids: &[String]| {
            ids[rand::Rng::gen_range(&mut rand::thread_rng(), 0..ids.len())].clone()
        };
        let floor = per_call(
            (self.floor.clone(), ids.clone()),
            move |(floor, ids), worker, _| async move {
                let id: Uuid = pick(&ids).parse()?;
                select_directly(&floor, worker, id).await
            },
        );
        let workers = self.args.concurrency;
        for (label, token) in [
            ("the API token", stack::API_TOKEN.to_owned()),
            (
                "a scoped credential (entries.read)",
                self.stack.reader_token.clone(),
            ),
            ("a user token", user_token.clone()),
        ] {
            let clients = self.clients.with_token(&token)?;
            let heft = per_call(
                (clients, ids.clone()),
                move |(clients, ids), worker, _| async move {
                    let id = pick(&ids);
                    clients
                        .entries(worker)
                        .get_entry(clients.request(entries_pb::GetEntryRequest { id, unit: 0 }))
                        .await
                        .map(drop)
                },
            );
            let measure = format!("GetEntry of one user's entries with {label}");
            let (heft, of_floor) = self
                .entries_against_floor(&measure, workers, heft, floor.clone())
                .await;
            self.report.ratio(&measure, &heft, &of_floor, "—", None);
        }
        let user_id: Uuid = user.parse()?;
        let insert = per_call(self.floor.clone(), move |floor, worker, i| async move {
            insert_directly(&floor, worker, user_id, i, true).await
        });
        for (label, token) in [
            ("the API token", stack::API_TOKEN.to_owned()),
            ("a user token", user_token),
        ] {
            let clients = self.clients.with_token(&token)?;
            let heft = per_call(
                (clients, user.clone()),
                |(clients, user), worker, i| async move {
                    create_through(&clients, worker, user, i).await
                },
            );
            let measure = format!("CreateEntry for one user with {label}");
            let (heft, of_floor) = self
                .entries_against_floor(&measure, workers, heft, insert.clone())
                .await;
            self.report.ratio(&measure, &heft, &of_floor, "—", None);
        }
        Ok(())
    }

    /// The gRPC round trip alone, through the same server stack and
    /// connections with no database behind it: for scale, what a call
    /// costs before its statement.
    async fn round_trip_alone(&mut self) -> anyhow::Result<()> {
        let health: Vec<HealthClient<Channel>> =
            Stack::channels(self.stack.entries.addr, self.args.connections)
                .await?
                .into_iter()
                .map(HealthClient::new)
                .collect();
        let load = self.args.load(self.args.concurrency);
        let alone = closed_loop(load, &self.entries_cpu, move |worker: usize, _: u64| {
            let mut client = health[worker % health.len()].clone();
            async move {
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(drop)
            }
        })
        .await;
        self.report.cpu.push(CpuRow {
            measure: "Health/Check (no database)".into(),
            heft: alone.clone(),
            floor: None,
        });
        self.report.rows.push(Row {
            measure: "gRPC round trip alone (Health/Check, no database)".into(),
            heft: throughput(&alone),
            floor: "–".into(),
            ratio: None,
            target: "—",
            met: None,
        });
        Ok(())
    }

    /// ListEntries (a page of 100) against the keyset SELECT it runs.
    async fn list(&mut self) -> anyhow::Result<()> {
        eprintln!("phase: ListEntries");
        let users: Arc<Vec<String>> =
            Arc::new(self.seeded.users.iter().map(|(id, _)| id.clone()).collect());
        self.list_first_pages("ListEntries", "ListEntries (page of 100)", users)
            .await;
        Ok(())
    }

    /// ListEntries for users imported a moment ago through
    /// BatchCreateEntries, before any ANALYZE could see them: one with ten
    /// times the entries of the seeded users, nine light ones; half the
    /// pages are the heavy user's.
    async fn list_fresh(&mut self) -> anyhow::Result<()> {
        eprintln!("phase: ListEntries, users imported just before");
        let (heavy_entries, light_entries) = if self.args.quick {
            (5_000, 200)
        } else {
            (100_000, 2_000)
        };
        let imported = Instant::now();
        let heavy = self.clients.create_user(0).await?.0;
        self.clients.import(0, &heavy, heavy_entries).await?;
        let mut users = Vec::new();
        for worker in 0..9 {
            let light = self.clients.create_user(worker).await?.0;
            self.clients.import(worker, &light, light_entries).await?;
            users.push(heavy.clone());
            users.push(light);
        }
        self.report.details.push(format!(
            "ListEntries, users imported just before: {heavy_entries} entries for one user and \
             {light_entries} for each of nine others imported through BatchCreateEntries in \
             {:.1} s, then listed at once (no ANALYZE in between)",
            imported.elapsed().as_secs_f64()
        ));
        self.list_first_pages(
            "ListEntries, imported just before",
            "ListEntries (page of 100), users imported just before, one heavy",
            Arc::new(users),
        )
        .await;
        Ok(())
    }

    /// First pages of 100 of any of `users`, through heft against the same
    /// SELECT run directly.
    async fn list_first_pages(&mut self, phase: &str, measure: &str, users: Arc<Vec<String>>) {
        let list_through = {
            let users = users.clone();
            move |clients: &Clients| {
                per_call(
                    (clients.clone(), users.clone()),
                    |(clients, users), worker, _| async move {
                        let user = users
                            [rand::Rng::gen_range(&mut rand::thread_rng(), 0..users.len())]
                        .clone();
                        clients
                            .entries(worker)
                            .list_entries(clients.request(entries_pb::ListEntriesRequest {
                                user_id: user,
                                page_size: 100,
                                ..Default::default()
                            }))
                            .await
                            .map(drop)
                    },
                )
            }
        };
        let floor = per_call(
            (self.floor.clone(), users),
            |(floor, users), worker, _| async move {
                let user: Uuid =
                    users[rand::Rng::gen_range(&mut rand::thread_rng(), 0..users.len())].parse()?;
                sqlx::query_as::<_, EntryRow>(
                    "SELECT id, user_id, value, unit, recorded_on, note, create_time, update_time
                         FROM entries WHERE user_id = $1
                         ORDER BY recorded_on, create_time, id LIMIT 101",
                )
                .bind(user)
                .fetch_all(&mut *floor.connection(worker).await)
                .await?;
                Ok::<_, anyhow::Error>(())
            },
        );
        self.read_against_floor(phase, measure, list_through, floor)
            .await;
    }

    /// CreateEntry (with a request id) against the INSERT of the same row.
    async fn create(&mut self) -> anyhow::Result<()> {
        eprintln!("phase: CreateEntry");
        let heft = per_call(
            (self.clients.clone(), self.seeded.clone()),
            |(clients, seeded), worker, i| async move {
                let user = seeded.any_user().0.clone();
                create_through(&clients, worker, user, i).await
            },
        );
        let state = (self.floor.clone(), self.seeded.clone());
        let floor = |change: bool| {
            per_call(
                state.clone(),
                move |(floor, seeded), worker, i| async move {
                    let user: Uuid = seeded.any_user().0.parse()?;
                    insert_directly(&floor, worker, user, i, change).await
                },
            )
        };
        let workers = self.args.concurrency;
        let (of_heft, of_floor) = self
            .entries_against_floor("CreateEntry", workers, heft.clone(), floor(true))
            .await;
        self.report
            .ratio("CreateEntry", &of_heft, &of_floor, "≥ 0.6", Some(0.6));
        // What the feed costs: against the INSERT of the entry alone.
        let (of_heft, of_floor) = self
            .entries_against_floor("CreateEntry", workers, heft, floor(false))
            .await;
        self.report.ratio(
            "CreateEntry against the INSERT alone, without its change",
            &of_heft,
            &of_floor,
            "—",
            None,
        );
        Ok(())
    }

    /// UpdateEntry of a note against the UPDATE of the same row alone (heft
    /// also records the change in the feed, in the same statement).
    async fn update(&mut self) -> anyhow::Result<()> {
        eprintln!("phase: UpdateEntry");
        let heft = per_call(
            (self.clients.clone(), self.seeded.clone()),
            |(clients, seeded), worker, i| async move {
                let id = seeded.any_entry().to_owned();
                clients
                    .entries(worker)
                    .update_entry(clients.request(entries_pb::UpdateEntryRequest {
                        entry: Some(entries_pb::Entry {
                            id,
                            note: format!("note {i}"),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["note".into()],
                        }),
                    }))
                    .await
                    .map(drop)
            },
        );
        const UPDATE: &str = "UPDATE entries SET note = $2, update_time = $3 WHERE id = $1
             RETURNING id, user_id, value, unit, recorded_on, note, create_time, update_time";
        const WITH_CHANGE: &str = "WITH updated AS (
                UPDATE entries SET note = $2, update_time = $3 WHERE id = $1
                RETURNING id, user_id, value, unit, recorded_on, note, create_time, update_time),
             recorded AS (
                INSERT INTO entry_changes (change_type, entry_id, user_id, value, unit, recorded_on, note, create_time, update_time)
                SELECT 1, id, user_id, value, unit, recorded_on, note, create_time, update_time FROM updated)
             SELECT id, user_id, value, unit, recorded_on, note, create_time, update_time FROM updated";
        let state = (self.floor.clone(), self.seeded.clone());
        let floor = |statement: &'static str| {
            per_call(
                state.clone(),
                move |(floor, seeded), worker, i| async move {
                    let id: Uuid = seeded.any_entry().parse()?;
                    sqlx::query_as::<_, EntryRow>(statement)
                        .bind(id)
                        .bind(format!("note {i}"))
                        .bind(Utc::now())
                        .fetch_optional(&mut *floor.connection(worker).await)
                        .await?;
                    anyhow::Ok(())
                },
            )
        };
        let workers = self.args.concurrency;
        let (of_heft, of_floor) = self
            .entries_against_floor("UpdateEntry", workers, heft.clone(), floor(WITH_CHANGE))
            .await;
        self.report
            .ratio("UpdateEntry", &of_heft, &of_floor, "—", None);
        let (of_heft, of_floor) = self
            .entries_against_floor("UpdateEntry", workers, heft, floor(UPDATE))
            .await;
        self.report.ratio(
            "UpdateEntry against the UPDATE alone, without its change",
            &of_heft,
            &of_floor,
            "—",
            None,
        );
        Ok(())
    }

    /// ListEntryChanges, a page of 500 from a token anywhere in the seeded
    /// feed, against the page's SELECT run directly.
    async fn feed(&mut self) -> anyhow::Result<()> {
        const PAGE: i32 = 500;
        const PAGES: usize = 200;
        eprintln!("phase: ListEntryChanges");
        let mut tokens = Vec::new();
        let mut token = self
            .feed_start
            .clone()
            .ok_or_else(|| anyhow::anyhow!("this heft-entries has no changes feed"))?;
        while tokens.len() < PAGES {
            let page = self
                .clients
                .entries(0)
                .list_entry_changes(self.clients.request(entries_pb::ListEntryChangesRequest {
                    change_token: token.clone(),
                    page_size: PAGE,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            if page.changes.len() < PAGE as usize {
                break;
            }
            tokens.push(token);
            token = page.next_change_token;
        }
        anyhow::ensure!(!tokens.is_empty(), "the feed holds less than a page");
        let positions: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT xid::text::int8, seq FROM (
                SELECT xid, seq, row_number() OVER (ORDER BY xid, seq) AS n FROM entry_changes
             ) AS numbered WHERE n % $1 = 0 ORDER BY n LIMIT $2",
        )
        .bind(i64::from(PAGE))
        .bind(i64::try_from(tokens.len()).unwrap_or(1))
        .fetch_all(&self.raw)
        .await?;
        let tokens = Arc::new(tokens);
        let heft = per_call(
            (self.clients.clone(), tokens.clone()),
            |(clients, tokens), worker, i| async move {
                let change_token = tokens[(i as usize * 7 + worker) % tokens.len()].clone();
                clients
                    .entries(worker)
                    .list_entry_changes(clients.request(entries_pb::ListEntryChangesRequest {
                        change_token,
                        page_size: PAGE,
                        ..Default::default()
                    }))
                    .await
                    .map(drop)
            },
        );
        let positions = Arc::new(positions);
        let floor = per_call(
            (self.floor.clone(), positions),
            |(floor, positions), worker, i| async move {
                let (xid, seq) = positions[(i as usize * 7 + worker) % positions.len()];
                sqlx::query_as::<_, EntryChangeRow>(
                    "SELECT xid::text::int8 AS xid, seq, change_type, entry_id, user_id, value, unit,
                        recorded_on, note, create_time, update_time, change_time
                     FROM entry_changes
                     WHERE (xid, seq) > ($1::text::xid8, $2)
                        AND xid < pg_snapshot_xmin(pg_current_snapshot())
                     ORDER BY entry_changes.xid, seq LIMIT 500",
                )
                .bind(xid)
                .bind(seq)
                .fetch_all(&mut *floor.connection(worker).await)
                .await?;
                anyhow::Ok(())
            },
        );
        let workers = self.args.concurrency;
        let (heft, floor) = self
            .entries_against_floor("ListEntryChanges", workers, heft, floor)
            .await;
        self.report
            .ratio("ListEntryChanges (page of 500)", &heft, &floor, "—", None);
        Ok(())
    }

    /// BatchCreateEntries of 1,000 against one UNNEST INSERT of 1,000.
    async fn batch(&mut self) -> anyhow::Result<()> {
        eprintln!("phase: BatchCreateEntries");
        let heft = per_call(
            (self.clients.clone(), self.seeded.clone()),
            |(clients, seeded), worker, _| async move {
                let user = seeded.user_of(worker).0.clone();
                clients
                    .entries(worker)
                    .batch_create_entries(clients.request(entries_pb::BatchCreateEntriesRequest {
                        user_id: user,
                        entries: (0..1_000).map(new_entry).collect(),
                    }))
                    .await
                    .map(drop)
            },
        );
        let floor = per_call(
            (self.floor.clone(), self.seeded.clone()),
            |(floor, seeded), worker, _| async move {
                let user: Uuid = seeded.user_of(worker).0.parse()?;
                let ids: Vec<Uuid> = (0..1_000).map(|_| Uuid::now_v7()).collect();
                let values: Vec<f64> = (0..1_000).map(kilograms).collect();
                let days: Vec<_> = (0..1_000).map(recorded_on).collect();
                sqlx::query(
                    "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
                     SELECT id, $2, value, 1, recorded_on, '', now(), now()
                     FROM UNNEST($1::uuid[], $3::float8[], $4::date[]) AS batch (id, value, recorded_on)",
                )
                .bind(&ids)
                .bind(user)
                .bind(&values)
                .bind(&days)
                .execute(&mut *floor.connection(worker).await)
                .await?;
                Ok::<_, anyhow::Error>(())
            },
        );
        let workers = self.args.concurrency.min(8);
        let (heft, floor) = self
            .entries_against_floor("BatchCreateEntries", workers, heft, floor)
            .await;
        self.report
            .ratio("BatchCreateEntries (1,000 each)", &heft, &floor, "—", None);
        Ok(())
    }

    /// Authenticate at full concurrency against the hashes it runs, then
    /// GetUser beside the same login load.
    async fn login(&mut self) -> anyhow::Result<()> {
        eprintln!("phase: Authenticate, and GetUser under that load");
        let hashing = self.hashing();
        // As many logins at once as the service admits by default (a hashing
        // slot per core and four waiting per slot): more are refused at once by
        // design, which measures the refusal, not the hashing.
        let logins_at_once = self.args.load(self.args.concurrency.min(5 * hashing.cores));
        let login = per_call(
            (self.clients.clone(), self.seeded.clone()),
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
            },
        );
        // Throughput first, alone; then GetUser beside the same login load at a
        // steady pace (two callers, a call each per 10 ms), for its p99.
        let sampler = self.sampler();
        let logins = closed_loop(logins_at_once, &self.users_cpu, login.clone()).await;
        self.record_usage("Authenticate", sampler).await;
        let sampler = self.sampler();
        let background = {
            let users_cpu = self.users_cpu.clone();
            tokio::spawn(async move { closed_loop(logins_at_once, &users_cpu, login).await })
        };
        let lookups = self.get_user_at_a_steady_pace().await;
        let background = background.await?;
        let usage_under_logins = sampler.finish().await;
        self.users_mib_at_login_load = Some(usage_under_logins[0].max_rss_mib);
        self.report
            .usage
            .push(("Authenticate + GetUser".into(), usage_under_logins));
        self.report_logins(&hashing, &logins, &lookups, &background);
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.users_mib_idle_after_logins =
            Some(stack::rss_kib(self.stack.users.pid()) as f64 / 1024.0);
        Ok(())
    }

    fn report_logins(
        &mut self,
        hashing: &Hashing,
        logins: &Measured,
        lookups: &Measured,
        background: &Measured,
    ) {
        let Hashing {
            cores,
            alone,
            side_by_side,
        } = *hashing;
        let hash_floor = cores as f64 / alone.as_secs_f64();
        let ratio = logins.rps() / hash_floor;
        let side_by_side_floor = cores as f64 / side_by_side.as_secs_f64().max(1e-9);
        self.report.details.push(format!(
            "Authenticate beside hashes run on every core at once: {cores} hashes side by side take \
             {:.1} ms each at best (one alone {:.1} ms), so {cores} cores hash at most \
             {side_by_side_floor:.1} per second that way; Authenticate reaches {:.2} of that",
            side_by_side.as_secs_f64() * 1000.0,
            alone.as_secs_f64() * 1000.0,
            logins.rps() / side_by_side_floor
        ));
        self.report.rows.push(Row {
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
                alone.as_secs_f64() * 1000.0
            ),
            ratio: Some(ratio),
            target: "≥ 0.8",
            met: Some(ratio >= 0.8 && logins.errors == 0),
        });
        let p99 = lookups.percentile_ms(99.0);
        self.report.rows.push(Row {
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
    }

    /// GetUser from two callers, a call each per 10 ms, for its p99 beside
    /// whatever load runs meanwhile.
    async fn get_user_at_a_steady_pace(&self) -> Measured {
        paced_loop(
            self.args.load(2),
            Duration::from_millis(10),
            &self.users_cpu,
            per_call(
                (self.clients.clone(), self.seeded.clone()),
                |(clients, seeded), worker, _| async move {
                    let id = seeded.any_user().0.clone();
                    clients
                        .users(worker)
                        .get_user(clients.request(users_pb::GetUserRequest { id }))
                        .await
                        .map(drop)
                },
            ),
        )
        .await
    }

    /// Authenticate from more clients than the hashing queue admits, each a
    /// well-behaved client that waits as a refusal's RetryInfo asks; GetUser
    /// at a steady pace beside it.
    async fn login_overload(&mut self) -> anyhow::Result<()> {
        let hashing = self.hashing();
        let clients_at_once = self.args.concurrency.max(6 * hashing.cores);
        eprintln!(
            "phase: Authenticate from {clients_at_once} clients at once, and GetUser beside it"
        );
        let load = self.args.load(clients_at_once);
        let refusals = Arc::new(Refusals::measured_after(Instant::now() + load.warmup));
        let login = per_call(
            (self.clients.clone(), self.seeded.clone(), refusals.clone()),
            |(clients, seeded, refusals), worker, _| async move {
                let email = seeded.any_user().1.clone();
                let sent = Instant::now();
                let answer = clients
                    .users(worker)
                    .authenticate(clients.request(users_pb::AuthenticateRequest {
                        email,
                        password: PASSWORD.into(),
                    }))
                    .await;
                let Err(status) = answer else {
                    return Ok(());
                };
                let busy = status
                    .get_details_error_info()
                    .is_some_and(|info| info.reason == "HASHING_BUSY");
                if !busy {
                    return Err(status.to_string());
                }
                refusals.record(sent);
                let delay = status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay)
                    .unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(delay).await;
                Err(REFUSED.to_owned())
            },
        );
        let sampler = self.sampler();
        let background = {
            let users_cpu = self.users_cpu.clone();
            tokio::spawn(async move { closed_loop(load, &users_cpu, login).await })
        };
        let lookups = self.get_user_at_a_steady_pace().await;
        let logins = background.await?;
        self.record_usage("Authenticate, overloaded + GetUser", sampler)
            .await;

        let ceiling = hashing.cores as f64 / hashing.alone.as_secs_f64();
        let ratio = logins.rps() / ceiling;
        let refused = refusals.count();
        let other_errors = logins.errors.saturating_sub(refused);
        let refusal_p99 = refusals.percentile_ms(99.0);
        if let Some(error) = logins.first_error.as_ref().filter(|e| *e != REFUSED) {
            self.report
                .details
                .push(format!("Authenticate, overloaded: first error: {error}"));
        }
        self.report.rows.push(Row {
            measure: format!(
                "Authenticate, {clients_at_once} clients (more than the service admits)"
            ),
            heft: format!(
                "{:.1} successful rps (p50 {:.1} ms, p99 {:.1} ms); {:.1} refusals/s answered in \
                 p50 {:.2} ms, p99 {refusal_p99:.2} ms; {other_errors} errors besides",
                logins.rps(),
                logins.percentile_ms(50.0),
                logins.percentile_ms(99.0),
                refused as f64 / logins.elapsed.as_secs_f64().max(1e-9),
                refusals.percentile_ms(50.0),
            ),
            floor: format!(
                "{} cores ÷ {:.1} ms per hash = {ceiling:.1} rps",
                hashing.cores,
                hashing.alone.as_secs_f64() * 1000.0
            ),
            ratio: Some(ratio),
            target: "≥ 0.8, refusals < 1 ms",
            met: Some(ratio >= 0.8 && refusal_p99 < 1.0 && other_errors == 0),
        });
        let p99 = lookups.percentile_ms(99.0);
        self.report.rows.push(Row {
            measure: "GetUser p99 beside the login overload".into(),
            heft: format!(
                "{p99:.2} ms ({:.0} rps, {} errors)",
                lookups.rps(),
                lookups.errors
            ),
            floor: "–".into(),
            ratio: None,
            target: "< 10 ms",
            met: Some(p99 < 10.0 && lookups.errors == 0),
        });
        Ok(())
    }

    /// DeleteUser with N entries until GetPurgeJob says PURGED, against bare
    /// DELETEs of as many rows and of their changes in the feed (a purge
    /// erases both).
    async fn purge(&mut self) -> anyhow::Result<()> {
        for n in self.args.purge_sizes.clone() {
            eprintln!("phase: DeleteUser with {n} entries");
            let heft_time = self.delete_user_until_purged(n).await?;
            let bare = bare_delete(&self.raw, n).await?;
            let ratio = heft_time.as_secs_f64() / bare.with_changes.as_secs_f64().max(1e-9);
            self.report.rows.push(Row {
                measure: format!("purge {n} entries: DeleteUser to PURGED"),
                heft: format!(
                    "{:.1} ms ({:.2} ms per 1,000)",
                    heft_time.as_secs_f64() * 1000.0,
                    heft_time.as_secs_f64() * 1e6 / n as f64
                ),
                floor: format!(
                    "bare DELETEs of the entries and their changes {:.1} ms (entries alone {:.1} ms, {:.2}×)",
                    bare.with_changes.as_secs_f64() * 1000.0,
                    bare.entries_alone.as_secs_f64() * 1000.0,
                    heft_time.as_secs_f64() / bare.entries_alone.as_secs_f64().max(1e-9)
                ),
                ratio: Some(ratio),
                target: if n >= 100_000 { "≤ 2×" } else { "—" },
                met: (n >= 100_000).then_some(ratio <= 2.0),
            });
        }
        Ok(())
    }

    /// How long a user with `entries` entries takes from DeleteUser to PURGED.
    async fn delete_user_until_purged(&mut self, entries: usize) -> anyhow::Result<Duration> {
        let clients = &self.clients;
        let (user, _) = clients.create_user(0).await?;
        clients.import(0, &user, entries).await?;
        let sampler = self.sampler();
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
                anyhow::ensure!(job.purged_entry_count == entries as i64, "purged {job:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = started.elapsed();
        self.record_usage(format!("DeleteUser, {entries} entries"), sampler)
            .await;
        Ok(took)
    }

    /// The largest resident set of each service over every phase.
    fn memory(&mut self) {
        let max_of = |index: usize| {
            self.report
                .usage
                .iter()
                .map(|(_, usage)| usage[index].max_rss_mib)
                .fold(0.0, f64::max)
        };
        let (users_peak, entries_peak) = (max_of(0), max_of(1));
        let idle = self.users_mib_idle_after_logins;
        self.report.rows.push(Row {
            measure: "heft-users resident memory".into(),
            heft: format!(
                "peak {users_peak:.0} MiB (at full login load {}), idle after {}",
                mib(self.users_mib_at_login_load),
                mib(idle)
            ),
            floor: "–".into(),
            ratio: None,
            target: "< 100 MiB",
            met: Some(users_peak < 100.0 && idle.is_none_or(|idle| idle < 100.0)),
        });
        self.report.rows.push(Row {
            measure: "heft-entries resident memory".into(),
            heft: format!("peak {entries_peak:.0} MiB"),
            floor: "–".into(),
            ratio: None,
            target: "< 100 MiB",
            met: Some(entries_peak < 100.0),
        });
    }
}

/// GetEntry of any seeded entry through `clients`.
fn get_entry_through(clients: &Clients, seeded: Arc<Seeded>) -> impl Call + Clone + use<> {
    per_call(
        (clients.clone(), seeded),
        |(clients, seeded), worker, _| async move {
            let id = seeded.any_entry().to_owned();
            clients
                .entries(worker)
                .get_entry(clients.request(entries_pb::GetEntryRequest { id, unit: 0 }))
                .await
                .map(drop)
        },
    )
}

/// GetEntry's floor: the SELECT by primary key, decoded as heft decodes it.
async fn select_directly(floor: &FloorConnections, worker: usize, id: Uuid) -> anyhow::Result<()> {
    sqlx::query_as::<_, EntryRow>(
        "SELECT id, user_id, value, unit, recorded_on, note, create_time, update_time
             FROM entries WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *floor.connection(worker).await)
    .await?;
    Ok(())
}

/// CreateEntry of the `i`-th sample entry for `user`, with a request id.
async fn create_through(
    clients: &Clients,
    worker: usize,
    user_id: String,
    i: u64,
) -> Result<(), tonic::Status> {
    let entry = new_entry(i as usize);
    clients
        .entries(worker)
        .create_entry(clients.request(entries_pb::CreateEntryRequest {
            user_id,
            weight: entry.weight,
            recorded_on: entry.recorded_on,
            note: "morning".into(),
            request_id: Uuid::new_v4().to_string(),
        }))
        .await
        .map(drop)
}

/// CreateEntry's floor: the INSERT of the same row, with its change in the
/// feed as heft writes it (one statement) or alone, on the worker's connection.
async fn insert_directly(
    floor: &FloorConnections,
    worker: usize,
    user: Uuid,
    i: u64,
    with_change: bool,
) -> anyhow::Result<()> {
    const INSERT: &str = "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, request_id, create_time, update_time)
         VALUES ($1, $2, $3, 1, $4, 'morning', $5, $6, $6)";
    const WITH_CHANGE: &str = "WITH inserted AS (
            INSERT INTO entries (id, user_id, value, unit, recorded_on, note, request_id, create_time, update_time)
            VALUES ($1, $2, $3, 1, $4, 'morning', $5, $6, $6)
            RETURNING id, user_id, value, unit, recorded_on, note, create_time, update_time)
         INSERT INTO entry_changes (change_type, entry_id, user_id, value, unit, recorded_on, note, create_time, update_time)
         SELECT 1, id, user_id, value, unit, recorded_on, note, create_time, update_time FROM inserted";
    sqlx::query(if with_change { WITH_CHANGE } else { INSERT })
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(kilograms(i as usize))
        .bind(recorded_on(i as usize))
        .bind(Uuid::new_v4())
        .bind(Utc::now())
        .execute(&mut *floor.connection(worker).await)
        .await?;
    Ok(())
}

/// How long bare DELETEs take of `entries` rows of one user and of their
/// changes in the feed (one UPSERTED each, as BatchCreateEntries records),
/// all written just before: what a purge must remove. Also the entries'
/// DELETE alone.
struct BareDelete {
    with_changes: Duration,
    entries_alone: Duration,
}

async fn bare_delete(raw: &PgPool, entries: usize) -> anyhow::Result<BareDelete> {
    let user = Uuid::new_v4();
    let count = i64::try_from(entries).unwrap_or(i64::MAX);
    sqlx::query(
        "WITH written AS (
             INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
             SELECT gen_random_uuid(), $1, 70, 1, DATE '2000-01-01' + (i % 9000)::int, '', now(), now()
             FROM generate_series(1, $2) AS i
             RETURNING id, user_id, value, unit, recorded_on, note, create_time, update_time)
         INSERT INTO entry_changes (change_type, entry_id, user_id, value, unit, recorded_on, note, create_time, update_time)
         SELECT 1, id, user_id, value, unit, recorded_on, note, create_time, update_time FROM written",
    )
    .bind(user)
    .bind(count)
    .execute(raw)
    .await?;
    let started = Instant::now();
    sqlx::query("DELETE FROM entries WHERE user_id = $1")
        .bind(user)
        .execute(raw)
        .await?;
    let entries_alone = started.elapsed();
    sqlx::query("DELETE FROM entry_changes WHERE user_id = $1")
        .bind(user)
        .execute(raw)
        .await?;
    Ok(BareDelete {
        with_changes: started.elapsed(),
        entries_alone,
    })
}

/// What an overloaded login phase's refused calls return.
const REFUSED: &str = "refused: hashing busy";

/// Logins refused as busy, and how long each refusal took to arrive.
struct Refusals {
    measured_after: Instant,
    latency: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Refusals {
    fn measured_after(at: Instant) -> Self {
        Self {
            measured_after: at,
            latency: std::sync::Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                    .unwrap_or_else(|_| unreachable!("valid bounds")),
            ),
        }
    }

    fn record(&self, sent: Instant) {
        if sent < self.measured_after {
            return;
        }
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let _ = latency.record(micros.max(1));
    }

    fn count(&self) -> u64 {
        self.latency.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn percentile_ms(&self, percentile: f64) -> f64 {
        let latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        latency.value_at_percentile(percentile) as f64 / 1000.0
    }
}

/// Argon2id hashes at heft's default parameters, in this process: the floor
/// of Authenticate.
#[derive(Clone, Copy)]
struct Hashing {
    cores: usize,
    /// One hash alone, the fastest of several, so that a hash slowed by
    /// something else on the machine cannot lower the bar.
    alone: Duration,
    /// One of a hash on every core at once, the fastest: Argon2id is
    /// memory-hard, hashes side by side share the caches and memory
    /// bandwidth, and each is slower than one alone.
    side_by_side: Duration,
}

impl Hashing {
    fn measure() -> Self {
        let alone = hash_times(1, 7).into_iter().min().unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let side_by_side = hash_times(cores, 3).into_iter().min().unwrap_or_default();
        Self {
            cores,
            alone,
            side_by_side,
        }
    }
}

/// Times of `each` hashes on each of `threads` threads at once.
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
