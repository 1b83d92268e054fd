//! What the proxy is doing right now, for people and probes: readiness, listeners,
//! connections and replication state, gathered into one [`StatusReport`] that the admin
//! endpoint serves as `/status.json` and as its HTML page, and that `kafka-tee status`
//! prints as a table (`table`).
//!
//! Everything in the report comes from typed snapshots its parts publish: the proxy's
//! [`ProxyStats`] (connections, requests), the capture (records DC1 acknowledged,
//! batches held), the budget (bytes pending) and a [`ReplicationView`] (per-partition
//! rows with their state word, totals, the replication group). The metrics are emitted
//! by the same events; the report never reads them. What the status page adds itself
//! is throughput: the progress of the replicated totals and offsets between samples.
//!
//! An instance in a replication group also reports its membership ([`GroupState`]),
//! and its rows may name each partition's owner: the table then has a group line and
//! an OWNER column. Both fields are optional in the JSON, so reports of older versions
//! still parse.

mod table;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::proxy::Router;
pub use crate::proxy::stats::Connections;
use crate::proxy::stats::ProxyStats;
use crate::sync::lock;
use crate::tee::Budget;
use crate::tee::capture::Capture;
pub use crate::tee::snapshot::{GroupState, PartitionState, ReplicationTotals};
pub use table::{human_bytes, human_duration, render_table};

/// DC1 counts as reachable for this long after the last successful probe.
pub const DC1_FRESHNESS: Duration = Duration::from_secs(10);

/// What the replicator publishes for the status page.
pub trait ReplicationView: Send + Sync {
    /// One row per partition, sorted by topic and partition, each with its state word.
    fn partitions(&self) -> Vec<PartitionState>;

    /// Totals since the start.
    fn totals(&self) -> ReplicationTotals;

    /// This instance's place in its replication group; `None` when it is in none
    /// (a single instance).
    fn group(&self) -> Option<GroupState>;
}

impl ReplicationView for crate::tee::replicator::ReplicatorHandle {
    fn partitions(&self) -> Vec<PartitionState> {
        crate::tee::replicator::ReplicatorHandle::partitions(self)
    }

    fn totals(&self) -> ReplicationTotals {
        crate::tee::replicator::ReplicatorHandle::totals(self)
    }

    fn group(&self) -> Option<GroupState> {
        crate::tee::replicator::ReplicatorHandle::group(self)
    }
}

/// The replication part of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationReport {
    pub enabled: bool,
    /// Where the partition rows come from: "replicator", or "none" without
    /// replication. (Older versions could also say "metrics".)
    pub detail: String,
    pub pending_bytes: u64,
    pub pending_bytes_limit: u64,
    /// Acked batches capture holds back for ordering or an open transaction.
    pub held_batches: u64,
    pub acked_records_total: u64,
    pub replicated_records_total: u64,
    pub replicated_bytes_total: u64,
    pub catchup_batches_total: u64,
    pub dc2_errors_total: u64,
    pub data_lost_records_total: u64,
    pub records_per_second: Option<f64>,
    pub partitions: Vec<PartitionState>,
}

/// One per-broker listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerRoute {
    pub broker_id: i32,
    pub upstream: String,
    pub proxy_port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Listeners {
    pub bootstrap: String,
    pub admin: Option<String>,
    pub brokers: Vec<BrokerRoute>,
}

/// Everything `/status.json` serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub uptime_seconds: f64,
    pub ready: bool,
    /// "ok", or why the proxy is not ready.
    pub ready_reason: String,
    pub source: Vec<String>,
    pub target: Vec<String>,
    pub listeners: Listeners,
    pub connections: Connections,
    pub requests_total: u64,
    pub replication: ReplicationReport,
    /// This instance's replication group, when it is in one. Absent in reports of
    /// versions without replication groups.
    #[serde(default)]
    pub group: Option<GroupState>,
}

