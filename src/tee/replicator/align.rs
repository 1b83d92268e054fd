//! Where a new owner of a DC1 partition continues, so that nothing is written twice:
//! the group's committed position says up to which DC1 offset DC2 held the data and at
//! which DC2 offset the copy of the next batch goes. The previous owner may have
//! copied more after its last commit; those copies are found by their bytes.
//!
//! Every batch reaches DC2 whole, with only its producer id, epoch, sequence, base
//! offset and CRC changed, and the window keeps DC2 in DC1 order without gaps or
//! repeats. So the batches DC2 holds from the committed DC2 offset on are copies of a
//! run of DC1's batches, and where that run ends the new owner continues. The two
//! positions are committed one after the other (DC1's, then DC2's), so after a
//! failure between the two, DC2's names an earlier point: the DC2 batches then begin
//! with copies of DC1 batches before the DC1 position, and the run is the overlap of
//! their end with DC1's batches from the DC1 position. DC2's position can also be
//! ahead (a DC1 commit refused while the DC2 one of the same round went through
//! earlier): the run then starts after the DC1 position. Batches DC2 holds that no
//! run of DC1's matches (another writer, a rewritten batch) are not skipped: the new
//! owner resumes at the committed DC1 offset, which may copy some twice but never
//! loses one, and says so.

use std::time::{Duration, Instant};

use super::catchup::{CatchUp, Skipped, Step};
use super::tail::{fingerprint, partition_bounds, scan_batches};
use crate::client::{Client, ClientError, EARLIEST, IsolationLevel};
use crate::tee::TopicPartition;

/// At most this many bytes of either partition are read to find the start.
const MAX_READ_BYTES: usize = 256 * 1024 * 1024;
/// How long the read of DC1 waits for offsets that are not readable yet (an open
/// transaction) before deciding with what it has.
const DC1_WAIT: Duration = Duration::from_secs(5);

/// Where the new owner starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Start {
    /// The last DC1 offset DC2 holds (the worker resumes after it).
    pub resume_after: i64,
    /// The DC2 offset after the last copied batch, when known.
    pub dc2_next: Option<i64>,
    /// Batches DC2 held beyond the committed position and not sent again.
    pub found: usize,
    /// Those batches: (first DC1 offset, last DC1 offset, DC2 base offset), for the
    /// offset map.
    pub copied: Vec<(i64, i64, i64)>,
}

/// Finds where to continue `tp` from the committed positions (`dc1`: next DC1 offset
/// to copy; `dc2`: DC2 offset where its copy goes). No DC1 position: from DC1's log
/// start. No DC2 position: from DC2's log start.
pub(super) async fn find_start(
    dc1: &Client,
    dc2: &Client,
    tp: &TopicPartition,
    dc2_topic: &str,
    committed: Option<i64>,
    dc2_committed: Option<i64>,
) -> Result<Start, ClientError> {
    let from = match committed {
        Some(c) => c,
        None => dc1.list_offset(&tp.topic, tp.partition, EARLIEST).await?,
    };
    let fresh = Start {
        resume_after: from - 1,
        dc2_next: None,
        found: 0,
        copied: Vec::new(),
    };
    let (dc2_start, dc2_end) = match partition_bounds(
        dc2,
        dc2_topic,
        tp.partition,
        dc2_committed.unwrap_or(0),
        IsolationLevel::ReadUncommitted,
    )
    .await
    {
        Ok(b) => b,
        Err(ClientError::UnknownTopic { .. }) => return Ok(fresh),
        Err(e) => return Err(e),
    };
    let d = dc2_committed.unwrap_or(dc2_start).clamp(dc2_start, dc2_end);
    let (seen, reached) =
        scan_batches(dc2, dc2_topic, tp.partition, d, dc2_end, MAX_READ_BYTES).await?;
    let copies: Vec<u64> = seen.iter().map(|s| s.0).collect();
    let start = Start {
        dc2_next: Some(dc2_end),
        ..fresh
    };
    if copies.is_empty() {
        return Ok(start);
    }
    if reached < dc2_end {
        tracing::warn!(
            partition = %tp, dc2_from = d, reached, dc2_end,
            "DC2 holds more past the committed position than is read to find the start; what is past the read may be copied twice"
        );
    }
    let (prints, spans) = read_dc1(dc1, tp, from, &copies).await?;
    match find_run(&prints, &copies).or_else(|| find_overlap(&prints, &copies)) {
        Some((j, n)) => {
            let last = spans[j + n - 1].1;
            // The run is the last `n` of DC2's batches, copies of DC1's `j..j + n`.
            let copied = (0..n)
                .map(|k| {
                    let (first, last) = spans[j + k];
                    (first, last, seen[seen.len() - n + k].1)
                })
                .collect();
            tracing::info!(
                partition = %tp, committed = from, dc2_from = d, found = n,
                skipped_before = j, resume_after = last,
                "taking over: DC2 already holds batches copied after the committed position; they are not copied again"
            );
            Ok(Start {
                resume_after: last,
                dc2_next: Some(dc2_end),
                found: n,
                copied,
            })
        }
        None => {
            tracing::warn!(
                partition = %tp, committed = from, dc2_from = d, dc2_batches = copies.len(),
                "taking over: the batches DC2 holds past the committed position are not copies of DC1's from there on; continuing at the committed position (records may be copied twice, none is lost)"
            );
            metrics::counter!("kafka_tee_group_unmatched_takeovers_total").increment(1);
            Ok(start)
        }
    }
}

