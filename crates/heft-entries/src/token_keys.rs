//! User tokens at the entries service: verified offline with the public
//! keys the users service publishes (`ListTokenKeys`), fetched at start and
//! again when a token names a key not yet known (at most every 10 s).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use heft_proto::users::v1::{ListTokenKeysRequest, user_service_client::UserServiceClient};
use heft_service::{
    auth::{AuthError, UserTokenVerifier},
    recent::Recent,
    user_token::{TokenPublicKey, UNKNOWN_KID, VerifiedTokens},
};
use tonic::transport::Channel;
use uuid::Uuid;

use crate::{domain::UserId, store::EntryStore};

const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(10);
const FETCH_DEADLINE: Duration = Duration::from_secs(2);

pub struct TokenKeys {
    users: UserServiceClient<Channel>,
    store: Arc<dyn EntryStore>,
    keys: RwLock<Arc<HashMap<String, TokenPublicKey>>>,
    last_fetch: Mutex<Option<Instant>>,
    verified: VerifiedTokens,
    /// Users found not purged lately: re-read after [`ALIVE_FOR`].
    alive: Recent<Uuid>,
}

/// How long "this user is not purged" is trusted: a deleted user's token is
/// refused at most this long after the purge's tombstone.
const ALIVE_FOR: Duration = Duration::from_secs(1);
const ALIVE_CAPACITY: usize = 10_000;

impl TokenKeys {
    pub fn new(users: Channel, store: Arc<dyn EntryStore>) -> Arc<Self> {
        Arc::new(Self {
            users: UserServiceClient::new(users),
            store,
            keys: RwLock::default(),
            last_fetch: Mutex::new(None),
            verified: VerifiedTokens::default(),
            alive: Recent::new(ALIVE_FOR, ALIVE_CAPACITY),
        })
    }

    fn current(&self) -> Arc<HashMap<String, TokenPublicKey>> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Fetches the published keys, unless a fetch started less than 10 s
    /// ago; true when the keys were fetched.
    pub async fn fetch(&self) -> bool {
        {
            let mut last = self
                .last_fetch
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|at| at.elapsed() < MIN_FETCH_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let mut request = tonic::Request::new(ListTokenKeysRequest {});
        request.set_timeout(FETCH_DEADLINE);
        let response = match self.users.clone().list_token_keys(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::warn!(error = %heft_service::peer::describe(&status), "cannot fetch the user token keys");
                return false;
            }
        };
        let keys: HashMap<String, TokenPublicKey> = response
            .keys
            .iter()
            .filter_map(|key| TokenPublicKey::from_jwk(&key.kid, &key.kty, &key.crv, &key.x))
            .map(|key| (key.kid.clone(), key))
            .collect();
        tracing::info!(keys = keys.len(), "user token keys fetched");
        match self.keys.write() {
            Ok(mut slot) => *slot = Arc::new(keys),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
        }
        true
    }

    async fn check(&self, token: &str) -> Result<Uuid, AuthError> {
        let mut verified = self.verified.verify(token, &self.current());
        if verified == Err(UNKNOWN_KID) && self.fetch().await {
            verified = self.verified.verify(token, &self.current());
        }
        let user_id = verified.map_err(AuthError::UserToken)?.user_id;
        if self.alive.contains(&user_id) {
            return Ok(user_id);
        }
        // A deleted user's tokens end with the deletion: the purge's
        // tombstone says so here, even while the users service is down.
        match self.store.is_purged(UserId(user_id)).await {
            Ok(false) => {
                self.alive.insert(user_id);
                Ok(user_id)
            }
            Ok(true) => Err(AuthError::UserToken("the user is deleted")),
            Err(error) => {
                tracing::warn!(error = %heft_service::error::DisplayChain(&error), "cannot check a user token");
                Err(AuthError::Unavailable)
            }
        }
    }
}

impl UserTokenVerifier for TokenKeys {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Uuid, AuthError>> {
        Box::pin(self.check(token))
    }
}
