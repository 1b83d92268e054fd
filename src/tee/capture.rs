//! Capture: from a forwarded Produce request and DC1's response to acked batches,
//! released to the replicator in DC1 offset order per partition.
//!
//! Ordering without waiting on offsets: responses of different client connections can
//! arrive in any order, but a DC1 broker assigns offsets in the order it appends. When a
//! response for partition P arrives, every request to P that the proxy forwards later
//! gets a higher offset; only requests already in flight at that moment can get a lower
//! one. So an acked batch is released once every request to P that was in flight when
//! its response arrived has completed, and held batches go out lowest offset first.
//! Offsets used by producers that bypass the proxy, or by transaction markers, never
//! stall anything.
//!
//! Transactions: a transactional batch blocks its partition (like Kafka's last stable
//! offset) until the producer's EndTxn is acknowledged: commit releases it as a plain
//! batch, abort drops it. A transaction that is never ended is turned into a gap after
//! `txn_timeout`, so the replicator reads the outcome back from DC1 (read_committed).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use kafka_protocol::messages::ProduceResponse;

use crate::protocol::batch::{self, Peek};
use crate::protocol::produce::ProduceRequestView;
use crate::sync::lock;
use crate::tee::{Budget, Pending, Reservation, TopicPartition};

/// Where released items go (the replicator, or a test's collector).
pub trait Sink: Send + Sync {
    fn push(&self, tp: TopicPartition, item: Pending);
    /// Whether a DC1 topic is replicated at all.
    fn wants(&self, topic: &str) -> bool;
    /// Resolves to true once DC2 holds `tp` up to `offset` (inclusive), false when
    /// `timeout` passes first. A sink that cannot tell never confirms.
    fn wait_replicated(
        &self,
        _tp: TopicPartition,
        _offset: i64,
        _timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async { false })
    }
    /// Whether a restart of the proxy would still copy a batch DC1 acked at `base`.
    /// When not, the producer's answer waits for `make_starts_durable`. A sink that
    /// keeps nothing across restarts says yes.
    fn start_is_durable(&self, _tp: &TopicPartition, _base: i64) -> bool {
        true
    }
    /// Makes a restart resume each partition of `starts` (partition, acked base) no
    /// later than its base; resolves to false if that could not be made durable.
    fn make_starts_durable(
        &self,
        _starts: Vec<(TopicPartition, i64)>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async { true })
    }
}

/// Partitions of one response whose producer waits for DC2 (synchronous topics):
/// (partition, last DC1 offset of the batch).
pub type SyncWaits = Vec<(TopicPartition, i64)>;

/// What a producer's answer waits for once DC1 acked its request.
#[derive(Debug, Default)]
pub struct Waits {
    /// Synchronous topics: DC2 must hold these batches.
    pub dc2: SyncWaits,
    /// Partitions whose start a restart would not know yet: (partition, acked base).
    pub starts: Vec<(TopicPartition, i64)>,
}

struct Held {
    /// `next_request` of the partition when the response arrived.
    barrier: u64,
    /// `Some(pid)` while the batch waits for its transaction's outcome.
    txn: Option<i64>,
    /// A batch carries its budget reservation; dropping the item gives it back.
    item: Pending,
    since: Instant,
}

#[derive(Default)]
struct PartitionOrder {
    next_request: u64,
    outstanding: BTreeSet<u64>,
    held: BTreeMap<i64, Held>,
}

/// One partition of a forwarded request, waiting for DC1's answer.
struct TicketEntry {
    tp: TopicPartition,
    request: u64,
    facts: Option<Peek>,
    /// The batch bytes and their reservation, when the budget had room for them.
    records: Option<(Bytes, Reservation)>,
}

/// A forwarded Produce request's claim on its partitions' ordering. Dropping it without
/// `complete` (connection lost) releases the claim.
pub struct Ticket {
    capture: Arc<Capture>,
    entries: Vec<TicketEntry>,
}

