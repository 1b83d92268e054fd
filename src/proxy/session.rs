//! One client connection: forwards its requests to one DC1 broker and the responses
//! back, in order, rewriting the few responses that name brokers and feeding Produce
//! traffic to the tee.
//!
//! Two halves run together. The request half reads a frame, records what the response
//! will need in the in-flight FIFO (a bounded channel, so a client that pipelines more
//! than `max_in_flight` requests is paused, not buffered), and forwards the frame. The
//! response half takes the FIFO head, reads the matching response, checks its
//! correlation id, processes it and writes it to the client. A Produce with acks=0 is
//! sent as acks=1 and its response is consumed by the proxy (see `classify`), so every
//! request forwarded has exactly one response. The codec hands out only the head of
//! a large frame; `super::large` finishes it (spliced, or read whole).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, EndTxnRequest, EndTxnResponse, ProduceResponse};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::large::{Forwarded, LargeRequest, forward_head, passes_untouched, splice_response};
use crate::config::Config;
use crate::net::splice::{TcpHalf, both_tcp};
use crate::protocol::header::{DecodeError, guarded_decode, split_request, split_response};
use crate::protocol::produce::{parse_produce_request, with_acks};
use crate::protocol::{
    Frame, FrameCodec, FrameError, RequestHeaderPeek, peek_request_header,
    peek_response_correlation_id, read_rest, write_frame,
};
use crate::proxy::rewrite::{self, AddressMap};
use crate::proxy::{Router, Upstream};
use crate::tee::capture::{Capture, Ticket};

/// What every session shares.
pub struct SessionContext {
    pub config: Arc<Config>,
    pub router: Arc<Router>,
    /// Present when the tee is on.
    pub capture: Option<Arc<Capture>>,
    pub shutdown: CancellationToken,
    /// How long a synchronous topic's producer waits for DC2.
    pub sync_timeout: Duration,
    /// TLS towards DC1 brokers, when configured.
    pub upstream_tls: Option<tokio_rustls::TlsConnector>,
}

/// A byte stream of a connection, as trait object.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// One side of a session: plain TCP (whose large frames can be spliced to a plain
/// TCP peer) or anything else, such as TLS.
pub enum Conn {
    Plain(TcpStream),
    Other(Box<dyn Io>),
}

impl Conn {
    fn into_io(self) -> Box<dyn Io> {
        match self {
            Conn::Plain(s) => Box::new(s),
            Conn::Other(s) => s,
        }
    }
}

/// Why a session ended early, and which side was at fault.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client: {0}")]
    Client(String),
    /// The client's socket failed (reset, broken pipe, ...): routine or not by its kind.
    #[error("client: {0}")]
    ClientIo(#[source] std::io::Error),
    #[error("client frame: {0}")]
    ClientFrame(FrameError),
    #[error("DC1 broker {addr}: {message}")]
    Upstream { addr: String, message: String },
    #[error("DC1 broker {addr} frame: {source}")]
    UpstreamFrame { addr: String, source: FrameError },
    #[error("cannot connect to DC1 ({0})")]
    Connect(String),
}

impl SessionError {
    /// A peer closing its socket is routine, not an error worth a warning.
    pub fn is_routine(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
        let io_routine =
            |e: &std::io::Error| matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe);
        match self {
            SessionError::ClientFrame(FrameError::Closed) => true,
            SessionError::ClientFrame(FrameError::Io(e)) => io_routine(e),
            SessionError::UpstreamFrame {
                source: FrameError::Closed,
                ..
            } => true,
            SessionError::ClientIo(e) => io_routine(e),
            _ => false,
        }
    }
}

/// What the response half must do with the answer to one request.
pub(super) enum Action {
    Forward,
    Produce(Option<Ticket>),
    EndTxn { producer_id: i64, committed: bool },
}

pub(super) struct ResponsePlan {
    pub correlation_id: i32,
    pub key: Option<ApiKey>,
    pub version: i16,
    /// The client sent acks=0: the response is for the tee only.
    pub swallow: bool,
    pub action: Action,
    pub started: Instant,
}

impl ResponsePlan {
    /// The entry for a request just read, its response not yet seen.
    pub(super) fn new(peek: &RequestHeaderPeek, action: Action) -> Self {
        ResponsePlan {
            correlation_id: peek.correlation_id,
            key: peek.key(),
            version: peek.api_version,
            swallow: false,
            action,
            started: Instant::now(),
        }
    }
}

