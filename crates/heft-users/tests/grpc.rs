//! UserService through its generated client, against a real server on port 0.

use std::time::Duration;

use heft_proto::users::v1::{self as pb, PurgeState, user_service_client::UserServiceClient};
use heft_test_support::{
    RunningService, Service, TestDatabase, spawn, spawn_on,
    status::{assert_invalid_with_error_info, reason},
};
use prost_types::FieldMask;
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

const PASSWORD: &str = "correct horse battery";

async fn start_users(db: &TestDatabase, extra: &[&str]) -> RunningService {
    let mut flags = vec![
        // Nothing listens there: purges stay pending.
        "--entries-url",
        "http://127.0.0.1:1",
        "--purge-immediate-timeout-ms",
        "500",
    ];
    flags.extend_from_slice(extra);
    spawn(Service::Users, db, &flags).await
}

async fn client(service: &RunningService) -> UserServiceClient<Channel> {
    UserServiceClient::connect(service.url())
        .await
        .expect("connect")
}

async fn create(client: &mut UserServiceClient<Channel>, email: &str) -> pb::User {
    client
        .create_user(pb::CreateUserRequest {
            email: email.to_owned(),
            name: "Ada Lovelace".to_owned(),
            password: PASSWORD.to_owned(),
            weight_unit: 0,
        })
        .await
        .expect("create user")
        .into_inner()
}

fn login(email: &str, password: &str) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

#[tokio::test]
async fn create_and_get_a_user() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;

    let created = create(&mut client, "  Ada@Example.COM ").await;
    assert_eq!(created.email, "ada@example.com");
    assert_eq!(
        created.weight_unit,
        heft_proto::common::v1::WeightUnit::Pounds as i32
    );
    assert!(created.create_time.is_some() && created.update_time.is_some());

    let fetched = client
        .get_user(pb::GetUserRequest {
            id: created.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched, created);

    let missing = client
        .get_user(pb::GetUserRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown id");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(reason(&missing), "USER_NOT_FOUND");
    let bad = client
        .get_user(pb::GetUserRequest {
            id: "42".to_owned(),
        })
        .await
        .expect_err("bad id");
    assert_invalid_with_error_info(&bad, &["id"]);
}

#[tokio::test]
async fn create_names_every_invalid_field() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;

    let status = client
        .create_user(pb::CreateUserRequest {
            email: "not-an-email".to_owned(),
            name: "  ".to_owned(),
            password: "short".to_owned(),
            weight_unit: 9,
        })
        .await
        .expect_err("invalid");
    assert_invalid_with_error_info(&status, &["email", "name", "password", "weight_unit"]);
    assert!(
        status.message().starts_with("invalid request: email: "),
        "{}",
        status.message()
    );

    let too_long = client
        .create_user(pb::CreateUserRequest {
            email: "ada@example.com".to_owned(),
            name: "Ada".to_owned(),
            password: "x".repeat(1025),
            weight_unit: 1,
        })
        .await
        .expect_err("password too long");
    assert_invalid_with_error_info(&too_long, &["password"]);
}

#[tokio::test]
async fn emails_are_unique_case_insensitively_even_concurrently() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;

    create(&mut client, "ada@example.com").await;
    let taken = client
        .create_user(pb::CreateUserRequest {
            email: "ADA@example.com".to_owned(),
            name: "Other Ada".to_owned(),
            password: PASSWORD.to_owned(),
            weight_unit: 1,
        })
        .await
        .expect_err("taken");
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert_eq!(reason(&taken), "EMAIL_TAKEN");

    let racers = (0..2).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .create_user(pb::CreateUserRequest {
                    email: "race@example.com".to_owned(),
                    name: "Racer".to_owned(),
                    password: PASSWORD.to_owned(),
                    weight_unit: 1,
                })
                .await
        }
    });
    let results = futures::future::join_all(racers).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .any(|r| r.as_ref().is_err_and(|s| s.code() == Code::AlreadyExists))
    );
}