pub struct Capture {
    sink: Arc<dyn Sink>,
    budget: Arc<Budget>,
    partitions: DashMap<TopicPartition, Mutex<PartitionOrder>>,
    /// Producer id -> partitions holding its undecided transactional batches.
    txns: Mutex<HashMap<i64, HashSet<TopicPartition>>>,
    txn_timeout: Duration,
    /// Topics whose producers wait until DC2 has their batch.
    sync_topics: Option<crate::tee::TopicFilter>,
    /// Records DC1 acknowledged for replicated topics since the start.
    acked_records: AtomicU64,
}

impl Capture {
    pub fn new(sink: Arc<dyn Sink>, budget: Arc<Budget>, txn_timeout: Duration) -> Arc<Self> {
        Self::with_sync_topics(sink, budget, txn_timeout, None)
    }

    /// Like `new`, with topics (a filter) whose producer responses wait for DC2.
    pub fn with_sync_topics(
        sink: Arc<dyn Sink>,
        budget: Arc<Budget>,
        txn_timeout: Duration,
        sync_topics: Option<crate::tee::TopicFilter>,
    ) -> Arc<Self> {
        Arc::new(Self {
            sink,
            budget,
            partitions: DashMap::new(),
            txns: Mutex::new(HashMap::new()),
            txn_timeout,
            sync_topics,
            acked_records: AtomicU64::new(0),
        })
    }

    /// Waits until a restart would resume every partition of `starts` no later than
    /// its acked base. If that cannot be written, the answer goes out anyway (a failing
    /// disk must not stop DC1's producers): logged and counted.
    pub async fn wait_starts_durable(&self, starts: Vec<(TopicPartition, i64)>) {
        let n = starts.len();
        if !self.sink.make_starts_durable(starts).await {
            tracing::warn!(
                partitions = n,
                "answering a produce whose partition start is not in a checkpoint on disk: a crash now would not copy it"
            );
            metrics::counter!("kafka_tee_checkpoint_start_unsaved_total").increment(n as u64);
        }
    }

    /// Waits until DC2 has every batch in `waits`; returns the partitions it did not
    /// confirm within `timeout`.
    pub async fn wait_for_dc2(&self, waits: SyncWaits, timeout: Duration) -> Vec<TopicPartition> {
        let mut missing = Vec::new();
        for (tp, offset) in waits {
            if !self.sink.wait_replicated(tp.clone(), offset, timeout).await {
                missing.push(tp);
            }
        }
        missing
    }

    /// Registers a Produce request about to be forwarded to DC1.
    pub fn on_request(self: &Arc<Self>, req: &ProduceRequestView) -> Option<Ticket> {
        let mut entries = Vec::new();
        for topic in &req.topics {
            if !self.sink.wants(&topic.name) {
                continue;
            }
            let name: Arc<str> = Arc::from(topic.name.as_str());
            for (partition, records) in &topic.partitions {
                let tp = TopicPartition {
                    topic: name.clone(),
                    partition: *partition,
                };
                let facts = records.as_deref().and_then(batch::peek);
                let len = records.as_ref().map_or(0, |r| r.len());
                let records = records
                    .as_ref()
                    .and_then(|r| self.budget.try_reserve(len).map(|res| (r.clone(), res)));
                let request = {
                    let slot = self.partitions.entry(tp.clone()).or_default();
                    let mut order = lock(&slot);
                    let n = order.next_request;
                    order.next_request += 1;
                    order.outstanding.insert(n);
                    n
                };
                entries.push(TicketEntry {
                    tp,
                    request,
                    facts,
                    records,
                });
            }
        }
        if entries.is_empty() {
            None
        } else {
            Some(Ticket {
                capture: self.clone(),
                entries,
            })
        }
    }

