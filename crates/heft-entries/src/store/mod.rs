//! Where entries live: one trait, one module per database.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use heft_service::{ErrorCode, ServiceError};

use crate::domain::{DateRange, Entry, EntryId, EntryPatch, IdempotencyKey, ListQuery, UserId};

mod postgres;
mod sqlite;

pub use postgres::PostgresEntryStore;
pub use sqlite::SqliteEntryStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("entry not found")]
    NotFound,
    #[error("the user has been deleted; no entries can be added")]
    UserPurged,
    #[error("entries are deleted in batches only after the user's tombstone")]
    NotPurged,
    #[error("entry database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("entry database error")]
    Database(#[source] sqlx::Error),
    #[error("corrupt row in the entry database: {0}")]
    Corrupt(&'static str),
}

impl StoreError {
    fn from_sqlx(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            _ if heft_service::db::is_unavailable(&error) => StoreError::Unavailable(error),
            _ => StoreError::Database(error),
        }
    }
}

impl ServiceError for StoreError {
    fn error_code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound => ErrorCode::NotFound,
            StoreError::UserPurged => ErrorCode::FailedPrecondition,
            StoreError::NotPurged => ErrorCode::Internal,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Database(_) | StoreError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            StoreError::NotFound => "ENTRY_NOT_FOUND",
            StoreError::UserPurged => "USER_DELETED",
            StoreError::NotPurged => "NOT_PURGED",
            StoreError::Unavailable(_) => "DATABASE_UNAVAILABLE",
            StoreError::Database(_) | StoreError::Corrupt(_) => "DATABASE_ERROR",
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What one batch of a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDeleted {
    /// Entries this batch deleted.
    pub deleted: u64,
    /// Entries every purge of this user has deleted, this batch included.
    pub total: u64,
    /// True when the user has no entry left: this batch deleted the last.
    pub complete: bool,
}

/// Most entries one BatchCreateEntries may carry.
pub use heft_proto::codec::MAX_BATCH_ENTRIES as MAX_BATCH;

#[async_trait]
pub trait EntryStore: Send + Sync + 'static {
    /// Inserts `entry` unless its user is purged (`UserPurged`). With a
    /// `request_id` already used for this user, returns the entry that
    /// request created instead of inserting another.
    ///
    /// The purge check and the insert are serialised against
    /// [`EntryStore::purge_user`] for the same user: an entry racing a purge
    /// is either refused or deleted by it, never left behind.
    async fn create_entry(
        &self,
        entry: &Entry,
        request_id: Option<IdempotencyKey>,
    ) -> StoreResult<Entry>;

    /// Inserts all of `entries` (one user's, at most [`MAX_BATCH`]) or none.
    async fn create_entries(&self, user_id: UserId, entries: &[Entry]) -> StoreResult<()>;

    async fn get_entry(&self, id: EntryId) -> StoreResult<Entry>;

    /// One page of a user's entries in the query's order, after its cursor.
    async fn list_entries(&self, query: &ListQuery) -> StoreResult<Vec<Entry>>;

    /// Every entry of a user in the range, oldest first, as a stream: a
    /// summary of any number of entries needs constant memory.
    fn entries_in_range(
        &self,
        user_id: UserId,
        range: DateRange,
    ) -> BoxStream<'_, StoreResult<Entry>>;

    async fn update_entry(
        &self,
        id: EntryId,
        patch: &EntryPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Entry>;

    async fn delete_entry(&self, id: EntryId) -> StoreResult<()>;

    /// Commits a tombstone that refuses new entries for the user from now
    /// on: it waits for the creates in flight for that user, and every
    /// later create sees it. Idempotent. The first step of a purge.
    async fn leave_tombstone(&self, user_id: UserId, now: DateTime<Utc>) -> StoreResult<()>;

    /// Deletes up to `limit` entries of a tombstoned user in one committed
    /// transaction, adding them to the tombstone's running total; when no
    /// more than `limit` are left, all of them, and says the purge is complete.
    async fn delete_entries_batch(&self, user_id: UserId, limit: u32) -> StoreResult<BatchDeleted>;

    async fn is_purged(&self, user_id: UserId) -> StoreResult<bool>;

    /// Owners of entries after `after`, in id order, with their entry
    /// counts: one page of the orphan audit.
    async fn entry_owners(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> StoreResult<Vec<(UserId, u64)>>;

    /// Whether the database answers now (readiness).
    async fn ping(&self) -> StoreResult<()>;

    /// Connections of the pool: all of them, and those idle.
    fn pool_connections(&self) -> (u32, usize);

    /// The key `name` shared by every replica on this database (page
    /// tokens, the login throttle), created with `candidate` if there is none.
    async fn signing_key(&self, name: &str, candidate: &[u8]) -> StoreResult<Vec<u8>>;
}

/// Opens (and migrates) the store a `HEFT_ENTRIES_DATABASE_URL` names.
pub async fn open(url: &str) -> anyhow::Result<Arc<dyn EntryStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresEntryStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteEntryStore::connect(url).await?))
    } else {
        anyhow::bail!("unsupported database url: expected postgres:// or sqlite://")
    }
}
