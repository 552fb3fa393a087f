//! tonic handlers of `heft.entries.v1.EntryService`: decode and validate,
//! call the domain and store, map errors (in [`error`]).

use std::{sync::Arc, time::Instant};

use chrono::Utc;
use heft_proto::entries::v1::{self as pb, entry_service_server::EntryService};
use heft_service::{
    Caller,
    auth::{Access, AuthError, Scope},
    caller,
    changes::{self, ListTokens},
    host, pagination, request_id, time,
};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::{
    domain::{
        ChangeQuery, Cursor, Entry, EntryId, ListQuery, SortOrder, Summarizer, UserId, Weight,
    },
    purge::{self, PurgeArgs},
    store::{EntryStore, StoreError},
    users_client::{UsersClient, UsersError},
};

mod convert;
mod error;

pub use error::ApiError;

/// Who may call each method (docs/access.md). A user token reaches its
/// own user's entries only: the handlers check `user_id`, and an entry of
/// another user is NOT_FOUND, as if it did not exist.
pub const METHODS: &[(&str, Access)] = &[
    (
        "CreateEntry",
        Access::scope_or_own_user(Scope::EntriesWrite),
    ),
    (
        "BatchCreateEntries",
        Access::scope_or_own_user(Scope::EntriesWrite),
    ),
    (
        "UpdateEntry",
        Access::scope_or_own_user(Scope::EntriesWrite),
    ),
    (
        "DeleteEntry",
        Access::scope_or_own_user(Scope::EntriesWrite),
    ),
    ("GetEntry", Access::scope_or_own_user(Scope::EntriesRead)),
    ("ListEntries", Access::scope_or_own_user(Scope::EntriesRead)),
    (
        "SummarizeEntries",
        Access::scope_or_own_user(Scope::EntriesRead),
    ),
    // A user token may follow its own user's changes (the handler checks the filter).
    (
        "ListEntryChanges",
        Access::scope_or_own_user(Scope::EntriesRead),
    ),
    ("PurgeUserEntries", Access::InternalOnly),
];

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;
/// Entries a summary reads per statement: it holds a pool connection only
/// while one page is read, so a user with millions of entries cannot keep
/// one for the whole summary.
const SUMMARY_PAGE: u32 = 5_000;
/// Summaries computed at once; the rest wait their turn within their
/// deadline, so a few large summaries cannot take the whole pool.
const SUMMARIES_AT_ONCE: usize = 2;
const PAGE_SCOPE: &str = "entries";
const CHANGES_SCOPE: &str = "entry_changes";

pub struct EntryApi {
    store: Arc<dyn EntryStore>,
    summaries: Semaphore,
    users: UsersClient,
    list_tokens: ListTokens,
    purge: PurgeArgs,
}

impl EntryApi {
    pub fn new(
        store: Arc<dyn EntryStore>,
        users: UsersClient,
        list_tokens: ListTokens,
        purge: PurgeArgs,
    ) -> Self {
        Self {
            store,
            summaries: Semaphore::new(SUMMARIES_AT_ONCE),
            users,
            list_tokens,
            purge,
        }
    }

    /// Entries can be added for users that exist and were never purged. The
    /// insert itself checks the tombstone (atomically with the purge), so the
    /// tombstone is read here only to explain a refusal: a deleted user is
    /// FAILED_PRECONDITION rather than NOT_FOUND, even while the users
    /// service is down.
    async fn check_owner<T>(&self, user_id: UserId, request: &Request<T>) -> Result<(), Status> {
        caller(request).require_user(user_id.0)?;
        match self.users.ensure_exists(user_id, request_id(request)).await {
            Ok(()) => Ok(()),
            Err(refusal) if self.store.is_purged(user_id).await? => {
                tracing::debug!(%user_id, %refusal, "user is purged");
                Err(StoreError::UserPurged.into())
            }
            Err(refusal) => Err(refusal.into()),
        }
    }
}

impl EntryApi {
    /// An entry by id, if the caller may see it: another user's entry is
    /// NOT_FOUND to a user token, exactly as an absent one.
    async fn visible_entry<T>(&self, id: EntryId, request: &Request<T>) -> Result<Entry, Status> {
        let entry = self.store.get_entry(id).await?;
        if !caller(request).may_see(entry.user_id.0) {
            return Err(StoreError::NotFound.into());
        }
        Ok(entry)
    }

