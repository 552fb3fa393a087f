//! The codec of every heft service and client: prost, behind limits checked
//! on the encoded bytes, before anything is materialised.
//!
//! prost turns two bytes of wire into a whole value: an update mask of two
//! million empty paths (4 MB) becomes two million `String`s, a batch of eight
//! million empty entries (16 MB) eight million structs, hundreds of MiB in
//! all, before any handler can look at the count. So each message type says
//! how large it may be and what to count on the wire ([`WireLimits`]), and the
//! decoder refuses a message that breaks its limits with a status naming the
//! field, as the handlers' own validation would.
//!
//! The codec runs inside tonic, before any heft layer sees the request; its
//! refusals are built by [`crate::status`], as every heft error is.

use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use crate::{entries::v1 as entries, status::ErrorStatus, users::v1 as users};

/// Largest response of any method but BatchCreateEntries, and what a
/// service's transport admits.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest BatchCreateEntries request or response: 10,000 entries with
/// 500-character notes of up to 4 bytes per character (~21 MB) fit. Also
/// the largest message the entries service's transport admits.
pub const MAX_BATCH_MESSAGE_BYTES: usize = 24 * 1024 * 1024;
/// Most entries one BatchCreateEntries may carry.
pub const MAX_BATCH_ENTRIES: usize = 10_000;
/// Most paths one update mask may name (every mutable field, many times over).
pub const MAX_MASK_PATHS: usize = 16;
/// Longest path of an update mask, in bytes.
pub const MAX_MASK_PATH_BYTES: usize = 64;

/// A limit a message broke, found on its encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireViolation {
    pub code: Code,
    pub field: &'static str,
    pub description: String,
}

impl WireViolation {
    fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            code: Code::InvalidArgument,
            field,
            description: description.into(),
        }
    }

    /// AIP-193, as every heft error: ErrorInfo and a BadRequest naming the field.
    pub fn to_status(&self) -> Status {
        let reason = match self.code {
            Code::ResourceExhausted => "MESSAGE_TOO_LARGE",
            _ => "INVALID_ARGUMENT",
        };
        ErrorStatus {
            code: self.code,
            reason,
            message: &format!("{}: {}", self.field, self.description),
            violations: &[(self.field, &self.description)],
            retry_after: None,
            metadata: None,
        }
        .to_status()
    }
}

/// What a message type allows on the wire.
pub trait WireLimits {
    /// Largest encoded message.
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;

    /// Counts what must be bounded before decoding. Malformed bytes pass:
    /// prost reports them.
    fn check_wire(_bytes: &[u8]) -> Result<(), WireViolation> {
        Ok(())
    }
}

macro_rules! default_limits {
    ($($message:ty),* $(,)?) => {
        $(impl WireLimits for $message {})*
    };
}

/// Requests: the largest valid request of each method, rounded up to a
/// power of two (docs/contract.md, "Message limits", derives each).
macro_rules! request_limits {
    ($($message:ty = $bytes:expr),* $(,)?) => {
        $(impl WireLimits for $message {
            const MAX_BYTES: usize = $bytes;
        })*
    };
}

const KIB: usize = 1024;

// Responses: the clients' limit (a list page, a summary).
default_limits!(
    (),
    users::ListTokenKeysResponse,
    users::User,
    users::ListUsersResponse,
    users::AuthenticateResponse,
    users::DeleteUserResponse,
    users::PurgeJob,
    users::ListPurgeJobsResponse,
    users::ListUserChangesResponse,
    entries::Entry,
    entries::ListEntriesResponse,
    entries::SummarizeEntriesResponse,
    entries::PurgeUserEntriesResponse,
    entries::ListEntryChangesResponse,
);

