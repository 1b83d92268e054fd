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
    /// DC1 holds records before the offset that are not in DC2 yet: DC2's end as far
    /// as copied (a consumer there would read those records again once they arrive).
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
            // The same shift after a gap: DC2 moved on by as many offsets as DC1, so
            // the gap is batches copied without their DC2 offset being learnt (or a
            // DC2 marker in place of DC1's); either way the run goes on.
            if r.shift == shift {
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
        let dc2_end = last.dc1_last + last.shift + 1;
        if committed == last.dc1_last + 1 {
            // Everything before it is copied: the next record copied goes there.
            return Translated::Exact(dc2_end);
        }
        if committed > last.dc1_last {
            return Translated::NotYetCopied(dc2_end);
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

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The last DC1 offset the map knows a DC2 offset for.
    pub fn last_copied(&self) -> Option<i64> {
        self.runs.back().map(|r| r.dc1_last)
    }

    /// Takes in the runs of `older` (a map read back from where it was kept) that
    /// precede this map's first run, so a restart or a new owner keeps translating
    /// offsets copied before it.
    pub fn merge_older(&mut self, older: &OffsetMap) {
        for r in older.runs.iter().rev() {
            if self.runs.front().is_none_or(|f| r.dc1_last < f.dc1_first) {
                self.runs.push_front(*r);
            }
        }
        while self.runs.len() > MAX_RUNS {
            self.runs.pop_front();
        }
    }

    /// The map of a partition an instance takes over: the one committed with the
    /// group's position (`committed`, the previous owner's and so the newest), before
    /// it what this instance still knows from an earlier tenure (`local`), and after it
    /// the batches the takeover found in DC2 (`found`: first and last DC1 offset, DC2
    /// base offset). A committed text that cannot be read is reported and the map
    /// starts empty: `local` may have gaps the other owner filled, which would
    /// translate wrongly.
    pub fn taken_over(
        local: OffsetMap,
        committed: &str,
        found: &[(i64, i64, i64)],
    ) -> (OffsetMap, Option<String>) {
        let (mut map, problem) = if committed.is_empty() {
            (local, None)
        } else {
            match OffsetMap::decode(committed) {
                Ok(mut m) => {
                    m.merge_older(&local);
                    (m, None)
                }
                Err(e) => (OffsetMap::default(), Some(e)),
            }
        };
        for &(first, last, dc2_base) in found {
            map.copied(first, last, dc2_base);
        }
        (map, problem)
    }

    /// The map as text of at most `max_bytes`, the newest runs first to be kept:
    /// `om1:` then per run `gap.len.shift`, where the first run's gap and shift are its
    /// first DC1 offset and its shift, and each later run's are the DC1 offsets
    /// skipped since the previous run and the change of shift (so a run usually takes
    /// a few bytes). Empty when not even the newest run fits.
    pub fn encode(&self, max_bytes: usize) -> String {
        let piece = |i: usize, first: bool| -> String {
            let r = self.runs[i];
            if first {
                format!("{}.{}.{}", r.dc1_first, r.dc1_last - r.dc1_first, r.shift)
            } else {
                let p = self.runs[i - 1];
                format!(
                    "{}.{}.{}",
                    r.dc1_first - p.dc1_last - 1,
                    r.dc1_last - r.dc1_first,
                    r.shift - p.shift
                )
            }
        };
        let n = self.runs.len();
        // Walk back from the newest run while the text still fits.
        let mut start = n;
        let mut tail = 0usize; // bytes of the relative pieces after `start`, with ';'
        for i in (0..n).rev() {
            let total = PREFIX.len() + piece(i, true).len() + tail;
            if total > max_bytes {
                break;
            }
            start = i;
            if i > 0 {
                tail += piece(i, false).len() + 1;
            }
        }
        if start == n {
            return String::new();
        }
        let mut out = String::from(PREFIX);
        out.push_str(&piece(start, true));
        for i in start + 1..n {
            out.push(';');
            out.push_str(&piece(i, false));
        }
        out
    }

    /// Reads what `encode` wrote. Text that is not a map (another tool's metadata,
    /// damage) is an error, never a wrong map.
    pub fn decode(text: &str) -> Result<OffsetMap, String> {
        let body = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("not an offset map (no {PREFIX} prefix)"))?;
        let mut m = OffsetMap::default();
        for (i, part) in body.split(';').enumerate() {
            let mut it = part.split('.').map(|x| x.parse::<i64>());
            let (Some(Ok(a)), Some(Ok(len)), Some(Ok(d)), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(format!("run {i} ({part:?}) is not gap.len.shift"));
            };
            let prev = m.runs.back().copied();
            let (first, shift) = match prev {
                None => (a, d),
                Some(p) => match (
                    a.checked_add(1).and_then(|x| x.checked_add(p.dc1_last)),
                    p.shift.checked_add(d),
                ) {
                    (Some(f), Some(s)) => (f, s),
                    _ => return Err(format!("run {i} overflows")),
                },
            };
            let last = first
                .checked_add(len)
                .ok_or_else(|| format!("run {i} overflows"))?;
            if a < 0 && prev.is_some() || len < 0 || first < 0 {
                return Err(format!("run {i} ({part:?}) goes backwards"));
            }
            m.runs.push_back(Run {
                dc1_first: first,
                dc1_last: last,
                shift,
            });
            if m.runs.len() > MAX_RUNS {
                m.runs.pop_front();
            }
        }
        Ok(m)
    }
}

