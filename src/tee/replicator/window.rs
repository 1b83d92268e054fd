//! The window of one partition's batches on their way to DC2, as a synchronous state
//! machine: events go in (a batch offered, DC2's answer for a send, a read of DC2's
//! tail, a renewed producer identity, the end of a back-off), actions come out (send,
//! commit, drop, read the tail, renew, wait). No I/O happens here, so every fault
//! sequence can be tested without a broker (see the tests below).
//!
//! The window is bounded in batches and in bytes, not by Kafka's producer limit of 5
//! requests in flight: across a long link the bandwidth-delay product is many batches.
//! A Kafka broker remembers only the last 5 batches per producer and partition, so a
//! batch resent after more than 5 later ones were written is not recognised as a
//! duplicate (it gets OUT_OF_ORDER_SEQUENCE_NUMBER). Hence the rules:
//!
//! - Batches are sent in DC1 order with contiguous sequence numbers; they are
//!   committed in that order, each once.
//! - After any answer other than an acknowledgement, nothing new is sent until every
//!   batch in flight has been answered (settled).
//! - A batch answered with an error before one DC2 acknowledged was written (the
//!   broker takes a sequence only after the one before it).
//! - When an answer leaves it open whether DC2 holds a batch (no answer, a lost
//!   connection, OUT_OF_ORDER_SEQUENCE_NUMBER, a lost producer), DC2's tail is read
//!   before anything is resent or the identity is renewed: the batches there carry the
//!   replicator's producer id and sequences, so those DC2 holds are committed and only
//!   the rest is resent, with the same sequence numbers.
//! - After a restart the tail is read before the first send, and batches read back
//!   from DC1 that DC2 already holds are committed without being sent again.

use std::collections::VecDeque;

use kafka_protocol::ResponseError;

use super::sender::SendOutcome;

/// A front batch rejected as out of order this many times in a row, although the
/// tail shows DC2 does not hold it, gets a new producer identity.
const OOO_STRIKES: u32 = 3;

/// Kafka's sequence arithmetic: sequences wrap from i32::MAX to 0.
pub(super) fn add_seq(seq: i32, n: i32) -> i32 {
    if seq > i32::MAX - n {
        n - (i32::MAX - seq) - 1
    } else {
        seq + n
    }
}

/// How many sequence numbers lie from `from` up to (not including) `to`, with wrap.
fn seq_dist(from: i32, to: i32) -> i64 {
    (i64::from(to) - i64::from(from)).rem_euclid(1 << 31)
}

/// The window's bounds. At least one batch is always allowed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    pub batches: usize,
    pub bytes: usize,
}

/// A batch of the replicator's producer found in DC2's tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    pub base_seq: i32,
    pub last_seq: i32,
    pub dc2_offset: i64,
}

/// What the worker is to do next.
#[derive(Debug)]
pub(super) enum Action<T> {
    /// Send the batch with this token (see [`Window::sending`]) with sequence `seq`,
    /// then report the outcome with [`Window::answer`] or [`Window::not_sent`].
    Send { token: u64, seq: i32 },
    /// DC2 holds the batch.
    Commit {
        item: T,
        seq: i32,
        dc2_offset: Option<i64>,
    },
    /// DC2 will never take the batch. `at_front`: every batch before it is committed.
    Drop {
        item: T,
        error: ResponseError,
        message: Option<String>,
        at_front: bool,
    },
    /// Read which of the replicator's batches DC2 holds after sequence `after`
    /// (exclusive of the sequence itself, i.e. from `after` on), then call
    /// [`Window::tail`].
    ReadTail { from_seq: i32 },
    /// Get a new producer identity, then call [`Window::renewed`].
    Renew,
    /// Back off, then call [`Window::resume`].
    Wait { reason: String },
}

#[derive(Debug)]
enum Status {
    Queued,
    Sent(u64),
    Answered(SendOutcome),
    /// Could not be handed to DC2: certainly not written.
    NotSent,
}

#[derive(Debug)]
struct Entry<T> {
    item: T,
    seq: i32,
    span: i32,
    bytes: usize,
    status: Status,
}

