//! Fresh databases for heft's tests: a SQLite file in a temporary directory,
//! or a new PostgreSQL database on the server `HEFT_TEST_POSTGRES_URL` names.
//!
//! PostgreSQL tests are marked `#[ignore]`, so that a plain `cargo test`
//! reports them ignored rather than passed; `-- --include-ignored` runs them,
//! and then `HEFT_TEST_POSTGRES_URL` must name a server (a test without one
//! fails, it never passes silently). Each test's database is dropped when
//! the test ends.
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
    /// A fresh, empty database.
    pub async fn fresh(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite(),
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

    /// A new database on the server `HEFT_TEST_POSTGRES_URL` names; panics
    /// when it is unset.
    pub async fn postgres() -> Self {
        let admin_url = postgres_url();
        let name = format!("heft_test_{}", uuid::Uuid::new_v4().simple());
        admin_sql(&format!("CREATE DATABASE {name}")).await;
        Self {
            url: with_database(&admin_url, &name),
            backend: Backend::Postgres,
            _dir: None,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.backend == Backend::Postgres {
            drop_postgres_database(self.postgres_name().to_owned());
        }
    }
}

/// Drops a test database from synchronous code (a `Drop`), on a thread of
/// its own so that it works inside and outside a runtime.
fn drop_postgres_database(name: String) {
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let Ok(mut admin) = PgConnection::connect(&postgres_url()).await else {
                return;
            };
            let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut admin)
                .await;
        });
    });
    let _ = dropped.join();
}

/// A copy of a test database, as an operator's backup would be.
#[derive(Debug)]
pub enum Snapshot {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Snapshot::Postgres(name) = self {
            drop_postgres_database(name.clone());
        }
    }
}

const SQLITE_FILES: [&str; 3] = ["", "-wal", "-shm"];

impl TestDatabase {
    fn sqlite_path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(self.url.trim_start_matches("sqlite://"))
    }

    /// The PostgreSQL database's name.
    pub fn postgres_name(&self) -> &str {
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

/// Runs one statement on the test server's admin database.
pub async fn admin_sql(statement: &str) {
    let admin_url = postgres_url();
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_VAR}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// The PostgreSQL server for tests.
pub fn postgres_url() -> String {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{POSTGRES_URL_VAR} must name a PostgreSQL server to run the PostgreSQL tests \
             (e.g. postgres://postgres:postgres@127.0.0.1:5432/postgres)"
        ),
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

/// Asks the reflection service at `url` (v1 and v1alpha) which services it
/// lists, asserts that they are exactly health, both reflection versions and
/// `own_service`, and that each listed symbol can be described.
pub async fn assert_reflection_serves_exactly(url: &str, own_service: &str) {
    use tonic_reflection::pb::{v1, v1alpha};

    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut expected = vec![
        own_service.to_owned(),
        "grpc.health.v1.Health".to_owned(),
        "grpc.reflection.v1.ServerReflection".to_owned(),
        "grpc.reflection.v1alpha.ServerReflection".to_owned(),
    ];
    expected.sort();

    let ask_v1 = |request| {
        let channel = channel.clone();
        async move {
            let request = v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            v1::server_reflection_client::ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect("reflection v1")
                .into_inner()
                .message()
                .await
                .expect("response")
                .and_then(|r| r.message_response)
                .expect("an answer")
        }
    };
    let ask_v1alpha = |request| {
        let channel = channel.clone();
        async move {
            let request = v1alpha::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect("reflection v1alpha")
                .into_inner()
                .message()
                .await
                .expect("response")
                .and_then(|r| r.message_response)
                .expect("an answer")
        }
    };

    use v1::server_reflection_request::MessageRequest as V1Request;
    use v1::server_reflection_response::MessageResponse as V1Response;
    use v1alpha::server_reflection_request::MessageRequest as V1AlphaRequest;
    use v1alpha::server_reflection_response::MessageResponse as V1AlphaResponse;

    let V1Response::ListServicesResponse(list) =
        ask_v1(V1Request::ListServices(String::new())).await
    else {
        panic!("v1: expected a list of services");
    };
    let mut listed: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    listed.sort();
    assert_eq!(listed, expected, "v1 lists exactly this port's services");
    let V1AlphaResponse::ListServicesResponse(list) =
        ask_v1alpha(V1AlphaRequest::ListServices(String::new())).await
    else {
        panic!("v1alpha: expected a list of services");
    };
    let mut listed: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    listed.sort();
    assert_eq!(
        listed, expected,
        "v1alpha lists exactly this port's services"
    );

    for symbol in &expected {
        let answer = ask_v1(V1Request::FileContainingSymbol(symbol.clone())).await;
        assert!(
            matches!(&answer, V1Response::FileDescriptorResponse(files) if !files.file_descriptor_proto.is_empty()),
            "v1 cannot describe {symbol}: {answer:?}"
        );
        let answer = ask_v1alpha(V1AlphaRequest::FileContainingSymbol(symbol.clone())).await;
        assert!(
            matches!(&answer, V1AlphaResponse::FileDescriptorResponse(files) if !files.file_descriptor_proto.is_empty()),
            "v1alpha cannot describe {symbol}: {answer:?}"
        );
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
                    super::$name($crate::TestDatabase::sqlite()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
                async fn postgres() {
                    super::$name($crate::TestDatabase::postgres().await).await;
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
