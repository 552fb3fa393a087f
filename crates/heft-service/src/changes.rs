//! What both changes feeds share (docs/design.md, "Changes feeds"): the
//! position of a reader in a feed, its tamper-evident token, page sizes,
//! the retention and its background sweep.
//!
//! A position is `(xid, seq)`: on PostgreSQL the id of the transaction that
//! wrote a change and the change's sequence number, read in that order and
//! only below the oldest transaction still in flight; on SQLite, where one
//! writer at a time commits in sequence order, `xid` is always 0.

use std::{future::Future, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    error::{ErrorCode, InvalidRequest, Layer, LayeredError},
    pagination::{PageTokens, TokenRefusal},
};

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// How long changes are kept unless `HEFT_CHANGES_RETENTION_DAYS` says otherwise.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;

/// Changes are kept this much longer than a token lives, so that a token
/// still valid never points past a change already removed: a change can be
/// stamped with the start of a transaction that commits after a later one
/// (a call's transaction lasts at most 30 s).
const RETENTION_MARGIN: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Where a reader stands: every change after it is still to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChangePosition {
    pub xid: i64,
    pub seq: i64,
}

/// One page of a feed, and where the next one starts.
#[derive(Debug)]
pub struct ChangePage<T> {
    pub changes: Vec<T>,
    /// The position after this page: its last change, or, when the page
    /// reached the end of what can be served, the horizon below which
    /// everything was read.
    pub next: ChangePosition,
    /// The time of the oldest change the next page may hold (for the
    /// token's expiry).
    pub next_since: DateTime<Utc>,
}

/// On PostgreSQL, the oldest transaction still in flight, as a position:
/// every change before it is committed or gone for good, every change
/// still to commit comes after it.
pub async fn postgres_horizon<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<ChangePosition, sqlx::Error> {
    let xid: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8")
        .fetch_one(executor)
        .await?;
    Ok(ChangePosition { xid, seq: 0 })
}

/// The tokens a service hands out to read on from: page tokens of lists
/// and change tokens of feeds, signed with one key.
#[derive(Debug, Clone)]
pub struct ListTokens {
    pub pages: PageTokens,
    pub changes: ChangeTokens,
}

impl ListTokens {
    pub fn new(key: Vec<u8>, retention_days: u32) -> Self {
        let pages = PageTokens::new(key);
        Self {
            changes: ChangeTokens::new(pages.clone(), retention_days),
            pages,
        }
    }
}

/// A page of at most `limit` rows read in feed order below `horizon`,
/// turned into changes: a full page continues after its last row, a shorter
/// one reached the horizon (everything below it has been read).
pub fn page_of<R, T, E>(
    rows: Vec<R>,
    limit: u32,
    horizon: ChangePosition,
    position: impl Fn(&R) -> ChangePosition,
    change: impl Fn(R) -> Result<(T, DateTime<Utc>), E>,
) -> Result<ChangePage<T>, E> {
    let full = rows.len() >= limit as usize;
    let last = rows.last().map(&position);
    let mut last_time = None;
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let (item, time) = change(row)?;
        last_time = Some(time);
        changes.push(item);
    }
    let (next, next_since) = match (full, last, last_time) {
        (true, Some(last), Some(time)) => (last, time),
        _ => (
            last.map_or(horizon, |last| last.max(horizon)),
            crate::time::now(),
        ),
    };
    Ok(ChangePage {
        changes,
        next,
        next_since,
    })
}

/// The statements every feed table runs alike: its head on SQLite, and the
/// removal of its expired rows on either backend ([`feed_table!`]).
#[derive(Debug, Clone, Copy)]
pub struct FeedTable {
    pub postgres_remove_expired: &'static str,
    pub sqlite_remove_expired: &'static str,
    pub sqlite_head: &'static str,
}

/// The [`FeedTable`] statements of the table named `$table`: the oldest
/// `$2` rows in feed order, of which those written before `$1` (a bounded
/// read, whether or not any has expired).
#[macro_export]
macro_rules! feed_table {
    ($table:literal) => {
        $crate::changes::FeedTable {
            postgres_remove_expired: concat!(
                "DELETE FROM ",
                $table,
                " WHERE ctid = ANY (ARRAY(
                    SELECT ctid FROM (
                        SELECT ctid, change_time FROM ",
                $table,
                " ORDER BY xid, seq LIMIT $2
                    ) AS oldest WHERE change_time < $1))"
            ),
            sqlite_remove_expired: concat!(
                "DELETE FROM ",
                $table,
                " WHERE seq IN (
                    SELECT seq FROM (SELECT seq, change_time FROM ",
                $table,
                " ORDER BY seq LIMIT $2)
                    WHERE change_time < $1)"
            ),
            sqlite_head: concat!(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '",
                $table,
                "'), 0)"
            ),
        }
    };
}

impl FeedTable {
    pub async fn remove_expired_postgres(
        &self,
        pool: &sqlx::PgPool,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(self.postgres_remove_expired)
            .bind(before)
            .bind(i64::from(limit))
            .execute(pool)
            .await?
            .rows_affected())
    }

    pub async fn remove_expired_sqlite(
        &self,
        pool: &sqlx::SqlitePool,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(self.sqlite_remove_expired)
            .bind(crate::db::Timestamp(before))
            .bind(i64::from(limit))
            .execute(pool)
            .await?
            .rows_affected())
    }

    /// On SQLite, one writer at a time: the head is the last seq handed out.
    pub async fn sqlite_head(
        &self,
        pool: &sqlx::SqlitePool,
    ) -> Result<ChangePosition, sqlx::Error> {
        let seq: i64 = sqlx::query_scalar(self.sqlite_head).fetch_one(pool).await?;
        Ok(ChangePosition { xid: 0, seq })
    }
}

