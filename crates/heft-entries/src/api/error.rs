use heft_proto::entries::v1::reason::{PURGE_INCOMPLETE, USER_EXISTS};
use heft_service::{
    ErrorCode,
    error::{Layer, LayeredError},
};

/// What the entries API refuses on its own. The errors of the layers below
/// (invalid requests, the store, the users service) reach the caller
/// through their own `From<_> for Status`, so a handler's `?` takes any of them.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "purge incomplete before the deadline: {deleted} entries deleted by this call, \
         {total} in all; the next call resumes"
    )]
    PurgeIncomplete { deleted: u64, total: u64 },
    #[error("the user still exists in the users service: nothing was purged")]
    UserExists,
    #[error("cannot confirm with the users service that the user is deleted: nothing was purged")]
    DeletionUnconfirmed,
}

impl LayeredError for ApiError {
    fn layer(&self) -> Layer<'_> {
        match self {
            ApiError::PurgeIncomplete { .. } => {
                Layer::own(ErrorCode::DeadlineExceeded, PURGE_INCOMPLETE)
            }
            ApiError::UserExists => Layer::own(ErrorCode::FailedPrecondition, USER_EXISTS),
            ApiError::DeletionUnconfirmed => {
                Layer::own(ErrorCode::Unavailable, "DELETION_UNCONFIRMED")
            }
        }
    }
}

heft_service::into_status!(ApiError);
