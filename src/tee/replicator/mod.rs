//! The DC2 side of the tee: per-partition ordered queues, pipelined Produce to DC2
//! leaders, retries, checkpoints and catch-up from DC1.
//!
//! - `worker`: one task per DC1 partition; ordering, sequences, retries, gaps.
//! - `sender`: one task per DC2 leader; bundles partitions into Produce requests.
//! - `catchup`: reads gaps back from DC1 (raw batches, committed data only).
//! - `topics`: topic filter, DC2 topic creation and partition-count checks.
//! - `queue`: a partition's pending items, gaps merged.
//! - `checkpoint`: the durable per-partition position and DC2 producer identity.
//! - `durable`: the checkpoint task; a new partition's start is on disk before its
//!   producer is answered.
//! - `window` and `tail`: a partition's batches in flight, and what DC2's tail holds.
//! - `identity`: the DC2 producer id and epoch all workers write under.
//! - `start`: settings, checkpoint loading, the background tasks; `view`: the rows,
//!   totals and gauges the replicator publishes.
//! - `tier`, `membership`, `assign`, `owners`, `align`: replication groups.
//! - `offset_map`, `group_offsets`: consumer group offsets translated to DC2.
//!
//! The proxy calls [`ReplicatorHandle::push`] in DC1 offset order per partition. Push
//! never blocks: items go to the partition's worker over an unbounded channel, and the
//! memory is bounded by the shared [`Budget`] (a captured batch holds its reservation
//! until DC2 acknowledges it or it is dropped or turned into a gap).

mod align;
pub mod assign;
mod catchup;
pub mod checkpoint;
mod durable;
pub mod group_offsets;
mod identity;
pub mod membership;
pub mod offset_map;
pub mod owners;
mod queue;
mod sender;
mod start;
mod tail;
mod tier;
mod topics;
mod view;
mod window;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::tee::{Pending, TopicPartition};
use identity::{Identity, IdentityCell};
pub use start::start;
pub use topics::{COPIED_CONFIGS, TopicFilter, TopicStatus};

/// Replication settings taken from the configuration.
#[derive(Debug, Clone)]
struct Settings {
    topic_prefix: String,
    create_topics: bool,
    /// One partition's window bounds (batches, bytes).
    window: window::Limits,
    /// Bytes in flight to DC2 over all partitions.
    max_in_flight_bytes: usize,
    request_timeout: Duration,
    retry_backoff: Duration,
    retry_backoff_max: Duration,
    checkpoint_interval: Duration,
    /// First wait before an idle partition's end in DC1 is looked up (None: never).
    follow_interval: Option<Duration>,
    state_dir: Option<PathBuf>,
}

/// One partition's replication position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    offset: i64,
    producer_id: i64,
    producer_epoch: i16,
    next_sequence: i32,
    /// The DC2 offset after the last copied batch, when known (committed to DC2 in a
    /// replication group, see `tier`).
    dc2_next: Option<i64>,
}

/// What a worker last reported about its partition.
#[derive(Debug, Clone)]
struct Snapshot {
    replicated_offset: Option<i64>,
    lag_offsets: u64,
    pending_bytes: u64,
    lag_bytes: u64,
    oldest_pending_since: Option<Instant>,
    state: String,
}

impl Snapshot {
    /// A partition with nothing handed over, replicated up to `replicated_offset`.
    fn idle(replicated_offset: Option<i64>) -> Self {
        Snapshot {
            replicated_offset,
            lag_offsets: 0,
            pending_bytes: 0,
            lag_bytes: 0,
            oldest_pending_since: None,
            state: "idle".into(),
        }
    }
}

