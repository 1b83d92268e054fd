//! Fault sequences with dozens of batches in flight, and a randomized run against a
//! model of a Kafka partition that follows Kafka's idempotence rules (5 batches
//! remembered per producer, DUPLICATE_SEQUENCE_NUMBER inside that memory,
//! OUT_OF_ORDER_SEQUENCE_NUMBER for any other sequence than the next one).

use std::collections::VecDeque;

use super::*;

const LIMITS: Limits = Limits {
    batches: 1000,
    bytes: 1 << 30,
};

fn acked(o: i64) -> SendOutcome {
    SendOutcome::Acked {
        dc2_offset: Some(o),
    }
}

fn rejected(error: ResponseError) -> SendOutcome {
    SendOutcome::Rejected {
        error,
        message: None,
    }
}

fn unknown() -> SendOutcome {
    SendOutcome::Unknown {
        reason: "connection closed".into(),
        refresh: false,
    }
}

/// Every action available now.
fn drain(w: &mut Window<usize>) -> Vec<Action<usize>> {
    std::iter::from_fn(|| w.poll(true)).collect()
}

/// Offers batches `ids` (span 1 each unless given) and returns the sends as (token, seq).
fn offer_and_send(w: &mut Window<usize>, ids: std::ops::Range<usize>) -> Vec<(u64, i32)> {
    for id in ids {
        w.offer(id, 1, 100);
    }
    drain(w)
        .into_iter()
        .map(|a| match a {
            Action::Send { token, seq } => (token, seq),
            other => panic!("expected a send, got {other:?}"),
        })
        .collect()
}

fn commits(actions: &[Action<usize>]) -> Vec<(usize, i32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Commit { item, seq, .. } => Some((*item, *seq)),
            _ => None,
        })
        .collect()
}

fn sends(actions: &[Action<usize>]) -> Vec<(u64, i32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { token, seq } => Some((*token, *seq)),
            _ => None,
        })
        .collect()
}

fn held(seqs: std::ops::Range<i32>, first_offset: i64) -> Vec<Held> {
    seqs.enumerate()
        .map(|(i, s)| Held {
            base_seq: s,
            last_seq: s,
            dc2_offset: first_offset + i as i64,
        })
        .collect()
}

fn expect_wait_then_resume(w: &mut Window<usize>) {
    let a = drain(w);
    assert!(
        matches!(a.as_slice(), [Action::Wait { .. }]),
        "expected one wait, got {a:?}"
    );
    w.resume();
}

#[test]
fn forty_in_flight_commit_in_order() {
    let mut w = Window::new(LIMITS, 0);
    let sent = offer_and_send(&mut w, 0..40);
    assert_eq!(sent.len(), 40);
    assert_eq!(
        sent.iter().map(|s| s.1).collect::<Vec<_>>(),
        (0..40).collect::<Vec<_>>()
    );
    // Answers for later batches first: nothing is committed past an open one.
    for (token, seq) in sent.iter().rev().take(39) {
        w.answer(*token, acked(i64::from(*seq)));
    }
    assert!(drain(&mut w).is_empty());
    w.answer(sent[0].0, acked(0));
    let c = commits(&drain(&mut w));
    assert_eq!(c, (0..40).map(|i| (i, i as i32)).collect::<Vec<_>>());
    assert_eq!(w.acked_seq(), 40);
    assert!(w.is_empty());
}

#[test]
fn connection_cut_reads_the_tail_and_resends_only_what_is_missing() {
    let mut w = Window::new(LIMITS, 0);
    let sent = offer_and_send(&mut w, 0..40);
    for (token, seq) in &sent[..10] {
        w.answer(*token, acked(i64::from(*seq)));
    }
    // The connection breaks with 30 in flight; DC2 had written 15 more of them.
    for (token, _) in &sent[10..] {
        w.answer(*token, unknown());
    }
    let a = drain(&mut w);
    assert_eq!(commits(&a).len(), 10);
    assert!(matches!(a.last(), Some(Action::ReadTail { from_seq: 10 })));
    w.tail(Ok(held(10..25, 10)));
    let a = drain(&mut w);
    assert_eq!(
        commits(&a),
        (10..25).map(|i| (i, i as i32)).collect::<Vec<_>>()
    );
    assert!(matches!(a.last(), Some(Action::Wait { .. })));
    w.resume();
    let resent = sends(&drain(&mut w));
    assert_eq!(
        resent.iter().map(|s| s.1).collect::<Vec<_>>(),
        (25..40).collect::<Vec<_>>(),
        "the rest is resent with the same sequence numbers"
    );
}

