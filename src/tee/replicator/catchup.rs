//! Reading a range of offsets back from DC1 (a gap: acknowledged by DC1 but not held in
//! memory). Batches come back raw, exactly as DC1 stores them, and are replayed in
//! order. Only committed data goes on: the fetch is read_committed (it stops at the
//! last stable offset) and batches of aborted transactions are skipped, using the
//! response's aborted-transaction list as Kafka consumers do or, when the broker does
//! not fill that list (Tansu), the transaction's marker found by reading ahead.
//! Control batches (transaction markers) are never copied: DC2 gets plain batches.
//!
//! Offsets missing from DC1's answer inside the range (a hole: the next batch starts
//! past the offset asked for) are only given up once a second read, at least
//! `HOLE_SETTLE` later, shows them missing too. A compacted topic has such holes for
//! good, but a broker may also count an offset in its high watermark before the batch
//! is readable (Tansu 0.6 takes the offset, then stores the batch), and a producer
//! writing to DC1 at the same time as the proxy makes that window visible.

use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use crate::client::{Client, ClientError, EARLIEST, IsolationLevel};
use crate::protocol::batch::{Committed, RecordBatch, TxnFilter, split_batches};

const START_MAX_BYTES: i32 = 1024 * 1024;
const LIMIT_MAX_BYTES: i32 = 64 * 1024 * 1024;
const FETCH_MAX_WAIT: Duration = Duration::from_millis(250);
/// How long offsets must stay missing from DC1's answers before they are taken as
/// absent for good.
const HOLE_SETTLE: Duration = Duration::from_millis(500);

/// The read position within one gap.
#[derive(Debug)]
pub(super) struct CatchUp {
    /// Next DC1 offset to read.
    pub next: i64,
    /// Last offset of the gap.
    pub to: i64,
    txns: TxnFilter,
    max_bytes: i32,
    hole: Option<HoleWatch>,
}

/// Holes first seen in one read: those ending below `below` (the last batch that read
/// returned) may be skipped once `HOLE_SETTLE` has passed since `since`.
#[derive(Debug)]
struct HoleWatch {
    since: Instant,
    below: i64,
}

/// What one read step produced.
#[derive(Debug)]
pub(super) enum Step {
    /// Batches to replay, in order (possibly none when only skipped batches were read).
    Batches(Vec<RecordBatch>),
    /// Nothing readable yet (an open transaction, offsets missing from the answer that
    /// may still appear, or the high watermark has not reached the gap); ask again
    /// shortly.
    Wait,
    /// Offsets `from..=to` are no longer in DC1; the read moved past them.
    Lost { from: i64, to: i64, reason: String },
}

/// Batches skipped because their transaction was aborted, for the caller's metrics.
#[derive(Debug, Default)]
pub(super) struct Skipped {
    pub aborted_batches: u64,
    pub control_batches: u64,
    /// Offsets DC1 does not have inside the range (compacted away), moved past.
    pub absent_offsets: u64,
}

impl CatchUp {
    pub fn new(from: i64, to: i64) -> Self {
        Self {
            next: from,
            to,
            txns: TxnFilter::default(),
            max_bytes: START_MAX_BYTES,
            hole: None,
        }
    }

    /// Whether a hole ending at `end` has been seen missing for `HOLE_SETTLE`. A hole
    /// the current watch does not cover starts a new one, covering every hole of this
    /// answer (which ends with a batch at `below`).
    fn hole_settled(&mut self, end: i64, below: i64, now: Instant) -> bool {
        match &self.hole {
            Some(h) if end < h.below => now.duration_since(h.since) >= HOLE_SETTLE,
            _ => {
                self.hole = Some(HoleWatch { since: now, below });
                false
            }
        }
    }

    pub fn done(&self) -> bool {
        self.next > self.to
    }

