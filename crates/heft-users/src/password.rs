//! argon2id hashing on the blocking pool, a bounded number at a time.
//!
//! One hash at OWASP's parameters takes ~19 MiB and tens of milliseconds of
//! CPU: run on the async workers it would stall every other call, and run
//! without a bound a burst of logins could exhaust memory.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use heft_service::{ErrorCode, ServiceError};
use tokio::sync::Semaphore;

use crate::domain::Password;

/// argon2id cost, OWASP's recommendation by default (m=19 MiB, t=2, p=1).
#[derive(Debug, Clone, clap::Args)]
pub struct HashingArgs {
    /// argon2id memory cost in KiB.
    #[arg(long, env = "HEFT_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    #[arg(long, env = "HEFT_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,
    /// argon2id lanes.
    #[arg(long, env = "HEFT_ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,
    /// Hashes computed at once; 0 means one per CPU core.
    #[arg(long, env = "HEFT_HASHING_CONCURRENCY", default_value_t = 0)]
    pub hashing_concurrency: usize,
    /// Calls that may wait for a hashing slot; more are refused at once
    /// (RESOURCE_EXHAUSTED), so a spray of logins gets a fast answer, not a
    /// long wait. 0 means four per slot.
    #[arg(long, env = "HEFT_HASHING_QUEUE", default_value_t = 0)]
    pub hashing_queue: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Hashing(argon2::password_hash::Error),
    #[error("stored password hash is unreadable: {0}")]
    StoredHash(argon2::password_hash::Error),
    #[error("password hashing task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("password hasher is shut down")]
    Closed,
    #[error("too many password checks waiting; try again shortly")]
    Busy,
}

impl ServiceError for HashError {
    fn error_code(&self) -> ErrorCode {
        match self {
            HashError::Busy => ErrorCode::ResourceExhausted,
            _ => ErrorCode::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            HashError::Busy => "HASHING_BUSY",
            _ => "PASSWORD_HASHING_FAILED",
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        matches!(self, HashError::Busy).then(|| std::time::Duration::from_secs(1))
    }
}

/// A call admitted to hashing, waiting or running; released when dropped
/// (the hash done, or the caller gone while it waited).
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The result of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    pub matches: bool,
    /// The stored hash is weaker than the configured parameters.
    pub needs_rehash: bool,
}

#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    concurrency: usize,
    permits: Arc<Semaphore>,
    /// Calls waiting for or holding a slot, and how many may.
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
    /// Verified against when the email is unknown, so that an unknown email
    /// costs the same time as a wrong password.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(args: &HashingArgs) -> anyhow::Result<Self> {
        let params = Params::new(
            args.argon2_memory_kib,
            args.argon2_iterations,
            args.argon2_parallelism,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let concurrency = match args.hashing_concurrency {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        let dummy_hash = hash_blocking(&params, "heft-dummy-password-for-unknown-emails")
            .map_err(|e| anyhow::anyhow!("cannot hash with the configured parameters: {e}"))?;
        Ok(Self {
            params,
            concurrency,
            permits: Arc::new(Semaphore::new(concurrency)),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_admitted: concurrency
                + match args.hashing_queue {
                    0 => 4 * concurrency,
                    n => n,
                },
            dummy_hash: dummy_hash.into(),
        })
    }

    /// Hashes running or holding a slot now (a metric).
    pub fn in_flight(&self) -> usize {
        self.concurrency
            .saturating_sub(self.permits.available_permits())
    }

    async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.max_admitted {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Busy);
        }
        let admission = Admission(self.admitted.clone());
        // The permit moves into the blocking task: a caller that gives up
        // (deadline, reset stream) does not free its slot while the hash runs.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Closed)?;
        Ok(tokio::task::spawn_blocking(move || {
            let _slot = (permit, admission);
            work()
        })
        .await?)
    }

    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let params = self.params.clone();
        let password = password.clone();
        self.run_blocking(move || hash_blocking(&params, password.expose()))
            .await?
            .map_err(HashError::Hashing)
    }

    pub async fn verify(
        &self,
        password: &Password,
        stored_hash: &str,
    ) -> Result<Verification, HashError> {
        let params = self.params.clone();
        let password = password.clone();
        let stored_hash = stored_hash.to_owned();
        self.run_blocking(move || verify_blocking(&params, password.expose(), &stored_hash))
            .await?
    }

    /// Spends the time of one verification, for an unknown email.
    pub async fn verify_dummy(&self, password: &Password) -> Result<(), HashError> {
        let dummy = self.dummy_hash.clone();
        self.verify(password, &dummy).await.map(drop)
    }
}

fn argon2id(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2id(params)
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

fn verify_blocking(
    configured: &Params,
    password: &str,
    stored_hash: &str,
) -> Result<Verification, HashError> {
    let parsed = PasswordHash::new(stored_hash).map_err(HashError::StoredHash)?;
    // The stored hash carries its own algorithm and parameters.
    let matches = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    let stored = Params::try_from(&parsed).map_err(HashError::StoredHash)?;
    let needs_rehash = parsed.algorithm != Algorithm::Argon2id.ident()
        || parsed.version != Some(Version::V0x13.into())
        || stored.m_cost() < configured.m_cost()
        || stored.t_cost() < configured.t_cost()
        || stored.p_cost() < configured.p_cost();
    Ok(Verification {
        matches,
        needs_rehash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(memory: u32) -> HashingArgs {
        HashingArgs {
            argon2_memory_kib: memory,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hashing_concurrency: 2,
            hashing_queue: 0,
        }
    }

    #[tokio::test]
    async fn hashes_with_argon2id_and_verifies() {
        let hasher = PasswordHasher::new(&args(19_456)).expect("hasher");
        let password = Password::parse("correct horse").expect("valid");
        let hash = hasher.hash(&password).await.expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );

        let ok = hasher.verify(&password, &hash).await.expect("verify");
        assert_eq!(
            ok,
            Verification {
                matches: true,
                needs_rehash: false
            }
        );
        let wrong = Password::parse("wrong horse").expect("valid");
        assert!(!hasher.verify(&wrong, &hash).await.expect("verify").matches);
    }

    #[tokio::test]
    async fn weaker_stored_hashes_need_a_rehash() {
        let weak = PasswordHasher::new(&args(8_192)).expect("hasher");
        let strong = PasswordHasher::new(&args(19_456)).expect("hasher");
        let password = Password::parse("correct horse").expect("valid");
        let weak_hash = weak.hash(&password).await.expect("hash");
        let verification = strong.verify(&password, &weak_hash).await.expect("verify");
        assert_eq!(
            verification,
            Verification {
                matches: true,
                needs_rehash: true
            }
        );
    }
}
