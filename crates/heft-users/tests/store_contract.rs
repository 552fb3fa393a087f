//! One contract for every `UserStore` backend, run against SQLite and PostgreSQL.

use std::{collections::HashSet, sync::Arc};

use heft_service::{db::Database, time, user_token::TokenSigningKey};
use heft_test_support::{TestDatabase, backend_tests};
use heft_users::{
    domain::{
        Credentials, Email, HashReplacement, LoginAttempt, LoginThrottle, PurgeCursor, PurgeJob,
        PurgeJobQuery, PurgeState, ThrottleKey, User, UserId, UserName, UserPatch, WeightUnit,
    },
    store::{self, StoreError, UserStore},
};
use std::time::Duration;
use uuid::Uuid;

async fn open(db: &TestDatabase) -> Arc<dyn UserStore> {
    let database = Database::open(&db.url, &store::MIGRATIONS)
        .await
        .expect("open database");
    store::on(&database)
}

fn new_user(email: &str) -> Credentials {
    let now = time::now();
    Credentials {
        user: User {
            id: UserId::generate(),
            email: Email::parse(email).expect("email"),
            name: UserName::parse("Test User").expect("name"),
            weight_unit: WeightUnit::Kilograms,
            create_time: now,
            update_time: now,
        },
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".to_owned(),
    }
}

fn job_for(user_id: UserId) -> PurgeJob {
    PurgeJob {
        id: Uuid::now_v7(),
        user_id,
        request_id: Some("req-1".to_owned()),
        traceparent: Some(TRACEPARENT.to_owned()),
        attempts: 1,
    }
}

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A new user, deleted at once, and its purge job: with no lease, due right
/// away, as after a failed first delivery.
async fn deleted_user(store: &dyn UserStore, email: &str) -> (UserId, PurgeJob) {
    let user = new_user(email);
    store.create_user(&user).await.expect("create");
    let job = job_for(user.user.id);
    store
        .delete_user(user.user.id, &job, Duration::ZERO)
        .await
        .expect("delete");
    (user.user.id, job)
}

backend_tests!(
    token_keys_and_password_changes,
    creates_reads_and_lists_users,
    unicode_emails_and_names_behave_alike_on_both_backends,
    emails_are_unique_even_under_concurrent_creates,
    updates_apply_only_the_patch,
    login_attempts_are_limited_atomically,
    delete_records_a_purge_job_in_the_same_transaction,
    purge_jobs_are_claimed_once_and_settled,
    purge_records_list_oldest_first_by_state,
    password_hashes_are_replaced_only_if_unchanged,
);

async fn password_hashes_are_replaced_only_if_unchanged(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user("cas@example.com");
    store.create_user(&user).await.expect("create");
    let id = user.user.id;
    let now = time::now();

    assert!(
        !store
            .replace_password_hash(&HashReplacement {
                id,
                expected: "$argon2id$stale",
                new_hash: "$argon2id$new",
                now,
                new_password: true,
            })
            .await
            .expect("cas")
    );
    assert_eq!(
        store.credentials(id).await.expect("hash").password_hash,
        user.password_hash
    );
    assert!(
        store
            .replace_password_hash(&HashReplacement {
                id,
                expected: &user.password_hash,
                new_hash: "$argon2id$new",
                now,
                new_password: true,
            })
            .await
            .expect("cas")
    );
    assert_eq!(
        store.credentials(id).await.expect("hash").password_hash,
        "$argon2id$new"
    );
}

/// Values the two backends could compare differently: non-ASCII emails
/// that differ only in case or in Unicode composition are one address (the
/// domain NFC-normalises and lower-cases them; neither SQLite's NOCASE nor
/// PostgreSQL's lower() is relied on for that), and names at the length limit
/// in multi-byte characters.
async fn unicode_emails_and_names_behave_alike_on_both_backends(db: TestDatabase) {
    let store = open(&db).await;
    let mut first = new_user("\u{c9}cole@example.com");
    first.user.name = UserName::parse(&"\u{e9}".repeat(UserName::MAX_CHARS)).expect("name");
    store.create_user(&first).await.expect("create");
    assert_eq!(
        store.get_user(first.user.id).await.expect("get").name,
        first.user.name
    );
    for taken in [
        "\u{e9}cole@example.com",
        "e\u{301}cole@EXAMPLE.com",
        "E\u{301}COLE@example.com",
    ] {
        assert!(
            matches!(
                store.create_user(&new_user(taken)).await,
                Err(StoreError::EmailTaken)
            ),
            "{taken}"
        );
        let found = store
            .find_credentials(&Email::parse(taken).expect("email"))
            .await
            .expect("find")
            .expect("same address");
        assert_eq!(found.user.id, first.user.id);
    }
}

