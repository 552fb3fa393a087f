//! The cross-service cascade (docs/contract.md, "Cascade"): deleting a user records a
//! purge job in the same transaction (the outbox); the job is delivered to
//! the entries service's `PurgeUserEntries` right away, and redelivered by a
//! dispatcher with capped, jittered exponential backoff until acknowledged.
//!
//! A job is *claimed* by moving its `next_attempt_at` to the end of a lease
//! that outlasts the delivery deadline, so at most one delivery of a job is
//! in flight at any time, across replicas. A crash mid-delivery loses
//! nothing: the lease runs out and the job is due again.
//!
//! A job is never given up on. Whatever the entries service answers, the job
//! stays pending and is retried with capped backoff; a refusal (a token
//! mismatch, an unknown method) is logged at error level with what to check
//! and backs off to the cap sooner, since it lasts until someone fixes it.

use std::{sync::Arc, time::Duration};

use heft_proto::entries::v1::{
    PurgeUserEntriesRequest, entry_service_client::EntryServiceClient,
    entry_service_server::SERVICE_NAME, reason::PURGE_INCOMPLETE,
};
use heft_service::{
    RequestId,
    client::InternalCredentials,
    peer::{self, PeerAnswer},
};
use rand::Rng;
use tokio::sync::watch;
use tonic::transport::Channel;
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
    /// Deadline of a redelivery by the dispatcher, in ms. A purge too large
    /// for it keeps what it deleted and resumes on the next delivery.
    #[arg(long, env = "HEFT_PURGE_DELIVERY_TIMEOUT_MS", default_value_t = 30_000)]
    pub purge_delivery_timeout_ms: u64,
    /// How often the dispatcher looks for due jobs, in ms.
    #[arg(long, env = "HEFT_PURGE_POLL_MS", default_value_t = 1_000)]
    pub purge_poll_ms: u64,
    /// How often the size and age of the purge queue are logged, in seconds.
    #[arg(long, env = "HEFT_PURGE_STATS_SECS", default_value_t = 30)]
    pub purge_stats_secs: u64,
}

/// A claim outlasts its delivery by this much, so a job is never delivered
/// twice at once.
const LEASE_MARGIN: Duration = Duration::from_secs(60);
/// Jobs claimed, and delivered concurrently, per dispatcher round.
const BATCH: u32 = 16;
/// A refusal backs off as if it had failed this many more times: it lasts
/// until an operator acts, so hammering the peer helps nobody.
const REFUSAL_HEAD_START: i32 = 4;
/// From this many failed deliveries on, every failure is logged as an error.
const ALERT_AFTER_ATTEMPTS: i32 = 5;

/// How a deleted user's entries stand after DeleteUser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeOutcome {
    Purged { deleted_entries: i64 },
    Pending,
}

/// What one delivery attempt achieved: acknowledged with the total every
/// purge of the user deleted, or not (the job stays pending and is retried).
type Delivery = Result<i64, tonic::Status>;

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
            traceparent: heft_service::trace::current_traceparent(),
            attempts: 1,
        };
        self.store.delete_user(user_id, &job, self.lease()).await?;
        info!(%user_id, job_id = %job.id, "user deleted; purging entries");

        // Delivered on its own task: if the caller gives up on DeleteUser, the
        // delivery still finishes and settles the job.
        let cascade = self.clone();
        let deadline = Duration::from_millis(self.args.purge_immediate_timeout_ms);
        let delivery = tokio::spawn(heft_service::trace::in_current_trace(async move {
            let delivery = cascade.deliver(&job, deadline).await;
            let outcome = match &delivery {
                Ok(count) => PurgeOutcome::Purged {
                    deleted_entries: *count,
                },
                _ => PurgeOutcome::Pending,
            };
            cascade.settle(&job, delivery).await;
            outcome
        }));
        Ok(delivery.await.unwrap_or(PurgeOutcome::Pending))
    }

    async fn deliver(&self, job: &PurgeJob, deadline: Duration) -> Delivery {
        let request_id = job.request_id.clone().map(RequestId);
        // A clone of the client is a handle on the same connection.
        let mut entries = self.entries.clone();
        self.credentials
            .call(
                (SERVICE_NAME, "PurgeUserEntries"),
                PurgeUserEntriesRequest {
                    user_id: job.user_id.to_string(),
                },
                request_id.as_ref(),
                deadline,
                |request| async move { entries.purge_user_entries(request).await },
            )
            .await
            .map(|response| response.total_deleted_count)
    }

    fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.args.purge_delivery_timeout_ms)
    }

    fn lease(&self) -> Duration {
        self.delivery_timeout()
            .max(Duration::from_millis(self.args.purge_immediate_timeout_ms))
            + LEASE_MARGIN
    }

    /// Records the result of a delivery on the job.
    async fn settle(&self, job: &PurgeJob, delivery: Delivery) {
        let job_id = job.id;
        let user_id = job.user_id;
        let settled = match delivery {
            Ok(count) => {
                info!(%user_id, %job_id, total_deleted_entries = count, attempts = job.attempts, "entries purged");
                self.store.complete_purge_job(job_id, count).await
            }
            Err(status) if peer::reason(&status).as_deref() == Some(PURGE_INCOMPLETE) => {
                // Progress, not failure: resume soon, whatever the attempt count.
                let delay = self.backoff(1);
                info!(
                    %user_id, %job_id, attempts = job.attempts, message = status.message(),
                    "purge in progress; the next delivery resumes it"
                );
                self.store
                    .retry_purge_job(job_id, delay, &peer::describe(&status))
                    .await
            }
            Err(status) => {
                let refused = peer::classify(&status) != PeerAnswer::Transient;
                let delay = self.backoff(if refused {
                    job.attempts.saturating_add(REFUSAL_HEAD_START)
                } else {
                    job.attempts
                });
                let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                let code = peer::code_name(status.code());
                if refused {
                    error!(
                        %user_id, %job_id, attempts = job.attempts, retry_in_ms, code,
                        message = status.message(), check = peer::what_to_check(status.code(), "HEFT_ENTRIES_URL"),
                        "purge refused by the entries service; will retry"
                    );
                } else if job.attempts >= ALERT_AFTER_ATTEMPTS {
                    error!(
                        %user_id, %job_id, attempts = job.attempts, retry_in_ms, code,
                        message = status.message(),
                        "purge keeps failing; will retry"
                    );
                } else {
                    warn!(
                        %user_id, %job_id, attempts = job.attempts, retry_in_ms, code,
                        message = status.message(),
                        "purge not delivered; will retry"
                    );
                }
                self.store
                    .retry_purge_job(job_id, delay, &peer::describe(&status))
                    .await
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
            let jobs = match self.store.claim_due_purge_jobs(self.lease(), BATCH).await {
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
                // A trace of its own, linked to the DeleteUser that recorded the job.
                let delivery_span = heft_service::trace::outbox_delivery_span(
                    job.traceparent.as_deref(),
                    &job.user_id,
                    &job.id,
                );
                async move {
                    let delivery = self.deliver(job, self.delivery_timeout()).await;
                    self.settle(job, delivery).await;
                }
                .instrument(span)
                .instrument(delivery_span)
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
                if stats.pending > 0 {
                    warn!(
                        pending = stats.pending,
                        oldest_pending_age_secs, "purge queue"
                    );
                } else {
                    info!(pending = 0, oldest_pending_age_secs, "purge queue");
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
}
