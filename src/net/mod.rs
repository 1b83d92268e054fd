//! Listeners: the accept loop shared by the bootstrap port and the per-broker ports.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::proxy::Upstream;
use crate::proxy::session::{self, SessionContext};

/// Accepts clients until shutdown. One bad connection never stops the loop; the
/// connection limit is shared by every listener through `permits`.
pub async fn accept_loop(
    listener: TcpListener,
    upstream: Upstream,
    ctx: Arc<SessionContext>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Usually EMFILE or a connection reset before accept: back off briefly.
                tracing::warn!(?local, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing connection");
            metrics::counter!("kafka_tee_connections_refused_total").increment(1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics::counter!("kafka_tee_connections_accepted_total").increment(1);
        let ctx = ctx.clone();
        let upstream = upstream.clone();
        tracker.spawn(async move {
            let open = metrics::gauge!("kafka_tee_connections_open");
            open.increment(1.0);
            session::run(stream, peer, upstream, ctx).await;
            open.decrement(1.0);
            drop(permit);
        });
    }
    tracing::debug!(?local, "listener stopped");
}