    /// Reads the next chunk of the gap from DC1.
    pub async fn step(
        &mut self,
        dc1: &Client,
        topic: &str,
        partition: i32,
        skipped: &mut Skipped,
    ) -> Result<Step, ClientError> {
        let fetched = dc1
            .fetch(
                topic,
                partition,
                self.next,
                self.max_bytes,
                FETCH_MAX_WAIT,
                IsolationLevel::ReadCommitted,
            )
            .await;
        let f = match fetched {
            Ok(f) => f,
            Err(e) if e.kafka_error() == Some(ResponseError::OffsetOutOfRange) => {
                let start = dc1.list_offset(topic, partition, EARLIEST).await?;
                let from = self.next;
                if from < start {
                    let to = self.to.min(start - 1);
                    self.next = to + 1;
                    return Ok(Step::Lost {
                        from,
                        to,
                        reason: format!("DC1 log now starts at offset {start} (retention)"),
                    });
                }
                self.next = self.to + 1;
                return Ok(Step::Lost {
                    from,
                    to: self.to,
                    reason: "DC1 no longer has these offsets (log truncated?)".into(),
                });
            }
            Err(e) => return Err(e),
        };
        self.txns.observe(&f.aborted);
        let had_bytes = !f.records.is_empty();
        let start = self.next;
        let mut out = Vec::new();
        let mut open_txn = false;
        let mut hole_open = false;
        let items: Vec<_> = split_batches(f.records).collect();
        let below = items
            .iter()
            .filter_map(|b| b.as_ref().ok().map(RecordBatch::base_offset))
            .max()
            .unwrap_or(i64::MAX);
        let now = Instant::now();
        for item in items {
            let batch = match item {
                Ok(b) => b,
                Err(e) => {
                    let from = self.next;
                    self.next = self.to + 1;
                    return Ok(Step::Lost {
                        from,
                        to: self.to,
                        reason: format!("DC1 returned an unreadable record batch: {e}"),
                    });
                }
            };
            let base = batch.base_offset();
            let last = base.saturating_add(i64::from(batch.last_offset_delta()));
            if last < self.next {
                continue;
            }
            if self.next > self.to {
                break;
            }
            if base > self.next {
                let end = (base - 1).min(self.to);
                if !self.hole_settled(end, below, now) {
                    tracing::debug!(
                        topic,
                        partition,
                        from = self.next,
                        to = end,
                        "offsets missing from DC1's answer; reading again before passing over them"
                    );
                    hole_open = true;
                    break;
                }
                skipped.absent_offsets += (end - self.next + 1) as u64;
                self.next = end + 1;
                if self.next > self.to {
                    break;
                }
            }
            let mut class = self.txns.classify(&batch);
            if let Committed::Undecided { producer_id } = class {
                match dc1
                    .find_txn_marker(topic, partition, producer_id, base)
                    .await?
                {
                    Some((marker, committed)) => {
                        self.txns.learn(producer_id, marker, committed);
                        class = self.txns.classify(&batch);
                    }
                    // Still open: nothing past this batch is stable yet.
                    None => {
                        open_txn = true;
                        break;
                    }
                }
            }
            self.next = last + 1;
            match class {
                Committed::Keep => {}
                Committed::Undecided { .. } => {
                    // The marker did not settle it (a broken log): keep the data.
                    tracing::warn!(
                        topic,
                        partition,
                        offset = base,
                        "transaction outcome unknown; copying the batch"
                    );
                }
                Committed::Control => {
                    skipped.control_batches += 1;
                    continue;
                }
                Committed::Aborted => {
                    tracing::debug!(
                        topic,
                        partition,
                        offset = base,
                        producer_id = batch.producer_id(),
                        "read back a batch of an aborted transaction; not copied"
                    );
                    skipped.aborted_batches += 1;
                    continue;
                }
            }
            out.push(batch);
        }
        if self.next > start {
            self.max_bytes = START_MAX_BYTES;
            return Ok(Step::Batches(out));
        }
        if had_bytes && !open_txn && !hole_open && self.max_bytes < LIMIT_MAX_BYTES {
            // Only part of one batch came back: ask for more next time.
            self.max_bytes = self.max_bytes.saturating_mul(2).min(LIMIT_MAX_BYTES);
            return Ok(Step::Batches(out));
        }
        Ok(Step::Wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_passed_over_only_after_the_settle_time_of_the_read_that_showed_them() {
        let t0 = Instant::now();
        let mut c = CatchUp::new(0, 100);
        // The first answer (its last batch at 40) shows a hole ending at 9: not yet.
        assert!(!c.hole_settled(9, 40, t0));
        assert!(!c.hole_settled(9, 40, t0 + HOLE_SETTLE / 2));
        // Later reads: holes the first answer covered settle together.
        assert!(c.hole_settled(9, 60, t0 + HOLE_SETTLE));
        assert!(c.hole_settled(30, 60, t0 + HOLE_SETTLE));
        // A hole past what the first answer held starts its own wait.
        let t1 = t0 + HOLE_SETTLE;
        assert!(!c.hole_settled(45, 60, t1));
        assert!(!c.hole_settled(45, 60, t1 + HOLE_SETTLE / 2));
        assert!(c.hole_settled(45, 80, t1 + HOLE_SETTLE));
    }
}
