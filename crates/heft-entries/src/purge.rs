//! The purge of a deleted user's entries (the target of the cascade, and of
//! the orphan audit): a tombstone committed first, then the entries in
//! bounded, committed batches. Whatever stops a purge (its deadline, a crash,
//! a shutdown) keeps every committed batch; the next purge resumes.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::{
    domain::UserId,
    store::{EntryStore, StoreResult},
};

/// How purges are paced; flags and `HEFT_PURGE_*` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    /// Most entries one committed batch of a purge deletes (a user with no
    /// more is purged in one statement).
    #[arg(
        long,
        env = "HEFT_PURGE_BATCH_SIZE",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub purge_batch_size: u32,
}

/// Where a purge stands when a call to [`purge_user`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeProgress {
    /// Entries this call deleted.
    pub deleted: u64,
    /// Entries every purge of this user has deleted.
    pub total: u64,
    /// True when no entry of the user is left.
    pub complete: bool,
}

/// Purges the user's entries until none is left or `deadline` is too close
/// to start another batch.
pub async fn purge_user(
    store: &dyn EntryStore,
    user_id: UserId,
    now: DateTime<Utc>,
    batch_size: u32,
    deadline: Instant,
) -> StoreResult<PurgeProgress> {
    store.leave_tombstone(user_id, now).await?;
    let mut progress = PurgeProgress {
        deleted: 0,
        total: 0,
        complete: false,
    };
    // A batch is not started unless it can finish in time, judged by the
    // slowest batch so far (twice over, for a margin).
    let mut slowest = Duration::ZERO;
    loop {
        if Instant::now() + slowest * 2 > deadline {
            return Ok(progress);
        }
        let started = Instant::now();
        let batch = store.delete_entries_batch(user_id, batch_size).await?;
        slowest = slowest.max(started.elapsed());
        progress.deleted += batch.deleted;
        progress.total = batch.total;
        if batch.complete {
            progress.complete = true;
            return Ok(progress);
        }
    }
}
