//! Both services as release processes on fresh PostgreSQL databases, on
//! loopback, with their memory and CPU sampled.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use tonic::transport::{Channel, Endpoint};

use crate::load::{CpuProbe, CpuSplit};

pub const API_TOKEN: &str = "bench-api-token";
const INTERNAL_TOKEN: &str = "bench-internal-token";

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `url` with its database replaced.
pub fn database_url(admin_url: &str, database: &str) -> String {
    let (base, query) = admin_url
        .split_once('?')
        .map_or((admin_url, None), |(b, q)| (b, Some(q)));
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|i| start + i))
        .unwrap_or(base.len());
    let mut url = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

pub struct Service {
    pub addr: SocketAddr,
    child: Child,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the CPU of this client, this service and PostgreSQL.
    pub fn cpu_probe(&self) -> CpuProbe {
        let pid = self.pid();
        Arc::new(move || cpu_split(pid))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Stack {
    pub users: Service,
    pub entries: Service,
    /// The token of a credential with `entries.read` only.
    pub reader_token: String,
    credentials: PathBuf,
    pub entries_url: String,
    admin_url: String,
    databases: Vec<String>,
}

/// The service binaries: next to this one (`cargo build --profile dist` puts
/// them side by side).
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory")?;
    // Tests run from target/<profile>/deps.
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "{name} not found next to {}: build the workspace first (cargo build --profile dist --workspace)",
        exe.display()
    )
}

/// A credentials file with one reader (scope `entries.read`), for the
/// access phase; its token.
fn reader_credential(run: &str) -> anyhow::Result<(PathBuf, String)> {
    let reader = heft_service::auth::NewCredential::generate(
        "bench-reader",
        heft_service::auth::Scopes::parse(["entries.read"]).map_err(anyhow::Error::msg)?,
    )?;
    let path = std::env::temp_dir().join(format!("heft-bench-credentials-{run}.toml"));
    std::fs::write(&path, reader.entry)?;
    Ok((path, reader.token))
}

fn spawn(
    binary: &Path,
    credentials: &Path,
    args: &[(&str, String)],
    env: &[(&str, String)],
) -> anyhow::Result<Child> {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name, value)))
        .env("HEFT_LOG", "warn")
        .env("HEFT_API_TOKENS", API_TOKEN)
        .env("HEFT_INTERNAL_TOKEN", INTERNAL_TOKEN)
        .env("HEFT_CREDENTIALS_FILE", credentials)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (flag, value) in args {
        command.arg(flag).arg(value);
    }
    Ok(command.spawn()?)
}

fn entries_service(
    addr: SocketAddr,
    database_url: &str,
    users_addr: SocketAddr,
    credentials: &Path,
    env: &[(&str, String)],
) -> anyhow::Result<Service> {
    let child = spawn(
        &binary("heft-entries")?,
        credentials,
        &[
            ("--listen", addr.to_string()),
            ("--database-url", database_url.to_owned()),
            ("--users-url", format!("http://{users_addr}")),
            ("--metrics-listen", String::new()),
        ],
        env,
    )?;
    Ok(Service { addr, child })
}

