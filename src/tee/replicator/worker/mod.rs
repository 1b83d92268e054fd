//! One worker per DC1 partition: takes the partition's items in DC1 offset order,
//! reads gaps back from DC1, patches each batch with the DC2 producer identity and the
//! sequence its window gives it, and carries out the window's actions (`window`): the
//! sends to the DC2 leader, commits, reads of DC2's tail, renewals, back-offs.
//!
//! This file holds the worker's state and its run loop: the window filled and its
//! actions carried out. The DC1 side (items taken in, gaps, reads back from DC1) is in
//! `source`, the DC2 topic and producer identity in `dc2`, and what the worker reports
//! (outcomes counted, progress, state and lag) in `report`.
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

mod dc2;
mod report;
mod source;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::catchup::CatchUp;
use super::queue::PartitionQueue;
use super::sender::{BatchSend, SendOutcome};
use super::tail::read_held;
use super::topics::{TopicGate, TopicStatus};
use super::window::{Action, Window};
use super::{Identity, Shared, Snapshot};
use crate::client::{Backoff, is_metadata_error};
use crate::protocol::batch::RecordBatch;
use crate::tee::{Pending, Reservation, TopicPartition};

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
struct ReadyBatch {
    first: i64,
    last: i64,
    batch: RecordBatch,
    /// Its share of the memory budget, taken by the capture (none for batches read
    /// from DC1); given back when the batch is dropped.
    budget: Reservation,
    from_dc1: bool,
}

impl ReadyBatch {
    /// Sequence numbers the batch uses: the broker computes the last sequence from the
    /// last offset delta (equal to record count - 1 for a producer's batch).
    fn span(&self) -> i32 {
        self.batch.last_offset_delta().saturating_add(1)
    }
}

/// A send awaiting DC2's answer.
struct Flight {
    token: u64,
    rx: oneshot::Receiver<SendOutcome>,
    deadline: Instant,
}

fn error_code_label(e: ResponseError) -> String {
    format!("{e}")
}

enum NextBatch {
    Ready(ReadyBatch),
    /// Nothing queued.
    Idle,
    /// A gap is being read but DC1 has nothing for it right now.
    Wait,
}

