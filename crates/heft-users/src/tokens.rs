//! User tokens at the users service: signed at login with the newest key,
//! the keys published for other services, and tokens presented here checked
//! against the account (deleted, or password changed since issue).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use heft_service::{
    auth::{AuthError, UserTokenVerifier},
    time,
    user_token::{LEEWAY_SECS, TokenPublicKey, TokenSigningKey, UNKNOWN_KID, VerifiedTokens},
};
use uuid::Uuid;

use crate::{
    domain::UserId,
    store::{StoreError, StoreResult, StoredTokenKey, UserStore},
};

/// Keys are re-read this often, so that a rotation by another replica or by
/// `heft-users keys rotate` is picked up.
const KEY_REFRESH: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// How long a user token is valid, in seconds.
    #[arg(long, env = "HEFT_USER_TOKEN_TTL_SECS", default_value_t = 900)]
    pub user_token_ttl_secs: u64,
}

struct Loaded {
    /// Newest first.
    keys: Vec<StoredTokenKey>,
    public: HashMap<String, TokenPublicKey>,
    at: Instant,
}

pub struct UserTokens {
    store: Arc<dyn UserStore>,
    ttl: Duration,
    loaded: RwLock<Arc<Loaded>>,
    verified: VerifiedTokens,
}

impl UserTokens {
    /// Loads the signing keys, creating the first one on a new database.
    pub async fn open(store: Arc<dyn UserStore>, args: &TokenArgs) -> anyhow::Result<Arc<Self>> {
        let mut keys = store.token_keys().await?;
        if keys.is_empty() {
            store
                .add_token_key(&TokenSigningKey::generate(), time::now())
                .await?;
            keys = store.token_keys().await?;
        }
        Ok(Arc::new(Self {
            store,
            ttl: Duration::from_secs(args.user_token_ttl_secs.max(1)),
            loaded: RwLock::new(Arc::new(loaded(keys))),
            verified: VerifiedTokens::default(),
        }))
    }

    fn current(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(loaded) => loaded.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The keys, re-read when older than `max_age`; a failed read keeps the
    /// ones already loaded.
    async fn keys(&self, max_age: Duration) -> Arc<Loaded> {
        let current = self.current();
        if current.at.elapsed() < max_age {
            return current;
        }
        match self.store.token_keys().await {
            Ok(keys) if !keys.is_empty() => {
                let fresh = Arc::new(loaded(keys));
                match self.loaded.write() {
                    Ok(mut slot) => *slot = fresh.clone(),
                    Err(poisoned) => *poisoned.into_inner() = fresh.clone(),
                }
                fresh
            }
            Ok(_) => current,
            Err(error) => {
                tracing::warn!(error = %heft_service::error::DisplayChain(&error), "cannot re-read token keys");
                current
            }
        }
    }

    /// A token for `user_id`, signed with the newest key, and its expiry.
    ///
    /// `iat` is in whole seconds, and a token is refused when issued no
    /// later than the second of the last password change: a login within
    /// that second waits for the next one, so its token is not refused.
    pub async fn issue(&self, user_id: UserId) -> anyhow::Result<(String, DateTime<Utc>)> {
        let loaded = self.keys(KEY_REFRESH).await;
        let newest = loaded
            .keys
            .first()
            .ok_or_else(|| anyhow::anyhow!("no token signing key"))?;
        let changed = self.store.password_change_time(user_id).await?;
        let mut now = time::now();
        if let Some(changed) = changed
            && now.timestamp() <= changed.timestamp()
        {
            let next_second = DateTime::from_timestamp(changed.timestamp() + 1, 0).unwrap_or(now);
            tokio::time::sleep((next_second - now).to_std().unwrap_or_default()).await;
            now = time::now();
        }
        newest.key.issue(user_id.0, now, self.ttl)
    }

    /// The public keys other services verify with: the newest, and each
    /// older one until every token it signed has expired.
    pub async fn published(&self) -> Vec<TokenPublicKey> {
        let loaded = self.keys(KEY_REFRESH).await;
        let horizon = time::now()
            - chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX)
            - chrono::Duration::seconds(LEEWAY_SECS as i64);
        let mut published = Vec::new();
        let mut successor_created: Option<DateTime<Utc>> = None;
        for stored in &loaded.keys {
            // A key signed tokens until its successor was made.
            if successor_created.is_none_or(|created| created > horizon) {
                published.push(stored.key.public());
            }
            successor_created = Some(stored.create_time);
        }
        published
    }

    async fn check(&self, token: &str) -> Result<Uuid, AuthError> {
        let mut verified = self
            .verified
            .verify(token, &self.keys(KEY_REFRESH).await.public);
        if verified == Err(UNKNOWN_KID) {
            // Perhaps a key made a moment ago by another replica.
            verified = self
                .verified
                .verify(token, &self.keys(Duration::from_secs(1)).await.public);
        }
        let claims = verified.map_err(AuthError::UserToken)?;
        let user_id = claims.user_id;
        match self.store.password_change_time(UserId(user_id)).await {
            Ok(Some(changed)) if claims.iat <= changed.timestamp() => Err(AuthError::UserToken(
                "the password changed after it was issued",
            )),
            Ok(_) => Ok(user_id),
            Err(StoreError::NotFound) => Err(AuthError::UserToken("the user is deleted")),
            Err(error) => {
                tracing::warn!(error = %heft_service::error::DisplayChain(&error), "cannot check a user token");
                Err(AuthError::Unavailable)
            }
        }
    }
}

impl UserTokenVerifier for UserTokens {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Uuid, AuthError>> {
        Box::pin(self.check(token))
    }
}

fn loaded(keys: Vec<StoredTokenKey>) -> Loaded {
    let public = keys
        .iter()
        .map(|stored| (stored.key.kid.clone(), stored.key.public()))
        .collect();
    Loaded {
        keys,
        public,
        at: Instant::now(),
    }
}

/// `heft-users keys rotate`: a new signing key, used for tokens from the
/// next key refresh of each replica on; the old one stays published until
/// its tokens have expired.
pub async fn rotate(store: &dyn UserStore) -> StoreResult<String> {
    let key = TokenSigningKey::generate();
    store.add_token_key(&key, time::now()).await?;
    Ok(key.kid)
}
