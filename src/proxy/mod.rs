//! The proxy proper: client sessions, DC1 broker routing and response rewrites.

mod context;
mod plan;
mod request;
mod response;
pub mod rewrite;
pub mod routing;
pub mod session;

pub use routing::{BrokerId, Router, Upstream};
