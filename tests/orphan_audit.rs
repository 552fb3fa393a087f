//! `heft entries audit-orphans` the way an operator meets it: the users
//! database restored from a backup older than some users, on SQLite and
//! PostgreSQL; and the guard that refuses to purge when most users look gone.

mod common;

use std::{collections::BTreeSet, process::Command};

use common::{Clients, Stack};
use heft_test_support::{TestDatabase, backend_tests};
use tonic::Code;

backend_tests!(
    users_lost_by_a_restore_are_found_and_purged,
    a_restore_that_forgets_most_users_purges_nothing,
);

struct Audit {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Audit {
    /// The user ids the audit reported as orphans.
    fn orphans(&self) -> BTreeSet<String> {
        self.stdout
            .lines()
            .filter_map(|line| line.strip_prefix("orphan user_id="))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn audit(stack: &Stack, flags: &[&str]) -> Audit {
    let spec = &stack.entries_spec;
    let output = Command::new(env!("CARGO_BIN_EXE_heft"))
        .env_clear()
        .env("HEFT_LOG", "warn")
        .env("HEFT_ENTRIES_DATABASE_URL", &spec.database_url)
        .env("HEFT_USERS_URL", &spec.peer_url)
        .env(
            "HEFT_INTERNAL_TOKEN",
            spec.internal_token.as_deref().expect("a stack with tokens"),
        )
        .args(["entries", "audit-orphans"])
        .args(flags)
        .output()
        .expect("run audit");
    Audit {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn users_with_entries(clients: &mut Clients, count: usize) -> Vec<String> {
    let mut users = Vec::new();
    for i in 0..count {
        let user = clients.create_user().await;
        clients.import(&user, 1 + i % 3).await;
        users.push(user);
    }
    users
}

/// Back up the users database, create more users with entries, restore the
/// backup: the audit finds exactly the users the restore lost, purges them
/// (tombstones included) and nobody else, and is clean afterwards.
async fn users_lost_by_a_restore_are_found_and_purged(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (users, entries) = stack.start().await;
    let mut clients = stack.clients();
    let kept = users_with_entries(&mut clients, 20).await;
    users.stop();
    let backup = stack.users_db.snapshot().await;
    let users = stack.users_spec.start().await;
    let lost: BTreeSet<String> = users_with_entries(&mut clients, 2)
        .await
        .into_iter()
        .collect();
    users.stop();
    stack.users_db.restore(&backup).await;
    let _users = stack.users_spec.start().await;

    let report = audit(&stack, &[]);
    assert_eq!(report.code, Some(1), "{report:?}");
    assert_eq!(report.orphans(), lost, "{report:?}");

    let purge = audit(&stack, &["--purge"]);
    assert_eq!(purge.code, Some(1), "{purge:?}");
    assert!(purge.stdout.contains("purged 2 orphans"), "{purge:?}");
    for user in &lost {
        assert_eq!(clients.count_entries(user).await, 0);
        assert_eq!(clients.entry_refusal(user).await, Code::FailedPrecondition);
    }
    for (i, user) in kept.iter().enumerate() {
        assert_eq!(clients.count_entries(user).await, 1 + i % 3);
    }

    let again = audit(&stack, &[]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(again.orphans().is_empty());

    // Only a definite NOT_FOUND counts: with the users service down the
    // audit aborts rather than calling everyone an orphan.
    drop(_users);
    let blind = audit(&stack, &["--purge"]);
    assert_eq!(blind.code, Some(2), "{blind:?}");
    for user in &kept {
        assert!(clients.count_entries(user).await > 0);
    }
    drop(entries);
}

/// A backup that forgets most users (the wrong or an old database): the
/// audit reports them but refuses to purge, and nothing is deleted.
async fn a_restore_that_forgets_most_users_purges_nothing(db: TestDatabase) {
    let stack = Stack::new(db).await;
    let (users, _entries) = stack.start().await;
    let mut clients = stack.clients();
    users_with_entries(&mut clients, 2).await;
    users.stop();
    let backup = stack.users_db.snapshot().await;
    let users = stack.users_spec.start().await;
    let forgotten = users_with_entries(&mut clients, 6).await;
    users.stop();
    stack.users_db.restore(&backup).await;
    let _users = stack.users_spec.start().await;

    let refused = audit(&stack, &["--purge"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stdout.contains("refusing to purge"), "{refused:?}");
    assert_eq!(refused.orphans().len(), forgotten.len());
    for (i, user) in forgotten.iter().enumerate() {
        assert_eq!(clients.count_entries(user).await, 1 + i % 3);
    }
    // An operator who knows better raises the bar explicitly.
    let allowed = audit(&stack, &["--purge", "--max-orphan-share", "1"]);
    assert_eq!(allowed.code, Some(1), "{allowed:?}");
    for user in &forgotten {
        assert_eq!(clients.count_entries(user).await, 0);
    }
}
