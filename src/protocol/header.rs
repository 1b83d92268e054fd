//! Reading the fixed start of request and response frames without decoding them.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::Decodable;

/// The first 8 bytes of every request: enough to route and pair it with its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeaderPeek {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl RequestHeaderPeek {
    /// The API key, when the proxy knows it.
    pub fn key(&self) -> Option<ApiKey> {
        ApiKey::try_from(self.api_key).ok()
    }
}

/// Peeks at a request header; `None` when the frame is shorter than 8 bytes.
pub fn peek_request_header(frame: &[u8]) -> Option<RequestHeaderPeek> {
    let mut b = frame.get(..8)?;
    Some(RequestHeaderPeek {
        api_key: b.get_i16(),
        api_version: b.get_i16(),
        correlation_id: b.get_i32(),
    })
}

/// Peeks at the correlation id that starts every response.
pub fn peek_response_correlation_id(frame: &[u8]) -> Option<i32> {
    let mut b = frame.get(..4)?;
    Some(b.get_i32())
}

/// Why a frame could not be decoded as the message its header promised.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what} v{version}: {message}")]
pub struct DecodeError {
    pub what: &'static str,
    pub version: i16,
    pub message: String,
}

/// Splits a request frame into its decoded header and the remaining body, sharing the
/// frame's buffer.
pub fn split_request(key: ApiKey, frame: &Bytes) -> Result<(RequestHeader, Bytes), DecodeError> {
    let peek = peek_request_header(frame).ok_or_else(|| DecodeError {
        what: "request header",
        version: 0,
        message: "frame shorter than 8 bytes".into(),
    })?;
    let hv = key.request_header_version(peek.api_version);
    let mut body = frame.clone();
    let header = guarded_decode::<RequestHeader>(&mut body, hv, "request header")?;
    Ok((header, body))
}

/// Splits a response frame into its header and body, given the request it answers.
pub fn split_response(
    key: ApiKey,
    version: i16,
    frame: &Bytes,
) -> Result<(ResponseHeader, Bytes), DecodeError> {
    let hv = key.response_header_version(version);
    let mut body = frame.clone();
    let header = guarded_decode::<ResponseHeader>(&mut body, hv, "response header")?;
    Ok((header, body))
}

/// Decodes a message from untrusted bytes. The decoder must never take the process
/// down, so a panic inside it (an arithmetic or slice edge case) becomes an error.
pub fn guarded_decode<T: Decodable>(
    buf: &mut Bytes,
    version: i16,
    what: &'static str,
) -> Result<T, DecodeError> {
    let mut local = buf.clone();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        T::decode(&mut local, version)
    }));
    match out {
        Ok(Ok(v)) => {
            *buf = local;
            Ok(v)
        }
        Ok(Err(e)) => Err(DecodeError {
            what,
            version,
            message: e.to_string(),
        }),
        Err(_) => Err(DecodeError {
            what,
            version,
            message: "decoder rejected malformed input".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn peek_reads_fixed_fields() {
        let f = [0u8, 0, 0, 9, 0, 0, 0, 42, 0xff];
        let p = peek_request_header(&f).expect("peek");
        assert_eq!((p.api_key, p.api_version, p.correlation_id), (0, 9, 42));
        assert_eq!(p.key(), Some(ApiKey::Produce));
        assert!(peek_request_header(&f[..7]).is_none());
        assert_eq!(peek_response_correlation_id(&f[4..]), Some(42));
    }

    proptest! {
        #[test]
        fn random_request_frames_never_panic(
            key in 0i16..80, version in -2i16..20,
            tail in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            let mut f = Vec::new();
            f.extend_from_slice(&key.to_be_bytes());
            f.extend_from_slice(&version.to_be_bytes());
            f.extend_from_slice(&7i32.to_be_bytes());
            f.extend_from_slice(&tail);
            let f = Bytes::from(f);
            if let Ok(k) = ApiKey::try_from(key) {
                let _ = split_request(k, &f);
            }
        }
    }
}
