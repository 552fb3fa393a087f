//! argon2id hashing on threads of its own, a bounded number at a time.
//!
//! One hash at OWASP's parameters takes ~19 MiB and tens of milliseconds of
//! CPU: run on the async workers it would stall every other call, and run
//! without a bound a burst of logins could exhaust memory. The hashing
//! threads run at the lowest CPU priority (SCHED_IDLE on Linux): under a
//! burst of logins they take every idle cycle, yet any other call (a
//! GetUser, a refused login) gets a core the moment it wakes.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
    mpsc,
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, Salt, SaltString, rand_core::OsRng},
};
use heft_service::{ErrorCode, ServiceError};
use thread_priority::ThreadPriority;
use tokio::sync::{Semaphore, oneshot};

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

heft_service::into_status!(HashError);

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
    /// argon2's working memory, reused hash after hash.
    blocks: Arc<BlockPool>,
    threads: Arc<HashThreads>,
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
        let blocks = Arc::new(BlockPool::new(concurrency, params.block_count()));
        let dummy_hash = hash_blocking(&params, &blocks, "heft-dummy-password-for-unknown-emails")
            .map_err(|e| anyhow::anyhow!("cannot hash with the configured parameters: {e}"))?;
        Ok(Self {
            params,
            blocks,
            threads: Arc::new(HashThreads::start(concurrency)?),
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

    /// A place among the calls that may hash (waiting or running), or
    /// `Busy` at once when all are taken. A login takes it before any other
    /// work, so a refusal costs no database write.
    pub fn admit(&self) -> Result<HashingTurn, HashError> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.max_admitted {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Busy);
        }
        Ok(HashingTurn {
            hasher: self.clone(),
            admission: Admission(self.admitted.clone()),
        })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        self.admit()?.hash(password).await
    }

    pub async fn verify(
        &self,
        password: &Password,
        stored_hash: &str,
    ) -> Result<Verification, HashError> {
        self.admit()?.verify(password, stored_hash).await
    }
}

/// An admitted call's turn to hash: it waits for a slot, then runs.
pub struct HashingTurn {
    hasher: PasswordHasher,
    admission: Admission,
}

impl HashingTurn {
    async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce(&Params, &BlockPool) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let HashingTurn { hasher, admission } = self;
        // The permit moves into the blocking task: a caller that gives up
        // (deadline, reset stream) does not free its slot while the hash runs.
        let permit = hasher
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Closed)?;
        let (params, blocks) = (hasher.params.clone(), hasher.blocks.clone());
        hasher
            .threads
            .run(move || {
                let _slot = (permit, admission);
                work(&params, &blocks)
            })
            .await
    }

    pub async fn hash(self, password: &Password) -> Result<String, HashError> {
        let password = password.clone();
        self.run(move |params, blocks| hash_blocking(params, blocks, password.expose()))
            .await?
            .map_err(HashError::Hashing)
    }

    pub async fn verify(
        self,
        password: &Password,
        stored_hash: &str,
    ) -> Result<Verification, HashError> {
        let password = password.clone();
        let stored_hash = stored_hash.to_owned();
        self.run(move |params, blocks| {
            verify_blocking(params, blocks, password.expose(), &stored_hash)
        })
        .await?
    }

    /// Spends the time of one verification, for an unknown email.
    pub async fn verify_dummy(self, password: &Password) -> Result<(), HashError> {
        let dummy = self.hasher.dummy_hash.clone();
        self.verify(password, &dummy).await.map(drop)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The threads that hash, one per hashing slot, at the lowest CPU priority.
struct HashThreads {
    jobs: mpsc::Sender<Job>,
}

impl HashThreads {
    fn start(count: usize) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..count {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("heft-hash-{index}"))
                .spawn(move || {
                    if let Err(error) = lower_priority() {
                        tracing::warn!(?error, "cannot lower the priority of a hashing thread");
                    }
                    // Ends when the hasher, and with it the sender, is dropped.
                    while let Ok(job) = next_job(&queue) {
                        job();
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(work());
            }))
            .map_err(|_| HashError::Closed)?;
        result.await.map_err(|_| HashError::Closed)
    }
}

/// Linux's SCHED_IDLE, not only the lowest nice value: a nice thread's
/// weight is small, but the scheduler still lets a running thread finish its
/// slice (a millisecond or more) before a woken one runs, so each refused
/// login and each GetUser waited behind a hash. A SCHED_IDLE thread is
/// preempted as soon as anything else wakes, and still takes every idle
/// cycle.
#[cfg(target_os = "linux")]
fn lower_priority() -> Result<(), thread_priority::Error> {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
    thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() -> Result<(), thread_priority::Error> {
    thread_priority::set_current_thread_priority(ThreadPriority::Min)
}

fn next_job(queue: &Mutex<mpsc::Receiver<Job>>) -> Result<Job, mpsc::RecvError> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .recv()
}

