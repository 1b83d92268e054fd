//! Helpers shared by the unit tests, the integration tests under `proto-tests/` and
//! the benchmarks: records and batches encoded as a client would, request frames, and
//! a fake broker's read of a request. Nothing in the proxy uses them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A record of a plain producer (no producer id) at `offset`, sequence = offset,
/// timestamp 1,700,000,000,000 + offset ms, no key, no headers. Change what a test
/// needs with struct update syntax.
pub fn record(offset: i64, value: Bytes) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: offset as i32,
        timestamp: 1_700_000_000_000 + offset,
        key: None,
        value: Some(value),
        headers: Default::default(),
    }
}

/// The records as magic v2 batches (one batch while offset - sequence stays the same).
pub fn encode_batch(records: &[Record], compression: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("records encode");
    buf.freeze()
}

/// A request frame as the session sees it: header and body, no length prefix.
pub fn encode_request<R: Encodable>(header: &RequestHeader, request: &R) -> Bytes {
    let version = header.request_api_version;
    let key = ApiKey::try_from(header.request_api_key).expect("known API key");
    let mut b = BytesMut::new();
    header
        .encode(&mut b, key.request_header_version(version))
        .expect("header encodes");
    request.encode(&mut b, version).expect("request encodes");
    b.freeze()
}

/// A request a fake broker read: its key, version, header and the body after it.
pub struct ReadRequest {
    pub key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// Reads one length-prefixed request off a fake broker's socket; `None` once the
/// client closed it (or sent something that is no request).
pub async fn read_request<S: AsyncRead + Unpin>(sock: &mut S) -> Option<ReadRequest> {
    let len = sock.read_i32().await.ok()?;
    let mut body = vec![0u8; usize::try_from(len).ok()?];
    sock.read_exact(&mut body).await.ok()?;
    let mut body = Bytes::from(body);
    if body.len() < 4 {
        return None;
    }
    let key = ApiKey::try_from((&body[..2]).get_i16()).ok()?;
    let version = (&body[2..4]).get_i16();
    let header = RequestHeader::decode(&mut body, key.request_header_version(version)).ok()?;
    Some(ReadRequest {
        key,
        version,
        header,
        body,
    })
}

/// A fake broker's answer: the response frame, length prefix included.
pub fn respond<T: Encodable + HeaderVersion>(correlation_id: i32, version: i16, body: &T) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, T::header_version(version))
        .expect("header encodes");
    body.encode(&mut buf, version).expect("response encodes");
    let len = i32::try_from(buf.len() - 4).expect("frame size");
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}
