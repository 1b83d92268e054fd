//! Record batch header patching: producer id, epoch, base sequence, the transactional
//! bit, and the CRC-32C over attributes..end. The records themselves are never touched.
//!
//! Only magic v2 batches exist here: every Produce version the proxy lets through
//! (v3+) carries them. Input is untrusted, so every accessor works on a batch that was
//! validated once by [`RecordBatch::parse`], and nothing in this file can panic on
//! malformed bytes.

use bytes::{Bytes, BytesMut};

/// Size of the magic v2 batch header, up to and including `recordCount`.
pub const HEADER_LEN: usize = 61;

// Field offsets within the header.
const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;
/// `batchLength` counts the bytes after itself.
const LENGTH_PREFIX: usize = 12;

/// Bits of the `attributes` field.
pub mod attr {
    pub const COMPRESSION_MASK: i16 = 0x07;
    pub const TIMESTAMP_TYPE: i16 = 0x08;
    pub const TRANSACTIONAL: i16 = 0x10;
    pub const CONTROL: i16 = 0x20;
    pub const DELETE_HORIZON: i16 = 0x40;
}

/// Why bytes are not one valid magic v2 record batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("record batch magic is {0}, only magic 2 is supported")]
    BadMagic(i8),
    #[error("record batch length field says {declared} bytes, but {actual} follow it")]
    LengthMismatch { declared: i32, actual: usize },
    #[error("{0} bytes follow the record batch (more than one batch?)")]
    TrailingBytes(usize),
    #[error("record batch has a negative record count ({0})")]
    NegativeRecordCount(i32),
    #[error("record batch has a negative last offset delta ({0})")]
    NegativeOffsetDelta(i32),
    #[error(
        "record batch CRC-32C mismatch: header says {stored:#010x}, bytes give {computed:#010x}"
    )]
    CrcMismatch { stored: u32, computed: u32 },
}

/// The header fields of a magic v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

/// Exactly one validated magic v2 record batch. Cloning shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    bytes: Bytes,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// What a consumer of acknowledged batches reads from the header of the first batch
/// in a records field, without validating the rest (the capture decides with it
/// whether and how to hand a batch over; the replicator validates it whole later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    pub last_offset_delta: i64,
    pub transactional: bool,
    pub producer_id: i64,
}

/// The header facts of the first batch in `records`; None unless a whole magic v2
/// header with a non-negative offset delta is there.
pub fn peek(records: &[u8]) -> Option<Peek> {
    if records.len() < HEADER_LEN || records[MAGIC] != 2 {
        return None;
    }
    let delta = be_i32(records, LAST_OFFSET_DELTA);
    if delta < 0 {
        return None;
    }
    Some(Peek {
        last_offset_delta: i64::from(delta),
        transactional: be_i16(records, ATTRIBUTES) & attr::TRANSACTIONAL != 0,
        producer_id: be_i64(records, PRODUCER_ID),
    })
}

/// The length of the first batch in `b` as its header declares it, prefix included;
/// `None` when fewer than 12 bytes are present.
fn declared_len(b: &[u8]) -> Option<Result<usize, BatchError>> {
    if b.len() < LENGTH_PREFIX {
        return None;
    }
    let declared = be_i32(b, BATCH_LENGTH);
    let min = (HEADER_LEN - LENGTH_PREFIX) as i32;
    if declared < min {
        return Some(Err(BatchError::LengthMismatch {
            declared,
            actual: b.len() - LENGTH_PREFIX,
        }));
    }
    Some(Ok(LENGTH_PREFIX + declared as usize))
}

