//! One sender per DC2 leader: takes patched batches from the partition workers and
//! writes Produce requests (acks=-1) on that leader's pipelined connection.
//!
//! A request carries at most one batch per partition (brokers reject more). Whatever is
//! waiting when a request is built goes into it, so under load several partitions share
//! a request and at low load a batch leaves at once. Requests are submitted in the order
//! the batches arrived, so batches of one partition reach the broker in order; each
//! batch's outcome goes back to its worker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::membership::Lease;

use crate::client::{Client, ClientError};
use crate::protocol::batch::PatchedBatch;

/// Largest Produce request built from several batches (a single larger batch still
/// goes alone).
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Batches looked at when building one request.
const MAX_SCAN: usize = 4096;
/// Produce requests awaiting a response per leader. The partitions' windows bound
/// what is in flight in bytes; this only caps the count of requests (a deep window of
/// small batches across a long link needs many).
pub(super) const MAX_REQUESTS_IN_FLIGHT: usize = 4096;
/// Batches queued per leader before workers wait.
pub(super) const QUEUE: usize = 4096;

/// A patched batch for one DC2 partition, on its way to the DC2 leader's sender.
pub(super) struct BatchSend {
    pub topic: Arc<str>,
    pub partition: i32,
    pub batch: PatchedBatch,
    pub reply: oneshot::Sender<SendOutcome>,
}

/// What became of one batch.
#[derive(Debug, Clone)]
pub(super) enum SendOutcome {
    /// Written (or already written: DUPLICATE_SEQUENCE_NUMBER), at `dc2_offset` in
    /// DC2 when the broker said where (not for a duplicate).
    Acked { dc2_offset: Option<i64> },
    /// The broker answered with an error for this partition.
    Rejected {
        error: ResponseError,
        message: Option<String>,
    },
    /// No answer for this batch: connection lost, timeout, no leader. It may or may
    /// not have been written.
    Unknown { reason: String, refresh: bool },
}

impl SendOutcome {
    fn from_client_error(e: &ClientError) -> Self {
        match e.kafka_error() {
            Some(error) => SendOutcome::Rejected {
                error,
                message: Some(e.to_string()),
            },
            None => SendOutcome::Unknown {
                reason: e.to_string(),
                refresh: e.needs_metadata_refresh(),
            },
        }
    }
}

/// Runs the sender of one DC2 broker until `rx` closes or `cancel` fires.
pub(super) async fn run(
    dc2: Client,
    broker: i32,
    mut rx: mpsc::Receiver<BatchSend>,
    produce_timeout: Duration,
    lease: Option<Arc<Lease>>,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
    let mut backlog: VecDeque<BatchSend> = VecDeque::new();
    loop {
        if backlog.is_empty() {
            let next = tokio::select! {
                u = rx.recv() => u,
                _ = cancel.cancelled() => None,
            };
            match next {
                Some(u) => backlog.push_back(u),
                None => break,
            }
        }
        while backlog.len() < MAX_SCAN {
            match rx.try_recv() {
                Ok(u) => backlog.push_back(u),
                Err(_) => break,
            }
        }
        let units = take_request(&mut backlog);
        if lease.as_ref().is_some_and(|l| !l.valid()) {
            // A member of a replication group whose membership is in doubt (it may
            // have been frozen past its session timeout) writes nothing: another
            // member may own these partitions by now.
            let r = SendOutcome::Unknown {
                reason: "replication group membership in doubt; not sent".into(),
                refresh: false,
            };
            for u in units {
                let _ = u.reply.send(r.clone());
            }
            continue;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p,
            _ = cancel.cancelled() => break,
        };
        let Ok(permit) = permit else { break };
        let conn = match dc2.connection(broker).await {
            Ok(c) => c,
            Err(e) => {
                fail_all(units, &e);
                continue;
            }
        };
        let version = match conn.version_for::<ProduceRequest>(3..=12) {
            Ok(v) => v,
            Err(e) => {
                fail_all(units, &e);
                continue;
            }
        };
        let (body, replies) = match encode_request(units, version, produce_timeout) {
            Ok(r) => r,
            Err((units, e)) => {
                let e = ClientError::Protocol {
                    cluster: conn.cluster(),
                    broker,
                    message: e,
                };
                fail_all(units, &e);
                continue;
            }
        };
        let bytes = body.iter().map(Bytes::len).sum::<usize>() as f64;
        let in_flight =
            metrics::gauge!("kafka_tee_dc2_in_flight_bytes", "broker" => broker.to_string());
        match conn
            .submit_encoded::<ProduceResponse>(ApiKey::Produce, version, body)
            .await
        {
            Ok(pending) => {
                in_flight.increment(bytes);
                let sent = std::time::Instant::now();
                tokio::spawn(async move {
                    let outcome = pending.wait().await;
                    in_flight.decrement(bytes);
                    metrics::histogram!("kafka_tee_dc2_produce_seconds")
                        .record(sent.elapsed().as_secs_f64());
                    dispatch(outcome, replies);
                    drop(permit);
                });
            }
            Err(e) => dispatch(Err(e), replies),
        }
    }
    // Whatever is left never reaches DC2; its workers hear so and retry or stop.
    for u in backlog {
        let _ = u.reply.send(SendOutcome::Unknown {
            reason: "replicator stopping".into(),
            refresh: false,
        });
    }
    tracing::debug!(broker, "DC2 sender stopped");
}

