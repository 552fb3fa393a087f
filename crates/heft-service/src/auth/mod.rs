//! Bearer-token authentication and authorization (docs/access.md).
//!
//! Tokens are compared as SHA-256 digests in constant time, so neither a
//! token's content nor its length leaks through timing. No token is ever
//! formatted into a log line: [`Secret`] redacts itself.

use std::{
    fmt,
    str::FromStr,
    sync::{Arc, LazyLock, RwLock},
};

use futures::future::BoxFuture;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use uuid::Uuid;

use crate::error::{ErrorCode, Layer, LayeredError};

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

mod credentials_file;
mod scope;

pub use credentials_file::{CredentialsCommand, CredentialsFile, NewCredential};
pub use scope::{Access, Policy, Scope, Scopes};

/// Who is calling, as established by the bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credentials are configured: development mode, everything is allowed.
    Open,
    /// No credential presented, to a public method.
    Anonymous,
    /// A named credential (a backend integration, a person) and its scopes.
    Credential { name: Arc<str>, scopes: Scopes },
    /// The internal token: the other heft service.
    Internal,
    /// A user token: its user's own data only.
    User(Uuid),
}

impl Caller {
    /// The name logs and metrics give the caller; never a token.
    pub fn name(&self) -> &str {
        match self {
            Caller::Open => "open",
            Caller::Anonymous => "anonymous",
            Caller::Credential { name, .. } => name,
            Caller::Internal => "internal",
            Caller::User(_) => "user-token",
        }
    }

    /// [`Caller::name`] as a metrics label, allocating nothing per call.
    pub fn label(&self) -> Arc<str> {
        static FIXED: LazyLock<[Arc<str>; 4]> =
            LazyLock::new(|| ["open", "anonymous", "internal", "user-token"].map(Arc::from));
        match self {
            Caller::Credential { name, .. } => name.clone(),
            Caller::Open => FIXED[0].clone(),
            Caller::Anonymous => FIXED[1].clone(),
            Caller::Internal => FIXED[2].clone(),
            Caller::User(_) => FIXED[3].clone(),
        }
    }

    /// May this caller call a method with this rule? User tokens pass here
    /// for methods that admit them; the handler checks that the data is
    /// the token's user's.
    pub fn authorize(&self, access: Access) -> Result<(), AuthError> {
        match (self, access) {
            (Caller::Open, _) | (_, Access::Public) => Ok(()),
            (Caller::Anonymous, _) => Err(AuthError::Missing),
            (Caller::Internal, Access::InternalOnly) => Ok(()),
            (_, Access::InternalOnly) => Err(AuthError::InternalOnly),
            (Caller::Internal, Access::Authenticated { internal })
            | (Caller::Internal, Access::Scoped { internal, .. }) => {
                if internal {
                    Ok(())
                } else {
                    Err(AuthError::NotForInternalToken)
                }
            }
            (_, Access::Authenticated { .. }) => Ok(()),
            (Caller::Credential { scopes, .. }, Access::Scoped { scope, .. }) => {
                if scopes.contains(scope) {
                    Ok(())
                } else {
                    Err(AuthError::MissingScope(scope))
                }
            }
            (
                Caller::User(_),
                Access::Scoped {
                    scope, user_token, ..
                },
            ) => {
                if user_token {
                    Ok(())
                } else {
                    Err(AuthError::MissingScope(scope))
                }
            }
        }
    }

    /// For a method about one user's data: a user token may only name its
    /// own user (`PERMISSION_DENIED`, `OTHER_USER` otherwise).
    pub fn require_user(&self, user_id: Uuid) -> Result<(), AuthError> {
        match self {
            Caller::User(own) if *own != user_id => Err(AuthError::OtherUser),
            _ => Ok(()),
        }
    }

