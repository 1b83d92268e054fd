//! One pipelined connection to one broker.
//!
//! Callers encode their request and hand the frame to a writer task, which stamps
//! increasing correlation ids, records the request in an in-flight FIFO and writes it.
//! A reader task takes each response off the socket, checks its correlation id against
//! the head of the FIFO and hands the bytes to the waiting caller. The FIFO is a bounded
//! channel, so at most `max_in_flight` requests are outstanding. No lock is held across
//! an await: submitting is one channel send, waiting is one oneshot receive.
//!
//! Any I/O error, timeout or out-of-order response closes the connection and fails
//! every request still in flight on it; the owner opens a new one.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::dial::{Stream, dial};
use super::{ClientConfig, ClientError, Cluster};
use crate::protocol::frame::{FrameError, read_frame};

/// Offset of the correlation id in a request frame that starts with its length prefix.
const CORRELATION_ID_AT: usize = 8;

/// A request frame waiting for the writer.
struct Outgoing {
    /// Size, header and (for `submit`) the whole body.
    frame: BytesMut,
    /// Body parts written after `frame` as they are (`submit_encoded`).
    tail: Vec<Bytes>,
    api: ApiKey,
    reply: oneshot::Sender<Result<Bytes, ClientError>>,
}

/// A request written to the socket, waiting for its response.
struct AwaitingResponse {
    correlation_id: i32,
    api: ApiKey,
    reply: oneshot::Sender<Result<Bytes, ClientError>>,
}

/// Who is at the other end; carried into every error.
#[derive(Debug, Clone)]
struct Peer {
    cluster: Cluster,
    broker: BrokerId,
    addr: Arc<str>,
}

impl Peer {
    fn disconnected(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Disconnected {
            cluster: self.cluster,
            broker: self.broker.0,
            addr: self.addr.to_string(),
            reason: reason.into(),
        }
    }
}

/// A connection to one broker, shared by every task that talks to it.
pub struct BrokerConnection {
    peer: Peer,
    tx: mpsc::Sender<Outgoing>,
    versions: HashMap<i16, (i16, i16)>,
    closed: Arc<AtomicBool>,
    cancel: CancellationToken,
    request_timeout: Duration,
    client_id: StrBytes,
    /// When the broker's SASL session ends (KIP-368): past it the connection counts as
    /// closed for new requests, so the pool opens (and logs in on) a fresh one while
    /// the answers already in flight still arrive here.
    session_end: Option<std::time::Instant>,
}

