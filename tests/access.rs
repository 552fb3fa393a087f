//! Who may call what (docs/access.md): scoped credentials from a file and
//! their reload on SIGHUP, the internal token's two methods, and user tokens
//! reaching their own user's data only.

mod common;

use std::collections::HashMap;

use common::{INTERNAL_TOKEN, Stack, with_token};
use heft_proto::{
    entries::v1 as entries_pb,
    users::v1::{self as users_pb, user_service_client::UserServiceClient},
};
use heft_service::auth::{NewCredential, Scopes};
use heft_test_support::{TestDatabase, backend_tests, status::reason};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

/// Every method of both services, and the scope the contract gives it
/// (SPEC "Who may call what"); `None`: the internal token's alone.
const METHODS: &[(&str, Option<&str>)] = &[
    ("CreateUser", Some("users.write")),
    ("GetUser", Some("users.read")),
    ("ListUsers", Some("users.read")),
    ("UpdateUser", Some("users.write")),
    ("ChangePassword", Some("users.write")),
    ("DeleteUser", Some("users.delete")),
    ("Authenticate", Some("users.authenticate")),
    ("GetPurgeJob", Some("purge.read")),
    ("ListPurgeJobs", Some("purge.read")),
    ("CreateEntry", Some("entries.write")),
    ("BatchCreateEntries", Some("entries.write")),
    ("UpdateEntry", Some("entries.write")),
    ("DeleteEntry", Some("entries.write")),
    ("GetEntry", Some("entries.read")),
    ("ListEntries", Some("entries.read")),
    ("SummarizeEntries", Some("entries.read")),
    ("ListEntryChanges", Some("entries.read")),
    ("ListUserChanges", Some("users.changes")),
    ("PurgeUserEntries", None),
];

const SCOPES: &[&str] = &[
    "users.read",
    "users.write",
    "users.delete",
    "users.authenticate",
    "purge.read",
    "entries.read",
    "entries.write",
    "users.changes",
];

