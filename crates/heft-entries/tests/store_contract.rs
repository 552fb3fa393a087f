//! One contract for every `EntryStore` backend, run against SQLite and PostgreSQL.

use std::{sync::Arc, time::Duration};

use chrono::NaiveDate;
use heft_entries::{
    domain::{
        Cursor, DateRange, Entry, EntryId, EntryPatch, IdempotencyKey, ListQuery, Note, RecordedOn,
        SortOrder, UserId, Weight, WeightUnit,
    },
    purge::{self, PurgeProgress},
    store::{self, EntryStore, StoreError},
};
use heft_service::{db::Database, time};
use heft_test_support::{TestDatabase, backend_tests};
use uuid::Uuid;

async fn open(db: &TestDatabase) -> Arc<dyn EntryStore> {
    let database = Database::open(&db.url, &store::MIGRATIONS)
        .await
        .expect("open database");
    store::on(&database)
}

fn day(n: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 1, 1).expect("date") + chrono::Days::new(u64::from(n))
}

fn entry(user_id: UserId, on: NaiveDate, value: f64, unit: WeightUnit) -> Entry {
    let now = time::now();
    Entry {
        id: EntryId::generate(),
        user_id,
        weight: Weight::new(value, unit).expect("weight"),
        recorded_on: RecordedOn::from_stored(on),
        note: Note::parse("after breakfast").expect("note"),
        create_time: now,
        update_time: now,
    }
}

/// A whole purge in small batches, with all the time it needs.
async fn purge_all(store: &dyn EntryStore, user: UserId) -> PurgeProgress {
    let far = std::time::Instant::now() + Duration::from_secs(60);
    let progress = purge::purge_user(store, user, time::now(), 7, far)
        .await
        .expect("purge");
    assert!(progress.complete, "{progress:?}");
    progress
}

/// A purge whose deadline has already passed: it commits the tombstone and
/// stops before its first batch.
async fn tombstone_only(store: &dyn EntryStore, user: UserId) -> PurgeProgress {
    purge::purge_user(store, user, time::now(), 10, std::time::Instant::now())
        .await
        .expect("purge")
}

async fn assert_no_entries_left(store: &dyn EntryStore, user: UserId) {
    assert!(
        list_all(store, user, SortOrder::Ascending, 100)
            .await
            .is_empty()
    );
}

fn new_user() -> UserId {
    UserId(Uuid::now_v7())
}

async fn list_all(
    store: &dyn EntryStore,
    user_id: UserId,
    order: SortOrder,
    page: u32,
) -> Vec<Entry> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let batch = store
            .list_entries(&ListQuery {
                user_id,
                range: DateRange::default(),
                order,
                after,
                limit: page,
            })
            .await
            .expect("list");
        let Some(last) = batch.last() else { break };
        after = Some(Cursor::after(last));
        all.extend(batch);
    }
    all
}

backend_tests!(
    stores_weights_exactly_as_given,
    request_ids_make_creates_idempotent_even_concurrently,
    batches_are_all_or_nothing,
    lists_by_day_in_both_orders_with_keyset_pages,
    updates_and_deletes_single_entries,
    purge_deletes_everything_and_leaves_a_tombstone,
    a_purge_cut_short_keeps_its_batches_and_resumes,
    a_purge_deletes_an_entry_moved_behind_its_batches,
    odd_notes_read_back_alike_on_both_backends,
    entry_owners_page_through_every_user_once,
    no_entry_survives_writers_racing_a_purge,
);

async fn stores_weights_exactly_as_given(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user();
    let created = store
        .create_entry(&entry(user, day(0), 180.0, WeightUnit::Pounds), None)
        .await
        .expect("create");
    let read = store.get_entry(created.id).await.expect("get");
    assert_eq!(read, created);
    assert_eq!(read.weight.value(), 180.0);
    assert_eq!(read.weight.unit(), WeightUnit::Pounds);
    assert!(matches!(
        store.get_entry(EntryId::generate()).await,
        Err(StoreError::NotFound)
    ));
}

