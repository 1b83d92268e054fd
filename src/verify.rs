//! `kafka-tee verify`: reads a topic from DC1 and DC2 and compares record by record.
//!
//! Each partition is read to its end in both clusters (read_committed: control records
//! and aborted transactions are left out), then compared in order on key, value,
//! headers and timestamp. Offsets are not compared: DC2 assigns its own. The end of a
//! partition is where a fetch returns nothing more and the read position has reached
//! the high watermark (or last stable offset); ListOffsets "latest" is not trusted.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use crate::client::{Client, ClientConfig, ClientError, Cluster, EARLIEST, IsolationLevel};
use crate::protocol::batch::{Committed, TxnFilter, split_batches};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A kafka-tee config file: its [source] and [target] (addresses, TLS, SASL) are
    /// used; --source and --target override the addresses.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// DC1 bootstrap addresses.
    #[arg(long, value_delimiter = ',', required_unless_present = "config")]
    pub source: Vec<String>,
    /// DC2 bootstrap addresses.
    #[arg(long, value_delimiter = ',', required_unless_present = "config")]
    pub target: Vec<String>,
    /// Topics to compare (repeatable).
    #[arg(long, required = true)]
    pub topic: Vec<String>,
    /// Prefix of the topic names in DC2.
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
}

/// The parts of a record that must survive replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// Offset in the cluster it was read from (reported, not compared).
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(StrBytes, Option<Bytes>)>,
}

impl RecordView {
    fn same_content(&self, other: &RecordView) -> Option<&'static str> {
        if self.key != other.key {
            Some("key")
        } else if self.value != other.value {
            Some("value")
        } else if self.headers != other.headers {
            Some("headers")
        } else if self.timestamp != other.timestamp {
            Some("timestamp")
        } else {
            None
        }
    }
}

/// The comparison of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReport {
    pub topic: String,
    pub dc2_topic: String,
    pub partition: i32,
    pub dc1_records: usize,
    pub dc2_records: usize,
    /// `None` when identical.
    pub first_difference: Option<String>,
}

impl PartitionReport {
    pub fn identical(&self) -> bool {
        self.first_difference.is_none()
    }
}

impl fmt::Display for PartitionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{} -> {}-{}: DC1 {} records, DC2 {} records: ",
            self.topic,
            self.partition,
            self.dc2_topic,
            self.partition,
            self.dc1_records,
            self.dc2_records
        )?;
        match &self.first_difference {
            None => write!(f, "identical"),
            Some(d) => write!(f, "DIFFERENT, {d}"),
        }
    }
}

/// The comparison of every requested topic.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub partitions: Vec<PartitionReport>,
    /// Topic-level problems (missing topic, partition counts differ).
    pub problems: Vec<String>,
}

impl Report {
    pub fn identical(&self) -> bool {
        self.problems.is_empty() && self.partitions.iter().all(|p| p.identical())
    }
}

/// The configuration a command-line tool works with: `config` (if given) with the
/// `source` / `target` addresses put over it, and client settings for DC1 and DC2
/// (TLS, SASL as configured). `what` names the command in the error.
pub fn clusters(
    config: Option<&std::path::Path>,
    source: &[String],
    target: &[String],
    what: &str,
) -> anyhow::Result<(crate::config::Config, ClientConfig, ClientConfig)> {
    let mut config = match config {
        Some(path) => crate::config::Config::from_file(path)?,
        None => crate::config::Config::default(),
    };
    if !source.is_empty() {
        config.source.bootstrap = source.to_vec();
    }
    if !target.is_empty() {
        config.target.bootstrap = target.to_vec();
    }
    anyhow::ensure!(
        !config.source.bootstrap.is_empty() && !config.target.bootstrap.is_empty(),
        "{what} needs DC1 and DC2 addresses (--source/--target or [source]/[target] in --config)"
    );
    let dc1 =
        ClientConfig::new(Cluster::Dc1, config.source.bootstrap.clone()).secured(&config.source)?;
    let dc2 =
        ClientConfig::new(Cluster::Dc2, config.target.bootstrap.clone()).secured(&config.target)?;
    Ok((config, dc1, dc2))
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (_, dc1, dc2) = clusters(args.config.as_deref(), &args.source, &args.target, "verify")?;
    let report = compare_with(dc1, dc2, &args.topic, &args.topic_prefix).await?;
    for p in &report.problems {
        println!("{p}");
    }
    for p in &report.partitions {
        println!("{p}");
    }
    if report.identical() {
        println!("verify: identical");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("verify: DIFFERENT");
        Ok(ExitCode::from(1))
    }
}

