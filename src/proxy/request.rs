//! The request half of a session: reads each client frame, plans its response
//! (`super::plan`), queues the plan in the in-flight FIFO and forwards the frame to
//! DC1. A large frame the proxy need not read has its body spliced between the
//! sockets (see `crate::net::splice`); one it must read is read whole. The codec hands
//! out a frame's head once `HEAD_BYTES` of a frame of at least `proxy.splice_min_bytes`
//! have arrived; the functions here finish that frame before the next is read.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::codec::FramedRead;

use super::context::{SessionContext, SessionError};
use super::plan::{Action, ResponsePlan, count_spliced, has_complete_frame, plan_response};
use crate::net::splice::{TcpHalf, both_tcp, forward_body};
use crate::net::tee::TeePipes;
use crate::protocol::produce::produce_acks;
use crate::protocol::{
    Frame, FrameCodec, peek_request_header, read_rest, write_frame, write_frame_head,
};

pub(super) async fn forward_requests<R, W>(
    mut frames: FramedRead<R, FrameCodec>,
    mut upstream: BufWriter<W>,
    fifo: mpsc::Sender<ResponsePlan>,
    ctx: &SessionContext,
    addr: &str,
) -> Result<(), SessionError>
where
    R: AsyncRead + TcpHalf + Unpin,
    W: AsyncWrite + TcpHalf + Unpin,
{
    let idle = Duration::from_millis(ctx.config.proxy.idle_timeout_ms);
    let stalled = Duration::from_millis(ctx.config.proxy.frame_read_timeout_ms);
    let up_err = |e: std::io::Error| SessionError::Upstream {
        addr: addr.to_owned(),
        message: format!("write failed: {e}"),
    };
    // Wake up every `tick` to check for a stalled partial frame (no new byte for a
    // whole tick) and for idleness; `frames.next()` is cancel-safe, so waking loses
    // nothing.
    let tick = stalled.min(idle);
    let mut last_frame = Instant::now();
    let mut partial_len: Option<usize> = None;
    loop {
        let item = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(tick, frames.next()) => match r {
                Err(_) => {
                    let buffered = frames.read_buffer().len();
                    if buffered > 0 {
                        if partial_len == Some(buffered) {
                            return Err(SessionError::Client(format!(
                                "request bytes stopped arriving mid-frame for {tick:?}, closing"
                            )));
                        }
                        partial_len = Some(buffered);
                    } else if last_frame.elapsed() >= idle && fifo.capacity() == fifo.max_capacity() {
                        return Err(SessionError::Client(format!("idle for {idle:?}, closing")));
                    }
                    continue;
                }
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(SessionError::ClientFrame(e)),
                Ok(Some(Ok(f))) => f,
            },
        };
        last_frame = Instant::now();
        partial_len = None;
        let frame = match item {
            Frame::Whole(frame) => frame,
            Frame::Head { size, head } => {
                let head = LargeRequest { size, head };
                match forward_head(&mut frames, &mut upstream, &fifo, head, ctx, addr).await? {
                    Forwarded::Spliced => continue,
                    Forwarded::Closing => return Ok(()),
                    Forwarded::Read(frame) => frame,
                }
            }
        };
        let Some(peek) = peek_request_header(&frame) else {
            return Err(SessionError::Client(format!(
                "request of {} bytes is shorter than a header",
                frame.len()
            )));
        };
        ctx.stats.request(&peek, frame.len());
        let (frame, inflight) = plan_response(frame, &peek, ctx)?;
        // Enqueued before the frame goes out, so the response half always finds it.
        if fifo.send(inflight).await.is_err() {
            return Ok(());
        }
        write_frame(&mut upstream, &frame).await.map_err(up_err)?;
        // Pipelined requests already read share one write; otherwise send now.
        if !has_complete_frame(frames.read_buffer()) {
            upstream.flush().await.map_err(up_err)?;
        }
    }
}

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
    ctx.stats.request(&peek, size);
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
pub(super) fn tees(head: &Bytes, ctx: &SessionContext) -> bool {
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
    ctx.stats.request(&peek, size);
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
/// request's body without reading it (see `plan_response`); `None` when it must read it.
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