#[tokio::test]
async fn list_users_pages_with_opaque_tokens() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(create(&mut client, &format!("u{i}@example.com")).await.id);
    }

    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_users(pb::ListUsersRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(page.users.len() <= 2);
        listed.extend(page.users.into_iter().map(|u| u.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, created);

    let all = client
        .list_users(pb::ListUsersRequest {
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("default page size")
        .into_inner();
    assert_eq!(all.users.len(), 5);
    assert!(all.next_page_token.is_empty());

    let negative = client
        .list_users(pb::ListUsersRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .expect_err("negative");
    assert_invalid_with_error_info(&negative, &["page_size"]);

    let first = client
        .list_users(pb::ListUsersRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    let mut forged = first.next_page_token.clone();
    forged.replace_range(10..11, if &forged[10..11] == "A" { "B" } else { "A" });
    let rejected = client
        .list_users(pb::ListUsersRequest {
            page_size: 2,
            page_token: forged,
        })
        .await
        .expect_err("forged");
    assert_invalid_with_error_info(&rejected, &["page_token"]);

    // Another replica on the same database accepts the token.
    let replica = start_users(&db, &[]).await;
    let page = client_for(&replica)
        .await
        .list_users(pb::ListUsersRequest {
            page_size: 2,
            page_token: first.next_page_token,
        })
        .await
        .expect("token from another replica")
        .into_inner();
    assert_eq!(page.users[0].id, created[2]);
}

async fn client_for(service: &RunningService) -> UserServiceClient<Channel> {
    client(service).await
}

#[tokio::test]
async fn update_user_changes_only_masked_fields() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;
    let ada = create(&mut client, "ada@example.com").await;
    create(&mut client, "bob@example.com").await;

    let update = |user: pb::User, paths: &[&str]| pb::UpdateUserRequest {
        user: Some(user),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    };
    let changes = pb::User {
        id: ada.id.clone(),
        name: "Countess".to_owned(),
        email: "ignored@example.com".to_owned(),
        weight_unit: 1,
        ..Default::default()
    };
    let updated = client
        .update_user(update(changes.clone(), &["name", "weight_unit"]))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.name, "Countess");
    assert_eq!(updated.weight_unit, 1);
    assert_eq!(updated.email, "ada@example.com");
    assert_eq!(updated.create_time, ada.create_time);

    let bad_paths = client
        .update_user(update(changes.clone(), &["id", "password"]))
        .await
        .expect_err("bad paths");
    assert_invalid_with_error_info(&bad_paths, &["update_mask", "update_mask"]);

    let bad_value = client
        .update_user(update(
            pb::User {
                weight_unit: 0,
                ..changes.clone()
            },
            &["weight_unit"],
        ))
        .await
        .expect_err("unspecified unit");
    assert_invalid_with_error_info(&bad_value, &["user.weight_unit"]);

    let taken = client
        .update_user(update(
            pb::User {
                email: "BOB@example.com".to_owned(),
                ..changes.clone()
            },
            &["email"],
        ))
        .await
        .expect_err("taken");
    assert_eq!(taken.code(), Code::AlreadyExists);

    let missing = client
        .update_user(update(
            pb::User {
                id: uuid::Uuid::new_v4().to_string(),
                ..changes
            },
            &["name"],
        ))
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn change_password_requires_the_current_one() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;
    let ada = create(&mut client, "ada@example.com").await;

    let wrong = client
        .change_password(pb::ChangePasswordRequest {
            id: ada.id.clone(),
            current_password: "not the password".to_owned(),
            new_password: "a brand new password".to_owned(),
        })
        .await
        .expect_err("wrong current");
    assert_eq!(wrong.code(), Code::Unauthenticated);

    let too_short = client
        .change_password(pb::ChangePasswordRequest {
            id: ada.id.clone(),
            current_password: PASSWORD.to_owned(),
            new_password: "short".to_owned(),
        })
        .await
        .expect_err("short");
    assert_invalid_with_error_info(&too_short, &["new_password"]);

    client
        .change_password(pb::ChangePasswordRequest {
            id: ada.id.clone(),
            current_password: PASSWORD.to_owned(),
            new_password: "a brand new password".to_owned(),
        })
        .await
        .expect("change");
    client
        .authenticate(login("ada@example.com", "a brand new password"))
        .await
        .expect("new password works");
    let old = client
        .authenticate(login("ada@example.com", PASSWORD))
        .await
        .expect_err("old password");
    assert_eq!(old.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn authenticate_hides_which_part_was_wrong() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;
    let ada = create(&mut client, "ada@example.com").await;

    let user = client
        .authenticate(login("ADA@example.com", PASSWORD))
        .await
        .expect("login")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(user.id, ada.id);

    let wrong_password = client
        .authenticate(login("ada@example.com", "wrong password"))
        .await
        .expect_err("wrong password");
    let unknown_email = client
        .authenticate(login("nobody@example.com", PASSWORD))
        .await
        .expect_err("unknown email");
    assert_eq!(wrong_password.code(), Code::Unauthenticated);
    assert_eq!(
        (
            wrong_password.code(),
            wrong_password.message(),
            reason(&wrong_password)
        ),
        (
            unknown_email.code(),
            unknown_email.message(),
            reason(&unknown_email)
        )
    );
}

#[tokio::test]
async fn fifty_concurrent_wrong_passwords_evaluate_at_most_ten() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;
    create(&mut client, "target@example.com").await;

    let guesses = (0..50).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .authenticate(login("target@example.com", &format!("guess number {i}")))
                .await
                .expect_err("wrong password")
        }
    });
    let statuses = futures::future::join_all(guesses).await;
    let evaluated = statuses
        .iter()
        .filter(|s| s.code() == Code::Unauthenticated)
        .count();
    assert_eq!(evaluated, 10, "only the limit may reach the password check");
    // The rest were refused before any check: locked out, or turned away
    // by the hashing queue before they were counted.
    for refused in statuses
        .iter()
        .filter(|s| s.code() != Code::Unauthenticated)
    {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            ["TOO_MANY_FAILED_LOGINS", "HASHING_BUSY"].contains(&reason(refused).as_str()),
            "{refused:?}"
        );
    }

    // Locked even for the right password, until the window passes.
    let right = client
        .authenticate(login("target@example.com", PASSWORD))
        .await
        .expect_err("locked");
    assert_eq!(right.code(), Code::ResourceExhausted);
    assert_eq!(reason(&right), "TOO_MANY_FAILED_LOGINS");
    let retry = right
        .get_error_details()
        .retry_info()
        .expect("retry info")
        .retry_delay;
    assert!(
        retry.is_some_and(|d| d > Duration::from_secs(14 * 60)),
        "{retry:?}"
    );
}

