//! The cascade end to end: both services as real processes on real ports,
//! on SQLite and on PostgreSQL, with the entries service stopped, the users
//! service killed, and writers racing deletions.

mod common;

use std::time::{Duration, Instant};

use common::{PENDING, PURGED, ServiceSpec, Stack};
use heft_test_support::{TestDatabase, backend_tests, free_port};
use tonic::Code;

backend_tests!(
    delete_user_purges_every_entry,
    pending_purge_completes_when_entries_returns,
    pending_purge_survives_a_killed_users_service,
    writers_racing_deletions_leave_no_orphans,
    request_id_follows_a_deletion_across_services,
);

async fn delete_user_purges_every_entry(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (_users, _entries) = stack.start().await;
    let mut clients = stack.clients();
    let user = clients.create_user().await;
    let bystander = clients.create_user().await;
    clients.import(&user, 500).await;
    clients.import(&bystander, 3).await;
    assert_eq!(clients.count_entries(&user).await, 500);

    let deleted = clients.delete_user(&user, None).await.expect("delete");
    assert_eq!(
        (deleted.purge_state, deleted.purged_entry_count),
        (PURGED, 500)
    );
    assert_eq!(clients.count_entries(&user).await, 0);
    assert_eq!(clients.count_entries(&bystander).await, 3);
    assert_eq!(
        clients.get_user(&user).await.expect_err("deleted").code(),
        Code::NotFound
    );
    assert_eq!(clients.entry_refusal(&user).await, Code::FailedPrecondition);
    assert_eq!(
        clients
            .delete_user(&user, None)
            .await
            .expect_err("twice")
            .code(),
        Code::NotFound
    );
}

async fn pending_purge_completes_when_entries_returns(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (_users, entries) = stack.start().await;
    let mut clients = stack.clients();
    let user = stack.pending_purge(entries, 50).await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    let _entries = stack.entries_spec.start().await;
    // No further call: the dispatcher delivers the job on its own.
    let purged_after = clients
        .wait_until_purged(&user, Duration::from_secs(15))
        .await;
    eprintln!(
        "delivery latency: purge done {:?} after the entries service was restarted (ready after {:?})",
        restarted.elapsed(),
        restarted.elapsed() - purged_after
    );
    assert_eq!(clients.entry_refusal(&user).await, Code::FailedPrecondition);
}

async fn pending_purge_survives_a_killed_users_service(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (users, entries) = stack.start().await;
    let mut clients = stack.clients();
    let user = stack.pending_purge(entries, 20).await;
    users.kill();

    let (_users, _entries) = stack.start().await;
    clients
        .wait_until_purged(&user, Duration::from_secs(15))
        .await;
    assert_eq!(clients.entry_refusal(&user).await, Code::FailedPrecondition);
}

async fn writers_racing_deletions_leave_no_orphans(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (_users, _entries) = stack.start().await;
    let mut clients = stack.clients();
    for _round in 0..4 {
        let user = clients.create_user().await;
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let mut clients = stack.clients();
                let user = user.clone();
                tokio::spawn(async move {
                    let mut created = 0;
                    for _ in 0..30 {
                        match clients.create_entry(&user).await {
                            Ok(_) => created += 1,
                            Err(status)
                                if matches!(
                                    status.code(),
                                    Code::FailedPrecondition | Code::NotFound
                                ) =>
                            {
                                break;
                            }
                            Err(status) => panic!("unexpected status: {status:?}"),
                        }
                    }
                    created
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let deleted = clients.delete_user(&user, None).await.expect("delete");
        let mut created = 0;
        for writer in writers {
            created += writer.await.expect("writer");
        }
        if deleted.purge_state == PENDING {
            clients
                .wait_until_purged(&user, Duration::from_secs(15))
                .await;
        }
        assert_eq!(
            clients.count_entries(&user).await,
            0,
            "orphans after {created} creates"
        );
    }
}

async fn request_id_follows_a_deletion_across_services(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (users, entries) = stack.start().await;
    let mut clients = stack.clients();
    let user = clients.create_user().await;
    clients.import(&user, 5).await;

    let request_id = format!("e2e-delete-{}", uuid::Uuid::new_v4().simple());
    let deleted = clients
        .delete_user(&user, Some(&request_id))
        .await
        .expect("delete");
    assert_eq!(deleted.purge_state, PURGED);

    let users_log = users.stop();
    let entries_log = entries.stop();
    assert!(
        users_log
            .lines()
            .any(|l| l.contains(&request_id) && l.contains(&user) && l.contains("entries purged")),
        "users log has no line with the request id and the user:\n{users_log}"
    );
    // The entries service logs JSON: one object per line, the request id in the call's span.
    let purge_line = entries_log
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).expect("a JSON object per line")
        })
        .find(|event| {
            event["span"]["request_id"] == request_id.as_str() && event["user_id"] == user.as_str()
        });
    assert!(
        purge_line.is_some(),
        "entries log has no event with the request id and the user:\n{entries_log}"
    );
    assert!(!users_log.contains(common::API_TOKEN) && !users_log.contains(common::INTERNAL_TOKEN));
    assert!(
        !entries_log.contains(common::API_TOKEN) && !entries_log.contains(common::INTERNAL_TOKEN)
    );
}

/// Two users-service replicas on one PostgreSQL database share 100 pending
/// jobs: every job is delivered, and none twice (counted on the entries side).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn replicas_deliver_each_pending_job_once() {
    let db = TestDatabase::postgres().await;
    let stack = Stack::new(db).await;
    let (replica_a, entries) = stack.start().await;
    let mut clients = stack.clients();
    let mut users = Vec::new();
    for _ in 0..100 {
        let user = clients.create_user().await;
        clients.import(&user, 2).await;
        users.push(user);
    }

    entries.stop();
    for user in &users {
        let deleted = clients.delete_user(user, None).await.expect("delete");
        assert_eq!(deleted.purge_state, PENDING);
    }
    let replica_b = ServiceSpec {
        listen: free_port(),
        metrics: free_port(),
        ..stack.users_spec.clone()
    }
    .start()
    .await;
    let entries = stack.entries_spec.start().await;
    for user in &users {
        clients
            .wait_until_purged(user, Duration::from_secs(30))
            .await;
    }
    // Let any duplicate delivery land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries_log = entries.stop();
    for user in &users {
        let deliveries = entries_log
            .lines()
            .filter(|l| l.contains("user entries purged") && l.contains(user.as_str()))
            .count();
        assert_eq!(deliveries, 1, "user {user} purged {deliveries} times");
    }
    let (log_a, log_b) = (replica_a.stop(), replica_b.stop());
    let delivered_by = |log: &str| log.lines().filter(|l| l.contains("entries purged")).count();
    let (by_a, by_b) = (delivered_by(&log_a), delivered_by(&log_b));
    eprintln!("deliveries: replica a {by_a}, replica b {by_b}");
    assert!(
        by_a > 0 && by_b > 0,
        "both replicas took jobs: a {by_a}, b {by_b}"
    );
    assert_eq!(
        by_a + by_b,
        users.len(),
        "one acknowledged delivery per job"
    );
}
