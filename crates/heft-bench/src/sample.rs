//! The entries the bench writes, the same through heft and in the floor's
//! statements.

use chrono::{Datelike as _, NaiveDate};
use heft_proto::google::r#type::Date;

/// As `heft_entries::api::convert::date_to_proto`, which that crate keeps
/// private.
pub fn date_to_proto(date: NaiveDate) -> Date {
    Date {
        year: date.year(),
        month: date.month() as i32,
        day: date.day() as i32,
    }
}
