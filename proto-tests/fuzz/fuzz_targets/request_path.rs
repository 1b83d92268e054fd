//! Everything the proxy does with bytes a client sends before DC1 sees them: frame
//! splitting, header peek, header decode, the Produce reader and the acks rewrite.
#![no_main]

use bytes::{Bytes, BytesMut};
use kafka_tee::protocol::header::split_request;
use kafka_tee::protocol::produce::{parse_produce_request, with_acks};
use kafka_tee::protocol::{FrameCodec, peek_request_header};
use libfuzzer_sys::fuzz_target;

/// The proxy's own allocator, as in the binary.
#[global_allocator]
static ALLOCATOR: kafka_tee::alloc::Allocator = kafka_tee::alloc::Allocator;
use tokio_util::codec::Decoder;

/// Splits a byte stream into frames the way a client connection does.
fn decode_all(data: &[u8]) -> Vec<Bytes> {
    let mut codec = FrameCodec { max: 1 << 20 };
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while let Ok(Some(f)) = codec.decode(&mut buf) {
        out.push(f);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The input both as a stream of frames and as one frame body.
    let mut frames = decode_all(data);
    frames.push(Bytes::copy_from_slice(data));
    for frame in frames {
        let Some(peek) = peek_request_header(&frame) else { continue };
        if let Some(key) = peek.key() {
            let _ = split_request(key, &frame);
        }
        if let Ok(view) = parse_produce_request(&frame) {
            let patched = with_acks(&frame, view.acks_offset, 1).expect("acks offset inside the frame");
            let again = parse_produce_request(&patched).expect("patched frame still parses");
            assert_eq!(again.acks, 1);
            assert_eq!(again.topics.len(), view.topics.len());
        }
    }
});
