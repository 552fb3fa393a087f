//! The services as their binaries run them, in this process on ports of
//! their own: the one place a test starts a service.

use std::{future::Future, net::SocketAddr};

use clap::Parser;
use futures::future::BoxFuture;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::TestDatabase;

/// One of heft's two services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Users,
    Entries,
}

impl Service {
    /// Its subcommand of `heft` (`heft users`), and its binary's name after
    /// `heft-`.
    pub fn name(self) -> &'static str {
        match self {
            Service::Users => "users",
            Service::Entries => "entries",
        }
    }

    /// The flag that tells it where the other service listens.
    pub fn peer_url_flag(self) -> &'static str {
        match self {
            Service::Users => "--entries-url",
            Service::Entries => "--users-url",
        }
    }
}

/// `service` on `db`, configured by `flags` as its binary would be, on a
/// port of its own (and a metrics port of its own: tests run side by side).
pub async fn spawn(service: Service, db: &TestDatabase, flags: &[&str]) -> RunningService {
    spawn_on("127.0.0.1:0", service, &db.url, flags).await
}

/// Like [`spawn`], listening on `listen` (where another service or a client
/// already expects it), on the database at `database_url`.
pub async fn spawn_on(
    listen: &str,
    service: Service,
    database_url: &str,
    flags: &[impl AsRef<str>],
) -> RunningService {
    let binary = format!("heft-{}", service.name());
    let args = [
        binary.as_str(),
        "--database-url",
        database_url,
        "--metrics-listen=127.0.0.1:0",
    ]
    .into_iter()
    .chain(flags.iter().map(AsRef::as_ref));
    match service {
        Service::Users => {
            let config = heft_users::Cli::try_parse_from(args).expect("flags").config;
            RunningService::start_on(listen, move |listener, shutdown| {
                heft_users::serve_with_listener(config, listener, shutdown)
            })
            .await
        }
        Service::Entries => {
            let config = heft_entries::Cli::try_parse_from(args)
                .expect("flags")
                .config;
            RunningService::start_on(listen, move |listener, shutdown| {
                heft_entries::serve_with_listener(config, listener, shutdown)
            })
            .await
        }
    }
}

/// Ports handed out by [`free_port`]: below Linux's ephemeral range
/// (32768 and up), where the kernel picks the local port of every outgoing
/// connection and of every `bind(0)`.
const TEST_PORTS: std::ops::Range<u16> = 10_000..32_000;

/// A free port on loopback, released for a service to bind (one that must
/// be known before the service starts, as its peer's URL). Tests stop a
/// service and start it again on the same ports: taken from below the
/// ephemeral range and never handed out twice by this process, a port
/// cannot be taken meanwhile by a connection to PostgreSQL or by another
/// test's service.
pub fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    // Each test process starts at a place of its own in the range.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = TEST_PORTS.start + u16::try_from(offset).unwrap_or(0);
        if let Ok(address) = std::net::TcpListener::bind(("127.0.0.1", port))
            .and_then(|listener| listener.local_addr())
        {
            return address;
        }
    }
    panic!("no free port in {TEST_PORTS:?}")
}

/// A service running in this process on a port of its own, as its binary
/// would run it, until [`RunningService::stop`].
#[derive(Debug)]
pub struct RunningService {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningService {
    /// Binds `addr` and runs `serve(listener, shutdown)` on its own task.
    async fn start_on<F, Fut>(addr: &str, serve: F) -> Self
    where
        F: FnOnce(TcpListener, BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.expect("bind test listener");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: BoxFuture<'static, ()> = Box::pin(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(serve(listener, shutdown));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown; returns what the service returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.task.abort();
    }
}
