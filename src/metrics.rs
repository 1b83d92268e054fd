//! Every metric the proxy exports: its name, type, labels and help text, and the
//! Prometheus recorder that `/metrics` renders.
//!
//! Names follow Prometheus conventions: one `kafka_tee_` prefix, `_total` counters,
//! `_seconds` and `_bytes` units, and only low-cardinality labels (API name, topic,
//! error code; never a client id or address). The code that updates a metric uses the
//! name literally (`metrics::counter!("kafka_tee_...")`); a test scans the sources and
//! fails when a name used there is missing from [`METRICS`], so this table and the
//! README never fall behind.
//!
//! The recorder is process-wide (the `metrics` facade allows one), installed at most
//! once: [`install`] is idempotent, so tests that start the proxy several times in one
//! process share it and see cumulative values.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How a metric behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric, grouped by the part of the proxy that updates it.
pub const METRICS: &[MetricDef] = &[
    // Process.
    def(
        "kafka_tee_build_info",
        Gauge,
        &["version"],
        "Always 1; the version label names the running build.",
    ),
    def(
        "kafka_tee_start_time_seconds",
        Gauge,
        &[],
        "Unix time at which the proxy started.",
    ),
    def(
        "kafka_tee_ready",
        Gauge,
        &[],
        "1 while /readyz answers 200 (listeners bound, DC1 reachable recently), else 0.",
    ),
    // Client side (src/net, src/proxy).
    def(
        "kafka_tee_connections_open",
        Gauge,
        &[],
        "Client connections currently open.",
    ),
    def(
        "kafka_tee_connections_accepted_total",
        Counter,
        &[],
        "Client connections accepted.",
    ),
    def(
        "kafka_tee_connections_refused_total",
        Counter,
        &[],
        "Client connections refused because proxy.max_connections was reached.",
    ),
    def(
        "kafka_tee_tls_handshake_failures_total",
        Counter,
        &["cause"],
        "Client TLS handshakes that failed or timed out, by cause: plaintext_client, no_client_cert, client_cert_v1, client_cert_unknown_ca, client_cert_expired, client_cert_not_yet_valid, client_cert_invalid, server_cert_rejected, incompatible, client_closed, timeout, other.",
    ),
    def(
        "kafka_tee_requests_total",
        Counter,
        &["api"],
        "Client requests forwarded to DC1, by API (rare APIs are counted as \"other\").",
    ),
    def(
        "kafka_tee_request_duration_seconds",
        Histogram,
        &["api"],
        "Time from reading a client request to having DC1's response ready for the client.",
    ),
    def(
        "kafka_tee_client_bytes_in_total",
        Counter,
        &[],
        "Bytes of request frames read from clients, length prefix included.",
    ),
    def(
        "kafka_tee_client_bytes_out_total",
        Counter,
        &[],
        "Bytes of response frames written to clients, length prefix included.",
    ),
    def(
        "kafka_tee_spliced_bytes_total",
        Counter,
        &["direction"],
        "Bytes of large frames moved between plaintext sockets with splice(2) instead of being read by the proxy (proxy.splice_min_bytes), by direction: request (to DC1) or response (to the client).",
    ),
    def(
        "kafka_tee_dc1_connect_failures_total",
        Counter,
        &[],
        "Client sessions that ended because no DC1 broker could be connected.",
    ),
    def(
        "kafka_tee_upstream_connect_failures_total",
        Counter,
        &["cluster", "stage"],
        "kafka-tee's own connections (replicator, catch-up) that failed to open, by cluster (DC1, DC2) and stage: connect (TCP or TLS) or login (SASL refused).",
    ),
    // Capture (src/tee/capture.rs): what DC1 acknowledged, for replicated topics.
    def(
        "kafka_tee_produce_acked_batches_total",
        Counter,
        &[],
        "Record batches of replicated topics that DC1 acknowledged (error 0).",
    ),
    def(
        "kafka_tee_produce_acked_records_total",
        Counter,
        &[],
        "Records in the batches counted by kafka_tee_produce_acked_batches_total.",
    ),
    def(
        "kafka_tee_produce_acked_bytes_total",
        Counter,
        &[],
        "Bytes of acknowledged batches held in memory for DC2 (a batch past the pending-bytes bound counts 0 here; it is read back from DC1).",
    ),
    def(
        "kafka_tee_produce_unconfirmed_total",
        Counter,
        &[],
        "Produce partitions forwarded to DC1 whose response never came (connection lost); copied only by a later catch-up.",
    ),
    def(
        "kafka_tee_sync_timeouts_total",
        Counter,
        &[],
        "Partitions of synchronous topics answered with REQUEST_TIMED_OUT because DC2 did not confirm the batch in time.",
    ),
    def(
        "kafka_tee_capture_held_batches",
        Gauge,
        &[],
        "Acknowledged batches capture holds back until earlier in-flight requests of their partition complete or their transaction ends.",
    ),
    def(
        "kafka_tee_pending_bytes",
        Gauge,
        &[],
        "Batch bytes held in memory for DC2 (sampled by the admin endpoint).",
    ),
    def(
        "kafka_tee_pending_bytes_limit",
        Gauge,
        &[],
        "The bound on kafka_tee_pending_bytes (replication.max_pending_bytes); past it, batches are read back from DC1 instead.",
    ),
    // Replicator (src/tee/replicator/): the DC2 side.
    def(
        "kafka_tee_replicated_batches_total",
        Counter,
        &[],
        "Record batches DC2 acknowledged.",
    ),
    def(
        "kafka_tee_replicated_records_total",
        Counter,
        &[],
        "Records in the batches DC2 acknowledged.",
    ),
    def(
        "kafka_tee_replicated_bytes_total",
        Counter,
        &[],
        "Record batch bytes DC2 acknowledged.",
    ),
    def(
        "kafka_tee_replication_lag_records",
        Gauge,
        &["topic"],
        "Offsets acknowledged by DC1 and handed to the replicator but not yet acknowledged by DC2, per DC1 topic.",
    ),
    def(
        "kafka_tee_replication_lag_bytes",
        Gauge,
        &["topic"],
        "Bytes of the batches DC1 acknowledged and handed to the replicator that are not yet acknowledged by DC2, per DC1 topic (offsets read back from DC1 count 0).",
    ),
    def(
        "kafka_tee_replication_oldest_pending_seconds",
        Gauge,
        &["topic"],
        "Age of the oldest data of a DC1 topic handed to the replicator and not yet acknowledged by DC2; 0 when none (updated every second).",
    ),
    def(
        "kafka_tee_replication_latency_seconds",
        Histogram,
        &[],
        "Time from DC1 acknowledging a batch (its hand-over to the replicator) to DC2 acknowledging it; one observation per batch counted by `kafka_tee_replicated_batches_total`.",
    ),
    def(
        "kafka_tee_dc2_offset_jumps_total",
        Counter,
        &["topic", "reason"],
        "Batches DC2 put somewhere other than right after the replicator's previous batch of the partition: reason=foreign (something else writes to the DC2 partition: another kafka-tee replicating the same DC1 partitions, or DC2 producers) or reason=rewound (the DC2 partition's offsets went back: its log lost or the topic recreated). Should stay 0.",
    ),
    def(
        "kafka_tee_dc2_in_flight_bytes",
        Gauge,
        &["broker"],
        "Bytes of Produce requests written to a DC2 broker and not yet answered. Across a long link, rate x round trip must fit here (see `replication.max_in_flight_bytes`).",
    ),
    def(
        "kafka_tee_dc2_produce_seconds",
        Histogram,
        &[],
        "Time from writing a Produce request to DC2 to its answer: the round trip to DC2 plus the broker's time.",
    ),
    def(
        "kafka_tee_replication_window_full_partitions",
        Gauge,
        &[],
        "Partitions whose window (replication.max_in_flight_per_partition, max_in_flight_bytes_per_partition, max_in_flight_bytes) is full now: the bound, not DC2, limits their rate. Above 0 for long while DC2 falls behind: raise the bounds.",
    ),
    def(
        "kafka_tee_dc2_tail_reads_total",
        Counter,
        &[],
        "Reads of a DC2 partition's tail after a fault (or a restart) to learn which batches DC2 holds before resending.",
    ),
    def(
        "kafka_tee_dc2_tail_held_batches_total",
        Counter,
        &[],
        "Batches a tail read found in DC2: committed without being sent again.",
    ),
    def(
        "kafka_tee_dc2_tail_read_errors_total",
        Counter,
        &[],
        "Tail reads that failed (retried after a back-off; nothing is resent meanwhile).",
    ),
    def(
        "kafka_tee_dc2_errors_total",
        Counter,
        &["code"],
        "Partitions of DC2 Produce requests rejected with a Kafka error, by error (retried unless counted as dropped).",
    ),
    def(
        "kafka_tee_dropped_batches_total",
        Counter,
        &["code"],
        "Batches DC2 refused for good, by Kafka error: they are not in DC2. Should stay 0.",
    ),
    def(
        "kafka_tee_dropped_records_total",
        Counter,
        &["code"],
        "Records in the batches counted by kafka_tee_dropped_batches_total. Should stay 0.",
    ),
    def(
        "kafka_tee_data_lost_records_total",
        Counter,
        &[],
        "Offsets acknowledged by DC1 that can no longer be copied to DC2 (for example removed by retention before catch-up read them). Should stay 0.",
    ),
    def(
        "kafka_tee_invalid_batches_total",
        Counter,
        &[],
        "Batches DC1 acknowledged that are not valid record batches and so cannot be replicated. Should stay 0.",
    ),
    def(
        "kafka_tee_not_owned_items_total",
        Counter,
        &[],
        "Acknowledged items not handed to the replicator because another member of the replication group owns their partition, or its takeover is under way (its owner reads them back from DC1).",
    ),
    def(
        "kafka_tee_group_generation",
        Gauge,
        &[],
        "The replication group's generation this instance last joined.",
    ),
    def(
        "kafka_tee_group_owned_partitions",
        Gauge,
        &[],
        "DC1 partitions this instance replicates in the current generation (0 during a rebalance).",
    ),
    def(
        "kafka_tee_group_rebalances_total",
        Counter,
        &[],
        "Generations this instance took part in.",
    ),
    def(
        "kafka_tee_group_takeover_seconds",
        Gauge,
        &[],
        "The last takeover: from a generation forming to the workers of the partitions new to this instance running (committed positions read, DC2's tail compared).",
    ),
    def(
        "kafka_tee_group_commits_total",
        Counter,
        &[],
        "Position commits (DC1's with the generation, then DC2's).",
    ),
    def(
        "kafka_tee_group_commit_errors_total",
        Counter,
        &[],
        "Position commits that failed (retried at the next interval).",
    ),
    def(
        "kafka_tee_group_unmatched_takeovers_total",
        Counter,
        &[],
        "Takeovers where DC2 held batches past the committed position that are not copies of DC1's: continued at the committed position (records may be copied twice).",
    ),
    def(
        "kafka_tee_consumer_offsets_groups_synced",
        Gauge,
        &[],
        "DC1 consumer groups whose offsets the last round brought up to date in DC2 (`replication.group_offsets`).",
    ),
    def(
        "kafka_tee_consumer_offsets_partitions_synced",
        Gauge,
        &[],
        "Partitions whose DC2 committed offset is the translation of DC1's after the last round.",
    ),
    def(
        "kafka_tee_consumer_offsets_live_groups_skipped",
        Gauge,
        &[],
        "Selected groups left alone in the last round because they have members in DC2.",
    ),
    def(
        "kafka_tee_consumer_offsets_untranslated_partitions",
        Gauge,
        &[],
        "Committed DC1 offsets in the last round older than what the offset map knows (not synced).",
    ),
    def(
        "kafka_tee_consumer_offsets_commits_total",
        Counter,
        &[],
        "Partition offsets committed to DC2 groups (translated from DC1's).",
    ),
    def(
        "kafka_tee_consumer_offsets_sync_errors_total",
        Counter,
        &[],
        "Consumer group offset syncs that failed (a group, or the listing of DC1's groups); tried again next round.",
    ),
    def(
        "kafka_tee_consumer_offsets_last_sync_age_seconds",
        Gauge,
        &[],
        "Seconds since the last round that synced every selected group without an error.",
    ),
    def(
        "kafka_tee_follow_offsets_total",
        Counter,
        &[],
        "DC1 offsets found past what the proxy had seen acknowledged, when an idle partition's end was looked up (producers bypassing the proxy, answers that never came back, transaction markers); read back and copied (markers skipped).",
    ),
    def(
        "kafka_tee_catchup_gaps_total",
        Counter,
        &[],
        "Offset ranges (overflow, outage, restart, unfinished transaction) the replicator started reading back from DC1.",
    ),
    def(
        "kafka_tee_catchup_batches_total",
        Counter,
        &[],
        "Batches read back from DC1 and acknowledged by DC2.",
    ),
    def(
        "kafka_tee_catchup_skipped_batches_total",
        Counter,
        &["reason"],
        "Batches read back from DC1 and not copied: reason=aborted (aborted transaction) or control (transaction markers).",
    ),
    def(
        "kafka_tee_catchup_absent_offsets_total",
        Counter,
        &[],
        "Offsets inside a range read back from DC1 that DC1 does not have (compacted away), moved past after two reads at least 500 ms apart showed them missing.",
    ),
    def(
        "kafka_tee_topics_held",
        Gauge,
        &["topic"],
        "1 while a DC1 topic cannot be written to DC2 (DC2 topic missing, partition counts differ, creation failed): its data waits in DC1; 0 once ready.",
    ),
    def(
        "kafka_tee_dc2_topics_created_total",
        Counter,
        &[],
        "DC2 topics the replicator created (replication.create_topics).",
    ),
    def(
        "kafka_tee_filtered_items_total",
        Counter,
        &[],
        "Acknowledged items the replicator dropped because their topic is not replicated (include/exclude).",
    ),
    def(
        "kafka_tee_producer_id_renewals_total",
        Counter,
        &[],
        "Times the replicator's DC2 producer id was renewed (fenced or expired).",
    ),
    def(
        "kafka_tee_checkpoint_writes_total",
        Counter,
        &[],
        "Checkpoints written to state.dir.",
    ),
    def(
        "kafka_tee_checkpoint_errors_total",
        Counter,
        &[],
        "Checkpoint writes that failed; after a restart, replication resumes from the last good one.",
    ),
    def(
        "kafka_tee_checkpoint_start_unsaved_total",
        Counter,
        &[],
        "Partitions whose first acknowledgement went to the producer before a checkpoint naming the partition was on disk (the write failed or took over 5 s); a crash then would not copy those batches.",
    ),
];

