//! One worker per DC1 partition: takes the partition's items in DC1 offset order,
//! reads gaps back from DC1, patches each batch with the DC2 producer identity and the
//! sequence its window gives it, and carries out the window's actions (`window`): the
//! sends to the DC2 leader, commits, reads of DC2's tail, renewals, back-offs.
//!
//! Invariants (the window keeps those about order and sequences):
//! - Batches are handed to the sender in DC1 order, and a batch is only resent after
//!   every batch in flight behind it has been settled, so DC2 order follows DC1 order.
//! - Sequence numbers are contiguous over the batches DC2 holds: a resend keeps its
//!   number unless an earlier batch was dropped for good (then the ones after it move
//!   down) or the producer identity was renewed (then numbering restarts at 0).
//! - The checkpoint offset only moves forward, over batches DC2 acknowledged or that
//!   were dropped for good (logged and counted).
//! - Budget bytes of a captured batch are released exactly once: on ack, on drop, when
//!   the batch is turned into a gap, or when the worker stops.
//! - Offsets between two pushed items (or between the checkpoint and the first item)
//!   are never assumed empty: they become a gap, read back from DC1.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use tokio::sync::{mpsc, oneshot};

use super::catchup::{CatchUp, Skipped, Step};
use super::queue::{PartitionQueue, item_range};
use super::sender::{Unit, UnitResult};
use super::tail::{partition_end, read_held};
use super::topics::{GateContext, RECHECK, TopicGate, TopicStatus};
use super::window::{Action, Window};
use super::{Identity, Progress, Shared, Snapshot};
use crate::client::{Backoff, IsolationLevel, is_metadata_error};
use crate::tee::batch::RecordBatch;
use crate::tee::{Pending, TopicPartition};

/// How often the same kind of trouble is logged per partition at warn level.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// How long the state shown on the status page mentions a DC2 offset jump.
const JUMP_SHOWN: Duration = Duration::from_secs(600);

/// Longest wait between two looks at an idle partition's end in DC1.
const FOLLOW_MAX: Duration = Duration::from_secs(60);

/// Entries kept per partition for replication latency and age; see `Worker::arrive`.
const MAX_ARRIVALS: usize = 4096;

/// DC1 offsets up to `last` handed to the replicator in one push (or found missing
/// between two), with when that happened and the batch bytes (0 for offsets to read
/// back from DC1).
#[derive(Debug, Clone, Copy)]
struct Arrival {
    last: i64,
    at: Instant,
    bytes: u64,
}

/// A batch ready to be sent, with the DC1 offsets it covers.
struct Ready {
    first: i64,
    last: i64,
    batch: RecordBatch,
    /// Bytes reserved in the budget by the capture (0 for batches read from DC1).
    budget: usize,
    from_dc1: bool,
}

impl Ready {
    /// Sequence numbers the batch uses: the broker computes the last sequence from the
    /// last offset delta (equal to record count - 1 for a producer's batch).
    fn span(&self) -> i32 {
        self.batch.last_offset_delta().saturating_add(1)
    }
}

/// A send awaiting DC2's answer.
struct Flight {
    token: u64,
    rx: oneshot::Receiver<UnitResult>,
    deadline: Instant,
}

fn error_code_label(e: ResponseError) -> String {
    format!("{e}")
}

enum Next {
    Ready(Ready),
    /// Nothing queued.
    Idle,
    /// A gap is being read but DC1 has nothing for it right now.
    Wait,
}

enum Event {
    Front(u64, UnitResult),
    Input(Option<(Instant, Pending)>),
    Stop,
}

