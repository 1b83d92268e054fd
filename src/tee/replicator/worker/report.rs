//! What the worker tells others: a batch's outcome counted (committed or dropped),
//! progress for the checkpoint and its waiters, the partition's state and lag for the
//! status page and metrics, where DC2 put the batch compared with where it should be,
//! and warnings limited to one per `WARN_EVERY`.

use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use super::super::Progress;
use super::super::topics::TopicStatus;
use super::{Arrival, JUMP_SHOWN, MAX_ARRIVALS, ReadyBatch, WARN_EVERY, Worker, error_code_label};

impl Worker {
    /// Publishes the partition's state for status pages.
    pub(super) fn report(&mut self) {
        let lag = match (self.pushed_upto, self.acked.or(self.lag_base)) {
            (Some(p), Some(b)) => (p - b).max(0) as u64,
            _ => 0,
        };
        let pending = self.queue.batch_bytes()
            + self.ready.iter().map(|r| r.budget.bytes()).sum::<usize>()
            + self.window.items().map(|r| r.budget.bytes()).sum::<usize>();
        let state = match (&self.status, &self.trouble) {
            (Some(TopicStatus::Mismatch { dc1, dc2 }), _) => {
                format!("held: partition counts differ (DC1 {dc1}, DC2 {dc2})")
            }
            (Some(TopicStatus::Missing), _) => "held: the DC2 topic does not exist".into(),
            (Some(TopicStatus::Failed(why)), _) => format!("held: {why}"),
            (_, Some(t)) => format!("retrying: {t}"),
            _ if self.catchup.is_some() => "catching up".into(),
            _ if lag > 0 => "replicating".into(),
            _ => "in sync".into(),
        };
        let state = match self.last_jump {
            Some((at, what)) if at.elapsed() < JUMP_SHOWN => {
                format!(
                    "{state}; {what} {} s ago (see the log)",
                    at.elapsed().as_secs()
                )
            }
            _ => state,
        };
        self.prune_arrivals();
        let lag_bytes = self.arrivals.iter().map(|a| a.bytes).sum::<u64>();
        let oldest = self.arrivals.front().map(|a| a.at);
        let mut s = crate::sync::lock(&self.snapshot);
        s.lag_bytes = lag_bytes;
        s.oldest_pending_since = oldest;
        s.replicated_offset = self.acked;
        s.lag_offsets = lag;
        s.pending_bytes = pending as u64;
        s.state = state;
    }

    pub(super) fn commit(&mut self, ready: ReadyBatch, seq: i32, dc2_offset: Option<i64>) {
        self.check_dc2_offset(dc2_offset, i64::from(ready.span()));
        if let Some(base) = dc2_offset {
            self.sh.offsets.entry(self.tp.clone()).or_default().copied(
                ready.first,
                ready.last,
                base,
            );
        }
        let pushed_at = self
            .arrivals
            .iter()
            .find(|a| a.last >= ready.first)
            .map(|a| a.at);
        let latency = pushed_at.map_or(Duration::ZERO, |t| t.elapsed());
        metrics::histogram!("kafka_tee_replication_latency_seconds").record(latency.as_secs_f64());
        let _ = seq;
        self.acked = Some(self.acked.map_or(ready.last, |a| a.max(ready.last)));
        // In DC2: its budget comes back now, before waiters hear of the progress.
        drop(ready.budget);
        self.sh.counters.copied(
            ready.batch.record_count().max(0) as u64,
            ready.batch.len() as u64,
            ready.from_dc1,
        );
        self.backoff.reset();
        self.trouble = None;
        self.publish();
    }

    /// Compares where DC2 put a batch with where the replicator's previous batch ended.
    /// Between two of its own batches nobody else should write to the DC2 partition:
    /// if someone does (a second kafka-tee replicating the same DC1 partitions, DC2
    /// producers writing to a replicated topic), DC2 holds records twice or interleaved
    /// with others. That, and a DC2 partition whose offsets went back (its log lost or
    /// the topic recreated), is logged loudly and counted. The next expected offset is
    /// unknown after a batch whose DC2 offset was not reported.
    pub(super) fn check_dc2_offset(&mut self, dc2_offset: Option<i64>, span: i64) {
        if let (Some(want), Some(got)) = (self.dc2_next, dc2_offset)
            && got != want
        {
            let (reason, what, explained) = if got > want {
                (
                    "foreign",
                    "DC2 partition written by something else",
                    "something else writes to this DC2 partition: DC2 put a batch after \
                     offsets the replicator did not write (another kafka-tee replicating the \
                     same DC1 partitions, or producers writing to the DC2 topic), so DC2 holds \
                     records twice or mixed with others. Replicate each DC1 partition through \
                     one kafka-tee, and keep DC2 producers off replicated topics \
                     (replication.topic_prefix)",
                )
            } else {
                (
                    "rewound",
                    "DC2 partition lost records it had acknowledged",
                    "this DC2 partition's offsets went back (its log was lost or truncated, or \
                     the topic recreated): records DC2 acknowledged before are gone from it",
                )
            };
            let now = Instant::now();
            self.last_jump = Some((now, what));
            metrics::counter!("kafka_tee_dc2_offset_jumps_total", "topic" => self.tp.topic.to_string(), "reason" => reason)
                .increment(1);
            if self
                .jump_warned
                .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
            {
                self.jump_warned = Some(now);
                tracing::error!(
                    partition = %self.tp, dc2_topic = %self.dc2_topic, expected = want, got,
                    "{explained}"
                );
            }
        }
        self.dc2_next = dc2_offset.map(|o| o.saturating_add(span));
    }