/// State shared by the handle, workers, senders and the checkpoint task.
struct Shared {
    settings: Settings,
    dc1: Client,
    dc2: Client,
    filter: TopicFilter,
    gates: topics::TopicGates,
    identity: IdentityCell,
    progress: DashMap<TopicPartition, Progress>,
    /// Per partition, where DC1's offsets went in DC2 (for consumer offsets).
    offsets: DashMap<TopicPartition, offset_map::OffsetMap>,
    progress_version: AtomicU64,
    /// Bytes in the partitions' windows (sent or about to be), for
    /// `Settings::max_in_flight_bytes`.
    in_flight_bytes: std::sync::atomic::AtomicUsize,
    /// What the checkpoint on disk covers; new partitions' floors.
    durable: durable::Durability,
    committed: Notify,
    workers: DashMap<TopicPartition, mpsc::UnboundedSender<(Instant, Pending)>>,
    states: DashMap<TopicPartition, Arc<Mutex<Snapshot>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    senders: Mutex<HashMap<i32, mpsc::Sender<sender::BatchSend>>>,
    sender_tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    /// In a replication group: ownership, lease and positions (see `tier`).
    tier: Option<tier::Tier>,
    /// Shutdown began: finish what is queued, accept nothing new.
    draining: CancellationToken,
    /// Stop now.
    hard_stop: CancellationToken,
    runtime: tokio::runtime::Handle,
    /// Totals for the status page (each also a metric).
    counters: crate::tee::snapshot::ReplicationCounters,
}

impl Shared {
    /// Whether this instance replicates the partition (always, without a group).
    fn owns(&self, tp: &TopicPartition) -> bool {
        self.tier.as_ref().is_none_or(|t| t.owns(tp))
    }

    /// Whether batches may be sent to DC2 now: always without a group; in one, while
    /// the membership's lease holds.
    fn may_send(&self) -> bool {
        self.tier.as_ref().is_none_or(|t| t.lease.valid())
    }

    /// The DC2 topic a DC1 topic is copied to.
    fn dc2_topic(&self, topic: &str) -> Arc<str> {
        Arc::from(format!("{}{}", self.settings.topic_prefix, topic))
    }

    fn progress_changed(&self) {
        self.progress_version.fetch_add(1, Ordering::AcqRel);
        self.committed.notify_waiters();
    }

    /// The sender of a DC2 broker, started on first use.
    fn sender(&self, broker: i32) -> mpsc::Sender<sender::BatchSend> {
        let mut senders = crate::sync::lock(&self.senders);
        if let Some(tx) = senders.get(&broker)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(sender::QUEUE);
        let produce_timeout = self
            .settings
            .request_timeout
            .saturating_sub(Duration::from_secs(1))
            .max(Duration::from_secs(1));
        let task = self.runtime.spawn(sender::run(
            self.dc2.clone(),
            broker,
            rx,
            produce_timeout,
            self.tier.as_ref().map(|t| t.lease.clone()),
            self.hard_stop.clone(),
        ));
        crate::sync::lock(&self.sender_tasks).push(task);
        senders.insert(broker, tx.clone());
        tx
    }
}

/// The end (high watermark) of a partition, as the replicator reads it: from a
/// Fetch, which Tansu answers right where ListOffsets "latest" may not.
pub async fn partition_end(
    client: &Client,
    topic: &str,
    partition: i32,
) -> Result<i64, crate::client::ClientError> {
    tail::partition_end(
        client,
        topic,
        partition,
        0,
        crate::client::IsolationLevel::ReadUncommitted,
    )
    .await
}

/// The running replicator. Dropping it without [`Replicator::shutdown`] stops
/// everything at once (nothing is flushed).
pub struct Replicator {
    shared: Arc<Shared>,
    /// The replication group's task, and its stop (releases, then leaves the group).
    tier_task: Option<JoinHandle<()>>,
    tier_stop: CancellationToken,
    checkpoint_task: Option<JoinHandle<()>>,
    gauges_task: Option<JoinHandle<()>>,
    /// Consumer group offsets to DC2 (`replication.group_offsets`), when on.
    group_offsets_task: Option<JoinHandle<()>>,
    checkpoint_stop: CancellationToken,
}

/// What the proxy holds: pushes acknowledged items. Cheap to clone.
#[derive(Clone)]
pub struct ReplicatorHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReplicatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatorHandle")
            .field("partitions", &self.shared.workers.len())
            .finish()
    }
}

impl Replicator {
    pub fn handle(&self) -> ReplicatorHandle {
        ReplicatorHandle {
            shared: self.shared.clone(),
        }
    }

