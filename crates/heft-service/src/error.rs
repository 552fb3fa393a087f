//! Service errors as `tonic::Status` (Google AIP-193).
//!
//! Each layer of a service has its own error enum; every variant names an
//! [`ErrorCode`] from this deliberately small set and an UPPER_SNAKE reason.
//! [`to_status`] turns any of them into a status with `google.rpc.ErrorInfo`,
//! a `google.rpc.BadRequest` for invalid fields and `google.rpc.RetryInfo`,
//! assembled by `heft_proto::status` (which the codec uses too). A layer that
//! wraps the errors of the layers below ([`LayeredError`]) passes them
//! through unchanged; [`into_status!`](crate::into_status) gives each error
//! type its `From<_> for tonic::Status`, so that handlers use `?`.

use std::time::Duration;

use heft_proto::status::ErrorStatus;
use tonic::{Code, Status};

pub use heft_proto::status::ERROR_DOMAIN;

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

    /// A key and value for `ErrorInfo.metadata`, if the error names one.
    fn metadata(&self) -> Option<(&'static str, &'static str)> {
        None
    }
}

/// What one variant of a layered error is: an error of a layer below,
/// passed through as it is, or one of the layer's own.
pub enum Layer<'a> {
    Inner(&'a dyn ServiceError),
    Own {
        code: ErrorCode,
        reason: &'static str,
        retry_after: Option<Duration>,
        metadata: Option<(&'static str, &'static str)>,
    },
}

impl Layer<'_> {
    /// An error of the layer's own, with nothing to wait for.
    pub fn own(code: ErrorCode, reason: &'static str) -> Self {
        Layer::Own {
            code,
            reason,
            retry_after: None,
            metadata: None,
        }
    }
}

/// An error enum that wraps the errors of the layers below it (a store's
/// database errors, an API's invalid requests and store errors) beside
/// variants of its own: saying which is which is all it writes.
pub trait LayeredError: std::error::Error {
    fn layer(&self) -> Layer<'_>;
}

impl<E: LayeredError> ServiceError for E {
    fn error_code(&self) -> ErrorCode {
        match self.layer() {
            Layer::Inner(inner) => inner.error_code(),
            Layer::Own { code, .. } => code,
        }
    }

    fn reason(&self) -> &'static str {
        match self.layer() {
            Layer::Inner(inner) => inner.reason(),
            Layer::Own { reason, .. } => reason,
        }
    }

    fn field_violations(&self) -> &[FieldViolation] {
        match self.layer() {
            Layer::Inner(inner) => inner.field_violations(),
            Layer::Own { .. } => &[],
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self.layer() {
            Layer::Inner(inner) => inner.retry_after(),
            Layer::Own { retry_after, .. } => retry_after,
        }
    }

    fn metadata(&self) -> Option<(&'static str, &'static str)> {
        match self.layer() {
            Layer::Inner(inner) => inner.metadata(),
            Layer::Own { metadata, .. } => metadata,
        }
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
    let violations: Vec<(&str, &str)> = error
        .field_violations()
        .iter()
        .map(|violation| (violation.field.as_str(), violation.description.as_str()))
        .collect();
    ErrorStatus {
        code: code.into(),
        reason: error.reason(),
        message: &message,
        violations: &violations,
        retry_after: error.retry_after(),
        metadata: error.metadata(),
    }
    .to_status()
}

/// `impl From<E> for tonic::Status` through [`to_status`], for each error
/// type named, so that a handler's `?` turns any of them into its answer.
/// (The orphan rule allows no blanket impl; each crate names its own types.)
#[macro_export]
macro_rules! into_status {
    ($($error:ty),+ $(,)?) => {
        $(
            impl ::core::convert::From<$error> for ::tonic::Status {
                fn from(error: $error) -> Self {
                    $crate::error::to_status(&error)
                }
            }
        )+
    };
}

into_status!(InvalidRequest, crate::db::DbError, crate::auth::AuthError);

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
    use tonic_types::StatusExt;

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