#[test]
fn not_leader_resends_from_the_first_failure_without_a_tail_read() {
    let mut w = Window::new(LIMITS, 0);
    let sent = offer_and_send(&mut w, 0..30);
    for (token, seq) in &sent[..5] {
        w.answer(*token, acked(i64::from(*seq)));
    }
    for (token, _) in &sent[5..] {
        w.answer(*token, rejected(ResponseError::NotLeaderOrFollower));
    }
    let a = drain(&mut w);
    assert_eq!(commits(&a).len(), 5);
    assert!(matches!(a.last(), Some(Action::Wait { .. })));
    w.resume();
    let resent = sends(&drain(&mut w));
    assert_eq!(
        resent.iter().map(|s| s.1).collect::<Vec<_>>(),
        (5..30).collect::<Vec<_>>()
    );
}

#[test]
fn not_leader_then_out_of_order_behind_it_reads_the_tail() {
    // Kafka: once batch 5 is refused, every later one is out of order.
    let mut w = Window::new(LIMITS, 0);
    let sent = offer_and_send(&mut w, 0..30);
    for (token, seq) in &sent[..5] {
        w.answer(*token, acked(i64::from(*seq)));
    }
    w.answer(sent[5].0, rejected(ResponseError::NotLeaderOrFollower));
    for (token, _) in &sent[6..] {
        w.answer(*token, rejected(ResponseError::OutOfOrderSequenceNumber));
    }
    let a = drain(&mut w);
    assert!(matches!(a.last(), Some(Action::ReadTail { from_seq: 5 })));
    w.tail(Ok(vec![]));
    expect_wait_then_resume(&mut w);
    let resent = sends(&drain(&mut w));
    assert_eq!(resent.len(), 25);
    assert_eq!(resent[0].1, 5);
}

#[test]
fn timeout_with_the_batch_written() {
    let mut w = Window::new(LIMITS, 0);
    let sent = offer_and_send(&mut w, 0..50);
    // No answer in time for any of them; DC2 wrote all 50.
    for (token, _) in &sent {
        w.answer(*token, unknown());
    }
    assert!(matches!(
        drain(&mut w).as_slice(),
        [Action::ReadTail { from_seq: 0 }]
    ));
    w.tail(Ok(held(0..50, 1000)));
    let a = drain(&mut w);
    assert_eq!(commits(&a).len(), 50);
    assert!(
        !a.iter().any(|x| matches!(x, Action::Wait { .. })),
        "nothing left to resend: {a:?}"
    );
    assert!(w.is_empty() && w.is_open());
    assert_eq!(w.acked_seq(), 50);
}

