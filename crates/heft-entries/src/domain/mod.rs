//! Weight entries and their rules. No I/O: every value here is valid by construction.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

mod summary;
mod weight;

pub use summary::{Summarizer, Summary, summarize};
pub use weight::{Weight, WeightUnit};

/// Why a raw value was refused; the edge names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

macro_rules! uuid_id {
    ($name:ident) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            serde::Serialize,
            serde::Deserialize,
        )]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, Invalid> {
                Uuid::try_parse(raw.trim())
                    .map(Self)
                    .map_err(|_| Invalid("must be a UUID"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(EntryId);
uuid_id!(UserId);
uuid_id!(IdempotencyKey);

impl EntryId {
    /// Version 7: time-ordered, friendly to the primary-key index.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

/// The day a weight was measured: 1900-01-01 to tomorrow (UTC), so that
/// a user east of UTC can record "today" before UTC's midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordedOn(NaiveDate);

impl RecordedOn {
    pub fn earliest() -> NaiveDate {
        NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(NaiveDate::MIN)
    }

    pub fn new(date: NaiveDate, today: NaiveDate) -> Result<Self, Invalid> {
        if date < Self::earliest() {
            return Err(Invalid("must be on or after 1900-01-01"));
        }
        if date > today + chrono::Days::new(1) {
            return Err(Invalid("must not be later than tomorrow (UTC)"));
        }
        Ok(Self(date))
    }

    /// A date read back from storage, valid when it was written.
    pub fn from_stored(date: NaiveDate) -> Self {
        Self(date)
    }

    pub fn date(self) -> NaiveDate {
        self.0
    }
}

/// A calendar date from its parts, if it exists.
pub fn calendar_date(year: i32, month: i32, day: i32) -> Result<NaiveDate, Invalid> {
    let (Ok(month), Ok(day)) = (u32::try_from(month), u32::try_from(day)) else {
        return Err(Invalid("must be a real calendar date"));
    };
    if year == 0 || month == 0 || day == 0 {
        return Err(Invalid("must be a full date: year, month and day"));
    }
    if !(1..=9999).contains(&year) {
        return Err(Invalid("year must be between 1 and 9999"));
    }
    NaiveDate::from_ymd_opt(year, month, day).ok_or(Invalid("must be a real calendar date"))
}

/// Free text, at most 500 characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Note(String);

impl Note {
    pub const MAX_CHARS: usize = 500;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(Invalid("must be at most 500 characters"));
        }
        // PostgreSQL cannot store U+0000: both backends refuse alike.
        if raw
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(Invalid(
                "must not contain control characters other than newline and tab",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn from_stored(note: String) -> Self {
        Self(note)
    }

    pub fn into_string(self) -> String {
        self.0
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: EntryId,
    pub user_id: UserId,
    pub weight: Weight,
    pub recorded_on: RecordedOn,
    pub note: Note,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// The fields an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EntryPatch {
    pub weight: Option<Weight>,
    pub recorded_on: Option<RecordedOn>,
    pub note: Option<Note>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SortOrder {
    Ascending,
    Descending,
}

/// Inclusive date bounds of a listing or summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct DateRange {
    pub start: Option<NaiveDate>,
    pub end: Option<NaiveDate>,
}

/// Position after the last entry of a page: the listing's sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub recorded_on: NaiveDate,
    pub create_time_micros: i64,
    pub id: EntryId,
}

impl Cursor {
    pub fn after(entry: &Entry) -> Self {
        Self {
            recorded_on: entry.recorded_on.date(),
            create_time_micros: entry.create_time.timestamp_micros(),
            id: entry.id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListQuery {
    pub user_id: UserId,
    pub range: DateRange,
    pub order: SortOrder,
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// One change in the entries feed.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryChange {
    /// Created or updated: the entry as it was after the change.
    Upserted(Entry),
    Deleted {
        entry_id: EntryId,
        user_id: UserId,
    },
    /// Every entry of the user deleted, and none to be created again.
    UserPurged {
        user_id: UserId,
    },
}

impl EntryChange {
    pub fn user_id(&self) -> UserId {
        match self {
            EntryChange::Upserted(entry) => entry.user_id,
            EntryChange::Deleted { user_id, .. } | EntryChange::UserPurged { user_id } => *user_id,
        }
    }
}

/// A change and when it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedChange {
    pub change: EntryChange,
    pub time: DateTime<Utc>,
}

/// One page of the entries feed: after a position, for one user or all.
#[derive(Debug, Clone, Copy)]
pub struct ChangeQuery {
    pub after: heft_service::changes::ChangePosition,
    pub user_id: Option<UserId>,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_refuse_control_characters_but_newline_and_tab() {
        assert!(Note::parse("line one\nline two\tend").is_ok());
        assert!(Note::parse("nul\u{0}byte").is_err());
        assert!(Note::parse("bell\u{7}").is_err());
        assert!(Note::parse("cr\r").is_err());
        assert!(Note::parse(&"é".repeat(500)).is_ok());
        assert!(Note::parse(&"é".repeat(501)).is_err());
    }

    #[test]
    fn recorded_on_is_bounded_by_1900_and_tomorrow() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 25).expect("date");
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("date");
        assert!(RecordedOn::new(day(1900, 1, 1), today).is_ok());
        assert!(RecordedOn::new(day(1899, 12, 31), today).is_err());
        assert!(RecordedOn::new(day(2026, 11, 26), today).is_ok());
        assert!(RecordedOn::new(day(2026, 11, 27), today).is_err());
    }

    #[test]
    fn calendar_dates_must_exist() {
        assert!(calendar_date(2024, 2, 29).is_ok());
        assert!(calendar_date(2023, 2, 29).is_err());
        assert!(calendar_date(2024, 13, 1).is_err());
        assert!(calendar_date(2024, 0, 10).is_err());
        assert!(calendar_date(2024, -1, 10).is_err());
        assert!(calendar_date(-5000, 1, 1).is_err());
        assert!(calendar_date(10_000, 1, 1).is_err());
    }

    #[test]
    fn notes_are_bounded_in_characters() {
        assert!(Note::parse(&"ö".repeat(500)).is_ok());
        assert!(Note::parse(&"o".repeat(501)).is_err());
    }
}
