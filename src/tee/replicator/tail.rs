//! Reads what a partition really holds: its end (for DC1's partitions, and to find
//! where to look in DC2), and which batches of the replicator's own producer DC2's
//! tail holds, so the window resends only what is missing (see `window`).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use kafka_protocol::ResponseError;

use super::window::{Held, add_seq};
use crate::client::{Client, ClientError, EARLIEST, FetchedPartition, IsolationLevel};
use crate::protocol::batch::{RecordBatch, split_batches};

/// Bytes asked for per Fetch while reading DC2's tail.
const TAIL_FETCH_BYTES: i32 = 8 * 1024 * 1024;
/// Offsets looked at first, back from DC2's end, when where the window starts in DC2
/// is not known; multiplied by 4 while none of the replicator's batches is found.
const FIRST_LOOK_BACK: i64 = 4096;

fn fetch_at(
    client: &Client,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: i32,
    isolation: IsolationLevel,
) -> impl Future<Output = Result<FetchedPartition, ClientError>> {
    client.fetch(
        topic,
        partition,
        offset,
        max_bytes,
        // Tansu 0.6 answers a fetch with no wait at all without the partition.
        Duration::from_millis(50),
        isolation,
    )
}

/// The offset after the last one a partition holds, read from `from` with a Fetch
/// (Tansu's ListOffsets "latest" is not reliable): the high watermark, or with
/// read_committed the last stable offset (where an open transaction begins) when the
/// broker reports it.
pub(super) async fn partition_end(
    client: &Client,
    topic: &str,
    partition: i32,
    from: i64,
    isolation: IsolationLevel,
) -> Result<i64, ClientError> {
    Ok(partition_bounds(client, topic, partition, from, isolation)
        .await?
        .1)
}

/// (log start, end) of a partition; see [`partition_end`]. The log start is 0 when
/// the broker does not report it.
pub(super) async fn partition_bounds(
    client: &Client,
    topic: &str,
    partition: i32,
    from: i64,
    isolation: IsolationLevel,
) -> Result<(i64, i64), ClientError> {
    // Only the offsets are wanted; a broker still returns one batch.
    let at = |offset| fetch_at(client, topic, partition, offset, 1, isolation);
    let end = |f: &FetchedPartition| match isolation {
        IsolationLevel::ReadCommitted if f.last_stable_offset >= 0 => f.last_stable_offset,
        _ => f.high_watermark,
    };
    match at(from).await {
        Ok(f) => Ok((f.log_start_offset.max(0), end(&f))),
        Err(e) if e.kafka_error() == Some(ResponseError::OffsetOutOfRange) => {
            let start = client.list_offset(topic, partition, EARLIEST).await?;
            if from < start {
                let f = at(start).await?;
                Ok((start, end(&f)))
            } else {
                // Past the end: nothing there.
                Ok((start, from))
            }
        }
        Err(e) => Err(e),
    }
}

/// The batches of producer `producer_id`/`epoch` that a DC2 partition holds from
/// sequence `from_seq` on, in log order. `hint` is the DC2 offset where the batch with
/// `from_seq` should be (right after the replicator's last acknowledged batch) when
/// known; otherwise the tail is searched back from the end until one of the
/// producer's batches turns up (or the log's start is reached).
pub(super) async fn read_held(
    dc2: &Client,
    topic: &str,
    partition: i32,
    producer: (i64, i16),
    from_seq: i32,
    hint: Option<i64>,
) -> Result<Vec<Held>, ClientError> {
    let (log_start, end) = partition_bounds(
        dc2,
        topic,
        partition,
        hint.unwrap_or(0),
        IsolationLevel::ReadUncommitted,
    )
    .await?;
    let mut to = end;
    let mut from = match hint {
        Some(h) if h >= log_start && h <= end => h,
        _ => end.saturating_sub(FIRST_LOOK_BACK).max(log_start),
    };
    let mut back = FIRST_LOOK_BACK;
    loop {
        let mut held = scan(dc2, topic, partition, producer, from, to).await?;
        if !held.is_empty() || hint.is_some_and(|h| h == from) || from <= log_start {
            // Only the window's batches count: those at or after `from_seq`.
            if let Some(i) = held.iter().position(|h| h.base_seq == from_seq) {
                held.drain(..i);
            } else if held
                .last()
                .is_some_and(|h| add_seq(h.last_seq, 1) == from_seq)
            {
                held.clear();
            }
            return Ok(held);
        }
        back = back.saturating_mul(4);
        to = from;
        from = from.saturating_sub(back).max(log_start);
    }
}

