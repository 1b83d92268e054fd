//! The proxy proper: listeners, client sessions, DC1 broker routing and response
//! rewrites.

mod context;
pub mod listener;
mod plan;
mod request;
mod response;
pub mod rewrite;
pub mod routing;
pub mod session;
pub mod stats;

pub use routing::{BrokerId, Router, Upstream};
