//! Traces end to end: both services as processes exporting over OTLP/gRPC
//! to a receiver in this test (the collector's protocol). One DeleteUser
//! sent with a known `traceparent` is one trace across both services; a
//! redelivery by the dispatcher is a trace of its own linked to it; no
//! span carries personal data; shutdown flushes what the exporter holds.

mod common;

use std::time::Duration;

use common::{API_TOKEN, INTERNAL_TOKEN, PURGED, Process, Stack, authorized, with_token};
use heft_proto::{
    common::v1::{Weight, WeightUnit},
    entries::v1 as entries_pb,
    google::r#type::Date,
    users::v1 as users_pb,
};
use heft_test_support::{
    TestDatabase, backend_tests,
    otlp::{OtlpReceiver, ReceivedSpan},
};

backend_tests!(a_deletion_is_one_trace_across_both_services);

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const REDELIVERED_TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
const EMAIL: &str = "trace.subject.7319@example.com";
const NAME: &str = "Tracy Subjectname";
const PASSWORD: &str = "passphrase-never-in-a-span";
const NOTE: &str = "a-private-note-about-my-weight";

const DELETE_USER: &str = "heft.users.v1.UserService/DeleteUser";
const PURGE_USER_ENTRIES: &str = "heft.entries.v1.EntryService/PurgeUserEntries";

/// Both services exporting to `receiver`, quickly.
fn exporting_to(stack: &mut Stack, receiver: &OtlpReceiver) {
    for spec in [&mut stack.users_spec, &mut stack.entries_spec] {
        spec.env = exporter_env(receiver, "100");
    }
}

fn exporter_env(receiver: &OtlpReceiver, schedule_delay_ms: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), schedule_delay_ms.into()),
        ("HEFT_LOG_FORMAT".into(), "json".into()),
    ]
}

fn traceparent(
    trace_id: &str,
    span_id: &str,
) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("00-{trace_id}-{span_id}-01")
        .parse()
        .expect("ascii")
}

fn find<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    name: &str,
    trace_id: &str,
) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|span| span.service == service && span.name() == name && span.trace_id() == trace_id)
}

fn children<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|span| {
            span.trace_id() == parent.trace_id() && span.parent_span_id() == parent.span_id()
        })
        .collect()
}

/// A user with a name, a password, an entry with a note, logged in once
/// and listing with its own token: every kind of personal data a span
/// could pick up.
async fn user_with_personal_data(stack: &Stack, email: &str) -> String {
    let mut clients = stack.clients();
    let user = clients
        .users
        .create_user(authorized(users_pb::CreateUserRequest {
            email: email.into(),
            name: NAME.into(),
            password: PASSWORD.into(),
            weight_unit: WeightUnit::Kilograms as i32,
        }))
        .await
        .expect("create user")
        .into_inner()
        .id;
    clients
        .entries
        .create_entry(authorized(entries_pb::CreateEntryRequest {
            user_id: user.clone(),
            weight: Some(Weight {
                value: 81.5,
                unit: WeightUnit::Kilograms as i32,
            }),
            recorded_on: Some(Date {
                year: 2026,
                month: 3,
                day: 9,
            }),
            note: NOTE.into(),
            request_id: String::new(),
        }))
        .await
        .expect("create entry");
    let login = clients
        .users
        .authenticate(authorized(users_pb::AuthenticateRequest {
            email: email.into(),
            password: PASSWORD.into(),
        }))
        .await
        .expect("authenticate")
        .into_inner();
    clients
        .entries
        .list_entries(with_token(
            entries_pb::ListEntriesRequest {
                user_id: user.clone(),
                ..Default::default()
            },
            &login.access_token,
        ))
        .await
        .expect("list with the user's token");
    user
}

async fn delete_with_traceparent(
    stack: &Stack,
    user: &str,
    trace_id: &str,
) -> users_pb::DeleteUserResponse {
    let mut request = authorized(users_pb::DeleteUserRequest { id: user.into() });
    request
        .metadata_mut()
        .insert("traceparent", traceparent(trace_id, CALLER_SPAN));
    request.metadata_mut().insert(
        "x-request-id",
        format!("req-{trace_id}").parse().expect("ascii"),
    );
    stack
        .clients()
        .users
        .delete_user(request)
        .await
        .expect("delete user")
        .into_inner()
}