    /// Per DC1 partition, the last DC1 offset known to be in DC2 (including positions
    /// loaded from the checkpoint).
    pub fn checkpoint_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        self.handle().checkpoint_offsets()
    }

    /// The DC2 producer id and epoch in use, once obtained.
    pub fn producer_identity(&self) -> Option<(i64, i16)> {
        self.shared
            .identity
            .peek()
            .map(|i| (i.producer_id, i.epoch))
    }

    /// Writes the checkpoint now (no-op without `state.dir`).
    pub async fn write_checkpoint(&self) -> anyhow::Result<()> {
        match &self.shared.settings.state_dir {
            Some(dir) => durable::write_checkpoint(&self.shared, dir).await,
            None => Ok(()),
        }
    }

    /// Stops taking items, lets the workers send what they hold for up to `grace`,
    /// then stops them, writes the checkpoint and closes the connections.
    pub async fn shutdown(mut self, grace: Duration) {
        let sh = self.shared.clone();
        let deadline = Instant::now() + grace;
        sh.closed.store(true, Ordering::Release);
        // In a group: the owned partitions are released (batches in flight answered,
        // positions committed) and the group left, so the others take over at once.
        self.tier_stop.cancel();
        if let Some(t) = self.tier_task.take() {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline.into(), t).await.is_err() {
                tracing::warn!("replication group not left within the grace period");
                abort.abort();
            }
        }
        sh.draining.cancel();
        // Dropping the senders lets each worker finish its queue and stop.
        sh.workers.clear();
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *crate::sync::lock(&sh.tasks));
        let mut waiting = tasks;
        let all_done = tokio::time::timeout_at(deadline.into(), async {
            for t in waiting.iter_mut() {
                let _ = t.await;
            }
        })
        .await
        .is_ok();
        if !all_done {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "replicator grace period over; stopping with data not yet in DC2 (it stays in DC1 and the checkpoint says where to resume)"
            );
        }
        sh.hard_stop.cancel();
        for t in waiting {
            if t.is_finished() {
                continue;
            }
            // Workers stop promptly once cancelled; give them a moment to release.
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        crate::sync::lock(&sh.senders).clear();
        let senders: Vec<JoinHandle<()>> =
            std::mem::take(&mut *crate::sync::lock(&sh.sender_tasks));
        for t in senders {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.checkpoint_stop.cancel();
        if let Some(t) = self.checkpoint_task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.gauges_task.take() {
            let _ = t.await;
        }
        // A round in the middle of a request is not waited for: the next start syncs.
        if let Some(t) = self.group_offsets_task.take() {
            t.abort();
        }
        if let Err(e) = self.write_checkpoint().await {
            tracing::error!(error = %e, "cannot write the final replicator checkpoint");
        }
        sh.dc1.close();
        sh.dc2.close();
        tracing::info!("replicator stopped");
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.tier_stop.cancel();
        self.shared.hard_stop.cancel();
        self.checkpoint_stop.cancel();
    }
}

impl ReplicatorHandle {
    /// Hands over the next item of a partition (in DC1 offset order). Never blocks.
    /// Items of topics that are not replicated, or pushed after shutdown began, are
    /// dropped and their budget released.
    pub fn push(&self, tp: TopicPartition, item: Pending) {
        let sh = &self.shared;
        // An item dropped here gives its budget back.
        if sh.closed.load(Ordering::Acquire) {
            return;
        }
        if !sh.filter.wants(&tp.topic) {
            metrics::counter!("kafka_tee_filtered_items_total").increment(1);
            return;
        }
        if !sh.owns(&tp) {
            metrics::counter!("kafka_tee_not_owned_items_total").increment(1);
            return;
        }
        // DC1 acknowledged the item just now: replication latency counts from here.
        let item = (Instant::now(), item);
        if sh.tier.is_some() {
            // In a group, only the takeover starts workers; until it has, the
            // partition's worker reads these offsets back from DC1.
            match sh.workers.get(&tp) {
                // A worker that stopped drops the item (and so its budget).
                Some(tx) => {
                    let _ = tx.send(item);
                }
                None => {
                    metrics::counter!("kafka_tee_not_owned_items_total").increment(1);
                }
            }
            return;
        }
        let item = match sh.workers.get(&tp) {
            Some(tx) => match tx.send(item) {
                Ok(()) => return,
                // The worker is gone (it stopped on shutdown or failed); start anew.
                Err(mpsc::error::SendError(item)) => item,
            },
            None => item,
        };
        let entry = sh.workers.entry(tp.clone());
        let tx = match entry {
            dashmap::Entry::Occupied(mut e) if e.get().is_closed() => {
                let tx = self.spawn_worker(tp);
                e.insert(tx.clone());
                tx
            }
            dashmap::Entry::Occupied(e) => e.get().clone(),
            dashmap::Entry::Vacant(e) => {
                let tx = self.spawn_worker(tp);
                e.insert(tx.clone());
                tx
            }
        };
        let _ = tx.send(item);
    }