/// Takes the next request's batches: the oldest batch of each partition, in arrival
/// order, up to the size limit. Later batches of a partition stay queued behind it.
fn take_request(backlog: &mut VecDeque<BatchSend>) -> Vec<BatchSend> {
    let mut taken = Vec::new();
    let mut seen: HashSet<(Arc<str>, i32)> = HashSet::new();
    let mut blocked: HashSet<(Arc<str>, i32)> = HashSet::new();
    let mut bytes = 0usize;
    let mut rest = VecDeque::with_capacity(backlog.len());
    while let Some(u) = backlog.pop_front() {
        let key = (u.topic.clone(), u.partition);
        let fits = taken.is_empty() || bytes + u.batch.len() <= MAX_REQUEST_BYTES;
        if !seen.contains(&key) && !blocked.contains(&key) && fits {
            bytes += u.batch.len();
            seen.insert(key);
            taken.push(u);
        } else {
            // Once a partition's batch stays behind, its later batches must too.
            blocked.insert(key);
            rest.push_back(u);
        }
    }
    *backlog = rest;
    taken
}

type Replies = HashMap<(Arc<str>, i32), oneshot::Sender<SendOutcome>>;

/// Encodes a Produce request body (acks=-1, no transactional id; v3 to v12) as parts:
/// the fields in small buffers and each batch's records section as the shared buffer
/// it already is, so no record byte is copied. Topics keep the order of their first
/// batch. Fails (handing the units back) only on a topic name too long for Kafka.
fn encode_request(
    units: Vec<BatchSend>,
    version: i16,
    timeout: Duration,
) -> Result<(Vec<Bytes>, Replies), Unencodable> {
    if let Some(u) = units.iter().find(|u| u.topic.len() > i16::MAX as usize) {
        let e = format!("topic name of {} bytes is too long", u.topic.len());
        return Err((units, e));
    }
    let flexible = version >= 9;
    // (topic, [(partition, batch)]) in the order of each topic's first batch.
    type ByTopic = Vec<(Arc<str>, Vec<(i32, PatchedBatch)>)>;
    let mut topics: ByTopic = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    let mut replies = HashMap::with_capacity(units.len());
    let count = units.len();
    for u in units {
        let i = *index.entry(u.topic.clone()).or_insert_with(|| {
            topics.push((u.topic.clone(), Vec::new()));
            topics.len() - 1
        });
        topics[i].1.push((u.partition, u.batch));
        replies.insert((u.topic, u.partition), u.reply);
    }
    let put_len = |buf: &mut BytesMut, n: usize| {
        if flexible {
            put_uvarint(buf, n as u64 + 1);
        } else {
            buf.put_i32(i32::try_from(n).unwrap_or(i32::MAX));
        }
    };
    let mut buf = BytesMut::with_capacity(64 + count * (HEADER_SPACE + 16));
    let mut parts = Vec::with_capacity(count * 2 + 1);
    // transactional_id: null
    if flexible {
        put_uvarint(&mut buf, 0);
    } else {
        buf.put_i16(-1);
    }
    buf.put_i16(-1); // acks: all
    buf.put_i32(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX));
    put_len(&mut buf, topics.len());
    for (name, partitions) in topics {
        if flexible {
            put_uvarint(&mut buf, name.len() as u64 + 1);
        } else {
            buf.put_i16(name.len() as i16);
        }
        buf.put_slice(name.as_bytes());
        put_len(&mut buf, partitions.len());
        for (partition, batch) in partitions {
            buf.put_i32(partition);
            put_len(&mut buf, batch.len());
            buf.put_slice(&batch.header);
            parts.push(buf.split().freeze());
            parts.push(batch.records);
            if flexible {
                buf.put_u8(0); // partition tagged fields
            }
        }
        if flexible {
            buf.put_u8(0); // topic tagged fields
        }
    }
    if flexible {
        buf.put_u8(0); // request tagged fields
    }
    parts.push(buf.freeze());
    Ok((parts, replies))
}

/// The batches of a request that could not be encoded, and why.
type Unencodable = (Vec<BatchSend>, String);

/// Room per batch in the fields buffer: its 61-byte header and a few fields.
const HEADER_SPACE: usize = crate::protocol::batch::HEADER_LEN + 16;

fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn dispatch(outcome: Result<ProduceResponse, ClientError>, mut replies: Replies) {
    let resp = match outcome {
        Ok(r) => r,
        Err(e) => {
            let r = SendOutcome::from_client_error(&e);
            for (_, tx) in replies {
                let _ = tx.send(r.clone());
            }
            return;
        }
    };
    for t in resp.responses {
        let topic: Arc<str> = Arc::from(t.name.0.as_str());
        for p in t.partition_responses {
            let Some(tx) = replies.remove(&(topic.clone(), p.index)) else {
                continue;
            };
            let result = match ResponseError::try_from_code(p.error_code) {
                None => SendOutcome::Acked {
                    dc2_offset: (p.base_offset >= 0).then_some(p.base_offset),
                },
                Some(ResponseError::DuplicateSequenceNumber) => {
                    SendOutcome::Acked { dc2_offset: None }
                }
                Some(error) => SendOutcome::Rejected {
                    error,
                    message: p.error_message.map(|m| m.to_string()).or_else(|| {
                        p.record_errors.first().and_then(|r| {
                            r.batch_index_error_message.as_ref().map(|m| m.to_string())
                        })
                    }),
                },
            };
            let _ = tx.send(result);
        }
    }
    for (_, tx) in replies {
        let _ = tx.send(SendOutcome::Unknown {
            reason: "the Produce response does not mention this partition".into(),
            refresh: true,
        });
    }
}

fn fail_all(units: Vec<BatchSend>, e: &ClientError) {
    let r = SendOutcome::from_client_error(e);
    for u in units {
        let _ = u.reply.send(r.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(
        topic: &str,
        partition: i32,
        len: usize,
    ) -> (BatchSend, oneshot::Receiver<SendOutcome>) {
        let (tx, rx) = oneshot::channel();
        (
            BatchSend {
                topic: Arc::from(topic),
                partition,
                batch: PatchedBatch {
                    header: [7u8; crate::protocol::batch::HEADER_LEN],
                    records: Bytes::from(vec![0u8; len - crate::protocol::batch::HEADER_LEN]),
                },
                reply: tx,
            },
            rx,
        )
    }

    /// The batch sizes (at least the 61-byte header) of the next request taken from
    /// the backlog.
    fn next_request_lens(backlog: &mut VecDeque<BatchSend>) -> Vec<usize> {
        take_request(backlog)
            .iter()
            .map(|u| u.batch.len())
            .collect()
    }

    #[test]
    fn one_batch_per_partition_in_order() {
        let mut backlog = VecDeque::new();
        let mut rxs = Vec::new();
        for (t, p, len) in [
            ("a", 0, 100),
            ("a", 0, 101),
            ("a", 1, 102),
            ("b", 0, 103),
            ("a", 1, 104),
        ] {
            let (u, rx) = unit(t, p, len);
            backlog.push_back(u);
            rxs.push(rx);
        }
        assert_eq!(next_request_lens(&mut backlog), vec![100, 102, 103]);
        assert_eq!(next_request_lens(&mut backlog), vec![101, 104]);
        assert!(backlog.is_empty());
    }

    #[test]
    fn size_limit_keeps_partition_order() {
        let mut backlog = VecDeque::new();
        let mut rxs = Vec::new();
        for (t, p, len) in [
            ("a", 0, MAX_REQUEST_BYTES - 200),
            ("b", 0, 300),
            ("c", 0, 100),
            ("b", 1, 100),
        ] {
            let (u, rx) = unit(t, p, len);
            backlog.push_back(u);
            rxs.push(rx);
        }
        assert_eq!(
            next_request_lens(&mut backlog),
            vec![MAX_REQUEST_BYTES - 200, 100, 100]
        );
        assert_eq!(next_request_lens(&mut backlog), vec![300]);
    }

    /// The parts, joined, are exactly what kafka-protocol encodes for the same
    /// request, for every version the sender uses.
    #[test]
    fn encoded_request_matches_kafka_protocol() {
        use kafka_protocol::messages::TopicName;
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

        for version in 3..=12 {
            let mk = |t: &str, p: i32, fill: u8| {
                let (tx, _rx) = oneshot::channel();
                BatchSend {
                    topic: Arc::from(t),
                    partition: p,
                    batch: PatchedBatch {
                        header: [fill; crate::protocol::batch::HEADER_LEN],
                        records: Bytes::from(vec![fill ^ 0xff; 100 + p as usize]),
                    },
                    reply: tx,
                }
            };
            let units = vec![mk("a", 0, 1), mk("bb", 3, 2), mk("a", 1, 3)];
            let mut want = ProduceRequest::default();
            want.acks = -1;
            want.timeout_ms = 5000;
            for (name, parts) in [("a", vec![&units[0], &units[2]]), ("bb", vec![&units[1]])] {
                let mut t = TopicProduceData::default();
                t.name = TopicName(StrBytes::from_static_str(name));
                for u in parts {
                    let mut p = PartitionProduceData::default();
                    p.index = u.partition;
                    p.records = Some(u.batch.to_bytes());
                    t.partition_data.push(p);
                }
                want.topic_data.push(t);
            }
            let mut expected = BytesMut::new();
            want.encode(&mut expected, version).expect("encode");

            let Ok((parts, replies)) = encode_request(units, version, Duration::from_secs(5))
            else {
                panic!("v{version}: encode failed");
            };
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(joined, expected.to_vec(), "v{version}");
            assert_eq!(replies.len(), 3);
            // And it decodes back to the same request.
            let got = ProduceRequest::decode(&mut Bytes::from(joined), version).expect("decode");
            assert_eq!(got, want, "v{version}");
        }
    }
}
