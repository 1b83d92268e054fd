//! Response rewrites: every broker address a client sees points at the proxy, and the
//! API versions offered are those the proxy can handle.
//!
//! Pure functions over typed responses, plus `rewrite_response` that decodes, rewrites
//! and re-encodes one frame. Keys that need no rewrite are never decoded.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FindCoordinatorResponse,
    MetadataResponse, ProduceResponse, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::protocol::header::{DecodeError, guarded_decode, split_response};
use crate::protocol::versions::{proxy_max_version, proxy_min_version};

/// Maps a real broker (id, host, port) to the proxy port clients must use for it.
pub trait AddressMap: Sync {
    fn advertised_host(&self) -> &str;
    /// Proxy ports for a set of brokers, assigned together (in node-id order).
    fn proxy_ports(&self, brokers: &mut [(i32, String)]) -> Vec<(i32, Option<u16>)>;
    /// The host name handed out for one broker; the same for all unless brokers are
    /// told apart by TLS server name.
    fn host_for(&self, _broker: i32) -> std::borrow::Cow<'_, str> {
        self.advertised_host().into()
    }
}

impl AddressMap for crate::proxy::Router {
    fn advertised_host(&self) -> &str {
        crate::proxy::Router::advertised_host(self)
    }
    fn host_for(&self, broker: i32) -> std::borrow::Cow<'_, str> {
        crate::proxy::Router::host_for(self, broker)
    }
    fn proxy_ports(&self, brokers: &mut [(i32, String)]) -> Vec<(i32, Option<u16>)> {
        self.ensure_all(brokers)
            .into_iter()
            .map(|(id, r)| match r {
                Ok(p) => (id, Some(p)),
                Err(e) => {
                    tracing::error!(broker = id, error = %e, "cannot route broker");
                    (id, None)
                }
            })
            .collect()
    }
}

/// Rewrites the (id, host, port) triples yielded by `entries` in place.
fn remap<'a>(
    map: &dyn AddressMap,
    entries: impl Iterator<Item = (i32, &'a mut StrBytes, &'a mut i32)>,
) {
    let mut slots: Vec<(i32, &'a mut StrBytes, &'a mut i32)> =
        entries.filter(|(id, _, _)| *id >= 0).collect();
    if slots.is_empty() {
        return;
    }
    let mut brokers: Vec<(i32, String)> = slots
        .iter()
        .map(|(id, h, p)| (*id, format!("{}:{}", h.as_str(), p)))
        .collect();
    let ports = map.proxy_ports(&mut brokers);
    for (id, h, p) in slots.iter_mut() {
        if let Some((_, Some(port))) = ports.iter().find(|(pid, _)| pid == id) {
            **h = StrBytes::from_string(map.host_for(*id).into_owned());
            **p = i32::from(*port);
        }
    }
}

pub fn rewrite_metadata(map: &dyn AddressMap, r: &mut MetadataResponse) {
    remap(
        map,
        r.brokers
            .iter_mut()
            .map(|b| (b.node_id.0, &mut b.host, &mut b.port)),
    );
}

pub fn rewrite_find_coordinator(
    map: &dyn AddressMap,
    r: &mut FindCoordinatorResponse,
    version: i16,
) {
    // v0-3 answer for one key at the top level; v4+ only in `coordinators`, and the
    // top-level fields must keep their defaults there.
    if version < 4 && r.error_code == 0 {
        remap(
            map,
            std::iter::once((r.node_id.0, &mut r.host, &mut r.port)),
        );
    }
    remap(
        map,
        r.coordinators
            .iter_mut()
            .filter(|c| c.error_code == 0)
            .map(|c| (c.node_id.0, &mut c.host, &mut c.port)),
    );
}

pub fn rewrite_describe_cluster(map: &dyn AddressMap, r: &mut DescribeClusterResponse) {
    remap(
        map,
        r.brokers
            .iter_mut()
            .map(|b| (b.broker_id.0, &mut b.host, &mut b.port)),
    );
}