impl<T> Entry<T> {
    fn last_seq(&self) -> i32 {
        add_seq(self.seq, self.span - 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Sending and committing as answers come.
    Open,
    /// Something failed; waiting for every batch in flight to be answered.
    Settling,
    /// Waiting for a read of DC2's tail (`asked`: the read is under way).
    Tail { asked: bool },
    /// Waiting for a new identity (`asked`: the renewal is under way).
    Renewing { asked: bool },
    /// Waiting before resending.
    Backoff,
}

/// What to do with a batch after DC2 answered.
#[derive(Debug)]
enum AnswerAction {
    Acked(Option<i64>),
    Resend,
    /// Not known to be written or not: the tail decides.
    Unsure,
    /// Resend with a new producer identity (after the tail is read).
    Renew,
    Drop(ResponseError, Option<String>),
}

fn action_for(r: &SendOutcome) -> AnswerAction {
    match r {
        SendOutcome::Acked { dc2_offset } => AnswerAction::Acked(*dc2_offset),
        SendOutcome::Unknown { .. } => AnswerAction::Unsure,
        SendOutcome::Rejected { error, message } => match error {
            ResponseError::OutOfOrderSequenceNumber => AnswerAction::Unsure,
            ResponseError::UnknownProducerId
            | ResponseError::InvalidProducerEpoch
            | ResponseError::ProducerFenced
            | ResponseError::InvalidProducerIdMapping => AnswerAction::Renew,
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
            | ResponseError::InvalidRequest => AnswerAction::Drop(*error, message.clone()),
            _ => AnswerAction::Resend,
        },
    }
}

/// One partition's window. `T` is the batch (with whatever the worker keeps with it).
#[derive(Debug)]
pub(super) struct Window<T> {
    limits: Limits,
    entries: VecDeque<Entry<T>>,
    /// Entries before this index have been sent at least once in the current round.
    unsent: usize,
    bytes: usize,
    /// Sequence following the last batch DC2 holds (committed).
    acked_seq: i32,
    next_seq: i32,
    mode: Mode,
    out: VecDeque<Action<T>>,
    next_token: u64,
    /// After a tail read: batches DC2 holds beyond the window, committed without being
    /// sent when they are offered (a restart re-reads them from DC1).
    held: VecDeque<Held>,
    renew: bool,
    strikes: u32,
    /// The first failure of the round, for the back-off's reason.
    trouble: Option<String>,
}

impl<T> Window<T> {
    pub(super) fn new(limits: Limits, acked_seq: i32) -> Self {
        Self {
            limits,
            entries: VecDeque::new(),
            unsent: 0,
            bytes: 0,
            acked_seq,
            next_seq: acked_seq,
            mode: Mode::Open,
            out: VecDeque::new(),
            next_token: 0,
            held: VecDeque::new(),
            renew: false,
            strikes: 0,
            trouble: None,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of the batches in the window.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sequence following the last batch DC2 holds.
    pub(super) fn acked_seq(&self) -> i32 {
        self.acked_seq
    }

    /// Whether a batch sent now would be answered in order: nothing is being settled,
    /// read or renewed.
    pub(super) fn is_open(&self) -> bool {
        self.mode == Mode::Open
    }

    /// Whether the window takes another batch now.
    pub(super) fn has_room(&self) -> bool {
        self.mode == Mode::Open
            && (self.entries.is_empty()
                || (self.entries.len() < self.limits.batches && self.bytes < self.limits.bytes))
    }

    /// Whether the window is open but full: the bound, not DC2, limits the rate.
    pub(super) fn is_full(&self) -> bool {
        self.mode == Mode::Open && !self.has_room()
    }

    /// Items in the window, front (oldest) first.
    pub(super) fn items(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|e| &e.item)
    }

    /// The batch a `Send` action names, while that send is current.
    pub(super) fn sending(&self, token: u64) -> Option<&T> {
        self.entries
            .iter()
            .find(|e| matches!(e.status, Status::Sent(t) if t == token))
            .map(|e| &e.item)
    }

    /// Restarts numbering at `acked_seq` (a new identity, taken while nothing is in
    /// flight).
    pub(super) fn set_acked_seq(&mut self, acked_seq: i32) {
        debug_assert!(
            self.entries
                .iter()
                .all(|e| !matches!(e.status, Status::Sent(_)))
        );
        self.acked_seq = acked_seq;
        self.held.clear();
        self.renumber();
    }

    /// After a restart: DC2 may hold batches past the checkpoint. Its tail is read
    /// before anything is sent.
    pub(super) fn require_tail(&mut self) {
        if self.mode == Mode::Open && !self.in_flight() {
            self.mode = Mode::Tail { asked: false };
            self.ask_tail();
        }
    }

    /// Takes a batch of `span` sequence numbers and `bytes` bytes into the window. A
    /// batch the last tail read showed DC2 already holds is committed at once.
    pub(super) fn offer(&mut self, item: T, span: i32, bytes: usize) {
        let seq = self.next_seq;
        if self.entries.is_empty()
            && let Some(h) = self.held.front().copied()
        {
            if h.base_seq == seq && h.last_seq == add_seq(seq, span - 1) {
                self.held.pop_front();
                self.acked_seq = add_seq(seq, span);
                self.next_seq = self.acked_seq;
                self.out.push_back(Action::Commit {
                    item,
                    seq,
                    dc2_offset: Some(h.dc2_offset),
                });
                return;
            }
            tracing::warn!(
                expected_base = h.base_seq,
                expected_last = h.last_seq,
                seq,
                span,
                "a batch read back does not line up with the batch DC2 holds at its sequence; sending it"
            );
        }
        self.held.clear();
        self.next_seq = add_seq(seq, span);
        self.bytes += bytes;
        self.entries.push_back(Entry {
            item,
            seq,
            span,
            bytes,
            status: Status::Queued,
        });
    }

    /// The next thing to do, if any; `send`: whether a new send may be started now.
    pub(super) fn poll(&mut self, send: bool) -> Option<Action<T>> {
        if let Some(a) = self.out.pop_front() {
            return Some(a);
        }
        if !send || self.mode != Mode::Open {
            return None;
        }
        let e = self.entries.get_mut(self.unsent)?;
        let token = self.next_token;
        self.next_token += 1;
        e.status = Status::Sent(token);
        self.unsent += 1;
        Some(Action::Send { token, seq: e.seq })
    }

    /// DC2's answer for the send `token` (a stale token is ignored).
    pub(super) fn answer(&mut self, token: u64, result: SendOutcome) {
        self.settle(token, Status::Answered(result));
    }

    /// The send `token` could not be handed to DC2 (no leader, no connection).
    pub(super) fn not_sent(&mut self, token: u64, reason: String) {
        self.trouble.get_or_insert(reason);
        self.settle(token, Status::NotSent);
    }

    fn settle(&mut self, token: u64, status: Status) {
        let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| matches!(e.status, Status::Sent(t) if t == token))
        else {
            return;
        };
        let failed = !matches!(status, Status::Answered(SendOutcome::Acked { .. }));
        if let Status::Answered(r) = &status
            && failed
        {
            self.trouble.get_or_insert_with(|| describe(r));
        }
        e.status = status;
        if failed && self.mode == Mode::Open {
            self.mode = Mode::Settling;
        }
        match self.mode {
            Mode::Open => self.commit_front(),
            Mode::Settling if !self.in_flight() => self.resolve(),
            _ => {}
        }
    }

    fn in_flight(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.status, Status::Sent(_)))
    }

