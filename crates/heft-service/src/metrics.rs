//! Prometheus metrics of one heft service, served in the text format on
//! `/metrics` of the metrics address.
//!
//! Each service has its own registry (two services in one process, as the
//! `heft` launcher runs them, report apart). The RPC series are recorded by
//! the RPC layer on every call: a map lookup and a few atomic adds. Gauges
//! that describe shared state (the purge queue, the database pool) are read
//! when scraped, so every replica reports what the database says.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use futures::future::BoxFuture;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use prost::Message;
use tokio::net::TcpListener;

/// The label of calls to a path this service does not serve, so that random
/// paths cannot grow the number of series.
const UNKNOWN_METHOD: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: Arc<str>,
    code: &'static str,
    /// The credential's name (never a token): one series per configured
    /// caller, plus the fixed names of `Caller::name`.
    caller: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

fn duration_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    /// Shared label values: recording a call allocates nothing.
    known_methods: HashSet<Arc<str>>,
    unknown_method: Arc<str>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pool_connections: Family<StateLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of a service that serves `service_name` (plus health and
    /// reflection, whose methods are labelled too).
    pub fn new(service_name: &str) -> Self {
        let mut registry = Registry::default();
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "heft_rpc_requests",
            "RPCs finished, by method, status code and caller",
            rpc_requests.clone(),
        );
        let rpc_duration =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "heft_rpc_duration_seconds",
            "RPC duration from request to response headers, by method",
            rpc_duration.clone(),
        );
        let pool_connections = Family::<StateLabels, Gauge>::default();
        registry.register(
            "heft_db_pool_connections",
            "database pool connections, idle or in use",
            pool_connections.clone(),
        );
        Self {
            registry,
            known_methods: methods_of(&[
                service_name,
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]),
            unknown_method: Arc::from(UNKNOWN_METHOD),
            rpc_requests,
            rpc_duration,
            pool_connections,
        }
    }

    /// For a service's own series, registered before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Records one finished call.
    pub fn record_rpc(&self, path: &str, caller: Arc<str>, code: tonic::Code, elapsed: Duration) {
        let method = path.strip_prefix('/').unwrap_or(path);
        let method = self
            .known_methods
            .get(method)
            .unwrap_or(&self.unknown_method);
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method: method.clone(),
                code: crate::peer::code_name(code),
                caller,
            })
            .inc();
        self.rpc_duration
            .get_or_create(&MethodLabels {
                method: method.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_pool_connections(&self, size: u32, idle: usize) {
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        self.pool_connections
            .get_or_create(&StateLabels { state: "idle" })
            .set(idle);
        self.pool_connections
            .get_or_create(&StateLabels { state: "in_use" })
            .set(i64::from(size) - idle);
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "cannot encode metrics");
        }
        text
    }
}

/// A gauge holding an `f64` (an age in seconds).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// Every `package.Service/Method` of the named services, from the descriptor
/// sets heft serves by reflection.
fn methods_of(services: &[&str]) -> HashSet<Arc<str>> {
    let sets = [
        heft_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashSet::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = format!("{package}.{}", service.name.unwrap_or_default());
                if services.contains(&name.as_str()) {
                    for method in service.method {
                        let method = format!("{name}/{}", method.name.unwrap_or_default());
                        methods.insert(Arc::from(method));
                    }
                }
            }
        }
    }
    methods
}

/// Reads the gauges that come from shared state, just before a scrape.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// `refresh`, run at most once per `interval` however many scrapes arrive:
/// a scrape within the interval of the last refresh (or waiting for one in
/// progress) serves the figures as they are. Series read from the database
/// so cost it at most one query per interval.
pub fn at_most_every(interval: Duration, refresh: Refresh) -> Refresh {
    let last: Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>> = Arc::default();
    Arc::new(move || {
        let (last, refresh) = (last.clone(), refresh.clone());
        Box::pin(async move {
            let mut last = last.lock().await;
            if last.is_some_and(|at| at.elapsed() < interval) {
                return;
            }
            refresh().await;
            *last = Some(tokio::time::Instant::now());
        })
    })
}

/// Binds the metrics address; an empty one turns metrics off.
pub async fn bind(address: &str) -> anyhow::Result<Option<TcpListener>> {
    if address.trim().is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(address.trim())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {address}: {e}"))?;
    Ok(Some(listener))
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let refresh = refresh.clone();
            async move {
                refresh().await;
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    // Unauthenticated and often on a wider network than the API: a few
    // connections at once, each with a deadline for its headers and for
    // its whole life, so that slow or idle clients cannot pile up.
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "metrics: accept failed");
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the limit: closed at once rather than queued.
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, connection).await;
        });
    }
}

/// Scrapes served at once; more connections are closed on arrival.
const MAX_METRICS_CONNECTIONS: usize = 8;
/// A scraper must send its request headers within this.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No metrics connection lives longer than this.
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_scrapes_share_one_refresh_per_interval() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted: Refresh = {
            let runs = runs.clone();
            Arc::new(move || {
                let runs = runs.clone();
                Box::pin(async move {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // A query takes a while: the other scrapes arrive meanwhile.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                })
            })
        };
        let refresh = at_most_every(Duration::from_millis(300), counted);
        futures::future::join_all((0..20).map(|_| refresh())).await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        futures::future::join_all((0..20).map(|_| refresh())).await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn rpc_series_are_labelled_by_known_method_and_code() {
        let metrics = Metrics::new("heft.users.v1.UserService");
        metrics.record_rpc(
            "/heft.users.v1.UserService/GetUser",
            Arc::from("warehouse-sync"),
            tonic::Code::NotFound,
            Duration::from_millis(2),
        );
        metrics.record_rpc(
            "/made.up.Service/Anything",
            Arc::from("refused"),
            tonic::Code::Unimplemented,
            Duration::from_millis(1),
        );
        metrics.set_pool_connections(5, 3);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"heft_rpc_requests_total{method="heft.users.v1.UserService/GetUser",code="NOT_FOUND",caller="warehouse-sync"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"heft_rpc_requests_total{method="unknown",code="UNIMPLEMENTED",caller="refused"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"heft_rpc_duration_seconds_count{method="heft.users.v1.UserService/GetUser"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"heft_db_pool_connections{state="in_use"} 2"#),
            "{text}"
        );
        assert!(!text.contains("made.up"), "{text}");
    }
}
