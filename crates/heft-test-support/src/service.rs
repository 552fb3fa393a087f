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

/// A free port on loopback, released for a service to bind (one that must
/// be known before the service starts, as its peer's URL).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
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
