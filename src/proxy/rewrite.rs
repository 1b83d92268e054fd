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
pub trait AddressMap {
    fn advertised_host(&self) -> &str;
    /// Proxy ports for a set of brokers, assigned together (in node-id order).
    fn proxy_ports(&self, brokers: &mut [(i32, String)]) -> Vec<(i32, Option<u16>)>;
}

impl AddressMap for crate::proxy::Router {
    fn advertised_host(&self) -> &str {
        crate::proxy::Router::advertised_host(self)
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
    let host = StrBytes::from_string(map.advertised_host().to_owned());
    for (id, h, p) in slots.iter_mut() {
        if let Some((_, Some(port))) = ports.iter().find(|(pid, _)| pid == id) {
            **h = host.clone();
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

pub fn rewrite_find_coordinator(map: &dyn AddressMap, r: &mut FindCoordinatorResponse) {
    if r.error_code == 0 {
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
            |m: &mut FindCoordinatorResponse| rewrite_find_coordinator(map, m)
        ),
        ApiKey::DescribeCluster => apply!(
            DescribeClusterResponse,
            "DescribeCluster response",
            |m: &mut DescribeClusterResponse| rewrite_describe_cluster(map, m)
        ),
        ApiKey::Produce => apply!(
            ProduceResponse,
            "Produce response",
            |m: &mut ProduceResponse| rewrite_produce(map, m)
        ),
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
