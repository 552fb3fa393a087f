//! Assertions on the statuses the services answer with (AIP-193: a code, an
//! `ErrorInfo` with a reason, and a `BadRequest` naming the fields at fault).

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The status is INVALID_ARGUMENT with one `BadRequest` naming exactly
/// `fields`, in any order (a field named twice must be expected twice).
pub fn assert_invalid(status: &Status, fields: &[&str]) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut named: Vec<_> = status
        .get_error_details()
        .bad_request()
        .expect("bad request details")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    named.sort();
    let mut expected: Vec<_> = fields.iter().map(|f| (*f).to_owned()).collect();
    expected.sort();
    assert_eq!(named, expected, "{status:?}");
}

/// Like [`assert_invalid`], and the status carries an `ErrorInfo` in heft's
/// domain.
pub fn assert_invalid_with_error_info(status: &Status, fields: &[&str]) {
    assert_invalid(status, fields);
    let details = status.get_error_details();
    assert_eq!(details.error_info().expect("error info").domain, "heft");
}

/// The reason of the status's `ErrorInfo`, which must be there.
pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .expect("error info")
        .reason
        .clone()
}

/// Asserts that `request`, a method's largest valid request, fits the
/// message limit its type declares (`heft_proto::codec::WireLimits`).
pub fn assert_fits_its_limit<M: prost::Message + heft_proto::codec::WireLimits>(request: &M) {
    let len = request.encoded_len();
    eprintln!(
        "{}: largest valid {len} bytes, limit {}",
        std::any::type_name::<M>(),
        M::MAX_BYTES
    );
    assert!(len <= M::MAX_BYTES, "{len} bytes > {}", M::MAX_BYTES);
}
