//! Kafka wire framing and the little of each frame the proxy must look at.

pub mod frame;
pub mod header;
pub mod produce;
pub mod versions;

pub use frame::{FrameCodec, FrameError, read_frame, write_frame};
pub use header::{RequestHeaderPeek, peek_request_header, peek_response_correlation_id};