    /// For writes by id: a user token first proves the entry is its own
    /// (an entry never changes owner, so the check cannot go stale).
    async fn check_entry_owner<T>(&self, id: EntryId, request: &Request<T>) -> Result<(), Status> {
        if matches!(caller(request), Caller::User(_)) {
            self.visible_entry(id, request).await?;
        }
        Ok(())
    }
}

fn today() -> chrono::NaiveDate {
    Utc::now().date_naive()
}

fn new_entry(user_id: UserId, draft: convert::Draft) -> Entry {
    let now = time::now();
    Entry {
        id: EntryId::generate(),
        user_id,
        weight: draft.weight,
        recorded_on: draft.recorded_on,
        note: draft.note,
        create_time: now,
        update_time: now,
    }
}

#[tonic::async_trait]
impl EntryService for EntryApi {
    async fn create_entry(
        &self,
        request: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let params = convert::create_entry(request.get_ref(), today())?;
        self.check_owner(params.user_id, &request).await?;
        let entry = new_entry(params.user_id, params.draft);
        let stored = self.store.create_entry(&entry, params.request_id).await?;
        Ok(Response::new(convert::entry_to_proto(stored, None)))
    }

    async fn batch_create_entries(
        &self,
        request: Request<pb::BatchCreateEntriesRequest>,
    ) -> Result<Response<pb::BatchCreateEntriesResponse>, Status> {
        let (user_id, drafts) = convert::batch_create(request.get_ref(), today())?;
        self.check_owner(user_id, &request).await?;
        let entries: Vec<Entry> = drafts.into_iter().map(|d| new_entry(user_id, d)).collect();
        self.store.create_entries(user_id, &entries).await?;
        info!(%user_id, count = entries.len(), "entries imported");
        Ok(Response::new(pb::BatchCreateEntriesResponse {
            entries: entries
                .into_iter()
                .map(|e| convert::entry_to_proto(e, None))
                .collect(),
        }))
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let (id, unit) = convert::get_entry(request.get_ref())?;
        let entry = self.visible_entry(id, &request).await?;
        Ok(Response::new(convert::entry_to_proto(entry, unit)))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let user = caller(&request).clone();
        let params = convert::list_entries(request.into_inner())?;
        user.require_user(params.user_id.0)?;
        let page_size = pagination::page_size(params.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        // The token is bound to everything that selects or orders entries.
        let filter = (params.user_id, params.range, params.order);
        let after: Option<Cursor> =
            self.list_tokens
                .pages
                .decode(PAGE_SCOPE, &filter, &params.page_token)?;
        let query = ListQuery {
            user_id: params.user_id,
            range: params.range,
            order: params.order,
            after,
            limit: page_size + 1,
        };
        let mut entries = self.store.list_entries(&query).await?;
        let next_page_token = self.list_tokens.pages.finish_page(
            PAGE_SCOPE,
            &filter,
            &mut entries,
            page_size,
            Cursor::after,
        );
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries
                .into_iter()
                .map(|e| convert::entry_to_proto(e, params.unit))
                .collect(),
            next_page_token,
        }))
    }

    async fn list_entry_changes(
        &self,
        request: Request<pb::ListEntryChangesRequest>,
    ) -> Result<Response<pb::ListEntryChangesResponse>, Status> {
        let caller = caller(&request).clone();
        let (user_id, change_token, page_size) = convert::list_entry_changes(request.into_inner())?;
        match (&caller, user_id) {
            (Caller::User(_), None) => return Err(AuthError::OtherUser.into()),
            (_, Some(user_id)) => caller.require_user(user_id.0)?,
            _ => {}
        }
        let limit = pagination::page_size(
            page_size,
            changes::DEFAULT_PAGE_SIZE,
            changes::MAX_PAGE_SIZE,
        )?;
        let tokens = &self.list_tokens.changes;
        let Some(after) = tokens.decode(CHANGES_SCOPE, &user_id, &change_token)? else {
            let head = self.store.entry_changes_head().await?;
            return Ok(Response::new(pb::ListEntryChangesResponse {
                changes: Vec::new(),
                next_change_token: tokens.encode(CHANGES_SCOPE, &user_id, head, Utc::now()),
            }));
        };
        let page = self
            .store
            .list_entry_changes(&ChangeQuery {
                after,
                user_id,
                limit,
            })
            .await?;
        Ok(Response::new(pb::ListEntryChangesResponse {
            changes: page
                .changes
                .into_iter()
                .map(convert::entry_change_to_proto)
                .collect(),
            next_change_token: tokens.encode(CHANGES_SCOPE, &user_id, page.next, page.next_since),
        }))
    }

    async fn update_entry(
        &self,
        request: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let (id, patch) = convert::update_entry(request.get_ref(), today())?;
        self.check_entry_owner(id, &request).await?;
        let entry = self.store.update_entry(id, &patch, time::now()).await?;
        Ok(Response::new(convert::entry_to_proto(entry, None)))
    }

    async fn delete_entry(
        &self,
        request: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<()>, Status> {
        let id = convert::id(&request.get_ref().id, "id", EntryId::parse)?;
        self.check_entry_owner(id, &request).await?;
        self.store.delete_entry(id).await?;
        Ok(Response::new(()))
    }

    async fn summarize_entries(
        &self,
        request: Request<pb::SummarizeEntriesRequest>,
    ) -> Result<Response<pb::SummarizeEntriesResponse>, Status> {
        let (user_id, range, unit) = convert::summarize(request.get_ref())?;
        caller(&request).require_user(user_id.0)?;
        // Never closed: a permit always comes, when a summary ahead ends.
        let _turn = self.summaries.acquire().await.ok();
        let mut summarizer = Summarizer::new(unit);
        let mut page = ListQuery {
            user_id,
            range,
            order: SortOrder::Ascending,
            after: None,
            limit: SUMMARY_PAGE,
        };
        loop {
            let entries = self.store.list_entries(&page).await?;
            let more = entries.len() == SUMMARY_PAGE as usize;
            page.after = entries.last().map(Cursor::after);
            for entry in entries {
                summarizer.add(entry);
            }
            if !more {
                break;
            }
        }
        let response = match summarizer.finish() {
            None => pb::SummarizeEntriesResponse::default(),
            Some(summary) => {
                let unit = summary.unit;
                let weight =
                    |value| Some(convert::weight_to_proto(Weight::from_stored(value, unit)));
                pb::SummarizeEntriesResponse {
                    count: i64::try_from(summary.count).unwrap_or(i64::MAX),
                    min: weight(summary.min),
                    max: weight(summary.max),
                    mean: weight(summary.mean),
                    first: Some(convert::entry_to_proto(summary.first, None)),
                    last: Some(convert::entry_to_proto(summary.last, None)),
                    change: weight(summary.change),
                    trend: weight(summary.trend),
                }
            }
        };
        Ok(Response::new(response))
    }

    async fn purge_user_entries(
        &self,
        request: Request<pb::PurgeUserEntriesRequest>,
    ) -> Result<Response<pb::PurgeUserEntriesResponse>, Status> {
        let user_id = convert::id(&request.get_ref().user_id, "user_id", UserId::parse)?;
        // A leaked internal token cannot erase a live user: only a definite
        // NOT_FOUND from the users service lets the purge start.
        match self.users.lookup(user_id, request_id(&request)).await {
            Err(UsersError::UserNotFound) => self.users.forget(user_id),
            Ok(()) => return Err(ApiError::UserExists.into()),
            Err(_) => return Err(ApiError::DeletionUnconfirmed.into()),
        }
        // Stop starting batches a little before the deadline, to answer in time.
        let budget = host::time_budget(&request).mul_f64(0.9);
        let progress = purge::purge_user(
            self.store.as_ref(),
            user_id,
            time::now(),
            self.purge.purge_batch_size,
            Instant::now() + budget,
        )
        .await?;
        if !progress.complete {
            info!(%user_id, deleted_entries = progress.deleted, total_deleted_entries = progress.total,
                "purge incomplete before the deadline; the next delivery resumes");
            return Err(ApiError::PurgeIncomplete {
                deleted: progress.deleted,
                total: progress.total,
            }
            .into());
        }
        info!(%user_id, deleted_entries = progress.deleted, total_deleted_entries = progress.total,
            "user entries purged");
        Ok(Response::new(pb::PurgeUserEntriesResponse {
            deleted_count: i64::try_from(progress.deleted).unwrap_or(i64::MAX),
            total_deleted_count: i64::try_from(progress.total).unwrap_or(i64::MAX),
        }))
    }
}
