//! What heft is measured against: its statements run directly on
//! PostgreSQL, on connections of the bench's own.

use sqlx::{
    Connection as _, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::{Mutex, MutexGuard};

/// The floor decodes its rows as heft-entries does: every column, by position.
pub use heft_entries::store::{EntryChangeRow, EntryRow};

/// The floor's connections: one per worker, held for the whole phase, as
/// pgbench's clients: no pool, no ping, the statement alone. Their sessions
/// plan as heft's do (bitmap scans off, docs/design.md), so that both run
/// the same plan of the same statement.
pub struct FloorConnections(Vec<Mutex<PgConnection>>);

impl FloorConnections {
    pub async fn connect(url: &str, workers: usize) -> anyhow::Result<Self> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()?
            .options(heft_service::db::POSTGRES_PLANNER_SETTINGS);
        let mut connections = Vec::with_capacity(workers);
        for _ in 0..workers {
            connections.push(Mutex::new(PgConnection::connect_with(&options).await?));
        }
        Ok(Self(connections))
    }

    pub async fn connection(&self, worker: usize) -> MutexGuard<'_, PgConnection> {
        self.0[worker % self.0.len()].lock().await
    }
}

/// Connections for the bench's own statements (seeding the bare DELETEs).
pub async fn raw_pool(url: &str, size: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .connect(url)
        .await?)
}