request_limits!(
    users::CreateUserRequest = 8 * KIB,
    users::GetUserRequest = KIB,
    users::ListUsersRequest = 2 * KIB,
    users::ChangePasswordRequest = 16 * KIB,
    users::AuthenticateRequest = 8 * KIB,
    users::DeleteUserRequest = KIB,
    users::GetPurgeJobRequest = KIB,
    users::ListPurgeJobsRequest = 2 * KIB,
    users::ListTokenKeysRequest = KIB,
    users::ListUserChangesRequest = 2 * KIB,
    entries::CreateEntryRequest = 4 * KIB,
    entries::GetEntryRequest = KIB,
    entries::ListEntriesRequest = 2 * KIB,
    entries::DeleteEntryRequest = KIB,
    entries::SummarizeEntriesRequest = KIB,
    entries::PurgeUserEntriesRequest = KIB,
    entries::ListEntryChangesRequest = 2 * KIB,
);

impl WireLimits for users::UpdateUserRequest {
    const MAX_BYTES: usize = 4 * KIB;

    fn check_wire(bytes: &[u8]) -> Result<(), WireViolation> {
        check_update_mask(bytes, 2)
    }
}

impl WireLimits for entries::UpdateEntryRequest {
    const MAX_BYTES: usize = 4 * KIB;

    fn check_wire(bytes: &[u8]) -> Result<(), WireViolation> {
        check_update_mask(bytes, 2)
    }
}

impl WireLimits for entries::BatchCreateEntriesRequest {
    const MAX_BYTES: usize = MAX_BATCH_MESSAGE_BYTES;

    fn check_wire(bytes: &[u8]) -> Result<(), WireViolation> {
        let count = WireFields(bytes).filter(|(number, _)| *number == 2).count();
        if count > MAX_BATCH_ENTRIES {
            return Err(WireViolation::invalid(
                "entries",
                format!("at most {MAX_BATCH_ENTRIES} entries per call; got {count}"),
            ));
        }
        Ok(())
    }
}

impl WireLimits for entries::BatchCreateEntriesResponse {
    const MAX_BYTES: usize = MAX_BATCH_MESSAGE_BYTES;
}

/// Largest request of a path heft does not define: health and reflection
/// requests name a service or a symbol.
pub const OTHER_REQUEST_BYTES: usize = 4 * KIB;

/// The largest request of each heft method, by gRPC path.
pub const REQUEST_LIMITS: &[(&str, usize)] = &[
    (
        "/heft.users.v1.UserService/CreateUser",
        users::CreateUserRequest::MAX_BYTES,
    ),
    (
        "/heft.users.v1.UserService/GetUser",
        users::GetUserRequest::MAX_BYTES,
    ),
    (
        "/heft.users.v1.UserService/ListUsers",
        users::ListUsersRequest::MAX_BYTES,
    ),
    (
        "/heft.users.v1.UserService/UpdateUser",
        users::UpdateUserRequest::MAX_BYTES,
    ),
    (
        "/heft.users.v1.UserService/ChangePassword",
        users::ChangePasswordRequest::MAX_BYTES,
    ),
    (
        "/heft.users.v1.UserService/Authenticate",
        users::AuthenticateRequest::MAX_BYTES,
    ),
    (
        "/heft.users.v1.UserService/ListTokenKeys",
        users::ListTokenKeysRequest::MAX_BYTES,
    ),
    (
        "/heft.users.v1.UserService/DeleteUser",
        users::DeleteUserRequest::MAX_BYTES,
    ),
    (
        "/heft.users.v1.UserService/GetPurgeJob",
        users::GetPurgeJobRequest::MAX_BYTES,
    ),
    (
        "/heft.users.v1.UserService/ListPurgeJobs",
        users::ListPurgeJobsRequest::MAX_BYTES,
    ),
    (
        "/heft.users.v1.UserService/ListUserChanges",
        users::ListUserChangesRequest::MAX_BYTES,
    ),
    (
        "/heft.entries.v1.EntryService/CreateEntry",
        entries::CreateEntryRequest::MAX_BYTES,
    ),
    (
        "/heft.entries.v1.EntryService/ListEntryChanges",
        entries::ListEntryChangesRequest::MAX_BYTES,
    ),
    (
        "/heft.entries.v1.EntryService/BatchCreateEntries",
        entries::BatchCreateEntriesRequest::MAX_BYTES,
    ),
    (
        "/heft.entries.v1.EntryService/GetEntry",
        entries::GetEntryRequest::MAX_BYTES,
    ),
    (
        "/heft.entries.v1.EntryService/ListEntries",
        entries::ListEntriesRequest::MAX_BYTES,
    ),
    (
        "/heft.entries.v1.EntryService/UpdateEntry",
        entries::UpdateEntryRequest::MAX_BYTES,
    ),
    (
        "/heft.entries.v1.EntryService/DeleteEntry",
        entries::DeleteEntryRequest::MAX_BYTES,
    ),
    (
        "/heft.entries.v1.EntryService/SummarizeEntries",
        entries::SummarizeEntriesRequest::MAX_BYTES,
    ),
    (
        "/heft.entries.v1.EntryService/PurgeUserEntries",
        entries::PurgeUserEntriesRequest::MAX_BYTES,
    ),
];