/// Calls `method` with `token` and a request that passes no check but the
/// caller's (a random id, nothing else): the answer says whether the
/// caller got past the gate.
async fn call(stack: &Stack, method: &str, token: &str) -> tonic::Status {
    let mut clients = stack.clients();
    let id = uuid::Uuid::new_v4().to_string();
    let result = match method {
        "CreateUser" => clients
            .users
            .create_user(with_token(users_pb::CreateUserRequest::default(), token))
            .await
            .map(drop),
        "GetUser" => clients
            .users
            .get_user(with_token(users_pb::GetUserRequest { id }, token))
            .await
            .map(drop),
        "ListUsers" => clients
            .users
            .list_users(with_token(users_pb::ListUsersRequest::default(), token))
            .await
            .map(drop),
        "UpdateUser" => clients
            .users
            .update_user(with_token(users_pb::UpdateUserRequest::default(), token))
            .await
            .map(drop),
        "ChangePassword" => clients
            .users
            .change_password(with_token(
                users_pb::ChangePasswordRequest {
                    id,
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
        "DeleteUser" => clients
            .users
            .delete_user(with_token(users_pb::DeleteUserRequest { id }, token))
            .await
            .map(drop),
        "Authenticate" => clients
            .users
            .authenticate(with_token(users_pb::AuthenticateRequest::default(), token))
            .await
            .map(drop),
        "GetPurgeJob" => clients
            .users
            .get_purge_job(with_token(
                users_pb::GetPurgeJobRequest { user_id: id },
                token,
            ))
            .await
            .map(drop),
        "ListPurgeJobs" => clients
            .users
            .list_purge_jobs(with_token(users_pb::ListPurgeJobsRequest::default(), token))
            .await
            .map(drop),
        "CreateEntry" => clients
            .entries
            .create_entry(with_token(
                entries_pb::CreateEntryRequest {
                    user_id: id,
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
        "BatchCreateEntries" => clients
            .entries
            .batch_create_entries(with_token(
                entries_pb::BatchCreateEntriesRequest {
                    user_id: id,
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
        "UpdateEntry" => clients
            .entries
            .update_entry(with_token(entries_pb::UpdateEntryRequest::default(), token))
            .await
            .map(drop),
        "DeleteEntry" => clients
            .entries
            .delete_entry(with_token(entries_pb::DeleteEntryRequest { id }, token))
            .await
            .map(drop),
        "GetEntry" => clients
            .entries
            .get_entry(with_token(
                entries_pb::GetEntryRequest { id, unit: 0 },
                token,
            ))
            .await
            .map(drop),
        "ListEntries" => clients
            .entries
            .list_entries(with_token(
                entries_pb::ListEntriesRequest {
                    user_id: id,
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
        "SummarizeEntries" => clients
            .entries
            .summarize_entries(with_token(
                entries_pb::SummarizeEntriesRequest {
                    user_id: id,
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
        "PurgeUserEntries" => clients
            .entries
            .purge_user_entries(with_token(
                entries_pb::PurgeUserEntriesRequest { user_id: id },
                token,
            ))
            .await
            .map(drop),
        "ListEntryChanges" => clients
            .entries
            .list_entry_changes(with_token(
                entries_pb::ListEntryChangesRequest {
                    user_id: id,
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
        "ListUserChanges" => clients
            .users
            .list_user_changes(with_token(
                users_pb::ListUserChangesRequest::default(),
                token,
            ))
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    };
    result.err().unwrap_or_else(|| tonic::Status::ok(""))
}

/// Past the gate: any answer but a refusal of the caller.
fn admitted(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        Code::PermissionDenied | Code::Unauthenticated
    )
}

/// A credentials file with one credential per scope, named after it, and
/// the token of each.
fn one_credential_per_scope(
    dir: &std::path::Path,
) -> (std::path::PathBuf, HashMap<String, String>) {
    let mut file = String::new();
    let mut tokens = HashMap::new();
    for scope in SCOPES {
        let new = NewCredential::generate(
            &format!("only-{scope}"),
            Scopes::parse([*scope]).expect("scope"),
        )
        .expect("credential");
        file.push_str(&new.entry);
        tokens.insert((*scope).to_owned(), new.token);
    }
    let path = dir.join("credentials.toml");
    std::fs::write(&path, file).expect("write credentials");
    (path, tokens)
}

backend_tests!(each_scope_reaches_exactly_its_methods);

async fn each_scope_reaches_exactly_its_methods(db: TestDatabase) {
    let dir = tempfile::tempdir().expect("dir");
    let (path, tokens) = one_credential_per_scope(dir.path());
    let mut stack = Stack::new(db).await;
    for spec in [&mut stack.users_spec, &mut stack.entries_spec] {
        spec.extra_args
            .extend(["--credentials-file".to_owned(), path.display().to_string()]);
    }
    let (_users, _entries) = stack.spawn().await;

    for (method, scope) in METHODS {
        for held in SCOPES {
            let status = call(&stack, method, &tokens[*held]).await;
            let expected = *scope == Some(*held);
            assert_eq!(
                admitted(&status),
                expected,
                "{method} with only {held}: {status:?}"
            );
            if !expected {
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{method} with {held}"
                );
                if let Some(scope) = scope {
                    let info = status.get_error_details();
                    let info = info.error_info().expect("error info");
                    assert_eq!(info.reason, "MISSING_SCOPE");
                    assert_eq!(info.metadata.get("scope").map(String::as_str), Some(*scope));
                }
            }
        }
        // The internal token: GetUser and PurgeUserEntries only.
        let internal = call(&stack, method, INTERNAL_TOKEN).await;
        let expected = matches!(*method, "GetUser" | "PurgeUserEntries");
        assert_eq!(
            admitted(&internal),
            expected,
            "{method} with the internal token: {internal:?}"
        );
    }
}

/// `credentials new` prints a token and its entry; a SIGHUP makes a new
/// entry count and a removed one stop counting; a broken file leaves the
/// previous list in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reload_on_sighup_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("credentials.toml");
    let printed = |name: &str, scopes: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_heft"))
            .args([
                "entries",
                "credentials",
                "new",
                "--name",
                name,
                "--scopes",
                scopes,
            ])
            .output()
            .expect("run credentials new");
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).expect("utf8");
        let token = text.lines().nth(1).expect("token line").trim().to_owned();
        let entry = text[text.find("[[credential]]").expect("entry")..].to_owned();
        (token, entry)
    };
    let (reader, reader_entry) = printed("warehouse-sync", "entries.read");
    let (writer, writer_entry) = printed("importer", "entries.write,users.read");
    std::fs::write(&path, &reader_entry).expect("write");

    let mut stack = Stack::new(TestDatabase::sqlite()).await;
    stack
        .entries_spec
        .extra_args
        .extend(["--credentials-file".to_owned(), path.display().to_string()]);
    let (_users, entries) = stack.start().await;
    let list = |token: String| {
        let stack = &stack;
        async move { call(stack, "ListEntries", &token).await }
    };
    assert!(
        admitted(&list(reader.clone()).await),
        "the printed token is the file's"
    );
    assert_eq!(list(writer.clone()).await.code(), Code::Unauthenticated);

    let reload = |contents: String| {
        std::fs::write(&path, contents).expect("write");
        entries.hangup();
    };
    let eventually = |token: String, admitted_now: bool| {
        let stack = &stack;
        async move {
            for _ in 0..100 {
                if admitted(&call(stack, "CreateEntry", &token).await) == admitted_now {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("the reload did not take effect");
        }
    };
    reload(format!("{reader_entry}{writer_entry}"));
    eventually(writer.clone(), true).await;

    reload("[[credential]]\nname = \"broken\"\n".to_owned());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        admitted(&call(&stack, "CreateEntry", &writer).await),
        "the previous list stays"
    );
    assert!(entries.log_text().contains("credentials not reloaded"));

    reload(reader_entry);
    eventually(writer, false).await;
    assert!(admitted(&list(reader).await));
}

/// Logs in and returns the user token.
async fn login(
    users: &mut UserServiceClient<Channel>,
    email: &str,
) -> (String, users_pb::AuthenticateResponse) {
    login_with(users, email, common::PASSWORD).await
}

async fn login_with(
    users: &mut UserServiceClient<Channel>,
    email: &str,
    password: &str,
) -> (String, users_pb::AuthenticateResponse) {
    let response = users
        .authenticate(common::authorized(users_pb::AuthenticateRequest {
            email: email.to_owned(),
            password: password.to_owned(),
        }))
        .await
        .expect("login")
        .into_inner();
    let user = response.user.clone().expect("user");
    (user.id.clone(), response)
}

backend_tests!(user_tokens_reach_their_own_data_only);

async fn user_tokens_reach_their_own_data_only(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (_users, _entries) = stack.spawn().await;
    let mut clients = stack.clients();
    let ada_email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let bob_email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    clients.create_user_with_email(&ada_email).await;
    clients.create_user_with_email(&bob_email).await;
    let (ada, ada_login) = login(&mut clients.users, &ada_email).await;
    let (bob, bob_login) = login(&mut clients.users, &bob_email).await;
    let ada_token = ada_login.access_token.clone();
    assert!(ada_login.expire_time.is_some());

    // Verified offline by an independent library with the published keys.
    let keys = clients
        .users
        .list_token_keys(users_pb::ListTokenKeysRequest {})
        .await
        .expect("keys: no credential needed")
        .into_inner();
    assert_eq!(verify_with_pyjwt(&ada_token, &keys), ada);

    // Own data: yes.
    let own = clients
        .users
        .get_user(with_token(
            users_pb::GetUserRequest { id: ada.clone() },
            &ada_token,
        ))
        .await
        .expect("own user");
    assert_eq!(own.into_inner().id, ada);
    let entry = clients
        .entries
        .create_entry(with_token(common::new_entry(&ada, 1), &ada_token))
        .await
        .expect("own entry")
        .into_inner();
    let bob_entry = clients.create_entry(&bob).await.expect("bob's entry").id;

    // Another user's id: PERMISSION_DENIED, OTHER_USER.
    let other = clients
        .users
        .get_user(with_token(
            users_pb::GetUserRequest { id: bob.clone() },
            &ada_token,
        ))
        .await
        .expect_err("other user");
    assert_eq!(
        (other.code(), reason(&other).as_str()),
        (Code::PermissionDenied, "OTHER_USER")
    );
    let other = clients
        .entries
        .list_entries(with_token(
            entries_pb::ListEntriesRequest {
                user_id: bob.clone(),
                ..Default::default()
            },
            &ada_token,
        ))
        .await
        .expect_err("other user's entries");
    assert_eq!(reason(&other), "OTHER_USER");
    // Another user's entry by id: exactly as absent.
    for id in [bob_entry.clone(), uuid::Uuid::new_v4().to_string()] {
        let hidden = clients
            .entries
            .get_entry(with_token(
                entries_pb::GetEntryRequest {
                    id: id.clone(),
                    unit: 0,
                },
                &ada_token,
            ))
            .await
            .expect_err("hidden");
        assert_eq!(hidden.code(), Code::NotFound);
        let deleted = clients
            .entries
            .delete_entry(with_token(
                entries_pb::DeleteEntryRequest { id },
                &ada_token,
            ))
            .await
            .expect_err("hidden");
        assert_eq!(deleted.code(), Code::NotFound);
    }
    assert_eq!(
        clients.count_entries(&bob).await,
        1,
        "bob's entry is untouched"
    );
    // Methods about everyone: not for a user token.
    let listed = clients
        .users
        .list_users(with_token(
            users_pb::ListUsersRequest::default(),
            &ada_token,
        ))
        .await
        .expect_err("list users");
    assert_eq!(listed.code(), Code::PermissionDenied);

    // Tampered, unsigned: UNAUTHENTICATED on both services.
    let parts: Vec<&str> = ada_token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        bob_login.access_token.split('.').nth(1).expect("claims"),
        parts[2]
    );
    let unsigned = format!("eyJhbGciOiJub25lIn0.{}.", parts[1]);
    for token in [&forged, &unsigned] {
        let refused = clients
            .entries
            .get_entry(with_token(
                entries_pb::GetEntryRequest {
                    id: entry.id.clone(),
                    unit: 0,
                },
                token,
            ))
            .await
            .expect_err("bad token");
        assert_eq!(refused.code(), Code::Unauthenticated);
        let refused = clients
            .users
            .get_user(with_token(
                users_pb::GetUserRequest { id: ada.clone() },
                token,
            ))
            .await
            .expect_err("bad token");
        assert_eq!(refused.code(), Code::Unauthenticated);
    }

    // A password change ends the earlier tokens on the users service.
    clients
        .users
        .change_password(with_token(
            users_pb::ChangePasswordRequest {
                id: bob.clone(),
                current_password: common::PASSWORD.to_owned(),
                new_password: "another long password".to_owned(),
            },
            &bob_login.access_token,
        ))
        .await
        .expect("change own password");
    // Within the same second as the change too: `iat` is in whole seconds.
    let stale = clients
        .users
        .get_user(with_token(
            users_pb::GetUserRequest { id: bob.clone() },
            &bob_login.access_token,
        ))
        .await
        .expect_err("token from before the change");
    assert_eq!(stale.code(), Code::Unauthenticated);
    let (_, fresh) = login_with(&mut clients.users, &bob_email, "another long password").await;
    clients
        .users
        .get_user(with_token(
            users_pb::GetUserRequest { id: bob.clone() },
            &fresh.access_token,
        ))
        .await
        .expect("a token issued after the change");

    // Self-service deletion; then the token is refused by both services.
    clients
        .users
        .delete_user(with_token(
            users_pb::DeleteUserRequest { id: ada.clone() },
            &ada_token,
        ))
        .await
        .expect("delete own account");
    let gone = clients
        .users
        .get_user(with_token(
            users_pb::GetUserRequest { id: ada.clone() },
            &ada_token,
        ))
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::Unauthenticated);
    // The entries service trusts "not purged" for at most a second.
    let mut refused = None;
    for _ in 0..30 {
        let answer = clients
            .entries
            .list_entries(with_token(
                entries_pb::ListEntriesRequest {
                    user_id: ada.clone(),
                    ..Default::default()
                },
                &ada_token,
            ))
            .await;
        if let Err(status) = answer {
            refused = Some(status);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let gone = refused.expect("refused within a second or so of the purge");
    assert_eq!(gone.code(), Code::Unauthenticated);
}

/// Verifies `token` with PyJWT against the JWKs, as any backend could, and
/// returns its `sub`.
fn verify_with_pyjwt(token: &str, keys: &users_pb::ListTokenKeysResponse) -> String {
    let jwks = serde_json::json!({
        "keys": keys.keys.iter().map(|key| serde_json::json!({
            "kid": key.kid, "kty": key.kty, "crv": key.crv, "x": key.x, "use": key.r#use,
        })).collect::<Vec<_>>()
    });
    let script = r#"
import json, sys, jwt
token, jwks = sys.argv[1], json.loads(sys.argv[2])
kid = jwt.get_unverified_header(token)["kid"]
key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
claims = jwt.decode(token, key, algorithms=["EdDSA"], audience="heft", issuer="heft-users",
                    options={"require": ["exp", "iat", "sub", "jti"]})
print(claims["sub"])
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, token, &jwks.to_string()])
        .output()
        .expect("python3 (with PyJWT and cryptography: .ci/run installs them)");
    assert!(
        output.status.success(),
        "PyJWT: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}
