//! What a restart will know: the checkpoint task, and the rule that a partition's start
//! is on disk before its producer hears DC1's acknowledgement.
//!
//! The periodic checkpoint names only partitions that DC2 has acknowledged something
//! for. A partition whose first batches DC1 acked just before a crash (or while DC2 was
//! away) would be unknown to the restarted proxy, and those batches never copied. So the
//! first acknowledgement of a partition that no checkpoint on disk covers waits: its
//! DC1 offset minus one is recorded as the partition's floor, a checkpoint is written at
//! once (one write serves every partition registered meanwhile), and only then does the
//! producer get its answer. A restart resumes such a partition after its floor and reads
//! the rest back from DC1. This costs one checkpoint write per new partition, once per
//! state directory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::checkpoint::{Checkpoint, PartitionCheckpoint};
use crate::sync::lock;
use crate::tee::TopicPartition;

/// How long a producer's answer waits for its partition's floor to reach the disk.
/// Past it the answer goes out anyway, logged and counted: a stuck disk must not stop
/// DC1 producers.
const START_WAIT: Duration = Duration::from_secs(5);

/// The most text one partition's offset map takes in the checkpoint file (the newest
/// runs are kept; a partition without transactions needs a few bytes).
const CHECKPOINT_MAP_BYTES: usize = 64 * 1024;

/// What the last checkpoint on disk says about one partition.
#[derive(Debug, Clone, Copy)]
struct OnDisk {
    /// The offset a restart resumes after.
    offset: i64,
    /// The offset comes from DC2's acknowledgements (everything up to it is copied),
    /// not from a floor (nothing at or after `offset + 1` is copied yet).
    replicated: bool,
}

#[derive(Debug, Default)]
struct Floors {
    /// Partitions DC2 has not acknowledged anything for yet: the lowest DC1 offset
    /// acked through this proxy, minus one.
    by_partition: HashMap<TopicPartition, i64>,
    /// Checkpoint writes begun; a write takes its snapshot after counting itself.
    begun: u64,
}

/// The checkpoint's view of what is on disk, and the waits on it.
#[derive(Debug)]
pub(super) struct Durability {
    floors: Mutex<Floors>,
    on_disk: DashMap<TopicPartition, OnDisk>,
    /// The number of the latest write attempt that finished (written or failed).
    finished: watch::Sender<u64>,
    write_now: Notify,
    /// One write at a time, so files land in the order their snapshots were taken.
    writing: tokio::sync::Mutex<()>,
}

