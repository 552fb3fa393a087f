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
}

impl ApiError {
    fn inner(&self) -> &dyn ServiceError {
        match self {
            ApiError::Invalid(e) => e,
            ApiError::Store(e) => e,
            ApiError::Users(e) => e,
            ApiError::Auth(e) => e,
        }
    }
}

impl ServiceError for ApiError {
    fn error_code(&self) -> ErrorCode {
        self.inner().error_code()
    }

    fn reason(&self) -> &'static str {
        self.inner().reason()
    }

    fn field_violations(&self) -> &[FieldViolation] {
        self.inner().field_violations()
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        to_status(&error)
    }
}
