//! Instants as the databases store them (UTC, microsecond precision), and
//! instants and days as the wire carries them.

use chrono::{DateTime, Datelike, NaiveDate, SubsecRound, Utc};
use heft_proto::google::r#type::Date;

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

pub fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// A calendar day as `google.type.Date`.
pub fn date_to_proto(date: NaiveDate) -> Date {
    Date {
        year: date.year(),
        month: date.month() as i32,
        day: date.day() as i32,
    }
}
