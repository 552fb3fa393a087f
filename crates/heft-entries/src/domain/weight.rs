pub use heft_service::units::WeightUnit;

use super::Invalid;

/// Exactly, by the international yard and pound agreement of 1959.
pub const KILOGRAMS_PER_POUND: f64 = 0.45359237;
const MAX_KILOGRAMS: f64 = 1000.0;

/// A measured weight, kept exactly as given: value and unit. It is converted
/// only on read, so a change of the user's preferred unit never changes the
/// meaning of an old entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weight {
    value: f64,
    unit: WeightUnit,
}

impl Weight {
    /// Finite, positive and at most 1000 kg (or the same in pounds).
    pub fn new(value: f64, unit: WeightUnit) -> Result<Self, Invalid> {
        Self::check_value(value)?;
        let weight = Self { value, unit };
        if weight.kilograms() > MAX_KILOGRAMS {
            return Err(Invalid("must be at most 1000 kg (2204.62 lb)"));
        }
        Ok(weight)
    }

    /// The checks a value passes whatever its unit: finite and positive.
    pub fn check_value(value: f64) -> Result<(), Invalid> {
        if !value.is_finite() {
            return Err(Invalid("must be a finite number"));
        }
        if value <= 0.0 {
            return Err(Invalid("must be greater than 0"));
        }
        Ok(())
    }

    /// A weight read back from storage, valid when it was written.
    pub fn from_stored(value: f64, unit: WeightUnit) -> Self {
        Self { value, unit }
    }

    pub fn value(self) -> f64 {
        self.value
    }

    pub fn unit(self) -> WeightUnit {
        self.unit
    }

    pub fn kilograms(self) -> f64 {
        self.value_in(WeightUnit::Kilograms)
    }

    /// The value in `unit`; exactly the stored value when the units agree.
    pub fn value_in(self, unit: WeightUnit) -> f64 {
        match (self.unit, unit) {
            (from, to) if from == to => self.value,
            (WeightUnit::Pounds, WeightUnit::Kilograms) => self.value * KILOGRAMS_PER_POUND,
            (WeightUnit::Kilograms, WeightUnit::Pounds) => self.value / KILOGRAMS_PER_POUND,
            _ => unreachable!("the units agree"),
        }
    }

    /// This weight expressed in `unit` (unchanged when `unit` is `None`).
    pub fn converted(self, unit: Option<WeightUnit>) -> Self {
        match unit {
            Some(unit) => Self {
                value: self.value_in(unit),
                unit,
            },
            None => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pounds_convert_exactly_by_definition() {
        let weight = Weight::new(180.0, WeightUnit::Pounds).expect("valid");
        assert!(
            (weight.kilograms() - 81.6466266).abs() < 1e-9,
            "{}",
            weight.kilograms()
        );
        assert_eq!(weight.value_in(WeightUnit::Pounds), 180.0);
        let back = Weight::new(weight.kilograms(), WeightUnit::Kilograms).expect("valid");
        assert!((back.value_in(WeightUnit::Pounds) - 180.0).abs() < 1e-9);
    }

    #[test]
    fn refuses_impossible_weights() {
        for value in [f64::NAN, f64::INFINITY, 0.0, -1.0, 1000.001] {
            assert!(
                Weight::new(value, WeightUnit::Kilograms).is_err(),
                "{value}"
            );
        }
        assert!(Weight::new(1000.0, WeightUnit::Kilograms).is_ok());
        assert!(Weight::new(2204.6, WeightUnit::Pounds).is_ok());
        assert!(Weight::new(2204.7, WeightUnit::Pounds).is_err());
    }
}