pub(super) struct Worker {
    sh: Arc<Shared>,
    tp: TopicPartition,
    dc2_topic: Arc<str>,
    rx: mpsc::UnboundedReceiver<(Instant, Pending)>,
    rx_open: bool,
    /// The DC1 offsets handed over and not yet in DC2, with when they were pushed.
    arrivals: VecDeque<Arrival>,
    queue: PartitionQueue,
    catchup: Option<CatchUp>,
    catchup_retry_at: Option<Instant>,
    catchup_backoff: Backoff,
    ready: VecDeque<Ready>,
    window: Window<Ready>,
    /// Sends awaiting an answer, in the order they were handed to the sender.
    flights: VecDeque<Flight>,
    /// Bytes this worker holds in its window, counted in `Shared::in_flight_bytes`.
    window_bytes: usize,
    window_full: bool,
    /// What the answers since the last tail read or back-off call for: a metadata
    /// refresh, and a new look at the DC2 topic.
    refresh: bool,
    invalidate: bool,
    ident: Option<Identity>,
    /// (producer id, epoch, next sequence) from the checkpoint, used if the identity
    /// in force is still that one.
    restored_seq: Option<(i64, i16, i32)>,
    /// Last DC1 offset known to be in DC2.
    acked: Option<i64>,
    /// Last DC1 offset taken into the window (later items at or below it are skipped).
    sent_upto: Option<i64>,
    /// After a restart, until the first item arrives: the offset after the checkpoint.
    expect: Option<i64>,
    /// After a restart: DC1's end has not been looked up yet (offsets acknowledged
    /// before the restart are copied even if nothing new is pushed).
    resume: bool,
    /// With several instances, a partition no checkpoint names: where it starts is
    /// decided before the first item is taken in (see `anchor`).
    anchor: bool,
    /// Highest DC1 offset pushed so far, and the base for lag before the first ack.
    pushed_upto: Option<i64>,
    lag_base: Option<i64>,
    lag_reported: i64,
    leader: Option<i32>,
    gate: Arc<TopicGate>,
    status: Option<TopicStatus>,
    backoff: Backoff,
    last_warn: Option<Instant>,
    /// The latest trouble, until the next batch gets through.
    trouble: Option<String>,
    /// When an idle partition's end in DC1 is looked up next, and the wait after that
    /// look if it finds nothing (doubling up to `FOLLOW_MAX`); see `follow_dc1`.
    follow_at: Instant,
    follow_every: Duration,
    /// Where DC2 should put the replicator's next batch of this partition (right after
    /// its last one), when known; see `check_dc2_offset`.
    dc2_next: Option<i64>,
    jump_warned: Option<Instant>,
    /// The latest DC2 offset jump and what it means, for the status page.
    last_jump: Option<(Instant, &'static str)>,
    snapshot: Arc<std::sync::Mutex<Snapshot>>,
}

impl Worker {
    pub(super) fn new(
        sh: Arc<Shared>,
        tp: TopicPartition,
        rx: mpsc::UnboundedReceiver<(Instant, Pending)>,
    ) -> Self {
        let dc2_topic: Arc<str> = Arc::from(format!("{}{}", sh.settings.topic_prefix, tp.topic));
        let gate = sh.gates.gate(&tp.topic);
        let restored = sh.progress.get(&tp).map(|p| *p);
        let backoff = Backoff::new(sh.settings.retry_backoff, sh.settings.retry_backoff_max);
        let snapshot = Arc::new(std::sync::Mutex::new(Snapshot {
            replicated_offset: restored.map(|p| p.offset),
            pushed_offset: restored.map(|p| p.offset),
            lag_offsets: 0,
            pending_bytes: 0,
            lag_bytes: 0,
            oldest_pending_since: None,
            behind_since: None,
            state: "starting".into(),
        }));
        sh.states.insert(tp.clone(), snapshot.clone());
        let follow_every = sh.settings.follow_interval.unwrap_or(FOLLOW_MAX);
        let catchup_backoff = Backoff::new(
            Duration::from_millis(50),
            sh.settings.retry_backoff_max.min(Duration::from_secs(1)),
        );
        Self {
            dc2_topic,
            gate,
            rx,
            rx_open: true,
            arrivals: VecDeque::new(),
            queue: PartitionQueue::default(),
            catchup: None,
            catchup_retry_at: None,
            catchup_backoff,
            ready: VecDeque::new(),
            window: Window::new(sh.settings.window, 0),
            flights: VecDeque::new(),
            window_bytes: 0,
            window_full: false,
            refresh: false,
            invalidate: false,
            ident: None,
            restored_seq: restored.map(|p| (p.producer_id, p.producer_epoch, p.next_sequence)),
            acked: restored.map(|p| p.offset),
            sent_upto: restored.map(|p| p.offset),
            expect: restored.map(|p| p.offset + 1),
            resume: restored.is_some(),
            anchor: restored.is_none() && sh.settings.instances > 1,
            pushed_upto: restored.map(|p| p.offset),
            lag_base: None,
            lag_reported: 0,
            leader: None,
            status: None,
            backoff,
            last_warn: None,
            trouble: None,
            follow_at: Instant::now() + follow_every,
            follow_every,
            dc2_next: None,
            jump_warned: None,
            last_jump: None,
            snapshot,
            sh,
            tp,
        }
    }