/// The throttle tells nothing: an unknown email is counted like a
/// registered one, and the 11th wrong password gets the same answer.
#[tokio::test]
async fn the_throttle_answers_known_and_unknown_emails_alike() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;
    create(&mut client, "known@example.com").await;

    for email in ["known@example.com", "unknown@example.com"] {
        for attempt in 0..10 {
            let refused = client
                .authenticate(login(email, "wrong password"))
                .await
                .expect_err("wrong");
            assert_eq!(refused.code(), Code::Unauthenticated, "{email} #{attempt}");
            assert_eq!(reason(&refused), "BAD_CREDENTIALS");
        }
    }
    let known = client
        .authenticate(login("known@example.com", "wrong password"))
        .await
        .expect_err("locked");
    let unknown = client
        .authenticate(login("UNKNOWN@example.com", "wrong password"))
        .await
        .expect_err("locked");
    // The same answer, but for the seconds left in each window.
    let without_digits = |status: &Status| -> String {
        status
            .message()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect()
    };
    assert_eq!(
        (known.code(), reason(&known), without_digits(&known)),
        (unknown.code(), reason(&unknown), without_digits(&unknown))
    );
    assert_eq!(known.code(), Code::ResourceExhausted);
    assert_eq!(reason(&known), "TOO_MANY_FAILED_LOGINS");
}

#[tokio::test]
async fn weaker_hashes_are_upgraded_on_login() {
    let db = TestDatabase::sqlite();
    let weak = start_users(
        &db,
        &["--argon2-memory-kib", "8192", "--argon2-iterations", "1"],
    )
    .await;
    create(&mut client(&weak).await, "ada@example.com").await;
    weak.stop().await.expect("stop");

    let store = open_store(&db).await;
    let email = heft_users::domain::Email::parse("ada@example.com").expect("email");
    let before = store
        .find_credentials(&email)
        .await
        .expect("find")
        .expect("user");
    assert!(
        before.password_hash.contains("m=8192,t=1"),
        "{}",
        before.password_hash
    );

    let strong = start_users(&db, &[]).await;
    client(&strong)
        .await
        .authenticate(login("ada@example.com", PASSWORD))
        .await
        .expect("login with the old hash");
    let after = store
        .find_credentials(&email)
        .await
        .expect("find")
        .expect("user");
    assert!(
        after.password_hash.contains("m=19456,t=2,p=1"),
        "{}",
        after.password_hash
    );
}