    /// Commits acknowledged batches at the front.
    fn commit_front(&mut self) {
        while let Some(e) = self.entries.front() {
            let Status::Answered(SendOutcome::Acked { dc2_offset }) = e.status else {
                break;
            };
            self.commit_one(dc2_offset);
        }
    }

    fn commit_one(&mut self, dc2_offset: Option<i64>) {
        let Some(e) = self.entries.pop_front() else {
            return;
        };
        self.unsent = self.unsent.saturating_sub(1);
        self.bytes -= e.bytes;
        self.acked_seq = add_seq(e.seq, e.span);
        self.strikes = 0;
        self.trouble = None;
        self.out.push_back(Action::Commit {
            item: e.item,
            seq: e.seq,
            dc2_offset,
        });
    }

    /// Every batch of the round is answered: commits what DC2 surely holds, then reads
    /// the tail when anything is uncertain, else goes on to resend.
    fn resolve(&mut self) {
        let last_acked = self
            .entries
            .iter()
            .rposition(|e| matches!(e.status, Status::Answered(SendOutcome::Acked { .. })));
        if let Some(l) = last_acked {
            for _ in 0..=l {
                let Some(e) = self.entries.front() else { break };
                match &e.status {
                    Status::Answered(r) => match action_for(r) {
                        AnswerAction::Drop(error, message) => self.drop_front(error, message),
                        AnswerAction::Acked(o) => self.commit_one(o),
                        _ => {
                            tracing::warn!(
                                seq = e.seq,
                                answer = %describe(r),
                                "DC2 acknowledged a later batch after this answer; treating it as written"
                            );
                            self.commit_one(None);
                        }
                    },
                    _ => self.commit_one(None),
                }
            }
        }
        let mut unsure = false;
        for e in &self.entries {
            if let Status::Answered(r) = &e.status {
                match action_for(r) {
                    AnswerAction::Unsure => unsure = true,
                    AnswerAction::Renew => {
                        unsure = true;
                        self.renew = true;
                    }
                    _ => {}
                }
            }
        }
        if unsure {
            self.mode = Mode::Tail { asked: false };
            self.ask_tail();
        } else {
            self.resend();
        }
    }

