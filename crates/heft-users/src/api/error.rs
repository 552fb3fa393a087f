use std::time::Duration;

use heft_service::{
    ErrorCode,
    error::{Layer, LayeredError},
};

/// What the users API refuses on its own. The errors of the layers below
/// (invalid requests, the store, hashing) reach the caller through their
/// own `From<_> for Status`, so a handler's `?` takes any of them.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("email or password is incorrect")]
    BadCredentials,
    #[error("current password is incorrect")]
    WrongCurrentPassword,
    #[error("too many failed logins for this email; try again in {} seconds", .retry_after.as_secs().max(1))]
    LoginLocked { retry_after: Duration },
    #[error("cannot sign a user token")]
    TokenSigning(#[source] anyhow::Error),
}

impl LayeredError for ApiError {
    fn layer(&self) -> Layer<'_> {
        match self {
            ApiError::BadCredentials => Layer::own(ErrorCode::Unauthenticated, "BAD_CREDENTIALS"),
            ApiError::WrongCurrentPassword => {
                Layer::own(ErrorCode::Unauthenticated, "WRONG_CURRENT_PASSWORD")
            }
            ApiError::TokenSigning(_) => Layer::own(ErrorCode::Internal, "TOKEN_SIGNING"),
            ApiError::LoginLocked { retry_after } => Layer::Own {
                code: ErrorCode::ResourceExhausted,
                reason: "TOO_MANY_FAILED_LOGINS",
                retry_after: Some(*retry_after),
                metadata: None,
            },
        }
    }
}

heft_service::into_status!(ApiError);
