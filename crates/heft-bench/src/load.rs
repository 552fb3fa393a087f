//! Closed-loop load: a number of workers each issue one call after the
//! other for a bounded time; latencies after the warm-up go into an HDR
//! histogram, failures are counted.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
    pub first_error: Option<String>,
    /// CPU the machine spent while the calls were measured.
    pub cpu: CpuSplit,
}

/// CPU seconds of each process a call passes through.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSplit {
    /// heft-bench itself: the gRPC client, or the floor's SQL client.
    pub client: f64,
    /// The heft service under load.
    pub service: f64,
    /// Every PostgreSQL process.
    pub database: f64,
}

impl CpuSplit {
    pub fn total(&self) -> f64 {
        self.client + self.service + self.database
    }
}

impl std::ops::Add for CpuSplit {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            client: self.client + other.client,
            service: self.service + other.service,
            database: self.database + other.database,
        }
    }
}

impl std::ops::Sub for CpuSplit {
    type Output = Self;
    fn sub(self, other: Self) -> Self {
        Self {
            client: self.client - other.client,
            service: self.service - other.service,
            database: self.database - other.database,
        }
    }
}

/// Reads the CPU used so far by the client, the service and the database.
pub type CpuProbe = Arc<dyn Fn() -> CpuSplit + Send + Sync>;

impl Measured {
    /// No calls yet.
    fn nothing() -> Self {
        Self {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            first_error: None,
            cpu: CpuSplit::default(),
        }
    }

    /// Adds another run of the same load.
    pub fn merge(&mut self, other: Measured) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu = self.cpu + other.cpu;
        let _ = self.latency.add(&other.latency);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Successful calls per second: a refusal is not throughput.
    pub fn rps(&self) -> f64 {
        (self.requests - self.errors) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_ms(&self, percentile: f64) -> f64 {
        self.latency.value_at_percentile(percentile) as f64 / 1000.0
    }

    /// CPU microseconds per call, by process.
    pub fn cpu_per_call_us(&self) -> CpuSplit {
        let per_call = 1e6 / (self.requests.max(1) as f64);
        CpuSplit {
            client: self.cpu.client * per_call,
            service: self.cpu.service * per_call,
            database: self.cpu.database * per_call,
        }
    }

    /// Cores the three processes kept busy on average.
    pub fn cores_busy(&self) -> f64 {
        self.cpu.total() / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// How a load runs: `workers` each issue one call after the other for
/// `warmup + duration`; only calls started after the warm-up count.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub workers: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// One call of a load, `call(worker, iteration)`; an `Err` counts as a
/// failure and the first one is kept for the report.
pub trait Call: Send + Sync + 'static {
    type Error: std::fmt::Display + Send;
    fn call(
        &self,
        worker: usize,
        iteration: u64,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;
}

impl<F, Fut, E> Call for F
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send,
{
    type Error = E;
    fn call(
        &self,
        worker: usize,
        iteration: u64,
    ) -> impl Future<Output = Result<(), E>> + Send + 'static {
        self(worker, iteration)
    }
}

/// `call` with its own clone of `state` per call, so that each call's
/// future owns what it uses.
pub fn per_call<S, F, Fut, E>(state: S, call: F) -> impl Call + Clone
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send,
{
    move |worker, iteration| call(state.clone(), worker, iteration)
}

/// Runs `call` as `load` says, each worker without pause.
pub async fn closed_loop(load: Load, probe: &CpuProbe, call: impl Call) -> Measured {
    paced_loop(load, Duration::ZERO, probe, call).await
}

/// Slices of a load and of its floor, taken in turns, so that a slow spell
/// of a shared machine weighs on both alike.
const SLICES: u32 = 5;

/// Runs `heft` and `floor` as [`closed_loop`]s in turns, [`SLICES`] slices
/// of `load.duration / SLICES` each; the first slice of each warms up for
/// `load.warmup`, later ones for a tenth of a slice.
pub async fn alternate(
    load: Load,
    probe: &CpuProbe,
    heft: impl Call + Clone,
    floor: impl Call + Clone,
) -> (Measured, Measured) {
    let slice = load.duration / SLICES;
    let mut measured: Option<(Measured, Measured)> = None;
    for round in 0..SLICES {
        let turn = Load {
            warmup: if round == 0 { load.warmup } else { slice / 10 },
            duration: slice,
            ..load
        };
        let of_heft = closed_loop(turn, probe, heft.clone()).await;
        let of_floor = closed_loop(turn, probe, floor.clone()).await;
        match measured.as_mut() {
            None => measured = Some((of_heft, of_floor)),
            Some((heft_so_far, floor_so_far)) => {
                heft_so_far.merge(of_heft);
                floor_so_far.merge(of_floor);
            }
        }
    }
    measured.unwrap_or_else(|| unreachable!("SLICES is not zero"))
}

/// [`closed_loop`] where each worker starts a call at most every `pace`
/// (the wait is not part of the measured latency).
pub async fn paced_loop(load: Load, pace: Duration, probe: &CpuProbe, call: impl Call) -> Measured {
    let call = Arc::new(call);
    let measuring_from = Instant::now() + load.warmup;
    let until = measuring_from + load.duration;
    let workers: Vec<_> = (0..load.workers)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut measured = Measured::nothing();
                let mut iteration = 0u64;
                loop {
                    let begun = Instant::now();
                    if begun >= until {
                        break;
                    }
                    let result = call.call(worker, iteration).await;
                    let took = begun.elapsed();
                    iteration += 1;
                    tokio::time::sleep(pace.saturating_sub(took)).await;
                    if begun < measuring_from {
                        continue;
                    }
                    measured.requests += 1;
                    match result {
                        Ok(()) => {
                            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                            let _ = measured.latency.record(micros.max(1));
                        }
                        Err(error) => {
                            measured.errors += 1;
                            measured.first_error.get_or_insert(error.to_string());
                        }
                    }
                }
                measured
            })
        })
        .collect();
    tokio::time::sleep_until(measuring_from.into()).await;
    let cpu_before = probe();
    let mut measured = Measured::nothing();
    for worker in workers {
        if let Ok(of_worker) = worker.await {
            measured.merge(of_worker);
        }
    }
    // The last calls may end after the deadline: count the real span.
    measured.elapsed = Instant::now().saturating_duration_since(measuring_from);
    measured.cpu = probe() - cpu_before;
    measured
}