async fn a_deletion_is_one_trace_across_both_services(db: TestDatabase) {
    let receiver = OtlpReceiver::start().await;
    let mut stack = Stack::new(db).await;
    exporting_to(&mut stack, &receiver);
    let (users, entries) = stack.start().await;
    let system = match stack.users_db.backend {
        heft_test_support::Backend::Sqlite => "sqlite",
        heft_test_support::Backend::Postgres => "postgresql",
    };

    // The immediate delivery: one trace, the caller's.
    let user = user_with_personal_data(&stack, EMAIL).await;
    let deleted = delete_with_traceparent(&stack, &user, CALLER_TRACE).await;
    assert_eq!(deleted.purge_state, PURGED);
    let spans = receiver
        .wait_until(Duration::from_secs(10), |spans| {
            find(spans, "heft-entries", PURGE_USER_ENTRIES, CALLER_TRACE).is_some()
                && find(spans, "heft-users", DELETE_USER, CALLER_TRACE).is_some()
        })
        .await;
    let delete = find(&spans, "heft-users", DELETE_USER, CALLER_TRACE).expect("DeleteUser span");
    assert_eq!(
        delete.parent_span_id(),
        CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(delete.span.kind, 2, "server");
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "heft.users.v1.UserService"),
        ("rpc.method", "DeleteUser"),
        ("rpc.grpc.status_code", "0"),
        ("heft.request_id", &format!("req-{CALLER_TRACE}")),
    ] {
        assert_eq!(
            delete.attribute(key).as_deref(),
            Some(value),
            "{key} of {delete:?}"
        );
    }
    let under_delete = children(&spans, delete);
    let call = under_delete
        .iter()
        .find(|span| span.name() == PURGE_USER_ENTRIES)
        .unwrap_or_else(|| panic!("client span under DeleteUser: {under_delete:#?}"));
    assert_eq!(
        (call.service.as_str(), call.span.kind),
        ("heft-users", 3),
        "client"
    );
    assert!(
        under_delete.iter().any(|span| span.name() == "delete_user"
            && span.attribute("db.system.name").as_deref() == Some(system)),
        "store span under DeleteUser: {under_delete:#?}"
    );
    let purge = find(&spans, "heft-entries", PURGE_USER_ENTRIES, CALLER_TRACE).expect("purge span");
    assert_eq!(
        purge.parent_span_id(),
        call.span_id(),
        "the purge is the client call's child"
    );
    assert_eq!(
        purge.attribute("heft.request_id").as_deref(),
        Some(&*format!("req-{CALLER_TRACE}"))
    );
    let under_purge: Vec<&str> = children(&spans, purge)
        .iter()
        .map(|span| span.name())
        .collect();
    assert!(
        under_purge.contains(&"leave_tombstone") && under_purge.contains(&"delete_entries_batch"),
        "store spans under the purge: {under_purge:?}"
    );

    // A caller's mistake is recorded with its reason, and is not a server error.
    let missing = stack
        .clients()
        .users
        .get_user(authorized(users_pb::GetUserRequest { id: user.clone() }))
        .await
        .expect_err("deleted");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let refused_get = |span: &&ReceivedSpan| {
        span.name() == "heft.users.v1.UserService/GetUser"
            && (span.service.as_str(), span.span.kind) == ("heft-users", 2)
            && span.attribute("rpc.grpc.status_code").as_deref() == Some("5")
    };
    let spans = receiver
        .wait_until(Duration::from_secs(10), |spans| {
            spans.iter().any(|span| refused_get(&span))
        })
        .await;
    let get = spans.iter().find(refused_get).expect("GetUser span");
    assert_eq!(
        get.attribute("error.type").as_deref(),
        Some("USER_NOT_FOUND")
    );
    assert_ne!(
        get.span.status.as_ref().map(|status| status.code),
        Some(2),
        "not a server error"
    );

    // A redelivery: the entries service is down for the first delivery.
    let second = user_with_personal_data(&stack, "second.subject.7319@example.com").await;
    let entries_spec = entries.spec.clone();
    // The first entries process served the caller's trace.
    let entries_log = entries.stop();
    let pending = delete_with_traceparent(&stack, &second, REDELIVERED_TRACE).await;
    assert_ne!(pending.purge_state, PURGED);
    let entries = entries_spec.start().await;
    let spans = receiver
        .wait_until(Duration::from_secs(20), |spans| {
            spans.iter().any(|span| {
                span.name() == "outbox.delivery"
                    && span.attribute("heft.user_id").as_deref() == Some(&*second)
                    && spans.iter().any(|purge| {
                        purge.service == "heft-entries" && purge.trace_id() == span.trace_id()
                    })
            })
        })
        .await;
    let first_delete =
        find(&spans, "heft-users", DELETE_USER, REDELIVERED_TRACE).expect("second DeleteUser");
    let redelivery = spans
        .iter()
        .find(|span| {
            span.name() == "outbox.delivery"
                && span.attribute("heft.user_id").as_deref() == Some(&*second)
        })
        .expect("redelivery span");
    assert_ne!(
        redelivery.trace_id(),
        REDELIVERED_TRACE,
        "a trace of its own"
    );
    assert_eq!(redelivery.parent_span_id(), "", "a root span");
    assert!(
        redelivery
            .links()
            .contains(&(REDELIVERED_TRACE.to_owned(), first_delete.span_id())),
        "linked to the DeleteUser span: {:?}",
        redelivery.links()
    );
    assert!(
        spans.iter().any(|span| span.service == "heft-entries"
            && span.name() == PURGE_USER_ENTRIES
            && span.trace_id() == redelivery.trace_id()),
        "the purge in the redelivery's trace: {spans:#?}"
    );

    // No span carries personal data or secrets.
    let users_log = users.stop();
    entries.stop();
    let spans = receiver.spans();
    for span in &spans {
        let text = span.all_text();
        for secret in [
            EMAIL,
            "second.subject",
            NAME,
            "Tracy",
            PASSWORD,
            NOTE,
            API_TOKEN,
            INTERNAL_TOKEN,
            "eyJ",
        ] {
            assert!(!text.contains(secret), "{secret:?} in {span:?}: {text}");
        }
    }

    // json logs carry the ids of the span they were written in.
    let logged_in_trace = |log: &str| {
        log.lines()
            .filter(|line| line.contains(&format!("\"trace_id\":\"{CALLER_TRACE}\"")))
            .filter(|line| line.contains("\"span_id\":\""))
            .count()
    };
    assert!(logged_in_trace(&users_log) > 0, "users log:\n{users_log}");
    assert!(
        logged_in_trace(&entries_log) > 0,
        "entries log:\n{entries_log}"
    );

    print_trace(&spans, CALLER_TRACE);
}