#[test]
fn timeout_with_the_batch_not_written() {
    let mut w = Window::new(LIMITS, 0);
    let sent = offer_and_send(&mut w, 0..50);
    for (token, _) in &sent {
        w.answer(*token, unknown());
    }
    drain(&mut w);
    w.tail(Ok(vec![]));
    expect_wait_then_resume(&mut w);
    let resent = sends(&drain(&mut w));
    assert_eq!(
        resent.iter().map(|s| s.1).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
}

#[test]
fn out_of_order_on_a_batch_dc2_already_holds_is_committed() {
    // A resend after lost answers: DC2 holds batches 0..20 but remembers only 15..20,
    // so it calls the resend of 0 out of order.
    let mut w = Window::new(LIMITS, 0);
    let sent = offer_and_send(&mut w, 0..20);
    w.answer(sent[0].0, rejected(ResponseError::OutOfOrderSequenceNumber));
    for (token, _) in &sent[1..] {
        w.answer(*token, rejected(ResponseError::OutOfOrderSequenceNumber));
    }
    assert!(matches!(
        drain(&mut w).as_slice(),
        [Action::ReadTail { from_seq: 0 }]
    ));
    w.tail(Ok(held(0..20, 0)));
    let c = commits(&drain(&mut w));
    assert_eq!(c, (0..20).map(|i| (i, i as i32)).collect::<Vec<_>>());
    assert_eq!(w.acked_seq(), 20);
}

#[test]
fn a_failed_tail_read_is_retried_before_anything_is_resent() {
    let mut w = Window::new(LIMITS, 7);
    let sent = offer_and_send(&mut w, 0..12);
    for (token, _) in &sent {
        w.answer(*token, unknown());
    }
    drain(&mut w);
    w.tail(Err("connection refused".into()));
    let a = drain(&mut w);
    assert!(matches!(a.as_slice(), [Action::Wait { .. }]), "{a:?}");
    assert!(
        w.poll(true).is_none(),
        "nothing is sent while DC2 is unread"
    );
    w.resume();
    assert!(matches!(
        drain(&mut w).as_slice(),
        [Action::ReadTail { from_seq: 7 }]
    ));
    w.tail(Ok(held(7..10, 0)));
    let a = drain(&mut w);
    assert_eq!(commits(&a).len(), 3);
}

#[test]
fn out_of_order_that_dc2_does_not_hold_renews_after_three_strikes() {
    let mut w = Window::new(LIMITS, 40);
    offer_and_send(&mut w, 0..10);
    let mut sent = Vec::new();
    for round in 0..3 {
        if round > 0 {
            sent = sends(&drain(&mut w));
        } else {
            sent = std::mem::take(&mut sent);
        }
        let tokens: Vec<u64> = if round == 0 {
            (0..10).collect()
        } else {
            sent.iter().map(|s| s.0).collect()
        };
        for t in tokens {
            w.answer(t, rejected(ResponseError::OutOfOrderSequenceNumber));
        }
        assert!(matches!(
            drain(&mut w).as_slice(),
            [Action::ReadTail { from_seq: 40 }]
        ));
        w.tail(Ok(vec![]));
        if round < 2 {
            expect_wait_then_resume(&mut w);
        }
    }
    assert!(matches!(drain(&mut w).as_slice(), [Action::Renew]));
    w.renewed(Some(0));
    let resent = sends(&drain(&mut w));
    assert_eq!(
        resent.iter().map(|s| s.1).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>(),
        "a new identity numbers from 0"
    );
}

#[test]
fn a_lost_producer_reads_the_tail_before_renewing() {
    let mut w = Window::new(LIMITS, 0);
    let sent = offer_and_send(&mut w, 0..20);
    for (token, _) in &sent[..8] {
        w.answer(*token, unknown());
    }
    for (token, _) in &sent[8..] {
        w.answer(*token, rejected(ResponseError::UnknownProducerId));
    }
    assert!(matches!(
        drain(&mut w).as_slice(),
        [Action::ReadTail { from_seq: 0 }]
    ));
    // The first 8 were written before DC2 lost the producer.
    w.tail(Ok(held(0..8, 0)));
    let a = drain(&mut w);
    assert_eq!(commits(&a).len(), 8);
    assert!(matches!(a.last(), Some(Action::Renew)));
    w.renewed(None);
    expect_wait_then_resume(&mut w);
    assert!(matches!(drain(&mut w).as_slice(), [Action::Renew]));
    w.renewed(Some(0));
    let resent = sends(&drain(&mut w));
    assert_eq!(
        resent.iter().map(|s| s.1).collect::<Vec<_>>(),
        (0..12).collect::<Vec<_>>()
    );
}

#[test]
fn a_batch_refused_for_good_is_dropped_and_the_rest_renumbered() {
    let mut w = Window::new(LIMITS, 0);
    let sent = offer_and_send(&mut w, 0..20);
    for (token, seq) in &sent[..3] {
        w.answer(*token, acked(i64::from(*seq)));
    }
    w.answer(sent[3].0, rejected(ResponseError::MessageTooLarge));
    for (token, _) in &sent[4..] {
        w.answer(*token, rejected(ResponseError::OutOfOrderSequenceNumber));
    }
    drain(&mut w);
    w.tail(Ok(vec![]));
    let a = drain(&mut w);
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Drop {
            item: 3,
            at_front: true,
            ..
        }
    )));
    w.resume();
    let resent = sends(&drain(&mut w));
    assert_eq!(
        resent.iter().map(|s| s.1).collect::<Vec<_>>(),
        (3..19).collect::<Vec<_>>(),
        "the batches after the dropped one take its sequence numbers"
    );
    let ids: Vec<usize> = resent
        .iter()
        .filter_map(|s| w.sending(s.0).copied())
        .collect();
    assert_eq!(ids, (4..20).collect::<Vec<_>>());
}

#[test]
fn after_a_restart_batches_dc2_holds_are_committed_without_a_send() {
    let mut w = Window::new(LIMITS, 100);
    w.require_tail();
    assert!(matches!(
        drain(&mut w).as_slice(),
        [Action::ReadTail { from_seq: 100 }]
    ));
    assert!(!w.has_room());
    // DC2 holds 3 batches of 2 records past the checkpoint.
    w.tail(Ok((0..3)
        .map(|i| Held {
            base_seq: 100 + 2 * i,
            last_seq: 101 + 2 * i,
            dc2_offset: 500 + 2 * i64::from(i),
        })
        .collect()));
    assert!(drain(&mut w).is_empty());
    for id in 0..5 {
        w.offer(id, 2, 10);
    }
    let a = drain(&mut w);
    assert_eq!(commits(&a), vec![(0, 100), (1, 102), (2, 104)]);
    assert_eq!(
        sends(&a).iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![106, 108]
    );
}

