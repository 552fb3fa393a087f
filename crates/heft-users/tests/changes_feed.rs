//! The users changes feed, on both backends: creations and updates carry
//! the user, a password change adds nothing, and a deletion leaves only the
//! id in the feed, in the deletion's transaction.

use std::{sync::Arc, time::Duration};

use heft_service::{changes::ChangePosition, db::Database, time};
use heft_test_support::{TestDatabase, backend_tests};
use heft_users::{
    domain::{
        Credentials, Email, HashReplacement, PurgeJob, User, UserChange, UserChangeKind, UserId,
        UserName, UserPatch, WeightUnit,
    },
    store::{self, UserStore},
};
use uuid::Uuid;

backend_tests!(a_deletion_leaves_only_the_id_in_the_feed);

async fn open(db: &TestDatabase) -> Arc<dyn UserStore> {
    let database = Database::open(&db.url, &store::MIGRATIONS)
        .await
        .expect("open database");
    store::on(&database)
}

fn new_user(email: &str, name: &str) -> Credentials {
    let now = time::now();
    Credentials {
        user: User {
            id: UserId::generate(),
            email: Email::parse(email).expect("email"),
            name: UserName::parse(name).expect("name"),
            weight_unit: WeightUnit::Kilograms,
            create_time: now,
            update_time: now,
        },
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".to_owned(),
    }
}

/// Every change after `after`, in pages of `page`, once there are at least
/// `expected` (on PostgreSQL a change is served once no older transaction
/// is open on the server, other tests' included: it may take a moment).
async fn follow(
    store: &dyn UserStore,
    after: ChangePosition,
    page: u32,
    expected: usize,
) -> Vec<UserChange> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = read_all(store, after, page).await;
        if seen.len() >= expected {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {expected} changes",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_all(store: &dyn UserStore, mut after: ChangePosition, page: u32) -> Vec<UserChange> {
    let mut seen = Vec::new();
    loop {
        let changes = store.list_user_changes(after, page).await.expect("changes");
        assert!(changes.next >= after);
        after = changes.next;
        let short = changes.changes.len() < page as usize;
        seen.extend(changes.changes);
        if short {
            return seen;
        }
    }
}

async fn a_deletion_leaves_only_the_id_in_the_feed(db: TestDatabase) {
    let store = open(&db).await;
    let head = store.user_changes_head().await.expect("head");
    let gone = new_user("erased.person@example.com", "Erased Person");
    let stays = new_user("stays@example.com", "Stays");
    store.create_user(&gone).await.expect("create");
    store.create_user(&stays).await.expect("create");
    let updated = store
        .update_user(
            stays.user.id,
            &UserPatch {
                name: Some(UserName::parse("Stays Renamed").expect("name")),
                ..UserPatch::default()
            },
            time::now(),
        )
        .await
        .expect("update");
    store
        .update_user(
            gone.user.id,
            &UserPatch {
                weight_unit: Some(WeightUnit::Pounds),
                ..UserPatch::default()
            },
            time::now(),
        )
        .await
        .expect("update");
    // A new password changes nothing a copy holds.
    assert!(
        store
            .replace_password_hash(&HashReplacement {
                id: stays.user.id,
                expected: &stays.password_hash,
                new_hash: "$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$bmV3aGFzaA",
                now: time::now(),
                new_password: true,
            })
            .await
            .expect("password")
    );

    let seen = follow(&*store, head, 2, 4).await;
    let kinds: Vec<&UserChangeKind> = seen.iter().map(|change| &change.kind).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(kinds[0], &UserChangeKind::Created(gone.user.clone()));
    assert_eq!(kinds[2], &UserChangeKind::Updated(updated));

    let job = PurgeJob {
        id: Uuid::now_v7(),
        user_id: gone.user.id,
        request_id: None,
        traceparent: None,
        attempts: 1,
    };
    store
        .delete_user(gone.user.id, &job, Duration::ZERO)
        .await
        .expect("delete");
    let seen = follow(&*store, head, 3, 3).await;
    let of_gone: Vec<&UserChangeKind> = seen
        .iter()
        .map(|change| &change.kind)
        .filter(|kind| match kind {
            UserChangeKind::Created(user) | UserChangeKind::Updated(user) => {
                user.id == gone.user.id
            }
            UserChangeKind::Deleted(id) => *id == gone.user.id,
        })
        .collect();
    assert_eq!(of_gone, [&UserChangeKind::Deleted(gone.user.id)]);
    assert_eq!(seen.len(), 3, "the other user's changes stay: {seen:?}");

    // Expired changes go, oldest first, a bounded batch at a time.
    let later = time::now() + chrono::TimeDelta::seconds(1);
    assert_eq!(
        store
            .remove_user_changes_before(later, 2)
            .await
            .expect("remove"),
        2
    );
    assert_eq!(follow(&*store, head, 10, 1).await.len(), 1);
}
