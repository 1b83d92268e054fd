//! Responses from DC1 through the rewrite path, for every key and version the proxy
//! decodes: never a panic, and a rewritten frame keeps its correlation id.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_tee::proxy::rewrite::{AddressMap, rewrite_response};
use libfuzzer_sys::fuzz_target;

/// The proxy's own allocator, as in the binary.
#[global_allocator]
static ALLOCATOR: kafka_tee::alloc::Allocator = kafka_tee::alloc::Allocator;

struct Fixed;
impl AddressMap for Fixed {
    fn advertised_host(&self) -> &str {
        "proxy"
    }
    fn proxy_ports(&self, brokers: &mut [(i32, String)]) -> Vec<(i32, Option<u16>)> {
        brokers.iter().map(|(id, _)| (*id, Some(9000))).collect()
    }
}

const KEYS: [ApiKey; 5] = [
    ApiKey::Metadata,
    ApiKey::FindCoordinator,
    ApiKey::DescribeCluster,
    ApiKey::ApiVersions,
    ApiKey::Produce,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let key = KEYS[usize::from(selector) % KEYS.len()];
    let version = i16::from(selector >> 3) % (key.valid_versions().max + 1);
    let frame = Bytes::copy_from_slice(rest);
    if let Ok(out) = rewrite_response(&Fixed, key, version, frame.clone()) {
        assert_eq!(out.get(..4), frame.get(..4), "correlation id changed");
    }
});
