//! Listeners: the accept loop shared by the bootstrap port and the per-broker ports,
//! with optional TLS termination (the TLS and splice plumbing is `crate::net`'s).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Upstream;
use super::session::{self, Conn, SessionContext};
use crate::net::tls::ServerTls;
use crate::net::tls_failure::{self, Cause};

/// What every listener shares.
#[derive(Clone)]
pub struct Acceptor {
    pub session: Arc<SessionContext>,
    /// The connection limit, shared by every listener.
    pub permits: Arc<Semaphore>,
    pub tracker: TaskTracker,
    pub tls: Option<Arc<ServerTls>>,
    pub handshake_timeout: Duration,
}

impl Acceptor {
    /// Accepts clients until shutdown. One bad connection never stops the loop.
    pub async fn run(self, listener: TcpListener, upstream: Upstream) {
        let local = listener.local_addr().ok();
        // Names the listener in every connection's log span.
        let name = match (&upstream, local) {
            (Upstream::Bootstrap, Some(a)) => format!("bootstrap {a}"),
            (Upstream::Broker(id), Some(a)) => format!("broker {} {a}", id.0),
            (Upstream::Bootstrap, None) => "bootstrap".to_string(),
            (Upstream::Broker(id), None) => format!("broker {}", id.0),
        };
        loop {
            let accepted = tokio::select! {
                _ = self.session.shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE or a connection reset before accept: back off briefly.
                    tracing::warn!(?local, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection limit reached; refusing connection");
                self.session.stats.refused();
                continue;
            };
            let _ = stream.set_nodelay(true);
            let open = self.session.stats.accepted();
            let this = self.clone();
            let upstream = upstream.clone();
            let span = tracing::info_span!("conn", %peer, listener = %name);
            self.tracker.spawn(
                async move {
                    tracing::debug!("connection accepted");
                    this.serve(stream, peer, upstream).await;
                    drop(open);
                    drop(permit);
                }
                .instrument(span),
            );
        }
        tracing::debug!(?local, "listener stopped");
    }

    async fn serve(&self, stream: TcpStream, peer: std::net::SocketAddr, upstream: Upstream) {
        let ctx = self.session.clone();
        let Some(tls) = &self.tls else {
            return session::run(Conn::Plain(stream), peer, upstream, ctx).await;
        };
        match tokio::time::timeout(self.handshake_timeout, tls.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => {
                let upstream = if ctx.router.sni_routing() {
                    ctx.router
                        .upstream_for_sni(stream.get_ref().1.server_name())
                } else {
                    upstream
                };
                session::run(Conn::Other(Box::new(stream)), peer, upstream, ctx).await
            }
            Ok(Err(e)) => handshake_failed(Cause::of_io(&e), &e),
            Err(_) => handshake_failed(
                Cause::Timeout,
                &format_args!("after {:?}", self.handshake_timeout),
            ),
        }
    }
}

/// Counts a failed client handshake by cause and logs it in one line: what to do about
/// it, the TLS library's own words, and the cause's label. The connection's span
/// already names the peer and the listener. Repeats of a cause are logged at most once
/// per [`tls_failure::LOG_EVERY`].
fn handshake_failed(cause: Cause, detail: &dyn std::fmt::Display) {
    static LIMIT: std::sync::OnceLock<tls_failure::LogLimit> = std::sync::OnceLock::new();
    metrics::counter!("kafka_tee_tls_handshake_failures_total", "cause" => cause.label())
        .increment(1);
    let limit = LIMIT.get_or_init(Default::default);
    let Some(skipped) = limit.admit(cause, std::time::Instant::now()) else {
        return;
    };
    let (label, advice) = (cause.label(), cause.advice());
    let more = match skipped {
        0 => String::new(),
        n => format!("; {n} more since the last such line, not logged"),
    };
    // A client that hangs up mid-handshake is usually a TCP probe: not worth a warning.
    if cause == Cause::ClientClosed {
        tracing::debug!(
            cause = label,
            "TLS handshake failed: {advice} ({detail}){more}"
        );
    } else {
        tracing::warn!(
            cause = label,
            "TLS handshake failed: {advice} ({detail}){more}"
        );
    }
}
