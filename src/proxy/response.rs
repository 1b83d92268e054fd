//! The response half of a session: takes the in-flight FIFO's head, reads the
//! matching DC1 response (spliced to the client when it passes untouched), checks its
//! correlation id, applies the rewrites and the tee's bookkeeping, and writes it to
//! the client.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{EndTxnResponse, ProduceResponse};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::codec::FramedRead;

use super::context::{SessionContext, SessionError};
use super::plan::{Action, ResponsePlan, count_spliced, has_complete_frame, passes_untouched};
use super::stats::api_name;
use crate::net::splice::{TcpHalf, both_tcp, forward_body};
use crate::protocol::header::{DecodeError, guarded_decode, split_response};
use crate::protocol::{
    Frame, FrameCodec, FrameError, peek_response_correlation_id, read_rest, skip_rest, write_frame,
    write_frame_head,
};
use crate::proxy::rewrite::{self, AddressMap};

pub(super) async fn forward_responses<R, W>(
    mut frames: FramedRead<R, FrameCodec>,
    mut client: BufWriter<W>,
    mut fifo: mpsc::Receiver<ResponsePlan>,
    ctx: &SessionContext,
    addr: &str,
) -> Result<(), SessionError>
where
    R: AsyncRead + TcpHalf + Unpin,
    W: AsyncWrite + TcpHalf + Unpin,
{
    let dc1 = |message: String| SessionError::Upstream {
        addr: addr.to_owned(),
        message,
    };
    let frame_err = |source| SessionError::UpstreamFrame {
        addr: addr.to_owned(),
        source,
    };
    let stall = Duration::from_millis(ctx.config.proxy.frame_read_timeout_ms);
    let mut client_gone: Option<SessionError> = None;
    while let Some(entry) = fifo.recv().await {
        let item = match frames.next().await {
            Some(r) => r.map_err(frame_err)?,
            None => return Err(frame_err(FrameError::Closed)),
        };
        let start = match &item {
            Frame::Whole(frame) => frame,
            Frame::Head { head, .. } => head,
        };
        match peek_response_correlation_id(start) {
            Some(id) if id == entry.correlation_id => {}
            other => {
                return Err(dc1(format!(
                    "response correlation id {other:?} does not match the oldest request's {}",
                    entry.correlation_id
                )));
            }
        }
        let (key, swallow, started) = (entry.key, entry.swallow, entry.started);
        let frame = match item {
            Frame::Whole(frame) => frame,
            // A large response nobody rewrites (a Fetch, typically) is spliced to the
            // client; it never waits for later responses, so it is written at once.
            Frame::Head { size, head }
                if client_gone.is_none()
                    && passes_untouched(&entry)
                    && both_tcp(frames.get_ref(), client.get_ref()) =>
            {
                metrics::counter!("kafka_tee_client_bytes_out_total").increment(size as u64 + 4);
                let gone = splice_response(&mut frames, &mut client, size, head, stall)
                    .await
                    .map_err(frame_err)?;
                // Its last byte has been read from DC1 (and passed on): the response is
                // complete, as a response read whole is when it has been read.
                metrics::histogram!("kafka_tee_request_duration_seconds", "api" => api_name(key))
                    .record(started.elapsed().as_secs_f64());
                if let Some(e) = gone {
                    client_gone = Some(SessionError::ClientIo(e));
                }
                continue;
            }
            Frame::Head { size, head } => read_rest(frames.get_mut(), size, head, stall)
                .await
                .map_err(frame_err)?,
        };
        let frame = process_response(frame, entry, ctx)
            .await
            .map_err(|e| dc1(e.to_string()))?;
        metrics::histogram!("kafka_tee_request_duration_seconds", "api" => api_name(key))
            .record(started.elapsed().as_secs_f64());
        if swallow {
            continue;
        }
        if client_gone.is_some() {
            continue;
        }
        metrics::counter!("kafka_tee_client_bytes_out_total").increment(frame.len() as u64 + 4);
        // Responses already read share one write; a response is never held back
        // waiting for a later one (a long-polling Fetch may follow it).
        let more = has_complete_frame(frames.read_buffer());
        let written = match write_frame(&mut client, &frame).await {
            Ok(()) if !more => client.flush().await,
            other => other,
        };
        // A client that went away still has its in-flight answers read (for the tee).
        if let Err(e) = written {
            client_gone = Some(SessionError::ClientIo(e));
        }
    }
    if let Some(e) = client_gone {
        return Err(e);
    }
    client.flush().await.map_err(SessionError::ClientIo)
}

/// Applies the rewrites and the tee's bookkeeping to one response frame.
pub(super) async fn process_response(
    frame: Bytes,
    entry: ResponsePlan,
    ctx: &SessionContext,
) -> Result<Bytes, DecodeError> {
    let Some(key) = entry.key else {
        return Ok(frame);
    };
    let map: &dyn AddressMap = ctx.router.as_ref();
    let version = entry.version;
    match entry.action {
        Action::Forward => rewrite::rewrite_response(map, key, version, frame),
        Action::EndTxn {
            producer_id,
            committed,
        } => {
            let resp: EndTxnResponse =
                rewrite::decode_response(key, version, &frame, "EndTxn response")?;
            if resp.error_code == 0
                && let Some(capture) = &ctx.capture
            {
                capture.on_end_txn(producer_id, committed);
            }
            Ok(frame)
        }
        Action::Produce(None) => rewrite::rewrite_response(map, key, version, frame),
        Action::Produce(Some(ticket)) => {
            let (header, mut body) = split_response(key, version, &frame)?;
            let mut resp: ProduceResponse = guarded_decode(&mut body, version, "Produce response")?;
            let waits = ticket.complete(&resp);
            let unconfirmed = match &ctx.capture {
                Some(capture) => {
                    if !waits.starts.is_empty() {
                        capture.wait_starts_durable(waits.starts).await;
                    }
                    if waits.dc2.is_empty() {
                        Vec::new()
                    } else {
                        capture.wait_for_dc2(waits.dc2, ctx.sync_timeout).await
                    }
                }
                None => Vec::new(),
            };
            if resp.node_endpoints.is_empty() && unconfirmed.is_empty() {
                return Ok(frame);
            }
            mark_unconfirmed(&mut resp, version, &unconfirmed);
            rewrite::rewrite_produce(map, &mut resp);
            rewrite::encode(
                &header,
                key.response_header_version(version),
                &resp,
                version,
                "Produce response",
            )
        }
    }
}

/// Synchronous topics: a partition DC2 did not confirm in time is answered with
/// REQUEST_TIMED_OUT, so the producer retries rather than believing both clusters
/// hold it. (DC1 may then hold the batch twice unless the producer is idempotent.)
fn mark_unconfirmed(
    resp: &mut ProduceResponse,
    version: i16,
    unconfirmed: &[crate::tee::TopicPartition],
) {
    const REQUEST_TIMED_OUT: i16 = 7;
    for tp in unconfirmed {
        tracing::warn!(partition = %tp, "DC2 did not confirm a synchronous batch in time");
        metrics::counter!("kafka_tee_sync_timeouts_total").increment(1);
        let parts = resp
            .responses
            .iter_mut()
            .filter(|t| t.name.0.as_str() == &*tp.topic)
            .flat_map(|t| t.partition_responses.iter_mut())
            .filter(|p| p.index == tp.partition);
        for p in parts {
            p.error_code = REQUEST_TIMED_OUT;
            if version >= 8 {
                p.error_message = Some("kafka-tee: DC2 did not confirm the batch in time".into());
            }
        }
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
