use super::*;
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, TimestampType};
use proptest::prelude::*;

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

/// Parses `records` as one batch and returns it patched, as one buffer.
fn patch(
    records: &Bytes,
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    clear_transactional: bool,
) -> Result<Bytes, BatchError> {
    Ok(RecordBatch::parse(records.clone())?
        .patch(producer_id, epoch, base_sequence, clear_transactional)
        .to_bytes())
}

fn records(n: usize, transactional: bool) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_static_str("h"),
                Some(Bytes::from(format!("hv{i}"))),
            );
            Record {
                transactional,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 7,
                producer_id: 4242,
                producer_epoch: 3,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: 100 + i as i32,
                timestamp: 1_700_000_000_000 + i as i64,
                key: if i % 3 == 0 {
                    None
                } else {
                    Some(Bytes::from(format!("k{i}")))
                },
                value: Some(Bytes::from(format!("value number {i} ").repeat(5))),
                headers,
            }
        })
        .collect()
}

use crate::testing::encode_batch as encode;

#[test]
fn header_fields_are_read() {
    let recs = records(4, true);
    let batch = RecordBatch::parse(encode(&recs, Compression::Lz4)).expect("parse");
    let h = batch.header();
    assert_eq!(h.magic, 2);
    assert_eq!(h.record_count, 4);
    assert_eq!(h.last_offset_delta, 3);
    assert_eq!(h.producer_id, 4242);
    assert_eq!(h.producer_epoch, 3);
    assert_eq!(h.base_sequence, 100);
    assert_eq!(h.partition_leader_epoch, 7);
    assert_eq!(h.batch_length as usize, batch.len() - 12);
    assert_eq!(batch.compression(), Compression::Lz4 as i16);
    assert!(batch.is_transactional());
    assert!(!batch.is_control());
    batch.verify_crc().expect("crc");
}

#[test]
fn patch_round_trips_for_every_codec() {
    for codec in CODECS {
        let recs = records(10, true);
        let original = encode(&recs, codec);
        let patched = patch(&original, 77, 2, 555, true).expect("patch");
        assert_eq!(patched.len(), original.len());
        // The records section is untouched.
        assert_eq!(&patched[HEADER_LEN..], &original[HEADER_LEN..], "{codec:?}");

        let batch = RecordBatch::parse(patched.clone()).expect("parse patched");
        batch.verify_crc().expect("crc of patched batch");
        let h = batch.header();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (77, 2, 555)
        );
        assert!(!batch.is_transactional());
        assert_eq!(h.record_count, 10);

        let mut buf = patched.clone();
        let set = RecordBatchDecoder::decode(&mut buf).expect("decode patched");
        assert_eq!(set.compression, codec);
        assert_eq!(set.records.len(), recs.len());
        for (got, want) in set.records.iter().zip(&recs) {
            assert_eq!(got.key, want.key);
            assert_eq!(got.value, want.value);
            assert_eq!(got.headers, want.headers);
            assert_eq!(got.timestamp, want.timestamp);
            assert_eq!(got.offset, want.offset);
            assert_eq!(got.producer_id, 77);
            assert_eq!(got.sequence, 555 + want.offset as i32);
            assert!(!got.transactional);
        }
    }
}

#[test]
fn patch_keeps_transactional_bit_unless_asked() {
    let original = encode(&records(2, true), Compression::None);
    let patched = patch(&original, 1, 0, 0, false).expect("patch");
    let batch = RecordBatch::parse(patched).expect("parse");
    assert!(batch.is_transactional());
    batch.verify_crc().expect("crc");
}

#[test]
fn crc_mismatch_is_detected() {
    let original = encode(&records(3, false), Compression::None);
    let mut bad = BytesMut::from(&original[..]);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let batch = RecordBatch::parse(bad.freeze()).expect("parse does not check crc");
    assert!(matches!(
        batch.verify_crc(),
        Err(BatchError::CrcMismatch { .. })
    ));
}

#[test]
fn malformed_input_is_an_error() {
    let good = encode(&records(3, false), Compression::Gzip);
    assert!(matches!(
        RecordBatch::parse(good.slice(..20)),
        Err(BatchError::TooShort { len: 20 })
    ));
    assert!(matches!(
        RecordBatch::parse(good.slice(..good.len() - 1)),
        Err(BatchError::LengthMismatch { .. })
    ));
    let mut two = BytesMut::from(&good[..]);
    two.extend_from_slice(&good);
    assert!(matches!(
        RecordBatch::parse(two.freeze()),
        Err(BatchError::TrailingBytes(n)) if n == good.len()
    ));
    let mut magic1 = BytesMut::from(&good[..]);
    magic1[MAGIC] = 1;
    assert!(matches!(
        RecordBatch::parse(magic1.freeze()),
        Err(BatchError::BadMagic(1))
    ));
    let mut neg = BytesMut::from(&good[..]);
    neg[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&(-1i32).to_be_bytes());
    assert!(matches!(
        RecordBatch::parse(neg.freeze()),
        Err(BatchError::NegativeRecordCount(-1))
    ));
    assert!(patch(&Bytes::from_static(b"garbage"), 1, 1, 1, true).is_err());
}

#[test]
fn split_batches_stops_at_a_partial_batch() {
    let a = encode(&records(2, false), Compression::None);
    let b = encode(&records(5, false), Compression::Snappy);
    let mut all = BytesMut::new();
    all.extend_from_slice(&a);
    all.extend_from_slice(&b);
    all.extend_from_slice(&a[..30]);
    let mut it = split_batches(all.freeze());
    assert_eq!(it.next().expect("a").expect("valid").record_count(), 2);
    assert_eq!(it.next().expect("b").expect("valid").record_count(), 5);
    assert!(it.next().is_none());
    assert_eq!(it.remaining(), 30);
}

