//! Proto messages to domain values (validating every field once) and back.

use chrono::NaiveDate;
use heft_proto::{
    codec::MAX_BATCH_ENTRIES, common::v1 as common, entries::v1 as pb, google::r#type::Date,
};
use heft_service::{
    InvalidRequest, Violations,
    error::checked,
    field_mask::{self, UpdateFields},
    time::{date_to_proto, to_timestamp},
};

use crate::domain::{
    DateRange, Entry, EntryChange, EntryId, EntryPatch, IdempotencyKey, Note, RecordedOn,
    SortOrder, TimedChange, UserId, Weight, WeightUnit, calendar_date,
};

/// A new entry's fields, validated.
pub struct Draft {
    pub weight: Weight,
    pub recorded_on: RecordedOn,
    pub note: Note,
}

pub struct CreateParams {
    pub user_id: UserId,
    pub draft: Draft,
    pub request_id: Option<IdempotencyKey>,
}

pub struct ListParams {
    pub user_id: UserId,
    pub range: DateRange,
    pub order: SortOrder,
    pub page_size: i32,
    pub page_token: String,
    pub unit: Option<WeightUnit>,
}

pub fn id<T>(
    raw: &str,
    field: &str,
    parse: impl FnOnce(&str) -> Result<T, crate::domain::Invalid>,
) -> Result<T, InvalidRequest> {
    parse(raw).map_err(|e| InvalidRequest::single(field, e.to_string()))
}

/// A unit that selects how to read weights: `UNSPECIFIED` is `None`.
fn read_unit(code: i32) -> Result<Option<WeightUnit>, &'static str> {
    match code {
        0 => Ok(None),
        code => WeightUnit::from_code(code)
            .map(Some)
            .ok_or("must be WEIGHT_UNIT_KILOGRAMS, WEIGHT_UNIT_POUNDS or unspecified"),
    }
}

fn weight(
    raw: Option<&common::Weight>,
    field: &str,
    violations: &mut Violations,
) -> Option<Weight> {
    let Some(raw) = raw else {
        violations.add(field, "is required");
        return None;
    };
    let unit = violations.check(
        format!("{field}.unit"),
        WeightUnit::from_code(raw.unit)
            .ok_or("must be WEIGHT_UNIT_KILOGRAMS or WEIGHT_UNIT_POUNDS"),
    );
    match unit {
        Some(unit) => violations.check(format!("{field}.value"), Weight::new(raw.value, unit)),
        // Without a unit only the unit-free checks apply; the unit is already named.
        None => {
            violations.check(format!("{field}.value"), Weight::check_value(raw.value));
            None
        }
    }
}

fn date(raw: &Date) -> Result<NaiveDate, crate::domain::Invalid> {
    calendar_date(raw.year, raw.month, raw.day)
}

fn recorded_on(
    raw: Option<&Date>,
    field: &str,
    today: NaiveDate,
    violations: &mut Violations,
) -> Option<RecordedOn> {
    let Some(raw) = raw else {
        violations.add(field, "is required");
        return None;
    };
    violations.check(field, date(raw).and_then(|d| RecordedOn::new(d, today)))
}

fn draft(
    weight_raw: Option<&common::Weight>,
    date_raw: Option<&Date>,
    note_raw: &str,
    prefix: &str,
    today: NaiveDate,
    violations: &mut Violations,
) -> Option<Draft> {
    let weight = weight(weight_raw, &format!("{prefix}weight"), violations);
    let recorded_on = recorded_on(date_raw, &format!("{prefix}recorded_on"), today, violations);
    let note = violations.check(format!("{prefix}note"), Note::parse(note_raw));
    Some(Draft {
        weight: weight?,
        recorded_on: recorded_on?,
        note: note?,
    })
}

fn range(start: Option<&Date>, end: Option<&Date>, violations: &mut Violations) -> DateRange {
    let start = start.and_then(|d| violations.check("start_date", date(d)));
    let end = end.and_then(|d| violations.check("end_date", date(d)));
    if let (Some(start), Some(end)) = (start, end)
        && start > end
    {
        violations.add("end_date", "must not be before start_date");
    }
    DateRange { start, end }
}

pub fn create_entry(
    request: &pb::CreateEntryRequest,
    today: NaiveDate,
) -> Result<CreateParams, InvalidRequest> {
    let mut violations = Violations::new();
    let user_id = violations.check("user_id", UserId::parse(&request.user_id));
    let draft = draft(
        request.weight.as_ref(),
        request.recorded_on.as_ref(),
        &request.note,
        "",
        today,
        &mut violations,
    );
    let request_id = if request.request_id.is_empty() {
        None
    } else {
        violations.check("request_id", IdempotencyKey::parse(&request.request_id))
    };
    violations.into_result()?;
    Ok(CreateParams {
        user_id: checked(user_id),
        draft: checked(draft),
        request_id,
    })
}

