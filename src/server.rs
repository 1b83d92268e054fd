//! Wires the parts together: listeners, router, tee, and the shutdown protocol.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, parse_addr};
use crate::net::accept_loop;
use crate::proxy::session::SessionContext;
use crate::proxy::{Router, Upstream};
use crate::tee::TopicFilter;
use crate::tee::capture::{Capture, Sink};
use crate::tee::{Budget, Pending, TopicPartition};

/// Runs until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn run_until_signal(config: Config) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    let listen = parse_addr(&config.proxy.listen).map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    run(config, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the proxy on an already bound bootstrap listener until `shutdown` fires, then
/// stops accepting, lets in-flight requests finish and flushes the replicator, all
/// within the configured grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let local: SocketAddr = listener.local_addr()?;
    let advertised = config
        .proxy
        .advertised_host
        .clone()
        .unwrap_or_else(|| local.ip().to_string());
    let first_port = config
        .proxy
        .first_broker_port
        .unwrap_or_else(|| local.port().saturating_add(1));
    let router = Router::new(
        local.ip(),
        advertised,
        first_port,
        config.proxy.broker_ports.clone(),
    );
    let grace = Duration::from_millis(config.proxy.shutdown_grace_ms);

    let tee = if config.replication_enabled() {
        Some(Tee::start(&config).await?)
    } else {
        None
    };
    let ctx = Arc::new(SessionContext {
        config: config.clone(),
        router: router.clone(),
        capture: tee.as_ref().map(|t| t.capture.clone()),
        shutdown: shutdown.clone(),
    });
    let permits = Arc::new(Semaphore::new(config.proxy.max_connections));
    let tracker = TaskTracker::new();
    {
        let (ctx, permits, tracker2) = (ctx.clone(), permits.clone(), tracker.clone());
        let handle = tokio::runtime::Handle::current();
        router.set_spawner(Box::new(move |id, std_listener| {
            let _guard = handle.enter();
            let listener = std_listener
                .set_nonblocking(true)
                .and_then(|_| TcpListener::from_std(std_listener));
            match listener {
                Ok(l) => {
                    tracker2.spawn(accept_loop(
                        l,
                        Upstream::Broker(id),
                        ctx.clone(),
                        permits.clone(),
                        tracker2.clone(),
                    ));
                }
                Err(e) => tracing::error!(broker = id.0, "cannot start broker listener: {e}"),
            }
        }));
    }
    tracing::info!(%local, source = ?config.source.bootstrap, target = ?config.target.bootstrap, "kafka-tee listening");
    tracker.spawn(accept_loop(
        listener,
        Upstream::Bootstrap,
        ctx,
        permits,
        tracker.clone(),
    ));

    shutdown.cancelled().await;
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
    if let Some(tee) = tee {
        tee.shutdown(grace).await;
    }
    tracing::info!("kafka-tee stopped");
    Ok(())
}

/// The replicator plus the capture that feeds it.
struct Tee {
    capture: Arc<Capture>,
    replicator: crate::tee::replicator::Replicator,
    expiry: tokio::task::JoinHandle<()>,
}

struct ReplicatorSink {
    handle: crate::tee::replicator::ReplicatorHandle,
    filter: TopicFilter,
}

impl Sink for ReplicatorSink {
    fn push(&self, tp: TopicPartition, item: Pending) {
        self.handle.push(tp, item);
    }
    fn wants(&self, topic: &str) -> bool {
        self.filter.wants(topic)
    }
}

impl Tee {
    async fn start(config: &Config) -> anyhow::Result<Self> {
        let budget = Arc::new(Budget::new(config.replication.max_pending_bytes));
        let replicator = crate::tee::replicator::start(config, budget.clone()).await?;
        let filter = TopicFilter::new(&config.replication.include, &config.replication.exclude)?;
        let sink = Arc::new(ReplicatorSink {
            handle: replicator.handle(),
            filter,
        });
        let capture = Capture::new(sink, budget, Duration::from_secs(15 * 60));
        let expiring = capture.clone();
        let expiry = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                expiring.expire_transactions();
            }
        });
        Ok(Self {
            capture,
            replicator,
            expiry,
        })
    }

    async fn shutdown(self, grace: Duration) {
        self.expiry.abort();
        self.replicator.shutdown(grace).await;
    }
}