    pub(super) async fn run(mut self) {
        let hard = self.sh.hard_stop.clone();
        loop {
            if hard.is_cancelled() {
                break;
            }
            if self.anchor {
                self.anchor().await;
                continue;
            }
            self.drain_input();
            if self.finished() {
                break;
            }
            self.report();
            if self.resume {
                self.resume_from_checkpoint().await;
                continue;
            }
            if !self.is_ready() {
                if self.sh.draining.is_cancelled() && self.is_held() {
                    // Held data stays in DC1; the checkpoint says where to resume.
                    break;
                }
                self.check_topic().await;
                continue;
            }
            if !self.ensure_identity().await {
                continue;
            }
            self.fill().await;
            self.note_full(self.window.is_full());
            self.act().await;
            if hard.is_cancelled() {
                break;
            }
            if !self.flights.is_empty() {
                self.await_front().await;
            } else if self.window.is_empty() {
                match self.catchup_retry_at {
                    Some(at) if self.catchup.is_some() => self.pause_until(at).await,
                    _ => self.idle().await,
                }
            }
        }
        self.release_all();
        self.sh
            .states
            .remove_if(&self.tp, |_, s| Arc::ptr_eq(s, &self.snapshot));
    }

    /// Queues the offsets DC1 acknowledged after the checkpoint (up to its high
    /// watermark now) as a gap, unless an item pushed since the start already did.
    async fn resume_from_checkpoint(&mut self) {
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

    /// With several instances, decides where a partition no checkpoint names starts.
    /// The other instances may have carried records to it before this one saw any, so
    /// it starts at DC1's log start, and the look at DC1's end copies them; except when
    /// the first item is discovery's anchor (an empty range: the partition's end, on a
    /// first start), or on a first start before that first look at DC1, where it
    /// starts at its first item as a single instance does.
    async fn anchor(&mut self) {
        let hard = self.sh.hard_stop.clone();
        let draining = self.sh.draining.clone();
        let first = tokio::select! {
            item = self.rx.recv() => item,
            _ = hard.cancelled() => return,
            _ = draining.cancelled() => None,
        };
        self.anchor = false;
        let Some((at, item)) = first else {
            self.rx_open = !self.rx.is_closed();
            return;
        };
        let (from, to) = item_range(&item);
        let here = from > to
            || !self
                .sh
                .from_log_start
                .load(std::sync::atomic::Ordering::Acquire);
        if !here {
            let looked = tokio::select! {
                s = self.sh.dc1.list_offset(&self.tp.topic, self.tp.partition, crate::client::EARLIEST) => s,
                _ = hard.cancelled() => {
                    self.sh.release(&item);
                    return;
                }
            };
            match looked {
                Ok(log_start) if log_start < from => {
                    self.accept(
                        at,
                        Pending::Gap {
                            from: log_start,
                            to: log_start - 1,
                        },
                    );
                    // A restart must resume there too, not at this instance's first batch.
                    if self.sh.settings.state_dir.is_some()
                        && !self
                            .sh
                            .make_starts_durable(vec![(self.tp.clone(), log_start)])
                            .await
                    {
                        tracing::warn!(partition = %self.tp, "the partition's start is not in a checkpoint yet");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    partition = %self.tp, error = %e,
                    "cannot read where the partition starts in DC1; replicating it from the first batch acknowledged through this instance"
                ),
            }
        }
        self.accept(at, item);
    }

    /// Publishes the partition's state for status pages.
    fn report(&mut self) {
        let lag = match (self.pushed_upto, self.acked.or(self.lag_base)) {
            (Some(p), Some(b)) => (p - b).max(0) as u64,
            _ => 0,
        };
        let pending = self.queue.batch_bytes()
            + self.ready.iter().map(|r| r.budget).sum::<usize>()
            + self.window.items().map(|r| r.budget).sum::<usize>();
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
        let mut s = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        s.lag_bytes = lag_bytes;
        s.oldest_pending_since = oldest;
        s.replicated_offset = self.acked;
        s.pushed_offset = self.pushed_upto;
        s.lag_offsets = lag;
        s.pending_bytes = pending as u64;
        s.behind_since = match (lag, s.behind_since) {
            (0, _) => None,
            (_, Some(t)) => Some(t),
            (_, None) => Some(Instant::now()),
        };
        s.state = state;
    }

    fn finished(&self) -> bool {
        let input_done = !self.rx_open || (self.sh.draining.is_cancelled() && self.rx.is_empty());
        input_done
            && self.queue.is_empty()
            && self.ready.is_empty()
            && self.window.is_empty()
            && self.flights.is_empty()
            && self.catchup.is_none()
    }

    fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.is_ready())
    }

