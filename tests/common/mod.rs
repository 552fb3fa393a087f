//! Both services on real ports, each calling the other: as real processes
//! of the `heft` binary, stopped gracefully (SIGTERM) or killed (SIGKILL),
//! restarted on the same port and database, their logs captured; or in the
//! test's own process where a test needs neither signals nor logs.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use heft_proto::{
    common::v1::{Weight, WeightUnit},
    entries::v1::{self as entries_pb, entry_service_client::EntryServiceClient},
    google::r#type::Date,
    users::v1::{self as users_pb, user_service_client::UserServiceClient},
};
use heft_test_support::{Backend, RunningService, Service, TestDatabase, free_port};
use tonic::transport::Channel;

pub const API_TOKEN: &str = "e2e-api-token";
pub const INTERNAL_TOKEN: &str = "e2e-internal-token";

/// The password of every user the helpers create.
pub const PASSWORD: &str = "correct horse";
pub const PURGED: i32 = users_pb::PurgeState::Purged as i32;
pub const PENDING: i32 = users_pb::PurgeState::Pending as i32;

/// Where a service listens, what it stores in, and whom it calls.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub service: Service,
    pub listen: SocketAddr,
    pub database_url: String,
    /// Where the other service listens, as this one calls it.
    pub peer_url: String,
    /// `HEFT_INTERNAL_TOKEN`: the first is presented to the other service,
    /// all are accepted from it. `None`: the service runs open, with no API
    /// token either.
    pub internal_token: Option<String>,
    /// More flags, after the defaults (a later flag wins).
    pub extra_args: Vec<String>,
    /// Where `/metrics` is served.
    pub metrics: SocketAddr,
    /// More environment variables (the process starts with none but these).
    pub env: Vec<(String, String)>,
}

/// One running service process.
pub struct Process {
    pub spec: ServiceSpec,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServiceSpec {
    /// `service` on `listen` and `db`, calling the other at `peer` in
    /// plaintext, with the test's tokens.
    fn new(service: Service, listen: SocketAddr, db: &TestDatabase, peer: SocketAddr) -> Self {
        Self {
            service,
            listen,
            database_url: db.url.clone(),
            peer_url: format!("http://{peer}"),
            internal_token: Some(INTERNAL_TOKEN.to_owned()),
            extra_args: Vec::new(),
            metrics: free_port(),
            env: Vec::new(),
        }
    }

    /// Whom the service calls, which tokens it holds, then `extra_args`:
    /// the flags of both ways to run it.
    fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            self.service.peer_url_flag().to_owned(),
            self.peer_url.clone(),
        ];
        if let Some(internal_token) = &self.internal_token {
            flags.extend([
                "--api-tokens".to_owned(),
                API_TOKEN.to_owned(),
                "--internal-token".to_owned(),
                internal_token.clone(),
            ]);
        }
        flags.extend(self.extra_args.iter().cloned());
        flags
    }

    /// Runs the service in this process (no signals, no captured log).
    pub async fn spawn(&self) -> RunningService {
        heft_test_support::spawn_on(
            &self.listen.to_string(),
            self.service,
            &self.database_url,
            &self.flags(),
        )
        .await
    }

    /// Starts the process and waits until its health check says SERVING.
    pub async fn start(&self) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_heft"));
        command
            .env_clear()
            .env("HEFT_LOG", "info")
            // Users logs lines for people, entries JSON objects: both formats are exercised.
            .env(
                "HEFT_LOG_FORMAT",
                if self.service == Service::Entries {
                    "json"
                } else {
                    "pretty"
                },
            )
            .args([self.service.name(), "--listen", &self.listen.to_string()])
            .args(["--database-url", &self.database_url])
            .args(["--metrics-listen", &self.metrics.to_string()])
            .args(self.flags())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if self.service == Service::Users {
            // Retry quickly, so that a restarted entries service is purged
            // within a second or two. Variables, so that `extra_args` can
            // override them with flags.
            command
                .env("HEFT_PURGE_RETRY_INITIAL_MS", "200")
                .env("HEFT_PURGE_RETRY_MAX_MS", "1000")
                .env("HEFT_PURGE_POLL_MS", "100")
                .env("HEFT_PURGE_IMMEDIATE_TIMEOUT_MS", "1000");
        }
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        let mut child = command.spawn().expect("spawn heft");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        let process = Process {
            spec: self.clone(),
            child,
            log,
        };
        process.wait_until_serving().await;
        process
    }
}

