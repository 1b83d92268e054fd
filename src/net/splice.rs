//! Moving the body of a large frame from one TCP socket to another with splice(2),
//! through a pipe, so its bytes never enter the proxy's memory: the kernel hands the
//! received pages on instead of copying them out to the proxy and back in.
//!
//! Used when the proxy has nothing to read in a frame past its head (plaintext on both
//! sides, no rewrite, no capture): large Produce requests with the tee off and Fetch
//! responses. `crate::net::tee` builds on these pipes to splice a frame while keeping
//! a copy (large Produce requests with the tee on). Everywhere else frames are read
//! whole.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Pipe size asked for: the largest an unprivileged process gets by default
/// (/proc/sys/fs/pipe-max-size), so a 1 MB frame moves in a few calls.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// A pipe, lent to one frame at a time (see `take_pipe`); empty between frames.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes one fill may move (the pipe's size).
    capacity: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds: [RawFd; 2] = [-1; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // When the user's pipe budget is spent (many pipes open), the kernel refuses the
        // larger size and the default one (64 KiB) is used.
        // SAFETY: plain fcntl calls on a descriptor this function owns.
        let size = unsafe {
            match libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) {
                n if n > 0 => n,
                _ => libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ),
            }
        };
        let capacity = usize::try_from(size)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(io::Error::last_os_error)?;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// Bytes one fill may move.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(super) fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub(super) fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
}

/// Pipes not in use. A pipe is taken for one frame and given back empty, so the
/// pipes open (and the pipe memory charged to the user, /proc/sys/fs/pipe-user-pages-*)
/// follow the frames being spliced at one time, not the connections.
static IDLE_PIPES: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// Idle pipes kept for reuse; more are closed.
const MAX_IDLE_PIPES: usize = 32;

/// An empty pipe: an idle one, or a new one; `None` when none can be had (out of
/// descriptors).
pub(super) fn take_pipe() -> Option<Pipe> {
    let idle = IDLE_PIPES.lock().ok().and_then(|mut v| v.pop());
    if idle.is_some() {
        return idle;
    }
    match Pipe::new() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!("no pipe for splice, copying the frame instead: {e}");
            None
        }
    }
}

/// Returns an empty pipe for reuse.
pub(super) fn give_back(pipe: Pipe) {
    if let Ok(mut idle) = IDLE_PIPES.lock()
        && idle.len() < MAX_IDLE_PIPES
    {
        idle.push(pipe);
    }
}

/// Why a body could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// Reading the source failed, or it closed before the frame ended.
    #[error("reading: {0}")]
    Source(io::Error),
    /// No byte of the frame arrived for the stall timeout.
    #[error("bytes stopped arriving mid-frame for {0:?}")]
    Stalled(Duration),
    /// Writing the destination failed. `unread` bytes of the frame are still in the
    /// source.
    #[error("writing: {error}")]
    Sink { error: io::Error, unread: usize },
}