/// Histogram buckets, in seconds: sub-millisecond proxy hops up to DC2 outages.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (first call only), describes every metric and
/// starts the unlabelled ones at zero so that dashboards and alert rules see them
/// before the first event. Returns the handle `/metrics` renders from.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(BUCKETS) {
                Ok(b) => b,
                // Only fails for an empty bucket list, which BUCKETS is not.
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                // Someone (a test harness, an embedding program) installed another
                // recorder first: /metrics then shows nothing but stays up.
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe_all();
            handle
        })
        .clone()
}

fn describe_all() {
    for m in METRICS {
        match m.kind {
            Counter => {
                metrics::describe_counter!(m.name, m.help);
                if m.labels.is_empty() {
                    metrics::counter!(m.name).increment(0);
                }
            }
            Gauge => {
                metrics::describe_gauge!(m.name, m.help);
                if m.labels.is_empty() {
                    metrics::gauge!(m.name).increment(0.0);
                }
            }
            Histogram => {
                metrics::describe_histogram!(m.name, m.help);
                if m.labels.is_empty() {
                    // Registering is enough for an empty histogram to be rendered.
                    let _ = metrics::histogram!(m.name);
                }
            }
        }
    }
    // Every cause starts at zero, so a rate() over the failures has series to work on.
    for cause in crate::net::tls_failure::Cause::ALL {
        metrics::counter!("kafka_tee_tls_handshake_failures_total", "cause" => cause.label())
            .increment(0);
    }
    metrics::gauge!("kafka_tee_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("kafka_tee_start_time_seconds").set(now);
}

/// Counts one batch DC1 acknowledged for a replicated topic (called by capture).
pub fn dc1_acked_batch(records: i64, bytes_held: usize) {
    metrics::counter!("kafka_tee_produce_acked_batches_total").increment(1);
    metrics::counter!("kafka_tee_produce_acked_records_total").increment(records.max(0) as u64);
    metrics::counter!("kafka_tee_produce_acked_bytes_total").increment(bytes_held as u64);
}

/// Looks a metric up by name.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests;
