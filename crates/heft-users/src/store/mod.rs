//! Where users live: one trait, one module per database.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use heft_service::trace::Traced;
use heft_service::{
    ErrorCode,
    changes::{self, ChangePage, ChangePosition, FeedTable},
    db::{Database, DbError, Migrations, Timestamp},
    error::{Layer, LayeredError},
    user_token::TokenSigningKey,
};
use uuid::Uuid;

use crate::domain::{
    Credentials, Email, HashReplacement, LoginAttempt, LoginThrottle, PurgeJob, PurgeJobQuery,
    PurgeQueueStats, PurgeRecord, PurgeState, ThrottleKey, User, UserChange, UserChangeKind,
    UserId, UserName, UserPatch, WeightUnit,
};

mod postgres;
mod sqlite;

pub use postgres::PostgresUserStore;
pub use sqlite::SqliteUserStore;

/// The users schema, for each backend.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/users/postgres"),
    sqlite: sqlx::migrate!("../../migrations/users/sqlite"),
};

/// The store on an open database.
pub fn on(database: &Database) -> Arc<dyn UserStore> {
    match database {
        Database::Postgres(pool) => Arc::new(Traced::new(
            PostgresUserStore::new(pool.clone()),
            "postgresql",
        )),
        Database::Sqlite(pool) => {
            Arc::new(Traced::new(SqliteUserStore::new(pool.clone()), "sqlite"))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user not found")]
    NotFound,
    #[error("no purge job for this user: it was never deleted")]
    PurgeJobNotFound,
    #[error("a user with this email already exists")]
    EmailTaken,
    #[error("user {0}")]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Db(error.into())
    }
}

impl StoreError {
    /// For statements that write an email: the unique index on it means
    /// another account has that email; any other violation is a bug.
    fn from_write_of_email(error: sqlx::Error) -> Self {
        if heft_service::db::violates_unique(&error, EMAIL_UNIQUE_INDEX, "users.email") {
            StoreError::EmailTaken
        } else {
            error.into()
        }
    }
}

/// The unique index on users' emails (see the migrations).
const EMAIL_UNIQUE_INDEX: &str = "users_email_key";

impl LayeredError for StoreError {
    fn layer(&self) -> Layer<'_> {
        match self {
            StoreError::NotFound => Layer::own(ErrorCode::NotFound, "USER_NOT_FOUND"),
            StoreError::PurgeJobNotFound => Layer::own(ErrorCode::NotFound, "PURGE_JOB_NOT_FOUND"),
            StoreError::EmailTaken => Layer::own(ErrorCode::AlreadyExists, "EMAIL_TAKEN"),
            StoreError::Db(db) => Layer::Inner(db),
        }
    }
}

heft_service::into_status!(StoreError);

pub type StoreResult<T> = Result<T, StoreError>;

// The rows, and how they map to the domain, serve both backends: the
// backend files hold only SQL and binds. What the store wrote it trusts on
// the way back (it was validated at the edge); only codes that must name
// an enum value are checked.

macro_rules! user_columns {
    () => {
        "id, email, name, weight_unit, create_time, update_time"
    };
}

macro_rules! record_columns {
    () => {
        "id, user_id, state, attempts, last_error, purged_entry_count, created_at, completed_at, next_attempt_at"
    };
}

pub(crate) use {record_columns, user_columns};

/// A row of `user_columns!()`.
#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    name: String,
    weight_unit: i16,
    create_time: Timestamp,
    update_time: Timestamp,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;

    fn try_from(row: UserRow) -> StoreResult<Self> {
        Ok(User {
            id: UserId(row.id),
            email: Email::from_stored(row.email),
            name: UserName::from_stored(row.name),
            weight_unit: WeightUnit::from_code(row.weight_unit.into())
                .ok_or(DbError::Corrupt("users.weight_unit"))?,
            create_time: row.create_time.0,
            update_time: row.update_time.0,
        })
    }
}

macro_rules! change_columns {
    () => {
        "seq, change_type, user_id, email, name, weight_unit, create_time, update_time, change_time"
    };
}

pub(crate) use change_columns;

/// A row of `user_changes`: `xid` (0 on SQLite), then `change_columns!()`.
#[derive(sqlx::FromRow)]
struct UserChangeRow {
    xid: i64,
    seq: i64,
    change_type: i16,
    user_id: Uuid,
    email: Option<String>,
    name: Option<String>,
    weight_unit: Option<i16>,
    create_time: Option<Timestamp>,
    update_time: Option<Timestamp>,
    change_time: Timestamp,
}

impl TryFrom<UserChangeRow> for UserChange {
    type Error = StoreError;