const PREFIX: &str = "om1:";

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
        assert_eq!(
            m.translate(520),
            Translated::Exact(20),
            "all copied: DC2's end"
        );
        assert_eq!(m.translate(521), Translated::NotYetCopied(20));
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
        assert_eq!(m.translate(33), Translated::Exact(21));
        assert_eq!(m.translate(34), Translated::NotYetCopied(21));
    }

    fn transactional(n: i64) -> OffsetMap {
        // n transactions of 10 records, each followed by its marker, copied to a DC2
        // partition that started at 0 where DC1 was at 500.
        let mut m = OffsetMap::default();
        for t in 0..n {
            m.copied(500 + 11 * t, 509 + 11 * t, 10 * t);
        }
        m
    }

    #[test]
    fn a_gap_with_the_same_shift_continues_the_run() {
        let mut m = OffsetMap::default();
        m.copied(0, 9, 100);
        // 10..=19 copied without learning where (a duplicate answer), then 20.. at 120.
        m.copied(20, 29, 120);
        assert_eq!(m.runs().count(), 1);
        assert_eq!(m.translate(15), Translated::Exact(115));
    }

    #[test]
    fn encoded_maps_read_back_the_same() {
        for m in [OffsetMap::default(), transactional(1), transactional(300)] {
            let text = m.encode(usize::MAX);
            let back = OffsetMap::decode(&text).unwrap_or_default();
            assert_eq!(back.runs, m.runs, "{text}");
        }
        let m = transactional(2);
        assert_eq!(m.encode(100), "om1:500.9.-500;1.9.-1");
    }

    #[test]
    fn a_bounded_encoding_keeps_the_newest_runs() {
        let m = transactional(1000);
        let text = m.encode(3000);
        assert!(text.len() <= 3000 && text.len() > 2900, "{}", text.len());
        let back = OffsetMap::decode(&text).unwrap_or_default();
        let n = back.runs().count();
        assert!(n > 300, "only {n} runs fit");
        assert_eq!(back.runs.back(), m.runs.back());
        assert_eq!(
            back.translate(500 + 11 * 999 + 3),
            m.translate(500 + 11 * 999 + 3)
        );
        assert_eq!(back.translate(500), Translated::Unknown);
        assert_eq!(m.encode(5), "", "not even one run fits");
    }

    #[test]
    fn bad_text_is_an_error() {
        for bad in [
            "",
            "x",
            "om1:",
            "om1:1.2",
            "om1:1.2.3.4",
            "om1:a.b.c",
            "om1:5.-1.0",
            "om1:5.1.0;-3.1.0",
            "om1:9223372036854775807.1.0",
            "om1:0.0.0;9223372036854775807.0.0",
        ] {
            assert!(OffsetMap::decode(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_older_map_fills_in_before_the_first_run() {
        let full = transactional(10);
        let mut newer = OffsetMap::default();
        // A restart resumed at the 8th transaction.
        for t in 7..10 {
            newer.copied(500 + 11 * t, 509 + 11 * t, 10 * t);
        }
        let mut older = transactional(8);
        older.copied(9000, 9001, 5000); // overlaps what the newer map knows: ignored
        newer.merge_older(&older);
        assert_eq!(newer.runs, full.runs);
    }

    #[test]
    fn a_takeover_continues_the_previous_owners_map() {
        // This instance owned the partition up to the 3rd transaction; the previous
        // owner committed its map up to the 8th; DC2 held the 9th and 10th past the
        // committed position.
        let full = transactional(10);
        let local = transactional(3);
        let committed = transactional(8).encode(3000);
        let found: Vec<(i64, i64, i64)> = (8..10)
            .map(|t| (500 + 11 * t, 509 + 11 * t, 10 * t))
            .collect();
        let (m, problem) = OffsetMap::taken_over(local.clone(), &committed, &found);
        assert_eq!(problem, None);
        assert_eq!(m.runs, full.runs);
        // Nothing committed (a broker that drops the metadata): what this instance knew.
        let (m, _) = OffsetMap::taken_over(local.clone(), "", &[]);
        assert_eq!(m.runs, local.runs);
        // Damaged text: reported, and the stale local map is not trusted.
        let (m, problem) = OffsetMap::taken_over(local, "om1:x", &found);
        assert!(problem.is_some());
        assert_eq!(m.runs().count(), 2, "only the batches found in DC2");
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