impl std::fmt::Debug for BrokerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConnection")
            .field("cluster", &self.peer.cluster)
            .field("broker", &self.peer.broker.0)
            .field("addr", &self.peer.addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Drop for BrokerConnection {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl BrokerConnection {
    /// Connects (bounded by `connect_timeout`), starts the reader and writer tasks and
    /// learns the broker's API versions.
    pub(crate) async fn open(
        cfg: &ClientConfig,
        broker: BrokerId,
        addr: &str,
    ) -> Result<Arc<Self>, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            cluster: cfg.cluster,
            addr: addr.to_string(),
            reason,
        };
        let stream = dial(cfg, addr).await.map_err(connect_err)?;
        let (rd, wr) = tokio::io::split(stream);
        let peer = Peer {
            cluster: cfg.cluster,
            broker,
            addr: Arc::from(addr),
        };
        let max_in_flight = cfg.max_in_flight_per_connection.max(1);
        let (tx, rx) = mpsc::channel::<Outgoing>(max_in_flight);
        let (fifo_tx, fifo_rx) = mpsc::channel::<AwaitingResponse>(max_in_flight);
        let closed = Arc::new(AtomicBool::new(false));
        let cancel = CancellationToken::new();
        tokio::spawn(write_loop(
            peer.clone(),
            wr,
            rx,
            fifo_tx,
            cancel.clone(),
            closed.clone(),
            cfg.request_timeout,
        ));
        tokio::spawn(read_loop(
            peer.clone(),
            rd,
            fifo_rx,
            cancel.clone(),
            closed.clone(),
            cfg.request_timeout,
            cfg.max_frame_bytes,
        ));
        let mut conn = Self {
            peer,
            tx,
            versions: HashMap::new(),
            closed,
            cancel,
            request_timeout: cfg.request_timeout,
            client_id: StrBytes::from_string(cfg.client_id.clone()),
            session_end: None,
        };
        conn.versions = conn.api_versions().await?;
        if let Some(creds) = &cfg.sasl {
            let lifetime = super::sasl::authenticate(&conn, creds)
                .await
                .inspect_err(|_| {
                    conn.close();
                })?;
            // Renew at 80% of the granted lifetime, well before the broker cuts us off.
            conn.session_end = lifetime.map(|l| std::time::Instant::now() + l.mul_f64(0.8));
        }
        tracing::debug!(
            cluster = %conn.peer.cluster, broker = conn.peer.broker.0, addr = %conn.peer.addr,
            "connected"
        );
        Ok(Arc::new(conn))
    }

    /// ApiVersions v3, falling back to v0 for brokers that answer UNSUPPORTED_VERSION.
    async fn api_versions(&self) -> Result<HashMap<i16, (i16, i16)>, ClientError> {
        let mut req = ApiVersionsRequest::default();
        req.client_software_name = StrBytes::from_static_str("kafka-tee");
        req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let resp = match self.call(&req, 3).await {
            Ok(r) if r.error_code == 0 => r,
            Ok(_) | Err(ClientError::Protocol { .. }) => {
                self.call(&ApiVersionsRequest::default(), 0).await?
            }
            Err(e) => return Err(e),
        };
        if resp.error_code != 0 {
            return Err(self.kafka_error(resp.error_code, "ApiVersions"));
        }
        Ok(resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect())
    }

    fn kafka_error(&self, code: i16, context: &str) -> ClientError {
        ClientError::Kafka {
            cluster: self.peer.cluster,
            error: kafka_protocol::ResponseError::try_from_code(code)
                .unwrap_or(kafka_protocol::ResponseError::Unknown(code)),
            context: format!("{context} (broker {})", self.peer.broker.0),
        }
    }

    pub fn broker(&self) -> BrokerId {
        self.peer.broker
    }

    pub fn addr(&self) -> &str {
        &self.peer.addr
    }

    pub fn cluster(&self) -> Cluster {
        self.peer.cluster
    }

    /// Whether the connection failed (or its SASL session is about to end); a closed
    /// connection never recovers.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
            || self
                .session_end
                .is_some_and(|end| std::time::Instant::now() >= end)
    }

    pub(super) fn auth_error(
        &self,
        mechanism: crate::config::SaslMechanism,
        reason: String,
    ) -> ClientError {
        ClientError::Auth {
            cluster: self.peer.cluster,
            broker: self.peer.broker.0,
            addr: self.peer.addr.to_string(),
            mechanism: mechanism.name(),
            reason,
        }
    }

    /// The broker's version range for an API, if it offers it.
    pub fn broker_versions(&self, api: ApiKey) -> Option<(i16, i16)> {
        self.versions.get(&(api as i16)).copied()
    }

    /// The highest version of `R` that the broker, the kafka-protocol crate and the
    /// caller's `wanted` range all allow.
    pub fn version_for<R: Request>(&self, wanted: RangeInclusive<i16>) -> Result<i16, ClientError> {
        let api = api_key::<R>(&self.peer)?;
        let (bmin, bmax) = self
            .broker_versions(api)
            .ok_or(ClientError::UnsupportedVersion {
                cluster: self.peer.cluster,
                broker: self.peer.broker.0,
                api,
                broker_range: None,
                wanted: wanted.clone(),
            })?;
        let lo = (*wanted.start()).max(R::VERSIONS.min).max(bmin);
        let hi = (*wanted.end()).min(R::VERSIONS.max).min(bmax);
        if lo > hi {
            return Err(ClientError::UnsupportedVersion {
                cluster: self.peer.cluster,
                broker: self.peer.broker.0,
                api,
                broker_range: Some((bmin, bmax)),
                wanted,
            });
        }
        Ok(hi)
    }

    /// Encodes and queues a request; the returned future yields its response. Requests
    /// queued by one task are written in the order of their `submit` calls.
    pub async fn submit<R: Request>(
        &self,
        req: &R,
        version: i16,
    ) -> Result<PendingResponse<R::Response>, ClientError> {
        let api = api_key::<R>(&self.peer)?;
        let frame = self.encode(req, api, version)?;
        self.enqueue(frame, Vec::new(), api, version).await
    }

    /// Like [`submit`](Self::submit) for a body the caller encoded itself as parts:
    /// they are written after the request header in order, never copied into one
    /// buffer (the replicator's Produce requests carry shared record batches this way).
    pub async fn submit_encoded<T: Decodable + HeaderVersion>(
        &self,
        api: ApiKey,
        version: i16,
        body: Vec<Bytes>,
    ) -> Result<PendingResponse<T>, ClientError> {
        let tail_len = body.iter().map(Bytes::len).sum();
        let frame = self.frame(api, version, tail_len, |_| {
            Ok::<_, std::convert::Infallible>(())
        })?;
        self.enqueue(frame, body, api, version).await
    }

    async fn enqueue<T>(
        &self,
        frame: BytesMut,
        tail: Vec<Bytes>,
        api: ApiKey,
        version: i16,
    ) -> Result<PendingResponse<T>, ClientError> {
        let (reply, rx) = oneshot::channel();
        let out = Outgoing {
            frame,
            tail,
            api,
            reply,
        };
        match tokio::time::timeout(self.request_timeout, self.tx.send(out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(self.peer.disconnected("connection closed")),
            Err(_) => {
                self.close();
                return Err(ClientError::Timeout {
                    cluster: self.peer.cluster,
                    broker: self.peer.broker.0,
                    addr: self.peer.addr.to_string(),
                    api,
                    timeout: self.request_timeout,
                });
            }
        }
        Ok(PendingResponse {
            rx,
            version,
            api,
            peer: self.peer.clone(),
            _response: PhantomData,
        })
    }

    /// Sends one request and waits for its decoded response.
    pub async fn call<R: Request>(
        &self,
        req: &R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        self.submit(req, version).await?.wait().await
    }

    /// Closes the connection, failing whatever is in flight.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.cancel.cancel();
    }

    fn encode<R: Request>(
        &self,
        req: &R,
        api: ApiKey,
        version: i16,
    ) -> Result<BytesMut, ClientError> {
        self.frame(api, version, 0, |buf| req.encode(buf, version))
    }

    /// A request frame: size, header (correlation id 0, set by the writer), then what
    /// `body` writes; the size also counts `tail_len` bytes sent after the frame.
    fn frame<E: std::fmt::Display>(
        &self,
        api: ApiKey,
        version: i16,
        tail_len: usize,
        body: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<BytesMut, ClientError> {
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.client_id = Some(self.client_id.clone());
        let mut buf = BytesMut::with_capacity(64);
        buf.put_i32(0);
        let protocol = |message: String| ClientError::Protocol {
            cluster: self.peer.cluster,
            broker: self.peer.broker.0,
            message,
        };
        header
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| e.to_string())
            .and_then(|_| body(&mut buf).map_err(|e| e.to_string()))
            .map_err(|e| protocol(format!("cannot encode {api:?} v{version}: {e}")))?;
        let len = i32::try_from(buf.len() - 4 + tail_len)
            .map_err(|_| protocol(format!("{api:?} request too large")))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(buf)
    }
}