    /// A worker of a partition this instance owns in a group, stopped by `revoke`.
    fn spawn_owned_worker(
        &self,
        tp: TopicPartition,
        revoke: CancellationToken,
    ) -> (mpsc::UnboundedSender<(Instant, Pending)>, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let w = worker::Worker::new(self.shared.clone(), tp, rx, revoke);
        (tx, self.shared.runtime.spawn(w.run()))
    }

    fn spawn_worker(&self, tp: TopicPartition) -> mpsc::UnboundedSender<(Instant, Pending)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let w = worker::Worker::new(self.shared.clone(), tp, rx, CancellationToken::new());
        let task = self.shared.runtime.spawn(w.run());
        let mut tasks = crate::sync::lock(&self.shared.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        tx
    }

    /// Whether a DC1 topic is replicated (include/exclude patterns).
    pub fn wants(&self, topic: &str) -> bool {
        self.shared.filter.wants(topic)
    }

    /// Per DC1 partition, the last DC1 offset known to be in DC2.
    pub fn checkpoint_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        self.shared
            .progress
            .iter()
            .map(|e| (e.key().clone(), e.offset))
            .collect()
    }

    /// The DC2 offset of the record a consumer of `tp` with committed DC1 offset
    /// `committed` reads next, from the batches copied since this instance started.
    pub fn translate(&self, tp: &TopicPartition, committed: i64) -> offset_map::Translated {
        self.shared
            .offsets
            .get(tp)
            .map_or(offset_map::Translated::Unknown, |m| m.translate(committed))
    }

    /// The last DC1 offset of `tp` known to be in DC2.
    pub fn replicated_offset(&self, tp: &TopicPartition) -> Option<i64> {
        self.shared.progress.get(tp).map(|p| p.offset)
    }

    /// Whether a restart would copy a batch DC1 acked at `base` on `tp` (always, when
    /// no `state.dir` is kept: nothing survives a restart then).
    pub fn start_is_durable(&self, tp: &TopicPartition, base: i64) -> bool {
        self.shared.settings.state_dir.is_none()
            || self.shared.tier.is_some()
            || self.shared.durable.covers(tp, base)
    }

    /// Records where each partition in `starts` (partition, acked base) must be resumed
    /// and waits until a checkpoint saying so is on disk; false if it is not (a failed
    /// write, or no write within a few seconds).
    pub async fn make_starts_durable(&self, starts: Vec<(TopicPartition, i64)>) -> bool {
        // In a group, positions live in the group and a partition without one is
        // copied from DC1's log start: nothing to wait for.
        if self.shared.settings.state_dir.is_none()
            || self.shared.tier.is_some()
            || starts.is_empty()
        {
            return true;
        }
        self.shared.make_starts_durable(starts).await
    }

    /// Waits until DC2 holds `tp` up to `offset` (inclusive); false on timeout.
    pub async fn wait_replicated(
        &self,
        tp: &TopicPartition,
        offset: i64,
        timeout: Duration,
    ) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.committed.notified();
            if self.replicated_offset(tp).is_some_and(|o| o >= offset) {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.replicated_offset(tp).is_some_and(|o| o >= offset);
            }
        }
    }
}

impl crate::tee::capture::Sink for ReplicatorHandle {
    fn push(&self, tp: TopicPartition, item: Pending) {
        ReplicatorHandle::push(self, tp, item)
    }

    fn wants(&self, topic: &str) -> bool {
        ReplicatorHandle::wants(self, topic)
    }

    fn wait_replicated(
        &self,
        tp: TopicPartition,
        offset: i64,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move { ReplicatorHandle::wait_replicated(self, &tp, offset, timeout).await })
    }

    fn start_is_durable(&self, tp: &TopicPartition, base: i64) -> bool {
        ReplicatorHandle::start_is_durable(self, tp, base)
    }

    fn make_starts_durable(
        &self,
        starts: Vec<(TopicPartition, i64)>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(ReplicatorHandle::make_starts_durable(self, starts))
    }
}
