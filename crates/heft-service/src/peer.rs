//! How one heft service reads the other's answers: the one classification
//! of a peer's status, used by the cascade (users → entries) and by the
//! user lookup (entries → users).
//!
//! The rule:
//! - `NOT_FOUND` is an answer, not a failure.
//! - Transient (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`,
//!   `ABORTED`, `CANCELLED`, `UNKNOWN`, which is also what a broken
//!   connection looks like): the peer is down, slow or busy. Retrying helps;
//!   a caller waiting on it is answered `UNAVAILABLE`.
//! - Everything else is a refusal: the peer is up but will not do it
//!   (`UNAUTHENTICATED` or `PERMISSION_DENIED` for a token mismatch,
//!   `UNIMPLEMENTED` for a version mismatch, `INTERNAL`, `INVALID_ARGUMENT`).
//!   Retrying alone does not help until an operator fixes the cause, so it
//!   is logged at error level with what to check; a caller waiting on it is
//!   answered `INTERNAL` (the fault is ours, not the caller's). The cascade
//!   still retries it, at a slower pace: a deletion is never given up.

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The `google.rpc.ErrorInfo` reason of a status, if it carries one.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAnswer {
    NotFound,
    Transient,
    Refused,
}

/// Classifies a failed call to the other heft service.
pub fn classify(status: &Status) -> PeerAnswer {
    match status.code() {
        Code::NotFound => PeerAnswer::NotFound,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown => PeerAnswer::Transient,
        _ => PeerAnswer::Refused,
    }
}

/// What an operator should check when the peer refuses a call;
/// `peer_url_variable` is the setting that says where the peer is.
pub fn what_to_check(code: Code, peer_url_variable: &str) -> String {
    match code {
        Code::Unauthenticated | Code::PermissionDenied => {
            "HEFT_INTERNAL_TOKEN must share a token on both services; \
             during a rotation list the new token second on both, then first on both"
                .to_owned()
        }
        Code::Unimplemented => format!(
            "the other service runs a version without this method (a rolling upgrade in \
             progress?) or {peer_url_variable} points at the wrong service"
        ),
        _ => "the other service's logs, at the request id of this call".to_owned(),
    }
}

/// The canonical UPPER_SNAKE name of a status code, as grpcurl prints it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `CODE: message`, bounded, for logs and the purge job's `last_error`.
pub fn describe(status: &Status) -> String {
    const MAX_MESSAGE_CHARS: usize = 500;
    let message: String = status.message().chars().take(MAX_MESSAGE_CHARS).collect();
    format!("{}: {message}", code_name(status.code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_down_refusing_or_answering() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Unknown,
        ] {
            assert_eq!(classify(&Status::new(code, "")), PeerAnswer::Transient);
        }
        for code in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Internal,
            Code::InvalidArgument,
        ] {
            assert_eq!(classify(&Status::new(code, "")), PeerAnswer::Refused);
        }
        assert_eq!(
            classify(&Status::not_found("no such user")),
            PeerAnswer::NotFound
        );
    }

    #[test]
    fn descriptions_name_the_code_and_stay_bounded() {
        let status = Status::unauthenticated("x".repeat(10_000));
        let text = describe(&status);
        assert!(text.starts_with("UNAUTHENTICATED: x"));
        assert!(text.len() < 600);
    }
}