#[test]
fn window_is_bounded_in_bytes_and_batches() {
    let mut w: Window<usize> = Window::new(
        Limits {
            batches: 100,
            bytes: 1000,
        },
        0,
    );
    let mut n = 0;
    while w.has_room() {
        w.offer(n, 1, 300);
        n += 1;
    }
    assert_eq!(n, 4, "the batch that crosses the byte bound is the last");
    assert_eq!(w.bytes(), 1200);
    let mut w: Window<usize> = Window::new(
        Limits {
            batches: 3,
            bytes: 1 << 20,
        },
        0,
    );
    while w.has_room() {
        w.offer(0, 1, 1);
    }
    assert_eq!(w.len(), 3);
    assert!(w.is_full());
    let mut w: Window<usize> = Window::new(
        Limits {
            batches: 1,
            bytes: 1,
        },
        0,
    );
    assert!(w.has_room(), "an empty window takes one batch of any size");
    w.offer(0, 1, 1 << 20);
    assert!(!w.has_room());
}

#[test]
fn stale_answers_are_ignored() {
    let mut w = Window::new(LIMITS, 0);
    let sent = offer_and_send(&mut w, 0..3);
    for (token, _) in &sent {
        w.answer(*token, rejected(ResponseError::NotLeaderOrFollower));
    }
    expect_wait_then_resume(&mut w);
    let resent = sends(&drain(&mut w));
    w.answer(sent[0].0, acked(0));
    assert!(drain(&mut w).is_empty());
    for (token, seq) in &resent {
        w.answer(*token, acked(i64::from(*seq)));
    }
    assert_eq!(commits(&drain(&mut w)).len(), 3);
}

#[test]
fn sequences_wrap_like_kafka() {
    assert_eq!(add_seq(0, 5), 5);
    assert_eq!(add_seq(i32::MAX - 2, 2), i32::MAX);
    assert_eq!(add_seq(i32::MAX - 2, 3), 0);
    assert_eq!(add_seq(i32::MAX, 1), 0);
    assert_eq!(add_seq(i32::MAX, 10), 9);
    let mut w = Window::new(LIMITS, i32::MAX - 1);
    let sent = offer_and_send(&mut w, 0..4);
    assert_eq!(
        sent.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![i32::MAX - 1, i32::MAX, 0, 1]
    );
    for (token, _) in &sent {
        w.answer(*token, unknown());
    }
    drain(&mut w);
    w.tail(Ok(held(0..1, 0)
        .into_iter()
        .map(|_| Held {
            base_seq: i32::MAX - 1,
            last_seq: i32::MAX - 1,
            dc2_offset: 0,
        })
        .chain([Held {
            base_seq: i32::MAX,
            last_seq: i32::MAX,
            dc2_offset: 1,
        }])
        .collect()));
    assert_eq!(commits(&drain(&mut w)).len(), 2);
    assert_eq!(w.acked_seq(), 0);
}

// ------------------------------------------------------------ randomized, Kafka rules

/// A DC2 partition with Kafka's idempotence rules for one producer at a time.
struct KafkaPartition {
    /// (producer id, batch id) in log order.
    log: Vec<(u32, usize)>,
    /// Per producer id: the last 5 batches as (base, last sequence), and the next.
    producers: Vec<(VecDeque<(i32, i32)>, i32)>,
}

impl KafkaPartition {
    fn produce(&mut self, pid: u32, id: usize, seq: i32, span: i32) -> SendOutcome {
        let p = pid as usize;
        while self.producers.len() <= p {
            self.producers.push((VecDeque::new(), 0));
        }
        let last = add_seq(seq, span - 1);
        let (recent, next) = &mut self.producers[p];
        if recent.contains(&(seq, last)) {
            return SendOutcome::Acked { dc2_offset: None };
        }
        if seq != *next {
            return rejected(ResponseError::OutOfOrderSequenceNumber);
        }
        recent.push_back((seq, last));
        if recent.len() > 5 {
            recent.pop_front();
        }
        *next = add_seq(last, 1);
        self.log.push((pid, id));
        acked(self.log.len() as i64 - 1)
    }

