//! One worker per DC1 partition: takes the partition's items in DC1 offset order,
//! reads gaps back from DC1, patches each batch with the DC2 producer identity and the
//! partition's next sequence, and keeps up to `max_in_flight_per_partition` batches in
//! flight to the DC2 leader.
//!
//! Invariants:
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
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use tokio::sync::{mpsc, oneshot};

use super::catchup::{CatchUp, Skipped, Step};
use super::queue::{PartitionQueue, item_range};
use super::sender::{Unit, UnitResult};
use super::topics::{GateContext, RECHECK, TopicGate, TopicStatus};
use super::{Identity, Progress, Shared, Snapshot};
use crate::client::{Backoff, IsolationLevel, is_metadata_error};
use crate::tee::batch::RecordBatch;
use crate::tee::{Pending, TopicPartition};

/// How often the same kind of trouble is logged per partition at warn level.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// A front batch rejected as out of order this many times in a row gets a new
/// producer identity.
const OOO_STRIKES: u32 = 3;

/// Kafka's sequence arithmetic: sequences wrap from i32::MAX to 0.
pub(super) fn add_seq(seq: i32, n: i32) -> i32 {
    if seq > i32::MAX - n {
        n - (i32::MAX - seq) - 1
    } else {
        seq + n
    }
}

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

/// A batch in the window: sent (`rx` set) or waiting to be (re)sent.
struct Sent {
    ready: Ready,
    seq: i32,
    rx: Option<oneshot::Receiver<UnitResult>>,
    deadline: Instant,
}

/// What to do with a batch after DC2 answered.
#[derive(Debug)]
enum Class {
    Acked,
    Resend,
    /// Resend with a new producer identity.
    Renew,
    /// DC2 will never take this batch.
    Drop(ResponseError, Option<String>),
}