/// A hash due for an upgrade never makes ChangePassword fail.
#[tokio::test]
async fn change_password_works_for_a_hash_due_for_an_upgrade() {
    let db = TestDatabase::sqlite();
    let weak = start_users(
        &db,
        &["--argon2-memory-kib", "8192", "--argon2-iterations", "1"],
    )
    .await;
    let ada = create(&mut client(&weak).await, "ada@example.com").await;
    weak.stop().await.expect("stop");

    let strong = start_users(&db, &[]).await;
    let mut client = client(&strong).await;
    client
        .change_password(pb::ChangePasswordRequest {
            id: ada.id.clone(),
            current_password: PASSWORD.to_owned(),
            new_password: "a brand new passphrase".to_owned(),
        })
        .await
        .expect("the right current password changes it");
    client
        .authenticate(login("ada@example.com", "a brand new passphrase"))
        .await
        .expect("the new password logs in");
    let old = client
        .authenticate(login("ada@example.com", PASSWORD))
        .await
        .expect_err("the old one does not");
    assert_eq!(old.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn delete_user_answers_pending_when_entries_is_down() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;
    let ada = create(&mut client, "ada@example.com").await;

    let deleted = client
        .delete_user(pb::DeleteUserRequest { id: ada.id.clone() })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.purge_state, PurgeState::Pending as i32);
    assert_eq!(deleted.purged_entry_count, 0);

    let gone = client
        .get_user(pb::GetUserRequest { id: ada.id.clone() })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    let again = client
        .delete_user(pb::DeleteUserRequest { id: ada.id.clone() })
        .await
        .expect_err("already deleted");
    assert_eq!(again.code(), Code::NotFound);

    let store = open_store(&db).await;
    assert_eq!(store.purge_queue_stats().await.expect("stats").pending, 1);

    let reborn = create(&mut client, "ada@example.com").await;
    assert_ne!(reborn.id, ada.id);
}

#[tokio::test]
async fn tokens_guard_every_call_but_health() {
    let db = TestDatabase::sqlite();
    let service = start_users(
        &db,
        &[
            "--api-tokens",
            "api-one,api-two",
            "--internal-token",
            "internal-x",
        ],
    )
    .await;
    let mut client = client(&service).await;

    let call = |token: Option<&str>| {
        let mut request = Request::new(pb::ListUsersRequest::default());
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        request
    };
    let missing = client.list_users(call(None)).await.expect_err("no token");
    assert_eq!(missing.code(), Code::Unauthenticated);
    let bogus = client
        .list_users(call(Some("api-three")))
        .await
        .expect_err("bogus");
    assert_eq!(bogus.code(), Code::Unauthenticated);
    client
        .list_users(call(Some("api-two")))
        .await
        .expect("api token");
    // The internal token reaches GetUser (does this user exist?) and
    // nothing else of the users service.
    let internal = client
        .list_users(call(Some("internal-x")))
        .await
        .expect_err("internal token on ListUsers");
    assert_eq!(internal.code(), Code::PermissionDenied);
    let mut lookup = Request::new(pb::GetUserRequest {
        id: uuid::Uuid::new_v4().to_string(),
    });
    lookup
        .metadata_mut()
        .insert("authorization", "Bearer internal-x".parse().expect("ascii"));
    let absent = client.get_user(lookup).await.expect_err("no such user");
    assert_eq!(
        absent.code(),
        Code::NotFound,
        "the internal token passes GetUser's gate"
    );

    let channel = Channel::from_shared(service.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "heft.users.v1.UserService".to_owned(),
        })
        .await
        .expect("health needs no token")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // Watch streams for as long as the client likes: it needs a token.
    let watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect_err("watch needs a token");
    assert_eq!(watch.code(), Code::Unauthenticated);
}

/// `count` logins at once, each of another unknown email: all refused.
async fn logins_of_unknown_emails(
    client: &UserServiceClient<Channel>,
    count: usize,
) -> Vec<Status> {
    let logins = (0..count).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .authenticate(login(&format!("nobody{i}@example.com"), PASSWORD))
                .await
                .expect_err("unknown email")
        }
    });
    futures::future::join_all(logins).await
}

/// Logins beyond the hashing slots and their queue are refused at once with
/// RESOURCE_EXHAUSTED (and a retry delay), not queued for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spray_of_logins_is_refused_fast_not_queued() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &["--hashing-concurrency", "1", "--hashing-queue", "1"]).await;
    let client = client(&service).await;
    let refusals = logins_of_unknown_emails(&client, 12).await;
    let busy: Vec<_> = refusals
        .iter()
        .filter(|status| status.code() == Code::ResourceExhausted)
        .collect();
    assert!(!busy.is_empty(), "{refusals:?}");
    assert!(busy.iter().all(|status| reason(status) == "HASHING_BUSY"));
    assert!(
        busy.iter()
            .all(|status| status.get_details_retry_info().is_some())
    );
    // One hashing and one waiting were admitted: they answer as usual.
    assert!(
        refusals
            .iter()
            .filter(|status| status.code() == Code::Unauthenticated)
            .count()
            >= 2,
        "{refusals:?}"
    );
}

