//! Where entries live: one trait, one module per database.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use heft_service::trace::Traced;
use heft_service::{
    ErrorCode,
    changes::{self, ChangePage, ChangePosition, FeedTable},
    db::{Database, DbError, Migrations, Timestamp},
    error::{Layer, LayeredError},
};
use sqlx::{ColumnIndex, Decode, FromRow, Row, Type};
use uuid::Uuid;

use crate::domain::{
    ChangeQuery, Entry, EntryChange, EntryId, EntryPatch, IdempotencyKey, ListQuery, Note,
    RecordedOn, TimedChange, UserId, Weight, WeightUnit,
};

mod postgres;
mod sqlite;

pub use postgres::{PostgresEntryStore, push_changes_statement, push_list_statement};
pub use sqlite::SqliteEntryStore;

/// The entries schema, for each backend.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/entries/postgres"),
    sqlite: sqlx::migrate!("../../migrations/entries/sqlite"),
};

/// The store on an open database.
pub fn on(database: &Database) -> Arc<dyn EntryStore> {
    match database {
        Database::Postgres(pool) => Arc::new(Traced::new(
            PostgresEntryStore::new(pool.clone()),
            "postgresql",
        )),
        Database::Sqlite(pool) => {
            Arc::new(Traced::new(SqliteEntryStore::new(pool.clone()), "sqlite"))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("entry not found")]
    NotFound,
    #[error("the user has been deleted; no entries can be added")]
    UserPurged,
    #[error("entries are deleted in batches only after the user's tombstone")]
    NotPurged,
    #[error("entry {0}")]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Db(error.into())
    }
}

impl LayeredError for StoreError {
    fn layer(&self) -> Layer<'_> {
        match self {
            StoreError::NotFound => Layer::own(ErrorCode::NotFound, "ENTRY_NOT_FOUND"),
            StoreError::UserPurged => Layer::own(ErrorCode::FailedPrecondition, "USER_DELETED"),
            StoreError::NotPurged => Layer::own(ErrorCode::Internal, "NOT_PURGED"),
            StoreError::Db(db) => Layer::Inner(db),
        }
    }
}

heft_service::into_status!(StoreError);

pub type StoreResult<T> = Result<T, StoreError>;

// The row and its mapping to the domain serve both backends: the backend
// files hold only SQL and binds. The store trusts what it wrote (it was
// validated at the edge); only the unit code, which must name an enum
// value, is checked.

macro_rules! entry_columns {
    () => {
        "id, user_id, value, unit, recorded_on, note, create_time, update_time"
    };
}

pub(crate) use entry_columns;

/// A row of `entry_columns!()`.
pub struct EntryRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub value: f64,
    pub unit: i16,
    pub recorded_on: NaiveDate,
    pub note: String,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
}

/// By position, in the order of `entry_columns!()`: by name, sqlx looks
/// every column of every row up in a map, a tenth of a page's CPU on the
/// PostgreSQL hot path. Unchecked: the columns' types are the migrations'
/// own, and sqlx's check of each value's type against the Rust type (a
/// clone and compare of the type's description, per value) was another
/// twentieth; each decode still refuses bytes of the wrong size.
impl<'r, R> FromRow<'r, R> for EntryRow
where
    R: Row,
    usize: ColumnIndex<R>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
    i16: Decode<'r, R::Database> + Type<R::Database>,
    NaiveDate: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Timestamp: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        Ok(Self {
            id: row.try_get_unchecked(0)?,
            user_id: row.try_get_unchecked(1)?,
            value: row.try_get_unchecked(2)?,
            unit: row.try_get_unchecked(3)?,
            recorded_on: row.try_get_unchecked(4)?,
            note: row.try_get_unchecked(5)?,
            create_time: row.try_get_unchecked(6)?,
            update_time: row.try_get_unchecked(7)?,
        })
    }
}

impl TryFrom<EntryRow> for Entry {
    type Error = StoreError;

    fn try_from(row: EntryRow) -> StoreResult<Self> {
        let unit =
            WeightUnit::from_code(row.unit.into()).ok_or(DbError::Corrupt("entries.unit"))?;
        Ok(Entry {
            id: EntryId(row.id),
            user_id: UserId(row.user_id),
            weight: Weight::from_stored(row.value, unit),
            recorded_on: RecordedOn::from_stored(row.recorded_on),
            note: Note::from_stored(row.note),
            create_time: row.create_time.0,
            update_time: row.update_time.0,
        })
    }
}