/// argon2's working memory (19 MiB per hash at OWASP's parameters), kept
/// and reused rather than allocated per hash. Allocated per hash, each
/// blocking-pool thread's malloc arena keeps its last 19 MiB after the hash
/// is done, and the process holds arenas × 19 MiB while idle. The pool holds
/// at most one buffer per hashing slot, since only that many hashes run.
struct BlockPool {
    buffers: Mutex<Vec<Vec<Block>>>,
    capacity: usize,
    block_count: usize,
}

impl BlockPool {
    fn new(capacity: usize, block_count: usize) -> Self {
        Self {
            buffers: Mutex::new(Vec::with_capacity(capacity)),
            capacity,
            block_count,
        }
    }

    /// Runs `work` on at least `needed` blocks.
    fn with_blocks<R>(&self, needed: usize, work: impl FnOnce(&mut [Block]) -> R) -> R {
        if needed > self.block_count {
            // Stronger than configured (a hash from elsewhere): not pooled.
            return work(&mut vec![Block::new(); needed]);
        }
        let pooled = self
            .buffers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let mut buffer = pooled.unwrap_or_else(|| vec![Block::new(); self.block_count]);
        let result = work(&mut buffer);
        let mut buffers = self
            .buffers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buffers.len() < self.capacity {
            buffers.push(buffer);
        }
        result
    }
}

/// argon2 of `password` with `salt` under `algorithm`/`version`/`params`,
/// into `output`, in pooled memory.
fn argon2_into(
    blocks: &BlockPool,
    (algorithm, version, params): (Algorithm, Version, &Params),
    password: &str,
    salt: &Salt<'_>,
    output: &mut [u8],
) -> Result<(), argon2::password_hash::Error> {
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    blocks
        .with_blocks(params.block_count(), |memory| {
            argon2.hash_password_into_with_memory(password.as_bytes(), salt_bytes, output, memory)
        })
        .map_err(argon2::password_hash::Error::from)
}

fn hash_blocking(
    params: &Params,
    blocks: &BlockPool,
    password: &str,
) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    let mut output = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    argon2_into(
        blocks,
        (Algorithm::Argon2id, Version::V0x13, params),
        password,
        &salt.as_salt(),
        &mut output,
    )?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: params.try_into()?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&output)?),
    }
    .to_string())
}

fn verify_blocking(
    configured: &Params,
    blocks: &BlockPool,
    password: &str,
    stored_hash: &str,
) -> Result<Verification, HashError> {
    let parsed = PasswordHash::new(stored_hash).map_err(HashError::StoredHash)?;
    // The stored hash carries its own algorithm and parameters.
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(HashError::StoredHash)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|e| HashError::StoredHash(e.into()))?
        .unwrap_or_default();
    let stored = Params::try_from(&parsed).map_err(HashError::StoredHash)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(HashError::StoredHash(
            argon2::password_hash::Error::PhcStringField,
        ));
    };
    let mut output = vec![0u8; expected.len()];
    argon2_into(
        blocks,
        (algorithm, version, &stored),
        password,
        &salt,
        &mut output,
    )
    .map_err(HashError::StoredHash)?;
    // Output compares in constant time.
    let matches = Output::new(&output).is_ok_and(|computed| computed == expected);
    let needs_rehash = algorithm != Algorithm::Argon2id
        || version != Version::V0x13
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

    /// Pooled memory changes nothing on the wire: hashes verify with the
    /// argon2 crate's own API, and its hashes (those stored by earlier
    /// versions of heft) verify here; stronger stored parameters than the
    /// pool's still work.
    #[tokio::test]
    async fn pooled_hashes_interoperate_with_standard_argon2() {
        use argon2::{PasswordHasher as _, PasswordVerifier as _};
        let hasher = PasswordHasher::new(&args(19_456)).expect("hasher");
        let password = Password::parse("correct horse").expect("valid");

        let ours = hasher.hash(&password).await.expect("hash");
        let parsed = PasswordHash::new(&ours).expect("phc");
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );

        for memory in [19_456, 32_768] {
            let params = Params::new(memory, 2, 1, None).expect("params");
            let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(b"correct horse", &SaltString::generate(&mut OsRng))
                .expect("hash")
                .to_string();
            let verified = hasher.verify(&password, &theirs).await.expect("verify");
            assert!(verified.matches && !verified.needs_rehash, "{memory}");
            let wrong = Password::parse("wrong horse").expect("valid");
            assert!(
                !hasher
                    .verify(&wrong, &theirs)
                    .await
                    .expect("verify")
                    .matches
            );
        }
    }

    #[test]
    fn the_pool_keeps_one_buffer_per_slot() {
        let pool = BlockPool::new(2, 8);
        for _ in 0..5 {
            pool.with_blocks(8, |blocks| assert!(blocks.len() >= 8));
        }
        assert_eq!(pool.buffers.lock().expect("lock").len(), 1);
        pool.with_blocks(16, |blocks| assert_eq!(blocks.len(), 16));
        assert_eq!(
            pool.buffers.lock().expect("lock").len(),
            1,
            "larger ones are not kept"
        );
    }
}
