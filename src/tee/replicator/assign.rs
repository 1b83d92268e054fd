//! Who replicates which DC1 partition in a replication group: the assignment the
//! group's leader computes, and the bytes members exchange through the coordinator.
//!
//! The assignment is balanced (member counts differ by at most one) and sticky: a
//! member keeps the partitions it owned in the previous generation up to its share, so
//! a member joining or leaving moves only the partitions that must move. Every
//! partition has exactly one owner. The result depends only on the input, so the
//! leader's choice can be checked (and tested) without a broker.
//!
//! Wire format (this group's own protocol, opaque to the coordinator), for both a
//! member's metadata (what it owns now) and an assignment (what it is to own):
//! `i16 version (0)`, `i32 count`, then per partition `i16 topic length`, the topic's
//! UTF-8 bytes, `i32 partition`; all big-endian.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::tee::TopicPartition;

/// The protocol name members announce in JoinGroup.
pub const PROTOCOL: &str = "kafka-tee-sticky";
/// The protocol type of a replication group (consumers use "consumer").
pub const PROTOCOL_TYPE: &str = "kafka-tee";
const VERSION: i16 = 0;

/// Encodes a set of partitions (a member's ownership or its assignment).
pub fn encode(parts: &[TopicPartition]) -> Bytes {
    let mut b = BytesMut::with_capacity(6 + parts.len() * 16);
    b.put_i16(VERSION);
    b.put_i32(i32::try_from(parts.len()).unwrap_or(i32::MAX));
    for tp in parts {
        let name = tp.topic.as_bytes();
        let len = name.len().min(i16::MAX as usize);
        b.put_i16(len as i16);
        b.put_slice(&name[..len]);
        b.put_i32(tp.partition);
    }
    b.freeze()
}

/// Decodes what [`encode`] wrote; a clear error for anything else.
pub fn decode(mut b: &[u8]) -> Result<Vec<TopicPartition>, String> {
    if b.is_empty() {
        // A member that owns nothing may send no bytes at all.
        return Ok(Vec::new());
    }
    if b.remaining() < 6 {
        return Err(format!("{} bytes, too short for a header", b.len()));
    }
    let version = b.get_i16();
    if version != VERSION {
        return Err(format!("version {version}, this kafka-tee reads {VERSION}"));
    }
    let count = b.get_i32();
    let count = usize::try_from(count).map_err(|_| format!("negative count {count}"))?;
    let mut out = Vec::with_capacity(count.min(b.remaining() / 6));
    for i in 0..count {
        if b.remaining() < 2 {
            return Err(format!("entry {i} of {count}: truncated"));
        }
        let len = b.get_i16();
        let len = usize::try_from(len).map_err(|_| format!("entry {i}: negative length"))?;
        if b.remaining() < len + 4 {
            return Err(format!("entry {i} of {count}: truncated"));
        }
        let topic = std::str::from_utf8(&b[..len])
            .map_err(|_| format!("entry {i}: topic is not UTF-8"))?
            .to_string();
        b.advance(len);
        let partition = b.get_i32();
        out.push(TopicPartition {
            topic: Arc::from(topic),
            partition,
        });
    }
    if b.has_remaining() {
        return Err(format!("{} bytes after the last entry", b.remaining()));
    }
    Ok(out)
}

