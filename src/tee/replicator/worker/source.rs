//! The worker's DC1 side: items pushed by the capture taken in order, offsets missing
//! between them turned into gaps, gaps read back from DC1 (`catchup`), the look at
//! DC1's end after a restart or while a partition is idle.

use std::time::Instant;

use tokio::sync::mpsc;

use super::super::catchup::{CatchUp, Skipped, Step};
use super::super::queue::item_range;
use super::super::tail::partition_end;
use super::{FOLLOW_MAX, NextBatch, ReadyBatch, Worker};
use crate::client::IsolationLevel;
use crate::protocol::batch::RecordBatch;
use crate::tee::{Pending, Reservation};

impl Worker {
    /// Queues the offsets DC1 acknowledged after the checkpoint (up to its high
    /// watermark now) as a gap, unless an item pushed since the start already did.
    pub(super) async fn resume_from_checkpoint(&mut self) {
        let Some(expect) = self.expect else {
            self.resume = false;
            return;
        };
        let hard = self.sh.hard_stop.clone();
        let end = tokio::select! {
            e = partition_end(&self.sh.dc1, &self.tp.topic, self.tp.partition, expect, IsolationLevel::ReadUncommitted) => e,
            _ = hard.cancelled() => return,
        };
        match end {
            Ok(end) => {
                self.resume = false;
                // A push may have arrived meanwhile; it is only taken in after this.
                if self.expect.is_some() && end > expect {
                    tracing::info!(
                        partition = %self.tp, from = expect, to = end - 1,
                        "resuming after a restart: offsets after the checkpoint will be read back from DC1"
                    );
                    self.accept(
                        Instant::now(),
                        Pending::Gap {
                            from: expect,
                            to: end - 1,
                        },
                    );
                }
            }
            Err(crate::client::ClientError::UnknownTopic { .. }) => {
                // Nothing to resume now; the checkpoint stays, so if the topic comes
                // back with traffic, the offsets since it are still read back.
                tracing::info!(partition = %self.tp, "topic not in DC1; not resuming it");
                self.resume = false;
            }
            Err(e) => {
                self.warn_limited(&format!("cannot read the end of {} in DC1: {e}", self.tp));
                let d = self.backoff.next_delay();
                self.pause(d).await;
            }
        }
    }

    pub(super) fn drain_input(&mut self) {
        while self.rx_open {
            match self.rx.try_recv() {
                Ok((at, item)) => self.accept(at, item),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.rx_open = false,
            }
        }
    }

    pub(super) fn accept(&mut self, at: Instant, item: Pending) {
        let (first, last) = item_range(&item);
        let after_restart = self.expect.take().is_some();
        if let Some(every) = self.sh.settings.follow_interval {
            self.follow_every = every;
            self.follow_at = at + every;
        }
        // Offsets skipped between two items (or since the checkpoint) were appended to
        // DC1 without reaching the replicator: a producer whose connection ended before
        // DC1 answered, a transaction marker, an aborted transaction, a producer that
        // bypasses the proxy. They are read back from DC1, which copies what is
        // committed data and skips the rest.
        if let Some(seen) = self.pushed_upto
            && first > seen + 1
        {
            if after_restart {
                tracing::info!(
                    partition = %self.tp, from = seen + 1, to = first - 1,
                    "offsets since the checkpoint will be read back from DC1"
                );
            } else {
                tracing::debug!(
                    partition = %self.tp, from = seen + 1, to = first - 1,
                    "offsets not handed over; reading them back from DC1"
                );
            }
            self.queue.push_back(Pending::Gap {
                from: seen + 1,
                to: first - 1,
            });
            self.arrive(first - 1, at, 0);
        }
        if self.lag_base.is_none() {
            self.lag_base = Some(first - 1);
        }
        self.pushed_upto = Some(self.pushed_upto.map_or(last, |p| p.max(last)));
        let bytes = match &item {
            Pending::Batch { records, .. } => records.len() as u64,
            Pending::Gap { .. } => 0,
        };
        // An empty range only says where a partition starts: nothing is pending.
        if first <= last {
            self.arrive(last, at, bytes);
        }
        match item {
            // Held: the batch (and its budget) goes; DC1 is read instead.
            Pending::Batch { .. } if self.is_held() => {
                self.queue.push_back(Pending::Gap {
                    from: first,
                    to: last,
                });
            }
            item => self.queue.push_back(item),
        }
        self.update_lag();
    }