    /// A DC1 EndTxn for `producer_id` was acknowledged.
    pub fn on_end_txn(&self, producer_id: i64, committed: bool) {
        let parts = lock(&self.txns).remove(&producer_id).unwrap_or_default();
        for tp in parts {
            self.with_partition(&tp, |order| {
                order.held.retain(|_, h| {
                    if h.txn != Some(producer_id) {
                        return true;
                    }
                    if committed {
                        h.txn = None;
                        true
                    } else {
                        false
                    }
                });
            });
        }
    }

    /// Turns transactional batches held longer than the timeout into gaps, so the
    /// replicator reads the transaction's outcome back from DC1.
    pub fn expire_transactions(&self) {
        let now = Instant::now();
        let pids: Vec<i64> = lock(&self.txns).keys().copied().collect();
        for pid in pids {
            let parts = lock(&self.txns).get(&pid).cloned().unwrap_or_default();
            let mut still_waiting = false;
            for tp in &parts {
                self.with_partition(tp, |order| {
                    for (&base, h) in order.held.iter_mut() {
                        if h.txn != Some(pid) {
                            continue;
                        }
                        if now.duration_since(h.since) < self.txn_timeout {
                            still_waiting = true;
                            continue;
                        }
                        let to = match &h.item {
                            Pending::Batch { records, .. } => batch::peek(records)
                                .map_or(base, |f| base + f.last_offset_delta),
                            Pending::Gap { to, .. } => *to,
                        };
                        tracing::warn!(partition = %tp, producer_id = pid, "transaction not ended in time; reading its outcome back from DC1");
                        h.txn = None;
                        h.item = Pending::Gap { from: base, to };
                    }
                });
            }
            if !still_waiting {
                lock(&self.txns).remove(&pid);
            }
        }
    }

    /// Records DC1 acknowledged for replicated topics since the start.
    pub fn acked_records_total(&self) -> u64 {
        self.acked_records.load(Ordering::Relaxed)
    }

    /// Bytes and batches held for ordering or transactions (for metrics and tests).
    pub fn held_batches(&self) -> usize {
        self.partitions
            .iter()
            .map(|e| lock(e.value()).held.len())
            .sum()
    }

    fn with_partition(&self, tp: &TopicPartition, f: impl FnOnce(&mut PartitionOrder)) {
        if let Some(slot) = self.partitions.get(tp) {
            let mut order = lock(&slot);
            f(&mut order);
            self.release(tp, &mut order);
        }
    }

    /// Hands over every held batch that can no longer be preceded by another.
    fn release(&self, tp: &TopicPartition, order: &mut PartitionOrder) {
        let oldest = order.outstanding.first().copied().unwrap_or(u64::MAX);
        while let Some(entry) = order.held.first_entry() {
            let h = entry.get();
            if h.barrier > oldest || h.txn.is_some() {
                break;
            }
            let h = entry.remove();
            self.sink.push(tp.clone(), h.item);
        }
    }

    fn finish(&self, entry: TicketEntry, ack: Option<i64>) {
        let Some(slot) = self.partitions.get(&entry.tp) else {
            return;
        };
        let mut order = lock(&slot);
        order.outstanding.remove(&entry.request);
        match (ack, entry.facts) {
            (Some(base), Some(facts)) => {
                let kept = entry.records.as_ref().map_or(0, |(_, r)| r.bytes());
                let records = (facts.last_offset_delta + 1).max(0);
                self.acked_records
                    .fetch_add(records as u64, Ordering::Relaxed);
                crate::metrics::dc1_acked_batch(records, kept);
                let txn = facts.transactional.then_some(facts.producer_id);
                if let Some(pid) = txn {
                    lock(&self.txns)
                        .entry(pid)
                        .or_default()
                        .insert(entry.tp.clone());
                }
                let item = match entry.records {
                    Some((records, reservation)) => Pending::Batch {
                        base_offset: base,
                        records,
                        reservation,
                    },
                    None => Pending::Gap {
                        from: base,
                        to: base + facts.last_offset_delta,
                    },
                };
                let barrier = order.next_request;
                order.held.insert(
                    base,
                    Held {
                        barrier,
                        txn,
                        item,
                        since: Instant::now(),
                    },
                );
            }
            (Some(base), None) => {
                // DC1 accepted bytes the proxy could not read as a v2 batch: never
                // happens with a real broker, but if it does, the offsets are read back.
                tracing::error!(partition = %entry.tp, base, "acked batch has an unreadable header");
                drop(entry.records);
                let barrier = order.next_request;
                order.held.insert(
                    base,
                    Held {
                        barrier,
                        txn: None,
                        item: Pending::Gap {
                            from: base,
                            to: base,
                        },
                        since: Instant::now(),
                    },
                );
            }
            // Not acknowledged: the bytes (and their reservation) go.
            (None, _) => drop(entry.records),
        }
        self.release(&entry.tp, &mut order);
    }
}

