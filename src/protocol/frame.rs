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
    #[error("bytes stopped arriving mid-frame for {0:?}")]
    Stalled(std::time::Duration),
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

/// Reads the rest of a frame whose head the codec handed out (`size - head.len()`
/// more bytes) and returns the whole body. Each wait for bytes is bounded by `stall`.
pub async fn read_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    size: usize,
    head: Bytes,
    stall: std::time::Duration,
) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(size);
    buf.extend_from_slice(&head);
    while buf.len() < size {
        let want = size - buf.len();
        let mut limited = (&mut *r).take(want as u64);
        read_some(&mut limited, &mut buf, stall).await?;
    }
    Ok(buf.freeze())
}

/// Reads and drops the next `n` bytes of a frame nobody will receive.
pub async fn skip_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    mut n: usize,
    stall: std::time::Duration,
) -> Result<(), FrameError> {
    let mut buf = BytesMut::with_capacity(n.min(64 * 1024));
    while n > 0 {
        buf.clear();
        let cap = buf.capacity().min(n) as u64;
        let mut limited = (&mut *r).take(cap);
        n -= read_some(&mut limited, &mut buf, stall).await?;
    }
    Ok(())
}

async fn read_some<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    stall: std::time::Duration,
) -> Result<usize, FrameError> {
    match tokio::time::timeout(stall, r.read_buf(buf)).await {
        Err(_) => Err(FrameError::Stalled(stall)),
        Ok(Ok(0)) => Err(FrameError::Truncated),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(FrameError::Io(e)),
    }
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
    /// Frames of at least this many bytes that have not fully arrived are handed out
    /// as a [`Frame::Head`] (so their body can be spliced between sockets); `None`
    /// always waits for whole frames.
    pub head_min: Option<usize>,
}

/// How many bytes of a large frame must have arrived before its head is handed out:
/// enough for a request header and a Produce request's fields up to acks, unless its
/// client or transactional id is very long (such a request is then read whole).
pub const HEAD_BYTES: usize = 512;

/// A frame from [`FrameCodec`].
#[derive(Debug)]
pub enum Frame {
    /// The whole body (length prefix removed).
    Whole(Bytes),
    /// The start of a large frame whose remaining `size - head.len()` bytes are still
    /// in the socket: the caller reads or splices them before the next frame.
    Head { size: usize, head: Bytes },
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
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
            if self.head_min.is_some_and(|min| size >= min) {
                if src.len() >= 4 + HEAD_BYTES {
                    bytes::Buf::advance(src, 4);
                    let head = src.split().freeze();
                    return Ok(Some(Frame::Head { size, head }));
                }
                // Room for the head only: the body may never pass through this buffer.
                src.reserve(4 + HEAD_BYTES - src.len());
                return Ok(None);
            }
            src.reserve(4 + size - src.len());
            return Ok(None);
        }
        bytes::Buf::advance(src, 4);
        Ok(Some(Frame::Whole(src.split_to(size).freeze())))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
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
    write_frame_head(w, body.len(), body).await
}

/// Writes the length prefix of a `size`-byte frame and its first bytes, `head`; the
/// caller sends the rest.
pub async fn write_frame_head<W: AsyncWrite + Unpin>(
    w: &mut W,
    size: usize,
    head: &[u8],
) -> std::io::Result<()> {
    let len = i32::try_from(size)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let prefix = len.to_be_bytes();
    let mut frame = bytes::Buf::chain(&prefix[..], head);
    w.write_all_buf(&mut frame).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
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
        let mut codec = FrameCodec {
            max: 100,
            head_min: None,
        };
        let mut buf = BytesMut::from(&b"\0\0\0\x02ab\0\0\0\x03cd"[..]);
        assert_eq!(whole(codec.decode(&mut buf)), b"ab");
        assert!(codec.decode(&mut buf).expect("ok").is_none());
        buf.extend_from_slice(b"e");
        assert_eq!(whole(codec.decode(&mut buf)), b"cde");
        let mut partial = BytesMut::from(&b"\0\0\0\x09abc"[..]);
        assert!(matches!(
            codec.decode_eof(&mut partial),
            Err(FrameError::Truncated)
        ));
        let mut hello = BytesMut::from(&[0x16u8, 3, 1, 2, 0][..]);
        let err = codec.decode(&mut hello).unwrap_err();
        assert!(err.to_string().contains("TLS/plaintext mismatch"), "{err}");
    }

    fn whole(r: Result<Option<Frame>, FrameError>) -> Vec<u8> {
        match r.expect("ok").expect("frame") {
            Frame::Whole(b) => b.to_vec(),
            Frame::Head { .. } => panic!("expected a whole frame"),
        }
    }

    #[test]
    fn codec_hands_out_the_head_of_a_large_frame() {
        use tokio_util::codec::Decoder;
        let mut codec = FrameCodec {
            max: 1 << 20,
            head_min: Some(4096),
        };
        let size = 10_000usize;
        let mut buf = BytesMut::from(&(size as i32).to_be_bytes()[..]);
        buf.extend_from_slice(&[7u8; 100]);
        // Not yet enough for a head: wait, reserving room for the head only.
        assert!(codec.decode(&mut buf).expect("ok").is_none());
        assert!(buf.capacity() < size);
        buf.extend_from_slice(&[7u8; HEAD_BYTES]);
        match codec.decode(&mut buf).expect("ok").expect("head") {
            Frame::Head { size: s, head } => {
                assert_eq!(s, size);
                assert_eq!(head.len(), 100 + HEAD_BYTES);
            }
            Frame::Whole(_) => panic!("expected a head"),
        }
        assert!(buf.is_empty());
        // A small frame, and a large one that arrived whole, are whole frames.
        let mut small = BytesMut::from(&b"\0\0\0\x02ab"[..]);
        assert_eq!(whole(codec.decode(&mut small)), b"ab");
        let mut big = BytesMut::from(&(5000i32).to_be_bytes()[..]);
        big.extend_from_slice(&[1u8; 5000]);
        assert_eq!(whole(codec.decode(&mut big)).len(), 5000);
    }

    #[test]
    fn rest_of_a_frame_is_read_or_skipped() {
        let stall = std::time::Duration::from_secs(5);
        let mut r = &b"cdefgh-next"[..];
        let body = block_on(read_rest(&mut r, 8, Bytes::from_static(b"ab"), stall));
        assert_eq!(&body.expect("rest")[..], b"abcdefgh");
        block_on(skip_rest(&mut r, 1, stall)).expect("skip");
        assert_eq!(r, b"next");
        let mut short = &b"cd"[..];
        assert!(matches!(
            block_on(read_rest(&mut short, 8, Bytes::from_static(b"ab"), stall)),
            Err(FrameError::Truncated)
        ));
    }

    proptest! {
        #[test]
        fn codec_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            use tokio_util::codec::Decoder;
            let mut codec = FrameCodec { max: 256, head_min: Some(HEAD_BYTES) };
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