pub fn rewrite_produce(map: &dyn AddressMap, r: &mut ProduceResponse) {
    remap(
        map,
        r.node_endpoints
            .iter_mut()
            .map(|n| (n.node_id.0, &mut n.host, &mut n.port)),
    );
}

/// Intersects the broker's versions with the proxy's: capped where the proxy decodes,
/// dropped where the intersection is empty.
pub fn rewrite_api_versions(r: &mut ApiVersionsResponse) {
    r.api_keys.retain_mut(|v| {
        let Ok(key) = ApiKey::try_from(v.api_key) else {
            return true; // unknown to us: forwarded opaquely, any version works
        };
        if key == ApiKey::SaslHandshake {
            // v0 switches the connection to raw SASL tokens, which are not Kafka frames.
            v.min_version = v.min_version.max(1);
        }
        if let Some(max) = proxy_max_version(key) {
            v.min_version = v.min_version.max(proxy_min_version(key));
            v.max_version = v.max_version.min(max);
        }
        v.min_version <= v.max_version
    });
}

/// Whether responses to this key are rewritten (and so must be decoded).
pub fn needs_rewrite(key: ApiKey, version: i16) -> bool {
    match key {
        ApiKey::Metadata
        | ApiKey::FindCoordinator
        | ApiKey::DescribeCluster
        | ApiKey::ApiVersions => true,
        ApiKey::Produce => version >= 10,
        _ => false,
    }
}

/// Decodes a response frame, applies the rewrite for its key and re-encodes it. Returns
/// the frame unchanged for keys that need nothing. `produce_hook` sees a decoded Produce
/// response before it is re-encoded.
pub fn rewrite_response(
    map: &dyn AddressMap,
    key: ApiKey,
    version: i16,
    frame: Bytes,
) -> Result<Bytes, DecodeError> {
    if !needs_rewrite(key, version) {
        return Ok(frame);
    }
    let (header, mut body) = split_response(key, version, &frame)?;
    let hv = key.response_header_version(version);
    macro_rules! apply {
        ($t:ty, $name:literal, $f:expr) => {{
            let mut msg: $t = guarded_decode(&mut body, version, $name)?;
            $f(&mut msg);
            encode(&header, hv, &msg, version, $name)
        }};
    }
    match key {
        ApiKey::Metadata => apply!(
            MetadataResponse,
            "Metadata response",
            |m: &mut MetadataResponse| rewrite_metadata(map, m)
        ),
        ApiKey::FindCoordinator => apply!(
            FindCoordinatorResponse,
            "FindCoordinator response",
            |m: &mut FindCoordinatorResponse| rewrite_find_coordinator(map, m, version)
        ),
        ApiKey::DescribeCluster => apply!(
            DescribeClusterResponse,
            "DescribeCluster response",
            |m: &mut DescribeClusterResponse| rewrite_describe_cluster(map, m)
        ),
        ApiKey::Produce => {
            // Node endpoints appear only on leader changes: most responses have none
            // and go out as they came, without a re-encode.
            let mut msg: ProduceResponse = guarded_decode(&mut body, version, "Produce response")?;
            if msg.node_endpoints.is_empty() {
                return Ok(frame);
            }
            rewrite_produce(map, &mut msg);
            encode(&header, hv, &msg, version, "Produce response")
        }
        ApiKey::ApiVersions => {
            // An error answer (e.g. UNSUPPORTED_VERSION) is a v0 body: pass it through.
            match guarded_decode::<ApiVersionsResponse>(&mut body, version, "ApiVersions response")
            {
                Ok(mut msg) if msg.error_code == 0 => {
                    rewrite_api_versions(&mut msg);
                    encode(&header, hv, &msg, version, "ApiVersions response")
                }
                _ => Ok(frame),
            }
        }
        _ => Ok(frame),
    }
}

