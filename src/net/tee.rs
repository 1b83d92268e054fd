//! Splicing a frame body to its destination while keeping a copy: the body moves from
//! the source socket into pipe `a`, tee(2) duplicates it into pipe `b` (page
//! references, no copy), the proxy reads the duplicate from `b` (its one copy), and
//! `a` is spliced on to the destination. Reading a Produce request whole and writing
//! it to DC1 costs two copies through user memory; this costs one.
//!
//! The last bytes of the body are held in `a` until [`TeePipes::release`], so the
//! destination never has the whole frame before the caller has looked at it (and may
//! still refuse it by closing the connection instead).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::splice::{Pipe, SpliceError, give_back, splice, take_pipe};

/// Two pipes lent to one frame.
#[derive(Debug)]
pub struct TeePipes {
    a: Pipe,
    b: Pipe,
    /// Bytes at the head of `a` already copied and not yet sent.
    held: usize,
}

impl TeePipes {
    /// Two empty pipes, or `None` when they cannot be had (out of descriptors, or
    /// the copy pipe would be smaller than the first: tee(2) must always find room).
    pub fn take() -> Option<TeePipes> {
        let first = take_pipe()?;
        let Some(second) = take_pipe() else {
            give_back(first);
            return None;
        };
        let (a, b) = if first.capacity() <= second.capacity() {
            (first, second)
        } else {
            (second, first)
        };
        Some(TeePipes { a, b, held: 0 })
    }

    /// Moves the next `len` bytes of `from` towards `to`, appending each one to `out`.
    /// Returns once all of them are in `out`; the last of them stay held in the pipe
    /// until [`release`](Self::release). Waits for the source at most `stall` per
    /// step, for the destination as long as it takes.
    pub async fn copy_through(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        len: usize,
        out: &mut BytesMut,
        stall: Duration,
    ) -> Result<(), SpliceError> {
        let step = self.a.capacity();
        let mut unread = len;
        // Bytes in `a` behind the held ones, not yet duplicated. tee(2) duplicates from
        // the head of a pipe, so held bytes are sent before the next tee.
        let mut fresh = 0usize;
        loop {
            if self.held > 0 && (fresh > 0 || unread > 0) {
                let more = self.held;
                send_exact(&self.a, to, more, libc::SPLICE_F_MORE)
                    .await
                    .map_err(|error| SpliceError::Sink {
                        error,
                        unread: unread + fresh,
                    })?;
                self.held = 0;
            } else if fresh > 0 {
                let n = tee(&self.a, &self.b, fresh).map_err(SpliceError::Source)?;
                read_pipe(&self.b, out, n).map_err(SpliceError::Source)?;
                fresh -= n;
                self.held = n;
            } else if unread > 0 {
                let n = fill(from, &self.a, unread.min(step), stall).await?;
                unread -= n;
                fresh = n;
            } else {
                return Ok(());
            }
        }
    }

    /// Sends the held bytes; the frame is then complete at the destination. The pipes
    /// go back to the pool once empty.
    pub async fn release(mut self, to: &TcpStream) -> io::Result<()> {
        send_exact(&self.a, to, self.held, 0).await?;
        self.held = 0;
        give_back(self.a);
        give_back(self.b);
        Ok(())
    }
}

/// Fills the empty pipe from the source: at least one byte, at most `want`.
async fn fill(
    from: &TcpStream,
    pipe: &Pipe,
    want: usize,
    stall: Duration,
) -> Result<usize, SpliceError> {
    loop {
        // The pipe is empty, so EAGAIN means the socket has nothing and tokio may
        // forget its readiness.
        match from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), pipe.write_fd(), want, 0)
        }) {
            Ok(0) => {
                return Err(SpliceError::Source(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a frame",
                )));
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(stall, from.readable()).await {
                    Err(_) => return Err(SpliceError::Stalled(stall)),
                    Ok(Err(e)) => return Err(SpliceError::Source(e)),
                    Ok(Ok(())) => {}
                }
            }
            Err(e) => return Err(SpliceError::Source(e)),
        }
    }
}

