//! EntryService through its generated client, against both services
//! running in this process: the entries service and, behind it, the users
//! service.

mod common;

use common::{INTERNAL_TOKEN, Stack, authorized, with_token};
use heft_proto::{
    common::v1::{Weight, WeightUnit},
    entries::v1::{self as pb, entry_service_client::EntryServiceClient},
    google::r#type::Date,
};
use heft_test_support::{
    TestDatabase,
    status::{assert_invalid, reason},
};
use prost_types::FieldMask;
use tonic::{Code, transport::Channel};

const KG: i32 = WeightUnit::Kilograms as i32;
const LB: i32 = WeightUnit::Pounds as i32;

/// Both services on fresh SQLite databases, open (no tokens) unless the
/// test says otherwise.
async fn open_stack() -> Stack {
    Stack::new(TestDatabase::sqlite()).await.without_tokens()
}

async fn entries_client(stack: &Stack) -> EntryServiceClient<Channel> {
    EntryServiceClient::connect(format!("http://{}", stack.entries_spec.listen))
        .await
        .expect("connect")
        // A full batch's response exceeds tonic's default 4 MiB.
        .max_decoding_message_size(heft_proto::codec::MAX_BATCH_MESSAGE_BYTES)
        .max_encoding_message_size(heft_proto::codec::MAX_BATCH_MESSAGE_BYTES)
}

fn date(year: i32, month: i32, day: i32) -> Option<Date> {
    Some(Date { year, month, day })
}

fn weight(value: f64, unit: i32) -> Option<Weight> {
    Some(Weight { value, unit })
}