/// Encodes a response header and body into one frame body.
pub fn encode<T: Encodable>(
    header: &ResponseHeader,
    header_version: i16,
    msg: &T,
    version: i16,
    what: &'static str,
) -> Result<Bytes, DecodeError> {
    let err = |e: anyhow::Error| DecodeError {
        what,
        version,
        message: format!("re-encoding failed: {e}"),
    };
    let size = header.compute_size(header_version).map_err(err)?
        + msg.compute_size(version).map_err(err)?;
    let mut out = BytesMut::with_capacity(size);
    header.encode(&mut out, header_version).map_err(err)?;
    msg.encode(&mut out, version).map_err(err)?;
    Ok(out.freeze())
}

/// Decodes any response body of type `T` (header included in `frame`).
pub fn decode_response<T: Decodable>(
    key: ApiKey,
    version: i16,
    frame: &Bytes,
    what: &'static str,
) -> Result<T, DecodeError> {
    let (_, mut body) = split_response(key, version, frame)?;
    guarded_decode(&mut body, version, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::produce_response::NodeEndpoint;
    use kafka_protocol::messages::{BrokerId, ResponseHeader};
    use kafka_protocol::protocol::Message;

    /// Broker id n is served at proxy port 9000 + n.
    struct Fixed;
    impl AddressMap for Fixed {
        fn advertised_host(&self) -> &str {
            "proxy.local"
        }
        fn proxy_ports(&self, brokers: &mut [(i32, String)]) -> Vec<(i32, Option<u16>)> {
            brokers
                .iter()
                .map(|(id, _)| (*id, Some(9000 + *id as u16)))
                .collect()
        }
    }

    fn frame<T: Encodable>(key: ApiKey, version: i16, msg: &T) -> Bytes {
        let header = ResponseHeader::default().with_correlation_id(5);
        encode(
            &header,
            key.response_header_version(version),
            msg,
            version,
            "test",
        )
        .expect("encode")
    }

    fn round_trip<T: Encodable + Decodable>(key: ApiKey, version: i16, msg: &T) -> T {
        let out =
            rewrite_response(&Fixed, key, version, frame(key, version, msg)).expect("rewrite");
        assert_eq!(crate::protocol::peek_response_correlation_id(&out), Some(5));
        decode_response(key, version, &out, "test").expect("decode")
    }

    #[test]
    fn metadata_every_version() {
        for v in MetadataResponse::VERSIONS.min..=MetadataResponse::VERSIONS.max {
            let msg = MetadataResponse::default()
                .with_controller_id(BrokerId(2))
                .with_brokers(vec![
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(1))
                        .with_host("dc1-a".into())
                        .with_port(9092),
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(2))
                        .with_host("dc1-b".into())
                        .with_port(9093),
                ]);
            let out = round_trip(ApiKey::Metadata, v, &msg);
            let got: Vec<(i32, &str, i32)> = out
                .brokers
                .iter()
                .map(|b| (b.node_id.0, b.host.as_str(), b.port))
                .collect();
            assert_eq!(
                got,
                vec![(1, "proxy.local", 9001), (2, "proxy.local", 9002)],
                "v{v}"
            );
            if v >= 1 {
                assert_eq!(out.controller_id, BrokerId(2), "v{v}");
            }
        }
    }

    #[test]
    fn find_coordinator_single_and_batched() {
        for v in FindCoordinatorResponse::VERSIONS.min..=FindCoordinatorResponse::VERSIONS.max {
            let msg = if v < 4 {
                FindCoordinatorResponse::default()
                    .with_node_id(BrokerId(3))
                    .with_host("dc1-c".into())
                    .with_port(9094)
            } else {
                FindCoordinatorResponse::default().with_coordinators(vec![
                    Coordinator::default()
                        .with_key("g1".into())
                        .with_node_id(BrokerId(3))
                        .with_host("dc1-c".into())
                        .with_port(9094),
                    Coordinator::default()
                        .with_key("g2".into())
                        .with_error_code(15)
                        .with_node_id(BrokerId(-1))
                        .with_host("".into())
                        .with_port(-1),
                ])
            };
            let out = round_trip(ApiKey::FindCoordinator, v, &msg);
            if v < 4 {
                assert_eq!((out.host.as_str(), out.port), ("proxy.local", 9003), "v{v}");
            } else {
                assert_eq!(out.coordinators.len(), 2);
                assert_eq!(
                    (out.coordinators[0].host.as_str(), out.coordinators[0].port),
                    ("proxy.local", 9003)
                );
                // A coordinator that is not available keeps its error and empty address.
                assert_eq!(
                    (out.coordinators[1].error_code, out.coordinators[1].port),
                    (15, -1)
                );
            }
        }
    }

    #[test]
    fn describe_cluster_every_version() {
        for v in DescribeClusterResponse::VERSIONS.min..=DescribeClusterResponse::VERSIONS.max {
            let msg = DescribeClusterResponse::default().with_brokers(vec![
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(4))
                    .with_host("dc1-d".into())
                    .with_port(1),
            ]);
            let out = round_trip(ApiKey::DescribeCluster, v, &msg);
            assert_eq!(
                (out.brokers[0].host.as_str(), out.brokers[0].port),
                ("proxy.local", 9004),
                "v{v}"
            );
        }
    }

    #[test]
    fn produce_node_endpoints() {
        for v in 10..=12 {
            let msg = ProduceResponse::default().with_node_endpoints(vec![
                NodeEndpoint::default()
                    .with_node_id(BrokerId(2))
                    .with_host("dc1-b".into())
                    .with_port(9093),
            ]);
            let out = round_trip(ApiKey::Produce, v, &msg);
            assert_eq!(
                (
                    out.node_endpoints[0].host.as_str(),
                    out.node_endpoints[0].port
                ),
                ("proxy.local", 9002)
            );
        }
        // Below v10 the frame is passed through untouched, not even decoded.
        let f = Bytes::from_static(b"\0\0\0\x05garbage");
        assert_eq!(
            rewrite_response(&Fixed, ApiKey::Produce, 9, f.clone()).expect("pass"),
            f
        );
    }

    #[test]
    fn api_versions_are_capped() {
        for v in 0..=4 {
            let msg = ApiVersionsResponse::default().with_api_keys(vec![
                ApiVersion::default()
                    .with_api_key(0)
                    .with_min_version(0)
                    .with_max_version(13),
                ApiVersion::default()
                    .with_api_key(1)
                    .with_min_version(0)
                    .with_max_version(17),
                ApiVersion::default()
                    .with_api_key(17)
                    .with_min_version(0)
                    .with_max_version(1),
                ApiVersion::default()
                    .with_api_key(32)
                    .with_min_version(0)
                    .with_max_version(4),
                ApiVersion::default()
                    .with_api_key(999)
                    .with_min_version(0)
                    .with_max_version(3),
            ]);
            let key = ApiKey::ApiVersions;
            let f = frame(key, v, &msg);
            let out = rewrite_response(&Fixed, key, v, f).expect("rewrite");
            let got: ApiVersionsResponse = decode_response(key, v, &out, "t").expect("decode");
            let ranges: Vec<(i16, i16, i16)> = got
                .api_keys
                .iter()
                .map(|k| (k.api_key, k.min_version, k.max_version))
                .collect();
            assert_eq!(
                ranges,
                vec![(0, 0, 12), (1, 4, 15), (17, 1, 1), (32, 0, 4), (999, 0, 3)],
                "v{v}"
            );
        }
    }

    #[test]
    fn api_versions_error_passes_through() {
        let msg = ApiVersionsResponse::default().with_error_code(35);
        let f = frame(ApiKey::ApiVersions, 0, &msg);
        assert_eq!(
            rewrite_response(&Fixed, ApiKey::ApiVersions, 3, f.clone()).expect("pass"),
            f
        );
    }

    #[test]
    fn truncated_responses_are_errors_not_panics() {
        let msg = MetadataResponse::default().with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host("h".into())
                .with_port(1),
        ]);
        for v in [0, 9, 12] {
            let f = frame(ApiKey::Metadata, v, &msg);
            for cut in 0..f.len() {
                assert!(
                    rewrite_response(&Fixed, ApiKey::Metadata, v, f.slice(..cut)).is_err(),
                    "v{v} cut {cut}"
                );
            }
        }
    }
}
