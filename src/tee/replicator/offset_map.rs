//! Per replicated partition, where DC1's offsets went in DC2. Batches are copied
//! whole, so every copied record's DC2 offset is its DC1 offset plus the shift of its
//! batch; consecutive batches keep the same shift until DC1 has offsets DC2 does not
//! (transaction markers, aborted transactions, compacted holes) or DC2 has offsets
//! DC1 does not. The map keeps one run per stretch of batches with the same shift, so
//! a partition without transactions needs one entry, and bounds the number of runs
//! (the oldest go first).
//!
//! A consumer's committed offset is the next record it has not processed; its
//! translation is the DC2 offset of that same record, or, when that offset holds no
//! copied record (a marker, an aborted batch), of the next copied one.

use std::collections::VecDeque;

/// Runs kept per partition before the oldest are forgotten.
pub const MAX_RUNS: usize = 4096;

/// DC1 offsets `dc1_first..=dc1_last` are at DC2 offset + `shift`, i.e. DC2 holds
/// DC1 offset `o` at `o + shift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub dc1_first: i64,
    pub dc1_last: i64,
    pub shift: i64,
}

/// What a DC1 offset translates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translated {
    /// The DC2 offset of the same next record (exact).
    Exact(i64),
    /// The offset is past what DC2 holds yet: DC2's end as far as copied.
    NotYetCopied(i64),
    /// Older than the oldest run kept (or nothing copied yet).
    Unknown,
}

#[derive(Debug, Clone, Default)]
pub struct OffsetMap {
    runs: VecDeque<Run>,
}

impl OffsetMap {
    /// Records that DC1 offsets `first..=last` (one batch) were copied to DC2 starting
    /// at `dc2_base`. Batches come in DC1 order.
    pub fn copied(&mut self, first: i64, last: i64, dc2_base: i64) {
        if last < first {
            return;
        }
        let shift = dc2_base - first;
        if let Some(r) = self.runs.back_mut() {
            if first <= r.dc1_last {
                // Out of order or repeated: nothing new.
                return;
            }
            if r.shift == shift && first == r.dc1_last + 1 {
                r.dc1_last = last;
                return;
            }
        }
        self.runs.push_back(Run {
            dc1_first: first,
            dc1_last: last,
            shift,
        });
        while self.runs.len() > MAX_RUNS {
            self.runs.pop_front();
        }
    }

    /// The DC2 offset of the next record a consumer whose committed DC1 offset is
    /// `committed` reads.
    pub fn translate(&self, committed: i64) -> Translated {
        let (Some(first), Some(last)) = (self.runs.front(), self.runs.back()) else {
            return Translated::Unknown;
        };
        if committed < first.dc1_first {
            return Translated::Unknown;
        }
        if committed > last.dc1_last {
            return Translated::NotYetCopied(last.dc1_last + last.shift + 1);
        }
        // The first run that ends at or after `committed`.
        let i = self.runs.partition_point(|r| r.dc1_last < committed);
        let r = self.runs[i];
        if committed >= r.dc1_first {
            Translated::Exact(committed + r.shift)
        } else {
            // Between two runs: offsets DC2 does not have; the next copied record.
            Translated::Exact(r.dc1_first + r.shift)
        }
    }

    pub fn runs(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_with_one_shift_are_one_run() {
        let mut m = OffsetMap::default();
        // DC1 from 500 copied to a DC2 partition that starts at 0.
        m.copied(500, 509, 0);
        m.copied(510, 519, 10);
        assert_eq!(m.runs().count(), 1);
        assert_eq!(m.translate(500), Translated::Exact(0));
        assert_eq!(m.translate(515), Translated::Exact(15));
        assert_eq!(m.translate(520), Translated::NotYetCopied(20));
        assert_eq!(m.translate(499), Translated::Unknown);
    }

    #[test]
    fn a_transaction_marker_shifts_the_offsets_after_it() {
        let mut m = OffsetMap::default();
        m.copied(0, 9, 0);
        // 10 is the commit marker (not copied); 11.. go to DC2 10..
        m.copied(11, 20, 10);
        assert_eq!(m.runs().count(), 2);
        assert_eq!(
            m.translate(10),
            Translated::Exact(10),
            "the marker: the next record"
        );
        assert_eq!(m.translate(11), Translated::Exact(10));
        assert_eq!(m.translate(20), Translated::Exact(19));
        // An aborted transaction 21..=30 and its marker 31: none of it in DC2.
        m.copied(32, 32, 20);
        assert_eq!(m.translate(25), Translated::Exact(20));
        assert_eq!(m.translate(33), Translated::NotYetCopied(21));
    }

    #[test]
    fn runs_are_bounded_and_repeats_ignored() {
        let mut m = OffsetMap::default();
        for i in 0..(MAX_RUNS as i64 + 10) {
            // Every batch of one record followed by a marker: a run each.
            m.copied(2 * i, 2 * i, i);
        }
        assert_eq!(m.runs().count(), MAX_RUNS);
        assert_eq!(m.translate(0), Translated::Unknown, "forgotten");
        let before: Vec<Run> = m.runs().copied().collect();
        m.copied(4, 4, 2);
        assert_eq!(m.runs().copied().collect::<Vec<_>>(), before);
    }
}