impl Stack {
    pub async fn start(admin_url: &str) -> anyhow::Result<Self> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let databases = vec![
            format!("heft_bench_users_{}", &run[..12]),
            format!("heft_bench_entries_{}", &run[..12]),
        ];
        let mut admin = PgConnection::connect(admin_url)
            .await
            .context("cannot connect to PostgreSQL")?;
        for database in &databases {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
                .execute(&mut admin)
                .await?;
        }
        let (users_addr, entries_addr) = (free_port()?, free_port()?);
        let (credentials, reader_token) = reader_credential(&run)?;
        let users_url = database_url(admin_url, &databases[0]);
        let entries_url = database_url(admin_url, &databases[1]);
        let users = Service {
            addr: users_addr,
            child: spawn(
                &binary("heft-users")?,
                &credentials,
                &[
                    ("--listen", users_addr.to_string()),
                    ("--database-url", users_url),
                    ("--entries-url", format!("http://{entries_addr}")),
                    ("--metrics-listen", String::new()),
                ],
                &[],
            )?,
        };
        let entries = entries_service(entries_addr, &entries_url, users_addr, &credentials, &[])?;
        let stack = Self {
            users,
            entries,
            reader_token,
            credentials,
            entries_url,
            admin_url: admin_url.to_owned(),
            databases,
        };
        for service in [&stack.users, &stack.entries] {
            wait_until_serving(service.addr).await?;
        }
        Ok(stack)
    }

    /// Another heft-entries on the same database, with `env` besides the
    /// usual settings, serving once this returns.
    pub async fn start_entries_with(&self, env: &[(&str, String)]) -> anyhow::Result<Service> {
        let service = entries_service(
            free_port()?,
            &self.entries_url,
            self.users.addr,
            &self.credentials,
            env,
        )?;
        wait_until_serving(service.addr).await?;
        Ok(service)
    }

    /// The bare reference server (`bare`) on heft-entries' database, in a
    /// process of its own.
    pub async fn start_bare(&self) -> anyhow::Result<Service> {
        let addr = free_port()?;
        let child = Command::new(std::env::current_exe()?)
            .arg("--serve-bare")
            .arg(&self.entries_url)
            .arg("--bare-listen")
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let service = Service { addr, child };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(service);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the bare reference server at {addr} did not start")
    }

    /// `count` HTTP/2 connections to a service.
    pub async fn channels(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<Channel>> {
        let mut channels = Vec::new();
        for _ in 0..count {
            channels.push(
                Endpoint::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await?,
            );
        }
        Ok(channels)
    }

    /// Stops the services and drops the databases.
    pub async fn finish(self) -> anyhow::Result<()> {
        let Self {
            users,
            entries,
            admin_url,
            databases,
            credentials,
            ..
        } = self;
        drop((users, entries));
        let _ = std::fs::remove_file(credentials);
        let mut admin = PgConnection::connect(&admin_url).await?;
        for database in databases {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
        }
        Ok(())
    }
}

async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    for _ in 0..300 {
        if let Ok(channel) = Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
        {
            let serving = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == 1);
            if serving {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("service at {addr} did not become ready")
}

/// Samples resident memory (max) and CPU time of processes while a phase runs.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    max_rss_kib: Vec<Arc<AtomicU64>>,
    cpu_ticks_before: Vec<u64>,
    pids: Vec<u32>,
    task: tokio::task::JoinHandle<()>,
}

/// One process over one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub max_rss_mib: f64,
    pub cpu_seconds: f64,
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// User plus system CPU of a process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0)
}

/// CPU used so far by this process (the client), the service with `pid`
/// and every PostgreSQL process on the machine.
fn cpu_split(service_pid: u32) -> CpuSplit {
    CpuSplit {
        client: cpu_ticks(std::process::id()) as f64 / 100.0,
        service: cpu_ticks(service_pid) as f64 / 100.0,
        database: postgres_cpu_ticks() as f64 / 100.0,
    }
}

/// The server's processes are all named `postgres` (the postmaster and one
/// per connection, plus its background workers).
fn postgres_cpu_ticks() -> u64 {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    processes
        .filter_map(Result::ok)
        .filter_map(|process| {
            let pid: u32 = process.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim_end() == "postgres").then(|| cpu_ticks(pid))
        })
        .sum()
}

impl Sampler {
    pub fn start(pids: &[u32]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max_rss_kib: Vec<_> = pids
            .iter()
            .map(|&pid| Arc::new(AtomicU64::new(rss_kib(pid))))
            .collect();
        let task = {
            let (stop, max_rss_kib, pids) = (stop.clone(), max_rss_kib.clone(), pids.to_vec());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for (pid, max) in pids.iter().zip(&max_rss_kib) {
                        max.fetch_max(rss_kib(*pid), Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Self {
            stop,
            max_rss_kib,
            cpu_ticks_before: pids.iter().map(|&pid| cpu_ticks(pid)).collect(),
            pids: pids.to_vec(),
            task,
        }
    }

    pub async fn finish(self) -> Vec<Usage> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.pids
            .iter()
            .zip(&self.max_rss_kib)
            .zip(&self.cpu_ticks_before)
            .map(|((&pid, max), before)| Usage {
                max_rss_mib: max.load(Ordering::Relaxed).max(rss_kib(pid)) as f64 / 1024.0,
                cpu_seconds: cpu_ticks(pid).saturating_sub(*before) as f64 / 100.0,
            })
            .collect()
    }
}