    fn try_from(row: UserChangeRow) -> StoreResult<Self> {
        let user = || -> StoreResult<User> {
            let (Some(email), Some(name), Some(weight_unit), Some(create_time), Some(update_time)) = (
                row.email.clone(),
                row.name.clone(),
                row.weight_unit,
                row.create_time,
                row.update_time,
            ) else {
                return Err(DbError::Corrupt("user_changes").into());
            };
            User::try_from(UserRow {
                id: row.user_id,
                email,
                name,
                weight_unit,
                create_time,
                update_time,
            })
        };
        let kind = match row.change_type {
            1 => UserChangeKind::Created(user()?),
            2 => UserChangeKind::Updated(user()?),
            3 => UserChangeKind::Deleted(UserId(row.user_id)),
            _ => return Err(DbError::Corrupt("user_changes.change_type").into()),
        };
        Ok(UserChange {
            kind,
            time: row.change_time.0,
        })
    }
}

/// The feed's statements that read alike on both backends.
const FEED: FeedTable = heft_service::feed_table!("user_changes");

fn into_change_page(
    rows: Vec<UserChangeRow>,
    limit: u32,
    horizon: ChangePosition,
) -> StoreResult<ChangePage<UserChange>> {
    changes::page_of(
        rows,
        limit,
        horizon,
        |row| ChangePosition {
            xid: row.xid,
            seq: row.seq,
        },
        |row| {
            let change = UserChange::try_from(row)?;
            let time = change.time;
            Ok((change, time))
        },
    )
}

/// A row of `user_columns!()` and `password_hash`.
#[derive(sqlx::FromRow)]
struct CredentialsRow {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: String,
}

impl TryFrom<CredentialsRow> for Credentials {
    type Error = StoreError;

    fn try_from(row: CredentialsRow) -> StoreResult<Self> {
        Ok(Credentials {
            user: row.user.try_into()?,
            password_hash: row.password_hash,
        })
    }
}

/// A claimed job: `id, user_id, request_id, traceparent, attempts`.
#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    user_id: Uuid,
    request_id: Option<String>,
    traceparent: Option<String>,
    attempts: i32,
}

impl From<JobRow> for PurgeJob {
    fn from(row: JobRow) -> Self {
        PurgeJob {
            id: row.id,
            user_id: UserId(row.user_id),
            request_id: row.request_id,
            traceparent: row.traceparent,
            attempts: row.attempts,
        }
    }
}

/// A row of `record_columns!()`.
#[derive(sqlx::FromRow)]
struct RecordRow {
    id: Uuid,
    user_id: Uuid,
    state: String,
    attempts: i32,
    last_error: Option<String>,
    purged_entry_count: Option<i64>,
    created_at: Timestamp,
    completed_at: Option<Timestamp>,
    next_attempt_at: Timestamp,
}

impl TryFrom<RecordRow> for PurgeRecord {
    type Error = StoreError;

    fn try_from(row: RecordRow) -> StoreResult<Self> {
        let state = parse_state_column(&row.state)?;
        Ok(PurgeRecord {
            job_id: row.id,
            user_id: UserId(row.user_id),
            state,
            attempts: row.attempts,
            last_error: row.last_error,
            purged_entry_count: row.purged_entry_count,
            create_time: row.created_at.0,
            complete_time: row.completed_at.map(DateTime::from),
            next_attempt_time: (state == PurgeState::Pending).then_some(row.next_attempt_at.0),
        })
    }
}

/// A key that signs user tokens, and when it was made.
#[derive(Debug, Clone)]
pub struct StoredTokenKey {
    pub key: TokenSigningKey,
    pub create_time: DateTime<Utc>,
}

/// A row of `token_keys`.
#[derive(sqlx::FromRow)]
struct TokenKeyRow {
    kid: String,
    private_key: Vec<u8>,
    create_time: Timestamp,
}

impl TryFrom<TokenKeyRow> for StoredTokenKey {
    type Error = StoreError;

    fn try_from(row: TokenKeyRow) -> StoreResult<Self> {
        Ok(StoredTokenKey {
            key: TokenSigningKey::from_stored(row.kid, &row.private_key)
                .ok_or(DbError::Corrupt("token_keys.private_key"))?,
            create_time: row.create_time.0,
        })
    }
}

/// Each row mapped to the domain; the first that does not map fails all.
fn rows_into<R, T: TryFrom<R, Error = StoreError>>(rows: Vec<R>) -> StoreResult<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}

/// How a unit is stored in `users.weight_unit` (codes 1 and 2).
fn unit_code(unit: WeightUnit) -> i16 {
    match unit {
        WeightUnit::Kilograms => 1,
        WeightUnit::Pounds => 2,
    }
}

/// How a purge state is stored in `purge_jobs.state`.
fn state_column(state: PurgeState) -> &'static str {
    match state {
        PurgeState::Pending => "pending",
        PurgeState::Purged => "done",
    }
}

fn parse_state_column(value: &str) -> StoreResult<PurgeState> {
    match value {
        "pending" => Ok(PurgeState::Pending),
        "done" => Ok(PurgeState::Purged),
        _ => Err(DbError::Corrupt("purge_jobs.state").into()),
    }
}