async fn creates_reads_and_lists_users(db: TestDatabase) {
    let store = open(&db).await;
    let mut created = Vec::new();
    for i in 0..5 {
        let user = new_user(&format!("user{i}@example.com"));
        store.create_user(&user).await.expect("create");
        created.push(user.user);
    }
    let read = store.get_user(created[2].id).await.expect("get");
    assert_eq!(read, created[2]);
    assert!(matches!(
        store.get_user(UserId::generate()).await,
        Err(StoreError::NotFound)
    ));

    let first = store.list_users(None, 3).await.expect("page 1");
    let rest = store
        .list_users(Some(first[2].id), 3)
        .await
        .expect("page 2");
    let listed: Vec<_> = first.iter().chain(&rest).map(|u| u.id).collect();
    assert_eq!(listed, created.iter().map(|u| u.id).collect::<Vec<_>>());

    let credentials = store
        .find_credentials(&Email::parse("USER3@example.com").expect("email"))
        .await
        .expect("find")
        .expect("exists");
    assert_eq!(credentials.user.id, created[3].id);
    assert!(credentials.password_hash.starts_with("$argon2id$"));
}

async fn emails_are_unique_even_under_concurrent_creates(db: TestDatabase) {
    let store = open(&db).await;
    let attempts = (0..8).map(|_| {
        let store = store.clone();
        async move { store.create_user(&new_user("same@example.com")).await }
    });
    let results = futures::future::join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, StoreError::EmailTaken)),
        "{results:?}"
    );
    assert_eq!(store.list_users(None, 100).await.expect("list").len(), 1);
}

async fn updates_apply_only_the_patch(db: TestDatabase) {
    let store = open(&db).await;
    let ada = new_user("ada@example.com");
    let bob = new_user("bob@example.com");
    store.create_user(&ada).await.expect("create");
    store.create_user(&bob).await.expect("create");

    let later = time::now() + chrono::Duration::seconds(1);
    let patch = UserPatch {
        name: Some(UserName::parse("Ada L.").expect("name")),
        weight_unit: Some(WeightUnit::Pounds),
        ..UserPatch::default()
    };
    let updated = store
        .update_user(ada.user.id, &patch, later)
        .await
        .expect("update");
    assert_eq!(updated.name.as_str(), "Ada L.");
    assert_eq!(updated.weight_unit, WeightUnit::Pounds);
    assert_eq!(updated.email, ada.user.email);
    assert_eq!(updated.create_time, ada.user.create_time);
    assert_eq!(updated.update_time, later);

    let steal = UserPatch {
        email: Some(Email::parse("bob@example.com").expect("email")),
        ..UserPatch::default()
    };
    assert!(matches!(
        store.update_user(ada.user.id, &steal, later).await,
        Err(StoreError::EmailTaken)
    ));
    assert!(matches!(
        store.update_user(UserId::generate(), &patch, later).await,
        Err(StoreError::NotFound)
    ));
}

async fn login_attempts_are_limited_atomically(db: TestDatabase) {
    let store = open(&db).await;
    // Keyed by email, whether or not an account has it: nobody is created.
    let key = ThrottleKey([7; 32]);
    let other = ThrottleKey([8; 32]);
    let throttle = LoginThrottle::default();
    // Windows are timed by the database's clock: this one ends within the test.
    let short = LoginThrottle {
        window: chrono::Duration::seconds(1),
        ..throttle
    };
    let over = || tokio::time::sleep(Duration::from_millis(1_200));

    let attempt = |key: ThrottleKey, throttle| {
        let store = store.clone();
        async move {
            store
                .begin_login_attempt(&key, throttle)
                .await
                .expect("attempt")
        }
    };
    let locked = |attempt: LoginAttempt| matches!(attempt, LoginAttempt::Locked { .. });

    let attempts = (0..50).map(|_| attempt(key, throttle));
    let results = futures::future::join_all(attempts).await;
    let allowed = results
        .iter()
        .filter(|r| **r == LoginAttempt::Allowed)
        .count();
    assert_eq!(allowed, 10, "{results:?}");
    let retry_after = results
        .iter()
        .find_map(|r| match r {
            LoginAttempt::Locked { retry_after } => Some(*retry_after),
            LoginAttempt::Allowed => None,
        })
        .expect("locked");
    assert!(
        retry_after <= Duration::from_secs(15 * 60) && retry_after > Duration::from_secs(14 * 60),
        "{retry_after:?}"
    );
    // Another email's count is its own.
    assert_eq!(attempt(other, throttle).await, LoginAttempt::Allowed);
    store.clear_login_failures(&key).await.expect("clear");
    for _ in 0..10 {
        assert_eq!(attempt(key, short).await, LoginAttempt::Allowed);
    }
    assert!(locked(attempt(key, short).await));
    // An attempt whose password was never checked is given back: one more fits.
    store.refund_login_attempt(&key).await.expect("refund");
    assert_eq!(attempt(key, short).await, LoginAttempt::Allowed);
    assert!(locked(attempt(key, short).await));

    // Once the window is over, a new one starts.
    over().await;
    assert_eq!(attempt(key, short).await, LoginAttempt::Allowed);
    // Rows whose window is over are removed in bounded batches: `other`'s
    // is, `key`'s has just started again.
    let sweep = |limit| {
        let store = store.clone();
        async move {
            store
                .remove_expired_login_throttles(short.window, limit)
                .await
                .expect("sweep")
        }
    };
    assert_eq!(sweep(100).await, 1);
    assert_eq!(sweep(100).await, 0);
    assert_eq!(attempt(other, short).await, LoginAttempt::Allowed);
    over().await;
    assert_eq!(sweep(1).await, 1, "one row per batch of one");
    assert_eq!(sweep(1).await, 1);
    assert_eq!(sweep(100).await, 0, "the table is empty");
}

