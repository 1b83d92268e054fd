//! Helpers for the socket tests of this module.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Both ends of a fresh loopback TCP connection.
pub(super) async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.expect("connect"), b.expect("accept").0)
}

/// `len` bytes of a pattern that does not repeat at page or pipe-buffer boundaries.
pub(super) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Writes `body` and then `next` into `writer`, in the background.
pub(super) fn send_body_then_next(mut writer: TcpStream, body: Vec<u8>) -> JoinHandle<TcpStream> {
    tokio::spawn(async move {
        writer.write_all(&body).await.expect("write");
        writer.write_all(b"next").await.expect("write");
        writer
    })
}

/// The bytes after the body are still in the source socket.
pub(super) async fn assert_next_left_in(mut from: TcpStream) {
    let mut rest = [0u8; 4];
    from.read_exact(&mut rest).await.expect("rest");
    assert_eq!(&rest, b"next", "bytes after the body stay in the source");
}
