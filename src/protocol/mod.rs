//! Kafka wire framing and the little of each frame the proxy must look at.

pub mod batch;
pub mod frame;
pub mod header;
pub mod produce;
pub mod versions;

pub use frame::{
    Frame, FrameCodec, FrameError, HEAD_BYTES, read_frame, read_rest, skip_rest, write_frame,
    write_frame_head,
};
pub use header::{RequestHeaderPeek, peek_request_header, peek_response_correlation_id};
