//! Connections kept out of the pool between single statements.
//!
//! sqlx pings every connection handed back to its pool, whatever happened
//! to it: a round trip to PostgreSQL and a task per statement, in case a
//! cancelled call left the connection mid-protocol. That was a sixth of the
//! entries service's CPU on GetEntry (docs/BENCHMARKS.md). A statement that
//! ran to completion cannot have left it so: its connection is kept warm
//! here for the next statement. A connection whose statement failed or was
//! abandoned midway goes back the sqlx way, to be checked. None that idled
//! for long is used, so that a restarted database is noticed as before.
//!
//! At most `keep` statements run here at once, each on a warm connection or
//! one from the pool; the others wait their turn here (in order), not in the
//! pool's queue. So every connection a statement finishes with can stay
//! warm, and the rest of the pool stays free for transactions. (Waiting in
//! the pool's queue too, as this did, kept connections warm and idle while
//! statements waited for the pool, which got one back, and pinged it, only
//! once more than `keep` were warm.)

use std::{
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};
use tokio::sync::Semaphore;

/// A warm connection idle longer than this goes back to the pool (where
/// sqlx checks it) instead of serving another statement.
const WARM_FOR: Duration = Duration::from_secs(5);

pub struct WarmConnections {
    pool: PgPool,
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    /// A turn for each statement that may run at once.
    turns: Semaphore,
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
    /// Runs at most `keep` statements at once, and keeps their connections
    /// (of `pool`) warm.
    pub fn new(pool: PgPool, keep: usize) -> Self {
        Self {
            pool,
            idle: Mutex::new(Vec::with_capacity(keep)),
            turns: Semaphore::new(keep),
            keep,
        }
    }

    /// Runs one statement on a warm connection, or on one from the pool
    /// when none is warm.
    pub async fn run<T>(
        &self,
        statement: impl for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        // Never closed, so the turn always comes.
        let _turn = self.turns.acquire().await;
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
