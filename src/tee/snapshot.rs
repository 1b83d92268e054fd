//! What the tee publishes about itself, typed: per-partition replication state, the
//! replication group membership and the running totals. The replicator and capture
//! fill these; the status page, `/status.json` and `kafka-tee status` serve them.
//! Each total's counter here is also where its Prometheus metric is emitted, so the
//! metrics are an output of the same event, never an input to the status page.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One DC1 partition (or, with `partition: None`, a whole topic).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    pub topic: String,
    /// `None` for a whole-topic row (reports of older versions have them).
    pub partition: Option<i32>,
    /// The last DC1 offset known to be in DC2.
    pub replicated_offset: Option<i64>,
    /// Offsets acknowledged by DC1 and not yet by DC2 (transaction markers count too).
    pub lag_records: Option<u64>,
    /// Bytes of the batches handed over and not yet in DC2 (offsets read back from
    /// DC1 count 0).
    pub lag_bytes: Option<u64>,
    /// Bytes of captured batches held in memory for DC2. Absent in reports of older
    /// versions.
    #[serde(default)]
    pub pending_bytes: Option<u64>,
    /// Age of the oldest batch still waiting for DC2; 0 when caught up.
    pub oldest_pending_seconds: Option<f64>,
    /// Progress of the replicated offset over the last sampling window (filled in by
    /// the status page, which samples).
    pub records_per_second: Option<f64>,
    /// "starting", "in sync", "replicating", "catching up", "retrying: <why>",
    /// "held: <why>", or "idle" for a partition known only from the checkpoint.
    pub state: String,
    /// The replication group member that replicates this partition, when known.
    /// Absent in reports of versions without replication groups.
    #[serde(default)]
    pub owner: Option<String>,
}

/// This instance's membership of its replication group, as its member loop last saw
/// it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    pub group: String,
    /// The generation this instance's assignment belongs to (-1 before the first).
    pub generation: i32,
    pub member_id: String,
    /// Whether this instance computed the generation's assignment.
    pub leader: bool,
    /// Partitions assigned to this instance in the generation.
    pub owned_partitions: u64,
    /// Rebalances this instance has been through since it started.
    pub rebalances_total: u64,
    /// The last takeover: from a generation forming to the workers of the partitions
    /// new to this instance running (positions read, DC2's tail compared). `None`
    /// before the first.
    pub last_takeover_seconds: Option<f64>,
}

/// The replicator's totals since the start, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicationTotals {
    pub replicated_records: u64,
    pub replicated_bytes: u64,
    /// Batches copied after being read back from DC1.
    pub catchup_batches: u64,
    /// Produce errors DC2 answered.
    pub dc2_errors: u64,
    /// Offsets DC1 acknowledged that can never reach DC2.
    pub data_lost_records: u64,
}

/// The live counters behind [`ReplicationTotals`]; each event also increments its
/// metric.
#[derive(Debug, Default)]
pub struct ReplicationCounters {
    replicated_records: AtomicU64,
    replicated_bytes: AtomicU64,
    catchup_batches: AtomicU64,
    dc2_errors: AtomicU64,
    data_lost_records: AtomicU64,
}

impl ReplicationCounters {
    /// A batch of `records` records and `bytes` bytes is in DC2; `from_dc1` when it
    /// was read back from DC1.
    pub fn copied(&self, records: u64, bytes: u64, from_dc1: bool) {
        self.replicated_records
            .fetch_add(records, Ordering::Relaxed);
        self.replicated_bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("kafka_tee_replicated_batches_total").increment(1);
        metrics::counter!("kafka_tee_replicated_records_total").increment(records);
        metrics::counter!("kafka_tee_replicated_bytes_total").increment(bytes);
        if from_dc1 {
            self.catchup_batches.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("kafka_tee_catchup_batches_total").increment(1);
        }
    }

    /// DC2 answered a Produce with an error (`code`: its metric label).
    pub fn dc2_error(&self, code: String) {
        self.dc2_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kafka_tee_dc2_errors_total", "code" => code).increment(1);
    }

    /// `n` acknowledged offsets can never reach DC2.
    pub fn lost(&self, n: u64) {
        self.data_lost_records.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("kafka_tee_data_lost_records_total").increment(n);
    }

    pub fn totals(&self) -> ReplicationTotals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReplicationTotals {
            replicated_records: get(&self.replicated_records),
            replicated_bytes: get(&self.replicated_bytes),
            catchup_batches: get(&self.catchup_batches),
            dc2_errors: get(&self.dc2_errors),
            data_lost_records: get(&self.data_lost_records),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_to_the_totals() {
        let c = ReplicationCounters::default();
        assert_eq!(c.totals(), ReplicationTotals::default());
        c.copied(10, 1000, false);
        c.copied(5, 400, true);
        c.dc2_error("NOT_LEADER_OR_FOLLOWER".into());
        c.lost(3);
        assert_eq!(
            c.totals(),
            ReplicationTotals {
                replicated_records: 15,
                replicated_bytes: 1400,
                catchup_batches: 1,
                dc2_errors: 1,
                data_lost_records: 3,
            }
        );
    }
}