/// What the tee's parts publish, when replication is on.
pub struct TeeSources {
    pub budget: Arc<Budget>,
    pub capture: Arc<Capture>,
    pub replication: Arc<dyn ReplicationView>,
}

/// Live state shared by the server, the admin endpoint and its background probe.
pub struct Status {
    started: Instant,
    source: Vec<String>,
    target: Vec<String>,
    bootstrap: SocketAddr,
    admin: OnceLock<SocketAddr>,
    router: Arc<Router>,
    proxy: Arc<ProxyStats>,
    listening: AtomicBool,
    shutting_down: AtomicBool,
    dc1: Mutex<Dc1Probe>,
    tee: Option<TeeSources>,
    rates: Mutex<Rates>,
}

/// (topic, partition) of a status row.
type RowKey = (String, Option<i32>);

/// Replicated-record totals and offsets at one moment.
struct Sample {
    at: Instant,
    total: u64,
    per_partition: HashMap<RowKey, i64>,
}

/// The last sample, and the rates computed from the two before it.
#[derive(Default)]
struct Rates {
    last: Option<Sample>,
    total: Option<f64>,
    per_partition: HashMap<RowKey, f64>,
}

#[derive(Default)]
struct Dc1Probe {
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

/// Why the proxy is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    ShuttingDown,
    NotListening,
    Dc1NeverReached(Option<String>),
    Dc1Stale { seconds: u64, error: Option<String> },
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let err = |e: &Option<String>| e.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
        match self {
            NotReady::ShuttingDown => write!(f, "shutting down"),
            NotReady::NotListening => write!(f, "listeners not bound yet"),
            NotReady::Dc1NeverReached(e) => write!(f, "DC1 not reached yet{}", err(e)),
            NotReady::Dc1Stale { seconds, error } => {
                write!(f, "DC1 unreachable for {seconds}s{}", err(error))
            }
        }
    }
}

