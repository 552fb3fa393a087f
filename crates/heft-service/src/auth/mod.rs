//! Bearer-token authentication (docs/contract.md, "Security").
//!
//! Tokens are compared as SHA-256 digests in constant time, so neither a
//! token's content nor its length leaks through timing. No token is ever
//! formatted into a log line: [`Secret`] redacts itself.

use std::{fmt, str::FromStr};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ErrorCode, ServiceError};

/// A token or other credential that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.trim().to_owned()))
    }
}

/// Who is calling, as established by the bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No tokens are configured: development mode, everything is allowed.
    Open,
    /// An API token: internal services, integrations, people.
    Api,
    /// The internal token: the other heft service.
    Internal,
}

impl Caller {
    /// Internal-only RPCs accept the internal token, and anyone in open mode.
    pub fn require_internal(self) -> Result<(), AuthError> {
        match self {
            Caller::Open | Caller::Internal => Ok(()),
            Caller::Api => Err(AuthError::InternalOnly),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token: send `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
    #[error("this method accepts only the internal service token")]
    InternalOnly,
}

impl ServiceError for AuthError {
    fn error_code(&self) -> ErrorCode {
        match self {
            AuthError::Missing | AuthError::Invalid => ErrorCode::Unauthenticated,
            AuthError::InternalOnly => ErrorCode::PermissionDenied,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "MISSING_CREDENTIALS",
            AuthError::Invalid => "INVALID_CREDENTIALS",
            AuthError::InternalOnly => "INTERNAL_ONLY",
        }
    }
}

type Digest32 = [u8; 32];

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// The configured API tokens and internal tokens (several during a rotation).
#[derive(Clone, Default)]
pub struct Tokens {
    api: Vec<Digest32>,
    internal: Vec<Digest32>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("api", &self.api.len())
            .field("internal", &self.internal.len())
            .finish()
    }
}

impl Tokens {
    pub fn new<'a>(
        api: impl IntoIterator<Item = &'a Secret>,
        internal: impl IntoIterator<Item = &'a Secret>,
    ) -> Self {
        Self {
            api: digests(api),
            internal: digests(internal),
        }
    }

    /// No token configured at all: every call is allowed.
    pub fn is_open(&self) -> bool {
        self.api.is_empty() && self.internal.is_empty()
    }

    /// API tokens without an internal token would leave the cascade unable
    /// to authenticate: refused at start-up rather than found out later.
    pub fn check_complete(&self) -> Result<(), &'static str> {
        if !self.api.is_empty() && self.internal.is_empty() {
            return Err("HEFT_API_TOKENS is set but HEFT_INTERNAL_TOKEN is not: \
                        set HEFT_INTERNAL_TOKEN (the same on both services) so that they can call each other");
        }
        Ok(())
    }

    /// Checks the value of an `authorization` header.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        if self.is_open() {
            return Ok(Caller::Open);
        }
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(header).ok_or(AuthError::Invalid)?;
        let presented = digest(token);

        // Compare against every token without stopping at a match.
        let matches = |tokens: &[Digest32]| {
            tokens.iter().fold(subtle::Choice::from(0), |found, token| {
                found | token.ct_eq(&presented)
            })
        };
        let (is_internal, is_api) = (matches(&self.internal), matches(&self.api));
        if bool::from(is_internal) {
            Ok(Caller::Internal)
        } else if bool::from(is_api) {
            Ok(Caller::Api)
        } else {
            Err(AuthError::Invalid)
        }
    }
}

/// Blank tokens are no tokens (an empty `HEFT_API_TOKENS=` means none).
fn digests<'a>(tokens: impl IntoIterator<Item = &'a Secret>) -> Vec<Digest32> {
    tokens
        .into_iter()
        .filter(|t| !t.expose().trim().is_empty())
        .map(|t| digest(t.expose()))
        .collect()
}

fn bearer_token(header: &[u8]) -> Option<&str> {
    let header = std::str::from_utf8(header).ok()?;
    let (scheme, token) = header.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(
            &[Secret::new("api-one"), Secret::new("api-two")],
            &[Secret::new("internal"), Secret::new("internal-next")],
        )
    }

    #[test]
    fn accepts_each_configured_token_with_its_role() {
        let tokens = tokens();
        assert_eq!(
            tokens.authenticate(Some(b"Bearer api-two")),
            Ok(Caller::Api)
        );
        assert_eq!(
            tokens.authenticate(Some(b"bearer internal")),
            Ok(Caller::Internal)
        );
        // During a rotation every internal token is accepted.
        assert_eq!(
            tokens.authenticate(Some(b"Bearer internal-next")),
            Ok(Caller::Internal)
        );
    }

    #[test]
    fn api_tokens_need_an_internal_token() {
        let half = Tokens::new(&[Secret::new("api")], &[]);
        let error = half.check_complete().expect_err("half-configured");
        assert!(error.contains("HEFT_INTERNAL_TOKEN"), "{error}");
        assert!(tokens().check_complete().is_ok());
        assert!(Tokens::default().check_complete().is_ok());
    }

    #[test]
    fn rejects_missing_malformed_and_unknown_tokens() {
        let tokens = tokens();
        assert_eq!(tokens.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            tokens.authenticate(Some(b"api-one")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            tokens.authenticate(Some(b"Basic api-one")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            tokens.authenticate(Some(b"Bearer api-on")),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn without_tokens_everything_is_open() {
        let open = Tokens::new(&[Secret::new("")], &[Secret::new(" ")]);
        assert!(open.is_open());
        assert_eq!(open.authenticate(None), Ok(Caller::Open));
    }

    #[test]
    fn debug_output_never_contains_a_token() {
        let printed = format!("{:?} {:?}", tokens(), Secret::new("api-one"));
        assert!(!printed.contains("api-one"), "{printed}");
    }
}