/// Compares `topics` in DC1 with `prefix + topic` in DC2.
pub async fn compare(
    source: &[String],
    target: &[String],
    topics: &[String],
    prefix: &str,
) -> anyhow::Result<Report> {
    compare_with(
        ClientConfig::new(Cluster::Dc1, source.to_vec()),
        ClientConfig::new(Cluster::Dc2, target.to_vec()),
        topics,
        prefix,
    )
    .await
}

/// Compares `topics` in DC1 with `prefix + topic` in DC2, connecting as configured.
pub async fn compare_with(
    source: ClientConfig,
    target: ClientConfig,
    topics: &[String],
    prefix: &str,
) -> anyhow::Result<Report> {
    let dc1 = Client::connect(source).await.context("connecting to DC1")?;
    let dc2 = Client::connect(target).await.context("connecting to DC2")?;
    let mut report = Report::default();
    for topic in topics {
        let dc2_topic = format!("{prefix}{topic}");
        let deadline = Duration::from_secs(30);
        let src = dc1.retry(deadline, || dc1.topic(topic)).await?;
        let dst = dc2.retry(deadline, || dc2.topic(&dc2_topic)).await?;
        let (src, dst) = match (src, dst) {
            (None, _) => {
                report
                    .problems
                    .push(format!("{topic}: does not exist in DC1"));
                continue;
            }
            (Some(_), None) => {
                report
                    .problems
                    .push(format!("{topic}: {dc2_topic} does not exist in DC2"));
                continue;
            }
            (Some(s), Some(d)) => (s, d),
        };
        if src.partition_count() != dst.partition_count() {
            report.problems.push(format!(
                "{topic}: DC1 has {} partitions, DC2 ({dc2_topic}) has {}",
                src.partition_count(),
                dst.partition_count()
            ));
        }
        for p in &src.partitions {
            let a = read_partition(&dc1, topic, p.partition)
                .await
                .with_context(|| format!("reading {topic}-{} from DC1", p.partition))?;
            let b = if dst.partitions.iter().any(|d| d.partition == p.partition) {
                read_partition(&dc2, &dc2_topic, p.partition)
                    .await
                    .with_context(|| format!("reading {dc2_topic}-{} from DC2", p.partition))?
            } else {
                Vec::new()
            };
            report.partitions.push(PartitionReport {
                topic: topic.clone(),
                dc2_topic: dc2_topic.clone(),
                partition: p.partition,
                dc1_records: a.len(),
                dc2_records: b.len(),
                first_difference: first_difference(&a, &b),
            });
        }
    }
    Ok(report)
}

/// Where two record sequences first differ, described for a person.
pub fn first_difference(dc1: &[RecordView], dc2: &[RecordView]) -> Option<String> {
    for (i, (a, b)) in dc1.iter().zip(dc2).enumerate() {
        if let Some(field) = a.same_content(b) {
            return Some(format!(
                "record #{i} (DC1 offset {}, DC2 offset {}) differs in its {field}",
                a.offset, b.offset
            ));
        }
    }
    match dc1.len().cmp(&dc2.len()) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(format!(
            "record #{} (DC1 offset {}) and {} more are missing in DC2",
            dc2.len(),
            dc1[dc2.len()].offset,
            dc1.len() - dc2.len() - 1
        )),
        std::cmp::Ordering::Less => Some(format!(
            "DC2 has {} extra records from record #{} (DC2 offset {})",
            dc2.len() - dc1.len(),
            dc1.len(),
            dc2[dc1.len()].offset
        )),
    }
}

/// Fetches that return nothing before the end is declared reached.
const EMPTY_FETCHES_AT_END: u32 = 2;
/// Fetches that return nothing while the high watermark says more is there.
const EMPTY_FETCHES_STUCK: u32 = 50;