impl Process {
    async fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://{}", self.spec.listen);
        loop {
            if let Ok(channel) = Channel::from_shared(url.clone())
                .expect("url")
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let check = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if check.is_ok_and(|r| r.into_inner().status == 1) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not become healthy:\n{}",
                self.spec.service,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The overall health status the service reports (1 SERVING, 2
    /// NOT_SERVING), or `None` when it does not answer.
    pub async fn health(&self) -> Option<i32> {
        let channel = Channel::from_shared(format!("http://{}", self.spec.listen))
            .expect("url")
            .connect()
            .await
            .ok()?;
        let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(Duration::from_secs(2));
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(request)
            .await
            .ok()
            .map(|response| response.into_inner().status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The service's `/metrics` page.
    pub async fn scrape(&self) -> String {
        let response = self.try_scrape().await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// What `GET /metrics` answers, empty when the connection is closed unanswered.
    pub async fn try_scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.spec.metrics)
            .await
            .expect("connect to metrics");
        let _ = stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: heft\r\nConnection: close\r\n\r\n")
            .await;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        response
    }

    /// A `kB` field of the process's `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("process status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        assert!(
            status.success(),
            "graceful stop exits 0: {status:?}\n{}",
            self.log_text()
        );
        self.log_text()
    }

    /// SIGHUP: re-read the credentials file.
    pub fn hangup(&self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-HUP", &pid]).status();
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CreateEntry of 80 kg on day `day` of May 2024.
pub fn new_entry(user_id: &str, day: i32) -> entries_pb::CreateEntryRequest {
    entries_pb::CreateEntryRequest {
        user_id: user_id.into(),
        weight: Some(Weight {
            value: 80.0,
            unit: WeightUnit::Kilograms as i32,
        }),
        recorded_on: Some(Date {
            year: 2024,
            month: 5,
            day,
        }),
        note: String::new(),
        request_id: String::new(),
    }
}

/// `message` with the API token.
pub fn authorized<T>(message: T) -> tonic::Request<T> {
    with_token(message, API_TOKEN)
}

pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

pub struct Clients {
    pub users: UserServiceClient<Channel>,
    pub entries: EntryServiceClient<Channel>,
}

impl Clients {
    pub fn new(users: SocketAddr, entries: SocketAddr) -> Self {
        let lazy = |addr: SocketAddr| {
            Channel::from_shared(format!("http://{addr}"))
                .expect("url")
                .connect_lazy()
        };
        Self {
            users: UserServiceClient::new(lazy(users)),
            entries: EntryServiceClient::new(lazy(entries)),
        }
    }

    pub async fn create_user(&mut self) -> String {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        self.create_user_with_email(&email).await
    }

    pub async fn create_user_with_email(&mut self, email: &str) -> String {
        self.users
            .create_user(authorized(users_pb::CreateUserRequest {
                email: email.to_owned(),
                name: "E2E".into(),
                password: PASSWORD.into(),
                weight_unit: WeightUnit::Kilograms as i32,
            }))
            .await
            .expect("create user")
            .into_inner()
            .id
    }

    pub async fn import(&mut self, user_id: &str, count: usize) {
        let entries = (0..count)
            .map(|i| entries_pb::NewEntry {
                weight: Some(Weight {
                    value: 70.0 + (i % 20) as f64,
                    unit: WeightUnit::Kilograms as i32,
                }),
                recorded_on: Some(Date {
                    year: 2000 + (i / 365) as i32,
                    month: 1,
                    day: 1 + (i % 28) as i32,
                }),
                note: String::new(),
            })
            .collect();
        self.entries
            .batch_create_entries(authorized(entries_pb::BatchCreateEntriesRequest {
                user_id: user_id.into(),
                entries,
            }))
            .await
            .expect("import");
    }

    pub async fn create_entry(
        &mut self,
        user_id: &str,
    ) -> Result<entries_pb::Entry, tonic::Status> {
        self.entries
            .create_entry(authorized(new_entry(user_id, 1)))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The status code a new entry for `user_id` is refused with.
    pub async fn entry_refusal(&mut self, user_id: &str) -> tonic::Code {
        self.create_entry(user_id)
            .await
            .expect_err("entry refused")
            .code()
    }

    pub async fn count_entries(&mut self, user_id: &str) -> usize {
        let mut count = 0;
        let mut page_token = String::new();
        loop {
            let page = self
                .entries
                .list_entries(authorized(entries_pb::ListEntriesRequest {
                    user_id: user_id.into(),
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                }))
                .await
                .expect("list")
                .into_inner();
            count += page.entries.len();
            page_token = page.next_page_token;
            if page_token.is_empty() {
                return count;
            }
        }
    }

    pub async fn delete_user(
        &mut self,
        user_id: &str,
        request_id: Option<&str>,
    ) -> Result<users_pb::DeleteUserResponse, tonic::Status> {
        let mut request = authorized(users_pb::DeleteUserRequest { id: user_id.into() });
        if let Some(id) = request_id {
            request
                .metadata_mut()
                .insert("x-request-id", id.parse().expect("ascii"));
        }
        self.users
            .delete_user(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn get_purge_job(
        &mut self,
        user_id: &str,
    ) -> Result<users_pb::PurgeJob, tonic::Status> {
        self.users
            .get_purge_job(authorized(users_pb::GetPurgeJobRequest {
                user_id: user_id.into(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn list_purge_jobs(
        &mut self,
        state: users_pb::PurgeState,
        page_size: i32,
        page_token: &str,
    ) -> Result<users_pb::ListPurgeJobsResponse, tonic::Status> {
        self.users
            .list_purge_jobs(authorized(users_pb::ListPurgeJobsRequest {
                state: state.into(),
                page_size,
                page_token: page_token.into(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Polls GetPurgeJob until the job is purged; returns it.
    pub async fn wait_until_job_purged(
        &mut self,
        user_id: &str,
        within: Duration,
    ) -> users_pb::PurgeJob {
        let started = Instant::now();
        loop {
            let job = self.get_purge_job(user_id).await.expect("purge job");
            if job.state == PURGED {
                return job;
            }
            assert!(
                started.elapsed() < within,
                "purge of {user_id} still pending after {within:?}: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get_user(&mut self, user_id: &str) -> Result<users_pb::User, tonic::Status> {
        self.users
            .get_user(authorized(users_pb::GetUserRequest { id: user_id.into() }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Polls until the user has no entries left; returns how long it took.
    pub async fn wait_until_purged(&mut self, user_id: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.count_entries(user_id).await == 0 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "entries of {user_id} still there after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Both services on fresh databases of one backend, started and restarted
/// at will on the same ports and databases.
pub struct Stack {
    pub users_spec: ServiceSpec,
    pub entries_spec: ServiceSpec,
    pub users_db: TestDatabase,
    pub entries_db: TestDatabase,
}

impl Stack {
    pub async fn new(users_db: TestDatabase) -> Self {
        let entries_db = match users_db.backend {
            Backend::Sqlite => TestDatabase::sqlite(),
            Backend::Postgres => TestDatabase::postgres().await,
        };
        let (users_addr, entries_addr) = (free_port(), free_port());
        Self {
            users_spec: ServiceSpec::new(Service::Users, users_addr, &users_db, entries_addr),
            entries_spec: ServiceSpec::new(Service::Entries, entries_addr, &entries_db, users_addr),
            users_db,
            entries_db,
        }
    }

    /// Both services without tokens: open, as on a developer's machine.
    pub fn without_tokens(mut self) -> Self {
        self.users_spec.internal_token = None;
        self.entries_spec.internal_token = None;
        self
    }

    /// Both services as processes.
    pub async fn start(&self) -> (Process, Process) {
        (
            self.users_spec.start().await,
            self.entries_spec.start().await,
        )
    }

    /// Both services in this process.
    pub async fn spawn(&self) -> (RunningService, RunningService) {
        (
            self.users_spec.spawn().await,
            self.entries_spec.spawn().await,
        )
    }

    /// A user with `entries` entries, deleted while the entries service is
    /// stopped: the purge is left pending.
    pub async fn pending_purge(&self, entries_service: Process, entries: usize) -> String {
        let mut clients = self.clients();
        let user = clients.create_user().await;
        clients.import(&user, entries).await;
        entries_service.stop();
        let deleted = clients
            .delete_user(&user, None)
            .await
            .expect("delete with entries down");
        assert_eq!(
            (deleted.purge_state, deleted.purged_entry_count),
            (PENDING, 0)
        );
        assert_eq!(
            clients.get_user(&user).await.expect_err("deleted").code(),
            tonic::Code::NotFound
        );
        user
    }

    pub fn clients(&self) -> Clients {
        Clients::new(self.users_spec.listen, self.entries_spec.listen)
    }
}
