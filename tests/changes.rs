//! The changes feeds through the API, both services together: a copy kept
//! from the feeds alone matches ListEntries after creates, updates,
//! deletes and a user's deletion; a deleted user leaves no email, name or
//! note in either feed; tokens are tamper-evident, bound to their filter and
//! expire; a user token follows its own entries only.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{PASSWORD, Stack, authorized, with_token};
use heft_proto::{
    common::v1::{Weight, WeightUnit},
    entries::v1 as entries_pb,
    google::r#type::Date,
    users::v1 as users_pb,
};
use heft_test_support::{
    TestDatabase, backend_tests,
    status::{assert_invalid, reason},
};
use tonic::Code;

backend_tests!(a_copy_kept_from_the_feeds_matches_the_service);

const UPSERTED: i32 = entries_pb::EntryChangeType::Upserted as i32;
const DELETED: i32 = entries_pb::EntryChangeType::Deleted as i32;
const USER_PURGED: i32 = entries_pb::EntryChangeType::UserPurged as i32;

/// A copy of the entries, kept from the entry feed alone.
#[derive(Default)]
struct Copy {
    entries: HashMap<String, BTreeMap<String, entries_pb::Entry>>,
    token: String,
    seen: Vec<entries_pb::EntryChange>,
}

impl Copy {
    /// Follows the feed from where it stands (the head if nowhere) until a
    /// page comes back short.
    async fn follow(&mut self, stack: &Stack, user_id: &str) {
        let mut clients = stack.clients();
        loop {
            let page = clients
                .entries
                .list_entry_changes(authorized(entries_pb::ListEntryChangesRequest {
                    user_id: user_id.to_owned(),
                    change_token: self.token.clone(),
                    page_size: 4,
                }))
                .await
                .expect("changes")
                .into_inner();
            assert!(!page.next_change_token.is_empty(), "always set");
            let started = !self.token.is_empty();
            self.token = page.next_change_token;
            let short = page.changes.len() < 4;
            for change in page.changes {
                self.apply(&change);
                self.seen.push(change);
            }
            if started && short {
                return;
            }
        }
    }

