//! The replicator in a replication group (`replication.group`): instances started
//! with the same group name share DC1's partitions through Kafka's group protocol
//! (`membership`), and keep their positions as the group's committed offsets.
//!
//! - Ownership: a partition is replicated by the member the group's leader assigned
//!   it to (`assign`), only while that member's lease holds (see
//!   `membership::Lease`). Pushes for other partitions are dropped: their owner finds
//!   them by reading DC1.
//! - Positions: every `checkpoint_interval`, per owned partition, the next DC1 offset
//!   to copy is committed to the group in DC1, with the generation, so a deposed
//!   owner's commit is refused (DC1's is what lag tools show); once that succeeded,
//!   the DC2 offset after the last copied batch is committed to the group in DC2 (for
//!   the DC2 topic), so a deposed owner does not move that one either.
//! - A rebalance: every worker stops taking data in, waits for its batches in flight
//!   to be answered, the final positions are committed, and only then does the member
//!   rejoin (`membership::Hooks::released`). A partition kept from the previous
//!   generation continues from memory; one new to this instance starts where the
//!   committed positions and DC2's tail say (`align`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::membership::{self, Assignment, GroupSettings, Hooks, Lease};
use super::offset_map::OffsetMap;
use super::{Progress, ReplicatorHandle, Shared, align};
use crate::client::group::by_topic;
use crate::client::{Client, ClientError};
use crate::sync::{lock, read, write};
use crate::tee::TopicPartition;
use crate::tee::snapshot::GroupState;

/// The most text of a partition's offset map committed with its position: Apache
/// Kafka refuses metadata over `offset.metadata.max.bytes` (4096 by default).
const COMMITTED_MAP_BYTES: usize = 3000;

/// How often DC1's metadata is read for the partitions the group shares.
const DISCOVER_EVERY: Duration = Duration::from_secs(5);

/// A worker of an owned partition, and how to stop it.
struct Running {
    revoke: CancellationToken,
    task: JoinHandle<()>,
}

/// What the group part of the replicator shares with the rest.
pub(super) struct Tier {
    pub group: String,
    pub lease: Arc<Lease>,
    /// The partitions this instance replicates in the current generation.
    owned: RwLock<HashSet<TopicPartition>>,
    /// The current generation and member id, for commits.
    current: Mutex<Option<Assignment>>,
    /// Per partition, the last generation this instance owned it in.
    tenure: Mutex<HashMap<TopicPartition, i32>>,
    running: Mutex<HashMap<TopicPartition, Running>>,
    /// Positions last committed, so unchanged ones are not committed again.
    committed: Mutex<HashMap<TopicPartition, (i64, Option<i64>)>>,
    rebalances: AtomicU64,
    last_takeover: Mutex<Option<Duration>>,
    /// Every partition's owner as the coordinator last described the group.
    owners: Mutex<HashMap<TopicPartition, String>>,
}

