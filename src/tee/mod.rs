//! The tee: acknowledged Produce batches, in DC1 offset order per partition, copied to
//! DC2 with the record payload untouched.
//!
//! - `capture` turns a forwarded Produce request and DC1's response into acked batches
//!   and orders them per partition (also holding transactional batches until commit).
//! - `replicator` owns DC2: per-partition queues, the DC2 producer identity, pipelined
//!   Produce, checkpoints and catch-up from DC1.
//! - `crate::protocol::batch` (the record batch format) patches a batch header
//!   (producer id, epoch, sequence) and its CRC.

pub mod capture;
pub mod replicator;
pub mod snapshot;

pub use replicator::TopicFilter;

use std::sync::Arc;

use bytes::Bytes;

/// A DC1 topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// What the replicator must copy next for one partition, handed over in DC1 offset
/// order.
#[derive(Debug)]
pub enum Pending {
    /// A batch DC1 acknowledged at `base_offset`, with the bytes the producer sent and
    /// their share of the memory bound (given back when the item is done with).
    Batch {
        base_offset: i64,
        records: Bytes,
        reservation: Reservation,
    },
    /// Offsets `from..=to` were acknowledged but not kept in memory (bound reached):
    /// they must be read back from DC1.
    Gap { from: i64, to: i64 },
}

/// The memory bound for batches waiting for DC2, shared by capture (which reserves)
/// and the replicator (a batch's `Reservation` gives its bytes back when dropped, once DC2
/// has it or it is turned into a gap or refused). When a reservation fails
/// the batch becomes a `Pending::Gap`, to be read back from DC1 later.
#[derive(Debug)]
pub struct Budget {
    used: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Self {
        Self {
            used: std::sync::atomic::AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `n` bytes from the budget, or None when that would pass the bound. The
    /// bytes come back when the reservation is dropped.
    pub fn try_reserve(self: &Arc<Self>, n: usize) -> Option<Reservation> {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.max)
            })
            .ok()
            .map(|_| Reservation {
                budget: Some(self.clone()),
                bytes: n,
            })
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Bytes taken from a [`Budget`] for one batch; given back exactly once, when it is
/// dropped, whichever way the batch goes (copied, turned into a gap, refused).
#[derive(Debug)]
pub struct Reservation {
    budget: Option<Arc<Budget>>,
    bytes: usize,
}

impl Reservation {
    /// A batch that holds nothing of the budget (read back from DC1).
    pub fn none() -> Self {
        Self {
            budget: None,
            bytes: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(b) = self.budget.take() {
            b.release(self.bytes);
        }
    }
}
