//! Database plumbing both services share: connecting and migrating, the
//! classification of driver errors, and the shared signing key.

pub mod warm;

use std::time::Duration;

use sqlx::{
    Connection, PgPool, SqlitePool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

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

/// A pooled PostgreSQL connection idle for longer than this is pinged
/// before use. A connection in steady use is not: a ping per call is a
/// round trip per call, and a dropped connection shows as an error at once.
const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Connects to PostgreSQL and runs `migrator`.
pub async fn connect_postgres(url: &str, migrator: &Migrator) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
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
        .connect_with(options.options(POSTGRES_SESSION_LIMITS))
        .await?;
    migrator.run(&pool).await?;
    Ok(pool)
}

/// Opens (creating file and directory if needed) a SQLite database in WAL
/// mode and runs `migrator`.
pub async fn connect_sqlite(url: &str, migrator: &Migrator) -> anyhow::Result<SqlitePool> {
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
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A connection to a local file cannot drop: no ping before use.
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    migrator.run(&pool).await?;
    Ok(pool)
}

/// Whether a database error is worth retrying (`UNAVAILABLE`): the database
/// was unreachable, overloaded, shutting down, or rolled the transaction back
/// for a conflict; as opposed to refusing the statement for good.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                // SQLSTATE classes 08 connection exception, 40 transaction
                // rollback (deadlock, serialization), 53 insufficient
                // resources, 57 operator intervention (shutdown).
                matches!(pg.code().get(..2), Some("08" | "40" | "53" | "57"))
            } else {
                // SQLite primary result codes 5 (BUSY) and 6 (LOCKED); the low
                // byte of an extended code is its primary code.
                db.code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 5 | 6))
            }
        }
        _ => false,
    }
}

/// Whether the database answers, on a pooled connection (readiness).
pub async fn ping<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    pool.acquire().await?.ping().await
}

/// Whether `error` violates the unique index `index` on `columns`
/// (`table.column`). PostgreSQL names the index; SQLite names the columns
/// ("UNIQUE constraint failed: users.email") or, for an index on an
/// expression, the index ("… failed: index 'name'").
pub fn violates_unique(error: &sqlx::Error, index: &str, columns: &str) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    if !db.is_unique_violation() {
        return false;
    }
    match db.constraint() {
        Some(name) => name == index,
        None => {
            let message = db.message();
            message.ends_with(&format!(": {columns}"))
                || message.ends_with(&format!("index '{index}'"))
        }
    }
}

// The same statements serve both backends ($1 is positional in SQLite too).
const INSERT_SIGNING_KEY: &str =
    "INSERT INTO signing_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
const SELECT_SIGNING_KEY: &str = "SELECT key FROM signing_keys WHERE name = $1";

/// The key `name` of a PostgreSQL database (page tokens, the login
/// throttle), created from `candidate` by the first replica that asks, so
/// that every replica on the database uses the same one.
pub async fn signing_key_postgres(
    pool: &PgPool,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query(INSERT_SIGNING_KEY)
        .bind(name)
        .bind(candidate)
        .execute(pool)
        .await?;
    sqlx::query_scalar(SELECT_SIGNING_KEY)
        .bind(name)
        .fetch_one(pool)
        .await
}

/// [`signing_key_postgres`] for SQLite.
pub async fn signing_key_sqlite(
    pool: &SqlitePool,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query(INSERT_SIGNING_KEY)
        .bind(name)
        .bind(candidate)
        .execute(pool)
        .await?;
    sqlx::query_scalar(SELECT_SIGNING_KEY)
        .bind(name)
        .fetch_one(pool)
        .await
}