/// Reads a whole partition, committed records only.
pub async fn read_partition(
    client: &Client,
    topic: &str,
    partition: i32,
) -> anyhow::Result<Vec<RecordView>> {
    let mut out = Vec::new();
    let mut txns = TxnFilter::default();
    let mut offset = 0i64;
    let mut max_bytes: i32 = 4 * 1024 * 1024;
    let mut empty = 0u32;
    let deadline = client.config().request_timeout;
    loop {
        let fetched = client
            .retry(deadline, || {
                client.fetch(
                    topic,
                    partition,
                    offset,
                    max_bytes,
                    Duration::from_millis(100),
                    IsolationLevel::ReadCommitted,
                )
            })
            .await;
        let f = match fetched {
            Ok(f) => f,
            Err(e) if e.kafka_error() == Some(ResponseError::OffsetOutOfRange) => {
                let start = client.list_offset(topic, partition, EARLIEST).await?;
                anyhow::ensure!(
                    start > offset,
                    "{}: offset {offset} out of range but the log starts at {start}",
                    client.cluster()
                );
                offset = start;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let end = if f.last_stable_offset >= 0 {
            f.last_stable_offset.min(f.high_watermark)
        } else {
            f.high_watermark
        };
        txns.observe(&f.aborted);
        let had_bytes = !f.records.is_empty();
        let before = offset;
        for batch in split_batches(f.records) {
            let batch = batch.map_err(|e| {
                anyhow::anyhow!(
                    "{}: {topic}-{partition} at offset {offset}: {e}",
                    client.cluster()
                )
            })?;
            let last = batch.base_offset() + i64::from(batch.last_offset_delta());
            if last < offset {
                continue;
            }
            let mut class = txns.classify(&batch);
            if let Committed::Undecided { producer_id } = class {
                match client
                    .find_txn_marker(topic, partition, producer_id, batch.base_offset())
                    .await?
                {
                    Some((marker, committed)) => {
                        txns.learn(producer_id, marker, committed);
                        class = txns.classify(&batch);
                    }
                    // An open transaction: the partition ends here for a committed read.
                    None => return Ok(out),
                }
            }
            let keep = matches!(class, Committed::Keep | Committed::Undecided { .. });
            if keep {
                for r in decode(batch.bytes(), client.cluster())? {
                    if r.offset >= offset {
                        out.push(r);
                    }
                }
            }
            offset = last + 1;
        }
        if offset > before {
            empty = 0;
            max_bytes = 4 * 1024 * 1024;
            if offset >= end {
                // Reached the end as the broker reported it; one more fetch confirms.
                empty = EMPTY_FETCHES_AT_END - 1;
            }
            continue;
        }
        if had_bytes {
            // One batch larger than the fetch size: ask for more.
            max_bytes = max_bytes.saturating_mul(2).min(256 * 1024 * 1024);
            continue;
        }
        empty += 1;
        if offset >= end && empty >= EMPTY_FETCHES_AT_END {
            return Ok(out);
        }
        anyhow::ensure!(
            empty < EMPTY_FETCHES_STUCK,
            "{}: {topic}-{partition}: no records at offset {offset} although the high watermark is {}",
            client.cluster(),
            f.high_watermark
        );
    }
}

fn decode(batch: &Bytes, cluster: Cluster) -> Result<Vec<RecordView>, ClientError> {
    let mut buf = batch.clone();
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        RecordBatchDecoder::decode(&mut buf)
    }));
    let set = match decoded {
        Ok(Ok(set)) => set,
        Ok(Err(e)) => {
            return Err(ClientError::Protocol {
                cluster,
                broker: -1,
                message: format!("cannot decode a record batch: {e}"),
            });
        }
        Err(_) => {
            return Err(ClientError::Protocol {
                cluster,
                broker: -1,
                message: "malformed record batch".into(),
            });
        }
    };
    Ok(set
        .records
        .into_iter()
        .filter(|r| !r.control)
        .map(|r| RecordView {
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r.headers.into_iter().collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, value: &'static str) -> RecordView {
        RecordView {
            offset,
            timestamp: 1,
            key: None,
            value: Some(Bytes::from_static(value.as_bytes())),
            headers: Vec::new(),
        }
    }

    #[test]
    fn differences_are_described() {
        let a = vec![rec(0, "a"), rec(1, "b"), rec(2, "c")];
        assert_eq!(first_difference(&a, &a), None);
        let b = vec![rec(5, "a"), rec(6, "x")];
        let d = first_difference(&a, &b).expect("differs");
        assert!(d.contains("record #1") && d.contains("value"), "{d}");
        let d = first_difference(&a, &a[..2]).expect("differs");
        assert!(d.contains("missing in DC2"), "{d}");
        let d = first_difference(&a[..1], &a).expect("differs");
        assert!(d.contains("extra"), "{d}");
        let mut t = a.clone();
        t[2].timestamp = 9;
        assert!(
            first_difference(&a, &t)
                .expect("differs")
                .contains("timestamp")
        );
    }
}