    fn ask_tail(&mut self) {
        if self.mode == (Mode::Tail { asked: false }) {
            self.mode = Mode::Tail { asked: true };
            self.out.push_back(Action::ReadTail {
                from_seq: self.acked_seq,
            });
        }
    }

    /// The replicator's batches (current identity) that DC2 holds from the window's
    /// first sequence on, in DC2 order; `Err` when the tail could not be read.
    pub(super) fn tail(&mut self, read: Result<Vec<Held>, String>) {
        if self.mode != (Mode::Tail { asked: true }) {
            return;
        }
        let held = match read {
            Ok(h) => h,
            Err(reason) => {
                self.mode = Mode::Tail { asked: false };
                self.out.push_back(Action::Wait {
                    reason: format!("cannot read what DC2 holds: {reason}"),
                });
                return;
            }
        };
        // Only batches from the window's start on count; older ones are committed.
        let mut held: VecDeque<Held> = held
            .into_iter()
            .filter(|h| seq_dist(self.acked_seq, h.base_seq) < (1 << 30))
            .collect();
        let front_ooo = self.entries.front().is_some_and(|e| {
            matches!(
                &e.status,
                Status::Answered(SendOutcome::Rejected {
                    error: ResponseError::OutOfOrderSequenceNumber,
                    ..
                })
            )
        });
        let mut committed = 0;
        while let (Some(e), Some(h)) = (self.entries.front(), held.front().copied()) {
            if h.base_seq != e.seq {
                break;
            }
            if h.last_seq != e.last_seq() {
                tracing::error!(
                    seq = e.seq,
                    span = e.span,
                    dc2_last = h.last_seq,
                    "DC2 holds a batch at this sequence that does not line up with the batch sent; resending"
                );
                break;
            }
            held.pop_front();
            self.commit_one(Some(h.dc2_offset));
            committed += 1;
        }
        if committed == 0 && front_ooo {
            self.strikes += 1;
            if self.strikes >= OOO_STRIKES {
                self.renew = true;
            }
        }
        // What DC2 holds beyond the window is matched against batches offered later
        // (after a restart); with batches left in the window it cannot be theirs.
        self.held = if self.entries.is_empty() {
            held
        } else {
            VecDeque::new()
        };
        self.resend();
    }