/// The TCP socket under one half of a connection, when it is plain TCP.
pub trait TcpHalf {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl TcpHalf for tokio::net::tcp::OwnedReadHalf {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl TcpHalf for tokio::net::tcp::OwnedWriteHalf {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl<T> TcpHalf for tokio::io::ReadHalf<T> {}
impl<T> TcpHalf for tokio::io::WriteHalf<T> {}

/// Whether a body can be spliced from `from` to `to`.
pub fn both_tcp(from: &impl TcpHalf, to: &impl TcpHalf) -> bool {
    from.tcp().is_some() && to.tcp().is_some()
}

/// How [`forward_body`] moved a body of this many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    Spliced(usize),
    /// Through a buffer: not both TCP, or no pipe to be had.
    Copied(usize),
}

/// Moves the next `len` bytes of `from` to `to`: spliced through a pipe when both are
/// TCP sockets, copied otherwise. `to` must have nothing buffered.
pub async fn forward_body<R, W>(
    from: &mut R,
    to: &mut W,
    len: usize,
    stall: Duration,
) -> Result<Moved, SpliceError>
where
    R: AsyncRead + TcpHalf + Unpin,
    W: AsyncWrite + TcpHalf + Unpin,
{
    if let (Some(src), Some(dst)) = (from.tcp(), to.tcp())
        && let Some(pipe) = take_pipe()
    {
        let moved = splice_exact(src, dst, &pipe, len, stall).await;
        // After a failed write the pipe may hold bytes of a frame that will never be
        // finished: it is closed. Otherwise it is empty (reads fill an empty pipe).
        if !matches!(moved, Err(SpliceError::Sink { .. })) {
            give_back(pipe);
        }
        return moved.map(|()| Moved::Spliced(len));
    }
    copy_exact(from, to, len, stall).await?;
    Ok(Moved::Copied(len))
}

/// Copies `len` bytes through a buffer, for when no pipe can be had.
async fn copy_exact<R, W>(
    from: &mut R,
    to: &mut W,
    len: usize,
    stall: Duration,
) -> Result<(), SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut unread = len;
    let mut buf = vec![0u8; len.min(64 * 1024)];
    while unread > 0 {
        let want = unread.min(buf.len());
        let n = match tokio::time::timeout(stall, from.read(&mut buf[..want])).await {
            Err(_) => return Err(SpliceError::Stalled(stall)),
            Ok(Ok(0)) => return Err(SpliceError::Source(io::ErrorKind::UnexpectedEof.into())),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(SpliceError::Source(e)),
        };
        unread -= n;
        if let Err(error) = to.write_all(&buf[..n]).await {
            return Err(SpliceError::Sink { error, unread });
        }
    }
    to.flush()
        .await
        .map_err(|error| SpliceError::Sink { error, unread: 0 })
}

impl SpliceError {
    /// Writing failed: the destination's error and the frame's bytes still unread in
    /// the source. Reading failed: `Err` with the frame error a whole read gives.
    pub fn sink_failure(self) -> Result<(io::Error, usize), crate::protocol::FrameError> {
        use crate::protocol::FrameError;
        match self {
            SpliceError::Sink { error, unread } => Ok((error, unread)),
            SpliceError::Source(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(FrameError::Truncated)
            }
            SpliceError::Source(e) => Err(FrameError::Io(e)),
            SpliceError::Stalled(d) => Err(FrameError::Stalled(d)),
        }
    }
}

/// Moves exactly `len` bytes from `from` to `to` through `pipe`. Waits for the
/// source at most `stall` per step; waits for the destination as long as it takes
/// (back-pressure, like any other write).
pub async fn splice_exact(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    len: usize,
    stall: Duration,
) -> Result<(), SpliceError> {
    let mut unread = len;
    let mut in_pipe = 0usize;
    let sink = |error, unread| SpliceError::Sink { error, unread };
    while unread > 0 || in_pipe > 0 {
        let mut moved = false;
        // Fill: take what the source has, as far as the pipe holds, so the source keeps
        // flowing while the destination is slow (as it would into a read buffer).
        let room = pipe.capacity - in_pipe;
        if unread > 0 && room > 0 {
            let want = unread.min(room);
            let fill = || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), want, 0);
            let filled = if in_pipe == 0 {
                // An empty pipe has room, so EAGAIN means the socket has no data and
                // tokio may forget its readiness.
                from.try_io(Interest::READABLE, fill)
            } else {
                // EAGAIN may mean a full pipe (it counts buffers, not bytes): the
                // socket's readiness must be kept, so the call bypasses tokio.
                fill()
            };
            match filled {
                Ok(0) => {
                    return Err(SpliceError::Source(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a frame",
                    )));
                }
                Ok(n) => {
                    unread -= n;
                    in_pipe += n;
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(SpliceError::Source(e)),
            }
        }
        // Drain; "more follows" lets TCP fill whole segments.
        if in_pipe > 0 {
            let more = if unread > 0 { libc::SPLICE_F_MORE } else { 0 };
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), in_pipe, more)
            }) {
                Ok(0) => return Err(sink(io::ErrorKind::WriteZero.into(), unread)),
                Ok(n) => {
                    in_pipe -= n;
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(sink(e, unread)),
            }
        }
        if moved {
            continue;
        }
        if in_pipe == 0 {
            // Waiting for the source only.
            match tokio::time::timeout(stall, from.readable()).await {
                Err(_) => return Err(SpliceError::Stalled(stall)),
                Ok(Err(e)) => return Err(SpliceError::Source(e)),
                Ok(Ok(())) => {}
            }
        } else {
            // The destination is full (back-pressure, no timeout, like any write).
            to.writable().await.map_err(|e| sink(e, unread))?;
        }
    }
    Ok(())
}