fn api_key<R: Request>(peer: &Peer) -> Result<ApiKey, ClientError> {
    ApiKey::try_from(R::KEY).map_err(|_| ClientError::Protocol {
        cluster: peer.cluster,
        broker: peer.broker.0,
        message: format!("unknown api key {}", R::KEY),
    })
}

/// A response not yet received. Dropping it is fine: the response is discarded.
#[must_use = "a response future does nothing unless awaited"]
pub struct PendingResponse<T> {
    rx: oneshot::Receiver<Result<Bytes, ClientError>>,
    version: i16,
    api: ApiKey,
    peer: Peer,
    _response: PhantomData<fn() -> T>,
}

impl<T: Decodable + HeaderVersion> PendingResponse<T> {
    pub fn version(&self) -> i16 {
        self.version
    }

    /// Waits for the response (the reader task enforces the request timeout) and
    /// decodes it.
    pub async fn wait(self) -> Result<T, ClientError> {
        let frame = match self.rx.await {
            Ok(r) => r?,
            Err(_) => return Err(self.peer.disconnected("connection closed")),
        };
        decode_response::<T>(&self.peer, self.api, self.version, frame)
    }
}

fn decode_response<T: Decodable + HeaderVersion>(
    peer: &Peer,
    api: ApiKey,
    version: i16,
    frame: Bytes,
) -> Result<T, ClientError> {
    let mut buf = frame;
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ResponseHeader::decode(&mut buf, T::header_version(version))
            .and_then(|_| T::decode(&mut buf, version))
    }));
    match decoded {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ClientError::Protocol {
            cluster: peer.cluster,
            broker: peer.broker.0,
            message: format!("cannot decode {api:?} v{version} response: {e}"),
        }),
        Err(_) => Err(ClientError::Protocol {
            cluster: peer.cluster,
            broker: peer.broker.0,
            message: format!("malformed {api:?} v{version} response"),
        }),
    }
}