fn create(user_id: &str, value: f64, unit: i32, day: i32) -> pb::CreateEntryRequest {
    pb::CreateEntryRequest {
        user_id: user_id.to_owned(),
        weight: weight(value, unit),
        recorded_on: date(2024, 3, day),
        note: String::new(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn weights_are_stored_as_given_and_converted_on_read() {
    let stack = open_stack().await;
    let (_users, _entries) = stack.spawn().await;
    let mut client = entries_client(&stack).await;
    let user = stack.clients().create_user().await;

    let created = client
        .create_entry(create(&user, 180.0, LB, 1))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.weight, weight(180.0, LB));
    assert_eq!(created.user_id, user);

    let as_kg = client
        .get_entry(pb::GetEntryRequest {
            id: created.id.clone(),
            unit: KG,
        })
        .await
        .expect("get")
        .into_inner()
        .weight
        .expect("weight");
    assert_eq!(as_kg.unit, KG);
    assert!((as_kg.value - 81.6466266).abs() < 1e-9, "{}", as_kg.value);
    let as_stored = client
        .get_entry(pb::GetEntryRequest {
            id: created.id.clone(),
            unit: 0,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(as_stored, created);

    let missing = client
        .get_entry(pb::GetEntryRequest {
            id: uuid::Uuid::new_v4().to_string(),
            unit: 0,
        })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn invalid_entries_name_every_bad_field() {
    let stack = open_stack().await;
    let (_users, _entries) = stack.spawn().await;
    let mut client = entries_client(&stack).await;

    let status = client
        .create_entry(pb::CreateEntryRequest {
            user_id: "not-a-uuid".into(),
            weight: weight(f64::NAN, 0),
            recorded_on: date(2023, 2, 29),
            note: "x".repeat(501),
            request_id: "again".into(),
        })
        .await
        .expect_err("invalid");
    assert_invalid(
        &status,
        &[
            "user_id",
            "weight.unit",
            "weight.value",
            "recorded_on",
            "note",
            "request_id",
        ],
    );

    // PostgreSQL cannot store U+0000: refused at the edge, on every backend.
    let user = stack.clients().create_user().await;
    for note in ["nul\u{0}byte", "escape\u{1b}[31m", "carriage\rreturn"] {
        let status = client
            .create_entry(pb::CreateEntryRequest {
                user_id: user.clone(),
                weight: weight(80.0, KG),
                recorded_on: date(2024, 1, 1),
                note: note.into(),
                request_id: String::new(),
            })
            .await
            .expect_err("control character");
        assert_invalid(&status, &["note"]);
    }

    let cases = [
        (weight(80.0, 0), date(2024, 1, 1), "weight.unit"),
        (weight(1000.5, KG), date(2024, 1, 1), "weight.value"),
        (weight(-3.0, LB), date(2024, 1, 1), "weight.value"),
        (weight(f64::INFINITY, LB), date(2024, 1, 1), "weight.value"),
        (None, date(2024, 1, 1), "weight"),
        (weight(80.0, KG), date(1899, 12, 31), "recorded_on"),
        (weight(80.0, KG), date(2999, 1, 1), "recorded_on"),
        (weight(80.0, KG), date(2024, 0, 1), "recorded_on"),
        (weight(80.0, KG), None, "recorded_on"),
    ];
    for (weight, recorded_on, field) in cases {
        let status = client
            .create_entry(pb::CreateEntryRequest {
                user_id: user.clone(),
                weight,
                recorded_on,
                note: String::new(),
                request_id: String::new(),
            })
            .await
            .expect_err(field);
        assert_invalid(&status, &[field]);
    }

    // Filter dates outside google.type.Date's years are the caller's mistake.
    let far_out = client
        .list_entries(pb::ListEntriesRequest {
            user_id: user,
            start_date: date(-5000, 1, 1),
            end_date: date(10_000, 1, 1),
            ..Default::default()
        })
        .await
        .expect_err("years out of range");
    assert_invalid(&far_out, &["start_date", "end_date"]);
}

#[tokio::test]
async fn the_user_must_exist_and_the_users_service_be_reachable() {
    let stack = open_stack().await;
    let (users, _entries) = stack.spawn().await;
    let mut client = entries_client(&stack).await;

    let unknown = client
        .create_entry(create(&uuid::Uuid::new_v4().to_string(), 80.0, KG, 1))
        .await
        .expect_err("unknown user");
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(reason(&unknown), "USER_NOT_FOUND");

    let user = stack.clients().create_user().await;
    users.stop().await.expect("stop users");
    let mut client = entries_client(&stack).await;
    let unavailable = client
        .create_entry(create(&user, 80.0, KG, 1))
        .await
        .expect_err("users down");
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");
}

#[tokio::test]
async fn retries_with_a_request_id_return_the_first_entry() {
    let stack = open_stack().await;
    let (_users, _entries) = stack.spawn().await;
    let mut client = entries_client(&stack).await;
    let user = stack.clients().create_user().await;
    let request = pb::CreateEntryRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        ..create(&user, 80.0, KG, 2)
    };
    let first = client
        .create_entry(request.clone())
        .await
        .expect("first")
        .into_inner();
    let retry = client
        .create_entry(request)
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, retry);
    let listed = client
        .list_entries(pb::ListEntriesRequest {
            user_id: user,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
}

#[tokio::test]
async fn batches_are_atomic_and_bounded() {
    let stack = open_stack().await;
    let (_users, _entries) = stack.spawn().await;
    let mut client = entries_client(&stack).await;
    let user = stack.clients().create_user().await;
    let new = |value: f64, day: i32| pb::NewEntry {
        weight: weight(value, KG),
        recorded_on: date(2024, 4, day),
        note: String::new(),
    };

    let created = client
        .batch_create_entries(pb::BatchCreateEntriesRequest {
            user_id: user.clone(),
            entries: vec![new(80.0, 1), new(79.5, 2), new(79.0, 3)],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(created.entries.len(), 3);

    let bad = client
        .batch_create_entries(pb::BatchCreateEntriesRequest {
            user_id: user.clone(),
            entries: vec![new(80.0, 4), new(-1.0, 5), new(80.0, 31)],
        })
        .await
        .expect_err("bad entries");
    assert_invalid(&bad, &["entries[1].weight.value", "entries[2].recorded_on"]);

    let too_many = client
        .batch_create_entries(pb::BatchCreateEntriesRequest {
            user_id: user.clone(),
            entries: vec![new(80.0, 1); 10_001],
        })
        .await
        .expect_err("too many");
    assert_invalid(&too_many, &["entries"]);

    let listed = client
        .list_entries(pb::ListEntriesRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.entries.len(), 3, "failed batches stored nothing");

    // The largest batch the contract allows fits in a message, both ways.
    let longest_note = pb::NewEntry {
        note: "ü".repeat(500),
        ..new(80.0, 1)
    };
    let largest = client
        .batch_create_entries(pb::BatchCreateEntriesRequest {
            user_id: user,
            entries: vec![longest_note; 10_000],
        })
        .await
        .expect("a full batch of the longest notes")
        .into_inner();
    assert_eq!(largest.entries.len(), 10_000);
}

#[tokio::test]
async fn list_entries_pages_orders_filters_and_converts() {
    let stack = open_stack().await;
    let (_users, _entries) = stack.spawn().await;
    let mut client = entries_client(&stack).await;
    let user = stack.clients().create_user().await;
    for day in 1..=9 {
        client
            .create_entry(create(&user, 170.0 + f64::from(day), LB, day))
            .await
            .expect("create");
    }
    let list = |page_size, page_token: String, order: pb::SortOrder| pb::ListEntriesRequest {
        user_id: user.clone(),
        start_date: date(2024, 3, 2),
        end_date: date(2024, 3, 8),
        page_size,
        page_token,
        unit: KG,
        order: order as i32,
    };

    let mut days = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_entries(list(3, token, pb::SortOrder::Descending))
            .await
            .expect("list")
            .into_inner();
        days.extend(
            page.entries
                .iter()
                .map(|e| e.recorded_on.expect("date").day),
        );
        assert!(
            page.entries
                .iter()
                .all(|e| e.weight.expect("weight").unit == KG)
        );
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(days, [8, 7, 6, 5, 4, 3, 2]);

    let first = client
        .list_entries(list(3, String::new(), pb::SortOrder::Ascending))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.entries[0].recorded_on, date(2024, 3, 2));
    let other_filters = pb::ListEntriesRequest {
        end_date: date(2024, 3, 9),
        ..list(3, first.next_page_token.clone(), pb::SortOrder::Ascending)
    };
    let rejected = client
        .list_entries(other_filters)
        .await
        .expect_err("token of other filters");
    assert_invalid(&rejected, &["page_token"]);
    let other_order = list(3, first.next_page_token, pb::SortOrder::Descending);
    assert_invalid(
        &client
            .list_entries(other_order)
            .await
            .expect_err("token of other order"),
        &["page_token"],
    );

    let negative = client
        .list_entries(list(-5, String::new(), pb::SortOrder::Ascending))
        .await
        .expect_err("negative");
    assert_invalid(&negative, &["page_size"]);
    let backwards = pb::ListEntriesRequest {
        start_date: date(2024, 3, 9),
        ..list(3, String::new(), pb::SortOrder::Ascending)
    };
    assert_invalid(
        &client
            .list_entries(backwards)
            .await
            .expect_err("start after end"),
        &["end_date"],
    );
}

#[tokio::test]
async fn update_and_delete_entries() {
    let stack = open_stack().await;
    let (_users, _entries) = stack.spawn().await;
    let mut client = entries_client(&stack).await;
    let user = stack.clients().create_user().await;
    let created = client
        .create_entry(create(&user, 80.0, KG, 1))
        .await
        .expect("create")
        .into_inner();

    let changes = pb::Entry {
        id: created.id.clone(),
        weight: weight(176.0, LB),
        note: "new scale".into(),
        ..Default::default()
    };
    let mask = |paths: &[&str]| {
        Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        })
    };
    let updated = client
        .update_entry(pb::UpdateEntryRequest {
            entry: Some(changes.clone()),
            update_mask: mask(&["weight"]),
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.weight, weight(176.0, LB));
    assert_eq!(updated.note, "");
    assert_eq!(updated.recorded_on, created.recorded_on);

    let bad_path = client
        .update_entry(pb::UpdateEntryRequest {
            entry: Some(changes.clone()),
            update_mask: mask(&["user_id"]),
        })
        .await
        .expect_err("immutable");
    assert_invalid(&bad_path, &["update_mask"]);

    client
        .delete_entry(pb::DeleteEntryRequest {
            id: created.id.clone(),
        })
        .await
        .expect("delete");
    let again = client
        .delete_entry(pb::DeleteEntryRequest {
            id: created.id.clone(),
        })
        .await
        .expect_err("gone");
    assert_eq!(again.code(), Code::NotFound);
    let update_gone = client
        .update_entry(pb::UpdateEntryRequest {
            entry: Some(changes),
            update_mask: mask(&["note"]),
        })
        .await
        .expect_err("gone");
    assert_eq!(update_gone.code(), Code::NotFound);
}

#[tokio::test]
async fn summaries_in_one_unit_with_the_trend() {
    let stack = open_stack().await;
    let (_users, _entries) = stack.spawn().await;
    let mut client = entries_client(&stack).await;
    let user = stack.clients().create_user().await;
    // 100 kg, 99 kg, 100 kg (in pounds), 97 kg
    for (value, unit, day) in [
        (100.0, KG, 1),
        (99.0, KG, 2),
        (220.462_262_184_877_6, LB, 3),
        (97.0, KG, 4),
    ] {
        client
            .create_entry(create(&user, value, unit, day))
            .await
            .expect("create");
    }
    let summary = client
        .summarize_entries(pb::SummarizeEntriesRequest {
            user_id: user.clone(),
            start_date: None,
            end_date: None,
            unit: 0,
        })
        .await
        .expect("summary")
        .into_inner();
    let kg = |w: Option<Weight>| {
        let w = w.expect("weight");
        assert_eq!(w.unit, KG);
        w.value
    };
    assert_eq!(summary.count, 4);
    assert_eq!(kg(summary.min), 97.0);
    assert!((kg(summary.max) - 100.0).abs() < 1e-9);
    assert!((kg(summary.mean) - 99.0).abs() < 1e-9);
    assert_eq!(kg(summary.change), -3.0);
    assert!((kg(summary.trend) - 99.619).abs() < 1e-9);
    assert_eq!(summary.first.expect("first").recorded_on, date(2024, 3, 1));
    assert_eq!(summary.last.expect("last").recorded_on, date(2024, 3, 4));

    let in_pounds = client
        .summarize_entries(pb::SummarizeEntriesRequest {
            user_id: user.clone(),
            start_date: date(2024, 3, 3),
            end_date: None,
            unit: LB,
        })
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(in_pounds.count, 2);
    assert_eq!(
        in_pounds.max.expect("max"),
        Weight {
            value: 220.462_262_184_877_6,
            unit: LB
        }
    );

    let empty = client
        .summarize_entries(pb::SummarizeEntriesRequest {
            user_id: user,
            start_date: date(2025, 1, 1),
            end_date: None,
            unit: 0,
        })
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(empty, pb::SummarizeEntriesResponse::default());
}

#[tokio::test]
async fn purge_is_internal_only_idempotent_and_final() {
    let stack = Stack::new(TestDatabase::sqlite()).await;
    let (_users, _entries) = stack.spawn().await;
    let mut client = entries_client(&stack).await;
    let user = stack.clients().create_user().await;
    for day in 1..=3 {
        client
            .create_entry(authorized(create(&user, 80.0, KG, day)))
            .await
            .expect("create");
    }
    let purge = || pb::PurgeUserEntriesRequest {
        user_id: user.clone(),
    };

    let denied = client
        .purge_user_entries(authorized(purge()))
        .await
        .expect_err("api token");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let anonymous = client
        .purge_user_entries(purge())
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // A live user is not purged, whatever the token: nothing is deleted,
    // and no tombstone stops the user's next entry.
    let live = client
        .purge_user_entries(with_token(purge(), INTERNAL_TOKEN))
        .await
        .expect_err("live user");
    assert_eq!(
        (live.code(), reason(&live).as_str()),
        (Code::FailedPrecondition, "USER_EXISTS")
    );
    client
        .create_entry(authorized(create(&user, 80.0, KG, 4)))
        .await
        .expect("a live user's entries still come in");

    // Deleted in the users service, the cascade purges at once; a purge
    // delivered again finds nothing left.
    let deleted = stack
        .clients()
        .delete_user(&user, None)
        .await
        .expect("delete")
        .purged_entry_count;
    assert_eq!(deleted, 4);
    let again = client
        .purge_user_entries(with_token(purge(), INTERNAL_TOKEN))
        .await
        .expect("again")
        .into_inner();
    assert_eq!((again.deleted_count, again.total_deleted_count), (0, 4));

    let refused = client
        .create_entry(authorized(create(&user, 80.0, KG, 5)))
        .await
        .expect_err("purged user");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let listed = client
        .list_entries(authorized(pb::ListEntriesRequest {
            user_id: user,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.entries.is_empty());
}

/// Reflection on the entries port lists the entries service, health and
/// reflection, not the users service, and describes each (v1 and v1alpha).
#[tokio::test]
async fn reflection_serves_exactly_this_port() {
    let stack = open_stack().await;
    let (_users, entries) = stack.spawn().await;
    heft_test_support::assert_reflection_serves_exactly(&entries.url(), heft_entries::SERVICE_NAME)
        .await;
}

/// A user with 1,000,000 entries on PostgreSQL: summaries read them in
/// keyset pages (no connection held for the whole summary), at most two at
/// once, and are correct; GetEntry keeps answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn a_summary_over_a_million_entries_is_bounded() {
    const ENTRIES: i64 = 1_000_000;
    let stack = Stack::new(TestDatabase::postgres().await)
        .await
        .without_tokens();
    let (_users, _entries) = stack.spawn().await;
    let mut client = entries_client(&stack).await;
    let user = stack.clients().create_user().await;
    let probe = client
        .create_entry(create(&user, 80.0, KG, 1))
        .await
        .expect("create")
        .into_inner()
        .id;

    let pool = sqlx::PgPool::connect(&stack.entries_db.url)
        .await
        .expect("connect");
    let user_id = uuid::Uuid::parse_str(&user).expect("uuid");
    sqlx::query(
        "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
         SELECT gen_random_uuid(), $1, 50 + (g % 600) / 10.0, 1, date '1900-01-01' + (g / 20)::int,
                '', now(), now()
         FROM generate_series(1, $2) AS g",
    )
    .bind(user_id)
    .bind(ENTRIES)
    .execute(&pool)
    .await
    .expect("seed");
    let values: Vec<f64> = sqlx::query_scalar(
        "SELECT value FROM entries WHERE user_id = $1 ORDER BY recorded_on, create_time, id",
    )
    .bind(user_id)
    .fetch_all(&pool)
    .await
    .expect("values");
    let count = values.len() as f64;
    let mean = values.iter().sum::<f64>() / count;
    let trend = values
        .iter()
        .skip(1)
        .fold(values[0], |trend, value| trend + 0.1 * (value - trend));

    let started = std::time::Instant::now();
    let summaries = (0..4).map(|_| {
        let mut client = client.clone();
        let user = user.clone();
        async move {
            let started = std::time::Instant::now();
            let mut request = tonic::Request::new(pb::SummarizeEntriesRequest {
                user_id: user,
                ..Default::default()
            });
            request.set_timeout(std::time::Duration::from_secs(30));
            let summary = client.summarize_entries(request).await;
            (summary, started.elapsed())
        }
    });
    let gets = async {
        let mut slowest = std::time::Duration::ZERO;
        let mut answered = 0;
        while started.elapsed() < std::time::Duration::from_secs(2) {
            let sent = std::time::Instant::now();
            client
                .clone()
                .get_entry(pb::GetEntryRequest {
                    id: probe.clone(),
                    unit: 0,
                })
                .await
                .expect("GetEntry answers during the summaries");
            slowest = slowest.max(sent.elapsed());
            answered += 1;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        (answered, slowest)
    };
    let (summaries, (answered, slowest)) = tokio::join!(futures::future::join_all(summaries), gets);
    eprintln!("GetEntry during the summaries: {answered} answered, slowest {slowest:?}");
    for (summary, elapsed) in summaries {
        let summary = summary.expect("summary within the deadline").into_inner();
        eprintln!("summary of {} entries in {elapsed:?}", summary.count);
        assert_eq!(summary.count, ENTRIES + 1);
        let kg = |w: Option<Weight>| w.expect("weight").value;
        assert_eq!(kg(summary.min), 50.0);
        assert_eq!(kg(summary.max), 109.9);
        assert!((kg(summary.mean) - mean).abs() < 1e-6, "mean");
        assert!((kg(summary.trend) - trend).abs() < 1e-6, "trend");
        assert_eq!(summary.first.expect("first").recorded_on, date(1900, 1, 1));
    }
}
