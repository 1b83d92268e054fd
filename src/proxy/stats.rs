//! What the proxy counts about its clients, typed, for the status page: connections
//! open, accepted and refused, and requests read. Each count is also where its
//! Prometheus metric is emitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use kafka_protocol::messages::ApiKey;

use crate::protocol::RequestHeaderPeek;

/// The proxy's live counters, shared by every listener and session.
#[derive(Debug, Default)]
pub struct ProxyStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    requests: AtomicU64,
}

/// The connection counts at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    pub open: u64,
    pub accepted_total: u64,
    pub refused_total: u64,
}

/// An accepted connection, counted open until dropped.
#[must_use = "the connection counts as open until this is dropped"]
pub struct OpenConnection(Arc<ProxyStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("kafka_tee_connections_open").decrement(1.0);
    }
}

impl ProxyStats {
    /// A connection was refused (the connection limit).
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kafka_tee_connections_refused_total").increment(1);
    }

    /// A connection was accepted; it counts as open while the guard lives.
    pub fn accepted(self: &Arc<Self>) -> OpenConnection {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kafka_tee_connections_accepted_total").increment(1);
        metrics::gauge!("kafka_tee_connections_open").increment(1.0);
        OpenConnection(self.clone())
    }

    /// A request read from a client, `size` bytes without its length prefix.
    pub fn request(&self, peek: &RequestHeaderPeek, size: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kafka_tee_requests_total", "api" => api_name(peek.key())).increment(1);
        metrics::counter!("kafka_tee_client_bytes_in_total").increment(size as u64 + 4);
    }

    pub fn connections(&self) -> Connections {
        Connections {
            open: self.open.load(Ordering::Relaxed),
            accepted_total: self.accepted.load(Ordering::Relaxed),
            refused_total: self.refused.load(Ordering::Relaxed),
        }
    }

    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// The `api` label of a request's metrics.
pub(super) fn api_name(key: Option<ApiKey>) -> &'static str {
    match key {
        Some(k) => api_key_name(k),
        None => "unknown",
    }
}

fn api_key_name(k: ApiKey) -> &'static str {
    // Debug names are stable identifiers such as "Produce"; leak-free as a static str
    // via a small table for the common keys, "other" for the rest.
    match k {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_count_down_when_dropped() {
        let s = Arc::new(ProxyStats::default());
        s.refused();
        let a = s.accepted();
        let b = s.accepted();
        assert_eq!(
            s.connections(),
            Connections {
                open: 2,
                accepted_total: 2,
                refused_total: 1
            }
        );
        drop(a);
        drop(b);
        assert_eq!(s.connections().open, 0);
        assert_eq!(s.connections().accepted_total, 2);
    }
}
