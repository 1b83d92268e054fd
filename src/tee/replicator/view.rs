//! What the replicator publishes about itself: per-partition rows, totals and the
//! replication group's view for the status page, and the per-topic age and byte
//! gauges.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{ReplicatorHandle, Snapshot};
use crate::tee::TopicPartition;
use crate::tee::snapshot::{GroupState, PartitionState, ReplicationTotals};

impl ReplicatorHandle {
    /// Every partition the replicator knows: those with traffic since the start, then
    /// those known only from the checkpoint.
    pub fn partitions(&self) -> Vec<PartitionState> {
        let now = Instant::now();
        let row = |tp: &TopicPartition, s: Snapshot| PartitionState {
            topic: tp.topic.to_string(),
            partition: Some(tp.partition),
            replicated_offset: s.replicated_offset,
            lag_records: Some(s.lag_offsets),
            lag_bytes: Some(s.lag_bytes),
            pending_bytes: Some(s.pending_bytes),
            oldest_pending_seconds: Some(
                s.oldest_pending_since
                    .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
            ),
            records_per_second: None,
            state: s.state,
            owner: self.owner(tp),
        };
        let mut out: Vec<(TopicPartition, PartitionState)> = self
            .shared
            .states
            .iter()
            .map(|e| {
                let s = crate::sync::lock(e.value()).clone();
                (e.key().clone(), row(e.key(), s))
            })
            .collect();
        for e in self.shared.progress.iter() {
            if !self.shared.states.contains_key(e.key()) {
                let idle = Snapshot::idle(Some(e.offset));
                out.push((e.key().clone(), row(e.key(), idle)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, row)| row).collect()
    }

    /// The totals since the start: records and bytes copied, catch-up batches, DC2
    /// errors, offsets lost.
    pub fn totals(&self) -> ReplicationTotals {
        self.shared.counters.totals()
    }

    /// The replication group as this instance sees it (None without a group).
    pub fn group(&self) -> Option<GroupState> {
        self.shared.tier.as_ref().map(|t| t.view())
    }

    /// The member of the replication group that replicates `tp`: this instance's
    /// member id for its own partitions; for the others, what the coordinator reports
    /// (Apache Kafka does; Tansu 0.6 reports no assignments). None without a group.
    pub fn owner(&self, tp: &TopicPartition) -> Option<String> {
        self.shared.tier.as_ref().and_then(|t| t.owner(tp))
    }
}

/// How often the per-topic age and byte gauges are recomputed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Publishes, per DC1 topic, the age of the oldest data not yet in DC2 and the bytes
/// waiting, from the partitions' snapshots. A topic that no longer has any is set to 0.
pub(super) async fn gauges_loop(handle: ReplicatorHandle, stop: CancellationToken) {
    let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let mut topics: HashMap<String, (f64, u64)> = HashMap::new();
        for p in handle.partitions() {
            let e = topics.entry(p.topic).or_default();
            e.0 = e.0.max(p.oldest_pending_seconds.unwrap_or(0.0));
            e.1 += p.lag_bytes.unwrap_or(0);
        }
        for gone in known.iter().filter(|t| !topics.contains_key(*t)) {
            topics_gauges(gone, 0.0, 0);
        }
        for (topic, (age, bytes)) in &topics {
            topics_gauges(topic, *age, *bytes);
        }
        known = topics.into_keys().collect();
        tokio::select! {
            _ = tokio::time::sleep(GAUGES_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

fn topics_gauges(topic: &str, oldest_age: f64, lag_bytes: u64) {
    metrics::gauge!("kafka_tee_replication_oldest_pending_seconds", "topic" => topic.to_string())
        .set(oldest_age);
    metrics::gauge!("kafka_tee_replication_lag_bytes", "topic" => topic.to_string())
        .set(lag_bytes as f64);
}
