use std::time::Duration;

use heft_service::{
    ErrorCode, InvalidRequest,
    auth::AuthError,
    error::{Layer, LayeredError},
};

use crate::{password::HashError, store::StoreError};

/// Everything a UserService call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hashing(#[from] HashError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("email or password is incorrect")]
    BadCredentials,
    #[error("current password is incorrect")]
    WrongCurrentPassword,
    #[error("too many failed logins for this email; try again in {} seconds", .retry_after.as_secs().max(1))]
    LoginLocked { retry_after: Duration },
}

impl LayeredError for ApiError {
    fn layer(&self) -> Layer<'_> {
        match self {
            ApiError::Invalid(e) => Layer::Inner(e),
            ApiError::Store(e) => Layer::Inner(e),
            ApiError::Hashing(e) => Layer::Inner(e),
            ApiError::Auth(e) => Layer::Inner(e),
            ApiError::BadCredentials => Layer::own(ErrorCode::Unauthenticated, "BAD_CREDENTIALS"),
            ApiError::WrongCurrentPassword => {
                Layer::own(ErrorCode::Unauthenticated, "WRONG_CURRENT_PASSWORD")
            }
            ApiError::LoginLocked { retry_after } => Layer::Own {
                code: ErrorCode::ResourceExhausted,
                reason: "TOO_MANY_FAILED_LOGINS",
                retry_after: Some(*retry_after),
            },
        }
    }
}

heft_service::into_status!(ApiError);
