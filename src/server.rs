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
use crate::net::tls::{ServerTls, ServerTlsFiles};
use crate::proxy::listener::Acceptor;
use crate::proxy::session::SessionContext;
use crate::proxy::{Router, Upstream};
use crate::tee::Budget;
use crate::tee::TopicFilter;
use crate::tee::capture::Capture;

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
    let (new_listeners, mut listeners_rx) = tokio::sync::mpsc::unbounded_channel();
    let router = match &config.tls.sni_domain {
        Some(domain) => Router::with_sni(local.ip(), domain.clone(), local.port()),
        None => Router::new(
            local.ip(),
            advertised,
            first_port,
            config.proxy.broker_ports.clone(),
        ),
    }
    .with_listeners(new_listeners);
    let grace = Duration::from_millis(config.proxy.shutdown_grace_ms);
    // Installed before anything records: a restart's catch-up starts within
    // milliseconds, and what it counts before the recorder exists is lost.
    let admin_metrics = config
        .admin
        .listen
        .as_deref()
        .map(|l| (l, crate::metrics::install()));

    let tee = if config.replication_enabled() {
        Some(Tee::start(&config).await?)
    } else {
        None
    };
    let proxy_stats = Arc::new(crate::proxy::stats::ProxyStats::default());
    let ctx = Arc::new(SessionContext {
        config: config.clone(),
        router: router.clone(),
        stats: proxy_stats.clone(),
        capture: tee.as_ref().map(|t| t.capture.clone()),
        shutdown: shutdown.clone(),
        upstream_tls: config.source.tls.connector()?,
        sync_timeout: Duration::from_millis(config.replication.request_timeout_ms),
    });
    let status = crate::status::Status::new(
        &config,
        local,
        router.clone(),
        proxy_stats,
        tee.as_ref().map(|t| crate::status::TeeSources {
            budget: t.budget.clone(),
            capture: t.capture.clone(),
            replication: Arc::new(t.replicator.handle()),
        }),
    );
    let tracker = TaskTracker::new();
    let tls = server_tls(&config, &shutdown, &tracker)?;
    let acceptor = Acceptor {
        session: ctx,
        permits: Arc::new(Semaphore::new(config.proxy.max_connections)),
        tracker: tracker.clone(),
        tls,
        handshake_timeout: Duration::from_millis(config.tls.handshake_timeout_ms),
    };
    {
        // Broker listeners the router binds as brokers appear in metadata.
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            loop {
                let (id, std_listener) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = listeners_rx.recv() => match next {
                        Some(x) => x,
                        None => return,
                    },
                };
                let listener = std_listener
                    .set_nonblocking(true)
                    .and_then(|_| TcpListener::from_std(std_listener));
                match listener {
                    Ok(l) => {
                        acceptor
                            .tracker
                            .spawn(acceptor.clone().run(l, Upstream::Broker(id)));
                    }
                    Err(e) => tracing::error!(broker = id.0, "cannot start broker listener: {e}"),
                }
            }
        });
    }
    let admin = match admin_metrics {
        Some((listen, metrics)) => Some(start_admin(listen, &status, metrics).await?),
        None => None,
    };
    tracing::info!(%local, source = ?config.source.bootstrap, target = ?config.target.bootstrap, "kafka-tee listening");
    tracker.spawn(acceptor.run(listener, Upstream::Bootstrap));
    status.set_listening(true);

    shutdown.cancelled().await;
    status.set_shutting_down();
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
    if let Some(admin) = admin {
        admin.stop().await;
    }
    tracing::info!("kafka-tee stopped");
    Ok(())
}

/// Binds and starts the admin endpoint on `admin.listen`. It answers from here
/// until the very end of `run`, so `/readyz` reports the shutdown while it runs.
async fn start_admin(
    listen: &str,
    status: &Arc<crate::status::Status>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<crate::admin::Admin> {
    let addr = parse_addr(listen).map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (admin.listen): {e}"))?;
    let state = Arc::new(crate::admin::AdminState {
        status: status.clone(),
        metrics,
    });
    Ok(crate::admin::Admin::start(listener, state)?)
}

/// Loads the client-facing TLS configuration and starts watching its files.
fn server_tls(
    config: &Config,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Option<Arc<ServerTls>>> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    let tls = ServerTls::load(ServerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: config.tls.client_ca.clone(),
    })?;
    let (watched, shutdown) = (tls.clone(), shutdown.clone());
    let every = Duration::from_millis(config.tls.reload_interval_ms.max(100));
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match watched.reload_if_changed() {
                Ok(true) => tracing::info!("TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!("TLS reload failed, keeping the previous certificate: {e}")
                }
            }
        }
    });
    Ok(Some(tls))
}

/// The replicator plus the capture that feeds it.
struct Tee {
    capture: Arc<Capture>,
    budget: Arc<Budget>,
    replicator: crate::tee::replicator::Replicator,
    expiry: tokio::task::JoinHandle<()>,
}

impl Tee {
    async fn start(config: &Config) -> anyhow::Result<Self> {
        let budget = Arc::new(Budget::new(config.replication.max_pending_bytes));
        let replicator = crate::tee::replicator::start(config).await?;
        let sync = &config.replication.sync_topics;
        let sync_topics = (!sync.is_empty())
            .then(|| TopicFilter::new(sync, &[]))
            .transpose()?;
        let capture = Capture::with_sync_topics(
            Arc::new(replicator.handle()),
            budget.clone(),
            Duration::from_secs(15 * 60),
            sync_topics,
        );
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
            budget,
            replicator,
            expiry,
        })
    }

    async fn shutdown(self, grace: Duration) {
        self.expiry.abort();
        self.replicator.shutdown(grace).await;
    }
}
