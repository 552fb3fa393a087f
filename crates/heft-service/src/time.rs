//! Instants as the databases store them: UTC, microsecond precision.

use chrono::{DateTime, SubsecRound, Utc};

/// Now, truncated to what PostgreSQL keeps, so that a value read back equals
/// the value written (keyset cursors compare them).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn to_timestamp(instant: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: instant.timestamp(),
        nanos: i32::try_from(instant.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Microseconds since the Unix epoch (SQLite keeps instants as integers).
pub fn to_micros(instant: DateTime<Utc>) -> i64 {
    instant.timestamp_micros()
}

pub fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}
