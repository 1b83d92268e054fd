//! What every session shares and works with: the shared context, the connection
//! types, and why a session ends (`SessionError`).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::protocol::FrameError;
use crate::proxy::Router;
use crate::proxy::stats::ProxyStats;
use crate::tee::capture::Capture;

/// What every session shares.
pub struct SessionContext {
    pub config: Arc<Config>,
    pub router: Arc<Router>,
    /// Connection and request counts, for the status page.
    pub stats: Arc<ProxyStats>,
    /// Present when the tee is on.
    pub capture: Option<Arc<Capture>>,
    pub shutdown: CancellationToken,
    /// How long a synchronous topic's producer waits for DC2.
    pub sync_timeout: Duration,
    /// TLS towards DC1 brokers, when configured.
    pub upstream_tls: Option<tokio_rustls::TlsConnector>,
}

/// A byte stream of a connection, as trait object.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// One side of a session: plain TCP (whose large frames can be spliced to a plain
/// TCP peer) or anything else, such as TLS.
pub enum Conn {
    Plain(TcpStream),
    Other(Box<dyn Io>),
}

impl Conn {
    pub(super) fn into_io(self) -> Box<dyn Io> {
        match self {
            Conn::Plain(s) => Box::new(s),
            Conn::Other(s) => s,
        }
    }
}

/// Why a session ended early, and which side was at fault.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client: {0}")]
    Client(String),
    /// The client's socket failed (reset, broken pipe, ...): routine or not by its kind.
    #[error("client: {0}")]
    ClientIo(#[source] std::io::Error),
    #[error("client frame: {0}")]
    ClientFrame(FrameError),
    #[error("DC1 broker {addr}: {message}")]
    Upstream { addr: String, message: String },
    #[error("DC1 broker {addr} frame: {source}")]
    UpstreamFrame { addr: String, source: FrameError },
    #[error("cannot connect to DC1 ({0})")]
    Connect(String),
}

impl SessionError {
    /// A peer closing its socket is routine, not an error worth a warning.
    pub fn is_routine(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
        let io_routine =
            |e: &std::io::Error| matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe);
        match self {
            SessionError::ClientFrame(FrameError::Closed) => true,
            SessionError::ClientFrame(FrameError::Io(e)) => io_routine(e),
            SessionError::UpstreamFrame {
                source: FrameError::Closed,
                ..
            } => true,
            SessionError::ClientIo(e) => io_routine(e),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn routine_closes_are_told_by_their_kind() {
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
        ] {
            assert!(
                SessionError::ClientIo(Error::new(kind, "x")).is_routine(),
                "{kind:?}"
            );
        }
        assert!(!SessionError::ClientIo(Error::new(ErrorKind::PermissionDenied, "x")).is_routine());
        // A message that merely mentions a reset is not one.
        assert!(!SessionError::Client("connection reset by the rules".into()).is_routine());
        assert!(SessionError::ClientFrame(FrameError::Closed).is_routine());
    }
}