async fn delete_records_a_purge_job_in_the_same_transaction(db: TestDatabase) {
    let store = open(&db).await;
    let user = new_user("gone@example.com");
    store.create_user(&user).await.expect("create");
    let id = user.user.id;

    store
        .delete_user(id, &job_for(id), Duration::ZERO)
        .await
        .expect("delete");
    assert!(matches!(
        store.get_user(id).await,
        Err(StoreError::NotFound)
    ));
    let stats = store.purge_queue_stats().await.expect("stats");
    assert_eq!(stats.pending, 1);
    assert!(
        stats
            .oldest_pending_age
            .is_some_and(|age| age < Duration::from_secs(60))
    );

    // A second delete finds nothing and records no job.
    assert!(matches!(
        store.delete_user(id, &job_for(id), Duration::ZERO).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.purge_queue_stats().await.expect("stats").pending, 1);

    // The email is free again.
    store
        .create_user(&new_user("gone@example.com"))
        .await
        .expect("re-register");
}

async fn purge_jobs_are_claimed_once_and_settled(db: TestDatabase) {
    let store = open(&db).await;
    let mut jobs = HashSet::new();
    for i in 0..6 {
        let (_, job) = deleted_user(&*store, &format!("p{i}@example.com")).await;
        jobs.insert(job.id);
    }

    let short_lease = Duration::from_millis(800);
    let claims = (0..4).map(|_| {
        let store = store.clone();
        async move {
            store
                .claim_due_purge_jobs(short_lease, 2)
                .await
                .expect("claim")
        }
    });
    let claimed: Vec<PurgeJob> = futures::future::join_all(claims)
        .await
        .into_iter()
        .flatten()
        .collect();
    let ids: HashSet<_> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(
        claimed.len(),
        6,
        "every job claimed exactly once: {claimed:?}"
    );
    assert_eq!(ids, jobs);
    assert!(claimed.iter().all(|j| j.attempts == 2
        && j.request_id.as_deref() == Some("req-1")
        && j.traceparent.as_deref() == Some(TRACEPARENT)));
    assert!(
        store
            .claim_due_purge_jobs(short_lease, 10)
            .await
            .expect("claim")
            .is_empty()
    );

    // Settle: one done, one retried at once, one refused (retried much later);
    // the rest come back after the lease.
    let long_lease = Duration::from_secs(600);
    store
        .complete_purge_job(claimed[0].id, 3)
        .await
        .expect("complete");
    store
        .retry_purge_job(claimed[1].id, Duration::ZERO, "Unavailable: down")
        .await
        .expect("retry");
    store
        .retry_purge_job(
            claimed[2].id,
            long_lease,
            "PERMISSION_DENIED: internal only",
        )
        .await
        .expect("refused");
    let retried = store
        .claim_due_purge_jobs(long_lease, 10)
        .await
        .expect("claim");
    assert_eq!(
        retried.iter().map(|j| j.id).collect::<Vec<_>>(),
        [claimed[1].id]
    );

    tokio::time::sleep(short_lease + Duration::from_millis(200)).await;
    let after_lease = store
        .claim_due_purge_jobs(long_lease, 10)
        .await
        .expect("claim");
    let mut expected: Vec<_> = claimed[3..].iter().map(|j| j.id).collect();
    let mut got: Vec<_> = after_lease.iter().map(|j| j.id).collect();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "the three unsettled jobs, once their lease ran out"
    );

    let stats = store.purge_queue_stats().await.expect("stats");
    assert_eq!(stats.pending, 5);
    assert!(stats.oldest_pending_age.is_some());

    // The deletion records tell an operator how each purge went.
    let done = store
        .purge_record(claimed[0].user_id)
        .await
        .expect("record");
    assert_eq!(done.state, PurgeState::Purged);
    assert_eq!(done.purged_entry_count, Some(3));
    assert_eq!((done.attempts, done.last_error.as_deref()), (2, None));
    assert!(done.complete_time.is_some() && done.next_attempt_time.is_none());
    let refused = store
        .purge_record(claimed[2].user_id)
        .await
        .expect("record");
    assert_eq!(refused.state, PurgeState::Pending);
    assert_eq!(
        refused.last_error.as_deref(),
        Some("PERMISSION_DENIED: internal only")
    );
    assert!(refused.complete_time.is_none());
    assert!(
        refused.next_attempt_time.expect("due time") > time::now() + chrono::Duration::seconds(500)
    );
    assert!(matches!(
        store.purge_record(UserId::generate()).await,
        Err(StoreError::PurgeJobNotFound)
    ));
}