/// Where DC2's `copies` are found among `originals` (DC1's batches from the DC1
/// position): `(j, n)`, the DC2 batches are `originals[j..j + n]`. The first `j`
/// where all of them are found, in order.
pub(super) fn find_run(originals: &[u64], copies: &[u64]) -> Option<(usize, usize)> {
    if copies.is_empty() {
        return None;
    }
    originals
        .windows(copies.len())
        .position(|w| w == copies)
        .map(|j| (j, copies.len()))
}

/// DC2's position behind DC1's: the longest end of `copies` that DC1's batches from
/// the DC1 position begin with, as `(0, n)`.
pub(super) fn find_overlap(originals: &[u64], copies: &[u64]) -> Option<(usize, usize)> {
    (1..copies.len())
        .map(|i| &copies[i..])
        .find(|tail| originals.starts_with(tail))
        .map(|tail| (0, tail.len()))
}

/// Fingerprints and (first, last) offsets of the DC1 batches a copy from `from` on would send,
/// as catch-up reads them (committed data only), until a run equal to `copies` is
/// read, DC1's end, or `MAX_READ_BYTES`.
async fn read_dc1(
    dc1: &Client,
    tp: &TopicPartition,
    from: i64,
    copies: &[u64],
) -> Result<(Vec<u64>, Vec<(i64, i64)>), ClientError> {
    let end = super::tail::partition_end(
        dc1,
        &tp.topic,
        tp.partition,
        from,
        IsolationLevel::ReadCommitted,
    )
    .await?;
    let (mut prints, mut ends) = (Vec::new(), Vec::new());
    if end <= from {
        return Ok((prints, ends));
    }
    let mut c = CatchUp::new(from, end - 1);
    let mut bytes = 0usize;
    let mut since = Instant::now();
    // Where the next run to compare starts.
    let mut at = 0;
    while !c.done() && bytes < MAX_READ_BYTES {
        let mut skipped = Skipped::default();
        match c.step(dc1, &tp.topic, tp.partition, &mut skipped).await? {
            Step::Batches(batches) => {
                since = Instant::now();
                for b in batches {
                    bytes += b.len();
                    let first = b.base_offset();
                    ends.push((
                        first,
                        first.saturating_add(i64::from(b.last_offset_delta())),
                    ));
                    prints.push(fingerprint(&b));
                }
            }
            Step::Wait if since.elapsed() > DC1_WAIT => break,
            Step::Wait => tokio::time::sleep(Duration::from_millis(50)).await,
            Step::Lost { .. } => {}
        }
        while at + copies.len() <= prints.len() {
            if prints[at..at + copies.len()] == *copies {
                return Ok((prints, ends));
            }
            at += 1;
        }
    }
    Ok((prints, ends))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_found_where_it_starts() {
        assert_eq!(find_run(&[1, 2, 3, 4], &[1, 2]), Some((0, 2)));
        assert_eq!(find_run(&[1, 2, 3, 4], &[3, 4]), Some((2, 2)));
        assert_eq!(find_run(&[1, 2, 3], &[2, 4]), None, "not a copy");
        assert_eq!(find_run(&[1, 2], &[1, 2, 3]), None, "more than DC1 has");
        assert_eq!(
            find_run(&[7, 7, 7], &[7, 7]),
            Some((0, 2)),
            "the earliest run: never skips too much"
        );
        assert_eq!(find_run(&[], &[]), None);
    }

    #[test]
    fn a_dc2_position_behind_is_an_overlap() {
        // DC2 from its (older) position: copies of 8, 9 (before DC1's position), then
        // of 1, 2 (after it).
        assert_eq!(find_overlap(&[1, 2, 3], &[8, 9, 1, 2]), Some((0, 2)));
        assert_eq!(find_run(&[1, 2, 3], &[8, 9, 1, 2]), None);
        assert_eq!(
            find_overlap(&[1, 2, 3], &[8, 9]),
            None,
            "nothing past DC1's position"
        );
        assert_eq!(
            find_overlap(&[1, 2], &[5, 1, 2, 3]),
            None,
            "DC1 does not have 3"
        );
    }
}
