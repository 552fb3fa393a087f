//! Where users live: one trait, one module per database.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use heft_service::{ErrorCode, ServiceError};
use uuid::Uuid;

use crate::domain::{
    Credentials, Email, LoginAttempt, LoginThrottle, NewUser, PurgeJob, PurgeJobQuery,
    PurgeQueueStats, PurgeRecord, PurgeState, ThrottleKey, User, UserId, UserPatch,
};

mod postgres;
mod sqlite;

pub use postgres::PostgresUserStore;
pub use sqlite::SqliteUserStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user not found")]
    NotFound,
    #[error("no purge job for this user: it was never deleted")]
    PurgeJobNotFound,
    #[error("a user with this email already exists")]
    EmailTaken,
    #[error("user database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("user database error")]
    Database(#[source] sqlx::Error),
    #[error("corrupt row in the user database: {0}")]
    Corrupt(&'static str),
}

impl StoreError {
    /// Translates a database error at the store boundary. Constraint
    /// violations are named where the constraint is known
    /// ([`StoreError::from_write_of_email`]); here they are plain errors.
    fn from_sqlx(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            _ if heft_service::db::is_unavailable(&error) => StoreError::Unavailable(error),
            _ => StoreError::Database(error),
        }
    }
}

impl StoreError {
    /// For statements that write an email: the unique index on it means
    /// another account has that email; any other violation is a bug.
    fn from_write_of_email(error: sqlx::Error) -> Self {
        if heft_service::db::violates_unique(&error, EMAIL_UNIQUE_INDEX, "users.email") {
            StoreError::EmailTaken
        } else {
            StoreError::from_sqlx(error)
        }
    }
}

/// The unique index on users' emails (see the migrations).
const EMAIL_UNIQUE_INDEX: &str = "users_email_key";

impl ServiceError for StoreError {
    fn error_code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound | StoreError::PurgeJobNotFound => ErrorCode::NotFound,
            StoreError::EmailTaken => ErrorCode::AlreadyExists,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Database(_) | StoreError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            StoreError::NotFound => "USER_NOT_FOUND",
            StoreError::PurgeJobNotFound => "PURGE_JOB_NOT_FOUND",
            StoreError::EmailTaken => "EMAIL_TAKEN",
            StoreError::Unavailable(_) => "DATABASE_UNAVAILABLE",
            StoreError::Database(_) | StoreError::Corrupt(_) => "DATABASE_ERROR",
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

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
        _ => Err(StoreError::Corrupt("purge_jobs.state")),
    }
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// `EmailTaken` if another user has the email.
    async fn create_user(&self, user: &NewUser) -> StoreResult<()>;

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
    async fn replace_password_hash(
        &self,
        id: UserId,
        expected: &str,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Atomically takes one login attempt for the account, counted as a
    /// failure until [`UserStore::clear_login_failures`]; refused when the
    /// window already holds `throttle.max_failures`.
    async fn begin_login_attempt(
        &self,
        key: &ThrottleKey,
        throttle: LoginThrottle,
        now: DateTime<Utc>,
    ) -> StoreResult<LoginAttempt>;

    async fn clear_login_failures(&self, key: &ThrottleKey) -> StoreResult<()>;

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

    /// Whether the database answers now (readiness).
    async fn ping(&self) -> StoreResult<()>;

    /// Connections of the pool: all of them, and those idle.
    fn pool_connections(&self) -> (u32, usize);

    /// The key `name` shared by every replica on this database (page
    /// tokens, the login throttle), created with `candidate` if there is none.
    async fn signing_key(&self, name: &str, candidate: &[u8]) -> StoreResult<Vec<u8>>;
}

/// Opens (and migrates) the store a `HEFT_USERS_DATABASE_URL` names.
pub async fn open(url: &str) -> anyhow::Result<Arc<dyn UserStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresUserStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteUserStore::connect(url).await?))
    } else {
        anyhow::bail!("unsupported database url: expected postgres:// or sqlite://")
    }
}
