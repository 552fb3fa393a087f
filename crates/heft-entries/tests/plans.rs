//! The plans PostgreSQL chooses for ListEntries and the changes feed where
//! it matters most: one user's 10,000 rows inserted after the table's last
//! `ANALYZE`, so the statistics say that user has none. Every shape of page must be an
//! ordered index scan that stops at the page: no sort of the user's
//! history, no bitmap of it, with a custom plan or a generic one.

use chrono::NaiveDate;
use heft_entries::{
    domain::{ChangeQuery, Cursor, DateRange, EntryId, ListQuery, SortOrder, UserId},
    store::{self, push_changes_statement, push_list_statement},
};
use heft_service::{changes::ChangePosition, db::Database};
use heft_test_support::TestDatabase;
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

/// Node types of a plan and all its children.
fn node_types(plan: &serde_json::Value, into: &mut Vec<String>) {
    if let Some(node) = plan["Node Type"].as_str() {
        into.push(node.to_owned());
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        node_types(child, into);
    }
}

/// The entries store's database, migrated and with the session settings the
/// service runs with.
async fn services_pool(db: &TestDatabase) -> sqlx::PgPool {
    match Database::open(&db.url, &store::MIGRATIONS)
        .await
        .expect("open")
    {
        Database::Postgres(pool) => pool,
        _ => panic!("a PostgreSQL database"),
    }
}

/// Plans every following statement of the session as custom or generic.
async fn set_plan_mode(connection: &mut sqlx::PgConnection, plan_mode: &str) {
    sqlx::query("SELECT set_config('plan_cache_mode', $1, false)")
        .bind(plan_mode)
        .execute(connection)
        .await
        .expect("plan mode");
}

#[tokio::test]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn list_pages_are_ordered_index_scans_on_stale_statistics() {
    let db = TestDatabase::postgres().await;
    let pool = &services_pool(&db).await;
    // A hundred light users, analysed; then the heavy one, not.
    sqlx::query(
        "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
         SELECT gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad((g % 100)::text, 12, '0'))::uuid,
                80, 1, date '2020-01-01' + (g / 100), '', now(), now()
         FROM generate_series(1, 20000) AS g",
    )
    .execute(pool)
    .await
    .expect("light users");
    sqlx::query("ANALYZE entries")
        .execute(pool)
        .await
        .expect("analyze");
    let heavy = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO entries (id, user_id, value, unit, recorded_on, note, create_time, update_time)
         SELECT gen_random_uuid(), $1, 80, 1, date '1990-01-01' + g, '', now(), now()
         FROM generate_series(1, 10000) AS g",
    )
    .bind(heavy)
    .execute(pool)
    .await
    .expect("heavy user");
    let middle: (NaiveDate, chrono::DateTime<chrono::Utc>, Uuid) = sqlx::query_as(
        "SELECT recorded_on, create_time, id FROM entries WHERE user_id = $1
         ORDER BY recorded_on, create_time, id OFFSET 5000 LIMIT 1",
    )
    .bind(heavy)
    .fetch_one(pool)
    .await
    .expect("middle entry");

    let user_id = UserId(heavy);
    let page = |order, after, range| ListQuery {
        user_id,
        range,
        order,
        after,
        limit: 101,
    };
    let cursor = Cursor {
        recorded_on: middle.0,
        create_time_micros: middle.1.timestamp_micros(),
        id: EntryId(middle.2),
    };
    let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d);
    let shapes = [
        (
            "first page",
            page(SortOrder::Ascending, None, DateRange::default()),
        ),
        (
            "first page, newest first",
            page(SortOrder::Descending, None, DateRange::default()),
        ),
        (
            "a deep page by token",
            page(SortOrder::Ascending, Some(cursor), DateRange::default()),
        ),
        (
            "a deep page by token, newest first",
            page(SortOrder::Descending, Some(cursor), DateRange::default()),
        ),
        (
            "a date range",
            page(
                SortOrder::Ascending,
                None,
                DateRange {
                    start: day(1995, 1, 1),
                    end: day(2010, 12, 31),
                },
            ),
        ),
    ];
    let mut connection = pool.acquire().await.expect("connection");
    // The service's sessions keep their limits beside the planner setting.
    for (setting, value) in [("statement_timeout", "30s"), ("enable_bitmapscan", "off")] {
        let shown: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(setting)
            .fetch_one(&mut *connection)
            .await
            .expect("show");
        assert_eq!(shown, value, "{setting}");
    }
    for plan_mode in ["force_custom_plan", "force_generic_plan"] {
        set_plan_mode(&mut connection, plan_mode).await;
        for (shape, query) in &shapes {
            let mut explain = QueryBuilder::new("EXPLAIN (FORMAT JSON) ");
            push_list_statement(&mut explain, query);
            assert_ordered_index_scan(&mut connection, explain, &format!("{shape} ({plan_mode})"))
                .await;
        }
    }
}

