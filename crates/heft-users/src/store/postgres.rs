//! PostgreSQL backend: the production store.

use async_trait::async_trait;
use std::time::Duration;

use chrono::{DateTime, Utc};
use heft_service::user_token::TokenSigningKey;
use sqlx::PgPool;
use uuid::Uuid;

use heft_service::changes::{ChangePage, ChangePosition, postgres_horizon};

use super::{
    CredentialsRow, FEED, JobRow, RecordRow, StoreError, StoreResult, StoredTokenKey, TokenKeyRow,
    UserChangeRow, UserRow, UserStore, change_columns, into_change_page, record_columns, rows_into,
    state_column, unit_code, user_columns,
};
use crate::domain::{
    Credentials, Email, HashReplacement, LoginAttempt, LoginThrottle, PurgeJob, PurgeJobQuery,
    PurgeQueueStats, PurgeRecord, ThrottleKey, User, UserChange, UserId, UserName, UserPatch,
};
use heft_service::time;

#[derive(Debug, Clone)]
pub struct PostgresUserStore {
    pool: PgPool,
}

impl PostgresUserStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl UserStore for PostgresUserStore {
    async fn create_user(&self, new: &Credentials) -> StoreResult<()> {
        let user = &new.user;
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, weight_unit, create_time, update_time)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(user.id.0)
        .bind(user.email.as_str())
        .bind(user.name.as_str())
        .bind(&new.password_hash)
        .bind(unit_code(user.weight_unit))
        .bind(user.create_time)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_write_of_email)?;
        Ok(())
    }

    async fn get_user(&self, id: UserId) -> StoreResult<User> {
        sqlx::query_as::<_, UserRow>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
    }

    async fn list_users(&self, after: Option<UserId>, limit: u32) -> StoreResult<Vec<User>> {
        rows_into(
            sqlx::query_as::<_, UserRow>(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2"
            ))
            .bind(after.map(|id| id.0))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?,
        )
    }

    async fn update_user(
        &self,
        id: UserId,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<User> {
        sqlx::query_as::<_, UserRow>(concat!(
            "UPDATE users SET
                email = COALESCE($2, email),
                name = COALESCE($3, name),
                weight_unit = COALESCE($4, weight_unit),
                update_time = $5
             WHERE id = $1
             RETURNING ",
            user_columns!()
        ))
        .bind(id.0)
        .bind(patch.email.as_ref().map(Email::as_str))
        .bind(patch.name.as_ref().map(UserName::as_str))
        .bind(patch.weight_unit.map(unit_code))
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from_write_of_email)?
        .ok_or(StoreError::NotFound)?
        .try_into()
    }

    async fn find_credentials(&self, email: &Email) -> StoreResult<Option<Credentials>> {
        sqlx::query_as::<_, CredentialsRow>(concat!(
            "SELECT ",
            user_columns!(),
            ", password_hash FROM users WHERE lower(email) = $1"
        ))
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(Credentials::try_from)
        .transpose()
    }

    async fn credentials(&self, id: UserId) -> StoreResult<Credentials> {
        sqlx::query_as::<_, CredentialsRow>(concat!(
            "SELECT ",
            user_columns!(),
            ", password_hash FROM users WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
    }

    async fn replace_password_hash(&self, change: &HashReplacement<'_>) -> StoreResult<bool> {
        let updated = sqlx::query(
            "UPDATE users SET password_hash = $3, update_time = $4,
                password_change_time = CASE WHEN $5 THEN $4 ELSE password_change_time END
             WHERE id = $1 AND password_hash = $2",
        )
        .bind(change.id.0)
        .bind(change.expected)
        .bind(change.new_hash)
        .bind(change.now)
        .bind(change.new_password)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn password_change_time(&self, id: UserId) -> StoreResult<Option<DateTime<Utc>>> {
        let row: Option<(Option<DateTime<Utc>>,)> =
            sqlx::query_as("SELECT password_change_time FROM users WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
        let (time,) = row.ok_or(StoreError::NotFound)?;
        Ok(time)
    }

    async fn token_keys(&self) -> StoreResult<Vec<StoredTokenKey>> {
        let rows: Vec<TokenKeyRow> = sqlx::query_as(
            "SELECT kid, private_key, create_time FROM token_keys ORDER BY create_time DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows_into(rows)
    }

    async fn add_token_key(&self, key: &TokenSigningKey, now: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO token_keys (kid, private_key, public_key, create_time) VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.kid)
        .bind(&key.seed()[..])
        .bind(&key.public().x[..])
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn begin_login_attempt(
        &self,
        key: &ThrottleKey,
        throttle: LoginThrottle,
    ) -> StoreResult<LoginAttempt> {
        // One statement, so concurrent attempts serialise on the row: a new
        // window starts when the old one is over, otherwise the count grows
        // only while it is under the limit.
        let window = throttle.window.as_seconds_f64();
        let taken: Option<i32> = sqlx::query_scalar(
            "INSERT INTO login_throttle AS t (email_key, window_start, failures) VALUES ($1, now(), 1)
             ON CONFLICT (email_key) DO UPDATE SET
                window_start = CASE WHEN t.window_start <= now() - make_interval(secs => $2)
                    THEN now() ELSE t.window_start END,
                failures = CASE WHEN t.window_start <= now() - make_interval(secs => $2)
                    THEN 1 ELSE t.failures + 1 END
             WHERE t.window_start <= now() - make_interval(secs => $2) OR t.failures < $3
             RETURNING failures",
        )
        .bind(&key.0[..])
        .bind(window)
        .bind(i32::try_from(throttle.max_failures).unwrap_or(i32::MAX))
        .fetch_optional(&self.pool)
        .await?;
        if taken.is_some() {
            return Ok(LoginAttempt::Allowed);
        }
        // A success may have cleared the row since: refused for now, free to retry.
        let left: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM window_start + make_interval(secs => $2) - now())::float8
             FROM login_throttle WHERE email_key = $1",
        )
        .bind(&key.0[..])
        .bind(window)
        .fetch_optional(&self.pool)
        .await?;
        Ok(LoginAttempt::Locked {
            retry_after: Duration::from_secs_f64(left.unwrap_or(0.0).max(0.0)),
        })
    }

    async fn clear_login_failures(&self, key: &ThrottleKey) -> StoreResult<()> {
        sqlx::query("DELETE FROM login_throttle WHERE email_key = $1")
            .bind(&key.0[..])
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn refund_login_attempt(&self, key: &ThrottleKey) -> StoreResult<()> {
        sqlx::query(
            "UPDATE login_throttle SET failures = failures - 1 WHERE email_key = $1 AND failures > 0",
        )
        .bind(&key.0[..])
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove_expired_login_throttles(
        &self,
        window: chrono::Duration,
        limit: u32,
    ) -> StoreResult<u64> {
        let removed = sqlx::query(
            "DELETE FROM login_throttle WHERE ctid IN (
                SELECT ctid FROM login_throttle
                WHERE window_start <= now() - make_interval(secs => $1) LIMIT $2)",
        )
        .bind(window.as_seconds_f64())
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(removed.rows_affected())
    }

    async fn delete_user(&self, id: UserId, job: &PurgeJob, lease: Duration) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "INSERT INTO purge_jobs (id, user_id, request_id, traceparent, state, attempts, next_attempt_at, created_at)
             VALUES ($1, $2, $3, $6, 'pending', $4, now() + make_interval(secs => $5), now())",
        )
        .bind(job.id)
        .bind(job.user_id.0)
        .bind(job.request_id.as_deref())
        .bind(job.attempts)
        .bind(lease.as_secs_f64())
        .bind(job.traceparent.as_deref())
        .execute(&mut *tx)
        .await?;
        Ok(tx.commit().await?)
    }

    async fn claim_due_purge_jobs(
        &self,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<PurgeJob>> {
        // SKIP LOCKED: replicas claiming at the same moment take disjoint
        // jobs instead of queueing on each other's row locks. Moving
        // next_attempt_at to the end of the lease keeps the job out of every
        // other claim until then. Times come from the database's clock, so
        // replicas whose clocks disagree still agree on every lease.
        let rows = sqlx::query_as::<_, JobRow>(
            "UPDATE purge_jobs SET next_attempt_at = now() + make_interval(secs => $1), attempts = attempts + 1
             WHERE id IN (
                SELECT id FROM purge_jobs
                WHERE state = 'pending' AND next_attempt_at <= now()
                ORDER BY next_attempt_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED)
             RETURNING id, user_id, request_id, traceparent, attempts",
        )
        .bind(lease.as_secs_f64())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(PurgeJob::from).collect())
    }

    async fn complete_purge_job(&self, job_id: Uuid, purged_entry_count: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE purge_jobs SET state = 'done', completed_at = now(), purged_entry_count = $2, last_error = NULL
             WHERE id = $1",
        )
        .bind(job_id)
        .bind(purged_entry_count)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn retry_purge_job(&self, job_id: Uuid, delay: Duration, error: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE purge_jobs SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(job_id)
        .bind(delay.as_secs_f64())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn purge_record(&self, user_id: UserId) -> StoreResult<PurgeRecord> {
        sqlx::query_as::<_, RecordRow>(concat!(
            "SELECT ",
            record_columns!(),
            " FROM purge_jobs WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(user_id.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::PurgeJobNotFound)?
        .try_into()
    }

    async fn list_purge_records(&self, query: &PurgeJobQuery) -> StoreResult<Vec<PurgeRecord>> {
        rows_into(
            sqlx::query_as::<_, RecordRow>(concat!(
                "SELECT ",
                record_columns!(),
                " FROM purge_jobs
             WHERE ($1::text IS NULL OR state = $1)
               AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
             ORDER BY created_at, id
             LIMIT $4"
            ))
            .bind(query.state.map(state_column))
            .bind(query.after.map(|c| time::from_micros(c.create_time_micros)))
            .bind(query.after.map(|c| c.job_id))
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await?,
        )
    }

    async fn purge_queue_stats(&self) -> StoreResult<PurgeQueueStats> {
        let (pending, purged, oldest_age_secs): (i64, i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'pending'),
                    count(*) FILTER (WHERE state = 'done'),
                    EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE state = 'pending'))::float8
             FROM purge_jobs",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(PurgeQueueStats {
            pending,
            purged,
            oldest_pending_age: oldest_age_secs.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
        })
    }

    async fn list_user_changes(
        &self,
        after: ChangePosition,
        limit: u32,
    ) -> StoreResult<ChangePage<UserChange>> {
        let mut connection = self.pool.acquire().await?;
        // Every transaction below the horizon has ended: no change can
        // still commit there, so the rows below it are final.
        let horizon = postgres_horizon(&mut *connection).await?;
        // The order names the table's column: the output column `xid` is
        // its text cast, which no index serves.
        let rows = sqlx::query_as::<_, UserChangeRow>(concat!(
            "SELECT xid::text::int8 AS xid, ",
            change_columns!(),
            " FROM user_changes
             WHERE (xid, seq) > ($1::text::xid8, $2) AND xid < $3::text::xid8
             ORDER BY user_changes.xid, seq LIMIT $4"
        ))
        .bind(after.xid)
        .bind(after.seq)
        .bind(horizon.xid)
        .bind(i64::from(limit))
        .fetch_all(&mut *connection)
        .await?;
        into_change_page(rows, limit, horizon)
    }

    async fn user_changes_head(&self) -> StoreResult<ChangePosition> {
        Ok(postgres_horizon(&self.pool).await?)
    }

    async fn remove_user_changes_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        Ok(FEED
            .remove_expired_postgres(&self.pool, before, limit)
            .await?)
    }
}
