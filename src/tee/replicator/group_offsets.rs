//! Consumer group offsets copied to DC2, so a group that consumed in DC1 can move to
//! DC2 and continue with the next record it had not processed.
//!
//! Every `interval`, the DC1 groups that `include` / `exclude` select are listed
//! (ListGroups on every broker) and their committed offsets read (OffsetFetch). Each
//! committed offset of a partition this instance replicates is translated through the
//! partition's offset map (`offset_map`): the DC2 offset of the same next record,
//! exact; an offset whose record is not in DC2 yet goes to DC2's end as far as copied,
//! and moves on at a later round. The result is committed to the group of the same
//! name in DC2, outside any generation, and only:
//! - when the DC2 group has no members (a live DC2 group is left alone; Kafka would
//!   refuse the commit anyway);
//! - forwards, unless the DC1 offset itself went back since the last round (a reset).
//!
//! In a replication group each member syncs the partitions it owns (only the owner
//! knows where the newest batches went); the others' are theirs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use regex::Regex;
use tokio_util::sync::CancellationToken;

use super::catchup::{CatchUp, Skipped, Step};
use super::offset_map::Translated;
use super::tail::fingerprint;
use super::tail::{partition_bounds, scan_batches};
use super::{ReplicatorHandle, Shared};
use crate::client::group::{Committed, by_topic};
use crate::client::{ClientError, IsolationLevel};
use crate::tee::TopicPartition;

/// Which groups are synced, and how often.
#[derive(Debug, Clone)]
pub struct Selection {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    pub interval: Duration,
}

impl Selection {
    /// None when no group is included (the sync is off). Patterns are checked by
    /// `Config::validate`; a bad one here is an error all the same.
    pub fn new(cfg: &crate::config::GroupOffsetsConfig) -> anyhow::Result<Option<Self>> {
        if cfg.include.is_empty() {
            return Ok(None);
        }
        let compile = |list: &[String]| -> anyhow::Result<Vec<Regex>> {
            list.iter()
                .map(|p| Regex::new(p).map_err(|e| anyhow::anyhow!("bad group pattern {p:?}: {e}")))
                .collect()
        };
        Ok(Some(Self {
            include: compile(&cfg.include)?,
            exclude: compile(&cfg.exclude)?,
            interval: Duration::from_millis(cfg.interval_ms.max(100)),
        }))
    }

    pub fn wants(&self, group: &str) -> bool {
        self.include.iter().any(|r| r.is_match(group))
            && !self.exclude.iter().any(|r| r.is_match(group))
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Groups whose partitions were brought up to date in DC2.
    pub groups: usize,
    /// Partitions whose DC2 offset is the translation of DC1's (committed this round
    /// or already there).
    pub partitions: usize,
    /// Groups left alone because they have members in DC2.
    pub live: usize,
    /// Committed offsets older than what the offset map knows.
    pub untranslated: usize,
    /// Groups that could not be synced this round (the error is logged).
    pub failed: usize,
}

/// What a round remembers for the next: per (group, partition), the DC1 offset seen;
/// per (partition, DC1 offset), what a search of DC2 found for an offset older than
/// the offset map (see `find_older`).
#[derive(Debug, Default)]
struct Memory {
    dc1_seen: HashMap<(String, TopicPartition), i64>,
    older: HashMap<(TopicPartition, i64), Option<i64>>,
}

/// Entries of `Memory::older` kept (the oldest go first past it).
const MAX_OLDER: usize = 4096;
/// The most of DC2 read to find the copy of a batch older than the offset map.
const MAX_SEARCH_BYTES: usize = 64 * 1024 * 1024;

/// Syncs every `interval` until `stop`.
pub(super) async fn run(h: ReplicatorHandle, sel: Selection, stop: CancellationToken) {
    let mut memory = Memory::default();
    let mut last_ok: Option<Instant> = None;
    let mut next = Instant::now() + sel.interval;
    tracing::info!(
        interval_ms = sel.interval.as_millis() as u64,
        "consumer group offsets are synced to DC2"
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1).min(sel.interval)) => {}
            _ = stop.cancelled() => return,
        }
        if Instant::now() >= next {
            next = Instant::now() + sel.interval;
            match sync_round(&h.shared, &sel, &mut memory).await {
                Ok(r) => {
                    metrics::gauge!("kafka_tee_consumer_offsets_groups_synced")
                        .set(r.groups as f64);
                    metrics::gauge!("kafka_tee_consumer_offsets_partitions_synced")
                        .set(r.partitions as f64);
                    metrics::gauge!("kafka_tee_consumer_offsets_live_groups_skipped")
                        .set(r.live as f64);
                    metrics::gauge!("kafka_tee_consumer_offsets_untranslated_partitions")
                        .set(r.untranslated as f64);
                    if r.failed == 0 {
                        last_ok = Some(Instant::now());
                    }
                }
                Err(e) => {
                    metrics::counter!("kafka_tee_consumer_offsets_sync_errors_total").increment(1);
                    tracing::warn!(error = %e, "cannot list DC1's consumer groups; their offsets are not synced this round");
                }
            }
        }
        if let Some(t) = last_ok {
            metrics::gauge!("kafka_tee_consumer_offsets_last_sync_age_seconds")
                .set(t.elapsed().as_secs_f64());
        }
    }
}

