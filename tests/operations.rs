//! What an operator watches: metrics scraped from both services, and
//! readiness that follows the database without a restart.

mod common;

use std::time::{Duration, Instant};

use common::Stack;
use heft_test_support::{TestDatabase, admin_sql, backend_tests};

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

backend_tests!(metrics_show_calls_the_purge_queue_and_the_pool);

/// The value of the series `name` (with its labels) on a `/metrics` page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

async fn metrics_show_calls_the_purge_queue_and_the_pool(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (users, entries) = stack.start().await;
    let mut clients = stack.clients();
    let purged = clients.create_user().await;
    clients.import(&purged, 3).await;
    clients.delete_user(&purged, None).await.expect("delete");
    let missing = clients.get_user(&uuid::Uuid::new_v4().to_string()).await;
    assert!(missing.is_err());
    let pending = stack.pending_purge(entries, 2).await;

    let page = users.scrape().await;
    let count = |series: &str| sample(&page, series);
    assert_eq!(
        count(
            r#"heft_rpc_requests_total{method="heft.users.v1.UserService/CreateUser",code="OK",caller="HEFT_API_TOKENS[1]"}"#
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        count(r#"heft_rpc_requests_total{method="heft.users.v1.UserService/GetUser",code="NOT_FOUND",caller="HEFT_API_TOKENS[1]"}"#)
            .map(|n| n >= 1.0),
        Some(true),
        "{page}"
    );
    assert_eq!(
        count(r#"heft_rpc_duration_seconds_count{method="heft.users.v1.UserService/DeleteUser"}"#),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        count(r#"heft_purge_jobs{state="pending"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        count(r#"heft_purge_jobs{state="purged"}"#),
        Some(1.0),
        "{page}"
    );
    assert!(
        count("heft_purge_oldest_pending_age_seconds").is_some_and(|age| age > 0.0),
        "{page}"
    );
    assert_eq!(count("heft_password_hashes_in_flight"), Some(0.0), "{page}");
    assert!(
        count(r#"heft_db_pool_connections{state="idle"}"#).is_some(),
        "{page}"
    );
    assert!(
        !page.contains("heft.entries.v1"),
        "only this service's calls: {page}"
    );

    // The entries service reports its own calls, not the users service's.
    let entries = stack.entries_spec.start().await;
    clients.count_entries(&pending).await;
    let page = entries.scrape().await;
    assert_eq!(
        sample(
            &page,
            r#"heft_rpc_requests_total{method="heft.entries.v1.EntryService/ListEntries",code="OK",caller="HEFT_API_TOKENS[1]"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert!(
        sample(&page, r#"heft_db_pool_connections{state="in_use"}"#).is_some(),
        "{page}"
    );
    assert!(!page.contains("heft_purge_jobs"), "{page}");
}

/// Health is NOT_SERVING while the entries database refuses connections and
/// SERVING again once it accepts them, with no restart in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn health_follows_the_database() {
    let stack = Stack::new(TestDatabase::postgres().await).await;
    let (_users, mut entries) = stack.start().await;
    let mut clients = stack.clients();
    let user = clients.create_user().await;
    clients.import(&user, 2).await;
    let database = stack.entries_db.postgres_name().to_owned();

    admin_sql(&format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
    ))
    .await;
    admin_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
    ))
    .await;
    wait_for_health(&entries, NOT_SERVING).await;
    assert!(entries.is_running(), "the process stays up");

    admin_sql(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true")).await;
    wait_for_health(&entries, SERVING).await;
    assert_eq!(clients.count_entries(&user).await, 2);
    assert!(entries.is_running());
}

async fn wait_for_health(process: &common::Process, wanted: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = process.health().await;
        if status == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health still {status:?}, waiting for {wanted}:\n{}",
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/metrics` takes a few connections at once, and one that sends no
/// request is closed after its header deadline: idle clients cannot hold it.
#[tokio::test]
async fn idle_metrics_connections_cannot_hold_the_listener() {
    let stack = Stack::new(TestDatabase::sqlite()).await;
    let (users, _entries) = stack.start().await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(
            tokio::net::TcpStream::connect(users.spec.metrics)
                .await
                .expect("connect"),
        );
    }
    // Give the listener time to take all eight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        users.try_scrape().await,
        "",
        "a ninth connection is closed unanswered"
    );
    // Past the 5 s header deadline the idle ones are gone.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    users.scrape().await;
    drop(idle);
}
