//! Database errors, as every store reports them.

use crate::error::{ErrorCode, ServiceError};

/// A database failed a statement; what a store adds is named by the store.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Worth retrying: the database was unreachable, overloaded, shutting
    /// down, or rolled the transaction back for a conflict.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Refused for good: a bug, or a schema that is not what the code expects.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A stored value the domain does not accept (`table.column`).
    #[error("corrupt row in the database: {0}")]
    Corrupt(&'static str),
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            DbError::Unavailable(error)
        } else {
            DbError::Database(error)
        }
    }
}

impl ServiceError for DbError {
    fn error_code(&self) -> ErrorCode {
        match self {
            DbError::Unavailable(_) => ErrorCode::Unavailable,
            DbError::Database(_) | DbError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            DbError::Unavailable(_) => "DATABASE_UNAVAILABLE",
            DbError::Database(_) | DbError::Corrupt(_) => "DATABASE_ERROR",
        }
    }
}

/// Whether a database error is worth retrying (`UNAVAILABLE`), as opposed
/// to the statement being refused for good.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                // SQLSTATE classes 08 connection exception, 40 transaction
                // rollback (deadlock, serialization), 53 insufficient
                // resources, 57 operator intervention (shutdown).
                matches!(pg.code().get(..2), Some("08" | "40" | "53" | "57"))
            } else {
                // SQLite primary result codes 5 (BUSY) and 6 (LOCKED); the low
                // byte of an extended code is its primary code.
                db.code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 5 | 6))
            }
        }
        _ => false,
    }
}

/// Whether `error` violates the unique index `index` on `columns`
/// (`table.column`). PostgreSQL names the index; SQLite names the columns
/// ("UNIQUE constraint failed: users.email") or, for an index on an
/// expression, the index ("… failed: index 'name'").
pub fn violates_unique(error: &sqlx::Error, index: &str, columns: &str) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    if !db.is_unique_violation() {
        return false;
    }
    match db.constraint() {
        Some(name) => name == index,
        None => {
            let message = db.message();
            message.ends_with(&format!(": {columns}"))
                || message.ends_with(&format!("index '{index}'"))
        }
    }
}