/// One round over every selected group.
async fn sync_round(
    sh: &Shared,
    sel: &Selection,
    memory: &mut Memory,
) -> Result<Round, ClientError> {
    let own = sh.tier.as_ref().map(|t| t.group.clone());
    let groups = sh.dc1.list_groups().await?;
    let mut round = Round::default();
    for (group, _) in groups {
        if !sel.wants(&group) || own.as_deref() == Some(group.as_str()) {
            continue;
        }
        match sync_group(sh, &group, memory, &mut round).await {
            Ok(()) => {}
            Err(e) => {
                round.failed += 1;
                metrics::counter!("kafka_tee_consumer_offsets_sync_errors_total").increment(1);
                tracing::warn!(group = %group, error = %e, "consumer group offsets not synced this round");
            }
        }
    }
    Ok(round)
}

/// Whether this instance translates `tp`'s offsets: it replicates the topic and, in a
/// replication group, owns the partition.
fn translates(sh: &Shared, tp: &TopicPartition) -> bool {
    sh.filter.wants(&tp.topic) && sh.tier.as_ref().is_none_or(|t| t.owns(tp))
}

/// What to commit for one DC1 committed offset, given DC2's; None: leave DC2's.
fn decide(translated: Translated, dc2: Option<i64>, reset: bool) -> Option<i64> {
    let target = match translated {
        Translated::Exact(o) | Translated::NotYetCopied(o) => o,
        Translated::Unknown => return None,
    };
    match dc2 {
        Some(d) if d == target => None,
        Some(d) if d > target && !reset => None,
        _ => Some(target),
    }
}