    fn is_held(&self) -> bool {
        self.status.as_ref().is_some_and(|s| !s.is_ready())
    }

    fn drain_input(&mut self) {
        while self.rx_open {
            match self.rx.try_recv() {
                Ok((at, item)) => self.accept(at, item),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.rx_open = false,
            }
        }
    }

    fn accept(&mut self, at: Instant, item: Pending) {
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
            Pending::Batch { records, .. } if self.is_held() => {
                self.sh.budget.release(records.len());
                self.queue.push_back(Pending::Gap {
                    from: first,
                    to: last,
                });
            }
            item => self.queue.push_back(item),
        }
        self.update_lag();
    }

    /// Checks the DC2 topic; holds the partition's data while it is not ready.
    async fn check_topic(&mut self) {
        let ctx = GateContext {
            dc1: &self.sh.dc1,
            dc2: &self.sh.dc2,
            create_topics: self.sh.settings.create_topics,
            timeout: self.sh.settings.request_timeout,
        };
        let checked = self
            .gate
            .ensure(&ctx, &self.tp.topic, &self.dc2_topic)
            .await;
        match checked {
            Ok(s) if s.is_ready() => {
                self.status = Some(s);
                self.backoff.reset();
                self.trouble = None;
            }
            Ok(s) => {
                self.status = Some(s);
                self.hold();
                self.pause(RECHECK).await;
            }
            Err(e) => {
                self.warn_limited(&format!(
                    "cannot check the DC2 topic {}: {e}",
                    self.dc2_topic
                ));
                let d = self.backoff.next_delay();
                self.pause(d).await;
            }
        }
    }

    /// Turns everything not yet in DC2 into gaps (read back from DC1 later) and frees
    /// its memory. Only called when nothing is awaiting an answer.
    fn hold(&mut self) {
        let mut released = 0;
        let mut ranges = Vec::new();
        for r in self.window.drain() {
            released += r.budget;
            ranges.push((r.first, r.last));
        }
        self.shrink_window(self.window_bytes);
        for r in self.ready.drain(..) {
            released += r.budget;
            ranges.push((r.first, r.last));
        }
        if let Some(c) = self.catchup.take()
            && !c.done()
        {
            ranges.push((c.next, c.to));
        }
        for (a, b) in ranges.into_iter().rev() {
            self.queue.push_front_gap(a, b);
        }
        released += self.queue.batches_to_gaps();
        self.sh.budget.release(released);
        self.sent_upto = self.acked;
        self.catchup_retry_at = None;
        self.leader = None;
    }

    /// Makes sure the worker has a DC2 producer identity, switching to a renewed one
    /// when nothing is in flight. Returns false after a failed attempt (already paused).
    async fn ensure_identity(&mut self) -> bool {
        let current = self.sh.identity.peek();
        if let (Some(mine), Some(cur)) = (self.ident, current) {
            if mine.generation == cur.generation
                || !self.flights.is_empty()
                || !self.window.is_open()
            {
                return true;
            }
            self.switch_identity(cur);
            return true;
        }
        match self.sh.identity.current(&self.sh.dc2).await {
            Ok(id) => {
                self.switch_identity(id);
                true
            }
            Err(e) => {
                self.warn_limited(&format!("cannot get a DC2 producer id: {e}"));
                let d = self.backoff.next_delay();
                self.pause(d).await;
                false
            }
        }
    }

