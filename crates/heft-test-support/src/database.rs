//! Fresh databases for heft's tests: a SQLite file in a temporary directory,
//! or a new PostgreSQL database on the server `HEFT_TEST_POSTGRES_URL` names.
//!
//! PostgreSQL tests are marked `#[ignore]`, so that a plain `cargo test`
//! reports them ignored rather than passed; `-- --include-ignored` runs them,
//! and then `HEFT_TEST_POSTGRES_URL` must name a server (a test without one
//! fails, it never passes silently). Each test's database is dropped when
//! the test ends.

use sqlx::{Connection, PgConnection};

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