async fn sync_group(
    sh: &Shared,
    group: &str,
    memory: &mut Memory,
    round: &mut Round,
) -> Result<(), ClientError> {
    // Only the partitions this instance has a map for are asked about (an OffsetFetch
    // of all topics is also what Tansu 0.6 answers with a malformed response).
    let ask = by_topic(
        sh.offsets
            .iter()
            .filter(|e| translates(sh, e.key()))
            .map(|e| (e.key().topic.to_string(), e.key().partition))
            .collect::<Vec<_>>(),
    );
    if ask.is_empty() {
        return Ok(());
    }
    let c1 = sh.dc1.find_group_coordinator(group).await?;
    let mine: Vec<(TopicPartition, Committed)> = sh
        .dc1
        .fetch_offsets(c1, group, &ask)
        .await?
        .into_iter()
        .map(|c| {
            let tp = TopicPartition {
                topic: c.0.as_str().into(),
                partition: c.1,
            };
            (tp, c)
        })
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    let c2 = sh.dc2.find_group_coordinator(group).await?;
    let members = match sh.dc2.describe_group(c2, group).await {
        Ok(d) => d.members.len(),
        Err(ClientError::Kafka {
            error: kafka_protocol::ResponseError::GroupIdNotFound,
            ..
        }) => 0,
        Err(e) => return Err(e),
    };
    if members > 0 {
        round.live += 1;
        tracing::debug!(
            group,
            members,
            "the group has members in DC2; its offsets there are left alone"
        );
        return Ok(());
    }
    let ask = by_topic(
        mine.iter()
            .map(|(tp, _)| (sh.dc2_topic(&tp.topic).to_string(), tp.partition)),
    );
    let dc2_now = sh
        .dc2
        .fetch_offsets(c2, group, &ask)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(group, error = %e, "no offsets of the group in DC2 yet");
            Vec::new()
        });
    let mut commits: Vec<Committed> = Vec::new();
    let mut in_sync = 0;
    let mut seen = Vec::new();
    for (tp, (_, _, dc1_offset, meta)) in mine {
        let dc2_topic = sh.dc2_topic(&tp.topic);
        let dc2 = dc2_now
            .iter()
            .find(|(t, p, _, _)| t.as_str() == &*dc2_topic && *p == tp.partition)
            .map(|x| x.2);
        let key = (group.to_string(), tp.clone());
        let reset = memory
            .dc1_seen
            .get(&key)
            .is_some_and(|&prev| dc1_offset < prev);
        let translated = translate(sh, &tp, dc1_offset, &mut memory.older).await?;
        if translated == Translated::Unknown {
            round.untranslated += 1;
            tracing::debug!(group, partition = %tp, dc1_offset, "committed offset older than the offset map and its batch not found in DC2; not synced");
            continue;
        }
        match decide(translated, dc2, reset) {
            Some(target) => {
                if reset {
                    tracing::info!(group, partition = %tp, dc1_offset, dc2_offset = target, "the group's DC1 offset went back (a reset); its DC2 offset follows");
                }
                commits.push((dc2_topic.to_string(), tp.partition, target, meta));
            }
            None => in_sync += 1,
        }
        seen.push((key, dc1_offset));
    }
    if !commits.is_empty() {
        sh.dc2.commit_offsets(c2, group, -1, "", &commits).await?;
        metrics::counter!("kafka_tee_consumer_offsets_commits_total")
            .increment(commits.len() as u64);
        tracing::debug!(
            group,
            partitions = commits.len(),
            "consumer group offsets committed in DC2"
        );
    }
    // Only once DC2 took them: a failed round is tried again with the same view.
    for (key, o) in seen {
        memory.dc1_seen.insert(key, o);
    }
    round.groups += 1;
    round.partitions += in_sync + commits.len();
    Ok(())
}

/// What `committed` on `tp` translates to: by the offset map; before the map's first
/// run (or, with nothing copied yet, the partition's resume point), where that anchor
/// says or by finding the batch in DC2 (`find_older`, remembered in `older`).
async fn translate(
    sh: &Shared,
    tp: &TopicPartition,
    committed: i64,
    older: &mut HashMap<(TopicPartition, i64), Option<i64>>,
) -> Result<Translated, ClientError> {
    let (translated, first) = sh.offsets.get(tp).map_or((Translated::Unknown, None), |m| {
        let first = m
            .runs()
            .next()
            .map(|r| (r.dc1_first, r.dc1_first + r.shift));
        (m.translate(committed), first)
    });
    // Before anything is copied, where the partition resumed is known exactly.
    let first = first.or_else(|| {
        sh.progress
            .get(tp)
            .and_then(|p| p.dc2_next.map(|d| (p.offset + 1, d)))
    });
    let Some(first) = first.filter(|_| translated == Translated::Unknown) else {
        return Ok(translated);
    };
    if committed == first.0 {
        return Ok(Translated::Exact(first.1));
    }
    if committed > first.0 {
        return Ok(Translated::Unknown);
    }
    let key = (tp.clone(), committed);
    let found = match older.get(&key) {
        Some(f) => *f,
        None => {
            let f = find_older(sh, tp, committed, first).await?;
            if older.len() >= MAX_OLDER {
                older.clear();
            }
            older.insert(key, f);
            f
        }
    };
    Ok(found.map_or(Translated::Unknown, Translated::Exact))
}

