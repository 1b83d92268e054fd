//! What the proxy is doing right now, for people and probes: readiness, listeners,
//! connections and replication state, gathered into one [`StatusReport`] that the admin
//! endpoint serves as `/status.json` and as its HTML page, and that `kafka-tee status`
//! prints as a table.
//!
//! Replication rows come from two places. A [`ReplicationView`] gives one row per
//! partition; the replicator's handle implements it with its per-partition state (last
//! DC1 offset in DC2, lag in offsets and bytes, oldest pending age, state word). The
//! per-topic lag gauges the replicator publishes fill in what a view leaves open: a topic's lag goes on its only partition's row (on every
//! row when it is 0), or else on a whole-topic row (partition `*`). Throughput is the replicated offset's progress
//! between samples; the state word is derived when the view gives none.
//!
//! An instance in a replication group also reports its membership ([`GroupState`]),
//! and its view may name each partition's owner: the table then has a group line and
//! an OWNER column. Both fields are optional in the JSON, so reports of older versions
//! still parse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::sample;
use crate::proxy::Router;
use crate::sync::lock;
use crate::tee::Budget;
use crate::tee::capture::Capture;

/// DC1 counts as reachable for this long after the last successful probe.
pub const DC1_FRESHNESS: Duration = Duration::from_secs(10);

/// A row whose oldest pending batch is older than this is shown as stalled.
const LAGGING_AFTER_SECONDS: f64 = 30.0;

/// The replicator's per-partition state, for the status page; handed to
/// [`Status::set_replication_view`]. Fields it cannot fill stay `None` (or the state
/// empty) and are completed from the metrics.
pub trait ReplicationView: Send + Sync {
    fn partitions(&self) -> Vec<PartitionState>;

    /// This instance's place in its replication group; `None` when it is in none
    /// (a single instance).
    fn group(&self) -> Option<GroupState> {
        None
    }
}

/// The replicator's handle knows, per partition, the last DC1 offset in DC2, the lag in
/// offsets and bytes, the age of the oldest data waiting and a state word.
impl ReplicationView for crate::tee::replicator::ReplicatorHandle {
    fn partitions(&self) -> Vec<PartitionState> {
        crate::tee::replicator::ReplicatorHandle::partitions(self)
            .into_iter()
            .map(|p| PartitionState {
                topic: p.tp.topic.to_string(),
                partition: Some(p.tp.partition),
                replicated_offset: p.replicated_offset,
                lag_records: Some(p.lag_offsets),
                lag_bytes: Some(p.lag_bytes),
                oldest_pending_seconds: Some(p.oldest_pending.as_secs_f64()),
                records_per_second: None,
                owner: self.owner(&p.tp),
                state: p.state,
            })
            .collect()
    }

    fn group(&self) -> Option<GroupState> {
        crate::tee::replicator::ReplicatorHandle::group(self).map(|g| GroupState {
            group: g.group,
            generation: g.generation,
            member_id: g.member_id,
            leader: g.leader,
            owned_partitions: g.owned_partitions,
            rebalances_total: g.rebalances_total,
            last_takeover_seconds: g.last_takeover.map(|d| d.as_secs_f64()),
        })
    }
}

/// One DC1 partition (or, with `partition: None`, a whole topic).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    pub topic: String,
    /// `None` for a whole-topic row.
    pub partition: Option<i32>,
    /// The last DC1 offset known to be in DC2.
    pub replicated_offset: Option<i64>,
    /// Records acknowledged by DC1 and not yet by DC2.
    pub lag_records: Option<u64>,
    pub lag_bytes: Option<u64>,
    /// Age of the oldest batch still waiting for DC2; 0 when caught up.
    pub oldest_pending_seconds: Option<f64>,
    /// Progress of the replicated offset over the last sampling window.
    pub records_per_second: Option<f64>,
    /// "in sync", "replicating", "behind", "stalled", "waiting", "held (DC2 topic not
    /// ready)", or the replicator's own word.
    pub state: String,
    /// The replication group member that replicates this partition, when the view
    /// knows it. Absent in reports of versions without replication groups.
    #[serde(default)]
    pub owner: Option<String>,
}

/// This instance's membership of its replication group, as its member loop last saw
/// it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    pub group: String,
    /// The generation this instance's assignment belongs to.
    pub generation: i32,
    pub member_id: String,
    /// Whether this instance computed the generation's assignment.
    pub leader: bool,
    /// Partitions assigned to this instance in the generation.
    pub owned_partitions: u64,
    /// Rebalances this instance has been through since it started.
    pub rebalances_total: u64,
    /// The last takeover: from a generation forming to the workers of the partitions
    /// new to this instance running (positions read, DC2's tail compared). `None`
    /// before the first.
    pub last_takeover_seconds: Option<f64>,
}