/// What a token carries: the position and the time its next change may
/// be as old as.
#[derive(Serialize, Deserialize)]
struct TokenCursor {
    #[serde(rename = "p")]
    position: ChangePosition,
}

/// Change tokens: page tokens (same key, same tamper evidence) that expire
/// with the retention.
#[derive(Debug, Clone)]
pub struct ChangeTokens {
    tokens: PageTokens,
    retention: chrono::TimeDelta,
}

impl ChangeTokens {
    pub fn new(tokens: PageTokens, retention_days: u32) -> Self {
        Self {
            tokens,
            retention: chrono::TimeDelta::days(i64::from(retention_days)),
        }
    }

    /// The token of `position` for a feed (`scope`) read with `filter`,
    /// valid while the changes after it are kept.
    pub fn encode(
        &self,
        scope: &str,
        filter: &impl Serialize,
        position: ChangePosition,
        since: DateTime<Utc>,
    ) -> String {
        self.tokens.seal(
            scope,
            filter,
            TokenCursor { position },
            (since + self.retention).timestamp(),
        )
    }

    /// The position in `token` (None: empty, start at the head).
    pub fn decode(
        &self,
        scope: &str,
        filter: &impl Serialize,
        token: &str,
    ) -> Result<Option<ChangePosition>, ChangeTokenError> {
        if token.is_empty() {
            return Ok(None);
        }
        match self.tokens.open::<TokenCursor>(scope, filter, token) {
            Ok(cursor) => Ok(Some(cursor.position)),
            Err(TokenRefusal::Expired) => Err(ChangeTokenError::Expired),
            Err(TokenRefusal::Invalid(why)) => Err(ChangeTokenError::Invalid(
                InvalidRequest::single("change_token", why),
            )),
        }
    }

    /// Changes written before this are removed: no valid token can still
    /// need them.
    pub fn removal_cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - self.retention - RETENTION_MARGIN
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeTokenError {
    #[error(transparent)]
    Invalid(InvalidRequest),
    #[error(
        "change_token has expired: changes are kept for a limited time; read the current state \
         again and follow the feed from a new token (start with an empty change_token)"
    )]
    Expired,
}

impl LayeredError for ChangeTokenError {
    fn layer(&self) -> Layer<'_> {
        match self {
            ChangeTokenError::Invalid(invalid) => Layer::Inner(invalid),
            ChangeTokenError::Expired => {
                Layer::own(ErrorCode::FailedPrecondition, "CHANGE_TOKEN_EXPIRED")
            }
        }
    }
}

crate::into_status!(ChangeTokenError);

/// Removes expired changes every minute until `stopped`, in batches of a
/// thousand: `remove(cutoff, limit)` removes up to `limit` changes written
/// before `cutoff` and says how many.
pub async fn sweep_expired<F, Fut, E>(
    feed: &'static str,
    tokens: ChangeTokens,
    remove: F,
    mut stopped: watch::Receiver<bool>,
) where
    F: Fn(DateTime<Utc>, u32) -> Fut,
    Fut: Future<Output = Result<u64, E>>,
    E: std::error::Error,
{
    const EVERY: Duration = Duration::from_secs(60);
    const BATCH: u32 = 1_000;
    loop {
        let cutoff = tokens.removal_cutoff(Utc::now());
        loop {
            match remove(cutoff, BATCH).await {
                Ok(removed) if removed == u64::from(BATCH) => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(
                        feed,
                        error = %crate::error::DisplayChain(&error),
                        "cannot remove expired changes"
                    );
                    break;
                }
            }
        }
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(retention_days: u32) -> ChangeTokens {
        ChangeTokens::new(
            PageTokens::new(b"0123456789abcdef0123456789abcdef".to_vec()),
            retention_days,
        )
    }

    #[test]
    fn a_token_carries_its_position_for_its_filter_only() {
        let position = ChangePosition { xid: 7, seq: 42 };
        let token = tokens(30).encode("entry_changes", &Some("u1"), position, Utc::now());
        assert_eq!(
            tokens(30)
                .decode("entry_changes", &Some("u1"), &token)
                .expect("valid"),
            Some(position)
        );
        assert!(matches!(
            tokens(30).decode("entry_changes", &Some("u2"), &token),
            Err(ChangeTokenError::Invalid(_))
        ));
        assert!(matches!(
            tokens(30).decode("user_changes", &Some("u1"), &token),
            Err(ChangeTokenError::Invalid(_))
        ));
        assert!(matches!(
            tokens(30).decode("entry_changes", &Some("u1"), "forged"),
            Err(ChangeTokenError::Invalid(_))
        ));
    }

    #[test]
    fn a_token_expires_with_the_retention_of_the_changes_after_it() {
        let position = ChangePosition { xid: 0, seq: 1 };
        let old = Utc::now() - chrono::TimeDelta::days(31);
        let token = tokens(30).encode("user_changes", &(), position, old);
        assert!(matches!(
            tokens(30).decode("user_changes", &(), &token),
            Err(ChangeTokenError::Expired)
        ));
        let recent = Utc::now() - chrono::TimeDelta::days(29);
        let token = tokens(30).encode("user_changes", &(), position, recent);
        assert!(tokens(30).decode("user_changes", &(), &token).is_ok());
        // Changes outlive every valid token.
        let now = Utc::now();
        assert!(tokens(30).removal_cutoff(now) < now - chrono::TimeDelta::days(30));
    }
}
