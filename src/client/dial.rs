//! Opening a connection to a broker: TCP with the configured socket buffers, then
//! TLS when the cluster uses it, each step bounded by `connect_timeout`.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::ClientConfig;

/// The byte stream under a connection: plain TCP or TLS over TCP.
pub(crate) trait BrokerIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> BrokerIo for T {}

pub(super) type Stream = Box<dyn BrokerIo>;

/// Opens the TCP connection and, when the cluster uses TLS, the TLS session on it;
/// each step is bounded by `connect_timeout`.
pub(super) async fn dial(cfg: &ClientConfig, addr: &str) -> Result<Stream, String> {
    let timeout = cfg.connect_timeout;
    let tcp = match tokio::time::timeout(timeout, connect(cfg, addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("timed out after {timeout:?}")),
    };
    // Latency matters more than packet count for pipelined small requests.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &cfg.tls else {
        return Ok(Box::new(tcp));
    };
    let name = tls
        .settings
        .server_name(addr)
        .map_err(|e| format!("TLS: {e}"))?;
    match tokio::time::timeout(timeout, tls.connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err(format!("TLS handshake timed out after {timeout:?}")),
    }
}

/// A TCP connection to `addr`, with the configured socket buffers (set before the
/// connection, so the window scale offered covers them).
async fn connect(cfg: &ClientConfig, addr: &str) -> std::io::Result<TcpStream> {
    let (snd, rcv) = (
        cfg.socket_send_buffer_bytes,
        cfg.socket_receive_buffer_bytes,
    );
    if snd == 0 && rcv == 0 {
        return TcpStream::connect(addr).await;
    }
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if snd > 0 {
            socket.set_send_buffer_size(u32::try_from(snd).unwrap_or(u32::MAX))?;
        }
        if rcv > 0 {
            socket.set_recv_buffer_size(u32::try_from(rcv).unwrap_or(u32::MAX))?;
        }
        match socket.connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        )
    }))
}
