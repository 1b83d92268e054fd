//! Large frames in a session: those the proxy need not read have their body spliced
//! between the sockets (see `crate::net::splice`); the others are read whole.
//!
//! The codec hands out a frame's head once `HEAD_BYTES` of a frame of at least
//! `proxy.splice_min_bytes` have arrived; the functions here finish that frame before
//! the session reads the next one.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use super::rewrite;
use super::session::{
    Action, ResponsePlan, SessionContext, SessionError, count_request, plan_response,
};
use crate::net::splice::{Moved, TcpHalf, both_tcp, forward_body};
use crate::net::tee::TeePipes;
use crate::protocol::produce::produce_acks;
use crate::protocol::{
    FrameCodec, FrameError, peek_request_header, read_rest, skip_rest, write_frame_head,
};

/// The first bytes of a large request, the rest still in the socket.
pub(super) struct LargeRequest {
    pub size: usize,
    pub head: Bytes,
}

/// What became of a large request.
pub(super) enum Forwarded {
    /// Sent to DC1 without being read.
    Spliced,
    /// The response half is gone; the session is ending.
    Closing,
    /// Read whole, to be forwarded like any other request.
    Read(Bytes),
}

/// Forwards a large request whose body the proxy need not read by splicing it to DC1;
/// otherwise reads the rest of it.
pub(super) async fn forward_head<R, W>(
    frames: &mut FramedRead<R, FrameCodec>,
    upstream: &mut BufWriter<W>,
    fifo: &mpsc::Sender<ResponsePlan>,
    LargeRequest { size, head }: LargeRequest,
    ctx: &SessionContext,
    addr: &str,
) -> Result<Forwarded, SessionError>
where
    R: AsyncRead + TcpHalf + Unpin,
    W: AsyncWrite + TcpHalf + Unpin,
{
    let stall = Duration::from_millis(ctx.config.proxy.frame_read_timeout_ms);
    if tees(&head, ctx) && both_tcp(frames.get_ref(), upstream.get_ref()) {
        let request = LargeRequest { size, head };
        return tee_request(frames, upstream, fifo, request, ctx, addr).await;
    }
    let action =
        splice_action(&head, ctx).filter(|_| both_tcp(frames.get_ref(), upstream.get_ref()));
    let (Some(action), Some(peek)) = (action, peek_request_header(&head)) else {
        return read_whole(frames, size, head, stall).await;
    };
    let up_err = |e| write_failed(addr, e);
    count_request(&peek, size);
    let entry = ResponsePlan::new(&peek, action);
    if fifo.send(entry).await.is_err() {
        return Ok(Forwarded::Closing);
    }
    write_frame_head(upstream, size, &head)
        .await
        .map_err(up_err)?;
    upstream.flush().await.map_err(up_err)?;
    let rest = size - head.len();
    let moved = forward_body(frames.get_mut(), upstream.get_mut(), rest, stall)
        .await
        .map_err(|e| match e.sink_failure() {
            Ok((error, _)) => up_err(error),
            Err(frame_error) => SessionError::ClientFrame(frame_error),
        })?;
    count_spliced(moved, "request");
    Ok(Forwarded::Spliced)
}

/// Reads the rest of a large request, to be forwarded like any other.
async fn read_whole<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, FrameCodec>,
    size: usize,
    head: Bytes,
    stall: Duration,
) -> Result<Forwarded, SessionError> {
    let frame = read_rest(frames.get_mut(), size, head, stall).await;
    frame
        .map(Forwarded::Read)
        .map_err(SessionError::ClientFrame)
}

fn write_failed(addr: &str, e: std::io::Error) -> SessionError {
    SessionError::Upstream {
        addr: addr.to_owned(),
        message: format!("write failed: {e}"),
    }
}

/// Whether a large request is a Produce the tee must read that can still be spliced
/// to DC1 (see `crate::net::tee`): acks=0 requests are rewritten, so they are read.
fn tees(head: &Bytes, ctx: &SessionContext) -> bool {
    ctx.capture.is_some()
        && ctx.config.proxy.tee_splice
        && peek_request_header(head).and_then(|p| p.key()) == Some(ApiKey::Produce)
        && produce_acks(head).is_some_and(|acks| acks != 0)
}