async fn write_loop(
    peer: Peer,
    wr: WriteHalf<Stream>,
    mut rx: mpsc::Receiver<Outgoing>,
    fifo: mpsc::Sender<AwaitingResponse>,
    cancel: CancellationToken,
    closed: Arc<AtomicBool>,
    timeout: Duration,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, wr);
    let mut next_id: i32 = 1;
    let reason = loop {
        let out = tokio::select! {
            o = rx.recv() => o,
            _ = cancel.cancelled() => break "connection closed".to_string(),
        };
        let Some(mut out) = out else {
            break "connection dropped".to_string();
        };
        let id = next_id;
        next_id = if next_id == i32::MAX { 1 } else { next_id + 1 };
        out.frame[CORRELATION_ID_AT..CORRELATION_ID_AT + 4].copy_from_slice(&id.to_be_bytes());
        let entry = AwaitingResponse {
            correlation_id: id,
            api: out.api,
            reply: out.reply,
        };
        // Waits while `max_in_flight` requests are outstanding; what is buffered is
        // flushed first, or the answers that would make room never come.
        let entry = match fifo.try_send(entry) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(entry)) => Some(entry),
            Err(mpsc::error::TrySendError::Closed(entry)) => {
                let _ = entry
                    .reply
                    .send(Err(peer.disconnected("connection closed")));
                break "connection closed".to_string();
            }
        };
        if let Some(entry) = entry {
            let flushed = tokio::select! {
                r = tokio::time::timeout(timeout, w.flush()) => r,
                _ = cancel.cancelled() => break "connection closed".to_string(),
            };
            match flushed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break format!("write failed: {e}"),
                Err(_) => break format!("write timed out after {timeout:?}"),
            }
            let queued = tokio::select! {
                r = fifo.send(entry) => r,
                _ = cancel.cancelled() => break "connection closed".to_string(),
            };
            if let Err(mpsc::error::SendError(entry)) = queued {
                let _ = entry
                    .reply
                    .send(Err(peer.disconnected("connection closed")));
                break "connection closed".to_string();
            }
        }
        let written = tokio::time::timeout(timeout, async {
            w.write_all(&out.frame).await?;
            for part in &out.tail {
                w.write_all(part).await?;
            }
            if rx.is_empty() {
                w.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let res = tokio::select! {
            r = written => r,
            _ = cancel.cancelled() => break "connection closed".to_string(),
        };
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break format!("write failed: {e}"),
            Err(_) => break format!("write timed out after {timeout:?}"),
        }
    };
    closed.store(true, Ordering::Release);
    cancel.cancel();
    rx.close();
    while let Ok(out) = rx.try_recv() {
        let _ = out.reply.send(Err(peer.disconnected(reason.clone())));
    }
    tracing::debug!(cluster = %peer.cluster, broker = peer.broker.0, %reason, "writer stopped");
}