/// The replication part of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationReport {
    pub enabled: bool,
    /// Where the partition rows come from: "replicator" (per partition), "metrics"
    /// (per topic only) or "none".
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    pub open: u64,
    pub accepted_total: u64,
    pub refused_total: u64,
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

/// Live state shared by the server, the admin endpoint and its background probe.
pub struct Status {
    started: Instant,
    source: Vec<String>,
    target: Vec<String>,
    bootstrap: SocketAddr,
    admin: OnceLock<SocketAddr>,
    router: Arc<Router>,
    listening: AtomicBool,
    shutting_down: AtomicBool,
    dc1: Mutex<Dc1Probe>,
    tee: Option<TeeParts>,
    view: OnceLock<Arc<dyn ReplicationView>>,
    rates: Mutex<Rates>,
}

struct TeeParts {
    budget: Arc<Budget>,
    capture: Arc<Capture>,
}

#[derive(Default)]
struct Dc1Probe {
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

/// (topic, partition) of a status row.
type RowKey = (String, Option<i32>);

/// Replicated-record counters and offsets at one moment.
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
    /// `tee` is the pending-bytes budget and the capture when replication is on.
    pub fn new(
        config: &crate::config::Config,
        bootstrap: SocketAddr,
        router: Arc<Router>,
        tee: Option<(Arc<Budget>, Arc<Capture>)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            source: config.source.bootstrap.clone(),
            target: config.target.bootstrap.clone(),
            bootstrap,
            admin: OnceLock::new(),
            router,
            listening: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            dc1: Mutex::new(Dc1Probe::default()),
            tee: tee.map(|(budget, capture)| TeeParts { budget, capture }),
            view: OnceLock::new(),
            rates: Mutex::new(Rates::default()),
        })
    }

    /// The hook for the replicator's per-partition state (set once).
    pub fn set_replication_view(&self, view: Arc<dyn ReplicationView>) {
        let _ = self.view.set(view);
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

    /// Takes a sample of the replicated-record counters so the next report can show
    /// throughput. Called periodically by the admin endpoint.
    pub fn sample_rates(&self, metrics_text: &str) {
        let now = Instant::now();
        let total = counter(metrics_text, "kafka_tee_replicated_records_total");
        let parts: HashMap<_, _> = self
            .view
            .get()
            .map(|v| v.partitions())
            .unwrap_or_default()
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

    /// The replication rows: the view's per-partition rows completed with the
    /// per-topic gauges, whole-topic rows where a topic's lag cannot be put on one
    /// partition, throughput from the last samples and a derived state word.
    fn partition_rows(&self, m: &str, rates: &HashMap<RowKey, f64>) -> Vec<PartitionState> {
        let mut rows: Vec<PartitionState> =
            self.view.get().map(|v| v.partitions()).unwrap_or_default();
        let mut topics: Vec<String> = crate::metrics::samples(m)
            .filter(|(name, _, _)| {
                *name == "kafka_tee_replication_lag_records" || *name == "kafka_tee_topics_held"
            })
            .filter_map(|(_, labels, _)| labels.into_iter().find(|(k, _)| k == "topic"))
            .map(|(_, v)| v)
            .chain(rows.iter().map(|r| r.topic.clone()))
            .collect();
        topics.sort();
        topics.dedup();
        for topic in topics {
            let t = [("topic", topic.as_str())];
            let lag = sample(m, "kafka_tee_replication_lag_records", &t).map(non_negative);
            let held = sample(m, "kafka_tee_topics_held", &t).is_some_and(|v| v > 0.0);
            let mine: Vec<usize> = (0..rows.len())
                .filter(|&i| rows[i].topic == topic)
                .collect();
            let open = mine.iter().any(|&i| rows[i].lag_records.is_none());
            if open && (mine.len() == 1 || lag == Some(0)) {
                // The topic's lag is this partition's, or every partition's is 0.
                for &i in &mine {
                    rows[i].lag_records = rows[i].lag_records.or(lag);
                }
            } else if (mine.is_empty() || open) && (lag.is_some() || held) {
                rows.push(PartitionState {
                    topic: topic.clone(),
                    partition: None,
                    lag_records: lag,
                    ..PartitionState::default()
                });
            }
            for r in rows.iter_mut().filter(|r| r.topic == topic) {
                if r.records_per_second.is_none() {
                    r.records_per_second = rates.get(&(r.topic.clone(), r.partition)).copied();
                }
                if r.state.is_empty() {
                    r.state = derive_state(r, held, lag).into();
                }
            }
        }
        rows.sort_by(|a, b| {
            (&a.topic, a.partition.unwrap_or(i32::MAX))
                .cmp(&(&b.topic, b.partition.unwrap_or(i32::MAX)))
        });
        rows
    }

    /// Builds the report from the live state and the rendered metrics.
    pub fn report(&self, metrics_text: &str) -> StatusReport {
        let m = metrics_text;
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
        let replication = match &self.tee {
            None => ReplicationReport {
                detail: "none".into(),
                ..Default::default()
            },
            Some(tee) => {
                let rates = lock(&self.rates);
                let partitions = self.partition_rows(m, &rates.per_partition);
                ReplicationReport {
                    enabled: true,
                    detail: if self.view.get().is_some() {
                        "replicator"
                    } else {
                        "metrics"
                    }
                    .into(),
                    pending_bytes: tee.budget.used() as u64,
                    pending_bytes_limit: tee.budget.max() as u64,
                    held_batches: tee.capture.held_batches() as u64,
                    acked_records_total: counter(m, "kafka_tee_produce_acked_records_total"),
                    replicated_records_total: counter(m, "kafka_tee_replicated_records_total"),
                    replicated_bytes_total: counter(m, "kafka_tee_replicated_bytes_total"),
                    catchup_batches_total: counter(m, "kafka_tee_catchup_batches_total"),
                    dc2_errors_total: counter(m, "kafka_tee_dc2_errors_total"),
                    data_lost_records_total: counter(m, "kafka_tee_data_lost_records_total"),
                    records_per_second: rates.total,
                    partitions,
                }
            }
        };
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
            connections: Connections {
                open: counter(m, "kafka_tee_connections_open"),
                accepted_total: counter(m, "kafka_tee_connections_accepted_total"),
                refused_total: counter(m, "kafka_tee_connections_refused_total"),
            },
            requests_total: counter(m, "kafka_tee_requests_total"),
            replication,
            group: self.view.get().and_then(|v| v.group()),
        }
    }
}

