use heft_service::{
    ErrorCode, FieldViolation, InvalidRequest, ServiceError, auth::AuthError, to_status,
};

use crate::{store::StoreError, users_client::UsersError};

/// Everything an EntryService call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(
        "purge incomplete before the deadline: {deleted} entries deleted by this call, \
         {total} in all; the next call resumes"
    )]
    PurgeIncomplete { deleted: u64, total: u64 },
}

impl ApiError {
    fn inner(&self) -> Option<&dyn ServiceError> {
        match self {
            ApiError::Invalid(e) => Some(e),
            ApiError::Store(e) => Some(e),
            ApiError::Users(e) => Some(e),
            ApiError::Auth(e) => Some(e),
            ApiError::PurgeIncomplete { .. } => None,
        }
    }
}

impl ServiceError for ApiError {
    fn error_code(&self) -> ErrorCode {
        self.inner()
            .map_or(ErrorCode::DeadlineExceeded, ServiceError::error_code)
    }

    fn reason(&self) -> &'static str {
        self.inner()
            .map_or(heft_service::peer::PURGE_INCOMPLETE, ServiceError::reason)
    }

    fn field_violations(&self) -> &[FieldViolation] {
        self.inner().map_or(&[], ServiceError::field_violations)
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        to_status(&error)
    }
}