    /// The producer's batches from `from_seq` on, as the tail read reports them.
    fn tail(&self, pid: u32, spans: &[i32]) -> Vec<Held> {
        let mut seq = 0;
        let mut out = Vec::new();
        for (offset, (p, id)) in self.log.iter().enumerate() {
            if *p == pid {
                let span = spans[*id];
                out.push(Held {
                    base_seq: seq,
                    last_seq: add_seq(seq, span - 1),
                    dc2_offset: offset as i64,
                });
                seq = add_seq(seq, span);
            }
        }
        out
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// Runs `n` batches through a window against the model, with faults, and checks that
/// DC2 ends with every batch exactly once in order and that commits follow that order.
fn run_with_faults(seed: u64, n: usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let spans: Vec<i32> = (0..n).map(|_| 1 + (rng.next() % 4) as i32).collect();
    let mut dc2 = KafkaPartition {
        log: Vec::new(),
        producers: Vec::new(),
    };
    let mut pid = 0u32;
    let mut w = Window::new(
        Limits {
            batches: 64,
            bytes: 1 << 30,
        },
        0,
    );
    let mut offered = 0;
    let mut committed = Vec::new();
    // Sends on the wire, in order: (token, id, seq, pid when sent).
    let mut wire: VecDeque<(u64, usize, i32, u32)> = VecDeque::new();
    let mut steps = 0;
    while committed.len() < n {
        steps += 1;
        assert!(steps < 200_000, "seed {seed}: no progress");
        while w.has_room() && offered < n {
            w.offer(offered, spans[offered], 100);
            offered += 1;
        }
        while let Some(a) = w.poll(true) {
            match a {
                Action::Send { token, seq } => {
                    let id = *w.sending(token).expect("current send");
                    wire.push_back((token, id, seq, pid));
                }
                Action::Commit { item, .. } => committed.push(item),
                Action::Drop { item, .. } => panic!("seed {seed}: batch {item} dropped"),
                Action::ReadTail { .. } => {
                    if rng.chance(200) {
                        w.tail(Err("timeout".into()));
                    } else {
                        w.tail(Ok(dc2.tail(pid, &spans)));
                    }
                }
                Action::Renew => {
                    if rng.chance(300) {
                        w.renewed(None);
                    } else {
                        pid += 1;
                        w.renewed(Some(0));
                    }
                }
                Action::Wait { .. } => w.resume(),
            }
        }
        // Deliver a random stretch of the wire, then maybe a fault for what follows.
        let k = 1 + (rng.next() % 16) as usize;
        for _ in 0..k.min(wire.len()) {
            let Some((token, id, seq, p)) = wire.pop_front() else {
                break;
            };
            let r = dc2.produce(p, id, seq, spans[id]);
            w.answer(token, r);
        }
        match rng.next() % 100 {
            // Connection cut: each batch on the wire either was written (its answer
            // lost) or never arrived.
            0..=4 => {
                let written = (rng.next() % (wire.len() as u64 + 1)) as usize;
                for (i, (token, id, seq, p)) in wire.drain(..).enumerate() {
                    if i < written {
                        let _ = dc2.produce(p, id, seq, spans[id]);
                    }
                    w.answer(token, unknown());
                }
            }
            // The leader moved: the next batch is refused, the rest out of order.
            5..=7 => {
                if let Some((token, ..)) = wire.pop_front() {
                    w.answer(token, rejected(ResponseError::NotLeaderOrFollower));
                }
                for (token, id, seq, p) in wire.drain(..) {
                    let r = dc2.produce(p, id, seq, spans[id]);
                    w.answer(token, r);
                }
            }
            // A timeout on the front batch, written or not.
            8..=9 => {
                if let Some((token, id, seq, p)) = wire.pop_front() {
                    if rng.chance(500) {
                        let _ = dc2.produce(p, id, seq, spans[id]);
                    }
                    w.answer(token, unknown());
                }
            }
            // A send that never left.
            10 => {
                if let Some((token, ..)) = wire.pop_front() {
                    w.not_sent(token, "no leader".into());
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        committed,
        (0..n).collect::<Vec<_>>(),
        "seed {seed}: commits in DC1 order, each once"
    );
    // Drain what is left on the wire: DC2 must not take anything twice.
    for (token, id, seq, p) in wire.drain(..) {
        let r = dc2.produce(p, id, seq, spans[id]);
        w.answer(token, r);
    }
    let ids: Vec<usize> = dc2.log.iter().map(|(_, id)| *id).collect();
    assert_eq!(
        ids,
        (0..n).collect::<Vec<_>>(),
        "seed {seed}: DC2 holds every batch once, in order"
    );
}

#[test]
fn randomized_faults_against_kafka_rules_never_duplicate_or_reorder() {
    for seed in 1..=300 {
        run_with_faults(seed, 400);
    }
}