impl Ticket {
    /// Applies DC1's response: partitions acked with error 0 become batches. Returns
    /// what the producer's response must wait for: the acked partitions of synchronous
    /// topics, and those whose start a restart would not know.
    pub fn complete(mut self, resp: &ProduceResponse) -> Waits {
        let entries = std::mem::take(&mut self.entries);
        let mut waits = Waits::default();
        for entry in entries {
            let ack = resp
                .responses
                .iter()
                .find(|t| t.name.0.as_str() == &*entry.tp.topic)
                .and_then(|t| {
                    t.partition_responses
                        .iter()
                        .find(|p| p.index == entry.tp.partition)
                })
                .filter(|p| p.error_code == 0 && p.base_offset >= 0)
                .map(|p| p.base_offset);
            if let (Some(base), Some(facts), Some(sync)) =
                (ack, entry.facts, &self.capture.sync_topics)
                && sync.wants(&entry.tp.topic)
            {
                waits
                    .dc2
                    .push((entry.tp.clone(), base + facts.last_offset_delta));
            }
            if let Some(base) = ack
                && !self.capture.sink.start_is_durable(&entry.tp, base)
            {
                waits.starts.push((entry.tp.clone(), base));
            }
            self.capture.finish(entry, ack);
        }
        waits
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        for entry in std::mem::take(&mut self.entries) {
            tracing::warn!(partition = %entry.tp, "produce request ended without a DC1 response; if DC1 appended it, it is not copied until a later catch-up");
            metrics::counter!("kafka_tee_produce_unconfirmed_total").increment(1);
            self.capture.finish(entry, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::produce::TopicData;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };

    #[derive(Default)]
    struct Collect(Mutex<Vec<(TopicPartition, Pending)>>);
    impl Sink for Collect {
        fn push(&self, tp: TopicPartition, item: Pending) {
            lock(&self.0).push((tp, item));
        }
        fn wants(&self, topic: &str) -> bool {
            !topic.starts_with("__")
        }
    }

    /// A 61-byte v2 batch header (plus `extra` payload bytes) with the given fields.
    fn batch(delta: i32, pid: i64, txn: bool, extra: usize) -> Bytes {
        let mut b = vec![0u8; 61 + extra];
        b[16] = 2;
        b[21..23]
            .copy_from_slice(&(if txn { batch::attr::TRANSACTIONAL } else { 0 }).to_be_bytes());
        b[23..27].copy_from_slice(&delta.to_be_bytes());
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        Bytes::from(b)
    }

    fn request(topic: &str, partition: i32, records: Bytes) -> ProduceRequestView {
        ProduceRequestView {
            transactional_id: None,
            acks: -1,
            acks_offset: 0,
            topics: vec![TopicData {
                name: topic.into(),
                partitions: vec![(partition, Some(records))],
            }],
        }
    }

    fn response(topic: &str, partition: i32, error: i16, base: i64) -> ProduceResponse {
        ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default()
                .with_name(TopicName(topic.to_string().into()))
                .with_partition_responses(vec![
                    PartitionProduceResponse::default()
                        .with_index(partition)
                        .with_error_code(error)
                        .with_base_offset(base),
                ]),
        ])
    }