async fn read_loop(
    peer: Peer,
    rd: ReadHalf<Stream>,
    mut fifo: mpsc::Receiver<AwaitingResponse>,
    cancel: CancellationToken,
    closed: Arc<AtomicBool>,
    timeout: Duration,
    max_frame: usize,
) {
    let mut r = BufReader::with_capacity(64 * 1024, rd);
    let failure: Option<(AwaitingResponse, ClientError)> = loop {
        // While nothing is outstanding the socket is still watched, so a broker that
        // closes an idle connection is noticed before the next request is written.
        let next: Result<AwaitingResponse, &str> = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err("connection closed"),
            e = fifo.recv() => e.ok_or("connection dropped"),
            buffered = r.fill_buf() => match buffered {
                Ok([]) => Err("broker closed an idle connection"),
                // A response can only follow a request, whose entry is queued first.
                Ok(_) => fifo.try_recv().map_err(|_| "unexpected bytes from the broker"),
                Err(_) => Err("idle connection failed"),
            },
        };
        let entry = match next {
            Ok(e) => e,
            Err(why) => {
                tracing::debug!(cluster = %peer.cluster, broker = peer.broker.0, why, "connection ends");
                break None;
            }
        };
        let frame = tokio::select! {
            f = tokio::time::timeout(timeout, read_frame(&mut r, max_frame)) => f,
            _ = cancel.cancelled() => {
                let e = peer.disconnected("connection closed");
                break Some((entry, e));
            }
        };
        let frame = match frame {
            Ok(Ok(f)) => f,
            Ok(Err(FrameError::Closed)) => {
                let e = peer.disconnected("broker closed the connection");
                break Some((entry, e));
            }
            Ok(Err(e)) => {
                let e = peer.disconnected(format!("read failed: {e}"));
                break Some((entry, e));
            }
            Err(_) => {
                let e = ClientError::Timeout {
                    cluster: peer.cluster,
                    broker: peer.broker.0,
                    addr: peer.addr.to_string(),
                    api: entry.api,
                    timeout,
                };
                break Some((entry, e));
            }
        };
        let got = frame
            .get(..4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if got != Some(entry.correlation_id) {
            let e = ClientError::Protocol {
                cluster: peer.cluster,
                broker: peer.broker.0,
                message: format!(
                    "response correlation id {got:?} does not match request {} ({:?})",
                    entry.correlation_id, entry.api
                ),
            };
            break Some((entry, e));
        }
        // The caller may have given up waiting; that is not an error here.
        let _ = entry.reply.send(Ok(frame));
    };
    closed.store(true, Ordering::Release);
    cancel.cancel();
    let reason = match failure {
        Some((entry, e)) => {
            let reason = e.to_string();
            tracing::debug!(cluster = %peer.cluster, broker = peer.broker.0, error = %e, "connection failed");
            let _ = entry.reply.send(Err(e));
            reason
        }
        None => "connection closed".to_string(),
    };
    fifo.close();
    while let Ok(entry) = fifo.try_recv() {
        let _ = entry.reply.send(Err(peer.disconnected(reason.clone())));
    }
}

#[cfg(test)]
mod tests;
