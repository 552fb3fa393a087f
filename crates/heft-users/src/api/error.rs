use std::time::Duration;

use heft_service::{
    ErrorCode, FieldViolation, InvalidRequest, ServiceError, auth::AuthError, to_status,
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

impl ServiceError for ApiError {
    fn error_code(&self) -> ErrorCode {
        match self {
            ApiError::Invalid(e) => e.error_code(),
            ApiError::Store(e) => e.error_code(),
            ApiError::Hashing(e) => e.error_code(),
            ApiError::Auth(e) => e.error_code(),
            ApiError::BadCredentials | ApiError::WrongCurrentPassword => ErrorCode::Unauthenticated,
            ApiError::LoginLocked { .. } => ErrorCode::ResourceExhausted,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::Invalid(e) => e.reason(),
            ApiError::Store(e) => e.reason(),
            ApiError::Hashing(e) => e.reason(),
            ApiError::Auth(e) => e.reason(),
            ApiError::BadCredentials => "BAD_CREDENTIALS",
            ApiError::WrongCurrentPassword => "WRONG_CURRENT_PASSWORD",
            ApiError::LoginLocked { .. } => "TOO_MANY_FAILED_LOGINS",
        }
    }

    fn field_violations(&self) -> &[FieldViolation] {
        match self {
            ApiError::Invalid(e) => e.field_violations(),
            _ => &[],
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::LoginLocked { retry_after } => Some(*retry_after),
            ApiError::Hashing(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        to_status(&error)
    }
}
