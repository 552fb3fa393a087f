//! The database both services stand on: connecting and migrating, the
//! readiness ping, the pool's figures and the shared signing keys, written
//! once for PostgreSQL and SQLite; and what every store shares (errors,
//! instants in columns, warm connections).

mod error;
mod timestamp;
pub mod warm;

use std::time::Duration;

use sqlx::{
    Connection, PgPool, SqlitePool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use error::{DbError, is_unavailable, violates_unique};
pub use timestamp::Timestamp;

/// A call waits at most this long for a connection before `UNAVAILABLE`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side limits of every PostgreSQL session, so that no statement,
/// lock wait or open transaction outlives the call that started it (a call
/// lasts at most 30 s), even when the call's future is dropped mid-statement.
const POSTGRES_SESSION_LIMITS: [(&str, &str); 3] = [
    ("statement_timeout", "30s"),
    ("lock_timeout", "5s"),
    ("idle_in_transaction_session_timeout", "10s"),
];

/// How every heft session plans: bitmap scans off. Every heft statement is
/// a point lookup or one user's rows in the order of an index, and with
/// stale or skewed statistics (a user who just imported years of history,
/// before autovacuum's ANALYZE) PostgreSQL would read all of that user's
/// rows by bitmap and sort them for one page. Without the bitmap, the
/// ordered index scan that stops at the page is the cheaper plan whatever
/// the estimate (docs/design.md, "A page costs a page").
pub const POSTGRES_PLANNER_SETTINGS: [(&str, &str); 1] = [("enable_bitmapscan", "off")];

/// A pooled PostgreSQL connection idle for longer than this is pinged
/// before use. A connection in steady use is not: a ping per call is a
/// round trip per call, and a dropped connection shows as an error at once.
const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// A service's schema, for each backend (`sqlx::migrate!` of its folders).
#[derive(Debug)]
pub struct Migrations {
    pub postgres: Migrator,
    pub sqlite: Migrator,
}

/// An open, migrated database: the pool a store runs its statements on.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs the same code on whichever pool `$database` holds: the statements
/// that read alike on both backends are written once.
macro_rules! on_either_pool {
    ($database:expr, $pool:ident => $body:expr) => {
        match $database {
            Database::Postgres($pool) => $body,
            Database::Sqlite($pool) => $body,
        }
    };
}

// The same statements serve both backends ($1 is positional in SQLite too).
const INSERT_SIGNING_KEY: &str =
    "INSERT INTO signing_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
const SELECT_SIGNING_KEY: &str = "SELECT key FROM signing_keys WHERE name = $1";

impl Database {
    /// Connects to the database a `postgres://` or `sqlite:` URL names and
    /// brings its schema up to date.
    pub async fn open(url: &str, migrations: &Migrations) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = connect_postgres(url).await?;
            migrations.postgres.run(&pool).await?;
            Ok(Database::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let pool = connect_sqlite(url).await?;
            migrations.sqlite.run(&pool).await?;
            Ok(Database::Sqlite(pool))
        } else {
            anyhow::bail!("unsupported database url: expected postgres:// or sqlite://")
        }
    }

    /// Whether the database answers now, on a pooled connection (readiness).
    pub async fn ping(&self) -> Result<(), DbError> {
        on_either_pool!(self, pool => pool.acquire().await?.ping().await?);
        Ok(())
    }

    /// Connections of the pool: all of them, and those idle.
    pub fn pool_connections(&self) -> (u32, usize) {
        on_either_pool!(self, pool => (pool.size(), pool.num_idle()))
    }

    /// [`Database::signing_key`] with a fresh random candidate.
    pub async fn shared_key(&self, name: &str) -> Result<Vec<u8>, DbError> {
        self.signing_key(name, &crate::pagination::generate_key())
            .await
    }

    /// The key `name` shared by every replica on this database (page tokens,
    /// the login throttle), created from `candidate` by the first replica
    /// that asks.
    pub async fn signing_key(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, DbError> {
        on_either_pool!(self, pool => {
            sqlx::query(INSERT_SIGNING_KEY)
                .bind(name)
                .bind(candidate)
                .execute(pool)
                .await?;
            Ok(sqlx::query_scalar(SELECT_SIGNING_KEY)
                .bind(name)
                .fetch_one(pool)
                .await?)
        })
    }
}

async fn connect_postgres(url: &str) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|connection, metadata| {
            Box::pin(async move {
                if metadata.idle_for < PING_AFTER_IDLE {
                    return Ok(true);
                }
                // An error closes this connection; the pool hands out another.
                connection.ping().await.map(|()| true)
            })
        })
        .connect_with(
            options
                .options(POSTGRES_SESSION_LIMITS)
                .options(POSTGRES_PLANNER_SETTINGS),
        )
        .await?)
}

/// Opens (creating file and directory if needed) a SQLite database in WAL mode.
async fn connect_sqlite(url: &str) -> anyhow::Result<SqlitePool> {
    let options: SqliteConnectOptions = url.parse()?;
    if let Some(dir) = options.get_filename().parent() {
        std::fs::create_dir_all(dir)?;
    }
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit survives a power loss. The users database holds the
        // outbox (a deletion answered must not come back without its purge
        // job), the entries database the tombstones and purges the users
        // service recorded as done; both are promises made to a caller.
        .synchronous(SqliteSynchronous::Full)
        // A writer waits at most this long for SQLite's write lock.
        .busy_timeout(ACQUIRE_TIMEOUT)
        .foreign_keys(true);
    Ok(SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A connection to a local file cannot drop: no ping before use.
        .test_before_acquire(false)
        .connect_with(options)
        .await?)
}