/// The leader's assignment: `partitions` (every partition the group replicates)
/// spread over `members` (member id, partitions it owned before). Members are taken
/// in member-id order; a partition two members claim goes to the first.
pub fn assign(
    members: &[(String, Vec<TopicPartition>)],
    partitions: &[TopicPartition],
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut out: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let all: BTreeSet<&TopicPartition> = partitions.iter().collect();
    let mut sorted: Vec<&(String, Vec<TopicPartition>)> = members.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    // What each member may keep: partitions that still exist and nobody before it
    // claimed.
    let mut claimed: BTreeSet<&TopicPartition> = BTreeSet::new();
    let mut kept: Vec<(&str, Vec<&TopicPartition>)> = sorted
        .iter()
        .map(|(id, owned)| {
            let mut mine: Vec<&TopicPartition> = owned
                .iter()
                .filter(|tp| all.contains(tp) && claimed.insert(*tp))
                .collect();
            mine.sort();
            (id.as_str(), mine)
        })
        .collect();
    // Shares: `base` each, one more for the first `extra`; the larger shares go to the
    // members that own the most already, so fewer partitions move.
    let n = kept.len();
    let (base, extra) = (all.len() / n, all.len() % n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| kept[b].1.len().cmp(&kept[a].1.len()).then(a.cmp(&b)));
    let mut share = vec![base; n];
    for &i in order.iter().take(extra) {
        share[i] += 1;
    }
    let mut free: Vec<&TopicPartition> = Vec::new();
    for (i, (_, mine)) in kept.iter_mut().enumerate() {
        if mine.len() > share[i] {
            free.extend(mine.drain(share[i]..));
        }
    }
    free.extend(all.iter().copied().filter(|tp| !claimed.contains(tp)));
    free.sort();
    let mut free = free.into_iter();
    for (i, (_, mine)) in kept.iter_mut().enumerate() {
        while mine.len() < share[i] {
            match free.next() {
                Some(tp) => mine.push(tp),
                None => break,
            }
        }
    }
    for (id, mine) in kept {
        let mut v: Vec<TopicPartition> = mine.into_iter().cloned().collect();
        v.sort();
        out.insert(id.to_string(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: i32) -> TopicPartition {
        TopicPartition {
            topic: Arc::from(t),
            partition: p,
        }
    }

    fn parts(n: i32) -> Vec<TopicPartition> {
        (0..n).map(|p| tp("orders", p)).collect()
    }

    /// Every partition exactly once, and shares within one of each other.
    fn check_cover(a: &BTreeMap<String, Vec<TopicPartition>>, all: &[TopicPartition]) {
        let mut seen: Vec<&TopicPartition> = a.values().flatten().collect();
        seen.sort();
        let mut want: Vec<&TopicPartition> = all.iter().collect();
        want.sort();
        assert_eq!(seen, want, "not an exact cover: {a:?}");
        let sizes: Vec<usize> = a.values().map(Vec::len).collect();
        let (min, max) = (sizes.iter().min(), sizes.iter().max());
        assert!(
            max.zip(min).is_some_and(|(x, y)| x - y <= 1),
            "unbalanced: {sizes:?}"
        );
    }

    fn moved(
        before: &BTreeMap<String, Vec<TopicPartition>>,
        after: &BTreeMap<String, Vec<TopicPartition>>,
    ) -> usize {
        after
            .iter()
            .map(|(m, ps)| {
                let had = before.get(m).cloned().unwrap_or_default();
                ps.iter().filter(|p| !had.contains(p)).count()
            })
            .sum()
    }

    fn members_of(a: &BTreeMap<String, Vec<TopicPartition>>) -> Vec<(String, Vec<TopicPartition>)> {
        a.iter().map(|(m, p)| (m.clone(), p.clone())).collect()
    }

    #[test]
    fn first_generation_spreads_evenly() {
        let all = parts(8);
        let m: Vec<(String, Vec<TopicPartition>)> = ["a", "b", "c"]
            .iter()
            .map(|s| (s.to_string(), vec![]))
            .collect();
        let a = assign(&m, &all);
        check_cover(&a, &all);
        assert_eq!(a.len(), 3);
    }

    /// Eight partitions assigned to members a, b and c, none owning anything before.
    fn three_members_first_generation()
    -> (Vec<TopicPartition>, BTreeMap<String, Vec<TopicPartition>>) {
        let all = parts(8);
        let m: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|s| (s.to_string(), vec![]))
            .collect();
        let first = assign(&m, &all);
        (all, first)
    }

    #[test]
    fn a_member_leaving_moves_only_its_partitions() {
        let (all, first) = three_members_first_generation();
        let mut left = members_of(&first);
        let gone = left.remove(1);
        let second = assign(&left, &all);
        check_cover(&second, &all);
        // Only the departed member's partitions changed hands.
        assert_eq!(moved(&first, &second), gone.1.len());
    }

    #[test]
    fn a_member_joining_takes_only_its_share() {
        let (all, first) = three_members_first_generation();
        let mut more = members_of(&first);
        more.push(("d".into(), vec![]));
        let second = assign(&more, &all);
        check_cover(&second, &all);
        assert_eq!(second["d"].len(), 2);
        assert_eq!(moved(&first, &second), 2, "only d's two partitions move");
    }

    #[test]
    fn claims_on_the_same_partition_and_on_gone_partitions_are_resolved() {
        let all = parts(4);
        let m = vec![
            (
                "a".to_string(),
                vec![tp("orders", 0), tp("orders", 1), tp("gone", 0)],
            ),
            ("b".to_string(), vec![tp("orders", 1), tp("orders", 2)]),
        ];
        let a = assign(&m, &all);
        check_cover(&a, &all);
        assert_eq!(a["a"], vec![tp("orders", 0), tp("orders", 1)]);
        assert_eq!(a["b"], vec![tp("orders", 2), tp("orders", 3)]);
    }

    #[test]
    fn random_membership_changes_keep_an_exact_balanced_cover() {
        let all: Vec<TopicPartition> = (0..13)
            .map(|p| tp("t1", p))
            .chain((0..5).map(|p| tp("t2", p)))
            .collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut current: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
        let mut next_id = 0;
        for _ in 0..500 {
            let mut m = members_of(&current);
            if m.is_empty() || (m.len() < 7 && rnd(2) == 0) {
                m.push((format!("m{next_id:03}"), vec![]));
                next_id += 1;
            } else {
                let i = rnd(m.len() as u64) as usize;
                m.remove(i);
            }
            let after = assign(&m, &all);
            if !m.is_empty() {
                check_cover(&after, &all);
            }
            current = after;
        }
    }

    #[test]
    fn the_wire_format_round_trips_and_bad_bytes_get_a_clear_error() {
        let ps = vec![tp("orders", 0), tp("päyments", 7)];
        assert_eq!(decode(&encode(&ps)).as_deref(), Ok(&ps[..]));
        assert_eq!(decode(&[]), Ok(vec![]));
        let good = encode(&ps);
        for cut in 1..good.len() {
            assert!(decode(&good[..cut]).is_err(), "{cut} bytes decoded");
        }
        let mut v = good.to_vec();
        v[1] = 9;
        assert!(decode(&v).unwrap_err().contains("version 9"));
        let mut v = good.to_vec();
        v.push(0);
        assert!(decode(&v).unwrap_err().contains("after the last entry"));
        assert!(
            decode(&[0, 0, 0xff, 0xff, 0xff, 0xff])
                .unwrap_err()
                .contains("negative count")
        );
    }
}
