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
#[derive(Debug, Clone)]
pub enum Pending {
    /// A batch DC1 acknowledged at `base_offset`, with the bytes the producer sent.
    Batch { base_offset: i64, records: Bytes },
    /// Offsets `from..=to` were acknowledged but not kept in memory (bound reached):
    /// they must be read back from DC1.
    Gap { from: i64, to: i64 },
}

/// The memory bound for batches waiting for DC2, shared by capture (which reserves)
/// and the replicator (which releases once DC2 has a batch). When a reservation fails
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

    /// Takes `n` bytes from the budget, or returns false when that would pass the bound.
    pub fn try_reserve(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.max)
            })
            .is_ok()
    }

    /// Returns `n` bytes taken by `try_reserve`.
    pub fn release(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}