/// How a unit is stored in `entries.unit` (codes 1 and 2).
fn unit_code(unit: WeightUnit) -> i16 {
    match unit {
        WeightUnit::Kilograms => 1,
        WeightUnit::Pounds => 2,
    }
}

fn into_entries(rows: Vec<EntryRow>) -> StoreResult<Vec<Entry>> {
    rows.into_iter().map(Entry::try_from).collect()
}

macro_rules! change_columns {
    () => {
        "seq, change_type, entry_id, user_id, value, unit, recorded_on, note, create_time, update_time, change_time"
    };
}

pub(crate) use change_columns;

/// A row of `entry_changes`: `xid` (0 on SQLite), then `change_columns!()`.
#[derive(sqlx::FromRow)]
pub struct EntryChangeRow {
    xid: i64,
    seq: i64,
    change_type: i16,
    entry_id: Option<Uuid>,
    user_id: Uuid,
    value: Option<f64>,
    unit: Option<i16>,
    recorded_on: Option<NaiveDate>,
    note: Option<String>,
    create_time: Option<Timestamp>,
    update_time: Option<Timestamp>,
    change_time: Timestamp,
}

impl EntryChangeRow {
    fn position(&self) -> ChangePosition {
        ChangePosition {
            xid: self.xid,
            seq: self.seq,
        }
    }
}

impl TryFrom<EntryChangeRow> for TimedChange {
    type Error = StoreError;

    fn try_from(row: EntryChangeRow) -> StoreResult<Self> {
        const CORRUPT: DbError = DbError::Corrupt("entry_changes");
        let user_id = UserId(row.user_id);
        let change = match (row.change_type, row.entry_id) {
            (1, Some(id)) => {
                let (
                    Some(value),
                    Some(unit),
                    Some(recorded_on),
                    Some(note),
                    Some(created),
                    Some(updated),
                ) = (
                    row.value,
                    row.unit,
                    row.recorded_on,
                    row.note,
                    row.create_time,
                    row.update_time,
                )
                else {
                    return Err(CORRUPT.into());
                };
                EntryChange::Upserted(Entry::try_from(EntryRow {
                    id,
                    user_id: row.user_id,
                    value,
                    unit,
                    recorded_on,
                    note,
                    create_time: created,
                    update_time: updated,
                })?)
            }
            (2, Some(id)) => EntryChange::Deleted {
                entry_id: EntryId(id),
                user_id,
            },
            (3, _) => EntryChange::UserPurged { user_id },
            _ => return Err(CORRUPT.into()),
        };
        Ok(TimedChange {
            change,
            time: row.change_time.0,
        })
    }
}

/// The feed's statements that read alike on both backends.
const FEED: FeedTable = heft_service::feed_table!("entry_changes");

fn into_change_page(
    rows: Vec<EntryChangeRow>,
    limit: u32,
    horizon: ChangePosition,
) -> StoreResult<ChangePage<TimedChange>> {
    changes::page_of(rows, limit, horizon, EntryChangeRow::position, |row| {
        let change = TimedChange::try_from(row)?;
        let time = change.time;
        Ok((change, time))
    })
}

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

// Every store operation is also a span for the trace exporter.
heft_service::traced_store_trait! {
    pub trait EntryStore {
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

        /// Inserts all of `entries` (one user's) or none.
        async fn create_entries(&self, user_id: UserId, entries: &[Entry]) -> StoreResult<()>;

        async fn get_entry(&self, id: EntryId) -> StoreResult<Entry>;

        /// One page of a user's entries in the query's order, after its cursor.
        async fn list_entries(&self, query: &ListQuery) -> StoreResult<Vec<Entry>>;

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

        /// Up to `query.limit` changes after `query.after`, oldest first,
        /// and where the next page starts.
        async fn list_entry_changes(
            &self,
            query: &ChangeQuery,
        ) -> StoreResult<ChangePage<TimedChange>>;

        /// Where a reader starting now begins: every change committed from
        /// now on comes after it.
        async fn entry_changes_head(&self) -> StoreResult<ChangePosition>;

        /// Removes up to `limit` of the oldest changes if written before
        /// `before`; how many it removed.
        async fn remove_entry_changes_before(
            &self,
            before: DateTime<Utc>,
            limit: u32,
        ) -> StoreResult<u64>;

        /// Owners of entries after `after`, in id order, with their entry
        /// counts: one page of the orphan audit.
        async fn entry_owners(
            &self,
            after: Option<UserId>,
            limit: u32,
        ) -> StoreResult<Vec<(UserId, u64)>>;
    }
}
