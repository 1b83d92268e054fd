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

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ProduceRequest, ProduceResponse, TopicName,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError};

/// Largest Produce request built from several batches (a single larger batch still
/// goes alone).
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Batches looked at when building one request.
const MAX_SCAN: usize = 4096;
/// Produce requests awaiting a response per leader.
const MAX_REQUESTS_IN_FLIGHT: usize = 32;
/// Batches queued per leader before workers wait.
pub(super) const QUEUE: usize = 4096;

/// A patched batch for one DC2 partition.
pub(super) struct Unit {
    pub topic: Arc<str>,
    pub partition: i32,
    pub records: Bytes,
    pub reply: oneshot::Sender<UnitResult>,
}

/// What became of one batch.
#[derive(Debug, Clone)]
pub(super) enum UnitResult {
    /// Written (or already written: DUPLICATE_SEQUENCE_NUMBER).
    Acked,
    /// The broker answered with an error for this partition.
    Rejected {
        error: ResponseError,
        message: Option<String>,
    },
    /// No answer for this batch: connection lost, timeout, no leader. It may or may
    /// not have been written.
    Unknown { reason: String, refresh: bool },
}

impl UnitResult {
    fn from_client_error(e: &ClientError) -> Self {
        match e.kafka_error() {
            Some(error) => UnitResult::Rejected {
                error,
                message: Some(e.to_string()),
            },
            None => UnitResult::Unknown {
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
    mut rx: mpsc::Receiver<Unit>,
    produce_timeout: Duration,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
    let mut backlog: VecDeque<Unit> = VecDeque::new();
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
        let (req, replies) = build_request(units, produce_timeout);
        match conn.submit(&req, version).await {
            Ok(pending) => {
                drop(req);
                tokio::spawn(async move {
                    let outcome = pending.wait().await;
                    dispatch(outcome, replies);
                    drop(permit);
                });
            }
            Err(e) => dispatch(Err(e), replies),
        }
    }
    // Whatever is left never reaches DC2; its workers hear so and retry or stop.
    for u in backlog {
        let _ = u.reply.send(UnitResult::Unknown {
            reason: "replicator stopping".into(),
            refresh: false,
        });
    }
    tracing::debug!(broker, "DC2 sender stopped");
}

/// Takes the next request's batches: the oldest batch of each partition, in arrival
/// order, up to the size limit. Later batches of a partition stay queued behind it.
fn take_request(backlog: &mut VecDeque<Unit>) -> Vec<Unit> {
    let mut taken = Vec::new();
    let mut seen: HashSet<(Arc<str>, i32)> = HashSet::new();
    let mut blocked: HashSet<(Arc<str>, i32)> = HashSet::new();
    let mut bytes = 0usize;
    let mut rest = VecDeque::with_capacity(backlog.len());
    while let Some(u) = backlog.pop_front() {
        let key = (u.topic.clone(), u.partition);
        let fits = taken.is_empty() || bytes + u.records.len() <= MAX_REQUEST_BYTES;
        if !seen.contains(&key) && !blocked.contains(&key) && fits {
            bytes += u.records.len();
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

type Replies = HashMap<(Arc<str>, i32), oneshot::Sender<UnitResult>>;

fn build_request(units: Vec<Unit>, timeout: Duration) -> (ProduceRequest, Replies) {
    let mut topics: Vec<TopicProduceData> = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    let mut replies = HashMap::with_capacity(units.len());
    for u in units {
        let i = *index.entry(u.topic.clone()).or_insert_with(|| {
            let mut t = TopicProduceData::default();
            t.name = TopicName(StrBytes::from_string(u.topic.to_string()));
            topics.push(t);
            topics.len() - 1
        });
        let mut p = PartitionProduceData::default();
        p.index = u.partition;
        p.records = Some(u.records);
        topics[i].partition_data.push(p);
        replies.insert((u.topic, u.partition), u.reply);
    }
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    req.topic_data = topics;
    (req, replies)
}

fn dispatch(outcome: Result<ProduceResponse, ClientError>, mut replies: Replies) {
    let resp = match outcome {
        Ok(r) => r,
        Err(e) => {
            let r = UnitResult::from_client_error(&e);
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
                None | Some(ResponseError::DuplicateSequenceNumber) => UnitResult::Acked,
                Some(error) => UnitResult::Rejected {
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
        let _ = tx.send(UnitResult::Unknown {
            reason: "the Produce response does not mention this partition".into(),
            refresh: true,
        });
    }
}

fn fail_all(units: Vec<Unit>, e: &ClientError) {
    let r = UnitResult::from_client_error(e);
    for u in units {
        let _ = u.reply.send(r.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(topic: &str, partition: i32, len: usize) -> (Unit, oneshot::Receiver<UnitResult>) {
        let (tx, rx) = oneshot::channel();
        (
            Unit {
                topic: Arc::from(topic),
                partition,
                records: Bytes::from(vec![0u8; len]),
                reply: tx,
            },
            rx,
        )
    }

    /// The record sizes of the next request taken from the backlog.
    fn next_request_lens(backlog: &mut VecDeque<Unit>) -> Vec<usize> {
        take_request(backlog)
            .iter()
            .map(|u| u.records.len())
            .collect()
    }

    #[test]
    fn one_batch_per_partition_in_order() {
        let mut backlog = VecDeque::new();
        let mut rxs = Vec::new();
        for (t, p, len) in [
            ("a", 0, 10),
            ("a", 0, 11),
            ("a", 1, 12),
            ("b", 0, 13),
            ("a", 1, 14),
        ] {
            let (u, rx) = unit(t, p, len);
            backlog.push_back(u);
            rxs.push(rx);
        }
        assert_eq!(next_request_lens(&mut backlog), vec![10, 12, 13]);
        assert_eq!(next_request_lens(&mut backlog), vec![11, 14]);
        assert!(backlog.is_empty());
    }

    #[test]
    fn size_limit_keeps_partition_order() {
        let mut backlog = VecDeque::new();
        let mut rxs = Vec::new();
        for (t, p, len) in [
            ("a", 0, MAX_REQUEST_BYTES - 10),
            ("b", 0, 100),
            ("c", 0, 5),
            ("b", 1, 5),
        ] {
            let (u, rx) = unit(t, p, len);
            backlog.push_back(u);
            rxs.push(rx);
        }
        assert_eq!(
            next_request_lens(&mut backlog),
            vec![MAX_REQUEST_BYTES - 10, 5, 5]
        );
        assert_eq!(next_request_lens(&mut backlog), vec![100]);
    }

    #[test]
    fn request_groups_partitions_by_topic() {
        let (a0, _r1) = unit("a", 0, 1);
        let (b0, _r2) = unit("b", 0, 1);
        let (a1, _r3) = unit("a", 1, 1);
        let (req, replies) = build_request(vec![a0, b0, a1], Duration::from_secs(5));
        assert_eq!(req.acks, -1);
        assert_eq!(req.timeout_ms, 5000);
        assert_eq!(req.topic_data.len(), 2);
        assert_eq!(req.topic_data[0].partition_data.len(), 2);
        assert_eq!(replies.len(), 3);
    }
}
