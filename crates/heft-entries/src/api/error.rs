use heft_proto::entries::v1::reason::PURGE_INCOMPLETE;
use heft_service::{
    ErrorCode, InvalidRequest,
    auth::AuthError,
    error::{Layer, LayeredError},
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

impl LayeredError for ApiError {
    fn layer(&self) -> Layer<'_> {
        match self {
            ApiError::Invalid(e) => Layer::Inner(e),
            ApiError::Store(e) => Layer::Inner(e),
            ApiError::Users(e) => Layer::Inner(e),
            ApiError::Auth(e) => Layer::Inner(e),
            ApiError::PurgeIncomplete { .. } => {
                Layer::own(ErrorCode::DeadlineExceeded, PURGE_INCOMPLETE)
            }
        }
    }
}

heft_service::into_status!(ApiError);