async fn request_ids_make_creates_idempotent_even_concurrently(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user();
    let key = IdempotencyKey(Uuid::new_v4());
    let attempts = (0..8).map(|_| {
        let store = store.clone();
        async move {
            store
                .create_entry(&entry(user, day(1), 80.0, WeightUnit::Kilograms), Some(key))
                .await
                .expect("create")
        }
    });
    let results = futures::future::join_all(attempts).await;
    assert!(
        results.iter().all(|e| e.id == results[0].id),
        "one entry for one request id"
    );
    assert_eq!(
        list_all(store.as_ref(), user, SortOrder::Ascending, 100)
            .await
            .len(),
        1
    );

    // Another user may use the same request id.
    let other = store
        .create_entry(
            &entry(new_user(), day(1), 80.0, WeightUnit::Kilograms),
            Some(key),
        )
        .await
        .expect("create");
    assert_ne!(other.id, results[0].id);
}

async fn batches_are_all_or_nothing(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user();
    let entries: Vec<_> = (0..10_000)
        .map(|i| {
            entry(
                user,
                day(i % 365),
                70.0 + f64::from(i % 10),
                WeightUnit::Kilograms,
            )
        })
        .collect();
    store.create_entries(user, &entries).await.expect("batch");
    assert_eq!(
        list_all(store.as_ref(), user, SortOrder::Ascending, 1000)
            .await
            .len(),
        10_000
    );

    // A duplicate id late in the batch (past SQLite's first statement of
    // 1,000 rows) fails the whole batch.
    let mut clash: Vec<_> = (0..1_500)
        .map(|i| entry(user, day(i % 365), 70.0, WeightUnit::Kilograms))
        .collect();
    clash[1_200].id = entries[0].id;
    assert!(store.create_entries(user, &clash).await.is_err());
    assert!(matches!(
        store.get_entry(clash[0].id).await,
        Err(StoreError::NotFound)
    ));

    purge_all(store.as_ref(), user).await;
    let late = [entry(user, day(1), 70.0, WeightUnit::Kilograms)];
    assert!(matches!(
        store.create_entries(user, &late).await,
        Err(StoreError::UserPurged)
    ));
}

