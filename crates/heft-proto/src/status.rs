//! How every heft error travels: a `tonic::Status` with AIP-193 details.
//!
//! The one place that assembles them. `heft_service::error::to_status` builds
//! the status of every service error through it, and the codec (which runs
//! inside tonic, before any heft layer sees the request) builds its refusals
//! through it too, so a client reads one shape whatever refused the call.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The domain of every `google.rpc.ErrorInfo` heft returns.
pub const ERROR_DOMAIN: &str = "heft";

/// An error as the caller sees it.
#[derive(Debug, Clone, Copy)]
pub struct ErrorStatus<'a> {
    pub code: Code,
    /// UPPER_SNAKE_CASE, stable: clients may match on it (`ErrorInfo.reason`).
    pub reason: &'a str,
    pub message: &'a str,
    /// `(field, description)` of each invalid field (`BadRequest`).
    pub violations: &'a [(&'a str, &'a str)],
    /// How long to wait before retrying, when known (`RetryInfo`).
    pub retry_after: Option<Duration>,
    /// A key and value for `ErrorInfo.metadata` (the scope a caller lacks).
    pub metadata: Option<(&'a str, &'a str)>,
}

impl ErrorStatus<'_> {
    pub fn to_status(&self) -> Status {
        let mut details = ErrorDetails::new();
        let metadata: HashMap<String, String> = self
            .metadata
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .into_iter()
            .collect();
        details.set_error_info(self.reason, ERROR_DOMAIN, metadata);
        for (field, description) in self.violations {
            details.add_bad_request_violation(*field, *description);
        }
        if let Some(delay) = self.retry_after {
            details.set_retry_info(Some(delay));
        }
        Status::with_error_details(self.code, self.message, details)
    }
}