/// With hashing saturated by a spray of logins for other emails, a user's
/// own logins answered HASHING_BUSY do not count as failures: the right
/// password is accepted during and after the spray, never locked out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spray_of_logins_never_locks_a_user_out() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &["--hashing-concurrency", "1", "--hashing-queue", "1"]).await;
    let mut own = client(&service).await;
    create(&mut own, "ada@example.com").await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sprayers: Vec<_> = (0..8)
        .map(|_| {
            let (mut client, stop) = (own.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
                    let _ = client.authenticate(login(&email, PASSWORD)).await;
                }
            })
        })
        .collect();
    let mut busy = 0;
    let mut accepted = 0;
    for _ in 0..30 {
        match own.authenticate(login("ada@example.com", PASSWORD)).await {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(
                    reason(&status),
                    "HASHING_BUSY",
                    "only a busy hasher may refuse the right password: {status:?}"
                );
                busy += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sprayer in sprayers {
        sprayer.await.expect("sprayer");
    }
    assert!(
        busy > 10,
        "the spray saturated hashing ({busy} busy, {accepted} accepted)"
    );
    own.authenticate(login("ada@example.com", PASSWORD))
        .await
        .expect("the right password after the spray");
}

/// Beyond the configured calls in flight a service sheds load: the extra
/// calls are refused at once instead of queueing without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_beyond_the_in_flight_limit_are_shed() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &["--max-in-flight", "2"]).await;
    let client = client(&service).await;
    let refusals = logins_of_unknown_emails(&client, 10).await;
    let shed = refusals
        .iter()
        .filter(|status| status.code() == Code::ResourceExhausted)
        .count();
    assert!(shed >= 1, "{refusals:?}");
    assert!(
        refusals.iter().all(|status| matches!(
            status.code(),
            Code::ResourceExhausted | Code::Unauthenticated
        )),
        "{refusals:?}"
    );
    // Once the burst is over, calls are served again.
    client
        .clone()
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect("served after the burst");
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;

    let mut request = Request::new(pb::ListUsersRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "trace-me-42".parse().expect("ascii"));
    let response = client.list_users(request).await.expect("list");
    assert_eq!(
        response.metadata().get("x-request-id").expect("echoed"),
        "trace-me-42"
    );

    let response = client
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect("list");
    let generated = response.metadata().get("x-request-id").expect("generated");
    assert!(uuid::Uuid::try_parse(generated.to_str().expect("ascii")).is_ok());
}

#[tokio::test]
#[ignore = "PostgreSQL: set HEFT_TEST_POSTGRES_URL, run with -- --include-ignored"]
async fn postgres_backend_serves_the_same_api() {
    let db = TestDatabase::postgres().await;
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;
    let ada = create(&mut client, "Ada@Example.com").await;
    client
        .authenticate(login("ada@example.com", PASSWORD))
        .await
        .expect("login");
    let taken = client
        .create_user(pb::CreateUserRequest {
            email: "ADA@example.com".to_owned(),
            name: "Ada".to_owned(),
            password: PASSWORD.to_owned(),
            weight_unit: 2,
        })
        .await
        .expect_err("taken");
    assert_eq!(taken.code(), Code::AlreadyExists);
    let deleted = client
        .delete_user(pb::DeleteUserRequest { id: ada.id })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.purge_state, PurgeState::Pending as i32);
}

/// Reflection lists exactly what this port serves and describes it, on v1
/// and v1alpha: what grpcurl and buf curl use.
#[tokio::test]
async fn reflection_lists_the_services() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    heft_test_support::assert_reflection_serves_exactly(&service.url(), heft_users::SERVICE_NAME)
        .await;
}