impl Durability {
    /// Starts from the checkpoint loaded at start-up (or none).
    pub(super) fn new(loaded: &[PartitionCheckpoint]) -> Self {
        let on_disk = DashMap::new();
        for p in loaded {
            on_disk.insert(
                TopicPartition {
                    topic: p.topic.as_str().into(),
                    partition: p.partition,
                },
                OnDisk {
                    offset: p.offset,
                    replicated: false,
                },
            );
        }
        Self {
            floors: Mutex::new(Floors::default()),
            on_disk,
            finished: watch::Sender::new(0),
            write_now: Notify::new(),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether a restart would copy a batch DC1 acked at `base`: the checkpoint on
    /// disk resumes the partition before it, or DC2 already acknowledged past it.
    pub(super) fn covers(&self, tp: &TopicPartition, base: i64) -> bool {
        self.on_disk
            .get(tp)
            .is_some_and(|d| d.replicated || d.offset < base)
    }

    /// Records the floors of `starts` (partition, acked base offset); returns the
    /// number of the last write begun, which cannot contain them.
    fn register(&self, starts: &[(TopicPartition, i64)]) -> u64 {
        let mut f = lock(&self.floors);
        for (tp, base) in starts {
            let floor = base.saturating_sub(1);
            f.by_partition
                .entry(tp.clone())
                .and_modify(|x| *x = (*x).min(floor))
                .or_insert(floor);
        }
        f.begun
    }

    /// Counts a write begun and returns its number with the floors it must contain;
    /// floors of partitions that now have DC2 progress are dropped.
    fn begin_write(
        &self,
        has_progress: impl Fn(&TopicPartition) -> bool,
    ) -> (u64, HashMap<TopicPartition, i64>) {
        let mut f = lock(&self.floors);
        f.begun += 1;
        f.by_partition.retain(|tp, _| !has_progress(tp));
        (f.begun, f.by_partition.clone())
    }

    /// A write numbered `number` finished; `said` is what it put on disk, when it did.
    fn finish_write(&self, number: u64, said: Option<Vec<(TopicPartition, OnDisk)>>) {
        for (tp, d) in said.into_iter().flatten() {
            self.on_disk.insert(tp, d);
        }
        self.finished.send_modify(|n| *n = (*n).max(number));
    }
}

impl Shared {
    /// Makes every (partition, base) in `starts` covered on disk; false when a write
    /// failed or `START_WAIT` passed first.
    pub(super) async fn make_starts_durable(&self, starts: Vec<(TopicPartition, i64)>) -> bool {
        let d = &self.durable;
        let begun = d.register(&starts);
        self.progress_version.fetch_add(1, Ordering::AcqRel);
        d.write_soon();
        let mut rx = d.finished.subscribe();
        let _ = tokio::time::timeout(START_WAIT, rx.wait_for(|&n| n > begun)).await;
        starts.iter().all(|(tp, base)| d.covers(tp, *base))
    }

    /// The checkpoint to write: DC2's progress per partition, and the floors of
    /// partitions without any; with the write's number and what it says per partition.
    fn snapshot(&self) -> (u64, Checkpoint, Vec<(TopicPartition, OnDisk)>) {
        let (number, floors) = self
            .durable
            .begin_write(|tp| self.progress.contains_key(tp));
        let id = self.identity.peek();
        let (producer_id, producer_epoch) = id.map_or((-1, -1), |i| (i.producer_id, i.epoch));
        let mut said = Vec::new();
        let mut partitions = Vec::new();
        for e in self.progress.iter() {
            said.push((
                e.key().clone(),
                OnDisk {
                    offset: e.offset,
                    replicated: true,
                },
            ));
            partitions.push(PartitionCheckpoint {
                topic: e.key().topic.to_string(),
                partition: e.key().partition,
                offset: e.offset,
                producer_id: e.producer_id,
                producer_epoch: e.producer_epoch,
                next_sequence: e.next_sequence,
                offset_map: self
                    .offsets
                    .get(e.key())
                    .map(|m| m.encode(CHECKPOINT_MAP_BYTES))
                    .unwrap_or_default(),
            });
        }
        for (tp, floor) in floors {
            // Nothing of it acknowledged by DC2: its sequence under the current
            // identity starts at 0, as a restart will number it.
            partitions.push(PartitionCheckpoint {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                offset: floor,
                producer_id,
                producer_epoch,
                next_sequence: 0,
                offset_map: String::new(),
            });
            said.push((
                tp,
                OnDisk {
                    offset: floor,
                    replicated: false,
                },
            ));
        }
        (
            number,
            Checkpoint::new(producer_id, producer_epoch, partitions),
            said,
        )
    }
}

impl Durability {
    /// Asks the checkpoint task for a write now rather than at the next interval.
    pub(super) fn write_soon(&self) {
        self.write_now.notify_one();
    }
}

/// Writes the checkpoint every `checkpoint_interval` when something changed, and at
/// once when a new partition's floor is waiting for the disk.
pub(super) async fn checkpoint_loop(
    sh: std::sync::Arc<Shared>,
    dir: std::path::PathBuf,
    stop: CancellationToken,
) {
    let mut written = u64::MAX;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(sh.settings.checkpoint_interval) => {}
            _ = sh.durable.write_now.notified() => {}
            _ = stop.cancelled() => return,
        }
        let version = sh.progress_version.load(Ordering::Acquire);
        if version == written {
            continue;
        }
        match write_checkpoint(&sh, &dir).await {
            Ok(()) => {
                written = version;
                if failing {
                    tracing::info!("checkpoint written again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "cannot write the replicator checkpoint");
                    failing = true;
                }
            }
        }
    }
}

/// One checkpoint write; whatever the outcome, waiters on it are told it finished.
pub(super) async fn write_checkpoint(sh: &Shared, dir: &Path) -> anyhow::Result<()> {
    let _one = sh.durable.writing.lock().await;
    let (number, cp, said) = sh.snapshot();
    let dir = dir.to_path_buf();
    let res = tokio::task::spawn_blocking(move || cp.store(&dir)).await;
    let out = match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("checkpoint writer failed: {e}")),
    };
    if out.is_ok() {
        metrics::counter!("kafka_tee_checkpoint_writes_total").increment(1);
        sh.durable.finish_write(number, Some(said));
    } else {
        metrics::counter!("kafka_tee_checkpoint_errors_total").increment(1);
        sh.durable.finish_write(number, None);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition: p,
        }
    }

    /// One write that succeeds and puts the floors it took on disk.
    fn write(d: &Durability, has_progress: impl Fn(&TopicPartition) -> bool) -> u64 {
        let (number, floors) = d.begin_write(has_progress);
        let said = floors
            .into_iter()
            .map(|(tp, offset)| {
                (
                    tp,
                    OnDisk {
                        offset,
                        replicated: false,
                    },
                )
            })
            .collect();
        d.finish_write(number, Some(said));
        number
    }

    #[test]
    fn a_new_partition_is_covered_once_its_floor_is_written() {
        let d = Durability::new(&[]);
        assert!(!d.covers(&tp(0), 100), "unknown partition");
        let begun = d.register(&[(tp(0), 100)]);
        assert!(!d.covers(&tp(0), 100), "registered, not yet written");
        let number = write(&d, |_| false);
        assert!(
            number > begun,
            "the write after registering contains the floor"
        );
        assert!(d.covers(&tp(0), 100));
        assert!(d.covers(&tp(0), 150), "later offsets are resumed too");
        // An answer for an older request (in flight meanwhile) got a lower offset: the
        // floor on disk does not cover it until it is lowered and written again.
        assert!(!d.covers(&tp(0), 40));
        d.register(&[(tp(0), 40)]);
        d.register(&[(tp(0), 70)]);
        write(&d, |_| false);
        assert!(d.covers(&tp(0), 40), "the floor only moves down");
        assert!(!d.covers(&tp(1), 0), "other partitions are not covered");
    }

    #[test]
    fn a_failed_write_covers_nothing_but_still_finishes() {
        let d = Durability::new(&[]);
        let begun = d.register(&[(tp(0), 5)]);
        let (number, _) = d.begin_write(|_| false);
        d.finish_write(number, None);
        assert!(*d.finished.borrow() > begun, "waiters are released");
        assert!(!d.covers(&tp(0), 5));
    }

    #[test]
    fn floors_give_way_to_progress_and_loaded_partitions_are_covered() {
        let d = Durability::new(&[PartitionCheckpoint {
            topic: "t".into(),
            partition: 2,
            offset: 9,
            producer_id: 1,
            producer_epoch: 0,
            next_sequence: 3,
            offset_map: String::new(),
        }]);
        assert!(d.covers(&tp(2), 10), "resumed after offset 9");
        d.register(&[(tp(0), 5)]);
        let (_, floors) = d.begin_write(|t| *t == tp(0));
        assert!(floors.is_empty(), "DC2 progress replaces the floor");
    }
}
