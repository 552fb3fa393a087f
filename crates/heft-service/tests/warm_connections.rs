//! The warm connections behind the PostgreSQL store's hot statements: kept
//! only after a statement that completed, never beyond their number.

use std::time::Duration;

use futures::FutureExt;
use heft_service::db::warm::WarmConnections;
use heft_test_support::TestDatabase;

async fn pool(db: &TestDatabase, size: u32) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(size)
        .connect(&db.url)
        .await
        .expect("connect")
}

/// The pool hands out a connection for a transaction within `within`.
async fn assert_pool_serves_a_transaction(pool: &sqlx::PgPool, within: Duration) {
    let mut tx = tokio::time::timeout(within, pool.begin())
        .await
        .expect("a connection for a transaction")
        .expect("begin");
    sqlx::query("SELECT 1")
        .execute(&mut *tx)
        .await
        .expect("in the transaction");
}

async fn backend_pid(warm: &WarmConnections) -> Result<i32, sqlx::Error> {
    warm.run(|connection| {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(connection)
            .boxed()
    })
    .await
}

#[tokio::test]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn a_completed_statement_keeps_its_connection_for_the_next() {
    let db = TestDatabase::postgres().await;
    let warm = WarmConnections::new(pool(&db, 4).await, 2);
    assert_eq!(warm.warm(), 0);
    let first = backend_pid(&warm).await.expect("first");
    assert_eq!(warm.warm(), 1);
    for _ in 0..5 {
        assert_eq!(backend_pid(&warm).await.expect("again"), first);
    }
    assert_eq!(warm.warm(), 1);
}

#[tokio::test]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn a_failed_or_abandoned_statement_gives_its_connection_back_to_the_pool() {
    let db = TestDatabase::postgres().await;
    let warm = WarmConnections::new(pool(&db, 4).await, 2);
    backend_pid(&warm).await.expect("warm up");

    let failed = warm
        .run(|connection| {
            sqlx::query_scalar::<_, i32>("SELECT 1 / 0")
                .fetch_one(connection)
                .boxed()
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(warm.warm(), 0, "a failed statement's connection stays warm");

    // Cut short mid-statement: the connection is mid-protocol.
    backend_pid(&warm).await.expect("warm up");
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        warm.run(|connection| {
            sqlx::query("SELECT pg_sleep(5)")
                .execute(connection)
                .boxed()
        }),
    )
    .await;
    assert!(abandoned.is_err(), "pg_sleep(5) finished within 100 ms");
    assert_eq!(
        warm.warm(),
        0,
        "an abandoned statement's connection stays warm"
    );

    // The pool checks what it got back; statements go on working.
    for _ in 0..8 {
        backend_pid(&warm)
            .await
            .expect("after the abandoned statement");
    }
}

#[tokio::test]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn no_more_are_kept_than_asked_and_the_pool_keeps_the_rest() {
    let db = TestDatabase::postgres().await;
    let pool = pool(&db, 4).await;
    let warm = WarmConnections::new(pool.clone(), 2);
    let statements = (0..4).map(|_| {
        warm.run(|connection| {
            sqlx::query("SELECT pg_sleep(0.2)")
                .execute(connection)
                .boxed()
        })
    });
    for done in futures::future::join_all(statements).await {
        done.expect("statement");
    }
    assert_eq!(warm.warm(), 2);
    // The two not kept are back in the pool, free for a transaction.
    assert_pool_serves_a_transaction(&pool, Duration::from_secs(2)).await;
}

#[tokio::test]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn statements_beyond_their_number_wait_their_turn_and_leave_the_pool_free() {
    let db = TestDatabase::postgres().await;
    let pool = pool(&db, 4).await;
    let warm = WarmConnections::new(pool.clone(), 2);
    // Ten times as many statements as turns, all at once.
    let statements = futures::future::join_all((0..20).map(|_| {
        warm.run(|connection| {
            async move {
                sqlx::query("SELECT pg_sleep(0.05)")
                    .execute(&mut *connection)
                    .await?;
                sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                    .fetch_one(&mut *connection)
                    .await
            }
            .boxed()
        })
    }));
    // Meanwhile a transaction finds a connection in the pool at once.
    let transaction = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_pool_serves_a_transaction(&pool, Duration::from_millis(500)).await;
    };
    let (pids, ()) = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join(statements, transaction),
    )
    .await
    .expect("every statement had its turn");
    let mut backends: Vec<i32> = pids
        .into_iter()
        .map(|pid| pid.expect("statement"))
        .collect();
    backends.sort_unstable();
    backends.dedup();
    assert_eq!(
        backends.len(),
        2,
        "statements ran on other than their two warm connections"
    );
    assert_eq!(warm.warm(), 2);
}
