//! tonic handlers of `heft.users.v1.UserService`: decode and validate, call
//! the domain and store, map errors (in [`error`]).

use std::sync::Arc;

use heft_proto::users::v1::{self as pb, user_service_server::UserService};
use heft_service::{
    auth::{Access, Scope},
    caller,
    changes::{self, ListTokens},
    keyed::KeyedHash,
    pagination, request_id, time,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::{
    cascade::{Cascade, PurgeOutcome},
    domain::{
        Credentials, Email, HashReplacement, LoginAttempt, LoginThrottle, PurgeCursor,
        PurgeJobQuery, ThrottleKey, User, UserId,
    },
    password::{HashingTurn, PasswordHasher},
    store::UserStore,
    tokens::UserTokens,
};

mod convert;
mod error;

pub use error::ApiError;

/// Who may call each method (docs/access.md). A user token reaches its own
/// user only: the handlers check the id.
pub const METHODS: &[(&str, Access)] = &[
    ("CreateUser", Access::scope(Scope::UsersWrite)),
    // The entries service asks whether a user exists with the internal token.
    (
        "GetUser",
        Access::Scoped {
            scope: Scope::UsersRead,
            internal: true,
            user_token: true,
        },
    ),
    ("ListUsers", Access::scope(Scope::UsersRead)),
    ("UpdateUser", Access::scope_or_own_user(Scope::UsersWrite)),
    (
        "ChangePassword",
        Access::scope_or_own_user(Scope::UsersWrite),
    ),
    ("DeleteUser", Access::scope_or_own_user(Scope::UsersDelete)),
    ("Authenticate", Access::scope(Scope::UsersAuthenticate)),
    ("GetPurgeJob", Access::scope(Scope::PurgeRead)),
    ("ListPurgeJobs", Access::scope(Scope::PurgeRead)),
    ("ListTokenKeys", Access::Public),
    ("ListUserChanges", Access::scope(Scope::UsersChanges)),
];

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;
const PAGE_SCOPE: &str = "users";
const PURGE_JOBS_PAGE_SCOPE: &str = "purge_jobs";
const CHANGES_SCOPE: &str = "user_changes";

/// The helpers' answers: a refusal of the API itself or of a layer below.
type ApiResult<T> = Result<T, Status>;

pub struct UserApi {
    store: Arc<dyn UserStore>,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    throttle_keys: KeyedHash,
    list_tokens: ListTokens,
    cascade: Arc<Cascade>,
    tokens: Arc<UserTokens>,
}

impl UserApi {
    pub fn new(
        store: Arc<dyn UserStore>,
        hasher: PasswordHasher,
        throttle: LoginThrottle,
        throttle_keys: KeyedHash,
        list_tokens: ListTokens,
        cascade: Arc<Cascade>,
        tokens: Arc<UserTokens>,
    ) -> Self {
        Self {
            store,
            hasher,
            throttle,
            throttle_keys,
            list_tokens,
            cascade,
            tokens,
        }
    }

    /// Counts a login attempt for `email` before any hashing, for known and
    /// unknown emails alike: the throttle's answer and its cost do not tell
    /// which emails have accounts. The count is atomic, so concurrent
    /// guesses cannot exceed the limit; the [`Attempt`] gives it back unless
    /// a password is checked and found wrong.
    async fn begin_attempt(&self, email: &Email) -> ApiResult<Attempt> {
        let key = ThrottleKey(self.throttle_keys.digest(email.as_str().as_bytes()));
        let attempt = self.store.begin_login_attempt(&key, self.throttle).await?;
        if let LoginAttempt::Locked { retry_after } = attempt {
            warn!("login refused: too many failures for this email");
            return Err(ApiError::LoginLocked { retry_after }.into());
        }
        Ok(Attempt {
            store: self.store.clone(),
            key,
            settled: false,
        })
    }

    /// Checks a password against the account's hash, after
    /// [`UserApi::begin_attempt`]: a wrong one keeps the count, a right one
    /// clears the failures and, with `upgrade`, re-hashes a hash made with
    /// weaker parameters.
    async fn verify_password(
        &self,
        credentials: &Credentials,
        password: &crate::domain::Password,
        (turn, attempt): (HashingTurn, Attempt),
        wrong: ApiError,
        upgrade: bool,
    ) -> ApiResult<()> {
        let verification = turn.verify(password, &credentials.password_hash).await?;
        if !verification.matches {
            attempt.counts();
            return Err(wrong.into());
        }
        attempt.succeeded().await?;
        if upgrade && verification.needs_rehash {
            self.rehash(credentials.user.id, password, &credentials.password_hash)
                .await;
        }
        Ok(())
    }

    /// Upgrades a hash made with weaker parameters; a failure only delays
    /// the upgrade to the next login.
    async fn rehash(&self, id: UserId, password: &crate::domain::Password, old_hash: &str) {
        let upgraded = async {
            let hash = self.hasher.hash(password).await?;
            Ok::<_, Status>(
                self.store
                    .replace_password_hash(&HashReplacement {
                        id,
                        expected: old_hash,
                        new_hash: &hash,
                        now: time::now(),
                        new_password: false,
                    })
                    .await?,
            )
        };
        match upgraded.await {
            Ok(true) => info!(user_id = %id, "password re-hashed with the configured parameters"),
            // The password was changed meanwhile: the new hash stands.
            Ok(false) => {}
            Err(error) => warn!(user_id = %id, %error, "cannot re-hash password"),
        }
    }
}

/// A login attempt, counted as a failure while its password is checked. A
/// checked, wrong password keeps the count ([`Attempt::counts`]), a right
/// one clears the failures ([`Attempt::succeeded`]); an attempt dropped
/// unsettled (hashing busy, an error, the caller gone) gives its count back,
/// so a spray of logins for other emails never locks a user out.
struct Attempt {
    store: Arc<dyn UserStore>,
    key: ThrottleKey,
    settled: bool,
}

impl Attempt {
    fn counts(mut self) {
        self.settled = true;
    }

    async fn succeeded(mut self) -> ApiResult<()> {
        self.settled = true;
        Ok(self.store.clear_login_failures(&self.key).await?)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Dropping may be the call's cancellation: the refund runs on its own.
        let (store, key) = (self.store.clone(), self.key);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = store.refund_login_attempt(&key).await {
                    warn!(error = %heft_service::error::DisplayChain(&error), "cannot give back an unchecked login attempt");
                }
            });
        }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let account = convert::create_user(request.into_inner())?;
        let password_hash = self.hasher.hash(&account.password).await?;
        let now = time::now();
        let user = User {
            id: UserId::generate(),
            email: account.email,
            name: account.name,
            weight_unit: account.weight_unit,
            create_time: now,
            update_time: now,
        };
        self.store
            .create_user(&Credentials {
                user: user.clone(),
                password_hash,
            })
            .await?;
        info!(user_id = %user.id, "user created");
        Ok(Response::new(convert::user_to_proto(&user)))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let id = convert::user_id(&request.get_ref().id, "id")?;
        caller(&request).require_user(id.0)?;
        let user = self.store.get_user(id).await?;
        Ok(Response::new(convert::user_to_proto(&user)))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let request = request.into_inner();
        let page_size = pagination::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        let after: Option<uuid::Uuid> =
            self.list_tokens
                .pages
                .decode(PAGE_SCOPE, &(), &request.page_token)?;
        let mut users = self
            .store
            .list_users(after.map(UserId), page_size + 1)
            .await?;
        let next_page_token =
            self.list_tokens
                .pages
                .finish_page(PAGE_SCOPE, &(), &mut users, page_size, |last| last.id.0);
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(convert::user_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let user = caller(&request).clone();
        let (id, patch) = convert::update_user(request.into_inner())?;
        user.require_user(id.0)?;
        let user = self.store.update_user(id, &patch, time::now()).await?;
        Ok(Response::new(convert::user_to_proto(&user)))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<()>, Status> {
        let user = caller(&request).clone();
        let change = convert::change_password(request.into_inner())?;
        user.require_user(change.id.0)?;
        let credentials = self.store.credentials(change.id).await?;
        let turn = self.hasher.admit()?;
        let attempt = self.begin_attempt(&credentials.user.email).await?;
        // No upgrade of the old hash: the new password gets the configured
        // parameters anyway, and the compare-and-swap below expects the hash
        // that was checked.
        self.verify_password(
            &credentials,
            &change.current,
            (turn, attempt),
            ApiError::WrongCurrentPassword,
            false,
        )
        .await?;
        let new_hash = self.hasher.hash(&change.new).await?;
        let replaced = self
            .store
            .replace_password_hash(&HashReplacement {
                id: change.id,
                expected: &credentials.password_hash,
                new_hash: &new_hash,
                now: time::now(),
                new_password: true,
            })
            .await?;
        if !replaced {
            // Changed by a concurrent call: the password checked is no longer current.
            return Err(ApiError::WrongCurrentPassword.into());
        }
        info!(user_id = %change.id, "password changed");
        Ok(Response::new(()))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let login = convert::authenticate(request.into_inner())?;
        // Admitted to hashing first: a login refused as busy costs no write.
        let turn = self.hasher.admit()?;
        let attempt = self.begin_attempt(&login.email).await?;
        let Some(credentials) = self.store.find_credentials(&login.email).await? else {
            // Same cost and answer as a wrong password: no account enumeration.
            turn.verify_dummy(&login.password).await?;
            attempt.counts();
            return Err(ApiError::BadCredentials.into());
        };
        self.verify_password(
            &credentials,
            &login.password,
            (turn, attempt),
            ApiError::BadCredentials,
            true,
        )
        .await?;
        let (access_token, expire_time) = self
            .tokens
            .issue(credentials.user.id)
            .await
            .map_err(ApiError::TokenSigning)?;
        Ok(Response::new(pb::AuthenticateResponse {
            user: Some(convert::user_to_proto(&credentials.user)),
            access_token,
            expire_time: Some(time::to_timestamp(expire_time)),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let id = convert::user_id(&request.get_ref().id, "id")?;
        caller(&request).require_user(id.0)?;
        let outcome = self.cascade.delete_user(id, request_id(&request)).await?;
        let response = match outcome {
            PurgeOutcome::Purged { deleted_entries } => pb::DeleteUserResponse {
                purge_state: pb::PurgeState::Purged.into(),
                purged_entry_count: deleted_entries,
            },
            PurgeOutcome::Pending => pb::DeleteUserResponse {
                purge_state: pb::PurgeState::Pending.into(),
                purged_entry_count: 0,
            },
        };
        Ok(Response::new(response))
    }

    async fn get_purge_job(
        &self,
        request: Request<pb::GetPurgeJobRequest>,
    ) -> Result<Response<pb::PurgeJob>, Status> {
        let user_id = convert::user_id(&request.get_ref().user_id, "user_id")?;
        let record = self.store.purge_record(user_id).await?;
        Ok(Response::new(convert::purge_record_to_proto(&record)))
    }

    async fn list_purge_jobs(
        &self,
        request: Request<pb::ListPurgeJobsRequest>,
    ) -> Result<Response<pb::ListPurgeJobsResponse>, Status> {
        let request = request.into_inner();
        let state = convert::purge_state_filter(request.state)?;
        let page_size = pagination::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        // The token is bound to the state filter.
        let after: Option<PurgeCursor> =
            self.list_tokens
                .pages
                .decode(PURGE_JOBS_PAGE_SCOPE, &state, &request.page_token)?;
        let mut records = self
            .store
            .list_purge_records(&PurgeJobQuery {
                state,
                after,
                limit: page_size + 1,
            })
            .await?;
        let next_page_token = self.list_tokens.pages.finish_page(
            PURGE_JOBS_PAGE_SCOPE,
            &state,
            &mut records,
            page_size,
            PurgeCursor::after,
        );
        Ok(Response::new(pb::ListPurgeJobsResponse {
            purge_jobs: records.iter().map(convert::purge_record_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn list_token_keys(
        &self,
        _request: Request<pb::ListTokenKeysRequest>,
    ) -> Result<Response<pb::ListTokenKeysResponse>, Status> {
        let keys = self.tokens.published().await;
        Ok(Response::new(pb::ListTokenKeysResponse {
            keys: keys.iter().map(convert::token_key_to_proto).collect(),
        }))
    }

    async fn list_user_changes(
        &self,
        request: Request<pb::ListUserChangesRequest>,
    ) -> Result<Response<pb::ListUserChangesResponse>, Status> {
        let request = request.into_inner();
        let limit = pagination::page_size(
            request.page_size,
            changes::DEFAULT_PAGE_SIZE,
            changes::MAX_PAGE_SIZE,
        )?;
        let tokens = &self.list_tokens.changes;
        let Some(after) = tokens.decode(CHANGES_SCOPE, &(), &request.change_token)? else {
            let head = self.store.user_changes_head().await?;
            return Ok(Response::new(pb::ListUserChangesResponse {
                changes: Vec::new(),
                next_change_token: tokens.encode(CHANGES_SCOPE, &(), head, time::now()),
            }));
        };
        let page = self.store.list_user_changes(after, limit).await?;
        Ok(Response::new(pb::ListUserChangesResponse {
            changes: page
                .changes
                .iter()
                .map(convert::user_change_to_proto)
                .collect(),
            next_change_token: tokens.encode(CHANGES_SCOPE, &(), page.next, page.next_since),
        }))
    }
}
