//! `heft-entries audit-orphans`: the safety net for what no cascade can see
//! (a users database restored from an older backup, a row deleted by hand, a
//! bug). Lists every user id that owns entries, asks the users service
//! whether each exists, reports the orphans, and with `--purge` purges them
//! through the same path as `PurgeUserEntries`, tombstone included.
//!
//! Only a definite NOT_FOUND counts as missing; any other answer aborts. A
//! share of orphans above `--max-orphan-share` looks like a users service
//! pointed at the wrong or an empty database, and nothing is purged.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt, stream};
use heft_service::db::Database;

use crate::{
    Config,
    domain::UserId,
    purge,
    store::{self, EntryStore},
    users_client::{UsersClient, UsersError},
};

/// Owners read per page of the entries index.
const OWNERS_PAGE: u32 = 500;
/// GetUser calls in flight at once.
const LOOKUP_CONCURRENCY: usize = 8;
/// A purge by the audit has no caller waiting on it, only this bound.
const PURGE_DEADLINE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Purge the entries of every orphan found (leaving a tombstone).
    #[arg(long)]
    pub purge: bool,
    /// Refuse to purge when more than this share of the user ids checked
    /// look orphaned (a users service on the wrong or an empty database).
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    pub max_orphan_share: f64,
}

fn share(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err("must be a number from 0 to 1".to_owned()),
    }
}

/// What the audit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOutcome {
    /// Every owner of entries exists: exit 0.
    Clean,
    /// Orphans were found (and purged, with `--purge`): exit 1.
    Orphans,
    /// Orphans were found but the share was too high to purge: exit 2.
    PurgeRefused,
}

#[derive(Debug, Default)]
struct Tally {
    checked: u64,
    orphans: Vec<(UserId, u64)>,
}

/// Runs the audit, writing its report to `out`.
pub async fn run(
    config: &Config,
    args: &AuditArgs,
    out: &mut impl Write,
) -> anyhow::Result<AuditOutcome> {
    let database = Database::open(config.database_url.expose(), &store::MIGRATIONS).await?;
    let store = store::on(&database);
    let users = crate::users_client(config, crate::users_channel(config)?)?;
    let tally = find_orphans(store.as_ref(), &users, out).await?;
    let orphan_entries: u64 = tally.orphans.iter().map(|(_, count)| count).sum();
    let orphan_share = if tally.checked == 0 {
        0.0
    } else {
        tally.orphans.len() as f64 / tally.checked as f64
    };
    writeln!(
        out,
        "checked {} user ids: {} orphaned ({:.1}%), owning {} entries",
        tally.checked,
        tally.orphans.len(),
        orphan_share * 100.0,
        orphan_entries
    )?;
    if tally.orphans.is_empty() {
        return Ok(AuditOutcome::Clean);
    }
    if !args.purge {
        writeln!(out, "run again with --purge to purge them")?;
        return Ok(AuditOutcome::Orphans);
    }
    if orphan_share > args.max_orphan_share {
        writeln!(
            out,
            "refusing to purge: {:.1}% of the user ids checked look orphaned, more than \
             --max-orphan-share {:.1}%; is the users service on the right database?",
            orphan_share * 100.0,
            args.max_orphan_share * 100.0
        )?;
        return Ok(AuditOutcome::PurgeRefused);
    }
    let mut purged = 0;
    for (user_id, _) in &tally.orphans {
        let progress = purge::purge_user(
            store.as_ref(),
            *user_id,
            heft_service::time::now(),
            config.purge.purge_batch_size,
            Instant::now() + PURGE_DEADLINE,
        )
        .await
        .with_context(|| format!("purging orphan {user_id}"))?;
        tracing::info!(%user_id, deleted_entries = progress.deleted, "orphan purged");
        purged += progress.deleted;
    }
    writeln!(
        out,
        "purged {} orphans: {purged} entries deleted",
        tally.orphans.len()
    )?;
    Ok(AuditOutcome::Orphans)
}

/// Pages through the owners of entries in id order (constant memory but for
/// the orphans), asking the users service about each.
async fn find_orphans(
    store: &dyn EntryStore,
    users: &UsersClient,
    out: &mut impl Write,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut after = None;
    loop {
        let owners = store.entry_owners(after, OWNERS_PAGE).await?;
        let Some(&(last, _)) = owners.last() else {
            return Ok(tally);
        };
        after = Some(last);
        tally.checked += owners.len() as u64;
        let answers: Vec<(UserId, u64, bool)> = stream::iter(owners)
            .map(|(user_id, count)| async move {
                match users.lookup(user_id, None).await {
                    Ok(()) => Ok((user_id, count, false)),
                    Err(UsersError::UserNotFound) => Ok((user_id, count, true)),
                    Err(error) => Err(anyhow::Error::new(error)
                        .context(format!("asking the users service about {user_id}"))),
                }
            })
            .buffered(LOOKUP_CONCURRENCY)
            .try_collect()
            .await?;
        for (user_id, count, orphaned) in answers {
            if orphaned {
                writeln!(out, "orphan user_id={user_id} entries={count}")?;
                tally.orphans.push((user_id, count));
            }
        }
    }
}