/// The largest request `path` (`/package.Service/Method`) admits, read by
/// the server from each message's length prefix before its body.
pub fn max_request_bytes(path: &str) -> usize {
    REQUEST_LIMITS
        .iter()
        .find(|(known, _)| *known == path)
        .map_or(OTHER_REQUEST_BYTES, |(_, bytes)| *bytes)
}

/// The `FieldMask` in field `mask_field` names at most [`MAX_MASK_PATHS`]
/// paths of at most [`MAX_MASK_PATH_BYTES`] bytes (repeated occurrences of
/// the mask merge, so all are counted).
fn check_update_mask(bytes: &[u8], mask_field: u32) -> Result<(), WireViolation> {
    let mut paths = 0;
    for (_, mask) in WireFields(bytes).filter(|(number, _)| *number == mask_field) {
        for (number, path) in WireFields(mask.unwrap_or_default()) {
            if number != 1 {
                continue;
            }
            paths += 1;
            if paths > MAX_MASK_PATHS {
                return Err(WireViolation::invalid(
                    "update_mask",
                    format!("at most {MAX_MASK_PATHS} paths"),
                ));
            }
            if path.is_some_and(|path| path.len() > MAX_MASK_PATH_BYTES) {
                return Err(WireViolation::invalid(
                    "update_mask",
                    format!("paths are at most {MAX_MASK_PATH_BYTES} bytes"),
                ));
            }
        }
    }
    Ok(())
}

/// The top-level fields of an encoded message: `(number, payload)`, the
/// payload only for length-delimited fields. Stops at the first malformed
/// byte (prost reports it when it decodes).
struct WireFields<'a>(&'a [u8]);

impl<'a> Iterator for WireFields<'a> {
    type Item = (u32, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let key = read_varint(&mut self.0)?;
        let number = u32::try_from(key >> 3).ok()?;
        let payload = match key & 0x7 {
            0 => {
                read_varint(&mut self.0)?;
                None
            }
            1 => {
                self.0 = self.0.get(8..)?;
                None
            }
            2 => {
                let len = usize::try_from(read_varint(&mut self.0)?).ok()?;
                let (payload, rest) = (self.0.get(..len)?, self.0.get(len..)?);
                self.0 = rest;
                Some(payload)
            }
            5 => {
                self.0 = self.0.get(4..)?;
                None
            }
            _ => return None,
        };
        Some((number, payload))
    }
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// prost behind [`WireLimits`]: generated code names it through
/// `codec_path` in `build.rs`.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + WireLimits + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = RawEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(PhantomData)
    }
}

/// Encodes without measuring first. prost's `encode` sizes the whole
/// message only to check that a buffer has room, and tonic's buffer grows as
/// it is written: for a page of entries that was a third pass over every
/// entry (each entry's size is measured again for its length prefix).
#[derive(Debug, Clone)]
pub struct RawEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for RawEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode_raw(buf);
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct BoundedDecoder<U>(PhantomData<U>);

