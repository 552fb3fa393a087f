//! What heft is measured against: its statements run directly on
//! PostgreSQL, on connections of the bench's own.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{
    Connection as _, PgConnection, PgPool, Row as _,
    postgres::{PgPoolOptions, PgRow},
};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

/// The floor's connections: one per worker, held for the whole phase, as
/// pgbench's clients: no pool, no ping, the statement alone.
pub struct FloorConnections(Vec<Mutex<PgConnection>>);

impl FloorConnections {
    pub async fn connect(url: &str, workers: usize) -> anyhow::Result<Self> {
        let mut connections = Vec::with_capacity(workers);
        for _ in 0..workers {
            connections.push(Mutex::new(PgConnection::connect(url).await?));
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

// replaced by heft_entries::store::EntryRow on merge
/// The floor decodes its rows as heft-entries does: every column, by position.
#[allow(dead_code)]
pub struct EntryRow {
    id: Uuid,
    user_id: Uuid,
    value: f64,
    unit: i16,
    recorded_on: NaiveDate,
    note: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl sqlx::FromRow<'_, PgRow> for EntryRow {
    fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        Ok(Self {
            id: row.try_get(0)?,
            user_id: row.try_get(1)?,
            value: row.try_get(2)?,
            unit: row.try_get(3)?,
            recorded_on: row.try_get(4)?,
            note: row.try_get(5)?,
            create_time: row.try_get(6)?,
            update_time: row.try_get(7)?,
        })
    }
}
