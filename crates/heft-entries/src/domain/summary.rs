use super::{Entry, WeightUnit};

/// Smoothing factor of the trend line, as in The Hacker's Diet.
const TREND_SMOOTHING: f64 = 0.1;

/// Statistics over a user's entries, every weight in one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub unit: WeightUnit,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub first: Entry,
    pub last: Entry,
    /// last − first.
    pub change: f64,
    /// Final value of the exponentially smoothed moving average.
    pub trend: f64,
}

/// Folds entries, in date order (recorded_on, then creation time), into a
/// [`Summary`] in constant memory, however many there are.
#[derive(Debug, Clone)]
pub struct Summarizer {
    unit: WeightUnit,
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    trend: f64,
    first: Option<Entry>,
    last: Option<Entry>,
}

impl Summarizer {
    pub fn new(unit: WeightUnit) -> Self {
        Self {
            unit,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            trend: 0.0,
            first: None,
            last: None,
        }
    }

    pub fn add(&mut self, entry: Entry) {
        let weight = entry.weight.value_in(self.unit);
        self.min = self.min.min(weight);
        self.max = self.max.max(weight);
        self.sum += weight;
        // t₀ = w₀; tᵢ = tᵢ₋₁ + 0.1 (wᵢ − tᵢ₋₁)
        self.trend = if self.count == 0 {
            weight
        } else {
            self.trend + TREND_SMOOTHING * (weight - self.trend)
        };
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(entry.clone());
        }
        self.last = Some(entry);
    }

    /// `None` when no entry was added.
    pub fn finish(self) -> Option<Summary> {
        let first = with_unit(&self.first?, self.unit);
        let last = with_unit(&self.last?, self.unit);
        Some(Summary {
            count: self.count,
            unit: self.unit,
            min: self.min,
            max: self.max,
            mean: self.sum / self.count as f64,
            change: last.weight.value() - first.weight.value(),
            trend: self.trend,
            first,
            last,
        })
    }
}

/// Summarises `entries`, which must be in date order.
pub fn summarize(entries: &[Entry], unit: WeightUnit) -> Option<Summary> {
    let mut summarizer = Summarizer::new(unit);
    for entry in entries {
        summarizer.add(entry.clone());
    }
    summarizer.finish()
}

fn with_unit(entry: &Entry, unit: WeightUnit) -> Entry {
    Entry {
        weight: entry.weight.converted(Some(unit)),
        ..entry.clone()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, Utc};

    use super::*;
    use crate::domain::{EntryId, Note, RecordedOn, UserId, Weight};

    fn entry(day: u32, value: f64, unit: WeightUnit) -> Entry {
        let now = Utc::now();
        Entry {
            id: EntryId::generate(),
            user_id: UserId(uuid::Uuid::nil()),
            weight: Weight::new(value, unit).expect("weight"),
            recorded_on: RecordedOn::from_stored(
                NaiveDate::from_ymd_opt(2024, 1, day).expect("date"),
            ),
            note: Note::default(),
            create_time: now,
            update_time: now,
        }
    }

    #[test]
    fn summarises_in_the_requested_unit_with_a_smoothed_trend() {
        let entries = [
            entry(1, 100.0, WeightUnit::Kilograms),
            entry(2, 99.0, WeightUnit::Kilograms),
            entry(3, 220.462_262_184_877_6, WeightUnit::Pounds), // 100 kg
            entry(4, 97.0, WeightUnit::Kilograms),
        ];
        let summary = summarize(&entries, WeightUnit::Kilograms).expect("summary");
        assert_eq!(summary.count, 4);
        assert_eq!(summary.min, 97.0);
        assert!((summary.max - 100.0).abs() < 1e-9);
        assert!((summary.mean - 99.0).abs() < 1e-9);
        assert_eq!(summary.change, -3.0);
        // t0 = 100; t1 = 99.9; t2 = 99.91; t3 = 99.619
        assert!((summary.trend - 99.619).abs() < 1e-9, "{}", summary.trend);
        assert_eq!(summary.first.id, entries[0].id);
        assert_eq!(summary.last.weight.unit(), WeightUnit::Kilograms);
    }

    #[test]
    fn nothing_to_summarise() {
        assert!(summarize(&[], WeightUnit::Pounds).is_none());
    }
}