/// The DC2 offset of the record a consumer with committed DC1 offset `committed`
/// reads next, where `committed` is older than `dc1_first`, the first DC1 offset the
/// offset map knows (at DC2 offset `dc2_first`): the map was kept only from a restart
/// or a takeover on (a broker that keeps no commit metadata, an empty disk), or its
/// oldest runs were dropped.
///
/// Batches are copied whole, in DC1 order, so the batch that holds the record (the
/// first batch a copy would send from `committed` on: committed data, no markers) is
/// in DC2 before `dc2_first`, byte for byte but for its producer fields.
/// DC2 is searched back from there, in growing windows, for a batch with its
/// fingerprint (`tail::fingerprint`). One match: the record's DC2 offset. None, or
/// more than one in the window where one is found: None (not translated, never
/// guessed).
async fn find_older(
    sh: &Shared,
    tp: &TopicPartition,
    committed: i64,
    (dc1_first, dc2_first): (i64, i64),
) -> Result<Option<i64>, ClientError> {
    // The DC1 batch: read from `committed` until a batch to copy turns up.
    let mut c = CatchUp::new(committed, dc1_first - 1);
    let mut wanted = None;
    let mut waits = 0;
    while !c.done() && wanted.is_none() {
        let mut skipped = Skipped::default();
        match c
            .step(&sh.dc1, &tp.topic, tp.partition, &mut skipped)
            .await?
        {
            Step::Batches(batches) => wanted = batches.into_iter().next(),
            Step::Wait if waits < 20 => {
                waits += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Step::Wait => return Ok(None),
            Step::Lost { .. } => return Ok(None),
        }
    }
    let Some(batch) = wanted else {
        // Nothing to copy between `committed` and the first run: the next record a
        // consumer reads is the run's first.
        return Ok(Some(dc2_first));
    };
    let print = fingerprint(&batch);
    let into = (committed - batch.base_offset()).max(0);
    let dc2_topic = sh.dc2_topic(&tp.topic);
    let (log_start, _) = partition_bounds(
        &sh.dc2,
        &dc2_topic,
        tp.partition,
        dc2_first,
        IsolationLevel::ReadUncommitted,
    )
    .await?;
    // DC2 has about as many offsets before the run as DC1 has from the batch on.
    let mut span = (dc1_first - batch.base_offset()).max(1) + 64;
    loop {
        let from = dc2_first.saturating_sub(span).max(log_start);
        let (seen, _) = scan_batches(
            &sh.dc2,
            &dc2_topic,
            tp.partition,
            from,
            dc2_first,
            MAX_SEARCH_BYTES,
        )
        .await?;
        let matches: Vec<i64> = seen
            .iter()
            .filter(|(p, _)| *p == print)
            .map(|(_, base)| *base)
            .collect();
        match matches.as_slice() {
            [base] => return Ok(Some(base + into)),
            [] if from > log_start => span = span.saturating_mul(4),
            _ => {
                tracing::debug!(partition = %tp, committed, matches = matches.len(), "the batch of an offset older than the offset map is not found once in DC2");
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_only_move_forward_unless_dc1_was_reset() {
        assert_eq!(decide(Translated::Exact(10), None, false), Some(10));
        assert_eq!(decide(Translated::Exact(10), Some(4), false), Some(10));
        assert_eq!(decide(Translated::Exact(10), Some(10), false), None);
        assert_eq!(
            decide(Translated::Exact(10), Some(12), false),
            None,
            "never back"
        );
        assert_eq!(
            decide(Translated::Exact(10), Some(12), true),
            Some(10),
            "a reset"
        );
        assert_eq!(decide(Translated::NotYetCopied(7), Some(3), false), Some(7));
        assert_eq!(decide(Translated::Unknown, None, false), None);
    }

    #[test]
    fn groups_are_selected_by_include_then_exclude() {
        let cfg = crate::config::GroupOffsetsConfig {
            include: vec!["^app-".into()],
            exclude: vec!["-test$".into()],
            interval_ms: 1000,
        };
        let sel = Selection::new(&cfg).ok().flatten();
        let sel = sel.as_ref();
        assert!(sel.is_some_and(|s| s.wants("app-orders")));
        assert!(sel.is_some_and(|s| !s.wants("app-orders-test")));
        assert!(sel.is_some_and(|s| !s.wants("other")));
        let off = crate::config::GroupOffsetsConfig::default();
        assert!(
            Selection::new(&off).ok().flatten().is_none(),
            "off by default"
        );
    }
}