pub fn batch_create(
    request: &pb::BatchCreateEntriesRequest,
    today: NaiveDate,
) -> Result<(UserId, Vec<Draft>), InvalidRequest> {
    let mut violations = Violations::new();
    let user_id = violations.check("user_id", UserId::parse(&request.user_id));
    if request.entries.is_empty() {
        violations.add("entries", "must hold at least one entry");
    }
    if request.entries.len() > MAX_BATCH_ENTRIES {
        return Err(InvalidRequest::single(
            "entries",
            format!("must hold at most {MAX_BATCH_ENTRIES} entries"),
        ));
    }
    let drafts: Vec<_> = request
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            draft(
                e.weight.as_ref(),
                e.recorded_on.as_ref(),
                &e.note,
                &format!("entries[{i}]."),
                today,
                &mut violations,
            )
        })
        .collect();
    violations.into_result()?;
    Ok((checked(user_id), drafts.into_iter().map(checked).collect()))
}

pub fn get_entry(
    request: &pb::GetEntryRequest,
) -> Result<(EntryId, Option<WeightUnit>), InvalidRequest> {
    let mut violations = Violations::new();
    let id = violations.check("id", EntryId::parse(&request.id));
    let unit = violations.check("unit", read_unit(request.unit));
    violations.into_result()?;
    Ok((checked(id), checked(unit)))
}

/// What a list and a summary read, from either request: a user's entries
/// between two days, and the unit to read them in.
macro_rules! selection {
    ($request:expr, $violations:expr) => {
        (
            $violations.check("user_id", UserId::parse(&$request.user_id)),
            range(
                $request.start_date.as_ref(),
                $request.end_date.as_ref(),
                $violations,
            ),
            $violations.check("unit", read_unit($request.unit)),
        )
    };
}

pub fn list_entries(request: pb::ListEntriesRequest) -> Result<ListParams, InvalidRequest> {
    let mut violations = Violations::new();
    let (user_id, range, unit) = selection!(request, &mut violations);
    let order = violations.check(
        "order",
        match pb::SortOrder::try_from(request.order) {
            Ok(pb::SortOrder::Unspecified | pb::SortOrder::Ascending) => Ok(SortOrder::Ascending),
            Ok(pb::SortOrder::Descending) => Ok(SortOrder::Descending),
            Err(_) => Err("must be SORT_ORDER_ASCENDING or SORT_ORDER_DESCENDING"),
        },
    );
    violations.into_result()?;
    Ok(ListParams {
        user_id: checked(user_id),
        range,
        order: checked(order),
        page_size: request.page_size,
        page_token: request.page_token,
        unit: checked(unit),
    })
}

pub fn update_entry(
    request: &pb::UpdateEntryRequest,
    today: NaiveDate,
) -> Result<(EntryId, EntryPatch), InvalidRequest> {
    let Some(entry) = &request.entry else {
        return Err(InvalidRequest::single("entry", "is required"));
    };
    let mut violations = Violations::new();
    let id = violations.check("entry.id", EntryId::parse(&entry.id));
    let fields = violations
        .merge(field_mask::resolve(
            request.update_mask.as_ref(),
            &["weight", "recorded_on", "note"],
            &["id", "user_id", "create_time", "update_time"],
        ))
        .unwrap_or(UpdateFields::Named(Vec::new()));
    let mut patch = EntryPatch::default();
    if fields.includes("weight", entry.weight.is_some()) {
        patch.weight = weight(entry.weight.as_ref(), "entry.weight", &mut violations);
    }
    if fields.includes("recorded_on", entry.recorded_on.is_some()) {
        patch.recorded_on = recorded_on(
            entry.recorded_on.as_ref(),
            "entry.recorded_on",
            today,
            &mut violations,
        );
    }
    if fields.includes("note", !entry.note.is_empty()) {
        patch.note = violations.check("entry.note", Note::parse(&entry.note));
    }
    violations.into_result()?;
    Ok((checked(id), patch))
}

pub fn summarize(
    request: &pb::SummarizeEntriesRequest,
) -> Result<(UserId, DateRange, WeightUnit), InvalidRequest> {
    let mut violations = Violations::new();
    let (user_id, range, unit) = selection!(request, &mut violations);
    violations.into_result()?;
    // The contract: unspecified means kilograms here.
    Ok((
        checked(user_id),
        range,
        checked(unit).unwrap_or(WeightUnit::Kilograms),
    ))
}

pub fn weight_to_proto(weight: Weight) -> common::Weight {
    common::Weight {
        value: weight.value(),
        unit: weight.unit().code(),
    }
}