async fn lists_by_day_in_both_orders_with_keyset_pages(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user();
    let mut created = Vec::new();
    for n in [5, 1, 3, 3, 2, 4, 1] {
        created.push(
            store
                .create_entry(&entry(user, day(n), 80.0, WeightUnit::Kilograms), None)
                .await
                .expect("create"),
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    store
        .create_entry(&entry(new_user(), day(3), 1.0, WeightUnit::Kilograms), None)
        .await
        .expect("other user");

    let mut expected = created.clone();
    expected.sort_by_key(|e| (e.recorded_on, e.create_time, e.id));
    let ascending = list_all(store.as_ref(), user, SortOrder::Ascending, 2).await;
    assert_eq!(
        ascending.iter().map(|e| e.id).collect::<Vec<_>>(),
        expected.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    let descending = list_all(store.as_ref(), user, SortOrder::Descending, 3).await;
    assert_eq!(
        descending.iter().rev().map(|e| e.id).collect::<Vec<_>>(),
        expected.iter().map(|e| e.id).collect::<Vec<_>>()
    );

    let range = DateRange {
        start: Some(day(2)),
        end: Some(day(3)),
    };
    let in_range = store
        .list_entries(&ListQuery {
            user_id: user,
            range,
            order: SortOrder::Ascending,
            after: None,
            limit: 100,
        })
        .await
        .expect("range");
    assert_eq!(in_range.len(), 3);
    assert!(
        in_range
            .iter()
            .all(|e| (day(2)..=day(3)).contains(&e.recorded_on.date()))
    );

    // An insert before the cursor does not shift the next page.
    let first_page = store
        .list_entries(&ListQuery {
            user_id: user,
            range: DateRange::default(),
            order: SortOrder::Ascending,
            after: None,
            limit: 3,
        })
        .await
        .expect("page");
    store
        .create_entry(&entry(user, day(0), 81.0, WeightUnit::Kilograms), None)
        .await
        .expect("insert");
    let next = store
        .list_entries(&ListQuery {
            user_id: user,
            range: DateRange::default(),
            order: SortOrder::Ascending,
            after: first_page.last().map(Cursor::after),
            limit: 100,
        })
        .await
        .expect("page");
    assert_eq!(
        next.iter().map(|e| e.id).collect::<Vec<_>>(),
        expected[3..].iter().map(|e| e.id).collect::<Vec<_>>()
    );
}

async fn updates_and_deletes_single_entries(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user();
    let created = store
        .create_entry(&entry(user, day(1), 80.0, WeightUnit::Kilograms), None)
        .await
        .expect("create");
    let later = time::now() + chrono::Duration::seconds(1);
    let patch = EntryPatch {
        weight: Some(Weight::new(170.0, WeightUnit::Pounds).expect("weight")),
        note: Some(Note::parse("").expect("note")),
        ..EntryPatch::default()
    };
    let updated = store
        .update_entry(created.id, &patch, later)
        .await
        .expect("update");
    assert_eq!(
        (updated.weight.value(), updated.weight.unit()),
        (170.0, WeightUnit::Pounds)
    );
    assert_eq!(updated.note.as_str(), "");
    assert_eq!(updated.recorded_on, created.recorded_on);
    assert_eq!(
        (updated.create_time, updated.update_time),
        (created.create_time, later)
    );

    store.delete_entry(created.id).await.expect("delete");
    assert!(matches!(
        store.delete_entry(created.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.update_entry(created.id, &patch, later).await,
        Err(StoreError::NotFound)
    ));
}

async fn purge_deletes_everything_and_leaves_a_tombstone(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user();
    let bystander = new_user();
    let entries: Vec<_> = (0..500)
        .map(|i| entry(user, day(i), 80.0, WeightUnit::Kilograms))
        .collect();
    store.create_entries(user, &entries).await.expect("batch");
    store
        .create_entry(&entry(bystander, day(1), 60.0, WeightUnit::Kilograms), None)
        .await
        .expect("create");

    assert!(!store.is_purged(user).await.expect("tombstone"));
    let first = purge_all(store.as_ref(), user).await;
    assert_eq!((first.deleted, first.total), (500, 500));
    let again = purge_all(store.as_ref(), user).await;
    assert_eq!((again.deleted, again.total), (0, 500));
    assert!(store.is_purged(user).await.expect("tombstone"));
    assert_no_entries_left(store.as_ref(), user).await;
    assert_eq!(
        list_all(store.as_ref(), bystander, SortOrder::Ascending, 100)
            .await
            .len(),
        1
    );
    assert!(matches!(
        store
            .create_entry(&entry(user, day(1), 80.0, WeightUnit::Kilograms), None)
            .await,
        Err(StoreError::UserPurged)
    ));
}

/// Values the two backends could store differently: characters outside the
/// BMP at the length limit (500 characters, 2,000 bytes), decomposed
/// accents, newline and tab, quotes. Each reads back exactly as written.
async fn odd_notes_read_back_alike_on_both_backends(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user();
    let notes = [
        "😀".repeat(Note::MAX_CHARS),
        "cafe\u{301} and caf\u{e9}".to_owned(),
        "line one\nline two\tend".to_owned(),
        "'; DROP TABLE entries; --".to_owned(),
        String::new(),
    ];
    for (i, raw) in notes.iter().enumerate() {
        let note = Note::parse(raw).expect("a valid note");
        let mut written = entry(user, day(i as u32), 70.0, WeightUnit::Kilograms);
        written.note = note;
        store.create_entry(&written, None).await.expect("create");
        let read = store.get_entry(written.id).await.expect("get");
        assert_eq!(read.note.as_str(), raw, "note {i}");
    }
    // What PostgreSQL cannot store never reaches a store.
    assert!(Note::parse("nul\u{0}").is_err());
    assert!(Note::parse(&"😀".repeat(Note::MAX_CHARS + 1)).is_err());
}

async fn a_purge_cut_short_keeps_its_batches_and_resumes(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user();
    let entries: Vec<_> = (0..25)
        .map(|i| entry(user, day(i), 80.0, WeightUnit::Kilograms))
        .collect();
    store.create_entries(user, &entries).await.expect("batch");

    // Batches are only deleted behind a tombstone.
    assert!(matches!(
        store.delete_entries_batch(user, 10).await,
        Err(StoreError::NotPurged)
    ));

    // A purge whose deadline has passed commits the tombstone and stops.
    let cut = tombstone_only(store.as_ref(), user).await;
    assert_eq!(
        cut,
        PurgeProgress {
            deleted: 0,
            total: 0,
            complete: false
        }
    );
    assert!(store.is_purged(user).await.expect("tombstone"));
    assert!(matches!(
        store
            .create_entry(&entry(user, day(1), 80.0, WeightUnit::Kilograms), None)
            .await,
        Err(StoreError::UserPurged)
    ));

    // Each batch commits on its own and adds to the running total; one that
    // leaves entries behind does not call the purge complete.
    let batch = store.delete_entries_batch(user, 10).await.expect("batch");
    assert_eq!(
        (batch.deleted, batch.total, batch.complete),
        (10, 10, false)
    );
    assert_eq!(
        list_all(store.as_ref(), user, SortOrder::Ascending, 100)
            .await
            .len(),
        15
    );
    let resumed = purge_all(store.as_ref(), user).await;
    assert_eq!((resumed.deleted, resumed.total), (15, 25));
    // Nothing left: an empty batch is complete, and the total stays.
    let batch = store.delete_entries_batch(user, 10).await.expect("batch");
    assert_eq!((batch.deleted, batch.total, batch.complete), (0, 25, true));
    assert_no_entries_left(store.as_ref(), user).await;
}

/// Batches may walk the user's entries in order; an update that moves an
/// entry behind where they have got to must not let it survive the purge.
async fn a_purge_deletes_an_entry_moved_behind_its_batches(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user();
    let entries: Vec<_> = (0..25)
        .map(|i| entry(user, day(i + 10), 80.0, WeightUnit::Kilograms))
        .collect();
    store.create_entries(user, &entries).await.expect("batch");
    // The tombstone alone (a deadline already passed), then two batches.
    tombstone_only(store.as_ref(), user).await;
    for _ in 0..2 {
        let batch = store.delete_entries_batch(user, 10).await.expect("batch");
        assert!(!batch.complete, "{batch:?}");
    }
    let left = list_all(store.as_ref(), user, SortOrder::Ascending, 100).await;
    assert_eq!(left.len(), 5);

    // The last entry left moves before every day the batches have passed.
    let moved = left.last().expect("an entry is left").id;
    let patch = EntryPatch {
        recorded_on: Some(RecordedOn::from_stored(day(0))),
        ..EntryPatch::default()
    };
    store
        .update_entry(moved, &patch, time::now())
        .await
        .expect("update");

    let rest = purge_all(store.as_ref(), user).await;
    assert_eq!((rest.deleted, rest.total), (5, 25));
    assert!(matches!(
        store.get_entry(moved).await,
        Err(StoreError::NotFound)
    ));
    assert_no_entries_left(store.as_ref(), user).await;
}

async fn entry_owners_page_through_every_user_once(db: TestDatabase) {
    let store = open(&db).await;
    let mut users: Vec<(UserId, u64)> = Vec::new();
    for count in [3u32, 1, 5, 2, 4] {
        let user = new_user();
        let entries: Vec<_> = (0..count)
            .map(|i| entry(user, day(i), 80.0, WeightUnit::Kilograms))
            .collect();
        store.create_entries(user, &entries).await.expect("batch");
        users.push((user, u64::from(count)));
    }
    users.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.entry_owners(after, 2).await.expect("owners");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        seen.extend(page);
    }
    assert_eq!(seen, users);
}

async fn no_entry_survives_writers_racing_a_purge(db: TestDatabase) {
    let store = open(&db).await;
    let (mut total_created, mut writers_refused) = (0, 0);
    for _round in 0..5 {
        let user = new_user();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut created = 0;
                    let mut refused = false;
                    for i in 0..40 {
                        match store
                            .create_entry(
                                &entry(user, day(w * 40 + i), 80.0, WeightUnit::Kilograms),
                                None,
                            )
                            .await
                        {
                            Ok(_) => created += 1,
                            Err(StoreError::UserPurged) => {
                                refused = true;
                                break;
                            }
                            Err(other) => panic!("unexpected error: {other:?}"),
                        }
                    }
                    (created, refused)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let purged = purge_all(store.as_ref(), user).await.deleted;
        let mut created = 0;
        for writer in writers {
            let (count, refused) = writer.await.expect("writer");
            created += count;
            writers_refused += usize::from(refused);
        }
        total_created += created;
        let left = list_all(store.as_ref(), user, SortOrder::Ascending, 1000).await;
        assert!(
            left.is_empty(),
            "{} orphan entries (created {created}, purged {purged})",
            left.len()
        );
        assert_eq!(purged, created as u64, "every created entry was purged");
    }
    // The purges landed while writers were still writing: a real race.
    assert!(
        total_created > 0 && writers_refused > 0,
        "created {total_created}, refused {writers_refused}"
    );
}
