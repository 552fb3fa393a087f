//! The one place where service errors become `tonic::Status` (Google AIP-193).
//!
//! Each layer of a service has its own error enum; every variant names an
//! [`ErrorCode`] from this deliberately small set and an UPPER_SNAKE reason.
//! [`to_status`] turns any of them into a status with `google.rpc.ErrorInfo`,
//! a `google.rpc.BadRequest` for invalid fields and `google.rpc.RetryInfo`.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The domain of every `google.rpc.ErrorInfo` heft returns.
pub const ERROR_DOMAIN: &str = "heft";

/// The status codes heft answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unauthenticated,
    PermissionDenied,
    ResourceExhausted,
    DeadlineExceeded,
    Unavailable,
    Internal,
}

impl From<ErrorCode> for Code {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::FailedPrecondition => Code::FailedPrecondition,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::ResourceExhausted => Code::ResourceExhausted,
            ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Internal => Code::Internal,
        }
    }
}

/// One invalid request field: its path (`weight.value`, `entries[3].note`)
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// What every error of every layer tells the edge.
pub trait ServiceError: std::error::Error {
    fn error_code(&self) -> ErrorCode;

    /// UPPER_SNAKE_CASE, stable: clients may match on it.
    fn reason(&self) -> &'static str;

    fn field_violations(&self) -> &[FieldViolation] {
        &[]
    }

    /// How long the caller should wait before retrying, if that is known.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// Builds the status for an error. Internal errors are logged here with their
/// cause and reach the caller only as "internal error".
pub fn to_status(error: &dyn ServiceError) -> Status {
    let code = error.error_code();
    let message = if code == ErrorCode::Internal {
        tracing::error!(error = %DisplayChain(error), "internal error");
        "internal error".to_owned()
    } else {
        error.to_string()
    };

    let mut details = ErrorDetails::new();
    details.set_error_info(
        error.reason(),
        ERROR_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    for violation in error.field_violations() {
        details.add_bad_request_violation(&violation.field, &violation.description);
    }
    if let Some(delay) = error.retry_after() {
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(code.into(), message, details)
}

/// Formats an error with its chain of sources: `a: b: c`.
pub struct DisplayChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Most field violations one error lists.
pub const MAX_VIOLATIONS: usize = 100;

/// Collects every invalid field of a request, so that one `BadRequest`
/// names them all instead of the first one found. It keeps the first
/// [`MAX_VIOLATIONS`] and only counts the rest: a request with a million bad
/// fields costs a counter, not a million strings.
#[derive(Debug, Default)]
pub struct Violations {
    listed: Vec<FieldViolation>,
    unlisted: usize,
}

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the value, or records why `field` is invalid.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: impl Into<String>,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.push(|| FieldViolation::new(field, error.to_string()));
                None
            }
        }
    }

    /// Keeps the value, or records every violation of a nested check
    /// (an update mask, say) alongside this request's own.
    pub fn merge<T>(&mut self, result: Result<T, InvalidRequest>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(invalid) => {
                for violation in invalid.0 {
                    self.push(|| violation);
                }
                None
            }
        }
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.push(|| FieldViolation::new(field, description));
    }

    /// Builds the violation only while there is room to list it.
    fn push(&mut self, violation: impl FnOnce() -> FieldViolation) {
        if self.listed.len() < MAX_VIOLATIONS {
            self.listed.push(violation());
        } else {
            self.unlisted += 1;
        }
    }

    /// `Ok(())` when nothing was recorded. Errors travel in response
    /// headers, so a request with thousands of bad fields (a large batch)
    /// reports the first [`MAX_VIOLATIONS`] and counts the rest.
    pub fn into_result(mut self) -> Result<(), InvalidRequest> {
        if self.listed.is_empty() {
            return Ok(());
        }
        if self.unlisted > 0 {
            self.listed.push(FieldViolation::new(
                "",
                format!("and {} more invalid fields, not listed", self.unlisted),
            ));
        }
        Err(InvalidRequest(self.listed))
    }
}

/// A value kept by [`Violations::check`], once [`Violations::into_result`]
/// said there was no violation: a failed check always records one.
pub fn checked<T>(value: Option<T>) -> T {
    value.unwrap_or_else(|| unreachable!("a failed check records a violation"))
}

/// A request with one or more invalid fields.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid request: {}", describe(.0))]
pub struct InvalidRequest(pub Vec<FieldViolation>);

impl InvalidRequest {
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self(vec![FieldViolation::new(field, description)])
    }
}

/// The first few violations, for the status message; details list them all.
fn describe(violations: &[FieldViolation]) -> String {
    const SHOWN: usize = 5;
    let mut text = violations
        .iter()
        .take(SHOWN)
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > SHOWN {
        text.push_str(&format!("; and {} more", violations.len() - SHOWN));
    }
    text
}

impl ServiceError for InvalidRequest {
    fn error_code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }

    fn reason(&self) -> &'static str {
        "INVALID_ARGUMENT"
    }

    fn field_violations(&self) -> &[FieldViolation] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_request_names_every_field_in_one_bad_request() {
        let mut violations = Violations::new();
        violations.add("email", "must be an email address");
        violations.add("name", "must not be empty");
        let error = violations.into_result().expect_err("two violations");

        let status = to_status(&error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("invalid request"));
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .expect("bad request")
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["email", "name"]);
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_ARGUMENT");
        assert_eq!(info.domain, ERROR_DOMAIN);
    }
}
