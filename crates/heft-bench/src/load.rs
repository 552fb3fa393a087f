//! Closed-loop load: `concurrency` workers each issue one call after the
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

/// Runs `call(worker, iteration)` from `concurrency` workers until
/// `warmup + duration` has passed; only calls started after the warm-up count.
pub async fn closed_loop<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    probe: &CpuProbe,
    call: F,
) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    paced_loop(concurrency, warmup, duration, Duration::ZERO, probe, call).await
}

/// Slices of a load and of its floor, taken in turns, so that a slow spell
/// of a shared machine weighs on both alike.
const SLICES: u32 = 5;

/// Runs `load` and `floor` as [`closed_loop`]s in turns, [`SLICES`] slices
/// of `duration / SLICES` each; the first slice of each warms up for
/// `warmup`, later ones for a tenth of a slice.
pub async fn alternate<L, LFut, F, FFut>(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    probe: &CpuProbe,
    load: L,
    floor: F,
) -> (Measured, Measured)
where
    L: Fn(usize, u64) -> LFut + Clone + Send + Sync + 'static,
    LFut: Future<Output = Result<(), String>> + Send + 'static,
    F: Fn(usize, u64) -> FFut + Clone + Send + Sync + 'static,
    FFut: Future<Output = Result<(), String>> + Send + 'static,
{
    let slice = duration / SLICES;
    let mut measured: Option<(Measured, Measured)> = None;
    for round in 0..SLICES {
        let settle = if round == 0 { warmup } else { slice / 10 };
        let of_load = closed_loop(concurrency, settle, slice, probe, load.clone()).await;
        let of_floor = closed_loop(concurrency, settle, slice, probe, floor.clone()).await;
        match measured.as_mut() {
            None => measured = Some((of_load, of_floor)),
            Some((load_so_far, floor_so_far)) => {
                load_so_far.merge(of_load);
                floor_so_far.merge(of_floor);
            }
        }
    }
    measured.unwrap_or_else(|| unreachable!("SLICES is not zero"))
}

/// [`closed_loop`] where each worker starts a call at most every `pace`
/// (the wait is not part of the measured latency).
pub async fn paced_loop<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    pace: Duration,
    probe: &CpuProbe,
    call: F,
) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let measuring_from = started + warmup;
    let until = measuring_from + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latency = histogram();
                let (mut requests, mut errors, mut first_error) = (0u64, 0u64, None);
                let mut iteration = 0u64;
                loop {
                    let begun = Instant::now();
                    if begun >= until {
                        break;
                    }
                    let result = call(worker, iteration).await;
                    let took = begun.elapsed();
                    iteration += 1;
                    tokio::time::sleep(pace.saturating_sub(took)).await;
                    if begun < measuring_from {
                        continue;
                    }
                    requests += 1;
                    match result {
                        Ok(()) => {
                            let micros = took.as_micros();
                            let _ =
                                latency.record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                        }
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert(error);
                        }
                    }
                }
                (requests, errors, latency, first_error)
            })
        })
        .collect();
    tokio::time::sleep_until(measuring_from.into()).await;
    let cpu_before = probe();
    let mut measured = Measured {
        requests: 0,
        errors: 0,
        elapsed: duration,
        latency: histogram(),
        first_error: None,
        cpu: CpuSplit::default(),
    };
    for worker in workers {
        if let Ok((requests, errors, latency, first_error)) = worker.await {
            measured.requests += requests;
            measured.errors += errors;
            let _ = measured.latency.add(&latency);
            if measured.first_error.is_none() {
                measured.first_error = first_error;
            }
        }
    }
    // The last calls may end after the deadline: count the real span.
    measured.elapsed = Instant::now().saturating_duration_since(measuring_from);
    measured.cpu = probe() - cpu_before;
    measured
}