    /// For data found by its own id: whether this caller may see data of
    /// `owner`. A user token sees only its own; the handler answers as if
    /// anything else did not exist.
    pub fn may_see(&self, owner: Uuid) -> bool {
        !matches!(self, Caller::User(own) if *own != owner)
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
    #[error("the internal service token is not accepted on this method")]
    NotForInternalToken,
    #[error("this credential lacks the scope {0}")]
    MissingScope(Scope),
    #[error("a user token reaches only its own user's data")]
    OtherUser,
    #[error("user token refused: {0}")]
    UserToken(&'static str),
    #[error("cannot check the token now; try again")]
    Unavailable,
}

impl LayeredError for AuthError {
    fn layer(&self) -> Layer<'_> {
        match self {
            AuthError::Missing => Layer::own(ErrorCode::Unauthenticated, "MISSING_CREDENTIALS"),
            AuthError::Invalid => Layer::own(ErrorCode::Unauthenticated, "INVALID_CREDENTIALS"),
            AuthError::UserToken(_) => Layer::own(ErrorCode::Unauthenticated, "INVALID_USER_TOKEN"),
            AuthError::InternalOnly => Layer::own(ErrorCode::PermissionDenied, "INTERNAL_ONLY"),
            AuthError::NotForInternalToken => {
                Layer::own(ErrorCode::PermissionDenied, "NOT_FOR_INTERNAL_TOKEN")
            }
            AuthError::MissingScope(scope) => Layer::Own {
                code: ErrorCode::PermissionDenied,
                reason: "MISSING_SCOPE",
                retry_after: None,
                metadata: Some(("scope", scope.name())),
            },
            AuthError::OtherUser => Layer::own(ErrorCode::PermissionDenied, "OTHER_USER"),
            AuthError::Unavailable => Layer::own(ErrorCode::Unavailable, "AUTH_UNAVAILABLE"),
        }
    }
}

type Digest32 = [u8; 32];

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// One named credential: the digest of its token, never the token.
#[derive(Clone)]
pub struct Credential {
    pub name: Arc<str>,
    digest: Digest32,
    pub scopes: Scopes,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl Credential {
    pub fn new(name: &str, token_sha256: Digest32, scopes: Scopes) -> Self {
        Self {
            name: Arc::from(name),
            digest: token_sha256,
            scopes,
        }
    }
}

/// The credentials a service accepts: named, scoped ones (a credentials
/// file, `HEFT_API_TOKENS`) and the internal tokens (several during a
/// rotation).
#[derive(Clone, Default)]
pub struct Tokens {
    api: Vec<Credential>,
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
    /// `api` tokens become credentials with every scope, named by their
    /// place in the list (`HEFT_API_TOKENS[1]`, …).
    pub fn new<'a>(
        api: impl IntoIterator<Item = &'a Secret>,
        internal: impl IntoIterator<Item = &'a Secret>,
    ) -> Self {
        let api = digests(api)
            .into_iter()
            .enumerate()
            .map(|(i, digest)| {
                Credential::new(
                    &format!("HEFT_API_TOKENS[{}]", i + 1),
                    digest,
                    Scopes::all(),
                )
            })
            .collect();
        Self {
            api,
            internal: digests(internal),
        }
    }

    /// These credentials and those of a credentials file.
    pub fn with(mut self, credentials: impl IntoIterator<Item = Credential>) -> Self {
        self.api.extend(credentials);
        self
    }

    /// No token configured at all: every call is allowed.
    pub fn is_open(&self) -> bool {
        self.api.is_empty() && self.internal.is_empty()
    }

    /// Credentials without an internal token would leave the cascade unable
    /// to authenticate: refused at start-up rather than found out later.
    pub fn check_complete(&self) -> Result<(), &'static str> {
        if !self.api.is_empty() && self.internal.is_empty() {
            return Err(
                "API tokens or credentials are set but HEFT_INTERNAL_TOKEN is not: \
                        set HEFT_INTERNAL_TOKEN (the same on both services) so that they can call each other",
            );
        }
        Ok(())
    }

    /// Checks the value of an `authorization` header against the
    /// credentials and internal tokens. `Ok(None)`: a well-formed bearer
    /// token that is none of them (perhaps a user token).
    pub fn authenticate<'h>(
        &self,
        authorization: Option<&'h [u8]>,
    ) -> Result<Result<Caller, &'h str>, AuthError> {
        if self.is_open() {
            return Ok(Ok(Caller::Open));
        }
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(header).ok_or(AuthError::Invalid)?;
        let presented = digest(token);

        // Compare against every token without stopping at a match.
        let is_internal = self.internal.iter().fold(Choice::from(0), |found, digest| {
            found | digest.ct_eq(&presented)
        });
        let mut credential = None;
        for candidate in &self.api {
            if bool::from(candidate.digest.ct_eq(&presented)) {
                credential = Some(candidate);
            }
        }
        Ok(if bool::from(is_internal) {
            Ok(Caller::Internal)
        } else if let Some(credential) = credential {
            Ok(Caller::Credential {
                name: credential.name.clone(),
                scopes: credential.scopes,
            })
        } else {
            Err(token)
        })
    }
}