impl RecordBatch {
    /// Validates that `bytes` hold exactly one magic v2 batch: header present, magic 2,
    /// `batchLength` consistent with the bytes, no trailing bytes, non-negative counts.
    /// The CRC is not checked here (see [`RecordBatch::verify_crc`]).
    pub fn parse(bytes: Bytes) -> Result<Self, BatchError> {
        let b = &bytes[..];
        if b.len() < HEADER_LEN {
            // Name the more useful problem when the magic is already visible.
            if b.len() > MAGIC && b[MAGIC] as i8 != 2 {
                return Err(BatchError::BadMagic(b[MAGIC] as i8));
            }
            return Err(BatchError::TooShort { len: b.len() });
        }
        if b[MAGIC] as i8 != 2 {
            return Err(BatchError::BadMagic(b[MAGIC] as i8));
        }
        let total = match declared_len(b) {
            Some(r) => r?,
            None => return Err(BatchError::TooShort { len: b.len() }),
        };
        if total > b.len() {
            return Err(BatchError::LengthMismatch {
                declared: be_i32(b, BATCH_LENGTH),
                actual: b.len() - LENGTH_PREFIX,
            });
        }
        if total < b.len() {
            return Err(BatchError::TrailingBytes(b.len() - total));
        }
        let count = be_i32(b, RECORD_COUNT);
        if count < 0 {
            return Err(BatchError::NegativeRecordCount(count));
        }
        let delta = be_i32(b, LAST_OFFSET_DELTA);
        if delta < 0 {
            return Err(BatchError::NegativeOffsetDelta(delta));
        }
        Ok(Self { bytes })
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The records, as stored (compressed when the batch is): everything after the
    /// header, which a copy to DC2 keeps byte for byte.
    pub fn records_bytes(&self) -> &[u8] {
        &self.bytes[HEADER_LEN.min(self.bytes.len())..]
    }

    /// Size of the whole batch in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a valid batch has at least a header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn header(&self) -> BatchHeader {
        let b = &self.bytes[..];
        BatchHeader {
            base_offset: be_i64(b, BASE_OFFSET),
            batch_length: be_i32(b, BATCH_LENGTH),
            partition_leader_epoch: be_i32(b, PARTITION_LEADER_EPOCH),
            magic: b[MAGIC] as i8,
            crc: be_u32(b, CRC),
            attributes: be_i16(b, ATTRIBUTES),
            last_offset_delta: be_i32(b, LAST_OFFSET_DELTA),
            base_timestamp: be_i64(b, BASE_TIMESTAMP),
            max_timestamp: be_i64(b, MAX_TIMESTAMP),
            producer_id: be_i64(b, PRODUCER_ID),
            producer_epoch: be_i16(b, PRODUCER_EPOCH),
            base_sequence: be_i32(b, BASE_SEQUENCE),
            record_count: be_i32(b, RECORD_COUNT),
        }
    }

    pub fn base_offset(&self) -> i64 {
        be_i64(&self.bytes, BASE_OFFSET)
    }

    /// Offset of the last record relative to the base offset.
    pub fn last_offset_delta(&self) -> i32 {
        be_i32(&self.bytes, LAST_OFFSET_DELTA)
    }

    pub fn record_count(&self) -> i32 {
        be_i32(&self.bytes, RECORD_COUNT)
    }

    pub fn attributes(&self) -> i16 {
        be_i16(&self.bytes, ATTRIBUTES)
    }

    pub fn producer_id(&self) -> i64 {
        be_i64(&self.bytes, PRODUCER_ID)
    }

    pub fn base_sequence(&self) -> i32 {
        be_i32(&self.bytes, BASE_SEQUENCE)
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes() & attr::COMPRESSION_MASK
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes() & attr::TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes() & attr::CONTROL != 0
    }

    /// The CRC stored in the header.
    pub fn stored_crc(&self) -> u32 {
        be_u32(&self.bytes, CRC)
    }

    /// The CRC-32C of attributes..end, as the header should state it.
    pub fn computed_crc(&self) -> u32 {
        crc32c::crc32c(&self.bytes[ATTRIBUTES..])
    }

    pub fn verify_crc(&self) -> Result<(), BatchError> {
        let (stored, computed) = (self.stored_crc(), self.computed_crc());
        if stored == computed {
            Ok(())
        } else {
            Err(BatchError::CrcMismatch { stored, computed })
        }
    }