    fn setup(budget: usize) -> (Arc<Collect>, Arc<Capture>, Arc<Budget>) {
        let sink = Arc::new(Collect::default());
        let budget = Arc::new(Budget::new(budget));
        let cap = Capture::new(sink.clone(), budget.clone(), Duration::from_secs(60));
        (sink, cap, budget)
    }

    fn offsets(sink: &Collect) -> Vec<(i64, bool)> {
        lock(&sink.0)
            .iter()
            .map(|(_, p)| match p {
                Pending::Batch { base_offset, .. } => (*base_offset, true),
                Pending::Gap { from, .. } => (*from, false),
            })
            .collect()
    }

    /// A sink whose restarts know only partition 0.
    struct KnowsPartitionZero;
    impl Sink for KnowsPartitionZero {
        fn push(&self, _: TopicPartition, _: Pending) {}
        fn wants(&self, _: &str) -> bool {
            true
        }
        fn start_is_durable(&self, tp: &TopicPartition, _base: i64) -> bool {
            tp.partition == 0
        }
    }

    #[test]
    fn acked_partitions_a_restart_would_not_know_are_waited_for() {
        let cap = Capture::new(
            Arc::new(KnowsPartitionZero),
            Arc::new(Budget::new(1 << 20)),
            Duration::from_secs(60),
        );
        let known = cap.on_request(&request("t", 0, batch(0, -1, false, 0)));
        let waits = known.expect("ticket").complete(&response("t", 0, 0, 3));
        assert!(waits.starts.is_empty() && waits.dc2.is_empty());
        let new = cap.on_request(&request("t", 1, batch(0, -1, false, 0)));
        let waits = new.expect("ticket").complete(&response("t", 1, 0, 7));
        let one = TopicPartition {
            topic: "t".into(),
            partition: 1,
        };
        assert_eq!(waits.starts, vec![(one, 7)]);
        // Not acked: nothing to copy, so nothing to wait for.
        let failed = cap.on_request(&request("t", 1, batch(0, -1, false, 0)));
        let waits = failed.expect("ticket").complete(&response("t", 1, 6, -1));
        assert!(waits.starts.is_empty());
        // Only what DC1 acknowledged counts.
        assert_eq!(cap.acked_records_total(), 2);
    }

    #[test]
    fn out_of_order_responses_are_released_in_offset_order() {
        let (sink, cap, _) = setup(1 << 20);
        let t1 = cap
            .on_request(&request("t", 0, batch(1, -1, false, 0)))
            .expect("ticket");
        let t2 = cap
            .on_request(&request("t", 0, batch(2, -1, false, 0)))
            .expect("ticket");
        // The second request's answer (offset 2) arrives first: held behind request 1.
        t2.complete(&response("t", 0, 0, 2));
        assert!(offsets(&sink).is_empty());
        t1.complete(&response("t", 0, 0, 0));
        assert_eq!(offsets(&sink), vec![(0, true), (2, true)]);
        assert_eq!(cap.held_batches(), 0);
        // 2 + 3 records, each counted once, for the status page.
        assert_eq!(cap.acked_records_total(), 5);
    }

    #[test]
    fn later_requests_do_not_hold_back_earlier_acks() {
        let (sink, cap, _) = setup(1 << 20);
        let t1 = cap
            .on_request(&request("t", 0, batch(0, -1, false, 0)))
            .expect("ticket");
        t1.complete(&response("t", 0, 0, 7));
        // A request forwarded after the ack cannot get a lower offset.
        let _t2 = cap
            .on_request(&request("t", 0, batch(0, -1, false, 0)))
            .expect("ticket");
        assert_eq!(offsets(&sink), vec![(7, true)]);
    }

