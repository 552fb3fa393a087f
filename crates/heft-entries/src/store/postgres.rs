//! PostgreSQL backend: the production store.
//!
//! Serialising creates against purges, two ways:
//!
//! - `CreateEntry`, the hot path, is one statement: it takes a share lock on
//!   its user's row in `entry_owners` (`FOR SHARE … WHERE NOT purged`) and
//!   inserts only if it got it. The purge's tombstone sets `purged` on that
//!   row, which needs the exclusive row lock: it waits for the creates in
//!   flight (their entries are then deleted by its batches), and a create
//!   that waited on the purge re-checks `NOT purged` on the row's new version
//!   (READ COMMITTED re-evaluates a locked row's condition) and inserts
//!   nothing.
//! - Everything else that adds entries (a user's first entry, a repeated
//!   request id, batches) takes `pg_advisory_xact_lock_shared(key(user))`,
//!   the purge the exclusive `pg_advisory_xact_lock(key(user))`, and checks
//!   the tombstone in a statement after the lock is held, so under READ
//!   COMMITTED it sees a purge that committed while it waited.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::FutureExt;
use heft_service::db::warm::WarmConnections;
use sqlx::{PgPool, Postgres, QueryBuilder, Transaction};
use uuid::Uuid;

use heft_service::changes::{ChangePage, ChangePosition, postgres_horizon};

use super::{
    BatchDeleted, EntryChangeRow, EntryRow, EntryStore, FEED, StoreError, StoreResult,
    change_columns, entry_columns, into_change_page, into_entries, unit_code,
};
use crate::domain::{
    ChangeQuery, Entry, EntryId, EntryPatch, IdempotencyKey, ListQuery, Note, RecordedOn,
    SortOrder, TimedChange, UserId, Weight,
};

#[derive(Debug, Clone)]
pub struct PostgresEntryStore {
    pool: PgPool,
    /// Connections for the hot single statements (create, get, list).
    warm: Arc<WarmConnections>,
}

/// Hot statements at once, each on a connection kept warm, of the pool's 16:
/// the rest serve transactions.
const WARM_CONNECTIONS: usize = 12;

impl PostgresEntryStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            warm: Arc::new(WarmConnections::new(pool.clone(), WARM_CONNECTIONS)),
            pool,
        }
    }

    /// Begins a transaction holding the user's advisory lock: shared for
    /// writers of entries, exclusive for the purge.
    async fn lock_user(
        &self,
        user_id: UserId,
        exclusive: bool,
    ) -> StoreResult<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        let statement = if exclusive {
            "SELECT pg_advisory_xact_lock($1)"
        } else {
            "SELECT pg_advisory_xact_lock_shared($1)"
        };
        sqlx::query(statement)
            .bind(lock_key(user_id))
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// The statement that records an UPSERTED change for each row of the CTE
/// `$rows` (`RETURNING entry_columns!()`): a write and its change are one
/// statement.
macro_rules! record_upserts {
    ($rows:literal) => {
        concat!(
            "INSERT INTO entry_changes (change_type, entry_id, user_id, value, unit, recorded_on, note, create_time, update_time)
             SELECT 1, id, user_id, value, unit, recorded_on, note, create_time, update_time FROM ",
            $rows
        )
    };
}

/// An INSERT of one entry whose parameters are $1 id, $2 user, $3 value,
/// $4 unit, $5 day, $6 note, $7 request id, $8 creation time.
/// Nothing in it changes a value, so the row stored is `entry` as built:
/// it returns no columns.
fn insert_entry(
    sql: &'static str,
    entry: &Entry,
    request_id: Option<IdempotencyKey>,
) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(entry.id.0)
        .bind(entry.user_id.0)
        .bind(entry.weight.value())
        .bind(unit_code(entry.weight.unit()))
        .bind(entry.recorded_on.date())
        .bind(entry.note.as_str().to_owned())
        .bind(request_id.map(|r| r.0))
        .bind(entry.create_time)
}

