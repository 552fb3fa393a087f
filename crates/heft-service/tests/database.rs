//! The database handle both services open: migrations, readiness, and the
//! signing keys every replica shares, on SQLite and PostgreSQL.

use heft_service::db::{Database, Migrations};
use heft_test_support::{TestDatabase, backend_tests};

/// Any service's schema holds the signing keys; the users one is used here.
static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("../../migrations/users/postgres"),
    sqlite: sqlx::migrate!("../../migrations/users/sqlite"),
};

async fn open(db: &TestDatabase) -> Database {
    Database::open(&db.url, &MIGRATIONS).await.expect("open")
}

backend_tests!(
    signing_keys_are_shared_by_every_opener,
    opening_twice_migrates_once_and_answers_pings
);

async fn signing_keys_are_shared_by_every_opener(db: TestDatabase) {
    let first = open(&db).await;
    let second = open(&db).await;
    let key = first
        .signing_key("page_token", &[1; 32])
        .await
        .expect("key");
    assert_eq!(key, vec![1; 32]);
    assert_eq!(
        second
            .signing_key("page_token", &[2; 32])
            .await
            .expect("key"),
        key
    );
    // Keys of other names are their own.
    assert_eq!(
        second
            .signing_key("login_throttle", &[3; 32])
            .await
            .expect("key"),
        vec![3; 32]
    );
}

async fn opening_twice_migrates_once_and_answers_pings(db: TestDatabase) {
    let first = open(&db).await;
    let second = open(&db).await;
    first.ping().await.expect("ping");
    second.ping().await.expect("ping");
    let (size, idle) = second.pool_connections();
    assert!(size >= 1, "the ping left a connection in the pool");
    assert!(idle <= size as usize);
}