/// The entry, its weight in `unit` when one is given.
pub fn entry_to_proto(entry: Entry, unit: Option<WeightUnit>) -> pb::Entry {
    pb::Entry {
        id: uuid_string(entry.id.0),
        user_id: uuid_string(entry.user_id.0),
        weight: Some(weight_to_proto(entry.weight.converted(unit))),
        recorded_on: Some(date_to_proto(entry.recorded_on.date())),
        note: entry.note.into_string(),
        create_time: Some(to_timestamp(entry.create_time)),
        update_time: Some(to_timestamp(entry.update_time)),
    }
}

/// ListEntryChanges: the optional user filter, the token and page size as sent.
pub fn list_entry_changes(
    request: pb::ListEntryChangesRequest,
) -> Result<(Option<UserId>, String, i32), InvalidRequest> {
    let user_id = match request.user_id.as_str() {
        "" => None,
        id => Some(UserId::parse(id).map_err(|e| InvalidRequest::single("user_id", e.0))?),
    };
    Ok((user_id, request.change_token, request.page_size))
}

pub fn entry_change_to_proto(timed: TimedChange) -> pb::EntryChange {
    let user_id = uuid_string(timed.change.user_id().0);
    let (change_type, entry_id, entry) = match timed.change {
        EntryChange::Upserted(entry) => (
            pb::EntryChangeType::Upserted,
            uuid_string(entry.id.0),
            Some(entry_to_proto(entry, None)),
        ),
        EntryChange::Deleted { entry_id, .. } => {
            (pb::EntryChangeType::Deleted, uuid_string(entry_id.0), None)
        }
        EntryChange::UserPurged { .. } => (pb::EntryChangeType::UserPurged, String::new(), None),
    };
    pb::EntryChange {
        change_type: change_type as i32,
        entry_id,
        user_id,
        entry,
        change_time: Some(to_timestamp(timed.time)),
    }
}

/// A UUID's hyphenated form, written straight into its buffer: a list page
/// writes two per entry, and `to_string` goes through the formatting
/// machinery for each.
fn uuid_string(id: uuid::Uuid) -> String {
    let mut buffer = [0; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buffer).to_owned()
}

#[cfg(test)]
mod tests {
    use heft_proto::codec::{MAX_MASK_PATH_BYTES, MAX_MASK_PATHS};
    use heft_test_support::status::assert_fits_its_limit;

    use super::*;

    fn id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// The longest note, four bytes per character.
    fn note() -> String {
        "𝔁".repeat(Note::MAX_CHARS)
    }

    fn weight() -> Option<common::Weight> {
        Some(common::Weight {
            value: f64::MAX,
            unit: i32::MIN,
        })
    }

    fn date() -> Option<Date> {
        Some(Date {
            year: i32::MIN,
            month: i32::MIN,
            day: i32::MIN,
        })
    }

    #[test]
    fn the_largest_valid_requests_fit_their_limits() {
        assert_fits_its_limit(&pb::CreateEntryRequest {
            user_id: id(),
            weight: weight(),
            recorded_on: date(),
            note: note(),
            request_id: id(),
        });
        let timestamp = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: i32::MAX,
        };
        assert_fits_its_limit(&pb::UpdateEntryRequest {
            entry: Some(pb::Entry {
                id: id(),
                user_id: id(),
                weight: weight(),
                recorded_on: date(),
                note: note(),
                create_time: Some(timestamp),
                update_time: Some(timestamp),
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["x".repeat(MAX_MASK_PATH_BYTES); MAX_MASK_PATHS],
            }),
        });
        assert_fits_its_limit(&pb::BatchCreateEntriesRequest {
            user_id: id(),
            entries: vec![
                pb::NewEntry {
                    weight: weight(),
                    recorded_on: date(),
                    note: note(),
                };
                MAX_BATCH_ENTRIES
            ],
        });
        assert_fits_its_limit(&pb::ListEntriesRequest {
            user_id: id(),
            start_date: date(),
            end_date: date(),
            page_size: i32::MIN,
            page_token: "x".repeat(heft_service::pagination::MAX_TOKEN_LEN),
            unit: i32::MIN,
            ..Default::default()
        });
        assert_fits_its_limit(&pb::GetEntryRequest {
            id: id(),
            unit: i32::MIN,
        });
        assert_fits_its_limit(&pb::SummarizeEntriesRequest {
            user_id: id(),
            start_date: date(),
            end_date: date(),
            unit: i32::MIN,
        });
        assert_fits_its_limit(&pb::DeleteEntryRequest { id: id() });
        assert_fits_its_limit(&pb::PurgeUserEntriesRequest { user_id: id() });
        assert_fits_its_limit(&pb::ListEntryChangesRequest {
            user_id: id(),
            change_token: "x".repeat(heft_service::pagination::MAX_TOKEN_LEN),
            page_size: i32::MIN,
        });
    }
}
