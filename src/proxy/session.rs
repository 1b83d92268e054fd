//! One client connection: forwards its requests to one DC1 broker and the responses
//! back, in order, rewriting the few responses that name brokers and feeding Produce
//! traffic to the tee.
//!
//! Two halves run together. The request half reads a frame, records what the response
//! will need in the in-flight FIFO (a bounded channel, so a client that pipelines more
//! than `max_in_flight` requests is paused, not buffered), and forwards the frame. The
//! response half takes the FIFO head, reads the matching response, checks its
//! correlation id, processes it and writes it to the client. A Produce with acks=0 is
//! sent as acks=1 and its response is consumed by the proxy (see `plan_response`), so
//! every request forwarded has exactly one response.
//!
//! This file only wires the halves: `plan` decides per request, `request` and
//! `response` are the two halves, `context` holds what they share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use crate::net::splice::TcpHalf;
use crate::protocol::FrameCodec;
use crate::proxy::Upstream;

pub use super::context::{Conn, Io, SessionContext, SessionError};
use super::request::forward_requests;
use super::response::forward_responses;

/// Serves one client connection until either side closes or shutdown.
pub async fn run(client: Conn, peer: SocketAddr, upstream: Upstream, ctx: Arc<SessionContext>) {
    let result = serve(client, &upstream, &ctx).await;
    if let Err(SessionError::Connect(_)) = &result {
        metrics::counter!("kafka_tee_dc1_connect_failures_total").increment(1);
    }
    match result {
        Ok(()) => tracing::debug!(%peer, "session closed"),
        Err(e) if e.is_routine() => tracing::debug!(%peer, "session closed: {e}"),
        Err(e) => tracing::warn!(%peer, ?upstream, "session closed: {e}"),
    }
}

async fn serve(
    client: Conn,
    upstream: &Upstream,
    ctx: &Arc<SessionContext>,
) -> Result<(), SessionError> {
    let (up, addr) = connect(upstream, ctx).await?;
    match (client, up) {
        (Conn::Plain(c), Conn::Plain(u)) => {
            let (cr, cw) = c.into_split();
            let (ur, uw) = u.into_split();
            let min = ctx.config.proxy.splice_min_bytes;
            pump((cr, cw), (ur, uw), (min > 0).then_some(min), ctx, &addr).await
        }
        (c, u) => {
            let client = tokio::io::split(c.into_io());
            let upstream = tokio::io::split(u.into_io());
            pump(client, upstream, None, ctx, &addr).await
        }
    }
}

/// Runs both directions of a session. With `splice_min`, frames of that size the proxy
/// need not read move between the sockets with splice(2).
async fn pump<CR, CW, UR, UW>(
    (cr, cw): (CR, CW),
    (ur, uw): (UR, UW),
    splice_min: Option<usize>,
    ctx: &Arc<SessionContext>,
    addr: &str,
) -> Result<(), SessionError>
where
    CR: AsyncRead + TcpHalf + Unpin,
    CW: AsyncWrite + TcpHalf + Unpin,
    UR: AsyncRead + TcpHalf + Unpin,
    UW: AsyncWrite + TcpHalf + Unpin,
{
    let (tx, rx) = mpsc::channel(ctx.config.proxy.max_in_flight);
    let responses_codec = FrameCodec {
        max: ctx.config.proxy.max_frame_bytes,
        head_min: splice_min,
    };
    // With the tee on, large requests are Produce requests the tee reads: offered for
    // splicing with a copy (`proxy.tee_splice`), or read straight into one buffer.
    let requests_codec = FrameCodec {
        head_min: splice_min.filter(|_| ctx.capture.is_none() || ctx.config.proxy.tee_splice),
        ..responses_codec
    };
    let (cr, ur) = (
        FramedRead::with_capacity(cr, requests_codec, READ_BUFFER),
        FramedRead::with_capacity(ur, responses_codec, READ_BUFFER),
    );
    let (cw, uw) = (
        BufWriter::with_capacity(WRITE_BUFFER, cw),
        BufWriter::with_capacity(WRITE_BUFFER, uw),
    );
    let requests = forward_requests(cr, uw, tx, ctx, addr);
    let responses = forward_responses(ur, cw, rx, ctx, addr);
    tokio::pin!(requests, responses);
    tokio::select! {
        // DC1's side failed: nothing more can be answered.
        r = &mut responses => r,
        // The client stopped sending (closed, failed, or shutdown). The answers DC1
        // still owes are read anyway, so the tee learns where DC1 put every batch it
        // appended (acks=0 requests included), even if nobody is left to answer.
        r = &mut requests => {
            let drain = Duration::from_millis(ctx.config.proxy.shutdown_grace_ms);
            let drained = match tokio::time::timeout(drain, &mut responses).await {
                Ok(d) => d,
                Err(_) => Err(SessionError::Upstream {
                    addr: addr.to_owned(),
                    message: format!("in-flight responses not received within {drain:?}"),
                }),
            };
            r.and(drained)
        }
    }
}

async fn connect(
    upstream: &Upstream,
    ctx: &SessionContext,
) -> Result<(Conn, String), SessionError> {
    let candidates = match upstream {
        Upstream::Bootstrap => ctx.config.source.bootstrap.clone(),
        Upstream::Broker(id) => match ctx.router.upstream_of(*id) {
            Some(a) => vec![a],
            None => {
                return Err(SessionError::Connect(format!(
                    "broker {} is not known",
                    id.0
                )));
            }
        },
    };
    let timeout = ctx.config.connect_timeout();
    let mut last = String::from("no address");
    for addr in candidates {
        match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                let Some(tls) = &ctx.upstream_tls else {
                    return Ok((Conn::Plain(s), addr));
                };
                let name = ctx
                    .config
                    .source
                    .tls
                    .server_name(&addr)
                    .map_err(|e| SessionError::Connect(e.to_string()))?;
                match tokio::time::timeout(timeout, tls.connect(name, s)).await {
                    Ok(Ok(s)) => return Ok((Conn::Other(Box::new(s)), addr)),
                    Ok(Err(e)) => last = format!("{addr}: TLS handshake failed: {e}"),
                    Err(_) => last = format!("{addr}: TLS handshake timed out after {timeout:?}"),
                }
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out after {timeout:?}"),
        }
    }
    Err(SessionError::Connect(last))
}

/// Size of the buffer each connection reads into, and of the one it writes through
/// (small frames coalesce; larger ones are written directly).
const READ_BUFFER: usize = 64 * 1024;
const WRITE_BUFFER: usize = 64 * 1024;