/// Records that the user owns entries, so that its next creates take the
/// one-statement path. Under the user's shared advisory lock: a purge cannot
/// be between its tombstone and this.
async fn register_owner(
    tx: &mut Transaction<'static, Postgres>,
    user_id: UserId,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO entry_owners (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(user_id.0)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Advisory-lock key of a user. Two users sharing a key only serialise
/// more than needed.
fn lock_key(user_id: UserId) -> i64 {
    let (high, low) = user_id.0.as_u64_pair();
    (high ^ low) as i64
}

/// Appends the statement of one page of `query` to `sql`, its values bound;
/// the plan tests append it to an `EXPLAIN` (`tests/plans.rs`).
pub fn push_list_statement(sql: &mut QueryBuilder<Postgres>, query: &ListQuery) {
    let (compare, direction) = match query.order {
        SortOrder::Ascending => (">", "ASC"),
        SortOrder::Descending => ("<", "DESC"),
    };
    sql.push(concat!(
        "SELECT ",
        entry_columns!(),
        " FROM entries WHERE user_id = "
    ))
    .push_bind(query.user_id.0);
    if let Some(start) = query.range.start {
        sql.push(" AND recorded_on >= ").push_bind(start);
    }
    if let Some(end) = query.range.end {
        sql.push(" AND recorded_on <= ").push_bind(end);
    }
    if let Some(cursor) = query.after {
        // Row comparison: the index on (user_id, recorded_on, create_time, id)
        // seeks straight to the cursor.
        sql.push(format_args!(
            " AND (recorded_on, create_time, id) {compare} ("
        ))
        .push_bind(cursor.recorded_on)
        .push(", ")
        .push_bind(heft_service::time::from_micros(cursor.create_time_micros))
        .push(", ")
        .push_bind(cursor.id.0)
        .push(")");
    }
    // The limit is written into the statement, not bound: with `LIMIT $n`
    // PostgreSQL's generic plan guesses a tenth of the user's rows, so it
    // plans every execution afresh (about a third of the statement's
    // cost). `limit` is a validated page size, and the few sizes callers
    // use stay in sqlx's per-connection statement cache.
    sql.push(format_args!(
        " ORDER BY recorded_on {direction}, create_time {direction}, id {direction} LIMIT {}",
        query.limit
    ));
}

/// Appends the statement of one page of the feed below `horizon` to `sql`,
/// its values bound; the plan tests append it to an `EXPLAIN`.
pub fn push_changes_statement(
    sql: &mut QueryBuilder<Postgres>,
    query: &ChangeQuery,
    horizon: ChangePosition,
) {
    sql.push(concat!(
        "SELECT xid::text::int8 AS xid, ",
        change_columns!(),
        " FROM entry_changes WHERE "
    ));
    if let Some(user_id) = query.user_id {
        sql.push("user_id = ").push_bind(user_id.0).push(" AND ");
    }
    // The limit is written in, as in the list statement (a bound LIMIT makes
    // the generic plan guess). The order names the table's column: the
    // output column `xid` is its text cast, which no index serves.
    sql.push("(xid, seq) > (")
        .push_bind(query.after.xid)
        .push("::text::xid8, ")
        .push_bind(query.after.seq)
        .push(") AND xid < ")
        .push_bind(horizon.xid)
        .push(format_args!(
            "::text::xid8 ORDER BY entry_changes.xid, seq LIMIT {}",
            query.limit
        ));
}

#[async_trait]
impl EntryStore for PostgresEntryStore {
    async fn create_entry(
        &self,
        entry: &Entry,
        request_id: Option<IdempotencyKey>,
    ) -> StoreResult<Entry> {
        // One round trip when the user already owns entries and is not purged.
        let insert = insert_entry(
            concat!(
                "WITH owner AS (
                    SELECT user_id FROM entry_owners WHERE user_id = $2 AND NOT purged FOR SHARE),
                 inserted AS (
                    INSERT INTO entries (id, user_id, value, unit, recorded_on, note, request_id, create_time, update_time)
                    SELECT $1, owner.user_id, $3, $4, $5, $6, $7, $8, $8 FROM owner
                    ON CONFLICT (user_id, request_id) DO NOTHING
                    RETURNING ",
                entry_columns!(),
                ") ",
                record_upserts!("inserted")
            ),
            entry,
            request_id,
        );
        let inserted = self
            .warm
            .run(move |connection| insert.execute(connection).boxed())
            .await?
            .rows_affected();
        if inserted == 1 {
            return Ok(entry.clone());
        }
        // A first entry, a request already served, or a purged user: the
        // serialised path decides which.
        let mut tx = self.lock_user(entry.user_id, false).await?;
        register_owner(&mut tx, entry.user_id).await?;
        let inserted = insert_entry(
            concat!(
                "WITH inserted AS (
                    INSERT INTO entries (id, user_id, value, unit, recorded_on, note, request_id, create_time, update_time)
                    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $8
                    WHERE NOT EXISTS (SELECT 1 FROM purged_users WHERE user_id = $2)
                    ON CONFLICT (user_id, request_id) DO NOTHING
                    RETURNING ",
                entry_columns!(),
                ") ",
                record_upserts!("inserted")
            ),
            entry,
            request_id,
        )
        .execute(&mut *tx)
        .await
        ?
        .rows_affected();
        let created = match inserted {
            1 => entry.clone(),
            _ => {
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
                earlier.ok_or(StoreError::UserPurged)?.try_into()?
            }
        };
        tx.commit().await?;
        Ok(created)
    }

    async fn create_entries(&self, user_id: UserId, entries: &[Entry]) -> StoreResult<()> {
        let mut tx = self.lock_user(user_id, false).await?;
        let purged: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM purged_users WHERE user_id = $1)")
                .bind(user_id.0)
                .fetch_one(&mut *tx)
                .await?;
        if purged {
            return Err(StoreError::UserPurged);
        }
        register_owner(&mut tx, user_id).await?;
        // One statement for the whole batch: arrays of columns, unnested.
        let ids: Vec<Uuid> = entries.iter().map(|e| e.id.0).collect();
        let values: Vec<f64> = entries.iter().map(|e| e.weight.value()).collect();
        let units: Vec<i16> = entries.iter().map(|e| unit_code(e.weight.unit())).collect();
        let days: Vec<NaiveDate> = entries.iter().map(|e| e.recorded_on.date()).collect();
        let notes: Vec<&str> = entries.iter().map(|e| e.note.as_str()).collect();
        let times: Vec<DateTime<Utc>> = entries.iter().map(|e| e.create_time).collect();
        sqlx::query(concat!(
            "WITH inserted AS (
                INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
                SELECT id, $2, value, unit, recorded_on, note, create_time, create_time
                FROM UNNEST($1::uuid[], $3::float8[], $4::int2[], $5::date[], $6::text[], $7::timestamptz[])
                    AS batch (id, value, unit, recorded_on, note, create_time)
                RETURNING ",
            entry_columns!(),
            ") ",
            record_upserts!("inserted")
        ))
        .bind(&ids)
        .bind(user_id.0)
        .bind(&values)
        .bind(&units)
        .bind(&days)
        .bind(&notes)
        .bind(&times)
        .execute(&mut *tx)
        .await
        ?;
        Ok(tx.commit().await?)
    }

    async fn get_entry(&self, id: EntryId) -> StoreResult<Entry> {
        let select = sqlx::query_as::<_, EntryRow>(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM entries WHERE id = $1"
        ))
        .bind(id.0);
        self.warm
            .run(move |connection| select.fetch_optional(connection).boxed())
            .await?
            .ok_or(StoreError::NotFound)?
            .try_into()
    }

    async fn list_entries(&self, query: &ListQuery) -> StoreResult<Vec<Entry>> {
        let mut sql = QueryBuilder::new("");
        push_list_statement(&mut sql, query);
        let rows = self
            .warm
            .run(move |connection| {
                async move { sql.build_query_as::<EntryRow>().fetch_all(connection).await }.boxed()
            })
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
            "WITH updated AS (
                UPDATE entries SET
                    value = COALESCE($2, value),
                    unit = COALESCE($3, unit),
                    recorded_on = COALESCE($4, recorded_on),
                    note = COALESCE($5, note),
                    update_time = $6
                WHERE id = $1
                RETURNING ",
            entry_columns!(),
            "), recorded AS (",
            record_upserts!("updated"),
            ") SELECT ",
            entry_columns!(),
            " FROM updated"
        ))
        .bind(id.0)
        .bind(patch.weight.map(Weight::value))
        .bind(patch.weight.map(|w| unit_code(w.unit())))
        .bind(patch.recorded_on.map(RecordedOn::date))
        .bind(patch.note.as_ref().map(Note::as_str))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
    }

    async fn delete_entry(&self, id: EntryId) -> StoreResult<()> {
        let deleted = sqlx::query(
            "WITH deleted AS (DELETE FROM entries WHERE id = $1 RETURNING id, user_id)
             INSERT INTO entry_changes (change_type, entry_id, user_id)
             SELECT 2, id, user_id FROM deleted",
        )
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn leave_tombstone(&self, user_id: UserId, now: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.lock_user(user_id, true).await?;
        sqlx::query("INSERT INTO purged_users (user_id, purged_at) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING")
            .bind(user_id.0)
            .bind(now)
        .execute(&mut *tx)
        .await?;
        // The exclusive row lock waits for every create holding a share lock.
        sqlx::query(
            "INSERT INTO entry_owners (user_id, purged) VALUES ($1, true)
             ON CONFLICT (user_id) DO UPDATE SET purged = true",
        )
        .bind(user_id.0)
        .execute(&mut *tx)
        .await?;
        Ok(tx.commit().await?)
    }

    async fn delete_entries_batch(&self, user_id: UserId, limit: u32) -> StoreResult<BatchDeleted> {
        // The batch is the function `purge_entries_batch` (migrations 0004
        // and 0005, whose headers explain how it deletes).
        let (deleted, total, complete) =
            sqlx::query_as::<_, (Option<i64>, Option<i64>, Option<bool>)>(
                "SELECT deleted, total, complete FROM purge_entries_batch($1, $2)",
            )
            .bind(user_id.0)
            .bind(i64::from(limit))
            .fetch_one(&self.pool)
            .await?;
        let (Some(deleted), Some(total), Some(complete)) = (deleted, total, complete) else {
            return Err(StoreError::NotPurged);
        };
        Ok(BatchDeleted {
            deleted: u64::try_from(deleted).unwrap_or(0),
            total: u64::try_from(total).unwrap_or(0),
            complete,
        })
    }

    async fn is_purged(&self, user_id: UserId) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM purged_users WHERE user_id = $1)")
                .bind(user_id.0)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn list_entry_changes(
        &self,
        query: &ChangeQuery,
    ) -> StoreResult<ChangePage<TimedChange>> {
        let mut connection = self.pool.acquire().await?;
        // Every transaction below the horizon has ended: no change can
        // still commit there, so the rows below it are final.
        let horizon = postgres_horizon(&mut *connection).await?;
        let mut sql = QueryBuilder::new("");
        push_changes_statement(&mut sql, query, horizon);
        let rows = sql
            .build_query_as::<EntryChangeRow>()
            .fetch_all(&mut *connection)
            .await?;
        into_change_page(rows, query.limit, horizon)
    }

    async fn entry_changes_head(&self) -> StoreResult<ChangePosition> {
        Ok(postgres_horizon(&self.pool).await?)
    }

    async fn remove_entry_changes_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        Ok(FEED
            .remove_expired_postgres(&self.pool, before, limit)
            .await?)
    }

    async fn entry_owners(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> StoreResult<Vec<(UserId, u64)>> {
        // Keyset over the (user_id, …) index: constant memory whatever the size.
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT user_id, count(*) FROM entries
             WHERE $1::uuid IS NULL OR user_id > $1
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