async fn purge_records_list_oldest_first_by_state(db: TestDatabase) {
    let store = open(&db).await;
    let mut users = Vec::new();
    for i in 0..5 {
        let (user, job) = deleted_user(&*store, &format!("l{i}@example.com")).await;
        if i % 2 == 0 {
            store.complete_purge_job(job.id, i).await.expect("complete");
        }
        users.push(user);
    }
    let list = |state, after, limit| {
        let store = store.clone();
        async move {
            store
                .list_purge_records(&PurgeJobQuery {
                    state,
                    after,
                    limit,
                })
                .await
                .expect("list")
        }
    };
    let first = list(None, None, 3).await;
    let rest = list(None, first.last().map(PurgeCursor::after), 3).await;
    let all: Vec<UserId> = first.iter().chain(&rest).map(|r| r.user_id).collect();
    assert_eq!(all, users, "every deletion once, oldest first");
    let purged: Vec<UserId> = list(Some(PurgeState::Purged), None, 10)
        .await
        .iter()
        .map(|r| r.user_id)
        .collect();
    assert_eq!(purged, [users[0], users[2], users[4]]);
    let pending = list(Some(PurgeState::Pending), None, 10).await;
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(|r| r.state == PurgeState::Pending));
}

async fn token_keys_and_password_changes(db: TestDatabase) {
    let store = open(&db).await;
    assert!(store.token_keys().await.expect("keys").is_empty());
    let first = TokenSigningKey::generate();
    let second = TokenSigningKey::generate();
    let now = time::now();
    store.add_token_key(&first, now).await.expect("add");
    store
        .add_token_key(&second, now + chrono::Duration::seconds(1))
        .await
        .expect("add");
    let keys = store.token_keys().await.expect("keys");
    let kids: Vec<&str> = keys.iter().map(|k| k.key.kid.as_str()).collect();
    assert_eq!(
        kids,
        [second.kid.as_str(), first.kid.as_str()],
        "newest first"
    );
    assert_eq!(
        keys[0].key.public(),
        second.public(),
        "the seed round-trips"
    );

    let user = new_user("tokens@example.com");
    store.create_user(&user).await.expect("create");
    let id = user.user.id;
    assert_eq!(store.password_change_time(id).await.expect("time"), None);
    let rehash = HashReplacement {
        id,
        expected: &user.password_hash,
        new_hash: "$argon2id$rehashed",
        now,
        new_password: false,
    };
    assert!(store.replace_password_hash(&rehash).await.expect("rehash"));
    assert_eq!(
        store.password_change_time(id).await.expect("time"),
        None,
        "a re-hash is no change"
    );
    let changed_at = now + chrono::Duration::seconds(5);
    let change = HashReplacement {
        id,
        expected: "$argon2id$rehashed",
        new_hash: "$argon2id$new",
        now: changed_at,
        new_password: true,
    };
    assert!(store.replace_password_hash(&change).await.expect("change"));
    assert_eq!(
        store.password_change_time(id).await.expect("time"),
        Some(changed_at)
    );
    assert!(matches!(
        store.password_change_time(UserId::generate()).await,
        Err(StoreError::NotFound)
    ));
}