// Every store operation is also a span for the trace exporter.
heft_service::traced_store_trait! {
    pub trait UserStore {
        /// `EmailTaken` if another user has the email.
        async fn create_user(&self, user: &Credentials) -> StoreResult<()>;

        async fn get_user(&self, id: UserId) -> StoreResult<User>;

        /// Users in id order (creation order), after `after` when given.
        async fn list_users(&self, after: Option<UserId>, limit: u32) -> StoreResult<Vec<User>>;

        /// Applies `patch` and sets `update_time`; returns the updated user.
        async fn update_user(
            &self,
            id: UserId,
            patch: &UserPatch,
            now: DateTime<Utc>,
        ) -> StoreResult<User>;

        async fn find_credentials(&self, email: &Email) -> StoreResult<Option<Credentials>>;

        /// The user with the stored hash, by id.
        async fn credentials(&self, id: UserId) -> StoreResult<Credentials>;

        /// Replaces the hash only if it is still `expected` (compare-and-swap),
        /// so that a re-hash or change based on a password checked a moment ago
        /// never overwrites a newer password. False when the hash had changed.
        async fn replace_password_hash(&self, change: &HashReplacement<'_>) -> StoreResult<bool>;

        /// When the user's password last changed (None: never since sign-up);
        /// `NotFound` when there is no such user.
        async fn password_change_time(&self, id: UserId) -> StoreResult<Option<DateTime<Utc>>>;

        /// The keys that sign user tokens, newest first.
        async fn token_keys(&self) -> StoreResult<Vec<StoredTokenKey>>;

        async fn add_token_key(&self, key: &TokenSigningKey, now: DateTime<Utc>) -> StoreResult<()>;

        /// Atomically takes one login attempt for the account, counted as a
        /// failure until [`UserStore::clear_login_failures`]; refused when the
        /// window already holds `throttle.max_failures`. Windows are timed by
        /// the database's clock, so replicas whose clocks disagree share them.
        async fn begin_login_attempt(
            &self,
            key: &ThrottleKey,
            throttle: LoginThrottle,
        ) -> StoreResult<LoginAttempt>;

        async fn clear_login_failures(&self, key: &ThrottleKey) -> StoreResult<()>;

        /// Gives back one attempt taken by [`UserStore::begin_login_attempt`]
        /// whose password was never checked (hashing busy, an error, the call
        /// gone): only a checked, wrong password counts.
        async fn refund_login_attempt(&self, key: &ThrottleKey) -> StoreResult<()>;

        /// Removes up to `limit` throttle rows whose window of length `window`
        /// is over by the database's clock (they no longer limit anything); how many.
        async fn remove_expired_login_throttles(
            &self,
            window: chrono::Duration,
            limit: u32,
        ) -> StoreResult<u64>;

        /// Deletes the user and records `job` in the purge outbox, in one
        /// transaction. The job is claimed by the caller for `lease`.
        ///
        /// Outbox times come from the database's clock, so that replicas whose
        /// clocks disagree still agree on every lease.
        async fn delete_user(&self, id: UserId, job: &PurgeJob, lease: Duration) -> StoreResult<()>;

        /// Claims up to `limit` pending jobs that are due, so that no other
        /// dispatcher (on any replica) takes them during `lease`.
        async fn claim_due_purge_jobs(&self, lease: Duration, limit: u32)
        -> StoreResult<Vec<PurgeJob>>;

        /// Marks a job purged with the entries service's total for the user.
        async fn complete_purge_job(&self, job_id: Uuid, purged_entry_count: i64) -> StoreResult<()>;

        /// Puts a claimed job back, due again after `delay`. Every failure ends
        /// here: a job is never given up on.
        async fn retry_purge_job(&self, job_id: Uuid, delay: Duration, error: &str) -> StoreResult<()>;

        /// The latest deletion record of a user; `PurgeJobNotFound` if none.
        async fn purge_record(&self, user_id: UserId) -> StoreResult<PurgeRecord>;

        /// Deletion records oldest first, after the query's cursor.
        async fn list_purge_records(&self, query: &PurgeJobQuery) -> StoreResult<Vec<PurgeRecord>>;

        async fn purge_queue_stats(&self) -> StoreResult<PurgeQueueStats>;

        /// Up to `limit` changes after `after`, oldest first, and where the
        /// next page starts.
        async fn list_user_changes(
            &self,
            after: ChangePosition,
            limit: u32,
        ) -> StoreResult<ChangePage<UserChange>>;

        /// Where a reader starting now begins: every change committed from
        /// now on comes after it.
        async fn user_changes_head(&self) -> StoreResult<ChangePosition>;

        /// Removes up to `limit` of the oldest changes if written before
        /// `before`; how many it removed.
        async fn remove_user_changes_before(
            &self,
            before: DateTime<Utc>,
            limit: u32,
        ) -> StoreResult<u64>;
    }
}