    /// This batch with the producer identity and sequence replaced (and the
    /// transactional bit cleared on request), its CRC updated. The base offset and
    /// partition leader epoch are reset to what a producer sends (0 and -1); the target
    /// broker assigns both, and neither is covered by the CRC. Only the 61-byte header
    /// is new: the records section is the same shared buffer, never copied.
    pub fn patch(
        &self,
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        clear_transactional: bool,
    ) -> PatchedBatch {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.bytes[..HEADER_LEN]);
        h[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&0i64.to_be_bytes());
        h[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4]
            .copy_from_slice(&(-1i32).to_be_bytes());
        if clear_transactional {
            let attrs = be_i16(&h, ATTRIBUTES) & !attr::TRANSACTIONAL;
            h[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
        }
        h[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
        h[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&epoch.to_be_bytes());
        h[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
        let records = self.bytes.slice(HEADER_LEN..);
        // The CRC covers attributes..end. Only the header part changed, and CRC-32C is
        // linear: crc(H' R) = crc(H R) ^ shift(crc(H) ^ crc(H'), |R|). So the new CRC
        // follows from the stored one without reading the records (a profile of the
        // tee showed the CRC read at 8% of the proxy's CPU with 1 MB batches). The
        // producer's checksum of the records is carried to DC2, never re-sealed: a
        // batch corrupted anywhere on the way is refused by DC2, not stored.
        // Below a few KiB, reading the records is cheaper than the shift.
        let new = crc32c::crc32c(&h[ATTRIBUTES..]);
        let crc = if records.len() < CRC_SHIFT_MIN {
            crc32c::crc32c_append(new, &records)
        } else {
            let old = crc32c::crc32c(&self.bytes[ATTRIBUTES..HEADER_LEN]);
            self.stored_crc() ^ crc_shift(old ^ new, records.len())
        };
        h[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        PatchedBatch { header: h, records }
    }
}

/// Records sections at least this long get their CRC by shifting, not by reading
/// (criterion: the shift costs about as much as reading 4 KiB).
const CRC_SHIFT_MIN: usize = 4096;

/// CRC-32C (Castagnoli), reflected.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// a * b modulo the CRC-32C polynomial, in the reflected bit order CRCs use (the
/// coefficient of x^0 is the top bit).
fn crc_mul(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut m = 1u32 << 31;
    while m != 0 {
        if a & m != 0 {
            product ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY
        } else {
            b >> 1
        };
    }
    product
}

/// x^(2^k) modulo the polynomial, k = 0..32 (the powers repeat with a period that
/// divides 2^32 - 1, so 32 entries cover any exponent).
static X_POW_2K: std::sync::LazyLock<[u32; 32]> = std::sync::LazyLock::new(|| {
    let mut t = [0u32; 32];
    t[0] = 1 << 30; // x^1
    for k in 1..32 {
        t[k] = crc_mul(t[k - 1], t[k - 1]);
    }
    t
});

/// `crc` multiplied by x^(8 * len): what appending `len` zero bytes does to the
/// register, before the final xor. crc(A B) = crc_shift(crc(A), |B|) ^ crc(B).
fn crc_shift(crc: u32, len: usize) -> u32 {
    let table = &*X_POW_2K;
    let mut power = 1u32 << 31; // x^0
    let mut n = len as u64;
    let mut k = 3; // 8 bits per byte: start at x^(2^3)
    while n != 0 {
        if n & 1 != 0 {
            power = crc_mul(table[k & 31], power);
        }
        n >>= 1;
        k += 1;
    }
    crc_mul(power, crc)
}

/// A record batch as it goes to DC2: a new header and the original records section
/// (shared, not copied). Write `header` then `records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchedBatch {
    pub header: [u8; HEADER_LEN],
    pub records: Bytes,
}

impl PatchedBatch {
    pub fn len(&self) -> usize {
        self.header.len() + self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch as one buffer (a copy; for tests and tools, not the hot path).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.len());
        b.extend_from_slice(&self.header);
        b.extend_from_slice(&self.records);
        b.freeze()
    }
}

/// Splits a buffer of consecutive batches (a Fetch response's `records`) into batches,
/// sharing the buffer. A partial batch at the end, which brokers may return when a
/// response hits its size limit, ends the iteration without an error; use
/// [`Batches::remaining`] to see whether one was left. A malformed batch yields one
/// error and ends the iteration.
#[derive(Debug, Clone)]
pub struct Batches {
    rest: Bytes,
    failed: bool,
}

pub fn split_batches(bytes: Bytes) -> Batches {
    Batches {
        rest: bytes,
        failed: false,
    }
}

impl Batches {
    /// Bytes not yet returned (a trailing partial batch once the iteration ended).
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
}

impl Iterator for Batches {
    type Item = Result<RecordBatch, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let total = match declared_len(&self.rest)? {
            Ok(t) => t,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        if self.rest.len() > MAGIC && self.rest[MAGIC] as i8 != 2 {
            self.failed = true;
            return Some(Err(BatchError::BadMagic(self.rest[MAGIC] as i8)));
        }
        if total > self.rest.len() {
            return None;
        }
        let one = self.rest.split_to(total);
        let parsed = RecordBatch::parse(one);
        if parsed.is_err() {
            self.failed = true;
        }
        Some(parsed)
    }
}

/// What a read_committed reader does with a fetched batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Committed (or non-transactional) data.
    Keep,
    /// A transaction marker.
    Control,
    /// Part of an aborted transaction.
    Aborted,
    /// Transactional data whose outcome is not known yet: find the producer's next
    /// marker ([`RecordBatch::control_type`]) and report it with
    /// [`TxnFilter::learn`].
    Undecided { producer_id: i64 },
}