fn classify(r: &UnitResult) -> Class {
    match r {
        UnitResult::Acked { .. } => Class::Acked,
        UnitResult::Unknown { .. } => Class::Resend,
        UnitResult::Rejected { error, message } => match error {
            ResponseError::UnknownProducerId
            | ResponseError::InvalidProducerEpoch
            | ResponseError::ProducerFenced
            | ResponseError::InvalidProducerIdMapping => Class::Renew,
            ResponseError::MessageTooLarge
            | ResponseError::RecordListTooLarge
            | ResponseError::InvalidRecord
            | ResponseError::CorruptMessage
            | ResponseError::InvalidTimestamp
            | ResponseError::UnsupportedForMessageFormat
            | ResponseError::UnsupportedCompressionType
            | ResponseError::PolicyViolation
            | ResponseError::InvalidTopicException
            | ResponseError::TopicAuthorizationFailed
            | ResponseError::ClusterAuthorizationFailed
            | ResponseError::TransactionalIdAuthorizationFailed
            | ResponseError::InvalidRequiredAcks
            | ResponseError::InvalidRequest => Class::Drop(*error, message.clone()),
            _ => Class::Resend,
        },
    }
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
    Front(UnitResult),
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
    inflight: VecDeque<Sent>,
    ident: Option<Identity>,
    /// (producer id, epoch, next sequence) from the checkpoint, used if the identity
    /// in force is still that one.
    restored_seq: Option<(i64, i16, i32)>,
    next_seq: i32,
    /// Sequence following the last batch DC2 holds.
    acked_seq: i32,
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
    ooo_strikes: u32,
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
            inflight: VecDeque::new(),
            ident: None,
            restored_seq: restored.map(|p| (p.producer_id, p.producer_epoch, p.next_sequence)),
            next_seq: 0,
            acked_seq: 0,
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
            ooo_strikes: 0,
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
            if let Err(reason) = self.fill().await {
                if hard.is_cancelled() {
                    break;
                }
                self.warn_limited(&reason);
                let results = self.settle().await;
                self.recover(results).await;
                let d = self.backoff.next_delay();
                self.pause(d).await;
                continue;
            }
            if self.inflight.is_empty() {
                match self.catchup_retry_at {
                    Some(at) if self.catchup.is_some() => self.pause_until(at).await,
                    _ => self.idle().await,
                }
                continue;
            }
            self.await_front().await;
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
            e = dc1_end(&self.sh.dc1, &self.tp, expect, IsolationLevel::ReadUncommitted) => e,
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
            + self.inflight.iter().map(|s| s.ready.budget).sum::<usize>();
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
            && self.inflight.is_empty()
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
        for s in self.inflight.drain(..) {
            released += s.ready.budget;
            ranges.push((s.ready.first, s.ready.last));
        }
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
        self.next_seq = self.acked_seq;
        self.catchup_retry_at = None;
        self.leader = None;
    }

    /// Makes sure the worker has a DC2 producer identity, switching to a renewed one
    /// when nothing is in flight. Returns false after a failed attempt (already paused).
    async fn ensure_identity(&mut self) -> bool {
        let current = self.sh.identity.peek();
        if let (Some(mine), Some(cur)) = (self.ident, current) {
            if mine.generation == cur.generation || !self.inflight.is_empty() {
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
        let seq = match self.restored_seq.take() {
            Some((pid, epoch, seq)) if pid == id.producer_id && epoch == id.epoch => seq,
            _ => 0,
        };
        self.ident = Some(id);
        self.acked_seq = seq;
        self.renumber();
    }

    /// Gives the window's batches contiguous sequence numbers after `acked_seq`.
    fn renumber(&mut self) {
        let mut seq = self.acked_seq;
        for s in self.inflight.iter_mut() {
            s.seq = seq;
            seq = add_seq(seq, s.ready.span());
        }
        self.next_seq = seq;
    }

    /// (Re)sends what is waiting in the window, then takes new batches up to the
    /// window size. Errors mean a batch could not be handed to DC2.
    async fn fill(&mut self) -> Result<(), String> {
        for i in 0..self.inflight.len() {
            if self.inflight[i].rx.is_none() {
                self.submit(i).await?;
            }
        }
        while self.inflight.len() < self.sh.settings.window {
            match self.next_ready().await {
                Next::Ready(r) => {
                    let seq = self.next_seq;
                    self.next_seq = add_seq(seq, r.span());
                    self.sent_upto = Some(self.sent_upto.map_or(r.last, |s| s.max(r.last)));
                    self.inflight.push_back(Sent {
                        ready: r,
                        seq,
                        rx: None,
                        deadline: Instant::now(),
                    });
                    self.submit(self.inflight.len() - 1).await?;
                }
                Next::Idle | Next::Wait => break,
            }
        }
        Ok(())
    }

    async fn submit(&mut self, i: usize) -> Result<(), String> {
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
                        self.gate.invalidate().await;
                        self.status = None;
                    }
                    return Err(format!(
                        "no DC2 leader for {}-{}: {e}",
                        self.dc2_topic, self.tp.partition
                    ));
                }
            },
        };
        let sender = self.sh.sender(leader);
        let s = &mut self.inflight[i];
        let batch = s
            .ready
            .batch
            .patch(ident.producer_id, ident.epoch, s.seq, true);
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
        s.rx = Some(rx);
        s.deadline = Instant::now() + self.sh.settings.request_timeout * 3;
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
        if self.inflight.is_empty() && self.ready.is_empty() {
            self.acked = Some(self.acked.map_or(to, |a| a.max(to)));
            self.publish();
        }
    }

    async fn await_front(&mut self) {
        let hard = self.sh.hard_stop.clone();
        let ev = {
            let rx_open = self.rx_open;
            let input = &mut self.rx;
            let Some(front) = self.inflight.front_mut() else {
                return;
            };
            let deadline = front.deadline;
            match front.rx.as_mut() {
                None => Event::Front(UnitResult::Unknown {
                    reason: "not sent".into(),
                    refresh: false,
                }),
                Some(rx) => tokio::select! {
                    r = tokio::time::timeout_at(deadline.into(), rx) => Event::Front(match r {
                        Ok(Ok(r)) => r,
                        Ok(Err(_)) => UnitResult::Unknown { reason: "the DC2 sender dropped the batch".into(), refresh: false },
                        Err(_) => UnitResult::Unknown { reason: "no answer from DC2 in time".into(), refresh: true },
                    }),
                    item = input.recv(), if rx_open => Event::Input(item),
                    _ = hard.cancelled() => Event::Stop,
                },
            }
        };
        match ev {
            Event::Stop => {}
            Event::Input(Some((at, item))) => self.accept(at, item),
            Event::Input(None) => self.rx_open = false,
            Event::Front(r) => {
                if let Some(front) = self.inflight.front_mut() {
                    front.rx = None;
                }
                if let UnitResult::Acked { dc2_offset } = r {
                    if let Some(s) = self.inflight.pop_front() {
                        self.commit(s.ready, s.seq, dc2_offset);
                    }
                    return;
                }
                if let UnitResult::Rejected {
                    error: ResponseError::OutOfOrderSequenceNumber,
                    ..
                } = r
                {
                    self.ooo_strikes += 1;
                }
                let dropped = matches!(classify(&r), Class::Drop(..));
                let describe = match &r {
                    UnitResult::Rejected { error, message } => format!(
                        "DC2 rejected a batch of {} with {error}{}",
                        self.tp,
                        message
                            .as_deref()
                            .map(|m| format!(" ({m})"))
                            .unwrap_or_default()
                    ),
                    UnitResult::Unknown { reason, .. } => {
                        format!("no DC2 answer for a batch of {}: {reason}", self.tp)
                    }
                    UnitResult::Acked { .. } => String::new(),
                };
                let mut results = self.settle().await;
                if let Some(first) = results.first_mut() {
                    *first = r;
                }
                self.recover(results).await;
                // When the only problem was a batch dropped for good (already logged),
                // the batches after it go out again at once.
                if !self.inflight.is_empty() && !dropped {
                    self.warn_limited(&describe);
                    let d = self.backoff.next_delay();
                    self.pause(d).await;
                }
            }
        }
    }

    /// Collects the outcome of every batch in the window (waiting for those in flight).
    async fn settle(&mut self) -> Vec<UnitResult> {
        let hard = self.sh.hard_stop.clone();
        let mut out = Vec::with_capacity(self.inflight.len());
        for s in self.inflight.iter_mut() {
            let r = match s.rx.take() {
                None => UnitResult::Unknown {
                    reason: "not sent".into(),
                    refresh: false,
                },
                Some(rx) => tokio::select! {
                    r = tokio::time::timeout_at(s.deadline.into(), rx) => match r {
                        Ok(Ok(r)) => r,
                        _ => UnitResult::Unknown { reason: "no answer from DC2".into(), refresh: true },
                    },
                    _ = hard.cancelled() => UnitResult::Unknown { reason: "stopping".into(), refresh: false },
                },
            };
            out.push(r);
        }
        out
    }

    /// Applies the settled outcomes of the whole window: commits what DC2 has, drops
    /// what it never will, and leaves the rest to be resent in order.
    async fn recover(&mut self, results: Vec<UnitResult>) {
        let classes: Vec<Class> = results.iter().map(classify).collect();
        // Brokers only accept a batch after the ones before it (sequence check), so a
        // batch with no answer before an acknowledged one was written.
        let last_acked = classes.iter().rposition(|c| matches!(c, Class::Acked));
        let mut refresh = false;
        let mut renew = self.ooo_strikes >= OOO_STRIKES;
        let mut invalidate = false;
        let entries: Vec<Sent> = self.inflight.drain(..).collect();
        let mut keep = VecDeque::new();
        for (i, ((mut s, class), result)) in
            entries.into_iter().zip(classes).zip(results).enumerate()
        {
            match &result {
                UnitResult::Unknown { refresh: r, .. } => {
                    refresh |= *r;
                    // The broker may have restarted and lost the topic; Tansu 0.6 acks
                    // Produce to a missing topic without storing anything, so the
                    // topic is checked again before the resend.
                    invalidate = true;
                }
                UnitResult::Rejected { error, .. } => {
                    metrics::counter!("kafka_tee_dc2_errors_total", "code" => error_code_label(*error))
                        .increment(1);
                    refresh |= is_metadata_error(*error);
                    invalidate |= matches!(
                        error,
                        ResponseError::UnknownTopicOrPartition | ResponseError::UnknownProducerId
                    );
                }
                UnitResult::Acked { .. } => {}
            }
            let class = match class {
                Class::Resend | Class::Renew if last_acked.is_some_and(|l| i < l) => {
                    if let UnitResult::Rejected { error, .. } = &result {
                        tracing::warn!(
                            partition = %self.tp, offset = s.ready.first, %error,
                            "DC2 acknowledged a later batch after rejecting this one; treating it as written"
                        );
                    }
                    Class::Acked
                }
                c => c,
            };
            match class {
                Class::Acked if keep.is_empty() => {
                    let dc2_offset = match result {
                        UnitResult::Acked { dc2_offset } => dc2_offset,
                        _ => None,
                    };
                    self.commit(s.ready, s.seq, dc2_offset);
                }
                Class::Acked | Class::Resend => {
                    s.rx = None;
                    keep.push_back(s);
                }
                Class::Renew => {
                    renew = true;
                    s.rx = None;
                    keep.push_back(s);
                }
                Class::Drop(error, message) => {
                    let at_front = keep.is_empty();
                    self.drop_batch(s.ready, error, message, at_front);
                }
            }
        }
        self.inflight = keep;
        self.leader = None;
        if renew && let Some(stale) = self.ident {
            match self.sh.identity.renew(&self.sh.dc2, stale.generation).await {
                Ok(id) => {
                    tracing::warn!(
                        partition = %self.tp, producer_id = id.producer_id, epoch = id.epoch,
                        "DC2 lost track of the replicator's producer; continuing with a new producer id"
                    );
                    self.ident = Some(id);
                    self.acked_seq = 0;
                    self.ooo_strikes = 0;
                }
                Err(e) => self.warn_limited(&format!("cannot renew the DC2 producer id: {e}")),
            }
        }
        self.renumber();
        if refresh {
            let _ = self
                .sh
                .dc2
                .refresh_metadata_coalesced(&[&self.dc2_topic])
                .await;
        }
        if invalidate {
            self.gate.invalidate().await;
            self.status = None;
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
        self.acked_seq = add_seq(seq, ready.span());
        self.acked = Some(self.acked.map_or(ready.last, |a| a.max(ready.last)));
        self.sh.budget.release(ready.budget);
        metrics::counter!("kafka_tee_replicated_batches_total").increment(1);
        metrics::counter!("kafka_tee_replicated_records_total")
            .increment(ready.batch.record_count().max(0) as u64);
        metrics::counter!("kafka_tee_replicated_bytes_total").increment(ready.batch.len() as u64);
        if ready.from_dc1 {
            metrics::counter!("kafka_tee_catchup_batches_total").increment(1);
        }
        self.ooo_strikes = 0;
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
                    next_sequence: self.acked_seq,
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
            e = dc1_end(&self.sh.dc1, &self.tp, from, IsolationLevel::ReadCommitted) => e,
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

    /// Frees every budget byte still held; the worker is stopping.
    fn release_all(&mut self) {
        let mut released = self.queue.clear();
        released += self.ready.drain(..).map(|r| r.budget).sum::<usize>();
        released += self
            .inflight
            .drain(..)
            .map(|s| s.ready.budget)
            .sum::<usize>();
        self.sh.budget.release(released);
        if self.lag_reported != 0 {
            metrics::gauge!("kafka_tee_replication_lag_records", "topic" => self.tp.topic.to_string())
                .decrement(self.lag_reported as f64);
            self.lag_reported = 0;
        }
    }
}

/// The offset after the last one DC1 has for a partition, read from `from` with a
/// Fetch (Tansu's ListOffsets "latest" is not reliable): the high watermark, or with
/// read_committed the last stable offset (where an open transaction begins) when the
/// broker reports it.
pub(super) async fn dc1_end(
    dc1: &crate::client::Client,
    tp: &TopicPartition,
    from: i64,
    isolation: IsolationLevel,
) -> Result<i64, crate::client::ClientError> {
    let at = |offset| {
        dc1.fetch(
            &tp.topic,
            tp.partition,
            offset,
            // Only the offsets are wanted; a broker still returns one batch.
            1,
            // Tansu 0.6 answers a fetch with no wait at all without the partition.
            Duration::from_millis(50),
            isolation,
        )
    };
    let end = |f: crate::client::FetchedPartition| match isolation {
        IsolationLevel::ReadCommitted if f.last_stable_offset >= 0 => f.last_stable_offset,
        _ => f.high_watermark,
    };
    match at(from).await {
        Ok(f) => Ok(end(f)),
        Err(e) if e.kafka_error() == Some(ResponseError::OffsetOutOfRange) => {
            let start = dc1
                .list_offset(&tp.topic, tp.partition, crate::client::EARLIEST)
                .await?;
            if from < start {
                Ok(end(at(start).await?))
            } else {
                // Past DC1's end: nothing to resume.
                Ok(from)
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(add_seq(0, 5), 5);
        assert_eq!(add_seq(i32::MAX - 2, 2), i32::MAX);
        assert_eq!(add_seq(i32::MAX - 2, 3), 0);
        assert_eq!(add_seq(i32::MAX, 1), 0);
        assert_eq!(add_seq(i32::MAX, 10), 9);
    }

    #[test]
    fn errors_are_classified() {
        let rej = |error| UnitResult::Rejected {
            error,
            message: None,
        };
        assert!(matches!(
            classify(&UnitResult::Acked {
                dc2_offset: Some(0)
            }),
            Class::Acked
        ));
        assert!(matches!(
            classify(&rej(ResponseError::NotLeaderOrFollower)),
            Class::Resend
        ));
        assert!(matches!(
            classify(&rej(ResponseError::OutOfOrderSequenceNumber)),
            Class::Resend
        ));
        assert!(matches!(
            classify(&rej(ResponseError::UnknownProducerId)),
            Class::Renew
        ));
        assert!(matches!(
            classify(&rej(ResponseError::MessageTooLarge)),
            Class::Drop(..)
        ));
        assert!(matches!(
            classify(&rej(ResponseError::TopicAuthorizationFailed)),
            Class::Drop(..)
        ));
        assert!(matches!(
            classify(&UnitResult::Unknown {
                reason: String::new(),
                refresh: true
            }),
            Class::Resend
        ));
    }
}