    fn switch_identity(&mut self, id: Identity) {
        let restored = match self.restored_seq.take() {
            Some((pid, epoch, seq)) if pid == id.producer_id && epoch == id.epoch => Some(seq),
            _ => None,
        };
        self.ident = Some(id);
        self.window.set_acked_seq(restored.unwrap_or(0));
        if restored.is_some() {
            // DC2 may hold batches written after the checkpoint: they are read back
            // from DC1 and must not be written twice.
            self.window.require_tail();
        }
    }

    /// Takes batches into the window while it has room (in batches and bytes, and
    /// within the replicator's total in-flight bytes).
    async fn fill(&mut self) {
        let cap = self.sh.settings.max_in_flight_bytes;
        while self.window.has_room()
            && (self.window.is_empty() || self.sh.in_flight_bytes.load(Ordering::Relaxed) < cap)
        {
            match self.next_ready().await {
                Next::Ready(r) => {
                    self.sent_upto = Some(self.sent_upto.map_or(r.last, |s| s.max(r.last)));
                    let (span, bytes) = (r.span(), r.batch.len());
                    self.window_bytes += bytes;
                    self.sh.in_flight_bytes.fetch_add(bytes, Ordering::Relaxed);
                    self.window.offer(r, span, bytes);
                }
                Next::Idle | Next::Wait => break,
            }
        }
    }

