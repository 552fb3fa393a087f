//! Asks the users service whether a user exists, before an entry is created.
//!
//! Positive answers are cached briefly: a user deleted meanwhile is caught
//! by the tombstone its purge leaves, so the cache cannot let an orphan in.

use std::time::Duration;

use heft_proto::users::v1::{
    GetUserRequest, user_service_client::UserServiceClient, user_service_server::SERVICE_NAME,
};
use heft_service::{
    ErrorCode, RequestId,
    client::InternalCredentials,
    error::{Layer, LayeredError},
    peer::{self, PeerAnswer},
    recent::Recent,
};
use tonic::transport::Channel;

use crate::domain::UserId;

const LOOKUP_DEADLINE: Duration = Duration::from_secs(2);
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_CAPACITY: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("user not found")]
    UserNotFound,
    #[error("users service unavailable: {0}")]
    Unavailable(String),
    /// The users service is up but refuses us: a misconfiguration that only
    /// an operator can fix (see [`heft_service::peer`]).
    #[error("users service refused the lookup: {0}")]
    Refused(String),
}

impl LayeredError for UsersError {
    fn layer(&self) -> Layer<'_> {
        match self {
            UsersError::UserNotFound => Layer::own(ErrorCode::NotFound, "USER_NOT_FOUND"),
            UsersError::Unavailable(_) => {
                Layer::own(ErrorCode::Unavailable, "USERS_SERVICE_UNAVAILABLE")
            }
            UsersError::Refused(_) => Layer::own(ErrorCode::Internal, "USERS_SERVICE_REFUSED"),
        }
    }
}

heft_service::into_status!(UsersError);

pub struct UsersClient {
    client: UserServiceClient<Channel>,
    credentials: InternalCredentials,
    /// Users the users service confirmed lately.
    known: Recent<UserId>,
}

impl UsersClient {
    pub fn new(channel: Channel, credentials: InternalCredentials) -> Self {
        Self {
            client: UserServiceClient::new(channel),
            credentials,
            known: Recent::new(CACHE_TTL, CACHE_CAPACITY),
        }
    }

    /// Drops what the cache knows of a user (who is being purged).
    pub fn forget(&self, user_id: UserId) {
        self.known.remove(&user_id);
    }

    pub async fn ensure_exists(
        &self,
        user_id: UserId,
        request_id: Option<&RequestId>,
    ) -> Result<(), UsersError> {
        if self.known.contains(&user_id) {
            return Ok(());
        }
        self.lookup(user_id, request_id).await?;
        self.known.insert(user_id);
        Ok(())
    }

    /// Asks the users service, bypassing the cache: `UserNotFound` only on a
    /// definite NOT_FOUND.
    pub async fn lookup(
        &self,
        user_id: UserId,
        request_id: Option<&RequestId>,
    ) -> Result<(), UsersError> {
        let mut client = self.client.clone();
        let answer = self
            .credentials
            .call(
                (SERVICE_NAME, "GetUser"),
                GetUserRequest {
                    id: user_id.to_string(),
                },
                request_id,
                LOOKUP_DEADLINE,
                |request| async move { client.get_user(request).await },
            )
            .await;
        let Err(status) = answer else {
            return Ok(());
        };
        let described = peer::describe(&status);
        match peer::classify(&status) {
            PeerAnswer::NotFound => Err(UsersError::UserNotFound),
            PeerAnswer::Transient => {
                tracing::warn!(%user_id, error = %described, "users service lookup failed");
                Err(UsersError::Unavailable(format!(
                    "cannot confirm that the user exists ({})",
                    peer::code_name(status.code())
                )))
            }
            PeerAnswer::Refused => {
                tracing::error!(
                    %user_id, error = %described, check = peer::what_to_check(status.code(), "HEFT_USERS_URL"),
                    "users service refused the lookup"
                );
                Err(UsersError::Refused(described))
            }
        }
    }
}
