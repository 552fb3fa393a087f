//! The entries the bench writes, the same through heft and in the floor's
//! statements: the `i`-th has a weight and a day that follow from `i`.

use chrono::NaiveDate;
use heft_proto::{
    common::v1::{Weight, WeightUnit},
    entries::v1 as entries_pb,
};
use heft_service::time::date_to_proto;

pub const PASSWORD: &str = "correct horse battery";
pub const KG: i32 = WeightUnit::Kilograms as i32;

/// 60.0 to 99.9 kg.
pub fn kilograms(i: usize) -> f64 {
    60.0 + (i % 400) as f64 / 10.0
}

/// A day of about 25 years from 2000-01-01.
pub fn recorded_on(i: usize) -> NaiveDate {
    NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default() + chrono::Days::new((i % 9_000) as u64)
}

pub fn new_entry(i: usize) -> entries_pb::NewEntry {
    entries_pb::NewEntry {
        weight: Some(Weight {
            value: kilograms(i),
            unit: KG,
        }),
        recorded_on: Some(date_to_proto(recorded_on(i))),
        note: String::new(),
    }
}