    /// Keeps `kafka_tee_replication_window_full_partitions` counting this partition
    /// while its window is full.
    fn note_full(&mut self, full: bool) {
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

    fn shrink_window(&mut self, bytes: usize) {
        let bytes = bytes.min(self.window_bytes);
        self.window_bytes -= bytes;
        self.sh.in_flight_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Carries out the window's actions until it has none, or until a back-off (after
    /// which the run loop looks at the topic and the identity again).
    async fn act(&mut self) {
        let hard = self.sh.hard_stop.clone();
        // Nothing is sent while the DC2 topic is to be checked again (after answers
        // that called for it): Tansu 0.6 acks Produce to a topic it lost without
        // storing anything.
        while let Some(action) = self.window.poll(self.is_ready()) {
            match action {
                Action::Send { token, seq } => {
                    if let Err(reason) = self.submit(token, seq).await {
                        self.window.not_sent(token, reason);
                    }
                }
                Action::Commit {
                    item,
                    seq,
                    dc2_offset,
                } => {
                    self.shrink_window(item.batch.len());
                    self.commit(item, seq, dc2_offset);
                }
                Action::Drop {
                    item,
                    error,
                    message,
                    at_front,
                } => {
                    self.shrink_window(item.batch.len());
                    self.drop_batch(item, error, message, at_front);
                }
                Action::ReadTail { from_seq } => {
                    self.apply_answers().await;
                    let read = self.read_tail(from_seq).await;
                    self.window.tail(read);
                }
                Action::Renew => {
                    let renewed = self.renew().await;
                    self.window.renewed(renewed);
                }
                Action::Wait { reason } => {
                    self.apply_answers().await;
                    self.warn_limited(&format!("{}: {reason}", self.tp));
                    let d = self.backoff.next_delay();
                    self.pause(d).await;
                    self.window.resume();
                    return;
                }
            }
            if hard.is_cancelled() {
                return;
            }
        }
    }

    /// Asks DC2 which batches of the current identity it holds from `from_seq` on.
    async fn read_tail(&mut self, from_seq: i32) -> Result<Vec<super::window::Held>, String> {
        let Some(id) = self.ident else {
            return Err("no DC2 producer id yet".into());
        };
        metrics::counter!("kafka_tee_dc2_tail_reads_total").increment(1);
        let hard = self.sh.hard_stop.clone();
        let read = tokio::select! {
            r = read_held(
                &self.sh.dc2,
                &self.dc2_topic,
                self.tp.partition,
                (id.producer_id, id.epoch),
                from_seq,
                self.dc2_next,
            ) => r,
            _ = hard.cancelled() => return Err("stopping".into()),
        };
        match read {
            Ok(held) => {
                tracing::info!(
                    partition = %self.tp, from_seq, held = held.len(),
                    "read DC2's tail: batches DC2 holds are not sent again"
                );
                metrics::counter!("kafka_tee_dc2_tail_held_batches_total")
                    .increment(held.len() as u64);
                Ok(held)
            }
            Err(e) => {
                metrics::counter!("kafka_tee_dc2_tail_read_errors_total").increment(1);
                if e.needs_metadata_refresh() {
                    self.leader = None;
                    let _ = self
                        .sh
                        .dc2
                        .refresh_metadata_coalesced(&[&self.dc2_topic])
                        .await;
                }
                Err(e.to_string())
            }
        }
    }

    /// A new DC2 producer identity (numbering restarts at 0), or `None` on failure.
    async fn renew(&mut self) -> Option<i32> {
        let stale = self.ident?;
        match self.sh.identity.renew(&self.sh.dc2, stale.generation).await {
            Ok(id) => {
                tracing::warn!(
                    partition = %self.tp, producer_id = id.producer_id, epoch = id.epoch,
                    "DC2 lost track of the replicator's producer; continuing with a new producer id"
                );
                self.ident = Some(id);
                Some(0)
            }
            Err(e) => {
                self.warn_limited(&format!("cannot renew the DC2 producer id: {e}"));
                None
            }
        }
    }

    /// Notes what an answer says beyond the batch itself (errors counted, metadata to
    /// refresh, the topic to check again).
    fn note_answer(&mut self, r: &UnitResult) {
        match r {
            UnitResult::Unknown { refresh, .. } => {
                self.refresh |= *refresh;
                // The broker may have restarted and lost the topic; Tansu 0.6 acks
                // Produce to a missing topic without storing anything, so the topic
                // is checked again before the resend.
                self.invalidate = true;
            }
            UnitResult::Rejected { error, .. } => {
                metrics::counter!("kafka_tee_dc2_errors_total", "code" => error_code_label(*error))
                    .increment(1);
                self.refresh |= is_metadata_error(*error);
                self.invalidate |= matches!(
                    error,
                    ResponseError::UnknownTopicOrPartition | ResponseError::UnknownProducerId
                );
            }
            UnitResult::Acked { .. } => {}
        }
    }

    /// Before a tail read or a resend: forgets the leader, refreshes metadata and has
    /// the topic checked again when the answers called for it.
    async fn apply_answers(&mut self) {
        self.leader = None;
        if std::mem::take(&mut self.refresh) {
            let _ = self
                .sh
                .dc2
                .refresh_metadata_coalesced(&[&self.dc2_topic])
                .await;
        }
        if std::mem::take(&mut self.invalidate) {
            self.gate.invalidate().await;
            self.status = None;
        }
    }

    async fn submit(&mut self, token: u64, seq: i32) -> Result<(), String> {
        let Some(ident) = self.ident else {
            return Err("no DC2 producer id yet".into());
        };
        let leader = match self.leader {
            Some(l) => l,
            None => match self.sh.dc2.leader(&self.dc2_topic, self.tp.partition).await {
                Ok(l) => {
                    self.leader = Some(l);
                    l
                }
                Err(e) => {
                    if matches!(e, crate::client::ClientError::UnknownTopic { .. }) {
                        self.invalidate = true;
                    }
                    return Err(format!(
                        "no DC2 leader for {}-{}: {e}",
                        self.dc2_topic, self.tp.partition
                    ));
                }
            },
        };
        let sender = self.sh.sender(leader);
        let Some(ready) = self.window.sending(token) else {
            return Err("batch no longer in the window".into());
        };
        let batch = ready.batch.patch(ident.producer_id, ident.epoch, seq, true);
        let (tx, rx) = oneshot::channel();
        let unit = Unit {
            topic: self.dc2_topic.clone(),
            partition: self.tp.partition,
            batch,
            reply: tx,
        };
        let hard = self.sh.hard_stop.clone();
        tokio::select! {
            r = sender.send(unit) => r.map_err(|_| "the DC2 sender stopped".to_string())?,
            _ = hard.cancelled() => return Err("stopping".into()),
        }
        self.flights.push_back(Flight {
            token,
            rx,
            deadline: Instant::now() + self.sh.settings.request_timeout * 3,
        });
        Ok(())
    }

    async fn next_ready(&mut self) -> Next {
        let hard = self.sh.hard_stop.clone();
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Next::Ready(r);
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
                    return Next::Wait;
                }
                let mut skipped = Skipped::default();
                let step = tokio::select! {
                    s = c.step(&self.sh.dc1, &self.tp.topic, self.tp.partition, &mut skipped) => s,
                    _ = hard.cancelled() => return Next::Idle,
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
                            self.ready.push_back(Ready {
                                first,
                                last,
                                batch: b,
                                budget: 0,
                                from_dc1: true,
                            });
                        }
                    }
                    Ok(Step::Wait) => {
                        self.catchup_retry_at =
                            Some(Instant::now() + self.catchup_backoff.next_delay());
                        return Next::Wait;
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
                        return Next::Wait;
                    }
                }
                continue;
            }
            match self.queue.pop_front() {
                None => return Next::Idle,
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
                }) => {
                    let len = records.len();
                    let batch = match RecordBatch::parse(records) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(
                                partition = %self.tp, offset = base_offset, error = %e,
                                "cannot replicate a batch DC1 acknowledged: it is not a valid record batch"
                            );
                            metrics::counter!("kafka_tee_invalid_batches_total").increment(1);
                            self.sh.budget.release(len);
                            continue;
                        }
                    };
                    let last = base_offset.saturating_add(i64::from(batch.last_offset_delta()));
                    if self.sent_upto.is_some_and(|s| last <= s) {
                        self.sh.budget.release(len);
                        continue;
                    }
                    return Next::Ready(Ready {
                        first: base_offset,
                        last,
                        batch,
                        budget: len,
                        from_dc1: false,
                    });
                }
            }
        }
    }

    /// Offsets that can never reach DC2: say so loudly, count them, move on.
    fn lost(&mut self, from: i64, to: i64, reason: &str) {
        let n = (to - from + 1).max(0) as u64;
        tracing::error!(
            partition = %self.tp, from, to, offsets = n, reason,
            "DATA LOST: offsets acknowledged by DC1 cannot be copied to DC2"
        );
        metrics::counter!("kafka_tee_data_lost_records_total").increment(n);
        self.sent_upto = Some(self.sent_upto.map_or(to, |s| s.max(to)));
        if self.window.is_empty() && self.ready.is_empty() {
            self.acked = Some(self.acked.map_or(to, |a| a.max(to)));
            self.publish();
        }
    }

    /// Waits for the answer to the oldest send (taking in new items meanwhile) and
    /// hands it to the window.
    async fn await_front(&mut self) {
        let hard = self.sh.hard_stop.clone();
        let ev = {
            let rx_open = self.rx_open;
            let input = &mut self.rx;
            let Some(front) = self.flights.front_mut() else {
                return;
            };
            let (token, deadline) = (front.token, front.deadline);
            tokio::select! {
                r = tokio::time::timeout_at(deadline.into(), &mut front.rx) => Event::Front(token, match r {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => UnitResult::Unknown { reason: "the DC2 sender dropped the batch".into(), refresh: false },
                    Err(_) => UnitResult::Unknown { reason: "no answer from DC2 in time".into(), refresh: true },
                }),
                item = input.recv(), if rx_open => Event::Input(item),
                _ = hard.cancelled() => Event::Stop,
            }
        };
        match ev {
            Event::Stop => {}
            Event::Input(Some((at, item))) => self.accept(at, item),
            Event::Input(None) => self.rx_open = false,
            Event::Front(token, r) => {
                self.flights.pop_front();
                self.note_answer(&r);
                self.window.answer(token, r);
            }
        }
    }

    fn commit(&mut self, ready: Ready, seq: i32, dc2_offset: Option<i64>) {
        self.check_dc2_offset(dc2_offset, i64::from(ready.span()));
        let pushed_at = self
            .arrivals
            .iter()
            .find(|a| a.last >= ready.first)
            .map(|a| a.at);
        let latency = pushed_at.map_or(Duration::ZERO, |t| t.elapsed());
        metrics::histogram!("kafka_tee_replication_latency_seconds").record(latency.as_secs_f64());
        let _ = seq;
        self.acked = Some(self.acked.map_or(ready.last, |a| a.max(ready.last)));
        self.sh.budget.release(ready.budget);
        metrics::counter!("kafka_tee_replicated_batches_total").increment(1);
        metrics::counter!("kafka_tee_replicated_records_total")
            .increment(ready.batch.record_count().max(0) as u64);
        metrics::counter!("kafka_tee_replicated_bytes_total").increment(ready.batch.len() as u64);
        if ready.from_dc1 {
            metrics::counter!("kafka_tee_catchup_batches_total").increment(1);
        }
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
    fn check_dc2_offset(&mut self, dc2_offset: Option<i64>, span: i64) {
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

    fn drop_batch(
        &mut self,
        ready: Ready,
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
        self.sh.budget.release(ready.budget);
        if at_front {
            self.acked = Some(self.acked.map_or(ready.last, |a| a.max(ready.last)));
            self.publish();
        }
    }

    /// Remembers when offsets `first..=last` were handed over (in offset order). Past
    /// `MAX_ARRIVALS` entries, a new one is merged into the last (keeping the earlier
    /// time), so a partition held for long does not grow this without bound.
    fn arrive(&mut self, last: i64, at: Instant, bytes: u64) {
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
    fn prune_arrivals(&mut self) {
        let Some(acked) = self.acked else {
            return;
        };
        while self.arrivals.front().is_some_and(|a| a.last <= acked) {
            self.arrivals.pop_front();
        }
    }

    /// Records progress for the checkpoint and waiters.
    fn publish(&mut self) {
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
                },
            );
            // Waiters wake up now, so everything they may read is already updated.
            self.sh.progress_changed();
        }
    }

    fn update_lag(&mut self) {
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

    /// Sleeps for `d` while still taking in new items.
    async fn pause(&mut self, d: Duration) {
        self.pause_until(Instant::now() + d).await;
    }

    async fn pause_until(&mut self, until: Instant) {
        self.report();
        let hard = self.sh.hard_stop.clone();
        let draining = self.sh.draining.clone();
        loop {
            // A held topic cannot flush anything: on shutdown it stops waiting at once.
            let stop_on_drain = self.is_held() && !draining.is_cancelled();
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => return,
                item = self.rx.recv(), if self.rx_open => match item {
                    Some((at, i)) => self.accept(at, i),
                    None => self.rx_open = false,
                },
                _ = draining.cancelled(), if stop_on_drain => return,
                _ = hard.cancelled() => return,
            }
        }
    }

    /// Waits for something to do.
    async fn idle(&mut self) {
        self.report();
        let hard = self.sh.hard_stop.clone();
        let draining = self.sh.draining.clone();
        let follow = self.sh.settings.follow_interval.is_some()
            && self.pushed_upto.is_some()
            && !draining.is_cancelled();
        tokio::select! {
            item = self.rx.recv(), if self.rx_open => match item {
                Some((at, i)) => self.accept(at, i),
                None => self.rx_open = false,
            },
            // Wakes up once so the run loop sees the drain and checks `finished`.
            _ = draining.cancelled(), if !draining.is_cancelled() => {}
            _ = hard.cancelled() => {}
            _ = tokio::time::sleep_until(self.follow_at.into()), if follow => self.follow_dc1().await,
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
    async fn follow_dc1(&mut self) {
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

    fn warn_limited(&mut self, what: &str) {
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

    /// Frees every budget byte still held; the worker is stopping. Batches the
    /// window already knows DC2 holds are committed first, so the checkpoint has them.
    fn release_all(&mut self) {
        for a in self.window.take_decided() {
            match a {
                Action::Commit {
                    item,
                    seq,
                    dc2_offset,
                } => self.commit(item, seq, dc2_offset),
                Action::Drop {
                    item,
                    error,
                    message,
                    at_front,
                } => self.drop_batch(item, error, message, at_front),
                _ => {}
            }
        }
        let mut released = self.queue.clear();
        released += self.ready.drain(..).map(|r| r.budget).sum::<usize>();
        released += self
            .window
            .drain()
            .into_iter()
            .map(|r| r.budget)
            .sum::<usize>();
        self.shrink_window(self.window_bytes);
        self.note_full(false);
        self.sh.budget.release(released);
        if self.lag_reported != 0 {
            metrics::gauge!("kafka_tee_replication_lag_records", "topic" => self.tp.topic.to_string())
                .decrement(self.lag_reported as f64);
            self.lag_reported = 0;
        }
    }
}
