//! SQLite backend: the embedded default. One writer at a time (WAL mode).
//!
//! Serialising creates against purges: both run in `BEGIN IMMEDIATE`
//! transactions, which take SQLite's single write lock before reading, so the
//! tombstone check and the insert of a create cannot interleave with a purge.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use heft_service::db::Timestamp;
use sqlx::{QueryBuilder, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use heft_service::changes::{ChangePage, ChangePosition};

use super::{
    BatchDeleted, EntryChangeRow, EntryRow, EntryStore, FEED, StoreError, StoreResult,
    change_columns, entry_columns, into_change_page, into_entries, unit_code,
};
use crate::domain::{
    ChangeQuery, Entry, EntryId, EntryPatch, IdempotencyKey, ListQuery, Note, RecordedOn,
    SortOrder, TimedChange, UserId, Weight,
};

#[derive(Debug, Clone)]
pub struct SqliteEntryStore {
    pool: SqlitePool,
}

impl SqliteEntryStore {
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Begins a transaction that holds the database's write lock.
    async fn write_transaction(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

#[async_trait]
impl EntryStore for SqliteEntryStore {
    async fn create_entry(
        &self,
        entry: &Entry,
        request_id: Option<IdempotencyKey>,
    ) -> StoreResult<Entry> {
        let mut tx = self.write_transaction().await?;
        let inserted = sqlx::query_as::<_, EntryRow>(concat!(
            "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, request_id, create_time, update_time)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $8
             WHERE NOT EXISTS (SELECT 1 FROM purged_users WHERE user_id = $2)
             ON CONFLICT (user_id, request_id) DO NOTHING
             RETURNING ",
            entry_columns!()
        ))
        .bind(entry.id.0)
        .bind(entry.user_id.0)
        .bind(entry.weight.value())
        .bind(unit_code(entry.weight.unit()))
        .bind(entry.recorded_on.date())
        .bind(entry.note.as_str())
        .bind(request_id.map(|r| r.0))
        .bind(Timestamp(entry.create_time))
        .fetch_optional(&mut *tx)
        .await
        ?;
        let created = match inserted {
            Some(row) => row,
            None => {
                // Either the user is purged, or this request already ran.
                let earlier = match request_id {
                    Some(request_id) => {
                        sqlx::query_as::<_, EntryRow>(concat!(
                            "SELECT ",
                            entry_columns!(),
                            " FROM entries WHERE user_id = $1 AND request_id = $2"
                        ))
                        .bind(entry.user_id.0)
                        .bind(request_id.0)
                        .fetch_optional(&mut *tx)
                        .await?
                    }
                    None => None,
                };
                earlier.ok_or(StoreError::UserPurged)?
            }
        };
        tx.commit().await?;
        created.try_into()
    }

    async fn create_entries(&self, user_id: UserId, entries: &[Entry]) -> StoreResult<()> {
        let mut tx = self.write_transaction().await?;
        let purged: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM purged_users WHERE user_id = $1)")
                .bind(user_id.0)
                .fetch_one(&mut *tx)
                .await?;
        if purged {
            return Err(StoreError::UserPurged);
        }
        // Multi-row INSERTs, well under SQLite's limit of bound parameters.
        for chunk in entries.chunks(1_000) {
            let mut sql = QueryBuilder::<Sqlite>::new(
                "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time) ",
            );
            sql.push_values(chunk, |mut row, entry| {
                row.push_bind(entry.id.0)
                    .push_bind(user_id.0)
                    .push_bind(entry.weight.value())
                    .push_bind(unit_code(entry.weight.unit()))
                    .push_bind(entry.recorded_on.date())
                    .push_bind(entry.note.as_str())
                    .push_bind(Timestamp(entry.create_time))
                    .push_bind(Timestamp(entry.create_time));
            });
            sql.build().execute(&mut *tx).await?;
        }
        Ok(tx.commit().await?)
    }

    async fn get_entry(&self, id: EntryId) -> StoreResult<Entry> {
        sqlx::query_as::<_, EntryRow>(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM entries WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
    }

    async fn list_entries(&self, query: &ListQuery) -> StoreResult<Vec<Entry>> {
        let (compare, direction) = match query.order {
            SortOrder::Ascending => (">", "ASC"),
            SortOrder::Descending => ("<", "DESC"),
        };
        let mut sql = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM entries WHERE user_id = "
        ));
        sql.push_bind(query.user_id.0);
        if let Some(start) = query.range.start {
            sql.push(" AND recorded_on >= ").push_bind(start);
        }
        if let Some(end) = query.range.end {
            sql.push(" AND recorded_on <= ").push_bind(end);
        }
        if let Some(cursor) = query.after {
            // Row comparison: the index on (user_id, recorded_on, create_time, id)
            // serves it as a range.
            sql.push(format_args!(
                " AND (recorded_on, create_time, id) {compare} ("
            ))
            .push_bind(cursor.recorded_on)
            .push(", ")
            .push_bind(cursor.create_time_micros)
            .push(", ")
            .push_bind(cursor.id.0)
            .push(")");
        }
        sql.push(format_args!(
            " ORDER BY recorded_on {direction}, create_time {direction}, id {direction} LIMIT "
        ))
        .push_bind(i64::from(query.limit));
        let rows = sql
            .build_query_as::<EntryRow>()
            .fetch_all(&self.pool)
            .await?;
        into_entries(rows)
    }

    async fn update_entry(
        &self,
        id: EntryId,
        patch: &EntryPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Entry> {
        sqlx::query_as::<_, EntryRow>(concat!(
            "UPDATE entries SET
                value = COALESCE($2, value),
                unit = COALESCE($3, unit),
                recorded_on = COALESCE($4, recorded_on),
                note = COALESCE($5, note),
                update_time = $6
             WHERE id = $1
             RETURNING ",
            entry_columns!()
        ))
        .bind(id.0)
        .bind(patch.weight.map(Weight::value))
        .bind(patch.weight.map(|w| unit_code(w.unit())))
        .bind(patch.recorded_on.map(RecordedOn::date))
        .bind(patch.note.as_ref().map(Note::as_str))
        .bind(Timestamp(now))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
    }

    async fn delete_entry(&self, id: EntryId) -> StoreResult<()> {
        let deleted = sqlx::query("DELETE FROM entries WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn leave_tombstone(&self, user_id: UserId, now: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.write_transaction().await?;
        sqlx::query("INSERT INTO purged_users (user_id, purged_at) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING")
            .bind(user_id.0)
            .bind(Timestamp(now))
            .execute(&mut *tx)
            .await
            ?;
        Ok(tx.commit().await?)
    }

    async fn delete_entries_batch(&self, user_id: UserId, limit: u32) -> StoreResult<BatchDeleted> {
        // SQLite has one writer at a time, and removes deleted rows from its
        // indexes at once: a batch short of `limit` left nothing behind.
        let mut tx = self.write_transaction().await?;
        let deleted = sqlx::query(
            "DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries WHERE user_id = $1 LIMIT $2)",
        )
        .bind(user_id.0)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await
        ?
        .rows_affected();
        // The user's earlier changes go too, twice as many per batch (an
        // entry has one or two, as a rule); the USER_PURGED change stays.
        let changes_limit = 2 * u64::from(limit);
        let changes_removed = sqlx::query(
            "DELETE FROM entry_changes WHERE seq IN (
                SELECT seq FROM entry_changes WHERE user_id = $1 AND change_type <> 3 LIMIT $2)",
        )
        .bind(user_id.0)
        .bind(i64::try_from(changes_limit).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let total: i64 = sqlx::query_scalar(
            "UPDATE purged_users SET deleted_count = deleted_count + $2 WHERE user_id = $1
             RETURNING deleted_count",
        )
        .bind(user_id.0)
        .bind(i64::try_from(deleted).unwrap_or(i64::MAX))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotPurged)?;
        let complete = deleted < u64::from(limit) && changes_removed < changes_limit;
        if complete {
            // The user's one USER_PURGED change, after every earlier one.
            let first = sqlx::query(
                "UPDATE purged_users SET change_recorded = 1 WHERE user_id = $1 AND NOT change_recorded",
            )
            .bind(user_id.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if first == 1 {
                sqlx::query(
                    "INSERT INTO entry_changes (change_type, user_id, change_time) VALUES (3, $1, $2)",
                )
                .bind(user_id.0)
                .bind(Timestamp(heft_service::time::now()))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(BatchDeleted {
            deleted,
            total: u64::try_from(total).unwrap_or(0),
            complete,
        })
    }

    async fn list_entry_changes(
        &self,
        query: &ChangeQuery,
    ) -> StoreResult<ChangePage<TimedChange>> {
        // One writer at a time: changes commit in the order of their seq.
        let mut sql = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT 0 AS xid, ",
            change_columns!(),
            " FROM entry_changes WHERE "
        ));
        if let Some(user_id) = query.user_id {
            sql.push("user_id = ").push_bind(user_id.0).push(" AND ");
        }
        sql.push("seq > ")
            .push_bind(query.after.seq)
            .push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql
            .build_query_as::<EntryChangeRow>()
            .fetch_all(&self.pool)
            .await?;
        into_change_page(rows, query.limit, query.after)
    }

    async fn entry_changes_head(&self) -> StoreResult<ChangePosition> {
        Ok(FEED.sqlite_head(&self.pool).await?)
    }

    async fn remove_entry_changes_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        Ok(FEED
            .remove_expired_sqlite(&self.pool, before, limit)
            .await?)
    }

    async fn is_purged(&self, user_id: UserId) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM purged_users WHERE user_id = $1)")
                .bind(user_id.0)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn entry_owners(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> StoreResult<Vec<(UserId, u64)>> {
        // Keyset over the (user_id, …) index: constant memory whatever the size.
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT user_id, count(*) FROM entries
             WHERE $1 IS NULL OR user_id > $1
             GROUP BY user_id ORDER BY user_id LIMIT $2",
        )
        .bind(after.map(|id| id.0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, count)| (UserId(id), u64::try_from(count).unwrap_or(0)))
            .collect())
    }
}