/// Counts a request read from a client, `size` bytes without its length prefix.
pub(super) fn count_request(peek: &RequestHeaderPeek, size: usize) {
    metrics::counter!("kafka_tee_requests_total", "api" => api_name(peek.key())).increment(1);
    metrics::counter!("kafka_tee_client_bytes_in_total").increment(size as u64 + 4);
}

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

async fn forward_requests<R, W>(
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
        count_request(&peek, frame.len());
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

/// Size of the buffer each connection reads into, and of the one it writes through
/// (small frames coalesce; larger ones are written directly).
const READ_BUFFER: usize = 64 * 1024;
const WRITE_BUFFER: usize = 64 * 1024;

/// Whether `buf` starts with a whole frame (so more data is ready without waiting).
fn has_complete_frame(buf: &[u8]) -> bool {
    match buf.get(..4) {
        Some(p) => {
            let size = i32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            size >= 0 && buf.len() >= 4 + size as usize
        }
        None => false,
    }
}

/// Decides what a request's response will need, and rewrites the request if the tee
/// must see a response the client did not ask for.
pub(super) fn plan_response(
    frame: Bytes,
    peek: &RequestHeaderPeek,
    ctx: &SessionContext,
) -> Result<(Bytes, ResponsePlan), SessionError> {
    let version = peek.api_version;
    let mut entry = ResponsePlan::new(peek, Action::Forward);
    match peek.key() {
        Some(ApiKey::Produce) => {
            let mut frame = frame;
            let view = match parse_produce_request(&frame) {
                Ok(v) => v,
                // Without the tee an unreadable request is the broker's to judge; with
                // it, forwarding would let DC1 keep data DC2 can never get.
                Err(e) if ctx.capture.is_some() => {
                    return Err(SessionError::Client(format!(
                        "refusing Produce request: {e}"
                    )));
                }
                Err(_) => return Ok((frame, entry)),
            };
            if view.acks == 0 {
                // acks=0 goes to DC1 as acks=1 and the proxy keeps the answer: the tee
                // learns the offsets, and the in-flight FIFO stays exact even with
                // brokers that answer acks=0 requests anyway.
                frame = with_acks(&frame, view.acks_offset, 1)
                    .ok_or_else(|| SessionError::Client("acks field out of range".into()))?;
                entry.swallow = true;
            }
            let ticket = ctx.capture.as_ref().and_then(|c| c.on_request(&view));
            entry.action = Action::Produce(ticket);
            Ok((frame, entry))
        }
        Some(ApiKey::EndTxn) if ctx.capture.is_some() => {
            let (_, mut body) = split_request(ApiKey::EndTxn, &frame).map_err(client_decode)?;
            let req: EndTxnRequest =
                guarded_decode(&mut body, version, "EndTxn request").map_err(client_decode)?;
            entry.action = Action::EndTxn {
                producer_id: req.producer_id.0,
                committed: req.committed,
            };
            Ok((frame, entry))
        }
        _ => Ok((frame, entry)),
    }
}

fn client_decode(e: DecodeError) -> SessionError {
    SessionError::Client(e.to_string())
}

async fn forward_responses<R, W>(
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
async fn process_response(
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

pub(super) fn api_name(key: Option<ApiKey>) -> &'static str {
    match key {
        Some(k) => api_key_name(k),
        None => "unknown",
    }
}

fn api_key_name(k: ApiKey) -> &'static str {
    // Debug names are stable identifiers such as "Produce"; leak-free as a static str
    // via a small table for the common keys, "other" for the rest.
    match k {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn routine_closes_are_told_by_their_kind() {
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
        ] {
            assert!(
                SessionError::ClientIo(Error::new(kind, "x")).is_routine(),
                "{kind:?}"
            );
        }
        assert!(!SessionError::ClientIo(Error::new(ErrorKind::PermissionDenied, "x")).is_routine());
        // A message that merely mentions a reset is not one.
        assert!(!SessionError::Client("connection reset by the rules".into()).is_routine());
        assert!(SessionError::ClientFrame(FrameError::Closed).is_routine());
    }
}
