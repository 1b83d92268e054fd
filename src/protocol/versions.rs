//! Which API versions the proxy lets clients use.
//!
//! Keys the proxy decodes are capped at what it can decode; every other key is passed
//! through as opaque bytes, so the broker's range stands.

use kafka_protocol::messages::ApiKey;

/// The highest version the proxy accepts for a key it inspects, or `None` when it only
/// forwards that key's frames and any version the broker speaks is fine.
pub fn proxy_max_version(key: ApiKey) -> Option<i16> {
    match key {
        // v13 names topics by id, and ids differ between DC1 and DC2.
        ApiKey::Produce => Some(12),
        // v16+ responses carry KIP-951 node endpoints; re-encoding a Fetch response
        // copies every record byte, so the proxy stays below the version that has them
        // and consumers fall back to Metadata on a leader change.
        ApiKey::Fetch => Some(15),
        ApiKey::Metadata
        | ApiKey::FindCoordinator
        | ApiKey::DescribeCluster
        | ApiKey::ApiVersions
        | ApiKey::EndTxn
        | ApiKey::InitProducerId => Some(key.valid_versions().max),
        _ => None,
    }
}

/// The lowest version the proxy advertises for a key it inspects: the lowest it can
/// decode, except for Produce.
pub fn proxy_min_version(key: ApiKey) -> i16 {
    match key {
        // librdkafka before 2.10 (Debian's kcat 1.7.1 has 2.0.2) sends gzip, snappy and
        // lz4 batches uncompressed when the range starts above v2; Apache Kafka 4.0
        // advertises Produce from v0 for that reason (KAFKA-18659). Clients pick the
        // highest version both sides have, so v0-v2 requests come only from clients
        // that know no record batches: forwarded with the tee off, refused with it on
        // (the tee reads record batches only).
        ApiKey::Produce => 0,
        _ => key.valid_versions().min,
    }
}