/// Control record types (the key of the single record in a control batch).
pub const CONTROL_ABORT: i16 = 0;
pub const CONTROL_COMMIT: i16 = 1;

/// Tells committed batches from aborted ones while reading a partition in order.
///
/// Kafka brokers list the aborted transactions in read_committed Fetch responses
/// (consumers skip a producer's transactional batches from an aborted transaction's
/// first offset to its marker). Tansu 0.6 never fills that list, so a transactional
/// batch the list does not mark as aborted stays undecided until the caller has read
/// ahead to the producer's marker and told the filter what it says.
#[derive(Debug, Default)]
pub struct TxnFilter {
    /// Aborted transactions not reached yet: (first offset, producer id).
    ahead: std::collections::BTreeSet<(i64, i64)>,
    /// Producers inside an aborted transaction.
    aborted: std::collections::HashSet<i64>,
    /// Producer id -> (offset of its next marker, committed?) learned by reading ahead.
    decided: std::collections::HashMap<i64, (i64, bool)>,
}

impl TxnFilter {
    /// Adds a Fetch response's aborted transactions, `(producer_id, first_offset)`.
    pub fn observe(&mut self, aborted: &[(i64, i64)]) {
        for (pid, first) in aborted {
            self.ahead.insert((*first, *pid));
        }
    }

    /// Records the outcome of `producer_id`'s open transaction: its marker is at
    /// `marker_offset`.
    pub fn learn(&mut self, producer_id: i64, marker_offset: i64, committed: bool) {
        self.decided.insert(producer_id, (marker_offset, committed));
    }

    /// Classifies the next batch (batches must come in offset order). An `Undecided`
    /// batch may be classified again after `learn`.
    pub fn classify(&mut self, batch: &RecordBatch) -> Committed {
        let base = batch.base_offset();
        let pid = batch.producer_id();
        while let Some(&(first, p)) = self.ahead.first() {
            if first > base {
                break;
            }
            self.ahead.pop_first();
            self.aborted.insert(p);
        }
        if batch.is_control() {
            self.aborted.remove(&pid);
            if self.decided.get(&pid).is_some_and(|(m, _)| *m <= base) {
                self.decided.remove(&pid);
            }
            return Committed::Control;
        }
        if !batch.is_transactional() {
            return Committed::Keep;
        }
        if self.aborted.contains(&pid) {
            return Committed::Aborted;
        }
        match self.decided.get(&pid) {
            Some((marker, committed)) if base < *marker => {
                if *committed {
                    Committed::Keep
                } else {
                    Committed::Aborted
                }
            }
            _ => Committed::Undecided { producer_id: pid },
        }
    }
}

impl RecordBatch {
    /// The control record type of a control batch ([`CONTROL_ABORT`],
    /// [`CONTROL_COMMIT`]); `None` for other batches or an unreadable marker.
    pub fn control_type(&self) -> Option<i16> {
        if !self.is_control() {
            return None;
        }
        let mut buf = self.bytes.clone();
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            kafka_protocol::records::RecordBatchDecoder::decode(&mut buf)
        }));
        let set = decoded.ok()?.ok()?;
        let key = set.records.first()?.key.as_ref()?;
        Some(i16::from_be_bytes([*key.get(2)?, *key.get(3)?]))
    }
}

#[cfg(test)]
mod tests;