    pub(super) async fn next_ready(&mut self) -> NextBatch {
        let hard = self.sh.hard_stop.clone();
        loop {
            if let Some(r) = self.ready.pop_front() {
                return NextBatch::Ready(r);
            }
            if let Some(c) = self.catchup.as_mut() {
                if c.done() {
                    self.catchup = None;
                    self.catchup_retry_at = None;
                    continue;
                }
                if let Some(at) = self.catchup_retry_at
                    && Instant::now() < at
                {
                    return NextBatch::Wait;
                }
                let mut skipped = Skipped::default();
                let step = tokio::select! {
                    s = c.step(&self.sh.dc1, &self.tp.topic, self.tp.partition, &mut skipped) => s,
                    _ = hard.cancelled() => return NextBatch::Idle,
                };
                metrics::counter!("kafka_tee_catchup_skipped_batches_total", "reason" => "aborted")
                    .increment(skipped.aborted_batches);
                metrics::counter!("kafka_tee_catchup_skipped_batches_total", "reason" => "control")
                    .increment(skipped.control_batches);
                if skipped.absent_offsets > 0 {
                    tracing::debug!(
                        partition = %self.tp, offsets = skipped.absent_offsets,
                        "offsets DC1 does not have (compacted away) moved past"
                    );
                    metrics::counter!("kafka_tee_catchup_absent_offsets_total")
                        .increment(skipped.absent_offsets);
                }
                match step {
                    Ok(Step::Batches(batches)) => {
                        self.catchup_retry_at = None;
                        self.catchup_backoff.reset();
                        for b in batches {
                            let first = b.base_offset();
                            let last = first.saturating_add(i64::from(b.last_offset_delta()));
                            self.ready.push_back(ReadyBatch {
                                first,
                                last,
                                batch: b,
                                budget: Reservation::none(),
                                from_dc1: true,
                            });
                        }
                    }
                    Ok(Step::Wait) => {
                        self.catchup_retry_at =
                            Some(Instant::now() + self.catchup_backoff.next_delay());
                        return NextBatch::Wait;
                    }
                    Ok(Step::Lost { from, to, reason }) => self.lost(from, to, &reason),
                    // DC1 still has the data, so every error is retried (with a
                    // warning); only offsets DC1 no longer has are given up.
                    Err(e) => {
                        self.warn_limited(&format!("cannot read {} back from DC1: {e}", self.tp));
                        if e.needs_metadata_refresh() {
                            let _ = self
                                .sh
                                .dc1
                                .refresh_metadata_coalesced(&[&self.tp.topic])
                                .await;
                        }
                        self.catchup_retry_at = Some(Instant::now() + self.backoff.next_delay());
                        return NextBatch::Wait;
                    }
                }
                continue;
            }
            match self.queue.pop_front() {
                None => return NextBatch::Idle,
                Some(Pending::Gap { from, to }) => {
                    let start = self.sent_upto.map_or(from, |s| from.max(s + 1));
                    if start <= to {
                        metrics::counter!("kafka_tee_catchup_gaps_total").increment(1);
                        tracing::debug!(partition = %self.tp, from = start, to, "reading gap back from DC1");
                        self.catchup = Some(CatchUp::new(start, to));
                        self.catchup_retry_at = None;
                    }
                }
                Some(Pending::Batch {
                    base_offset,
                    records,
                    reservation,
                }) => {
                    let batch = match RecordBatch::parse(records) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(
                                partition = %self.tp, offset = base_offset, error = %e,
                                "cannot replicate a batch DC1 acknowledged: it is not a valid record batch"
                            );
                            metrics::counter!("kafka_tee_invalid_batches_total").increment(1);
                            continue;
                        }
                    };
                    let last = base_offset.saturating_add(i64::from(batch.last_offset_delta()));
                    if self.sent_upto.is_some_and(|s| last <= s) {
                        continue;
                    }
                    return NextBatch::Ready(ReadyBatch {
                        first: base_offset,
                        last,
                        batch,
                        budget: reservation,
                        from_dc1: false,
                    });
                }
            }
        }
    }

    /// Offsets that can never reach DC2: say so loudly, count them, move on.
    pub(super) fn lost(&mut self, from: i64, to: i64, reason: &str) {
        let n = (to - from + 1).max(0) as u64;
        tracing::error!(
            partition = %self.tp, from, to, offsets = n, reason,
            "DATA LOST: offsets acknowledged by DC1 cannot be copied to DC2"
        );
        self.sh.counters.lost(n);
        self.sent_upto = Some(self.sent_upto.map_or(to, |s| s.max(to)));
        if self.window.is_empty() && self.ready.is_empty() {
            self.acked = Some(self.acked.map_or(to, |a| a.max(to)));
            self.publish();
        }
    }

    /// Looks up the partition's end in DC1 while nothing is left to copy. Offsets past
    /// the highest one handed over were appended without this proxy seeing their
    /// acknowledgement: a producer that bypasses the proxy, or a request whose answer
    /// never came back (DC1's link cut, the client gone). They become a gap, read back
    /// and copied, so DC2 does not wait for later traffic to reveal them.
    ///
    /// The end is DC1's last stable offset, so an open transaction (whose batches the
    /// capture may be holding) is not read back before it ends. A batch acknowledged
    /// through the proxy but not yet handed over when the end was read is covered by
    /// the gap; when it arrives it is below `sent_upto` and skipped, so it is not
    /// copied twice.
    pub(super) async fn follow_dc1(&mut self) {
        // Items that arrived meanwhile are taken in first: they may already cover the
        // offsets, and the run loop copies them.
        let before = self.pushed_upto;
        self.drain_input();
        let Some(seen) = self.pushed_upto else {
            return;
        };
        if before != Some(seen) {
            return;
        }
        let from = seen.saturating_add(1);
        let hard = self.sh.hard_stop.clone();
        let end = tokio::select! {
            e = partition_end(&self.sh.dc1, &self.tp.topic, self.tp.partition, from, IsolationLevel::ReadCommitted) => e,
            _ = hard.cancelled() => return,
        };
        let base = self.sh.settings.follow_interval.unwrap_or(FOLLOW_MAX);
        match end {
            Ok(end) if end > from => {
                // Debug only: a transaction's marker, never handed over, is found this
                // way after every transaction (and skipped by the read).
                tracing::debug!(
                    partition = %self.tp, from, to = end - 1,
                    "DC1 holds offsets no acknowledgement through this proxy showed; reading them back"
                );
                metrics::counter!("kafka_tee_follow_offsets_total").increment((end - from) as u64);
                self.accept(Instant::now(), Pending::Gap { from, to: end - 1 });
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(partition = %self.tp, error = %e, "cannot read the end of the partition in DC1");
            }
        }
        self.follow_every = (self.follow_every * 2).clamp(base, FOLLOW_MAX.max(base));
        self.follow_at = Instant::now() + self.follow_every;
    }
}