    /// Follows until `done` holds: on PostgreSQL a change is served once no
    /// older transaction is open on the server (other tests' included).
    async fn until(&mut self, stack: &Stack, user_id: &str, done: impl Fn(&Copy) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            self.follow(stack, user_id).await;
            if done(self) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the feed never caught up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn apply(&mut self, change: &entries_pb::EntryChange) {
        assert!(change.change_time.is_some());
        match change.change_type {
            UPSERTED => {
                let entry = change.entry.clone().expect("an upsert carries the entry");
                assert_eq!(
                    (&entry.id, &entry.user_id),
                    (&change.entry_id, &change.user_id)
                );
                self.entries
                    .entry(change.user_id.clone())
                    .or_default()
                    .insert(entry.id.clone(), entry);
            }
            DELETED => {
                assert!(change.entry.is_none());
                if let Some(entries) = self.entries.get_mut(&change.user_id) {
                    entries.remove(&change.entry_id);
                }
            }
            USER_PURGED => {
                assert!(change.entry.is_none() && change.entry_id.is_empty());
                self.entries.remove(&change.user_id);
            }
            other => panic!("unknown change type {other}"),
        }
    }

    fn of(&self, user_id: &str) -> Vec<entries_pb::Entry> {
        self.entries
            .get(user_id)
            .map(|entries| entries.values().cloned().collect())
            .unwrap_or_default()
    }
}

async fn listed(stack: &Stack, user_id: &str) -> Vec<entries_pb::Entry> {
    let mut entries = stack
        .clients()
        .entries
        .list_entries(authorized(entries_pb::ListEntriesRequest {
            user_id: user_id.to_owned(),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .entries;
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    entries
}

fn new_entry(user_id: &str, day: i32, note: &str) -> entries_pb::CreateEntryRequest {
    entries_pb::CreateEntryRequest {
        user_id: user_id.to_owned(),
        weight: Some(Weight {
            value: 70.0 + f64::from(day),
            unit: WeightUnit::Kilograms as i32,
        }),
        recorded_on: Some(Date {
            year: 2025,
            month: 2,
            day,
        }),
        note: note.to_owned(),
        request_id: String::new(),
    }
}

/// Every user change from `token` on, once `done` holds for them.
async fn user_changes_until(
    stack: &Stack,
    token: &str,
    done: impl Fn(&[users_pb::UserChange]) -> bool,
) -> Vec<users_pb::UserChange> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let changes = user_changes(stack, token.to_owned()).await;
        if done(&changes) {
            return changes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the feed never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every user change from `token` on, until a short page.
async fn user_changes(stack: &Stack, mut token: String) -> Vec<users_pb::UserChange> {
    let mut clients = stack.clients();
    let mut seen = Vec::new();
    loop {
        let page = clients
            .users
            .list_user_changes(authorized(users_pb::ListUserChangesRequest {
                change_token: token,
                page_size: 3,
            }))
            .await
            .expect("user changes")
            .into_inner();
        token = page.next_change_token;
        let short = page.changes.len() < 3;
        seen.extend(page.changes);
        if short {
            return seen;
        }
    }
}

async fn a_copy_kept_from_the_feeds_matches_the_service(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (_users, _entries) = stack.spawn().await;
    let mut clients = stack.clients();

    let mut copy = Copy::default();
    copy.follow(&stack, "").await;
    let users_head = user_changes(&stack, String::new()).await;
    assert!(users_head.is_empty(), "the head has no changes");
    let users_token = clients
        .users
        .list_user_changes(authorized(users_pb::ListUserChangesRequest::default()))
        .await
        .expect("head")
        .into_inner()
        .next_change_token;
    let mut from_the_start = Copy {
        token: copy.token.clone(),
        ..Copy::default()
    };

    let email = format!("erased.{}@example.com", uuid::Uuid::new_v4().simple());
    let gone = clients.create_user_with_email(&email).await;
    let stays = clients.create_user().await;
    let mut created = Vec::new();
    for day in 1..=5 {
        let entry = clients
            .entries
            .create_entry(authorized(new_entry(&gone, day, "a private note")))
            .await
            .expect("create")
            .into_inner();
        created.push(entry);
    }
    clients.import(&stays, 30).await;
    clients
        .entries
        .create_entry(authorized(new_entry(&stays, 9, "")))
        .await
        .expect("create");
    clients
        .entries
        .update_entry(authorized(entries_pb::UpdateEntryRequest {
            entry: Some(entries_pb::Entry {
                id: created[0].id.clone(),
                note: "changed".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["note".into()],
            }),
        }))
        .await
        .expect("update");
    clients
        .entries
        .delete_entry(authorized(entries_pb::DeleteEntryRequest {
            id: created[1].id.clone(),
        }))
        .await
        .expect("delete");

    let (of_gone, of_stays_now) = (listed(&stack, &gone).await, listed(&stack, &stays).await);
    assert_eq!(of_gone.len(), 4);
    copy.until(&stack, "", |copy| {
        copy.of(&gone) == of_gone && copy.of(&stays) == of_stays_now
    })
    .await;

    // One user's feed: only theirs.
    let mut of_stays = Copy::default();
    of_stays.follow(&stack, &stays).await;
    let tenth = clients
        .entries
        .create_entry(authorized(new_entry(&stays, 10, "")))
        .await
        .expect("create")
        .into_inner();
    of_stays
        .until(&stack, &stays, |copy| {
            copy.seen
                .iter()
                .any(|change| change.entry.as_ref() == Some(&tenth))
        })
        .await;
    // Only theirs (on PostgreSQL, changes made just before the head may
    // come too: the head is the oldest transaction in flight).
    assert!(of_stays.seen.iter().all(|change| change.user_id == stays));

    // The user is deleted: the copy loses their entries too.
    clients.delete_user(&gone, None).await.expect("delete user");
    let of_stays_now = listed(&stack, &stays).await;
    copy.until(&stack, "", |copy| copy.of(&gone).is_empty())
        .await;
    assert_eq!(copy.of(&stays), of_stays_now);

    // Read from before the user existed: nothing of theirs but the erasure.
    from_the_start
        .until(&stack, "", |copy| {
            copy.seen
                .iter()
                .any(|change| change.change_type == USER_PURGED && change.user_id == gone)
        })
        .await;
    let of_gone: Vec<&entries_pb::EntryChange> = from_the_start
        .seen
        .iter()
        .filter(|change| change.user_id == gone)
        .collect();
    assert_eq!(of_gone.len(), 1, "{of_gone:?}");
    assert_eq!(of_gone[0].change_type, USER_PURGED);
    assert!(!format!("{:?}", from_the_start.seen).contains("a private note"));
    assert_eq!(from_the_start.of(&stays), listed(&stack, &stays).await);

    let deleted = users_pb::UserChangeType::Deleted as i32;
    let user_feed = user_changes_until(&stack, &users_token, |changes| {
        changes
            .iter()
            .any(|change| change.change_type == deleted && change.user_id == gone)
    })
    .await;
    let of_gone: Vec<&users_pb::UserChange> = user_feed
        .iter()
        .filter(|change| change.user_id == gone)
        .collect();
    assert_eq!(of_gone.len(), 1, "{of_gone:?}");
    assert_eq!(
        (of_gone[0].change_type, of_gone[0].user.is_none()),
        (users_pb::UserChangeType::Deleted as i32, true)
    );
    assert!(!format!("{user_feed:?}").contains(&email), "{user_feed:?}");
    let stays_created = user_feed
        .iter()
        .find(|change| change.user_id == stays)
        .expect("created");
    assert_eq!(
        stays_created.change_type,
        users_pb::UserChangeType::Created as i32
    );
    assert_eq!(
        stays_created.user.as_ref().map(|user| user.id.as_str()),
        Some(stays.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_tokens_are_tamper_evident_bound_to_their_filter_and_expire() {
    let stack = Stack::new(TestDatabase::sqlite()).await;
    let (_users, _entries) = stack.spawn().await;
    let mut clients = stack.clients();
    let user = clients.create_user().await;
    let head = |user_id: &str| entries_pb::ListEntryChangesRequest {
        user_id: user_id.to_owned(),
        ..Default::default()
    };
    let token = clients
        .entries
        .list_entry_changes(authorized(head(&user)))
        .await
        .expect("head")
        .into_inner()
        .next_change_token;

    let mut forged = token.clone();
    forged.replace_range(10..12, if &token[10..12] == "AA" { "BB" } else { "AA" });
    for (user_id, change_token) in [
        (user.clone(), forged),
        (String::new(), token.clone()),
        (uuid::Uuid::new_v4().to_string(), token.clone()),
        (user.clone(), "not a token".to_owned()),
    ] {
        let refused = clients
            .entries
            .list_entry_changes(authorized(entries_pb::ListEntryChangesRequest {
                user_id,
                change_token,
                page_size: 0,
            }))
            .await
            .expect_err("refused");
        assert_invalid(&refused, &["change_token"]);
    }
    let refused = clients
        .entries
        .list_entry_changes(authorized(entries_pb::ListEntryChangesRequest {
            user_id: user.clone(),
            change_token: token.clone(),
            page_size: -1,
        }))
        .await
        .expect_err("negative page size");
    assert_invalid(&refused, &["page_size"]);
    let refused = clients
        .entries
        .list_entry_changes(authorized(head("not-a-uuid")))
        .await
        .expect_err("bad user id");
    assert_invalid(&refused, &["user_id"]);
    // Above the maximum is coerced down, as for every list.
    clients
        .entries
        .list_entry_changes(authorized(entries_pb::ListEntryChangesRequest {
            user_id: user.clone(),
            change_token: token,
            page_size: 1_000_000,
        }))
        .await
        .expect("page size coerced");

    // A user token follows its own entries, never anyone else's or all.
    let email = clients.get_user(&user).await.expect("user").email;
    let login = clients
        .users
        .authenticate(authorized(users_pb::AuthenticateRequest {
            email,
            password: PASSWORD.into(),
        }))
        .await
        .expect("login")
        .into_inner();
    let own = login.access_token;
    clients
        .entries
        .list_entry_changes(with_token(head(&user), &own))
        .await
        .expect("own changes");
    for user_id in [String::new(), uuid::Uuid::new_v4().to_string()] {
        let refused = clients
            .entries
            .list_entry_changes(with_token(head(&user_id), &own))
            .await
            .expect_err("not own");
        assert_eq!(refused.code(), Code::PermissionDenied, "{user_id:?}");
    }
}

/// With a retention of 0 days a token lives for the second it was issued in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_change_token_is_a_failed_precondition() {
    let mut stack = Stack::new(TestDatabase::sqlite()).await;
    for spec in [&mut stack.users_spec, &mut stack.entries_spec] {
        spec.extra_args
            .extend(["--changes-retention-days".to_owned(), "0".to_owned()]);
    }
    let (_users, _entries) = stack.spawn().await;
    let mut clients = stack.clients();
    let token = clients
        .users
        .list_user_changes(authorized(users_pb::ListUserChangesRequest::default()))
        .await
        .expect("head")
        .into_inner()
        .next_change_token;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let expired = clients
        .users
        .list_user_changes(authorized(users_pb::ListUserChangesRequest {
            change_token: token,
            page_size: 0,
        }))
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), Code::FailedPrecondition);
    assert_eq!(reason(&expired), "CHANGE_TOKEN_EXPIRED");
}