/// The producer's batches in `from..to`.
async fn scan(
    dc2: &Client,
    topic: &str,
    partition: i32,
    (producer_id, epoch): (i64, i16),
    from: i64,
    to: i64,
) -> Result<Vec<Held>, ClientError> {
    let mut held = Vec::new();
    walk(dc2, topic, partition, from, to, usize::MAX, |b| {
        let h = b.header();
        if h.producer_id == producer_id && h.producer_epoch == epoch {
            held.push(Held {
                base_seq: h.base_sequence,
                last_seq: add_seq(h.base_sequence, h.last_offset_delta),
                dc2_offset: h.base_offset,
            });
        }
    })
    .await?;
    Ok(held)
}

/// Hands `each` the batches of a partition from `from` on, in log order, until `to`
/// (a batch starting at or after it is not handed over) or `max_bytes` were read;
/// returns the offset the read reached.
async fn walk(
    client: &Client,
    topic: &str,
    partition: i32,
    mut from: i64,
    to: i64,
    max_bytes: usize,
    mut each: impl FnMut(&RecordBatch),
) -> Result<i64, ClientError> {
    let mut read = 0usize;
    while from < to && read < max_bytes {
        let f = fetch_at(
            client,
            topic,
            partition,
            from,
            TAIL_FETCH_BYTES,
            IsolationLevel::ReadUncommitted,
        )
        .await?;
        let mut moved = false;
        for b in split_batches(f.records) {
            let b = b.map_err(|e| ClientError::Protocol {
                cluster: client.config().cluster,
                broker: -1,
                message: format!("a batch in {topic}-{partition} is not valid: {e}"),
            })?;
            let next = b
                .base_offset()
                .saturating_add(i64::from(b.last_offset_delta()) + 1);
            if next <= from {
                continue;
            }
            if b.base_offset() >= to {
                return Ok(to);
            }
            moved = true;
            from = next;
            read += b.len();
            each(&b);
        }
        if !moved {
            break;
        }
    }
    Ok(from.min(to))
}

/// Fingerprints (see [`fingerprint`]) and base offsets of the batches in
/// `from..to` of a partition, in log order, reading at most `max_bytes`; with the offset the read
/// reached (`to` when it read everything).
pub(super) async fn scan_batches(
    client: &Client,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    max_bytes: usize,
) -> Result<(Vec<(u64, i64)>, i64), ClientError> {
    let mut seen = Vec::new();
    let reached = walk(client, topic, partition, from, to, max_bytes, |b| {
        seen.push((fingerprint(b), b.base_offset()))
    })
    .await?;
    Ok((seen, reached))
}

/// Attribute bits a copy may change: transactional (a committed transaction is
/// copied as plain batches) and control.
const COPY_CHANGES_ATTRIBUTES: i16 = 0x10 | 0x20;

/// What the copy of a batch keeps from the original: attributes (but the bits above),
/// offsets delta, timestamps, record count and the records.
pub(super) fn fingerprint(batch: &RecordBatch) -> u64 {
    let h = batch.header();
    let mut s = DefaultHasher::new();
    (h.attributes & !COPY_CHANGES_ATTRIBUTES).hash(&mut s);
    h.last_offset_delta.hash(&mut s);
    h.base_timestamp.hash(&mut s);
    h.max_timestamp.hash(&mut s);
    h.record_count.hash(&mut s);
    batch.records_bytes().hash(&mut s);
    s.finish()
}
