//! The proxy proper: client sessions, DC1 broker routing and response rewrites.

mod large;
pub mod rewrite;
pub mod routing;
pub mod session;

pub use routing::{BrokerId, Router, Upstream};