    #[test]
    fn failed_and_dropped_requests_release_their_claim() {
        let (sink, cap, budget) = setup(1 << 20);
        let t1 = cap
            .on_request(&request("t", 0, batch(0, -1, false, 10)))
            .expect("ticket");
        let t2 = cap
            .on_request(&request("t", 0, batch(0, -1, false, 10)))
            .expect("ticket");
        let t3 = cap
            .on_request(&request("t", 0, batch(0, -1, false, 10)))
            .expect("ticket");
        t3.complete(&response("t", 0, 0, 5));
        t1.complete(&response("t", 0, 6, -1)); // NOT_LEADER: nothing to copy
        assert!(offsets(&sink).is_empty());
        drop(t2); // connection lost
        assert_eq!(offsets(&sink), vec![(5, true)]);
        assert_eq!(
            budget.used(),
            71,
            "only the released batch still holds budget"
        );
    }

    #[test]
    fn over_budget_batches_become_gaps() {
        let (sink, cap, budget) = setup(100);
        let t1 = cap
            .on_request(&request("t", 0, batch(4, -1, false, 0)))
            .expect("ticket");
        let t2 = cap
            .on_request(&request("t", 0, batch(9, -1, false, 0)))
            .expect("ticket");
        t1.complete(&response("t", 0, 0, 0));
        t2.complete(&response("t", 0, 0, 5));
        let got = lock(&sink.0);
        assert!(matches!(got[0].1, Pending::Batch { base_offset: 0, .. }));
        assert!(matches!(got[1].1, Pending::Gap { from: 5, to: 14 }));
        assert_eq!(budget.used(), 61);
        drop(got);
        lock(&sink.0).clear();
        assert_eq!(budget.used(), 0, "a batch done with gives its budget back");
    }

    #[test]
    fn transactions_block_until_commit_and_vanish_on_abort() {
        let (sink, cap, budget) = setup(1 << 20);
        let tx = cap
            .on_request(&request("t", 0, batch(0, 42, true, 0)))
            .expect("ticket");
        tx.complete(&response("t", 0, 0, 0));
        let plain = cap
            .on_request(&request("t", 0, batch(0, -1, false, 0)))
            .expect("ticket");
        plain.complete(&response("t", 0, 0, 1));
        assert!(
            offsets(&sink).is_empty(),
            "plain batch waits behind the open transaction"
        );
        cap.on_end_txn(42, true);
        assert_eq!(offsets(&sink), vec![(0, true), (1, true)]);

        let tx = cap
            .on_request(&request("t", 0, batch(0, 43, true, 0)))
            .expect("ticket");
        tx.complete(&response("t", 0, 0, 3));
        let plain = cap
            .on_request(&request("t", 0, batch(0, -1, false, 0)))
            .expect("ticket");
        plain.complete(&response("t", 0, 0, 5));
        cap.on_end_txn(43, false);
        assert_eq!(offsets(&sink), vec![(0, true), (1, true), (5, true)]);
        assert_eq!(
            budget.used(),
            3 * 61,
            "the aborted batch gave its budget back"
        );
    }

    #[test]
    fn unended_transactions_turn_into_gaps() {
        let sink = Arc::new(Collect::default());
        let cap = Capture::new(sink.clone(), Arc::new(Budget::new(1 << 20)), Duration::ZERO);
        let tx = cap
            .on_request(&request("t", 0, batch(3, 42, true, 0)))
            .expect("ticket");
        tx.complete(&response("t", 0, 0, 10));
        assert!(offsets(&sink).is_empty());
        cap.expire_transactions();
        let got = lock(&sink.0);
        assert!(matches!(got[0].1, Pending::Gap { from: 10, to: 13 }));
    }

    #[test]
    fn filtered_topics_are_not_tracked() {
        let (_, cap, budget) = setup(1 << 20);
        assert!(
            cap.on_request(&request("__consumer_offsets", 0, batch(0, -1, false, 0)))
                .is_none()
        );
        assert_eq!(budget.used(), 0);
    }
}