/// A state word for a row the replicator gave none for. `topic_lag` is the whole
/// topic's lag, for rows whose own lag is unknown.
fn derive_state(r: &PartitionState, held: bool, topic_lag: Option<u64>) -> &'static str {
    if held {
        return "held (DC2 topic not ready)";
    }
    let moving = r.records_per_second.is_some_and(|v| v > 0.0);
    match r.lag_records.or(topic_lag) {
        Some(0) => "in sync",
        _ if moving => "replicating",
        Some(_)
            if r.oldest_pending_seconds
                .is_some_and(|s| s > LAGGING_AFTER_SECONDS) =>
        {
            "stalled"
        }
        Some(_) if r.lag_records.is_some() => "behind",
        // Only the topic is behind; this partition may not be.
        Some(_) => "waiting",
        None => "idle",
    }
}

fn non_negative(v: f64) -> u64 {
    v.max(0.0) as u64
}

fn counter(text: &str, name: &str) -> u64 {
    sample(text, name, &[]).map_or(0, non_negative)
}

/// Formats a duration in seconds as "3d 4h", "5m 2s", "12.3s".
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{secs:.1}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Formats a byte count as "512 B", "1.5 KiB", "3.2 MiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.1}/s"))
}

/// The report as a terminal table, for `kafka-tee status`.
pub fn render_table(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kafka-tee {}  up {}  {}",
        r.version,
        human_duration(r.uptime_seconds),
        if r.ready {
            "READY".to_string()
        } else {
            format!("NOT READY: {}", r.ready_reason)
        }
    );
    let _ = writeln!(
        out,
        "listening {}  brokers {}  connections {} open, {} accepted, {} refused  requests {}",
        r.listeners.bootstrap,
        r.listeners.brokers.len(),
        r.connections.open,
        r.connections.accepted_total,
        r.connections.refused_total,
        r.requests_total
    );
    let rep = &r.replication;
    if !rep.enabled {
        let _ = writeln!(out, "replication: off (no target)");
        return out;
    }
    let _ = writeln!(
        out,
        "replication to {}: acked by DC1 {}  replicated {} ({})  {}  pending {} of {}  held {}  catch-up {}  DC2 errors {}  LOST {}",
        r.target.join(","),
        rep.acked_records_total,
        rep.replicated_records_total,
        human_bytes(rep.replicated_bytes_total),
        rate(rep.records_per_second),
        human_bytes(rep.pending_bytes),
        human_bytes(rep.pending_bytes_limit),
        rep.held_batches,
        rep.catchup_batches_total,
        rep.dc2_errors_total,
        rep.data_lost_records_total,
    );
    if let Some(g) = &r.group {
        let _ = writeln!(out, "{}", group_line(g));
    }
    let _ = writeln!(out);
    if rep.partitions.is_empty() {
        let _ = writeln!(
            out,
            "no per-partition replication state yet (detail: {})",
            rep.detail
        );
        return out;
    }
    // The OWNER column only when some row has an owner (a replication group).
    let owners = rep.partitions.iter().any(|p| p.owner.is_some());
    let mut header = vec![
        "TOPIC",
        "PARTITION",
        "IN DC2 UP TO",
        "LAG RECORDS",
        "LAG BYTES",
        "THROUGHPUT",
        "STATE",
    ];
    if owners {
        header.push("OWNER");
    }
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = rep
        .partitions
        .iter()
        .map(|p| {
            let mut row = vec![
                p.topic.clone(),
                p.partition.map_or_else(|| "*".into(), |n| n.to_string()),
                p.replicated_offset.map_or_else(dash, |o| o.to_string()),
                p.lag_records.map_or_else(dash, |n| n.to_string()),
                p.lag_bytes.map_or_else(dash, human_bytes),
                rate(p.records_per_second),
                p.state.clone(),
            ];
            if owners {
                row.push(p.owner.clone().unwrap_or_else(dash));
            }
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, &w)) in cells.iter().zip(&widths).enumerate() {
            // Text columns left-aligned, numbers right-aligned.
            if i == 0 || i >= 6 {
                let _ = write!(s, "{c:<w$}  ");
            } else {
                let _ = write!(s, "{c:>w$}  ");
            }
        }
        s.trim_end().to_string()
    };
    let header: Vec<String> = header.into_iter().map(String::from).collect();
    let _ = writeln!(out, "{}", line(&header));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    if rep.partitions.iter().any(|p| p.partition.is_none()) {
        let _ = writeln!(
            out,
            "(partition * is a whole topic: its lag is known per topic only)"
        );
    }
    out
}

