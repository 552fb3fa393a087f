use unicode_normalization::UnicodeNormalization;

use super::Invalid;

/// A plausible email address, trimmed, NFC-normalised and lower-cased: the
/// form it is stored and compared in, which makes uniqueness and login
/// case-insensitive, and `josé` typed composed or decomposed one address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let email = raw.trim().nfc().collect::<String>().to_lowercase();
        if email.is_empty() {
            return Err(Invalid("must not be empty"));
        }
        if email.chars().count() > Self::MAX_CHARS {
            return Err(Invalid("must be at most 254 characters"));
        }
        let plausible = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.len() <= 64
                && !domain.contains('@')
                && domain.contains('.')
                && domain.split('.').all(|label| !label.is_empty())
        }) && !email.chars().any(|c| c.is_whitespace() || c.is_control());
        if !plausible {
            return Err(Invalid("must be an email address like name@example.com"));
        }
        Ok(Self(email))
    }

    /// An email the store wrote after [`Email::parse`], read back.
    pub fn from_stored(email: String) -> Self {
        Self(email)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_and_decomposed_forms_are_one_address() {
        let composed = Email::parse("Jos\u{e9}@example.com").expect("composed");
        let decomposed = Email::parse("jose\u{301}@EXAMPLE.com").expect("decomposed");
        assert_eq!(composed, decomposed);
        assert_eq!(composed.as_str(), "jos\u{e9}@example.com");
    }

    #[test]
    fn normalises_case_and_whitespace() {
        let email = Email::parse("  Ada.Lovelace@Example.COM ").expect("valid");
        assert_eq!(email.as_str(), "ada.lovelace@example.com");
    }

    #[test]
    fn refuses_implausible_addresses() {
        for raw in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@example..com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }
}