fn txn_batch(base: i64, pid: i64, transactional: bool, control: bool) -> RecordBatch {
    let mut r = records(1, transactional).remove(0);
    r.offset = base;
    r.sequence = 0;
    r.producer_id = pid;
    r.control = control;
    RecordBatch::parse(encode(&[r], Compression::None)).expect("parse")
}

#[test]
fn txn_filter_skips_aborted_transactions_only() {
    let mut f = TxnFilter::default();
    // Producer 7 aborted a transaction starting at offset 1 (the broker says so).
    f.observe(&[(7, 1)]);
    assert_eq!(f.classify(&txn_batch(0, 7, false, false)), Committed::Keep);
    assert_eq!(
        f.classify(&txn_batch(1, 7, true, false)),
        Committed::Aborted
    );
    // Producer 8's outcome is not in the list: it must be looked up.
    let b8 = txn_batch(2, 8, true, false);
    assert_eq!(f.classify(&b8), Committed::Undecided { producer_id: 8 });
    f.learn(8, 6, true);
    assert_eq!(f.classify(&b8), Committed::Keep);
    assert_eq!(
        f.classify(&txn_batch(3, 7, true, false)),
        Committed::Aborted
    );
    assert_eq!(f.classify(&txn_batch(4, 7, true, true)), Committed::Control);
    // After its abort marker, producer 7's next transaction is undecided again.
    assert_eq!(
        f.classify(&txn_batch(5, 7, true, false)),
        Committed::Undecided { producer_id: 7 }
    );
    assert_eq!(f.classify(&txn_batch(6, 8, true, true)), Committed::Control);
    // A learned abort skips the batches before the marker.
    f.learn(8, 9, false);
    assert_eq!(
        f.classify(&txn_batch(7, 8, true, false)),
        Committed::Aborted
    );
    assert_eq!(f.classify(&txn_batch(9, 8, true, true)), Committed::Control);
    assert_eq!(
        f.classify(&txn_batch(10, 8, true, false)),
        Committed::Undecided { producer_id: 8 }
    );
}

#[test]
fn control_type_is_read_from_the_marker() {
    let mut r = records(1, true).remove(0);
    r.control = true;
    r.key = Some(Bytes::from_static(&[0, 0, 0, 1]));
    r.value = Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0]));
    r.sequence = 0;
    let b = RecordBatch::parse(encode(&[r], Compression::None)).expect("parse");
    assert_eq!(b.control_type(), Some(CONTROL_COMMIT));
    let plain = RecordBatch::parse(encode(&records(1, false), Compression::None)).expect("parse");
    assert_eq!(plain.control_type(), None);
}

#[test]
fn crc_shift_composes_crcs_of_concatenations() {
    let data: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (a, b) in [
        (0usize, 0usize),
        (1, 0),
        (0, 1),
        (40, 17),
        (40, 69_960),
        (3, 65_536),
    ] {
        let (x, y) = (&data[..a], &data[a..a + b]);
        assert_eq!(
            crc32c::crc32c(&data[..a + b]),
            crc_shift(crc32c::crc32c(x), b) ^ crc32c::crc32c(y),
            "{a}+{b}"
        );
        assert_eq!(
            crc_shift(crc32c::crc32c(x), b),
            crc32c::crc32c_combine(crc32c::crc32c(x), 0, b)
        );
    }
}

#[test]
fn patch_carries_a_bad_crc_forward() {
    // A batch whose records do not match its CRC stays detectably bad (records
    // long enough for the CRC to be shifted rather than recomputed).
    let original = encode(&records(200, false), Compression::None);
    assert!(original.len() > HEADER_LEN + CRC_SHIFT_MIN);
    let good = patch(&original, 9, 1, 0, true).expect("patch");
    RecordBatch::parse(good)
        .expect("parse")
        .verify_crc()
        .expect("shifted CRC");
    let mut bad = BytesMut::from(&original[..]);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let patched = patch(&bad.freeze(), 9, 1, 0, true).expect("patch");
    assert!(
        RecordBatch::parse(patched)
            .expect("parse")
            .verify_crc()
            .is_err()
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let bytes = Bytes::from(data);
        if let Ok(b) = RecordBatch::parse(bytes.clone()) {
            let _ = b.header();
            let _ = b.verify_crc();
            let _ = b.patch(1, 1, 1, true);
        }
        for item in split_batches(bytes) {
            let _ = item.map(|b| b.header());
        }
    }

    #[test]
    fn truncated_batch_is_an_error(cut in 0usize..400) {
        let good = encode(&records(4, false), Compression::None);
        let cut = cut % good.len();
        prop_assert!(RecordBatch::parse(good.slice(..cut)).is_err());
        prop_assert!(split_batches(good.slice(..cut)).all(|r| r.is_err()));
    }

    #[test]
    fn patch_sets_any_identity(pid in any::<i64>(), epoch in any::<i16>(), seq in any::<i32>()) {
        let good = encode(&records(2, true), Compression::Zstd);
        let patched = RecordBatch::parse(patch(&good, pid, epoch, seq, true).expect("patch")).expect("parse");
        prop_assert!(patched.verify_crc().is_ok());
        let h = patched.header();
        prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (pid, epoch, seq));
    }
}
