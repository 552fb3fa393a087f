//! The purge guarantee end to end, on SQLite and PostgreSQL: a deletion
//! completes whatever the entries service answers meanwhile (a token
//! rotation done in the wrong order), whatever its size (a purge longer than
//! any deadline resumes), and can be confirmed through the users service.

mod common;

use std::time::Duration;

use common::{PENDING, PURGED, ServiceSpec, Stack};
use heft_proto::users::v1::PurgeState;
use heft_test_support::{TestDatabase, backend_tests};
use tonic::Code;

backend_tests!(
    a_refused_purge_completes_once_the_tokens_agree,
    tokens_rotate_without_a_refused_call,
    a_purge_longer_than_its_deadline_resumes_until_done,
    purge_jobs_confirm_an_erasure,
);

fn with_token(spec: &ServiceSpec, tokens: &str) -> ServiceSpec {
    ServiceSpec {
        internal_token: Some(tokens.to_owned()),
        ..spec.clone()
    }
}

/// The entries service's token rotated first and alone: every delivery is
/// refused, the job stays pending (no `failed`, no operator step), and it
/// completes by itself once the tokens agree again.
async fn a_refused_purge_completes_once_the_tokens_agree(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (_users, entries) = stack.start().await;
    let mut clients = stack.clients();
    let user = clients.create_user().await;
    clients.import(&user, 30).await;
    entries.stop();
    let entries = with_token(&stack.entries_spec, "rotated-too-early")
        .start()
        .await;

    let deleted = clients.delete_user(&user, None).await.expect("delete");
    assert_eq!(deleted.purge_state, PENDING);
    // Retried, not parked: more deliveries come while the refusal lasts.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let job = clients.get_purge_job(&user).await.expect("job");
    assert_eq!(job.state, PENDING);
    assert!(job.attempts >= 2, "retried while refused: {job:?}");
    assert!(
        job.last_error.starts_with("UNAUTHENTICATED"),
        "{}",
        job.last_error
    );
    assert!(job.next_attempt_time.is_some() && job.complete_time.is_none());
    assert_eq!(clients.count_entries(&user).await, 30);

    // The tokens agree again: no call, no SQL, the dispatcher finishes it.
    drop(entries);
    let _entries = stack.entries_spec.start().await;
    let job = clients
        .wait_until_job_purged(&user, Duration::from_secs(15))
        .await;
    assert_eq!(job.purged_entry_count, 30);
    assert!(job.complete_time.is_some() && job.next_attempt_time.is_none());
    assert_eq!(clients.count_entries(&user).await, 0);
}

/// The documented rotation: add the new token second on both, make it first
/// on both, drop the old one; one service restarted at a time, and a
/// deletion at every step is purged at once.
async fn tokens_rotate_without_a_refused_call(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let mut clients = stack.clients();
    let mut tokens = ("old".to_owned(), "old".to_owned());
    let mut users = with_token(&stack.users_spec, &tokens.0).start().await;
    let mut entries = with_token(&stack.entries_spec, &tokens.1).start().await;
    // (entries service's new tokens, users service's new tokens), one restart at a time.
    let steps = [
        (Some("old,new"), None),
        (None, Some("old,new")),
        (Some("new,old"), None),
        (None, Some("new,old")),
        (Some("new"), None),
        (None, Some("new")),
    ];
    for (step, (entries_tokens, users_tokens)) in steps.into_iter().enumerate() {
        if let Some(next) = entries_tokens {
            drop(entries);
            tokens.1 = next.to_owned();
            entries = with_token(&stack.entries_spec, next).start().await;
        }
        if let Some(next) = users_tokens {
            drop(users);
            tokens.0 = next.to_owned();
            users = with_token(&stack.users_spec, next).start().await;
        }
        let user = clients.create_user().await;
        clients.import(&user, 3).await;
        let deleted = clients.delete_user(&user, None).await.expect("delete");
        assert_eq!(
            (deleted.purge_state, deleted.purged_entry_count),
            (PURGED, 3),
            "step {step}: users {:?}, entries {:?}",
            tokens.0,
            tokens.1
        );
    }
    drop((users, entries));
}

/// One committed entry per batch and a deadline far too short for all of
/// them: every delivery deletes what it can, is cut short, and the next one
/// resumes, until the job is purged with the true total.
async fn a_purge_longer_than_its_deadline_resumes_until_done(db: TestDatabase) {
    let mut stack = Stack::new(db).await;
    stack.entries_spec.extra_args = vec!["--purge-batch-size".into(), "1".into()];
    stack.users_spec.extra_args = vec![
        "--purge-immediate-timeout-ms".into(),
        "300".into(),
        "--purge-delivery-timeout-ms".into(),
        "300".into(),
    ];
    let (_users, _entries) = stack.start().await;
    let mut clients = stack.clients();
    let user = clients.create_user().await;
    let total = 3_000;
    clients.import(&user, total).await;

    let deleted = clients.delete_user(&user, None).await.expect("delete");
    assert_eq!(deleted.purge_state, PENDING, "cannot fit in one call");
    let job = clients
        .wait_until_job_purged(&user, Duration::from_secs(60))
        .await;
    assert_eq!(job.purged_entry_count, total as i64);
    assert!(
        job.attempts >= 2,
        "resumed over several deliveries: {job:?}"
    );
    assert_eq!(clients.count_entries(&user).await, 0);
    assert_eq!(clients.entry_refusal(&user).await, Code::FailedPrecondition);
}