/// "group NAME  generation G  member M (leader)  owns N partitions  rebalances R  last
/// takeover Xs", for [`render_table`].
fn group_line(g: &GroupState) -> String {
    format!(
        "group {}  generation {}  member {}{}  owns {} partitions  rebalances {}  last takeover {}",
        g.group,
        g.generation,
        g.member_id,
        if g.leader { " (leader)" } else { "" },
        g.owned_partitions,
        g.rebalances_total,
        g.last_takeover_seconds
            .map_or_else(|| "-".into(), human_duration),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::BTreeMap;

    fn status(tee: bool) -> Arc<Status> {
        let mut cfg = Config::default();
        cfg.source.bootstrap = vec!["127.0.0.1:1".into()];
        let router = Router::new(
            "127.0.0.1".parse().expect("ip"),
            "127.0.0.1".into(),
            0,
            BTreeMap::new(),
        );
        let tee = tee.then(|| {
            struct NoSink;
            impl crate::tee::capture::Sink for NoSink {
                fn push(&self, _: crate::tee::TopicPartition, _: crate::tee::Pending) {}
                fn wants(&self, _: &str) -> bool {
                    true
                }
            }
            let budget = Arc::new(Budget::new(4096));
            let capture = Capture::new(Arc::new(NoSink), budget.clone(), Duration::from_secs(1));
            (budget, capture)
        });
        Status::new(&cfg, "127.0.0.1:9092".parse().expect("addr"), router, tee)
    }

    #[test]
    fn readiness_needs_listeners_and_a_recent_dc1() {
        let s = status(false);
        assert_eq!(s.readiness(), Err(NotReady::NotListening));
        s.set_listening(true);
        s.record_dc1_failure("refused".into());
        assert_eq!(
            s.readiness(),
            Err(NotReady::Dc1NeverReached(Some("refused".into())))
        );
        s.record_dc1_ok();
        assert_eq!(s.readiness(), Ok(()));
        let later = Instant::now() + DC1_FRESHNESS + Duration::from_secs(5);
        assert!(matches!(
            s.readiness_at(later),
            Err(NotReady::Dc1Stale { .. })
        ));
        s.set_shutting_down();
        assert_eq!(s.readiness(), Err(NotReady::ShuttingDown));
    }

    const METRICS_TEXT: &str = "\
kafka_tee_connections_open 2
kafka_tee_connections_accepted_total 5
kafka_tee_requests_total{api=\"Produce\"} 7
kafka_tee_requests_total{api=\"Metadata\"} 3
kafka_tee_produce_acked_records_total 100
kafka_tee_replicated_records_total 90
kafka_tee_replication_lag_records{topic=\"orders\"} 10
kafka_tee_replication_lag_records{topic=\"audit\"} 0
";

    #[test]
    fn report_falls_back_to_per_topic_metrics() {
        let s = status(true);
        let r = s.report(METRICS_TEXT);
        assert_eq!(r.connections.open, 2);
        assert_eq!(r.requests_total, 10);
        assert!(r.replication.enabled);
        assert_eq!(r.replication.detail, "metrics");
        assert_eq!(r.replication.pending_bytes_limit, 4096);
        assert_eq!(r.replication.acked_records_total, 100);
        let topics: Vec<_> = r
            .replication
            .partitions
            .iter()
            .map(|p| {
                (
                    p.topic.as_str(),
                    p.partition,
                    p.lag_records,
                    p.state.as_str(),
                )
            })
            .collect();
        assert_eq!(
            topics,
            vec![
                ("audit", None, Some(0), "in sync"),
                ("orders", None, Some(10), "behind")
            ]
        );
        let t = render_table(&r);
        assert!(t.contains("partition * is a whole topic"), "{t}");
    }

    /// A view like the replicator handle's: offsets only.
    struct Offsets(Mutex<Vec<(&'static str, i32, i64)>>);
    impl ReplicationView for Offsets {
        fn partitions(&self) -> Vec<PartitionState> {
            lock(&self.0)
                .iter()
                .map(|&(t, p, o)| PartitionState {
                    topic: t.into(),
                    partition: Some(p),
                    replicated_offset: Some(o),
                    ..PartitionState::default()
                })
                .collect()
        }
    }

    fn rows(r: &StatusReport) -> Vec<(String, Option<i32>, Option<u64>, String)> {
        r.replication
            .partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition, p.lag_records, p.state.clone()))
            .collect()
    }

    #[test]
    fn view_rows_get_topic_lag_rates_and_states() {
        let s = status(true);
        let view = Arc::new(Offsets(Mutex::new(vec![
            ("one", 0, 10),
            ("two", 0, 5),
            ("two", 1, 7),
            ("four", 0, 1),
            ("four", 1, 2),
        ])));
        s.set_replication_view(view.clone());
        s.sample_rates("");
        std::thread::sleep(Duration::from_millis(50));
        *lock(&view.0) = vec![
            ("one", 0, 10),
            ("two", 0, 105),
            ("two", 1, 7),
            ("four", 0, 1),
            ("four", 1, 2),
        ];
        s.sample_rates("");
        let m = "kafka_tee_replication_lag_records{topic=\"one\"} 3\n\
                 kafka_tee_replication_lag_records{topic=\"two\"} 4\n\
                 kafka_tee_replication_lag_records{topic=\"four\"} 0\n\
                 kafka_tee_topics_held{topic=\"three\"} 1\n";
        let r = s.report(m);
        assert_eq!(r.replication.detail, "replicator");
        assert_eq!(
            rows(&r),
            vec![
                // lag 0 for the topic is lag 0 for each partition
                ("four".into(), Some(0), Some(0), "in sync".into()),
                ("four".into(), Some(1), Some(0), "in sync".into()),
                // the only partition of "one" carries the topic's lag, no progress
                ("one".into(), Some(0), Some(3), "behind".into()),
                (
                    "three".into(),
                    None,
                    None,
                    "held (DC2 topic not ready)".into()
                ),
                ("two".into(), Some(0), None, "replicating".into()),
                ("two".into(), Some(1), None, "waiting".into()),
                // "two" has two partitions: its lag goes on a whole-topic row
                ("two".into(), None, Some(4), "behind".into()),
            ]
        );
        let two0 = &r.replication.partitions[4];
        assert_eq!(two0.replicated_offset, Some(105));
        assert!(two0.records_per_second.is_some_and(|v| v > 0.0), "{two0:?}");
        let table = render_table(&r);
        for needle in ["TOPIC", "IN DC2 UP TO", "replicating", "105", "held"] {
            assert!(table.contains(needle), "{needle} missing:\n{table}");
        }
        // Survives a JSON round trip (what `kafka-tee status` reads).
        let json = serde_json::to_string(&r).expect("json");
        let back: StatusReport = serde_json::from_str(&json).expect("parse");
        // Floats may lose their last bit through JSON; what a person reads may not.
        assert_eq!(render_table(&back), render_table(&r));
        assert_eq!(rows(&back), rows(&r));
    }

    /// A view of an instance in a replication group: rows with owners.
    struct Grouped;
    impl ReplicationView for Grouped {
        fn partitions(&self) -> Vec<PartitionState> {
            vec![
                PartitionState {
                    topic: "orders".into(),
                    partition: Some(0),
                    replicated_offset: Some(41),
                    lag_records: Some(0),
                    owner: Some("kafka-tee-a1".into()),
                    ..PartitionState::default()
                },
                PartitionState {
                    topic: "orders".into(),
                    partition: Some(1),
                    replicated_offset: Some(7),
                    lag_records: Some(0),
                    owner: None,
                    ..PartitionState::default()
                },
            ]
        }

        fn group(&self) -> Option<GroupState> {
            Some(GroupState {
                group: "kafka-tee-replication".into(),
                generation: 4,
                member_id: "kafka-tee-a1".into(),
                leader: true,
                owned_partitions: 1,
                rebalances_total: 3,
                last_takeover_seconds: Some(2.5),
            })
        }
    }

    #[test]
    fn group_line_and_owner_column() {
        let s = status(true);
        s.set_replication_view(Arc::new(Grouped));
        let r = s.report("");
        assert_eq!(r.group.as_ref().map(|g| g.generation), Some(4));
        let t = render_table(&r);
        assert!(
            t.contains(
                "group kafka-tee-replication  generation 4  member kafka-tee-a1 (leader)  \
                 owns 1 partitions  rebalances 3  last takeover 2.5s"
            ),
            "{t}"
        );
        let lines: Vec<&str> = t.lines().collect();
        let header = lines
            .iter()
            .find(|l| l.starts_with("TOPIC"))
            .expect("header");
        assert!(header.ends_with("STATE    OWNER"), "{t}");
        let row = |p: &str| {
            lines
                .iter()
                .find(|l| l.split_whitespace().take(2).eq(["orders", p]))
                .copied()
                .unwrap_or_default()
        };
        assert!(row("0").ends_with("in sync  kafka-tee-a1"), "{t}");
        // A row without an owner shows a dash in the column.
        assert!(row("1").ends_with("in sync  -"), "{t}");

        // Survives a JSON round trip (what `kafka-tee status` reads).
        let json = serde_json::to_string(&r).expect("json");
        let back: StatusReport = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.group, r.group);
        assert_eq!(back.replication.partitions, r.replication.partitions);
        assert_eq!(render_table(&back), t);
    }

    #[test]
    fn no_group_no_owner_column_and_older_json_parses() {
        let s = status(true);
        s.set_replication_view(Arc::new(Offsets(Mutex::new(vec![("one", 0, 10)]))));
        let r = s.report("");
        assert_eq!(r.group, None);
        let t = render_table(&r);
        assert!(!t.contains("OWNER"), "{t}");
        assert!(!t.contains("group "), "{t}");
        // A report from a version without groups: no `group`, no `owner`.
        let mut json = serde_json::to_value(&r).expect("json");
        json.as_object_mut().expect("object").remove("group");
        for p in json["replication"]["partitions"]
            .as_array_mut()
            .expect("rows")
        {
            p.as_object_mut().expect("row").remove("owner");
        }
        assert!(!json.to_string().contains("owner"));
        let back: StatusReport = serde_json::from_value(json).expect("older report parses");
        assert_eq!(back.group, None);
        assert_eq!(render_table(&back), t);
    }

    #[test]
    fn table_without_replication_says_so() {
        let s = status(false);
        let r = s.report(METRICS_TEXT);
        assert!(!r.replication.enabled);
        let t = render_table(&r);
        assert!(t.contains("NOT READY"), "{t}");
        assert!(t.contains("replication: off"), "{t}");
    }

    #[test]
    fn human_formats() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_duration(12.34), "12.3s");
        assert_eq!(human_duration(125.0), "2m 5s");
        assert_eq!(human_duration(7300.0), "2h 1m");
    }
}
