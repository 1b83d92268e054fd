//! Plain I/O under the proxy: TLS configuration and handshake diagnosis, and the
//! splice and tee pipes that move large frames between sockets.

pub mod splice;
pub mod tee;
#[cfg(test)]
mod testutil;
pub mod tls;
pub mod tls_failure;