/// GetPurgeJob and ListPurgeJobs: how an operator or an integration
/// confirms an erasure without reading a database.
async fn purge_jobs_confirm_an_erasure(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (_users, entries) = stack.start().await;
    let mut clients = stack.clients();

    let alive = clients.create_user().await;
    let never_deleted = clients
        .get_purge_job(&alive)
        .await
        .expect_err("never deleted");
    assert_eq!(never_deleted.code(), Code::NotFound);
    assert_eq!(
        clients
            .get_purge_job("not-a-uuid")
            .await
            .expect_err("invalid")
            .code(),
        Code::InvalidArgument
    );

    let purged_user = clients.create_user().await;
    clients.import(&purged_user, 4).await;
    let deleted = clients
        .delete_user(&purged_user, None)
        .await
        .expect("delete");
    assert_eq!(
        (deleted.purge_state, deleted.purged_entry_count),
        (PURGED, 4)
    );
    let pending_user = stack.pending_purge(entries, 2).await;

    let done = clients.get_purge_job(&purged_user).await.expect("job");
    assert_eq!(
        (done.state, done.purged_entry_count, done.attempts),
        (PURGED, 4, 1)
    );
    assert!(done.last_error.is_empty() && done.complete_time.is_some());
    let waiting = clients.get_purge_job(&pending_user).await.expect("job");
    assert_eq!(waiting.state, PENDING);
    assert!(waiting.next_attempt_time.is_some() && waiting.complete_time.is_none());

    // Oldest first, page by page, optionally by state.
    let first = clients
        .list_purge_jobs(PurgeState::Unspecified, 1, "")
        .await
        .expect("list");
    assert_eq!(first.purge_jobs.len(), 1);
    assert_eq!(first.purge_jobs[0].user_id, purged_user);
    let second = clients
        .list_purge_jobs(PurgeState::Unspecified, 1, &first.next_page_token)
        .await
        .expect("page 2");
    assert_eq!(second.purge_jobs[0].user_id, pending_user);
    assert!(second.next_page_token.is_empty());
    let pending = clients
        .list_purge_jobs(PurgeState::Pending, 10, "")
        .await
        .expect("pending");
    assert_eq!(
        pending
            .purge_jobs
            .iter()
            .map(|j| j.user_id.as_str())
            .collect::<Vec<_>>(),
        [pending_user.as_str()]
    );
    // A token is bound to its filter, and tamper-evident.
    let mismatched = clients
        .list_purge_jobs(PurgeState::Purged, 1, &first.next_page_token)
        .await
        .expect_err("other filter");
    assert_eq!(mismatched.code(), Code::InvalidArgument);
    let forged = clients
        .list_purge_jobs(PurgeState::Unspecified, 1, "bm90LWEtdG9rZW4")
        .await
        .expect_err("forged");
    assert_eq!(forged.code(), Code::InvalidArgument);
}

/// A million entries, seeded with SQL, purged through the normal path
/// (DeleteUser, then the dispatcher) in committed batches, while the entries
/// service's memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn a_million_entries_are_purged_with_flat_memory() {
    let db = TestDatabase::postgres().await;
    let stack = Stack::new(db).await;
    let (_users, entries) = stack.start().await;
    let mut clients = stack.clients();
    let user = clients.create_user().await;
    seed_entries(&stack.entries_db.url, &user, 1_000_000).await;
    let bystander = clients.create_user().await;
    clients.import(&bystander, 10).await;

    let rss_before = entries.memory_kib("VmRSS");
    let started = std::time::Instant::now();
    clients.delete_user(&user, None).await.expect("delete");
    let job = clients
        .wait_until_job_purged(&user, Duration::from_secs(300))
        .await;
    let elapsed = started.elapsed();
    let peak = entries.memory_kib("VmHWM");
    eprintln!(
        "purged {} entries in {elapsed:?} over {} deliveries; entries service RSS {} KiB before, peak {} KiB",
        job.purged_entry_count, job.attempts, rss_before, peak
    );
    assert_eq!(job.purged_entry_count, 1_000_000);
    assert!(
        peak < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to a peak of {peak} KiB"
    );
    assert_eq!(clients.count_entries(&user).await, 0);
    assert_eq!(clients.count_entries(&bystander).await, 10);
    entries.stop();
}

async fn seed_entries(database_url: &str, user_id: &str, count: i64) {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .expect("connect");
    sqlx::query(
        "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, request_id, create_time, update_time)
         SELECT gen_random_uuid(), $1::uuid, 60 + (i % 400) / 10.0, 1, DATE '2000-01-01' + (i % 9000)::int, '', NULL, now(), now()
         FROM generate_series(1, $2) AS i",
    )
    .bind(user_id)
    .bind(count)
    .execute(&mut connection)
    .await
    .expect("seed");
}
