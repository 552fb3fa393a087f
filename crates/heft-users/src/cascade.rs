//! The cross-service cascade (SPEC "Cascade"): deleting a user records a
//! purge job in the same transaction (the outbox); the job is delivered to
//! the entries service's `PurgeUserEntries` right away, and redelivered by a
//! dispatcher with capped, jittered exponential backoff until acknowledged.
//!
//! A job is *claimed* by moving its `next_attempt_at` to the end of a lease
//! that outlasts the delivery deadline, so at most one delivery of a job is
//! in flight at any time, across replicas. A crash mid-delivery loses
//! nothing: the lease runs out and the job is due again.

use std::{sync::Arc, time::Duration};

use heft_proto::entries::v1::{PurgeUserEntriesRequest, entry_service_client::EntryServiceClient};
use heft_service::{RequestId, server::InternalCredentials};
use rand::Rng;
use tokio::sync::watch;
use tonic::{Code, transport::Channel};
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use crate::{
    domain::{PurgeJob, UserId},
    store::{StoreError, UserStore},
};

/// How the cascade is paced; flags and `HEFT_PURGE_*` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct CascadeArgs {
    /// How long DeleteUser waits for the entries service before answering PENDING, in ms.
    #[arg(long, env = "HEFT_PURGE_IMMEDIATE_TIMEOUT_MS", default_value_t = 2_000)]
    pub purge_immediate_timeout_ms: u64,
    /// First retry delay of a pending purge, in ms; doubles per attempt.
    #[arg(long, env = "HEFT_PURGE_RETRY_INITIAL_MS", default_value_t = 500)]
    pub purge_retry_initial_ms: u64,
    /// Longest retry delay of a pending purge, in ms.
    #[arg(long, env = "HEFT_PURGE_RETRY_MAX_MS", default_value_t = 30_000)]
    pub purge_retry_max_ms: u64,
    /// How often the dispatcher looks for due jobs, in ms.
    #[arg(long, env = "HEFT_PURGE_POLL_MS", default_value_t = 1_000)]
    pub purge_poll_ms: u64,
    /// How often the size and age of the purge queue are logged, in seconds.
    #[arg(long, env = "HEFT_PURGE_STATS_SECS", default_value_t = 30)]
    pub purge_stats_secs: u64,
}

/// Deadline of a delivery by the dispatcher: a purge of a large history may
/// take a while, and it is safe to wait since nobody is waiting on it.
const DISPATCH_DEADLINE: Duration = Duration::from_secs(30);
/// A claim outlasts any delivery, so a job is never delivered twice at once.
const LEASE: Duration = Duration::from_secs(90);
/// Jobs claimed, and delivered concurrently, per dispatcher round.
const BATCH: u32 = 16;

/// How a deleted user's entries stand after DeleteUser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeOutcome {
    Purged { deleted_entries: i64 },
    Pending,
}

/// What one delivery attempt achieved.
#[derive(Debug)]
enum Delivery {
    Purged(i64),
    /// Worth retrying: the entries service was unreachable, slow or overloaded.
    Transient(tonic::Status),
    /// Retrying will not help (a bug or misconfiguration): parked for an operator.
    Permanent(tonic::Status),
}

pub struct Cascade {
    store: Arc<dyn UserStore>,
    entries: EntryServiceClient<Channel>,
    credentials: InternalCredentials,
    args: CascadeArgs,
}

impl Cascade {
    pub fn new(
        store: Arc<dyn UserStore>,
        entries: Channel,
        credentials: InternalCredentials,
        args: CascadeArgs,
    ) -> Self {
        Self {
            store,
            entries: EntryServiceClient::new(entries),
            credentials,
            args,
        }
    }

    /// Deletes the user with its purge job, then tries to deliver the job
    /// before answering.
    pub async fn delete_user(
        self: &Arc<Self>,
        user_id: UserId,
        request_id: Option<&RequestId>,
    ) -> Result<PurgeOutcome, StoreError> {
        let job = PurgeJob {
            id: Uuid::now_v7(),
            user_id,
            request_id: request_id.map(|id| id.0.clone()),
            attempts: 1,
        };
        self.store.delete_user(user_id, &job, LEASE).await?;
        info!(%user_id, job_id = %job.id, "user deleted; purging entries");

        // Delivered on its own task: if the caller gives up on DeleteUser, the
        // delivery still finishes and settles the job.
        let cascade = self.clone();
        let deadline = Duration::from_millis(self.args.purge_immediate_timeout_ms);
        let delivery = tokio::spawn(
            async move {
                let delivery = cascade.deliver(&job, deadline).await;
                let outcome = match &delivery {
                    Delivery::Purged(count) => PurgeOutcome::Purged {
                        deleted_entries: *count,
                    },
                    _ => PurgeOutcome::Pending,
                };
                cascade.settle(&job, delivery).await;
                outcome
            }
            .in_current_span(),
        );
        Ok(delivery.await.unwrap_or(PurgeOutcome::Pending))
    }

    async fn deliver(&self, job: &PurgeJob, deadline: Duration) -> Delivery {
        let request_id = job.request_id.clone().map(RequestId);
        let request = self.credentials.request(
            PurgeUserEntriesRequest {
                user_id: job.user_id.to_string(),
            },
            request_id.as_ref(),
            deadline,
        );
        // A clone of the client is a handle on the same connection.
        match self.entries.clone().purge_user_entries(request).await {
            Ok(response) => Delivery::Purged(response.into_inner().deleted_count),
            Err(status) if is_transient(status.code()) => Delivery::Transient(status),
            Err(status) => Delivery::Permanent(status),
        }
    }

