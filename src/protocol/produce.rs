//! A zero-copy reader for Produce requests (v3-v12), written for untrusted input: every
//! length is checked against the bytes that remain before anything is allocated, and
//! record sets stay slices of the frame.
//!
//! The generic decoder in kafka-protocol pre-allocates arrays from the length a peer
//! sends, so a client could make the proxy reserve gigabytes with a 20-byte frame; this
//! reader is used for the one request the proxy must read on the hot path.

use bytes::{Buf, Bytes};

/// The parts of a Produce request the tee needs.
#[derive(Debug, Clone)]
pub struct ProduceRequestView {
    pub transactional_id: Option<String>,
    pub acks: i16,
    /// Offset of the acks field within the frame, for rewriting acks=0.
    pub acks_offset: usize,
    pub topics: Vec<TopicData>,
}

#[derive(Debug, Clone)]
pub struct TopicData {
    pub name: String,
    pub partitions: Vec<(i32, Option<Bytes>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProduceParseError {
    #[error("Produce v{0} is not supported by the proxy (3..=12)")]
    Version(i16),
    #[error("truncated Produce request at {0}")]
    Truncated(&'static str),
    #[error("malformed Produce request: {0}")]
    Malformed(&'static str),
}

type R<T> = Result<T, ProduceParseError>;

struct Reader {
    buf: Bytes,
    start_len: usize,
    flexible: bool,
}

impl Reader {
    fn pos(&self) -> usize {
        self.start_len - self.buf.remaining()
    }
    fn need(&self, n: usize, what: &'static str) -> R<()> {
        if self.buf.remaining() < n {
            Err(ProduceParseError::Truncated(what))
        } else {
            Ok(())
        }
    }
    fn i16(&mut self, what: &'static str) -> R<i16> {
        self.need(2, what)?;
        Ok(self.buf.get_i16())
    }
    fn i32(&mut self, what: &'static str) -> R<i32> {
        self.need(4, what)?;
        Ok(self.buf.get_i32())
    }
    fn uvarint(&mut self, what: &'static str) -> R<u32> {
        let mut v: u32 = 0;
        for i in 0..5 {
            self.need(1, what)?;
            let b = self.buf.get_u8();
            v |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProduceParseError::Malformed("varint longer than 5 bytes"))
    }
    /// A length that is -1 for null; `None` for null.
    fn len(&mut self, wide: bool, what: &'static str) -> R<Option<usize>> {
        let n: i64 = if self.flexible {
            i64::from(self.uvarint(what)?) - 1
        } else if wide {
            i64::from(self.i32(what)?)
        } else {
            i64::from(self.i16(what)?)
        };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(ProduceParseError::Malformed("negative length")),
            n => {
                let n = n as usize;
                self.need(n, what)?;
                Ok(Some(n))
            }
        }
    }
    fn bytes(&mut self, wide: bool, what: &'static str) -> R<Option<Bytes>> {
        Ok(self.len(wide, what)?.map(|n| self.buf.split_to(n)))
    }
    fn string(&mut self, what: &'static str) -> R<Option<String>> {
        match self.bytes(false, what)? {
            None => Ok(None),
            Some(b) => String::from_utf8(b.to_vec())
                .map(Some)
                .map_err(|_| ProduceParseError::Malformed("string is not UTF-8")),
        }
    }
    /// An array count; each element needs at least `min_elem` bytes, which bounds the
    /// count by what is left in the frame.
    fn array(&mut self, min_elem: usize, what: &'static str) -> R<usize> {
        let n: i64 = if self.flexible {
            i64::from(self.uvarint(what)?) - 1
        } else {
            i64::from(self.i32(what)?)
        };
        if n < 0 {
            return Err(ProduceParseError::Malformed("null or negative array"));
        }
        let n = n as usize;
        if n.saturating_mul(min_elem) > self.buf.remaining() {
            return Err(ProduceParseError::Truncated(what));
        }
        Ok(n)
    }
    fn skip_tagged(&mut self) -> R<()> {
        if !self.flexible {
            return Ok(());
        }
        let count = self.uvarint("tagged fields")?;
        for _ in 0..count {
            self.uvarint("tag")?;
            let size = self.uvarint("tag size")? as usize;
            self.need(size, "tagged field")?;
            self.buf.advance(size);
        }
        Ok(())
    }
}

/// The fields of a Produce request before its topics.
struct ProduceStart {
    transactional_id: Option<String>,
    acks: i16,
    acks_offset: usize,
}

/// Reads a Produce request up to and including its acks field.
fn read_start(r: &mut Reader) -> R<ProduceStart> {
    let key = r.i16("api key")?;
    if key != 0 {
        return Err(ProduceParseError::Malformed("not a Produce request"));
    }
    let version = r.i16("api version")?;
    if !(3..=12).contains(&version) {
        return Err(ProduceParseError::Version(version));
    }
    r.i32("correlation id")?;
    // Request header v1/v2: the client id is always a classic nullable string.
    if let Some(n) = r.len(false, "client id")? {
        r.buf.advance(n);
    }
    r.flexible = version >= 9;
    r.skip_tagged()?;
    let transactional_id = r.string("transactional id")?;
    let acks_offset = r.pos();
    let acks = r.i16("acks")?;
    Ok(ProduceStart {
        transactional_id,
        acks,
        acks_offset,
    })
}

/// The acks of a Produce request from the first bytes of its frame; `None` when they
/// do not reach that far or are not a Produce request the proxy reads.
pub fn produce_acks(head: &Bytes) -> Option<i16> {
    let mut r = Reader {
        buf: head.clone(),
        start_len: head.len(),
        flexible: false,
    };
    read_start(&mut r).ok().map(|s| s.acks)
}

/// Reads a whole Produce request frame (header included).
pub fn parse_produce_request(frame: &Bytes) -> R<ProduceRequestView> {
    let mut r = Reader {
        buf: frame.clone(),
        start_len: frame.len(),
        flexible: false,
    };
    let ProduceStart {
        transactional_id,
        acks,
        acks_offset,
    } = read_start(&mut r)?;
    r.i32("timeout")?;
    let topic_count = r.array(if r.flexible { 3 } else { 6 }, "topics")?;
    let mut topics = Vec::with_capacity(topic_count);
    for _ in 0..topic_count {
        let name = r
            .string("topic name")?
            .ok_or(ProduceParseError::Malformed("null topic name"))?;
        let part_count = r.array(if r.flexible { 6 } else { 8 }, "partitions")?;
        let mut partitions = Vec::with_capacity(part_count);
        for _ in 0..part_count {
            let index = r.i32("partition index")?;
            let records = r.bytes(true, "records")?;
            r.skip_tagged()?;
            partitions.push((index, records));
        }
        r.skip_tagged()?;
        topics.push(TopicData { name, partitions });
    }
    r.skip_tagged()?;
    Ok(ProduceRequestView {
        transactional_id,
        acks,
        acks_offset,
        topics,
    })
}

/// The frame with its acks field set to `acks` (one copy; used for acks=0 only).
pub fn with_acks(frame: &Bytes, acks_offset: usize, acks: i16) -> Option<Bytes> {
    let mut out = bytes::BytesMut::from(&frame[..]);
    out.get_mut(acks_offset..acks_offset + 2)?
        .copy_from_slice(&acks.to_be_bytes());
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    fn encode(version: i16, acks: i16, txn: Option<&str>) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(0)
            .with_request_api_version(version)
            .with_correlation_id(77)
            .with_client_id(Some(StrBytes::from_static_str("c")));
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(1000)
            .with_transactional_id(txn.map(|t| StrBytes::from_string(t.into()).into()))
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("t1")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(Bytes::from_static(b"batch-zero"))),
                        PartitionProduceData::default()
                            .with_index(3)
                            .with_records(Some(Bytes::from_static(b"batch-three"))),
                    ]),
            ]);
        crate::testing::encode_request(&header, &req)
    }

    #[test]
    fn parses_every_supported_version() {
        for v in 3..=12 {
            let f = encode(v, -1, Some("tx"));
            let p = parse_produce_request(&f).unwrap_or_else(|e| panic!("v{v}: {e}"));
            assert_eq!(p.acks, -1);
            assert_eq!(p.transactional_id.as_deref(), Some("tx"));
            assert_eq!(p.topics.len(), 1);
            assert_eq!(p.topics[0].name, "t1");
            let parts = &p.topics[0].partitions;
            assert_eq!(parts[0], (0, Some(Bytes::from_static(b"batch-zero"))));
            assert_eq!(parts[1], (3, Some(Bytes::from_static(b"batch-three"))));
        }
    }

    #[test]
    fn rewrites_acks_in_place() {
        for v in [3, 8, 9, 12] {
            let f = encode(v, 0, None);
            let p = parse_produce_request(&f).expect("parse");
            assert_eq!(p.acks, 0);
            let g = with_acks(&f, p.acks_offset, 1).expect("patch");
            let q = parse_produce_request(&g).expect("reparse");
            assert_eq!(q.acks, 1);
            assert_eq!(f.len(), g.len());
        }
    }

    #[test]
    fn acks_from_the_head_of_a_frame() {
        for v in 3..=12 {
            for acks in [-1i16, 0, 1] {
                let f = encode(v, acks, Some("tx"));
                let p = parse_produce_request(&f).expect("parse");
                let head = f.slice(..p.acks_offset + 2);
                assert_eq!(produce_acks(&head), Some(acks), "v{v}");
                assert_eq!(produce_acks(&f.slice(..p.acks_offset + 1)), None, "v{v}");
            }
        }
        assert_eq!(produce_acks(&Bytes::from_static(&[0, 1, 0, 3])), None);
    }

    #[test]
    fn huge_array_count_is_refused_without_allocating() {
        let mut f = BytesMut::new();
        f.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 1, 0xff, 0xff]); // v7, null client id
        f.extend_from_slice(&[0xff, 0xff, 0, 1, 0, 0, 0, 0]); // null txn, acks, timeout
        f.extend_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(
            parse_produce_request(&f.freeze()).unwrap_err(),
            ProduceParseError::Truncated("topics")
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        for v in [3, 12] {
            let f = encode(v, 1, None);
            for cut in 0..f.len() {
                assert!(
                    parse_produce_request(&f.slice(..cut)).is_err(),
                    "v{v} cut {cut}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(version in 0i16..14, tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut f = vec![0u8, 0];
            f.extend_from_slice(&version.to_be_bytes());
            f.extend_from_slice(&tail);
            let _ = parse_produce_request(&Bytes::from(f));
        }

        #[test]
        fn mutated_frames_never_panic(pos in 0usize..120, byte in any::<u8>(), v in 3i16..13) {
            let mut f = encode(v, 1, Some("x")).to_vec();
            if let Some(slot) = f.get_mut(pos) { *slot = byte; }
            let _ = parse_produce_request(&Bytes::from(f));
        }
    }
}
