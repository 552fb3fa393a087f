//! Small hostile requests, sent as raw protobuf bytes to both services as
//! processes: each is refused before it is materialised, and the service's
//! peak resident memory (`VmHWM`) grows by no more than a small multiple of
//! the message.

mod common;

use std::future::Future;

use bytes::{Buf, BufMut};
use common::{Process, Stack, authorized};
use heft_proto::{
    codec::{MAX_BATCH_ENTRIES, MAX_BATCH_MESSAGE_BYTES},
    common::v1::{Weight, WeightUnit},
    entries::v1::{self as entries_pb, entry_service_client::EntryServiceClient},
    google::r#type::Date,
};
use heft_test_support::TestDatabase;
use http::uri::PathAndQuery;
use prost::Message;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};
use tonic_types::StatusExt;

/// Sends and receives messages as the bytes they are on the wire.
#[derive(Debug, Default, Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

/// Calls `path` on `process` with `message` as its raw body.
async fn call_raw(process: &Process, path: &'static str, message: Vec<u8>) -> Status {
    let channel = Channel::from_shared(format!("http://{}", process.spec.listen))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    match grpc
        .unary::<Vec<u8>, Vec<u8>, _>(
            authorized(message),
            PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
    {
        Ok(_) => panic!("{path}: a hostile request was accepted"),
        Err(status) => status,
    }
}

fn varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// A length-delimited field.
fn field(buf: &mut Vec<u8>, number: u32, payload: &[u8]) {
    varint(buf, u64::from(number << 3 | 2));
    varint(buf, payload.len() as u64);
    buf.extend_from_slice(payload);
}

/// `count` empty occurrences of length-delimited field `number`.
fn empty_fields(number: u32, count: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(count * 2);
    for _ in 0..count {
        field(&mut buf, number, &[]);
    }
    buf
}

/// Peak resident memory before and after `send`, in KiB.
async fn peak_growth<F: Future<Output = Status>>(process: &Process, send: F) -> (Status, u64) {
    let before = process.memory_kib("VmHWM");
    let status = send.await;
    let after = process.memory_kib("VmHWM");
    (status, after.saturating_sub(before))
}

fn assert_bounded(what: &str, growth_kib: u64, message_bytes: usize) {
    let message_kib = (message_bytes / 1024) as u64;
    eprintln!("{what}: message {message_kib} KiB, peak RSS grew by {growth_kib} KiB");
    assert!(
        growth_kib <= 3 * message_kib + 8 * 1024,
        "{what}: peak RSS grew by {growth_kib} KiB for a {message_kib} KiB message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_messages_are_refused_with_bounded_memory() {
    let stack = Stack::new(TestDatabase::sqlite()).await;
    let (users, entries) = stack.start().await;
    let mut clients = stack.clients();
    let user = clients.create_user().await;

    // UpdateUser whose update mask holds 1.9 million empty paths (3.8 MB).
    let mut user_message = Vec::new();
    field(&mut user_message, 1, user.as_bytes());
    let mut update = Vec::new();
    field(&mut update, 1, &user_message);
    field(&mut update, 2, &empty_fields(1, 1_900_000));
    let size = update.len();
    let (status, growth) = peak_growth(
        &users,
        call_raw(&users, "/heft.users.v1.UserService/UpdateUser", update),
    )
    .await;
    // Over UpdateUser's limit: refused from the length prefix.
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().len() < 1_000, "not echoed back");
    assert_bounded("UpdateUser mask of 1.9M paths", growth, size);

    // The same mask within UpdateUser's limit is counted on the wire.
    let mut update = Vec::new();
    field(&mut update, 1, &user_message);
    field(&mut update, 2, &empty_fields(1, 1_000));
    let status = call_raw(&users, "/heft.users.v1.UserService/UpdateUser", update).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // BatchCreateEntries holding 8 million empty entries (16 MB).
    let mut batch = Vec::new();
    field(&mut batch, 1, user.as_bytes());
    batch.extend(empty_fields(2, 8_000_000));
    let size = batch.len();
    let (status, growth) = peak_growth(
        &entries,
        call_raw(
            &entries,
            "/heft.entries.v1.EntryService/BatchCreateEntries",
            batch,
        ),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_bounded("BatchCreateEntries of 8M entries", growth, size);

    // 10,000 entries that are all invalid: 20,000 violations, of which the
    // first 100 are listed and the rest counted.
    let mut invalid = Vec::new();
    field(&mut invalid, 1, user.as_bytes());
    invalid.extend(empty_fields(2, 10_000));
    let status = call_raw(
        &entries,
        "/heft.entries.v1.EntryService/BatchCreateEntries",
        invalid,
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let listed = status
        .get_details_bad_request()
        .expect("bad request")
        .field_violations;
    assert_eq!(listed.len(), 101, "100 listed and a count of the rest");
    assert!(
        listed[100].description.contains("19900 more"),
        "{:?}",
        listed[100]
    );

    // Every other method has a limit of a few KiB.
    let mut oversized = Vec::new();
    field(&mut oversized, 1, user.as_bytes());
    field(&mut oversized, 4, &vec![b'x'; 5 * 1024 * 1024]);
    let status = call_raw(
        &entries,
        "/heft.entries.v1.EntryService/CreateEntry",
        oversized,
    )
    .await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The services are still there and nothing stored was lost.
    assert!(clients.get_user(&user).await.is_ok());
    assert_eq!(clients.count_entries(&user).await, 0);
    drop((users, entries));
}

/// A raw CreateEntry request for `user` whose note is `note_bytes` long.
fn create_entry_with_note(user: &str, note_bytes: usize) -> Vec<u8> {
    let mut message = Vec::new();
    field(&mut message, 1, user.as_bytes());
    field(&mut message, 4, &vec![b'x'; note_bytes]);
    message
}

/// A full-size BatchCreateEntries: the most entries, each with a 480-character note.
fn full_batch(user_id: &str) -> entries_pb::BatchCreateEntriesRequest {
    let note = "n".repeat(480);
    entries_pb::BatchCreateEntriesRequest {
        user_id: user_id.to_owned(),
        entries: (0..MAX_BATCH_ENTRIES)
            .map(|i| entries_pb::NewEntry {
                weight: Some(Weight {
                    value: 70.0,
                    unit: WeightUnit::Kilograms as i32,
                }),
                recorded_on: Some(Date {
                    year: 1990 + (i / 300) as i32,
                    month: 1 + (i % 12) as i32,
                    day: 1 + (i % 28) as i32,
                }),
                note: note.clone(),
            })
            .collect(),
    }
}

/// Many oversized or large calls at once: memory is bounded across calls,
/// not only per call. Oversized calls are refused from their length prefix
/// before their bodies are read; full batches take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_large_calls_hold_bounded_memory() {
    const MIB: u64 = 1024;
    let stack = Stack::new(TestDatabase::sqlite()).await;
    let (_users, entries) = stack.start().await;
    let mut clients = stack.clients();
    let user = clients.create_user().await;

    // 96 CreateEntry calls of 10 MiB each, over CreateEntry's few KiB.
    let calls = (0..96).map(|_| {
        call_raw(
            &entries,
            "/heft.entries.v1.EntryService/CreateEntry",
            create_entry_with_note(&user, 10 * 1024 * 1024),
        )
    });
    for status in futures::future::join_all(calls).await {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "MESSAGE_TOO_LARGE");
    }
    let peak = entries.memory_kib("VmHWM");
    eprintln!(
        "96 concurrent 10 MiB CreateEntry: peak RSS {} MiB",
        peak / MIB
    );
    assert!(peak < 150 * MIB, "peak RSS {} MiB", peak / MIB);

    // 64 full-size batches at once, for a user that does not exist.
    let batch = full_batch(&uuid::Uuid::new_v4().to_string()).encode_to_vec();
    let calls = (0..64).map(|_| {
        call_raw(
            &entries,
            "/heft.entries.v1.EntryService/BatchCreateEntries",
            batch.clone(),
        )
    });
    let mut busy = 0;
    for status in futures::future::join_all(calls).await {
        match status.code() {
            Code::NotFound | Code::FailedPrecondition => {}
            Code::ResourceExhausted => {
                assert!(status.get_details_retry_info().is_some(), "{status:?}");
                busy += 1;
            }
            _ => panic!("{status:?}"),
        }
    }
    let peak = entries.memory_kib("VmHWM");
    eprintln!(
        "64 concurrent full batches ({} bytes each, {busy} asked to retry): peak RSS {} MiB",
        batch.len(),
        peak / MIB
    );
    assert!(peak < 250 * MIB, "peak RSS {} MiB", peak / MIB);

    // A full legitimate batch still works.
    let mut client = EntryServiceClient::new(
        Channel::from_shared(format!("http://{}", entries.spec.listen))
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    )
    .max_decoding_message_size(MAX_BATCH_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_BATCH_MESSAGE_BYTES);
    let created = client
        .batch_create_entries(authorized(full_batch(&user)))
        .await
        .expect("a full batch")
        .into_inner();
    assert_eq!(created.entries.len(), MAX_BATCH_ENTRIES);
}

/// 200 calls without a token to an unknown 8 KB path: the path is never
/// echoed and refusals log at debug, so the log grows by far less than
/// the calls' paths (200 × 8 KB = 1.6 MB).
#[tokio::test]
async fn unauthenticated_calls_to_unknown_paths_cannot_flood_the_log() {
    let stack = Stack::new(TestDatabase::sqlite()).await;
    let (users, _entries) = stack.start().await;
    let channel = Channel::from_shared(format!("http://{}", users.spec.listen))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let path = format!("/heft.users.v1.UserService/{}", "x".repeat(8 * 1024));
    let before = users.log_text().len();
    for _ in 0..200 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let status = grpc
            .unary::<Vec<u8>, Vec<u8>, _>(
                tonic::Request::new(Vec::new()),
                PathAndQuery::try_from(path.as_str()).expect("path"),
                RawCodec,
            )
            .await
            .expect_err("no token");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // The log is read by a thread of the test: give it the last lines.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = users.log_text();
    let grown = log.len() - before;
    eprintln!("log growth for 200 refused calls: {grown} bytes");
    assert!(
        grown < 20 * 1024,
        "the log grew by {grown} bytes for 200 refused calls"
    );
    assert!(
        !log.contains(&"x".repeat(100)),
        "the unknown path is never echoed"
    );
    let page = users.scrape().await;
    assert!(
        page.contains(r#"heft_rpc_requests_total{method="unknown",code="UNAUTHENTICATED",caller="refused"} 200"#),
        "refusals are counted: {page}"
    );
}