/// One non-blocking splice(2) call.
pub(super) fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from
    // live owners); null offsets are allowed for pipes and sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags | libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::{assert_next_left_in, pair, pattern, send_body_then_next};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn moves_exactly_the_frame_and_leaves_the_rest() {
        // writer -> [from] proxy [to] -> reader
        let (writer, from) = pair().await;
        let (to, mut reader) = pair().await;
        let body = pattern(3_000_000);
        let send = send_body_then_next(writer, body.clone());
        let recv = tokio::spawn(async move {
            let mut got = vec![0u8; 3_000_000];
            reader.read_exact(&mut got).await.expect("read");
            got
        });
        let pipe = Pipe::new().expect("pipe");
        splice_exact(&from, &to, &pipe, body.len(), Duration::from_secs(10))
            .await
            .expect("splice");
        assert!(recv.await.expect("join") == body);
        // The bytes after the frame stay in the source socket.
        let _writer = send.await.expect("join");
        assert_next_left_in(from).await;
    }

    #[tokio::test]
    async fn forward_body_splices_tcp_and_copies_anything_else() {
        let stall = Duration::from_secs(10);
        // TCP on both sides: spliced, and the pipe goes back to the pool for reuse.
        let (mut writer, from) = pair().await;
        let (to, mut reader) = pair().await;
        let (mut from_r, _from_w) = from.into_split();
        let (_to_r, mut to_w) = to.into_split();
        for round in 0..3u8 {
            writer.write_all(&[round; 300_000]).await.expect("write");
            let moved = forward_body(&mut from_r, &mut to_w, 300_000, stall).await;
            assert_eq!(moved.expect("forward"), Moved::Spliced(300_000));
            let mut got = vec![0u8; 300_000];
            reader.read_exact(&mut got).await.expect("read");
            assert!(got.iter().all(|&b| b == round));
        }
        assert!(!IDLE_PIPES.lock().expect("pool").is_empty());
        // Not TCP (as under TLS): copied.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let (mut a_r, _a_w) = tokio::io::split(a);
        let (c, mut d) = tokio::io::duplex(1 << 16);
        let (_c_r, mut c_w) = tokio::io::split(c);
        b.write_all(b"hello, world").await.expect("write");
        let moved = forward_body(&mut a_r, &mut c_w, 5, stall).await;
        assert_eq!(moved.expect("forward"), Moved::Copied(5));
        let mut got = [0u8; 5];
        d.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn truncated_and_stalled_sources_are_errors() {
        let (mut writer, from) = pair().await;
        let (to, _reader) = pair().await;
        let pipe = Pipe::new().expect("pipe");
        writer.write_all(&[1u8; 1000]).await.expect("write");
        let stall = Duration::from_millis(200);
        let err = splice_exact(&from, &to, &pipe, 5000, stall)
            .await
            .unwrap_err();
        assert!(matches!(err, SpliceError::Stalled(_)), "{err}");
        drop(writer);
        let pipe = Pipe::new().expect("pipe");
        let err = splice_exact(&from, &to, &pipe, 5000, stall)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SpliceError::Source(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_closed_destination_reports_what_is_left_to_read() {
        let (mut writer, from) = pair().await;
        let (to, reader) = pair().await;
        drop(reader);
        let pipe = Pipe::new().expect("pipe");
        let len = 8 << 20;
        let send = tokio::spawn(async move {
            let _ = writer.write_all(&vec![3u8; len]).await;
            writer
        });
        let err = splice_exact(&from, &to, &pipe, len, Duration::from_secs(10))
            .await
            .unwrap_err();
        match err {
            SpliceError::Sink { unread, .. } => assert!(unread < len),
            other => panic!("expected a sink error, got {other}"),
        }
        drop(send);
    }
}