    pub(super) fn drop_batch(
        &mut self,
        ready: ReadyBatch,
        error: ResponseError,
        message: Option<String>,
        at_front: bool,
    ) {
        tracing::error!(
            topic = %self.tp.topic, partition = self.tp.partition,
            from = ready.first, to = ready.last, %error,
            message = message.as_deref().unwrap_or(""),
            "DC2 refused a batch for good; it is dropped (not in DC2)"
        );
        let code = error_code_label(error);
        metrics::counter!("kafka_tee_dropped_batches_total", "code" => code.clone()).increment(1);
        metrics::counter!("kafka_tee_dropped_records_total", "code" => code)
            .increment(ready.batch.record_count().max(0) as u64);
        drop(ready.budget);
        if at_front {
            self.acked = Some(self.acked.map_or(ready.last, |a| a.max(ready.last)));
            self.publish();
        }
    }

    /// Remembers when offsets `first..=last` were handed over (in offset order). Past
    /// `MAX_ARRIVALS` entries, a new one is merged into the last (keeping the earlier
    /// time), so a partition held for long does not grow this without bound.
    pub(super) fn arrive(&mut self, last: i64, at: Instant, bytes: u64) {
        if self.arrivals.len() >= MAX_ARRIVALS
            && let Some(back) = self.arrivals.back_mut()
        {
            back.last = back.last.max(last);
            back.bytes += bytes;
            return;
        }
        self.arrivals.push_back(Arrival { last, at, bytes });
    }

    /// Forgets the arrivals DC2 now holds entirely.
    pub(super) fn prune_arrivals(&mut self) {
        let Some(acked) = self.acked else {
            return;
        };
        while self.arrivals.front().is_some_and(|a| a.last <= acked) {
            self.arrivals.pop_front();
        }
    }

    /// Records progress for the checkpoint and waiters.
    pub(super) fn publish(&mut self) {
        self.update_lag();
        self.report();
        if let (Some(offset), Some(id)) = (self.acked, self.ident) {
            self.sh.progress.insert(
                self.tp.clone(),
                Progress {
                    offset,
                    producer_id: id.producer_id,
                    producer_epoch: id.epoch,
                    next_sequence: self.window.acked_seq(),
                    dc2_next: self.dc2_next,
                },
            );
            // Waiters wake up now, so everything they may read is already updated.
            self.sh.progress_changed();
        }
    }

    pub(super) fn update_lag(&mut self) {
        let Some(pushed) = self.pushed_upto else {
            return;
        };
        let Some(base) = self.acked.or(self.lag_base) else {
            return;
        };
        let lag = (pushed - base).max(0);
        let delta = lag - self.lag_reported;
        if delta != 0 {
            let g = metrics::gauge!("kafka_tee_replication_lag_records", "topic" => self.tp.topic.to_string());
            if delta > 0 {
                g.increment(delta as f64);
            } else {
                g.decrement((-delta) as f64);
            }
            self.lag_reported = lag;
        }
    }

    /// Keeps `kafka_tee_replication_window_full_partitions` counting this partition
    /// while its window is full.
    pub(super) fn note_full(&mut self, full: bool) {
        if full != self.window_full {
            self.window_full = full;
            let g = metrics::gauge!("kafka_tee_replication_window_full_partitions");
            if full {
                g.increment(1.0);
            } else {
                g.decrement(1.0);
            }
        }
    }

    pub(super) fn warn_limited(&mut self, what: &str) {
        self.trouble = Some(what.to_string());
        let now = Instant::now();
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            tracing::warn!(partition = %self.tp, "{what}; retrying");
            self.last_warn = Some(now);
        } else {
            tracing::debug!(partition = %self.tp, "{what}; retrying");
        }
    }
}