impl Tier {
    pub(super) fn new(group: String) -> Self {
        Self {
            group,
            lease: Arc::new(Lease::default()),
            owned: RwLock::new(HashSet::new()),
            current: Mutex::new(None),
            tenure: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            committed: Mutex::new(HashMap::new()),
            rebalances: AtomicU64::new(0),
            last_takeover: Mutex::new(None),
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this instance replicates `tp` now.
    pub(super) fn owns(&self, tp: &TopicPartition) -> bool {
        self.lease.valid() && read(&self.owned).contains(tp)
    }

    pub(super) fn owner(&self, tp: &TopicPartition) -> Option<String> {
        if self.owns(tp) {
            return lock(&self.current).as_ref().map(|a| a.member_id.clone());
        }
        lock(&self.owners).get(tp).cloned()
    }

    pub(super) fn view(&self) -> GroupState {
        let cur = lock(&self.current).clone();
        GroupState {
            group: self.group.clone(),
            generation: cur.as_ref().map_or(-1, |a| a.generation),
            member_id: cur
                .as_ref()
                .map(|a| a.member_id.clone())
                .unwrap_or_default(),
            leader: cur.as_ref().is_some_and(|a| a.leader),
            owned_partitions: read(&self.owned).len() as u64,
            rebalances_total: self.rebalances.load(Ordering::Relaxed),
            last_takeover_seconds: lock(&self.last_takeover).map(|d| d.as_secs_f64()),
        }
    }
}

/// Takes part in the group until `stop`: discovery, membership, the workers of the
/// owned partitions and the commits. On stop, the owned partitions are released
/// (their final positions committed) and the group left.
pub(super) async fn run(
    h: ReplicatorHandle,
    member_client: Client,
    settings: GroupSettings,
    stop: CancellationToken,
) {
    let sh = h.shared.clone();
    let Some(tier) = sh.tier.as_ref() else {
        return;
    };
    let (parts_tx, parts_rx) = watch::channel(Vec::new());
    let (assign_tx, mut assign_rx) = watch::channel(None::<Assignment>);
    let (released_tx, released_rx) = watch::channel(i32::MIN);
    let member_stop = CancellationToken::new();
    let discovery = tokio::spawn(discover(sh.clone(), parts_tx, stop.clone()));
    let member = tokio::spawn(membership::run_with(
        member_client,
        settings,
        parts_rx,
        assign_tx,
        Hooks {
            lease: tier.lease.clone(),
            released: Some(released_rx),
        },
        member_stop.clone(),
    ));
    let commits = tokio::spawn(commit_loop(sh.clone(), stop.clone()));
    let mut held: Option<Assignment> = None;
    loop {
        let now = assign_rx.borrow_and_update().clone();
        if held.is_some()
            && held != now
            && let Some(old) = held.take()
        {
            release(&h, &old).await;
            released_tx.send_replace(old.generation);
        }
        if let (None, Some(a)) = (&held, now) {
            take(&h, &a).await;
            held = Some(a);
        }
        tokio::select! {
            r = assign_rx.changed() => if r.is_err() { break },
            _ = stop.cancelled() => break,
        }
    }
    if let Some(old) = held.take() {
        release(&h, &old).await;
        released_tx.send_replace(old.generation);
    }
    member_stop.cancel();
    let _ = member.await;
    let _ = discovery.await;
    let _ = commits.await;
}

/// Publishes the partitions of the replicated DC1 topics, for the group's leader.
async fn discover(
    sh: Arc<Shared>,
    tx: watch::Sender<Vec<TopicPartition>>,
    stop: CancellationToken,
) {
    loop {
        match sh.dc1.refresh_metadata(None).await {
            Ok(meta) => {
                let mut found = Vec::new();
                for t in &meta.topics {
                    let Some(name) = t.name.as_ref().filter(|_| t.error_code == 0) else {
                        continue;
                    };
                    if !sh.filter.wants(name.0.as_str()) {
                        continue;
                    }
                    let topic: Arc<str> = Arc::from(name.0.as_str());
                    for p in &t.partitions {
                        found.push(TopicPartition {
                            topic: topic.clone(),
                            partition: p.partition_index,
                        });
                    }
                }
                found.sort();
                tx.send_if_modified(|v| {
                    let changed = *v != found;
                    if changed {
                        *v = std::mem::take(&mut found);
                    }
                    changed
                });
            }
            Err(e) => tracing::warn!("cannot read DC1's topics for the replication group: {e}"),
        }
        if let Some(tier) = sh.tier.as_ref() {
            match super::owners::owners(&sh.dc1, &tier.group).await {
                Ok(found) => {
                    *lock(&tier.owners) = found.into_iter().map(|o| (o.tp, o.member_id)).collect();
                }
                Err(e) => {
                    tracing::debug!(group = %tier.group, error = %e, "cannot describe the replication group")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(DISCOVER_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Starts the workers of a generation's partitions: those kept from the previous
/// generation from memory, the others where the committed positions and DC2's tail
/// say.
async fn take(h: &ReplicatorHandle, a: &Assignment) {
    let sh = &h.shared;
    let Some(tier) = sh.tier.as_ref() else {
        return;
    };
    let began = Instant::now();
    tier.rebalances.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("kafka_tee_group_rebalances_total").increment(1);
    metrics::gauge!("kafka_tee_group_generation").set(f64::from(a.generation));
    *lock(&tier.current) = Some(a.clone());
    let (kept, new): (Vec<TopicPartition>, Vec<TopicPartition>) = {
        let tenure = lock(&tier.tenure);
        a.partitions.iter().cloned().partition(|tp| {
            tenure.get(tp).is_some_and(|&g| g == a.generation - 1) && sh.progress.contains_key(tp)
        })
    };
    let mut starts: Vec<(TopicPartition, Option<align::Start>)> =
        kept.into_iter().map(|tp| (tp, None)).collect();
    let mut committed_maps: HashMap<TopicPartition, String> = HashMap::new();
    if !new.is_empty() {
        let mut backoff = sh.dc1.backoff();
        let found = loop {
            match positions(sh, &tier.group, &new).await {
                Ok(pos) => break Ok(pos),
                // Retried while the membership holds: the partitions have no other
                // owner this generation.
                Err(e) if tier.lease.valid() => {
                    tracing::warn!(group = %tier.group, error = %e, "cannot read the group's committed positions; trying again");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => break Err(e),
            }
        };
        match found {
            Ok(mut pos) => {
                let mut set = tokio::task::JoinSet::new();
                for tp in new {
                    let p = pos.remove(&tp).unwrap_or_default();
                    let (c, d) = (p.dc1, p.dc2);
                    committed_maps.insert(tp.clone(), p.map);
                    let sh = sh.clone();
                    set.spawn(async move {
                        let dc2_topic = sh.dc2_topic(&tp.topic);
                        let mut backoff = sh.dc1.backoff();
                        loop {
                            match align::find_start(&sh.dc1, &sh.dc2, &tp, &dc2_topic, c, d).await
                            {
                                Ok(s) => return (tp, Some(s)),
                                Err(e) => {
                                    tracing::warn!(partition = %tp, error = %e, "cannot find where to continue the partition; trying again");
                                    if !sh.tier.as_ref().is_some_and(|t| t.lease.valid()) {
                                        return (tp, None);
                                    }
                                    tokio::time::sleep(backoff.next_delay()).await;
                                }
                            }
                        }
                    });
                }
                while let Some(r) = set.join_next().await {
                    match r {
                        Ok((tp, Some(s))) => starts.push((tp, Some(s))),
                        Ok((tp, None)) => {
                            tracing::warn!(partition = %tp, "membership in doubt before the partition's start was found; not replicating it this generation")
                        }
                        Err(e) => tracing::error!("takeover task failed: {e}"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(group = %tier.group, error = %e, "membership in doubt before the group's positions were read; the partitions new to this instance wait for the next generation");
            }
        }
    }
    let moved = starts.iter().filter(|(_, s)| s.is_some()).count();
    for (tp, start) in starts {
        if let Some(s) = start {
            let committed_map = committed_maps.remove(&tp).unwrap_or_default();
            take_offset_map(sh, &tp, &committed_map, &s.copied);
            let old = sh.progress.get(&tp).map(|p| *p);
            // The sequence this instance's producer id has reached on the partition
            // is kept: DC2 expects it to continue there.
            let (producer_id, producer_epoch, next_sequence) = old.map_or((-1, -1, 0), |p| {
                (p.producer_id, p.producer_epoch, p.next_sequence)
            });
            sh.progress.insert(
                tp.clone(),
                Progress {
                    offset: s.resume_after,
                    producer_id,
                    producer_epoch,
                    next_sequence,
                    dc2_next: s.dc2_next,
                },
            );
        }
        write(&tier.owned).insert(tp.clone());
        let revoke = CancellationToken::new();
        let (tx, task) = h.spawn_owned_worker(tp.clone(), revoke.clone());
        sh.workers.insert(tp.clone(), tx);
        lock(&tier.running).insert(tp.clone(), Running { revoke, task });
        lock(&tier.tenure).insert(tp, a.generation);
    }
    let owned = read(&tier.owned).len();
    metrics::gauge!("kafka_tee_group_owned_partitions").set(owned as f64);
    if moved > 0 {
        let took = began.elapsed();
        *lock(&tier.last_takeover) = Some(took);
        metrics::gauge!("kafka_tee_group_takeover_seconds").set(took.as_secs_f64());
    }
    tracing::info!(
        group = %tier.group, generation = a.generation, partitions = owned, taken_over = moved,
        took_ms = began.elapsed().as_millis() as u64,
        "replicating this generation's partitions"
    );
}

/// Stops the workers of a generation (after their batches in flight are answered) and
/// commits their final positions.
async fn release(h: &ReplicatorHandle, a: &Assignment) {
    let sh = &h.shared;
    let Some(tier) = sh.tier.as_ref() else {
        return;
    };
    write(&tier.owned).clear();
    metrics::gauge!("kafka_tee_group_owned_partitions").set(0.0);
    let running: Vec<(TopicPartition, Running)> = lock(&tier.running).drain().collect();
    for (tp, r) in &running {
        r.revoke.cancel();
        sh.workers.remove(tp);
    }
    // A worker waits for its answers up to the request timeout.
    let limit = sh.settings.request_timeout + Duration::from_secs(2);
    for (tp, r) in running {
        let abort = r.task.abort_handle();
        if tokio::time::timeout(limit, r.task).await.is_err() {
            tracing::warn!(partition = %tp, "worker did not stop in time");
            abort.abort();
        }
    }
    if let Err(e) = commit(sh, a).await {
        tracing::info!(group = %tier.group, generation = a.generation, error = %e, "final positions not committed (the next owner finds them in DC2's tail)");
    }
    *lock(&tier.current) = None;
    // Another member may commit these partitions before this one owns them again.
    lock(&tier.committed).clear();
    tracing::info!(group = %tier.group, generation = a.generation, "partitions released");
}

/// The offset map of a partition this instance takes over (see
/// `OffsetMap::taken_over`).
fn take_offset_map(sh: &Shared, tp: &TopicPartition, committed: &str, found: &[(i64, i64, i64)]) {
    let local = sh.offsets.remove(tp).map(|(_, m)| m).unwrap_or_default();
    let (map, problem) = OffsetMap::taken_over(local, committed, found);
    if let Some(e) = problem {
        tracing::warn!(partition = %tp, error = %e, "the offset map committed with the position is not used: consumer offsets before this takeover may not be translated");
    }
    tracing::debug!(partition = %tp, runs = map.runs().count(), committed_bytes = committed.len(), "offset map taken over");
    sh.offsets.insert(tp.clone(), map);
}

/// A partition's committed position.
#[derive(Debug, Default)]
struct Position {
    /// The next DC1 offset to copy.
    dc1: Option<i64>,
    /// The DC2 offset where its copy goes.
    dc2: Option<i64>,
    /// The offset map committed with the DC1 position (empty when none).
    map: String,
}

/// The committed positions of `tps`.
async fn positions(
    sh: &Shared,
    group: &str,
    tps: &[TopicPartition],
) -> Result<HashMap<TopicPartition, Position>, ClientError> {
    let dc1_ask = by_topic(tps.iter().map(|tp| (tp.topic.to_string(), tp.partition)));
    let dc2_ask = by_topic(
        tps.iter()
            .map(|tp| (sh.dc2_topic(&tp.topic).to_string(), tp.partition)),
    );
    let coord = sh.dc1.find_group_coordinator(group).await?;
    let dc1 = sh.dc1.fetch_offsets(coord, group, &dc1_ask).await?;
    // DC2's group may not exist yet, or DC2 may not have the topics: no DC2 positions.
    let dc2 = match sh.dc2.find_group_coordinator(group).await {
        Ok(c2) => sh
            .dc2
            .fetch_offsets(c2, group, &dc2_ask)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(group, error = %e, "no positions in DC2");
                Vec::new()
            }),
        Err(e) => {
            tracing::debug!(group, error = %e, "no group coordinator in DC2");
            Vec::new()
        }
    };
    let mut out = HashMap::new();
    for tp in tps {
        let c = dc1
            .iter()
            .find(|(t, p, _, _)| t.as_str() == &*tp.topic && *p == tp.partition);
        let dc2_topic = sh.dc2_topic(&tp.topic);
        let d = dc2
            .iter()
            .find(|(t, p, _, _)| t.as_str() == &*dc2_topic && *p == tp.partition)
            .map(|x| x.2);
        out.insert(
            tp.clone(),
            Position {
                dc1: c.map(|x| x.2),
                dc2: d,
                map: c.and_then(|x| x.3.clone()).unwrap_or_default(),
            },
        );
    }
    Ok(out)
}

/// Commits the positions of the owned partitions that changed: DC1's with the
/// generation, then (only if the coordinator took it) DC2's.
async fn commit(sh: &Shared, a: &Assignment) -> Result<(), ClientError> {
    let Some(tier) = sh.tier.as_ref() else {
        return Ok(());
    };
    let mut changed = Vec::new();
    {
        let last = lock(&tier.committed);
        for tp in &a.partitions {
            let Some(p) = sh.progress.get(tp).map(|p| *p) else {
                continue;
            };
            let pos = (p.offset.saturating_add(1), p.dc2_next);
            if last.get(tp) != Some(&pos) {
                changed.push((tp.clone(), pos));
            }
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let dc1_positions: Vec<_> = changed
        .iter()
        .map(|(tp, (c, _))| {
            let map = sh
                .offsets
                .get(tp)
                .map(|m| m.encode(COMMITTED_MAP_BYTES))
                .filter(|m| !m.is_empty());
            (tp.topic.to_string(), tp.partition, *c, map)
        })
        .collect();
    let c1 = sh.dc1.find_group_coordinator(&tier.group).await?;
    sh.dc1
        .commit_offsets(c1, &tier.group, a.generation, &a.member_id, &dc1_positions)
        .await?;
    let dc2_positions: Vec<_> = changed
        .iter()
        .filter_map(|(tp, (_, d))| {
            d.map(|d| (sh.dc2_topic(&tp.topic).to_string(), tp.partition, d, None))
        })
        .collect();
    if !dc2_positions.is_empty() {
        let c2 = sh.dc2.find_group_coordinator(&tier.group).await?;
        sh.dc2
            .commit_offsets(c2, &tier.group, -1, "", &dc2_positions)
            .await?;
    }
    let mut last = lock(&tier.committed);
    for (tp, pos) in changed {
        last.insert(tp, pos);
    }
    metrics::counter!("kafka_tee_group_commits_total").increment(1);
    Ok(())
}

/// Commits the positions every `checkpoint_interval` while a generation holds.
async fn commit_loop(sh: Arc<Shared>, stop: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(sh.settings.checkpoint_interval) => {}
            _ = stop.cancelled() => return,
        }
        let Some(tier) = sh.tier.as_ref() else {
            return;
        };
        let Some(a) = lock(&tier.current).clone() else {
            continue;
        };
        if !tier.lease.valid() {
            continue;
        }
        match commit(&sh, &a).await {
            Ok(()) => failing = false,
            Err(e) => {
                metrics::counter!("kafka_tee_group_commit_errors_total").increment(1);
                if !failing {
                    tracing::warn!(group = %tier.group, error = %e, "cannot commit the replication positions");
                    failing = true;
                }
            }
        }
    }
}