/// `heft-users healthcheck` exits 0 while the service is SERVING, and not
/// once it has stopped: what the container health check relies on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_subcommand_follows_the_service() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let listen = service.addr.to_string();
    let healthcheck = move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_heft-users"))
            .arg("healthcheck")
            .env_clear()
            // As in a container: the subcommand asks the service's own address.
            .env("HEFT_USERS_LISTEN", &listen)
            .output()
            .expect("run heft-users healthcheck")
    };
    let serving = tokio::task::spawn_blocking(healthcheck.clone())
        .await
        .expect("join");
    assert!(serving.status.success(), "{serving:?}");

    service.stop().await.expect("stop");
    let stopped = tokio::task::spawn_blocking(healthcheck)
        .await
        .expect("join");
    assert!(!stopped.status.success(), "{stopped:?}");
}

/// Start-up refusals: an open service on a non-loopback address (protected
/// mode) and API tokens without an internal token; each names what to set.
#[tokio::test]
async fn refuses_to_start_exposed_or_half_configured() {
    let db = TestDatabase::sqlite();
    let start = |listen: &'static str, extra: &'static [&'static str]| {
        let service = spawn_on(listen, Service::Users, &db.url, extra);
        async move {
            tokio::time::timeout(Duration::from_secs(10), service.await.stop())
                .await
                .expect("returns")
        }
    };
    let exposed = start("0.0.0.0:0", &[]).await.expect_err("exposed and open");
    assert!(
        exposed.to_string().contains("HEFT_ALLOW_OPEN"),
        "{exposed:#}"
    );
    let half = start("127.0.0.1:0", &["--api-tokens", "api"])
        .await
        .expect_err("half configured");
    assert!(half.to_string().contains("HEFT_INTERNAL_TOKEN"), "{half:#}");
    // Loopback, or an explicit opt-in, starts (and stops at once here).
    start("127.0.0.1:0", &[]).await.expect("loopback is fine");
    start("0.0.0.0:0", &["--allow-open", "true"])
        .await
        .expect("allowed explicitly");
}

/// HTTP/2 header lists are bounded (16 KiB): a request carrying more
/// metadata is refused by the transport, and the service keeps serving.
#[tokio::test]
async fn oversized_header_lists_are_refused() {
    let db = TestDatabase::sqlite();
    let service = start_users(&db, &[]).await;
    let mut client = client(&service).await;
    let mut request = Request::new(pb::ListUsersRequest::default());
    request
        .metadata_mut()
        .insert("x-padding", "x".repeat(32 * 1024).parse().expect("ascii"));
    assert!(client.list_users(request).await.is_err());
    let mut client = self::client(&service).await;
    client
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect("still serving");
}

async fn open_store(db: &TestDatabase) -> std::sync::Arc<dyn heft_users::store::UserStore> {
    let database = heft_service::db::Database::open(&db.url, &heft_users::store::MIGRATIONS)
        .await
        .expect("open database");
    heft_users::store::on(&database)
}

/// `keys rotate`: the new key signs from the next load on, and the old one
/// stays published (its tokens have not expired).
#[tokio::test]
async fn a_rotated_key_signs_and_the_old_one_stays_published() {
    let db = TestDatabase::sqlite();
    let store = open_store(&db).await;
    let args = heft_users::tokens::TokenArgs {
        user_token_ttl_secs: 900,
    };
    let before = heft_users::tokens::UserTokens::open(store.clone(), &args)
        .await
        .expect("tokens");
    let old = before.published().await;
    assert_eq!(old.len(), 1, "the first key is made at first start");

    let kid = heft_users::tokens::rotate(store.as_ref())
        .await
        .expect("rotate");
    let after = heft_users::tokens::UserTokens::open(store, &args)
        .await
        .expect("tokens");
    let published: Vec<String> = after.published().await.into_iter().map(|k| k.kid).collect();
    assert_eq!(
        published,
        [kid.clone(), old[0].kid.clone()],
        "newest first, the old one kept"
    );
    let now = heft_service::time::now();
    let user = heft_users::domain::User {
        id: heft_users::domain::UserId::generate(),
        email: heft_users::domain::Email::parse("keys@example.com").expect("email"),
        name: heft_users::domain::UserName::parse("Keys").expect("name"),
        weight_unit: heft_users::domain::WeightUnit::Kilograms,
        create_time: now,
        update_time: now,
    };
    let id = user.id;
    open_store(&db)
        .await
        .create_user(&heft_users::domain::Credentials {
            user,
            password_hash: "$argon2id$unused".to_owned(),
        })
        .await
        .expect("create");
    let (token, _) = after.issue(id).await.expect("issue");
    let header = token.split('.').next().expect("header");
    let header = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
            .expect("base64"),
    )
    .expect("utf8");
    assert!(header.contains(&kid), "signed with the new key: {header}");
}
