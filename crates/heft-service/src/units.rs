//! The unit both contracts share (`heft.common.v1.WeightUnit`): a user's
//! preferred unit, and the unit an entry was recorded in.

/// A unit of weight; the wire's `UNSPECIFIED` is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum WeightUnit {
    Kilograms,
    Pounds,
}

impl WeightUnit {
    /// Stable number of the unit in storage and on the wire (`heft.common.v1.WeightUnit`).
    pub fn code(self) -> i32 {
        match self {
            Self::Kilograms => 1,
            Self::Pounds => 2,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::Kilograms),
            2 => Some(Self::Pounds),
            _ => None,
        }
    }
}