    /// Records the result of a delivery on the job.
    async fn settle(&self, job: &PurgeJob, delivery: Delivery) {
        let job_id = job.id;
        let user_id = job.user_id;
        let settled = match delivery {
            Delivery::Purged(count) => {
                info!(%user_id, %job_id, deleted_entries = count, attempts = job.attempts, "entries purged");
                self.store.complete_purge_job(job_id, count).await
            }
            Delivery::Transient(status) => {
                let delay = self.backoff(job.attempts);
                warn!(
                    %user_id, %job_id, attempts = job.attempts, retry_in_ms = delay.as_millis() as u64,
                    code = ?status.code(), message = status.message(),
                    "purge not delivered; will retry"
                );
                self.store
                    .retry_purge_job(job_id, delay, &describe(&status))
                    .await
            }
            Delivery::Permanent(status) => {
                error!(
                    %user_id, %job_id, attempts = job.attempts,
                    code = ?status.code(), message = status.message(),
                    "purge refused by the entries service; job parked as failed for an operator \
                     (requeue it by setting its state back to 'pending'; see the README)"
                );
                self.store.fail_purge_job(job_id, &describe(&status)).await
            }
        };
        if let Err(error) = settled {
            // The lease runs out and the job is retried: a purge is idempotent.
            warn!(%job_id, error = %heft_service::error::DisplayChain(&error), "cannot record purge result");
        }
    }

    fn backoff(&self, attempts: i32) -> Duration {
        retry_delay(
            attempts,
            self.args.purge_retry_initial_ms,
            self.args.purge_retry_max_ms,
            &mut rand::thread_rng(),
        )
    }

    /// Delivers due jobs until `shutdown` turns true. A batch in flight is
    /// finished first (each delivery has a deadline), so stopping loses nothing.
    pub async fn run_dispatcher(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.args.purge_poll_ms.max(10));
        let mut stats =
            tokio::time::interval(Duration::from_secs(self.args.purge_stats_secs.max(1)));
        info!("purge dispatcher started");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = stats.tick() => self.log_queue_stats().await,
                () = tokio::time::sleep(poll) => {},
            }
            if *shutdown.borrow() {
                break;
            }
            self.dispatch_due_jobs().await;
        }
        info!("purge dispatcher stopped");
    }

    async fn dispatch_due_jobs(&self) {
        loop {
            let jobs = match self.store.claim_due_purge_jobs(LEASE, BATCH).await {
                Ok(jobs) => jobs,
                Err(error) => {
                    warn!(error = %heft_service::error::DisplayChain(&error), "cannot claim purge jobs");
                    return;
                }
            };
            let claimed = jobs.len();
            futures::future::join_all(jobs.iter().map(|job| {
                let span = info_span!(
                    "purge",
                    request_id = job.request_id.as_deref().unwrap_or("")
                );
                async move {
                    let delivery = self.deliver(job, DISPATCH_DEADLINE).await;
                    self.settle(job, delivery).await;
                }
                .instrument(span)
            }))
            .await;
            if claimed < BATCH as usize {
                return;
            }
        }
    }

    async fn log_queue_stats(&self) {
        match self.store.purge_queue_stats().await {
            Ok(stats) => {
                let oldest_pending_age_secs =
                    stats.oldest_pending_age.map_or(0, |age| age.as_secs());
                if stats.pending > 0 || stats.failed > 0 {
                    warn!(
                        pending = stats.pending,
                        failed = stats.failed,
                        oldest_pending_age_secs,
                        "purge queue"
                    );
                } else {
                    info!(
                        pending = 0,
                        failed = 0,
                        oldest_pending_age_secs,
                        "purge queue"
                    );
                }
            }
            Err(error) => {
                warn!(error = %heft_service::error::DisplayChain(&error), "cannot read purge queue")
            }
        }
    }
}

/// Capped exponential backoff with jitter: the delay doubles per attempt up
/// to `max_ms`, and is half fixed, half random, so that replicas retrying
/// the same outage spread out.
fn retry_delay(attempts: i32, initial_ms: u64, max_ms: u64, rng: &mut impl Rng) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    let delay = initial_ms
        .saturating_mul(1 << exponent)
        .clamp(1, max_ms.max(1));
    let half = delay / 2;
    Duration::from_millis(half + rng.gen_range(0..=delay - half))
}

fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
    )
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_with_jitter_up_to_the_cap() {
        let mut rng = rand::thread_rng();
        for _ in 0..100 {
            let mut ms = |attempts| retry_delay(attempts, 500, 30_000, &mut rng).as_millis();
            assert!((250..=500).contains(&ms(1)));
            assert!((500..=1_000).contains(&ms(2)));
            assert!((4_000..=8_000).contains(&ms(5)));
            assert!((15_000..=30_000).contains(&ms(12)));
            assert!((15_000..=30_000).contains(&ms(i32::MAX)));
        }
    }

    #[test]
    fn only_transient_failures_are_retried() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
        ] {
            assert!(is_transient(code), "{code:?}");
        }
        for code in [
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::Internal,
        ] {
            assert!(!is_transient(code), "{code:?}");
        }
    }
}