/// The credentials in force, replaced whole when the credentials file is
/// re-read (SIGHUP): a call sees the old list or the new one, never a mix.
#[derive(Clone, Default)]
pub struct LiveTokens(Arc<RwLock<Arc<Tokens>>>);

impl LiveTokens {
    pub fn new(tokens: Tokens) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(tokens))))
    }

    pub fn current(&self) -> Arc<Tokens> {
        match self.0.read() {
            Ok(tokens) => tokens.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, tokens: Tokens) {
        match self.0.write() {
            Ok(mut current) => *current = Arc::new(tokens),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(tokens),
        }
    }
}

/// Checks user tokens (`Authenticate`'s `access_token`): the users service
/// with its own keys, the entries service with the keys it fetched.
pub trait UserTokenVerifier: Send + Sync + 'static {
    /// The token's user, if the token is valid now.
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Uuid, AuthError>>;
}

/// A compact JWS: three base64url parts. Anything else is not a user token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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

    fn caller(tokens: &Tokens, header: &[u8]) -> Result<Caller, AuthError> {
        tokens
            .authenticate(Some(header))?
            .map_err(|_| AuthError::Invalid)
    }

    #[test]
    fn accepts_each_configured_token_with_its_role() {
        let tokens = tokens();
        assert_eq!(
            caller(&tokens, b"Bearer api-two"),
            Ok(Caller::Credential {
                name: Arc::from("HEFT_API_TOKENS[2]"),
                scopes: Scopes::all()
            })
        );
        assert_eq!(caller(&tokens, b"bearer internal"), Ok(Caller::Internal));
        // During a rotation every internal token is accepted.
        assert_eq!(
            caller(&tokens, b"Bearer internal-next"),
            Ok(Caller::Internal)
        );
    }

    #[test]
    fn each_caller_reaches_only_what_its_rule_admits() {
        let reader = Caller::Credential {
            name: Arc::from("warehouse-sync"),
            scopes: Scopes::parse(["entries.read"]).expect("scopes"),
        };
        let read = Access::scope_or_own_user(Scope::EntriesRead);
        let write = Access::scope_or_own_user(Scope::EntriesWrite);
        let get_user = Access::Scoped {
            scope: Scope::UsersRead,
            internal: true,
            user_token: true,
        };
        assert_eq!(reader.authorize(read), Ok(()));
        assert_eq!(
            reader.authorize(write),
            Err(AuthError::MissingScope(Scope::EntriesWrite))
        );
        assert_eq!(
            reader.authorize(Access::InternalOnly),
            Err(AuthError::InternalOnly)
        );
        assert_eq!(
            Caller::Internal.authorize(read),
            Err(AuthError::NotForInternalToken)
        );
        assert_eq!(Caller::Internal.authorize(get_user), Ok(()));
        assert_eq!(Caller::Internal.authorize(Access::InternalOnly), Ok(()));
        let user = Caller::User(Uuid::nil());
        assert_eq!(user.authorize(write), Ok(()));
        assert_eq!(
            user.authorize(Access::scope(Scope::UsersRead)),
            Err(AuthError::MissingScope(Scope::UsersRead))
        );
        assert_eq!(user.require_user(Uuid::max()), Err(AuthError::OtherUser));
        assert!(!user.may_see(Uuid::max()));
        assert!(user.may_see(Uuid::nil()));
        assert_eq!(Caller::Anonymous.authorize(read), Err(AuthError::Missing));
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
        assert_eq!(caller(&tokens, b"api-one"), Err(AuthError::Invalid));
        assert_eq!(caller(&tokens, b"Basic api-one"), Err(AuthError::Invalid));
        assert_eq!(caller(&tokens, b"Bearer api-on"), Err(AuthError::Invalid));
    }

    #[test]
    fn without_tokens_everything_is_open() {
        let open = Tokens::new(&[Secret::new("")], &[Secret::new(" ")]);
        assert!(open.is_open());
        assert_eq!(open.authenticate(None), Ok(Ok(Caller::Open)));
    }

    #[test]
    fn debug_output_never_contains_a_token() {
        let printed = format!("{:?} {:?}", tokens(), Secret::new("api-one"));
        assert!(!printed.contains("api-one"), "{printed}");
    }
}
