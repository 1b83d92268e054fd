//! Length-prefixed frames: a big-endian i32 size followed by that many bytes.
//!
//! Frames are read into one buffer and frozen into `Bytes`, so later stages (header
//! peek, Produce capture, record batches held for DC2) share it without copying.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames (a normal end).
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("negative frame size {0}")]
    NegativeSize(i32),
    #[error("frame of {size} bytes exceeds the {max}-byte cap{hint}")]
    TooLarge {
        size: usize,
        max: usize,
        hint: &'static str,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame body (without its length prefix). At most `max` bytes are accepted;
/// nothing is allocated for a frame that is refused.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Bytes, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Closed
            } else {
                FrameError::Truncated
            });
        }
        got += n;
    }
    let size = i32::from_be_bytes(len);
    if size < 0 {
        return Err(FrameError::NegativeSize(size));
    }
    let size = size as usize;
    if size > max {
        return Err(FrameError::TooLarge {
            size,
            max,
            hint: tls_hint(&len),
        });
    }
    let mut buf = BytesMut::zeroed(size);
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(buf.freeze())
}

/// A TLS record header (content type 0x14-0x17, version 3.x) read as a length.
fn tls_hint(prefix: &[u8; 4]) -> &'static str {
    if (0x14..=0x17).contains(&prefix[0]) && prefix[1] == 3 {
        " (TLS/plaintext mismatch? the bytes look like a TLS record)"
    } else {
        ""
    }
}

/// A cancel-safe frame decoder for `tokio_util::codec::FramedRead`: partial frames
/// stay in the reader's buffer across cancelled reads (timeouts, shutdown), and reads
/// fill a buffer so pipelined small frames cost one syscall, not two each.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    pub max: usize,
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(prefix) = src.get(..4) else {
            return Ok(None);
        };
        let prefix: [u8; 4] = [prefix[0], prefix[1], prefix[2], prefix[3]];
        let size = i32::from_be_bytes(prefix);
        if size < 0 {
            return Err(FrameError::NegativeSize(size));
        }
        let size = size as usize;
        if size > self.max {
            return Err(FrameError::TooLarge {
                size,
                max: self.max,
                hint: tls_hint(&prefix),
            });
        }
        if src.len() < 4 + size {
            src.reserve(4 + size - src.len());
            return Ok(None);
        }
        bytes::Buf::advance(src, 4);
        Ok(Some(src.split_to(size).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

/// Writes one frame: the length prefix then the body, without flushing. Both go in
/// one vectored write, so a frame larger than the writer's buffer costs one `writev`
/// instead of a 4-byte write plus the body.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let len = i32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let prefix = len.to_be_bytes();
    let mut frame = bytes::Buf::chain(&prefix[..], body);
    w.write_all_buf(&mut frame).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        block_on(write_frame(&mut out, b"hello")).expect("write");
        let mut r = &out[..];
        assert_eq!(
            &block_on(read_frame(&mut r, 100)).expect("read")[..],
            b"hello"
        );
        assert!(matches!(
            block_on(read_frame(&mut r, 100)),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn tls_client_hello_is_named() {
        let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01];
        let err = block_on(read_frame(&mut &hello[..], 100 << 20)).unwrap_err();
        assert!(err.to_string().contains("TLS/plaintext mismatch"), "{err}");
    }

    #[test]
    fn negative_and_truncated() {
        let neg = (-5i32).to_be_bytes();
        assert!(matches!(
            block_on(read_frame(&mut &neg[..], 100)),
            Err(FrameError::NegativeSize(-5))
        ));
        let short = [0u8, 0, 0, 10, 1, 2];
        assert!(matches!(
            block_on(read_frame(&mut &short[..], 100)),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            block_on(read_frame(&mut &short[..2], 100)),
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn codec_splits_pipelined_frames_and_waits_for_partial_ones() {
        use tokio_util::codec::Decoder;
        let mut codec = FrameCodec { max: 100 };
        let mut buf = BytesMut::from(&b"\0\0\0\x02ab\0\0\0\x03cd"[..]);
        assert_eq!(
            &codec.decode(&mut buf).expect("ok").expect("frame")[..],
            b"ab"
        );
        assert!(codec.decode(&mut buf).expect("ok").is_none());
        buf.extend_from_slice(b"e");
        assert_eq!(
            &codec.decode(&mut buf).expect("ok").expect("frame")[..],
            b"cde"
        );
        let mut partial = BytesMut::from(&b"\0\0\0\x09abc"[..]);
        assert!(matches!(
            codec.decode_eof(&mut partial),
            Err(FrameError::Truncated)
        ));
        let mut hello = BytesMut::from(&[0x16u8, 3, 1, 2, 0][..]);
        let err = codec.decode(&mut hello).unwrap_err();
        assert!(err.to_string().contains("TLS/plaintext mismatch"), "{err}");
    }

    proptest! {
        #[test]
        fn codec_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            use tokio_util::codec::Decoder;
            let mut codec = FrameCodec { max: 256 };
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..64 {
                match codec.decode(&mut buf) { Ok(Some(_)) => {}, _ => break }
            }
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut r = &data[..];
            // Read frames until an error; every outcome is a value, never a panic.
            for _ in 0..64 {
                if block_on(read_frame(&mut r, 256)).is_err() { break; }
            }
        }
    }
}