/// Splices exactly `n` bytes from the head of `pipe` to `to`.
async fn send_exact(pipe: &Pipe, to: &TcpStream, n: usize, more: libc::c_uint) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        match to.try_io(Interest::WRITABLE, || {
            splice(pipe.read_fd(), to.as_raw_fd(), left, more)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => left -= k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Duplicates up to `n` bytes from the head of `a` into the empty pipe `b`.
fn tee(a: &Pipe, b: &Pipe, n: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open pipe ends owned by the caller's pipes.
    let r = unsafe { libc::tee(a.read_fd(), b.write_fd(), n, libc::SPLICE_F_NONBLOCK) };
    match usize::try_from(r) {
        Ok(0) => Err(io::Error::other("tee(2) duplicated nothing")),
        Ok(k) => Ok(k),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

/// Reads exactly `n` bytes, already in the pipe, onto the end of `out`.
fn read_pipe(pipe: &Pipe, out: &mut BytesMut, n: usize) -> io::Result<()> {
    out.reserve(n);
    let mut left = n;
    while left > 0 {
        let spare = out.spare_capacity_mut();
        // SAFETY: `spare` has room for at least `left` bytes (reserved above, and each
        // read adds to the length what it wrote); read(2) writes at most `left` bytes
        // there and nothing reads them before `set_len`.
        let r = unsafe { libc::read(pipe.read_fd(), spare.as_mut_ptr().cast(), left) };
        let k = match usize::try_from(r) {
            Ok(0) => return Err(io::Error::other("pipe ended before the duplicated bytes")),
            Ok(k) => k,
            Err(_) => return Err(io::Error::last_os_error()),
        };
        // SAFETY: read(2) initialised the first `k` spare bytes.
        unsafe { out.set_len(out.len() + k) };
        left -= k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::{assert_next_left_in, pair, pattern, send_body_then_next};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_every_byte_and_holds_the_last_until_released() {
        // writer -> [from] proxy [to] -> reader
        let (writer, from) = pair().await;
        let (to, mut reader) = pair().await;
        let len = 3_000_000;
        let body = pattern(len);
        let send = send_body_then_next(writer, body.clone());
        let recv = tokio::spawn(async move {
            let mut got = vec![0u8; len];
            let mut n = 0;
            while n < len {
                let k = reader.read(&mut got[n..]).await.expect("read");
                assert!(k > 0, "destination closed");
                n += k;
            }
            got
        });
        let mut pipes = TeePipes::take().expect("pipes");
        let mut out = BytesMut::new();
        pipes
            .copy_through(&from, &to, len, &mut out, Duration::from_secs(10))
            .await
            .expect("copy");
        assert!(out[..] == body[..], "the copy differs");
        // The destination cannot have the whole body yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!recv.is_finished(), "the held bytes went out early");
        pipes.release(&to).await.expect("release");
        assert!(
            recv.await.expect("join") == body,
            "the destination got other bytes"
        );
        let _writer = send.await.expect("join");
        assert_next_left_in(from).await;
    }

    #[tokio::test]
    async fn truncated_and_stalled_sources_are_errors() {
        let (mut writer, from) = pair().await;
        let (to, _reader) = pair().await;
        writer.write_all(&[1u8; 1000]).await.expect("write");
        let stall = Duration::from_millis(200);
        let mut out = BytesMut::new();
        let mut pipes = TeePipes::take().expect("pipes");
        let err = pipes
            .copy_through(&from, &to, 5000, &mut out, stall)
            .await
            .unwrap_err();
        assert!(matches!(err, SpliceError::Stalled(_)), "{err}");
        drop(writer);
        let mut pipes = TeePipes::take().expect("pipes");
        let err = pipes
            .copy_through(&from, &to, 5000, &mut out, stall)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SpliceError::Source(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{err}"
        );
    }
}