/// The trace as the receiver saw it (for the record: `-- --nocapture`).
fn print_trace(spans: &[ReceivedSpan], trace_id: &str) {
    fn print(spans: &[ReceivedSpan], parent: &ReceivedSpan, depth: usize) {
        println!(
            "{:indent$}{} [{}] {:?}",
            "",
            parent.name(),
            parent.service,
            parent.duration(),
            indent = depth * 2
        );
        for child in children(spans, parent) {
            print(spans, child, depth + 1);
        }
    }
    let in_trace: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|span| span.trace_id() == trace_id)
        .cloned()
        .collect();
    let ids: Vec<String> = in_trace.iter().map(ReceivedSpan::span_id).collect();
    for root in in_trace
        .iter()
        .filter(|span| !ids.contains(&span.parent_span_id()))
    {
        print(&in_trace, root, 0);
    }
}

/// Spans still held by the exporter (a minute before its next export) are
/// exported when the service stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_spans_held() {
    let receiver = OtlpReceiver::start().await;
    let mut stack = Stack::new(TestDatabase::sqlite()).await;
    stack.users_spec.env = exporter_env(&receiver, "60000");
    let users: Process = stack.users_spec.start().await;
    let mut clients = stack.clients();
    clients.create_user().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver
            .spans()
            .iter()
            .all(|span| span.name() != "heft.users.v1.UserService/CreateUser"),
        "exported before shutdown: the test proves nothing"
    );
    users.stop();
    let spans = receiver.spans();
    assert!(
        spans
            .iter()
            .any(|span| span.name() == "heft.users.v1.UserService/CreateUser"
                && span.service == "heft-users"),
        "CreateUser not flushed at shutdown: {spans:#?}"
    );
}
