//! One partition's items waiting for DC2, in DC1 offset order, with adjacent gaps
//! merged so a long stretch of offsets to read back from DC1 stays one entry.

use std::collections::VecDeque;

use crate::protocol::batch::RecordBatch;
use crate::tee::Pending;

/// DC1 offsets `first..=last` covered by an item.
pub(super) fn item_range(item: &Pending) -> (i64, i64) {
    match item {
        Pending::Batch {
            base_offset,
            records,
            ..
        } => (*base_offset, batch_last_offset(*base_offset, records)),
        Pending::Gap { from, to } => (*from, *to),
    }
}

/// The last DC1 offset of a batch acknowledged at `base_offset`; the base offset
/// itself when the header cannot be read.
pub(super) fn batch_last_offset(base_offset: i64, records: &bytes::Bytes) -> i64 {
    match RecordBatch::parse(records.clone()) {
        Ok(b) => base_offset.saturating_add(i64::from(b.last_offset_delta())),
        Err(_) => base_offset,
    }
}

/// The queue of one partition. Batch bytes are counted (a batch's budget comes back
/// when it is turned into a gap or dropped).
#[derive(Debug, Default)]
pub(super) struct PartitionQueue {
    items: VecDeque<Pending>,
    /// Bytes of the batches in `items`.
    bytes: usize,
}

fn batch_len(item: &Pending) -> usize {
    match item {
        Pending::Batch { records, .. } => records.len(),
        Pending::Gap { .. } => 0,
    }
}

impl PartitionQueue {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn pop_front(&mut self) -> Option<Pending> {
        let item = self.items.pop_front()?;
        self.bytes -= batch_len(&item);
        Some(item)
    }

    /// Appends an item; a gap that touches or overlaps the last gap is merged into it.
    pub(super) fn push_back(&mut self, item: Pending) {
        if let Pending::Gap { from, to } = item
            && let Some(Pending::Gap { from: bf, to: bt }) = self.items.back_mut()
            && from <= bt.saturating_add(1)
            && to >= bf.saturating_sub(1)
        {
            *bf = (*bf).min(from);
            *bt = (*bt).max(to);
            return;
        }
        self.bytes += batch_len(&item);
        self.items.push_back(item);
    }

    /// Puts a gap in front (offsets that come before everything queued), merged with a
    /// gap already at the front when they touch.
    pub(super) fn push_front_gap(&mut self, from: i64, to: i64) {
        if from > to {
            return;
        }
        if let Some(Pending::Gap { from: ff, to: ft }) = self.items.front_mut()
            && *ff <= to.saturating_add(1)
            && *ft >= from.saturating_sub(1)
        {
            *ff = (*ff).min(from);
            *ft = (*ft).max(to);
            return;
        }
        self.items.push_front(Pending::Gap { from, to });
    }

    /// Turns every batch into a gap (to be read back from DC1 later), merging gaps.
    /// Returns the number of batch bytes no longer held (their budget is given back).
    pub(super) fn batches_to_gaps(&mut self) -> usize {
        let mut released = 0;
        let old = std::mem::take(&mut self.items);
        self.bytes = 0;
        for item in old {
            match item {
                Pending::Batch {
                    base_offset,
                    ref records,
                    ..
                } => {
                    released += records.len();
                    let last = batch_last_offset(base_offset, records);
                    self.push_back(Pending::Gap {
                        from: base_offset,
                        to: last,
                    });
                }
                gap => self.push_back(gap),
            }
        }
        released
    }

    /// Drops everything (giving the batches' budget back), returning their bytes.
    pub(super) fn clear(&mut self) -> usize {
        self.items.clear();
        std::mem::take(&mut self.bytes)
    }

    /// Bytes of the batches held.
    pub(super) fn batch_bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub(super) fn items(&self) -> Vec<(bool, i64, i64)> {
        self.items
            .iter()
            .map(|i| {
                let (a, b) = item_range(i);
                (matches!(i, Pending::Gap { .. }), a, b)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{encode_batch, record};
    use bytes::Bytes;
    use kafka_protocol::records::{Compression, Record};

    pub(crate) fn batch(n: i64) -> Bytes {
        let recs: Vec<Record> = (0..n)
            .map(|i| record(i, Bytes::from_static(b"v")))
            .collect();
        encode_batch(&recs, Compression::None)
    }

    #[test]
    fn adjacent_and_overlapping_gaps_merge() {
        let mut q = PartitionQueue::default();
        q.push_back(Pending::Gap { from: 0, to: 4 });
        q.push_back(Pending::Gap { from: 5, to: 9 });
        q.push_back(Pending::Gap { from: 8, to: 12 });
        assert_eq!(q.items(), vec![(true, 0, 12)]);
        q.push_back(Pending::Gap { from: 20, to: 21 });
        assert_eq!(q.items(), vec![(true, 0, 12), (true, 20, 21)]);
        q.push_back(Pending::Batch {
            base_offset: 22,
            records: batch(3),
            reservation: crate::tee::Reservation::none(),
        });
        q.push_back(Pending::Gap { from: 25, to: 25 });
        assert_eq!(
            q.items(),
            vec![
                (true, 0, 12),
                (true, 20, 21),
                (false, 22, 24),
                (true, 25, 25)
            ]
        );
    }

    #[test]
    fn front_gap_merges_with_front() {
        let mut q = PartitionQueue::default();
        q.push_back(Pending::Gap { from: 10, to: 19 });
        q.push_front_gap(5, 9);
        assert_eq!(q.items(), vec![(true, 5, 19)]);
        q.push_front_gap(0, 2);
        assert_eq!(q.items(), vec![(true, 0, 2), (true, 5, 19)]);
        q.push_front_gap(7, 3);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn batches_become_one_gap() {
        let mut q = PartitionQueue::default();
        let b = batch(5);
        let budget = std::sync::Arc::new(crate::tee::Budget::new(1 << 20));
        let item = |base_offset| Pending::Batch {
            base_offset,
            records: b.clone(),
            reservation: budget.try_reserve(b.len()).expect("room"),
        };
        q.push_back(item(100));
        q.push_back(Pending::Gap { from: 105, to: 106 });
        q.push_back(item(107));
        // A hole (a transaction marker, say) keeps gaps apart.
        q.push_back(item(113));
        assert_eq!(q.batch_bytes(), 3 * b.len());
        assert_eq!(budget.used(), 3 * b.len());
        assert_eq!(q.batches_to_gaps(), 3 * b.len());
        assert_eq!(budget.used(), 0, "the batches' budget came back");
        assert_eq!(q.items(), vec![(true, 100, 111), (true, 113, 117)]);
        assert_eq!(q.batch_bytes(), 0);
        assert_eq!(q.clear(), 0);
        assert!(q.is_empty());
    }
}