impl Status {
    pub fn new(
        config: &crate::config::Config,
        bootstrap: SocketAddr,
        router: Arc<Router>,
        proxy: Arc<ProxyStats>,
        tee: Option<TeeSources>,
    ) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            source: config.source.bootstrap.clone(),
            target: config.target.bootstrap.clone(),
            bootstrap,
            admin: OnceLock::new(),
            router,
            proxy,
            listening: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            dc1: Mutex::new(Dc1Probe::default()),
            tee,
            rates: Mutex::new(Rates::default()),
        })
    }

    pub fn set_admin_addr(&self, addr: SocketAddr) {
        let _ = self.admin.set(addr);
    }

    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Release);
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// DC1 bootstrap addresses the readiness probe tries.
    pub fn source(&self) -> &[String] {
        &self.source
    }

    pub fn record_dc1_ok(&self) {
        let mut p = lock(&self.dc1);
        p.last_ok = Some(Instant::now());
        p.last_error = None;
    }

    pub fn record_dc1_failure(&self, error: String) {
        lock(&self.dc1).last_error = Some(error);
    }

    /// Ready: listening, not shutting down, and DC1 reached within `DC1_FRESHNESS`.
    pub fn readiness(&self) -> Result<(), NotReady> {
        self.readiness_at(Instant::now())
    }

    fn readiness_at(&self, now: Instant) -> Result<(), NotReady> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(NotReady::ShuttingDown);
        }
        if !self.listening.load(Ordering::Acquire) {
            return Err(NotReady::NotListening);
        }
        let p = lock(&self.dc1);
        match p.last_ok {
            None => Err(NotReady::Dc1NeverReached(p.last_error.clone())),
            Some(t) => {
                let age = now.saturating_duration_since(t);
                if age > DC1_FRESHNESS {
                    Err(NotReady::Dc1Stale {
                        seconds: age.as_secs(),
                        error: p.last_error.clone(),
                    })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Sets the gauges sampled from live state rather than updated at each event.
    pub fn publish_gauges(&self) {
        if let Some(tee) = &self.tee {
            metrics::gauge!("kafka_tee_pending_bytes").set(tee.budget.used() as f64);
            metrics::gauge!("kafka_tee_pending_bytes_limit").set(tee.budget.max() as f64);
            metrics::gauge!("kafka_tee_capture_held_batches")
                .set(tee.capture.held_batches() as f64);
        }
        let ready = self.readiness().is_ok();
        metrics::gauge!("kafka_tee_ready").set(if ready { 1.0 } else { 0.0 });
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Takes a sample of the replicated totals and offsets so the next report can show
    /// throughput. Called periodically by the admin endpoint.
    pub fn sample_rates(&self) {
        let Some(tee) = &self.tee else {
            return;
        };
        let now = Instant::now();
        let total = tee.replication.totals().replicated_records;
        let parts: HashMap<_, _> = tee
            .replication
            .partitions()
            .into_iter()
            .filter_map(|p| Some(((p.topic, p.partition), p.replicated_offset?)))
            .collect();
        let mut rates = lock(&self.rates);
        if let Some(last) = &rates.last {
            let secs = now.saturating_duration_since(last.at).as_secs_f64();
            if secs > 0.0 {
                let per: HashMap<_, _> = parts
                    .iter()
                    .map(|(k, v)| {
                        // A partition new since the last sample: no rate yet.
                        let before = last.per_partition.get(k).copied().unwrap_or(*v);
                        (k.clone(), (v - before).max(0) as f64 / secs)
                    })
                    .collect();
                rates.total = Some(total.saturating_sub(last.total) as f64 / secs);
                rates.per_partition = per;
            }
        }
        rates.last = Some(Sample {
            at: now,
            total,
            per_partition: parts,
        });
    }

    /// The replication part: the parts' snapshots, with throughput from the last
    /// samples.
    fn replication(&self) -> ReplicationReport {
        let Some(tee) = &self.tee else {
            return ReplicationReport {
                detail: "none".into(),
                ..Default::default()
            };
        };
        let rates = lock(&self.rates);
        let mut partitions = tee.replication.partitions();
        for r in &mut partitions {
            if r.records_per_second.is_none() {
                r.records_per_second = rates
                    .per_partition
                    .get(&(r.topic.clone(), r.partition))
                    .copied();
            }
        }
        let totals = tee.replication.totals();
        ReplicationReport {
            enabled: true,
            detail: "replicator".into(),
            pending_bytes: tee.budget.used() as u64,
            pending_bytes_limit: tee.budget.max() as u64,
            held_batches: tee.capture.held_batches() as u64,
            acked_records_total: tee.capture.acked_records_total(),
            replicated_records_total: totals.replicated_records,
            replicated_bytes_total: totals.replicated_bytes,
            catchup_batches_total: totals.catchup_batches,
            dc2_errors_total: totals.dc2_errors,
            data_lost_records_total: totals.data_lost_records,
            records_per_second: rates.total,
            partitions,
        }
    }

    /// Builds the report from the live state.
    pub fn report(&self) -> StatusReport {
        let readiness = self.readiness();
        let mut brokers: Vec<BrokerRoute> = self
            .router
            .routes()
            .into_iter()
            .map(|(id, upstream, proxy_port)| BrokerRoute {
                broker_id: id.0,
                upstream,
                proxy_port,
            })
            .collect();
        brokers.sort_by_key(|b| b.broker_id);
        StatusReport {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.uptime().as_secs_f64(),
            ready: readiness.is_ok(),
            ready_reason: match readiness {
                Ok(()) => "ok".into(),
                Err(e) => e.to_string(),
            },
            source: self.source.clone(),
            target: self.target.clone(),
            listeners: Listeners {
                bootstrap: self.bootstrap.to_string(),
                admin: self.admin.get().map(|a| a.to_string()),
                brokers,
            },
            connections: self.proxy.connections(),
            requests_total: self.proxy.requests_total(),
            replication: self.replication(),
            group: self.tee.as_ref().and_then(|t| t.replication.group()),
        }
    }
}

#[cfg(test)]
mod tests;
