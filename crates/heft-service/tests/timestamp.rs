//! `Timestamp` read from PostgreSQL's binary `timestamptz` by hand: the same
//! instant as sqlx's own decoding, either side of 2000, to the microsecond.

use chrono::{DateTime, Utc};
use heft_service::db::Timestamp;
use heft_test_support::TestDatabase;

#[tokio::test]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn binary_instants_decode_as_sqlx_decodes_them() {
    let db = TestDatabase::postgres().await;
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    for literal in [
        "1970-01-01 00:00:00+00",
        "1999-12-31 23:59:59.999999+00",
        "2000-01-01 00:00:00+00",
        "2000-01-01 00:00:00.000001+00",
        "2026-12-06 05:41:07.123456+00",
        "1900-02-28 12:00:00.5+00",
    ] {
        // Prepared, so PostgreSQL answers in binary.
        let (ours, theirs): (Timestamp, DateTime<Utc>) =
            sqlx::query_as("SELECT $1::timestamptz, $1::timestamptz")
                .bind(literal)
                .fetch_one(&pool)
                .await
                .expect(literal);
        assert_eq!(ours.0, theirs, "{literal}");
    }
    let infinity = sqlx::query_scalar::<_, Timestamp>("SELECT 'infinity'::timestamptz")
        .fetch_one(&pool)
        .await;
    assert!(infinity.is_err(), "infinity is no instant: {infinity:?}");
}
