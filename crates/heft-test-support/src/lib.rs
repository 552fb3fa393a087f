//! Fresh databases for heft's tests: a SQLite file in a temporary directory,
//! or a new PostgreSQL database on the server `HEFT_TEST_POSTGRES_URL` names.
//!
//! Without `HEFT_TEST_POSTGRES_URL` the PostgreSQL variants are skipped with a
//! note, except under `CI=true`, where they fail: CI never skips silently.
#![forbid(unsafe_code)]

use std::{future::Future, net::SocketAddr};

use futures::future::BoxFuture;
use sqlx::{Connection, PgConnection};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub const POSTGRES_URL_VAR: &str = "HEFT_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A fresh, empty database, or `None` when PostgreSQL is not configured
    /// outside CI.
    pub async fn fresh(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite()),
            Backend::Postgres => Self::postgres().await,
        }
    }

    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("heft.db").display());
        Self {
            url,
            backend: Backend::Sqlite,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> Option<Self> {
        let Some(admin_url) = postgres_url() else {
            eprintln!("note: {POSTGRES_URL_VAR} is not set; skipping the PostgreSQL variant");
            return None;
        };
        let name = format!("heft_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_VAR}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        Some(Self {
            url: with_database(&admin_url, &name),
            backend: Backend::Postgres,
            _dir: None,
        })
    }
}

/// A copy of a test database, as an operator's backup would be.
#[derive(Debug)]
pub enum Snapshot {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

const SQLITE_FILES: [&str; 3] = ["", "-wal", "-shm"];

impl TestDatabase {
    fn sqlite_path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(self.url.trim_start_matches("sqlite://"))
    }

    fn postgres_name(&self) -> &str {
        let path = self.url.split('?').next().unwrap_or_default();
        path.rsplit('/').next().unwrap_or_default()
    }

    /// Backs the database up. Whoever uses it must be stopped.
    pub async fn snapshot(&self) -> Snapshot {
        match self.backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("snapshot directory");
                let path = self.sqlite_path();
                for suffix in SQLITE_FILES {
                    let file = format!("{}{suffix}", path.display());
                    if std::path::Path::new(&file).exists() {
                        std::fs::copy(&file, dir.path().join(format!("db{suffix}")))
                            .expect("copy database file");
                    }
                }
                Snapshot::Sqlite(dir)
            }
            Backend::Postgres => {
                let copy = format!("{}_snap", self.postgres_name());
                admin_sql(&format!(
                    "CREATE DATABASE {copy} TEMPLATE {}",
                    self.postgres_name()
                ))
                .await;
                Snapshot::Postgres(copy)
            }
        }
    }

    /// Restores a backup over the database. Whoever uses it must be stopped.
    pub async fn restore(&self, snapshot: &Snapshot) {
        match snapshot {
            Snapshot::Sqlite(dir) => {
                let path = self.sqlite_path();
                for suffix in SQLITE_FILES {
                    let file = format!("{}{suffix}", path.display());
                    let _ = std::fs::remove_file(&file);
                    let saved = dir.path().join(format!("db{suffix}"));
                    if saved.exists() {
                        std::fs::copy(&saved, &file).expect("restore database file");
                    }
                }
            }
            Snapshot::Postgres(copy) => {
                let name = self.postgres_name();
                admin_sql(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
                admin_sql(&format!("CREATE DATABASE {name} TEMPLATE {copy}")).await;
            }
        }
    }
}

async fn admin_sql(statement: &str) {
    let admin_url = postgres_url().expect("postgres configured");
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_VAR}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// The PostgreSQL server for tests; panics under `CI=true` when unset.
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "{POSTGRES_URL_VAR} must be set under CI=true: PostgreSQL tests never skip in CI"
            )
        }
        _ => None,
    }
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|i| start + i))
        .unwrap_or(base.len());
    let mut result = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    result
}

/// A service running in this process on a port of its own, as its binary
/// would run it, until [`RunningService::stop`].
#[derive(Debug)]
pub struct RunningService {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningService {
    /// Binds port 0 and runs `serve(listener, shutdown)` on its own task.
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(TcpListener, BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self::start_on("127.0.0.1:0", serve).await
    }

    /// Like [`RunningService::start`], on a given address (to restart a
    /// service where its clients expect it).
    pub async fn start_on<F, Fut>(addr: &str, serve: F) -> Self
    where
        F: FnOnce(TcpListener, BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.expect("bind test listener");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: BoxFuture<'static, ()> = Box::pin(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(serve(listener, shutdown));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown; returns what the service returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Declares one `#[tokio::test]` per backend for an `async fn(TestDatabase)`:
/// `backend_tests!(my_test);` makes `my_test::sqlite` and `my_test::postgres`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    if let Some(db) = $crate::TestDatabase::fresh($crate::Backend::Sqlite).await {
                        super::$name(db).await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    if let Some(db) = $crate::TestDatabase::fresh($crate::Backend::Postgres).await {
                        super::$name(db).await;
                    }
                }
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/postgres", "t1"),
            "postgres://u:p@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://127.0.0.1/postgres?sslmode=disable", "t1"),
            "postgres://127.0.0.1/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://127.0.0.1", "t1"),
            "postgres://127.0.0.1/t1"
        );
    }
}
