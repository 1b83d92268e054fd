//! Sharing one DC1 cluster's replication between several kafka-tee instances
//! (`replication.instances`): which instance owns a partition, and the task that finds
//! the owned partitions in DC1's metadata.
//!
//! Every instance forwards every client's requests, but hands the replicator only the
//! batches of partitions it owns. An owned partition that producers reach through other
//! instances may never see a batch acknowledged through this one, so its worker is
//! started from DC1's metadata instead, and the worker's look at DC1's end (see
//! `Worker::follow_dc1`) copies what the others carried.

use std::sync::Arc;
use std::time::Duration;

use super::ReplicatorHandle;
use crate::client::{EARLIEST, IsolationLevel};
use crate::tee::{Pending, TopicPartition};

/// How often DC1's metadata is read for partitions this instance owns and has no
/// worker for.
const DISCOVER_EVERY: Duration = Duration::from_secs(10);

/// The instance (0-based, below `instances`) that replicates a partition. FNV-1a of the
/// topic name, plus the partition, so a topic's partitions spread over the instances;
/// the same on every instance and every version.
pub fn owner(topic: &str, partition: i32, instances: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let n = u64::from(instances.max(1));
    (h.wrapping_add(u64::from(partition.unsigned_abs())) % n) as u32
}

/// Starts a worker for each owned partition of a replicated DC1 topic that has none,
/// every `DISCOVER_EVERY` until the replicator drains. Where it starts: at the log
/// start, so nothing the other instances carried is missed (a worker started by a
/// batch acknowledged here looks the log start up itself, see `Worker::anchor`); but
/// on a first start (`fresh`: no checkpoint was loaded), partitions DC1 already has at
/// the first successful look start at their end, as a single instance starts at its
/// first batch, rather than copying their whole history.
pub(super) async fn run(h: ReplicatorHandle, fresh: bool) {
    let sh = h.shared.clone();
    let mut first = true;
    loop {
        match discover_once(&h, fresh && first).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(partitions = n, "replicating partitions found in DC1");
                }
                if first && fresh {
                    // A checkpoint on disk says this instance has started before: a
                    // restart then starts unknown partitions at the log start.
                    sh.durable.write_soon();
                }
                first = false;
                sh.from_log_start
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            Err(e) => tracing::warn!("cannot read DC1's topics to find owned partitions: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(DISCOVER_EVERY) => {}
            _ = sh.draining.cancelled() => return,
        }
    }
}

/// One look at DC1's metadata; returns how many workers it started.
async fn discover_once(
    h: &ReplicatorHandle,
    from_end: bool,
) -> Result<usize, crate::client::ClientError> {
    let sh = &h.shared;
    let meta = sh.dc1.refresh_metadata(None).await?;
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
            let tp = TopicPartition {
                topic: topic.clone(),
                partition: p.partition_index,
            };
            if sh.owns(&tp) && !sh.workers.contains_key(&tp) {
                found.push(tp);
            }
        }
    }
    let mut started = Vec::new();
    for tp in found {
        // The end is the last stable offset: a transaction still open is copied once
        // it commits.
        let at = if from_end {
            super::tail::partition_end(
                &sh.dc1,
                &tp.topic,
                tp.partition,
                0,
                IsolationLevel::ReadCommitted,
            )
            .await
        } else {
            sh.dc1.list_offset(&tp.topic, tp.partition, EARLIEST).await
        };
        let at = match at {
            Ok(at) => at,
            Err(e) => {
                tracing::debug!(partition = %tp, error = %e, "cannot read where the partition starts in DC1");
                continue;
            }
        };
        tracing::debug!(partition = %tp, offset = at, "replicating an owned partition from DC1's metadata");
        // An empty range: it only says where the partition starts.
        h.push(
            tp.clone(),
            Pending::Gap {
                from: at,
                to: at - 1,
            },
        );
        started.push((tp, at));
    }
    let n = started.len();
    if n > 0 && !h.make_starts_durable(started).await {
        tracing::warn!("the start of partitions found in DC1 is not in a checkpoint yet");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_stable_and_spread() {
        assert_eq!(owner("orders", 0, 1), 0);
        // Fixed values: every instance and version must agree.
        let a: Vec<u32> = (0..8).map(|p| owner("orders", p, 3)).collect();
        assert_eq!(a, [1, 2, 0, 1, 2, 0, 1, 2]);
        // Consecutive partitions of a topic go to consecutive instances.
        for w in a.windows(2) {
            assert_eq!(w[1], (w[0] + 1) % 3);
        }
        let mut counts = [0usize; 4];
        for t in 0..200 {
            counts[owner(&format!("topic-{t}"), 0, 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 25), "{counts:?}");
    }
}