enum WorkerEvent {
    Front(u64, SendOutcome),
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
    ready: VecDeque<ReadyBatch>,
    window: Window<ReadyBatch>,
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
    /// In a replication group: the partition was given to another member. The worker
    /// sends nothing more, waits for the answers to what it has in flight, and stops.
    revoked: CancellationToken,
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
        revoked: CancellationToken,
    ) -> Self {
        let dc2_topic = sh.dc2_topic(&tp.topic);
        let gate = sh.gates.gate(&tp.topic);
        let restored = sh.progress.get(&tp).map(|p| *p);
        let backoff = Backoff::new(sh.settings.retry_backoff, sh.settings.retry_backoff_max);
        let snapshot = Arc::new(std::sync::Mutex::new(Snapshot {
            state: "starting".into(),
            ..Snapshot::idle(restored.map(|p| p.offset))
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
            revoked,
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
            // Known after a takeover in a group: the tail read then starts there rather
            // than searching DC2 back for this instance's older batches.
            dc2_next: restored.and_then(|p| p.dc2_next),
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
            if self.revoked.is_cancelled() {
                self.wind_down().await;
                break;
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

    fn finished(&self) -> bool {
        let input_done = !self.rx_open || (self.sh.draining.is_cancelled() && self.rx.is_empty());
        input_done
            && self.queue.is_empty()
            && self.ready.is_empty()
            && self.window.is_empty()
            && self.flights.is_empty()
            && self.catchup.is_none()
    }

    fn is_held(&self) -> bool {
        self.status.as_ref().is_some_and(|s| !s.is_ready())
    }

    /// Takes batches into the window while it has room (in batches and bytes, and
    /// within the replicator's total in-flight bytes).
    async fn fill(&mut self) {
        let cap = self.sh.settings.max_in_flight_bytes;
        while self.window.has_room()
            && (self.window.is_empty() || self.sh.in_flight_bytes.load(Ordering::Relaxed) < cap)
        {
            match self.next_ready().await {
                NextBatch::Ready(r) => {
                    self.sent_upto = Some(self.sent_upto.map_or(r.last, |s| s.max(r.last)));
                    let (span, bytes) = (r.span(), r.batch.len());
                    self.window_bytes += bytes;
                    self.sh.in_flight_bytes.fetch_add(bytes, Ordering::Relaxed);
                    self.window.offer(r, span, bytes);
                }
                NextBatch::Idle | NextBatch::Wait => break,
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

    /// Notes what an answer says beyond the batch itself (errors counted, metadata to
    /// refresh, the topic to check again).
    fn note_answer(&mut self, r: &SendOutcome) {
        match r {
            SendOutcome::Unknown { refresh, .. } => {
                self.refresh |= *refresh;
                // The broker may have restarted and lost the topic; Tansu 0.6 acks
                // Produce to a missing topic without storing anything, so the topic
                // is checked again before the resend.
                self.invalidate = true;
            }
            SendOutcome::Rejected { error, .. } => {
                self.sh.counters.dc2_error(error_code_label(*error));
                self.refresh |= is_metadata_error(*error);
                self.invalidate |= matches!(
                    error,
                    ResponseError::UnknownTopicOrPartition | ResponseError::UnknownProducerId
                );
            }
            SendOutcome::Acked { .. } => {}
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
        if !self.sh.may_send() {
            return Err("replication group membership in doubt".into());
        }
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
        let unit = BatchSend {
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
                r = tokio::time::timeout_at(deadline.into(), &mut front.rx) => WorkerEvent::Front(token, match r {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => SendOutcome::Unknown { reason: "the DC2 sender dropped the batch".into(), refresh: false },
                    Err(_) => SendOutcome::Unknown { reason: "no answer from DC2 in time".into(), refresh: true },
                }),
                item = input.recv(), if rx_open => WorkerEvent::Input(item),
                _ = hard.cancelled() => WorkerEvent::Stop,
            }
        };
        match ev {
            WorkerEvent::Stop => {}
            WorkerEvent::Input(Some((at, item))) => self.accept(at, item),
            WorkerEvent::Input(None) => self.rx_open = false,
            WorkerEvent::Front(token, r) => {
                self.flights.pop_front();
                self.note_answer(&r);
                self.window.answer(token, r);
            }
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
                _ = self.revoked.cancelled() => return,
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
            _ = self.revoked.cancelled() => {}
            _ = hard.cancelled() => {}
            _ = tokio::time::sleep_until(self.follow_at.into()), if follow => self.follow_dc1().await,
        }
    }

    /// The partition went to another member: nothing more is sent, and the answers
    /// to what is in flight are awaited (up to the request timeout), so what DC2 took
    /// is in the position the release commits and nothing lands after the new owner
    /// looked at DC2's tail.
    async fn wind_down(&mut self) {
        let until = tokio::time::Instant::now() + self.sh.settings.request_timeout;
        while !self.flights.is_empty() && !self.sh.hard_stop.is_cancelled() {
            if tokio::time::timeout_at(until, self.await_front())
                .await
                .is_err()
            {
                tracing::warn!(
                    partition = %self.tp, in_flight = self.flights.len(),
                    "partition released with batches unanswered by DC2; the new owner reads DC2's tail"
                );
                break;
            }
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
        // Dropping the batches gives their budget back.
        self.queue.clear();
        self.ready.clear();
        drop(self.window.drain());
        self.shrink_window(self.window_bytes);
        self.note_full(false);
        if self.lag_reported != 0 {
            metrics::gauge!("kafka_tee_replication_lag_records", "topic" => self.tp.topic.to_string())
                .decrement(self.lag_reported as f64);
            self.lag_reported = 0;
        }
    }
}