impl<U: Message + Default + WireLimits> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        if len > U::MAX_BYTES {
            return Err(WireViolation {
                code: Code::ResourceExhausted,
                field: "",
                description: format!(
                    "message of {len} bytes; this method accepts at most {}",
                    U::MAX_BYTES
                ),
            }
            .to_status());
        }
        // A gRPC message arrives whole, in one contiguous buffer.
        let bytes = buf.chunk();
        if bytes.len() == len {
            U::check_wire(bytes).map_err(|violation| violation.to_status())?;
        }
        U::decode(buf).map(Some).map_err(|error| {
            ErrorStatus {
                code: Code::InvalidArgument,
                reason: "MALFORMED_MESSAGE",
                message: &format!("malformed message: {error}"),
                violations: &[],
                retry_after: None,
                metadata: None,
            }
            .to_status()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(buf: &mut Vec<u8>, number: u32, payload: &[u8]) {
        prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, buf);
        prost::encoding::encode_varint(payload.len() as u64, buf);
        buf.extend_from_slice(payload);
    }

    fn mask(paths: &[&str]) -> Vec<u8> {
        let mut mask = Vec::new();
        for path in paths {
            field(&mut mask, 1, path.as_bytes());
        }
        let mut request = Vec::new();
        field(&mut request, 2, &mask);
        request
    }

    #[test]
    fn update_masks_are_bounded_on_the_wire() {
        assert!(users::UpdateUserRequest::check_wire(&mask(&["name", "email"])).is_ok());
        let many = vec![""; MAX_MASK_PATHS + 1];
        let refused = users::UpdateUserRequest::check_wire(&mask(&many)).expect_err("too many");
        assert_eq!(refused.field, "update_mask");
        let long = "x".repeat(MAX_MASK_PATH_BYTES + 1);
        assert!(entries::UpdateEntryRequest::check_wire(&mask(&[&long])).is_err());
        // The same request decodes to what the wire said.
        let decoded =
            users::UpdateUserRequest::decode(mask(&["name", "email"]).as_slice()).expect("decode");
        assert_eq!(decoded.update_mask.expect("mask").paths, ["name", "email"]);
    }

    #[test]
    fn batches_are_counted_on_the_wire() {
        let mut batch = Vec::new();
        field(&mut batch, 1, b"user");
        for _ in 0..MAX_BATCH_ENTRIES {
            field(&mut batch, 2, &[]);
        }
        assert!(entries::BatchCreateEntriesRequest::check_wire(&batch).is_ok());
        field(&mut batch, 2, &[]);
        let refused = entries::BatchCreateEntriesRequest::check_wire(&batch).expect_err("too many");
        assert_eq!(refused.field, "entries");
        assert_eq!(refused.to_status().code(), Code::InvalidArgument);
    }

    #[test]
    fn every_method_has_a_request_limit() {
        let descriptors = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("descriptors");
        let mut paths: Vec<String> = descriptors
            .file
            .iter()
            .flat_map(|file| {
                file.service.iter().flat_map(move |service| {
                    service.method.iter().map(move |method| {
                        format!("/{}.{}/{}", file.package(), service.name(), method.name())
                    })
                })
            })
            .collect();
        paths.sort();
        let mut limited: Vec<String> = REQUEST_LIMITS
            .iter()
            .map(|(path, _)| path.to_string())
            .collect();
        limited.sort();
        assert_eq!(paths, limited);
        assert_eq!(
            max_request_bytes("/grpc.health.v1.Health/Check"),
            OTHER_REQUEST_BYTES
        );
    }

    #[test]
    fn malformed_bytes_are_left_to_prost() {
        assert!(entries::BatchCreateEntriesRequest::check_wire(&[0xff, 0xff]).is_ok());
        assert!(users::UpdateUserRequest::check_wire(&[0x12, 0x7f, 0x01]).is_ok());
    }
}
