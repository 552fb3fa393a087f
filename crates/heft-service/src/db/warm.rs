//! Connections kept out of the pool between single statements.
//!
//! sqlx pings every connection handed back to its pool, whatever happened
//! to it: a round trip to PostgreSQL and a task per statement, in case a
//! cancelled call left the connection mid-protocol. That was a sixth of the
//! entries service's CPU on GetEntry (docs/BENCHMARKS.md). A statement that
//! ran to completion cannot have left it so: its connection is kept warm
//! here for the next statement. A connection whose statement failed or was
//! abandoned midway goes back the sqlx way, to be checked. Few are kept, so
//! that transactions still find connections in the pool, and none that
//! idled for long, so that a restarted database is noticed as before.

use std::{
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};

/// A warm connection idle longer than this goes back to the pool (where
/// sqlx checks it) instead of serving another statement.
const WARM_FOR: Duration = Duration::from_secs(5);

pub struct WarmConnections {
    pool: PgPool,
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    keep: usize,
}

impl fmt::Debug for WarmConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmConnections")
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl WarmConnections {
    /// Keeps at most `keep` connections of `pool` warm.
    pub fn new(pool: PgPool, keep: usize) -> Self {
        Self {
            pool,
            idle: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    /// Runs one statement on a warm connection, or on one from the pool
    /// when none is warm.
    pub async fn run<T>(
        &self,
        statement: impl for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let mut connection = match self.take() {
            Some(connection) => connection,
            None => self.pool.acquire().await?,
        };
        // Dropped here if the call is cancelled midway: back to the pool.
        let result = statement(&mut connection).await;
        // A database error is answered in full too, but a broken connection
        // looks the same from here: only a success keeps it warm.
        if result.is_ok() {
            self.give_back(connection);
        }
        result
    }

    /// Connections kept warm at the moment.
    pub fn warm(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn take(&self) -> Option<PoolConnection<Postgres>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The most recently used first: the others are the first to go stale.
        while let Some((connection, since)) = idle.pop() {
            if since.elapsed() < WARM_FOR {
                return Some(connection);
            }
            // Dropped: back to the pool, which checks it.
            drop(connection);
        }
        None
    }

    fn give_back(&self, connection: PoolConnection<Postgres>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.keep {
            idle.push((connection, Instant::now()));
        }
        // Otherwise dropped after the lock: back to the pool.
    }
}
