//! Users, their fields and rules. No I/O: every value here is valid by construction.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

mod email;
pub use email::Email;

/// Why a raw value was refused; the edge names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub Uuid);

impl UserId {
    pub fn generate() -> Self {
        // Version 7 ids sort by creation time: ListUsers pages in creation order.
        Self(Uuid::now_v7())
    }

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        Uuid::try_parse(raw.trim())
            .map(Self)
            .map_err(|_| Invalid("must be a UUID"))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A display name: 1 to 255 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(Invalid("must not be empty"));
        }
        if name.chars().count() > Self::MAX_CHARS {
            return Err(Invalid("must be at most 255 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(Invalid("must not contain control characters"));
        }
        Ok(Self(name.to_owned()))
    }

    /// A name the store wrote after [`UserName::parse`], read back.
    pub fn from_stored(name: String) -> Self {
        Self(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password in clear, as given: 8 to 1024 characters. The upper bound
/// bounds the cost of hashing it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 1024;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let chars = raw.chars().count();
        if chars < Self::MIN_CHARS {
            return Err(Invalid("must be at least 8 characters"));
        }
        if chars > Self::MAX_CHARS {
            return Err(Invalid("must be at most 1024 characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// For login: any length is checked against the hash (and simply fails),
    /// but nothing longer than the maximum is ever hashed.
    pub fn for_login(raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid("must not be empty"));
        }
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(Invalid("must be at most 1024 characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// The unit a user prefers to see weights in.
pub use heft_service::units::WeightUnit;

/// The contract: a new account prefers pounds unless it says otherwise.
pub const DEFAULT_WEIGHT_UNIT: WeightUnit = WeightUnit::Pounds;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub name: UserName,
    pub weight_unit: WeightUnit,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// One change in the users feed, and when it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct UserChange {
    pub kind: UserChangeKind,
    pub time: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserChangeKind {
    Created(User),
    Updated(User),
    /// Only the id: a deleted user's data leaves the feed with them.
    Deleted(UserId),
}

/// The fields an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub email: Option<Email>,
    pub name: Option<UserName>,
    pub weight_unit: Option<WeightUnit>,
}

/// A user with the hash of its password: what sign-up stores and login reads.
#[derive(Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password_hash", &"***")
            .finish()
    }
}

/// Failed-login throttling (docs/contract.md, "Security"): at most `max_failures` failed
/// attempts per email within `window`.
#[derive(Debug, Clone, Copy)]
pub struct LoginThrottle {
    pub max_failures: u32,
    pub window: chrono::Duration,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: chrono::Duration::minutes(15),
        }
    }
}

/// A compare-and-swap of a password hash: `new_hash` replaces `expected`
/// only if that is still the stored hash.
#[derive(Debug, Clone, Copy)]
pub struct HashReplacement<'a> {
    pub id: UserId,
    pub expected: &'a str,
    pub new_hash: &'a str,
    pub now: DateTime<Utc>,
    /// A new password (ChangePassword), which ends the user tokens issued
    /// before it; false for a re-hash of the same password.
    pub new_password: bool,
}

/// What the login throttle counts failures under: a keyed hash of the
/// normalised email, known or not (no account is revealed by the throttle).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ThrottleKey(pub [u8; 32]);

impl fmt::Debug for ThrottleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ThrottleKey(***)")
    }
}

/// The answer of the store when a login attempt asks for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempt {
    /// The attempt may check the password; it already counts as a failure
    /// until a success clears the count.
    Allowed,
    /// Too many failures: refused without checking, for this long.
    Locked { retry_after: std::time::Duration },
}

/// An outbox row: "purge every entry of this deleted user".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeJob {
    pub id: Uuid,
    pub user_id: UserId,
    /// The request id of the DeleteUser call, passed on to every delivery.
    pub request_id: Option<String>,
    /// The W3C `traceparent` of the DeleteUser call's span: a redelivery's
    /// trace links to it.
    pub traceparent: Option<String>,
    /// Deliveries started so far, this one included.
    pub attempts: i32,
}

/// Where the purge of a deleted user's entries stands. There is no
/// "failed": a job is retried until the entries service acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PurgeState {
    Pending,
    Purged,
}

/// The deletion record of a user, as GetPurgeJob and ListPurgeJobs show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRecord {
    pub job_id: Uuid,
    pub user_id: UserId,
    pub state: PurgeState,
    /// Deliveries started so far.
    pub attempts: i32,
    /// The last failed delivery: `CODE: message`.
    pub last_error: Option<String>,
    /// Set once purged: the total over every delivery.
    pub purged_entry_count: Option<i64>,
    /// When the user was deleted.
    pub create_time: DateTime<Utc>,
    pub complete_time: Option<DateTime<Utc>>,
    /// When the next delivery is due (or, while one is in flight, when its
    /// lease runs out); `None` once purged.
    pub next_attempt_time: Option<DateTime<Utc>>,
}

/// Position after a record in ListPurgeJobs order (oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PurgeCursor {
    pub create_time_micros: i64,
    pub job_id: Uuid,
}

impl PurgeCursor {
    pub fn after(record: &PurgeRecord) -> Self {
        Self {
            create_time_micros: record.create_time.timestamp_micros(),
            job_id: record.job_id,
        }
    }
}

/// One page of ListPurgeJobs.
#[derive(Debug, Clone, Copy)]
pub struct PurgeJobQuery {
    pub state: Option<PurgeState>,
    pub after: Option<PurgeCursor>,
    pub limit: u32,
}

/// Size of the purge outbox, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeQueueStats {
    pub pending: i64,
    pub purged: i64,
    pub oldest_pending_age: Option<std::time::Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(UserName::parse("  Ada ").expect("valid").as_str(), "Ada");
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"é".repeat(255)).is_ok());
        assert!(UserName::parse(&"é".repeat(256)).is_err());
        assert!(UserName::parse("a\u{0}b").is_err());
    }

    #[test]
    fn passwords_are_bounded_in_characters() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"ü".repeat(1024)).is_ok());
        assert!(Password::parse(&"x".repeat(1025)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("secret-pass").expect("valid")),
            "Password(***)"
        );
    }

    #[test]
    fn user_ids_must_be_uuids() {
        assert!(UserId::parse("not-a-uuid").is_err());
        assert!(UserId::parse("0190a6b2-7c3e-7d45-9a1b-2f3c4d5e6f70").is_ok());
    }
}