/// A large Produce request with the tee on: its body goes to DC1 through a pipe while
/// the proxy reads a copy (one copy instead of two). The request is classified (parsed
/// for the tee) before its last bytes go out, so a request the tee refuses never
/// reaches DC1 whole: the session ends and DC1 sees a cut frame.
async fn tee_request<R, W>(
    frames: &mut FramedRead<R, FrameCodec>,
    upstream: &mut BufWriter<W>,
    fifo: &mpsc::Sender<ResponsePlan>,
    LargeRequest { size, head }: LargeRequest,
    ctx: &SessionContext,
    addr: &str,
) -> Result<Forwarded, SessionError>
where
    R: AsyncRead + TcpHalf + Unpin,
    W: AsyncWrite + TcpHalf + Unpin,
{
    let stall = Duration::from_millis(ctx.config.proxy.frame_read_timeout_ms);
    let Some(mut pipes) = TeePipes::take() else {
        return read_whole(frames, size, head, stall).await;
    };
    let up_err = |e| write_failed(addr, e);
    write_frame_head(upstream, size, &head)
        .await
        .map_err(up_err)?;
    upstream.flush().await.map_err(up_err)?;
    let (Some(from), Some(to)) = (frames.get_ref().tcp(), upstream.get_ref().tcp()) else {
        return Err(SessionError::Client("splice: socket lost".into()));
    };
    let mut body = BytesMut::with_capacity(size);
    body.extend_from_slice(&head);
    pipes
        .copy_through(from, to, size - head.len(), &mut body, stall)
        .await
        .map_err(|e| match e.sink_failure() {
            Ok((error, _)) => up_err(error),
            Err(frame_error) => SessionError::ClientFrame(frame_error),
        })?;
    let frame = body.freeze();
    let Some(peek) = peek_request_header(&frame) else {
        return Err(SessionError::Client(
            "Produce request without a header".into(),
        ));
    };
    count_request(&peek, size);
    // The frame classify returns is the one read (acks=0, the only rewrite, is not
    // teed); what DC1 gets is what the pipe holds.
    let (_, entry) = plan_response(frame, &peek, ctx)?;
    if fifo.send(entry).await.is_err() {
        return Ok(Forwarded::Closing);
    }
    pipes.release(to).await.map_err(up_err)?;
    metrics::counter!("kafka_tee_spliced_bytes_total", "direction" => "request")
        .increment((size - head.len()) as u64);
    Ok(Forwarded::Spliced)
}

/// What the response to a large request will need when the proxy can forward the
/// request's body without reading it (see `classify`); `None` when it must read it.
fn splice_action(head: &Bytes, ctx: &SessionContext) -> Option<Action> {
    match peek_request_header(head)?.key() {
        // acks=0 must be rewritten, and the tee reads the batches.
        Some(ApiKey::Produce) if ctx.capture.is_none() => match produce_acks(head)? {
            0 => None,
            _ => Some(Action::Produce(None)),
        },
        Some(ApiKey::Produce | ApiKey::EndTxn) => None,
        _ => Some(Action::Forward),
    }
}

/// Writes a large response that passes untouched, its body spliced from DC1 to the
/// client. A client that went away is returned as its error; the rest of the response
/// is then read and dropped, so the answers after it are read in step.
pub(super) async fn splice_response<R, W>(
    frames: &mut FramedRead<R, FrameCodec>,
    client: &mut BufWriter<W>,
    size: usize,
    head: Bytes,
    stall: Duration,
) -> Result<Option<std::io::Error>, FrameError>
where
    R: AsyncRead + TcpHalf + Unpin,
    W: AsyncWrite + TcpHalf + Unpin,
{
    let rest = size - head.len();
    let sent = match write_frame_head(client, size, &head).await {
        Ok(()) => client.flush().await,
        Err(e) => Err(e),
    };
    let (error, unread) = match sent {
        Err(e) => (e, rest),
        Ok(()) => match forward_body(frames.get_mut(), client.get_mut(), rest, stall).await {
            Ok(moved) => {
                count_spliced(moved, "response");
                return Ok(None);
            }
            Err(e) => e.sink_failure()?,
        },
    };
    skip_rest(frames.get_mut(), unread, stall).await?;
    Ok(Some(error))
}

/// Counts bytes that [`forward_body`] spliced.
fn count_spliced(moved: Moved, direction: &'static str) {
    if let Moved::Spliced(n) = moved {
        metrics::counter!("kafka_tee_spliced_bytes_total", "direction" => direction)
            .increment(n as u64);
    }
}

/// Whether a response goes to the client exactly as DC1 sent it, so its body need
/// not be read (see `process_response`).
pub(super) fn passes_untouched(entry: &ResponsePlan) -> bool {
    !entry.swallow
        && matches!(entry.action, Action::Forward)
        && entry
            .key
            .is_none_or(|k| !rewrite::needs_rewrite(k, entry.version))
}