    /// Drops what DC2 will never take, then resends the rest (after a renewal or a
    /// back-off when something went wrong).
    fn resend(&mut self) {
        let mut kept = VecDeque::with_capacity(self.entries.len());
        // A batch dropped for good is already logged: the ones after it go out again
        // at once unless they failed too.
        let mut failed = false;
        let entries = std::mem::take(&mut self.entries);
        for mut e in entries {
            if let Status::Answered(r) = &e.status
                && let AnswerAction::Drop(error, message) = action_for(r)
            {
                self.bytes -= e.bytes;
                self.out.push_back(Action::Drop {
                    item: e.item,
                    error,
                    message,
                    at_front: kept.is_empty(),
                });
                continue;
            }
            failed |= matches!(e.status, Status::Answered(_) | Status::NotSent);
            e.status = Status::Queued;
            kept.push_back(e);
        }
        self.entries = kept;
        self.unsent = 0;
        self.renumber();
        if self.renew {
            self.mode = Mode::Renewing { asked: true };
            self.out.push_back(Action::Renew);
        } else if failed {
            self.mode = Mode::Backoff;
            let reason = self
                .trouble
                .take()
                .unwrap_or_else(|| "DC2 did not take a batch".into());
            self.out.push_back(Action::Wait { reason });
        } else {
            self.mode = Mode::Open;
        }
    }

    fn drop_front(&mut self, error: ResponseError, message: Option<String>) {
        if let Some(e) = self.entries.pop_front() {
            self.unsent = self.unsent.saturating_sub(1);
            self.bytes -= e.bytes;
            self.out.push_back(Action::Drop {
                item: e.item,
                error,
                message,
                at_front: true,
            });
        }
    }

    /// The outcome of a `Renew`: `Some(acked_seq)` with the new identity's first
    /// sequence (0), `None` when it failed (retried after a back-off).
    pub(super) fn renewed(&mut self, first_seq: Option<i32>) {
        if !matches!(self.mode, Mode::Renewing { .. }) {
            return;
        }
        match first_seq {
            Some(seq) => {
                self.renew = false;
                self.strikes = 0;
                self.set_acked_seq(seq);
                self.mode = Mode::Open;
            }
            None => {
                self.mode = Mode::Renewing { asked: false };
                self.out.push_back(Action::Wait {
                    reason: "cannot renew the DC2 producer id".into(),
                });
            }
        }
    }

    /// The back-off asked for by `Wait` is over.
    pub(super) fn resume(&mut self) {
        match self.mode {
            Mode::Backoff => self.mode = Mode::Open,
            Mode::Tail { asked: false } => self.ask_tail(),
            Mode::Renewing { asked: false } => {
                self.mode = Mode::Renewing { asked: true };
                self.out.push_back(Action::Renew);
            }
            _ => {}
        }
    }

    /// Empties the window (nothing may be in flight): its batches, oldest first, are
    /// to be read back later; numbering restarts after the last committed batch.
    pub(super) fn drain(&mut self) -> Vec<T> {
        self.out.retain(|a| !matches!(a, Action::Send { .. }));
        let items = self.entries.drain(..).map(|e| e.item).collect();
        self.bytes = 0;
        self.unsent = 0;
        self.next_seq = self.acked_seq;
        self.held.clear();
        self.mode = Mode::Open;
        items
    }

    /// Actions already decided that carry batches (commits and drops), for a worker
    /// that stops.
    pub(super) fn take_decided(&mut self) -> Vec<Action<T>> {
        self.out.drain(..).collect()
    }

    fn renumber(&mut self) {
        let mut seq = self.acked_seq;
        for e in self.entries.iter_mut() {
            e.seq = seq;
            seq = add_seq(seq, e.span);
        }
        self.next_seq = seq;
    }
}

fn describe(r: &SendOutcome) -> String {
    match r {
        SendOutcome::Acked { .. } => "acknowledged".into(),
        SendOutcome::Rejected { error, message } => format!(
            "DC2 answered {error}{}",
            message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ),
        SendOutcome::Unknown { reason, .. } => format!("no answer from DC2: {reason}"),
    }
}

#[cfg(test)]
mod tests;