/// The plan of `explain` reads an index and neither sorts nor bitmaps.
async fn assert_ordered_index_scan(
    connection: &mut sqlx::PgConnection,
    mut explain: QueryBuilder<sqlx::Postgres>,
    shape: &str,
) {
    let row = explain
        .build()
        .fetch_one(connection)
        .await
        .expect("explain");
    // `json`, which sqlx reads as the text it is.
    let text: String = row.try_get_unchecked(0).expect("plan text");
    let plan: serde_json::Value = serde_json::from_str(&text).expect("plan json");
    let mut nodes = Vec::new();
    node_types(&plan[0]["Plan"], &mut nodes);
    assert!(
        nodes.iter().any(|n| n.starts_with("Index")),
        "{shape}: {nodes:?}"
    );
    assert!(
        !nodes.iter().any(|n| n == "Sort" || n.starts_with("Bitmap")),
        "{shape}: {nodes:?}\n{text}"
    );
}

/// A page of the changes feed, of everyone or of one heavy user whose
/// changes came after the last `ANALYZE`, from the start or from deep in.
#[tokio::test]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn feed_pages_are_ordered_index_scans_on_stale_statistics() {
    let db = TestDatabase::postgres().await;
    let pool = &services_pool(&db).await;
    let insert_changes = "INSERT INTO entry_changes
            (change_type, entry_id, user_id, value, unit, recorded_on, note, create_time, update_time)
         SELECT 1, gen_random_uuid(), COALESCE($1, ('00000000-0000-0000-0000-' || lpad((g % 100)::text, 12, '0'))::uuid),
                80, 1, date '2020-01-01', '', now(), now()
         FROM generate_series(1, $2) AS g";
    sqlx::query(insert_changes)
        .bind(None::<Uuid>)
        .bind(200_000_i64)
        .execute(pool)
        .await
        .expect("light users");
    sqlx::query("ANALYZE entry_changes")
        .execute(pool)
        .await
        .expect("analyze");
    let heavy = Uuid::new_v4();
    sqlx::query(insert_changes)
        .bind(Some(heavy))
        .bind(100_000_i64)
        .execute(pool)
        .await
        .expect("heavy user");
    let deep: (i64, i64) = sqlx::query_as(
        "SELECT xid::text::int8, seq FROM entry_changes ORDER BY xid, seq OFFSET 250000 LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .expect("a deep position");
    let horizon = ChangePosition {
        xid: i64::MAX / 2,
        seq: 0,
    };
    let start = ChangePosition { xid: 0, seq: 0 };
    let deep = ChangePosition {
        xid: deep.0,
        seq: deep.1,
    };
    let mut connection = pool.acquire().await.expect("connection");
    for plan_mode in ["force_custom_plan", "force_generic_plan"] {
        set_plan_mode(&mut connection, plan_mode).await;
        for (shape, user_id, after) in [
            ("everyone's, from the start", None, start),
            ("everyone's, deep", None, deep),
            (
                "the heavy user's, from the start",
                Some(UserId(heavy)),
                start,
            ),
            ("the heavy user's, deep", Some(UserId(heavy)), deep),
        ] {
            let mut explain = QueryBuilder::new("EXPLAIN (FORMAT JSON) ");
            let query = ChangeQuery {
                after,
                user_id,
                limit: 500,
            };
            push_changes_statement(&mut explain, &query, horizon);
            assert_ordered_index_scan(&mut connection, explain, &format!("{shape} ({plan_mode})"))
                .await;
        }
    }
}
