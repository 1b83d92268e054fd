//! Criterion micro-benchmarks of the proxy's per-request work, over frames built with
//! kafka-protocol's own encoders (the bytes a client or broker puts on the wire):
//! request header peek, Produce request parse, response rewrites (Metadata, Produce),
//! record batch header patch with CRC-32C, and the tee's capture bookkeeping.
//!
//! `cargo bench --bench hot_path` (add `-- <filter>` to run some of them).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, BrokerId, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record};
use kafka_tee::protocol::batch::RecordBatch;
use kafka_tee::protocol::peek_request_header;
use kafka_tee::protocol::produce::parse_produce_request;
use kafka_tee::proxy::rewrite::{AddressMap, rewrite_response};
use kafka_tee::tee::capture::{Capture, Sink};
use kafka_tee::tee::{Budget, Pending, TopicPartition};

/// One magic v2 batch of `count` idempotent records with `value_size`-byte values.
fn record_batch(count: usize, value_size: usize, compression: Compression) -> Bytes {
    let value: Bytes = (0..value_size)
        .map(|i| b'A' + (i * 7 % 26) as u8)
        .collect::<Vec<u8>>()
        .into();
    let records: Vec<Record> = (0..count as i64)
        .map(|i| Record {
            producer_id: 4242,
            producer_epoch: 0,
            ..kafka_tee::testing::record(i, value.clone())
        })
        .collect();
    kafka_tee::testing::encode_batch(&records, compression)
}

/// A Produce request frame (header included, length prefix excluded, as the session
/// sees it) with one batch per partition.
fn produce_request(version: i16, topics: &[(&str, usize)], batch: &Bytes) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("rdkafka")));
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(
            topics
                .iter()
                .map(|(name, parts)| {
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(name.to_string())))
                        .with_partition_data(
                            (0..*parts as i32)
                                .map(|p| {
                                    PartitionProduceData::default()
                                        .with_index(p)
                                        .with_records(Some(batch.clone()))
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    kafka_tee::testing::encode_request(&header, &req)
}

fn produce_response_msg(topics: &[(&str, usize)]) -> ProduceResponse {
    ProduceResponse::default().with_responses(
        topics
            .iter()
            .map(|(name, parts)| {
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_string(name.to_string())))
                    .with_partition_responses(
                        (0..*parts as i32)
                            .map(|p| {
                                PartitionProduceResponse::default()
                                    .with_index(p)
                                    .with_base_offset(1000 + i64::from(p))
                                    .with_log_append_time_ms(-1)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn response_frame<T: Encodable>(key: ApiKey, version: i16, msg: &T) -> Bytes {
    let mut b = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(7)
        .encode(&mut b, key.response_header_version(version))
        .expect("header");
    msg.encode(&mut b, version).expect("body");
    b.freeze()
}

/// A Metadata response naming `brokers` brokers and `topics` topics of `parts`
/// partitions each.
fn metadata_response(brokers: i32, topics: usize, parts: i32) -> MetadataResponse {
    MetadataResponse::default()
        .with_brokers(
            (0..brokers)
                .map(|id| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(id))
                        .with_host(StrBytes::from_string(format!("broker-{id}.dc1.internal")))
                        .with_port(9092)
                        .with_rack(Some(StrBytes::from_static_str("rack-a")))
                })
                .collect(),
        )
        .with_cluster_id(Some(StrBytes::from_static_str("dc1")))
        .with_controller_id(BrokerId(0))
        .with_topics(
            (0..topics)
                .map(|t| {
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(format!(
                            "orders-{t}"
                        )))))
                        .with_partitions(
                            (0..parts)
                                .map(|p| {
                                    let leader = p % brokers;
                                    let replicas: Vec<BrokerId> =
                                        (0..3).map(|r| BrokerId((leader + r) % brokers)).collect();
                                    MetadataResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_leader_id(BrokerId(leader))
                                        .with_leader_epoch(3)
                                        .with_replica_nodes(replicas.clone())
                                        .with_isr_nodes(replicas)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
}

/// Every broker is at proxy port 19100 + node id.
struct FixedPorts;

impl AddressMap for FixedPorts {
    fn advertised_host(&self) -> &str {
        "127.0.0.1"
    }
    fn proxy_ports(&self, brokers: &mut [(i32, String)]) -> Vec<(i32, Option<u16>)> {
        brokers
            .iter()
            .map(|(id, _)| (*id, u16::try_from(19100 + *id).ok()))
            .collect()
    }
}

/// Takes released batches and drops them, which gives their bytes back to the budget,
/// as the replicator does once DC2 has them.
struct NoopSink;

impl Sink for NoopSink {
    fn push(&self, _tp: TopicPartition, item: Pending) {
        drop(item);
    }
    fn wants(&self, _topic: &str) -> bool {
        true
    }
}

fn bench_header_peek(c: &mut Criterion) {
    let batch = record_batch(16, 1000, Compression::None);
    let frame = produce_request(9, &[("orders", 1)], &batch);
    c.bench_function("header_peek", |b| {
        b.iter(|| peek_request_header(black_box(&frame)))
    });
}

fn bench_produce_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("produce_parse");
    let batch = record_batch(16, 1000, Compression::None);
    for (name, version, topics) in [
        ("v7_1topic_1part", 7, vec![("orders", 1)]),
        ("v9_1topic_1part", 9, vec![("orders", 1)]),
        ("v9_1topic_3parts", 9, vec![("orders", 3)]),
        (
            "v9_4topics_6parts",
            9,
            vec![("orders", 6), ("payments", 6), ("audit", 6), ("clicks", 6)],
        ),
    ] {
        let frame = produce_request(version, &topics, &batch);
        // Record sets are slices of the frame, so bytes/s says nothing: count partitions.
        let parts: usize = topics.iter().map(|(_, p)| p).sum();
        g.throughput(Throughput::Elements(parts as u64));
        g.bench_function(name, |b| {
            b.iter(|| parse_produce_request(black_box(&frame)).expect("parse"))
        });
    }
    g.finish();
}

fn bench_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rewrite_response");
    let map = FixedPorts;
    for (name, brokers, topics, parts) in [
        ("metadata_3brokers_1topic", 3, 1, 3),
        ("metadata_3brokers_50topics", 3, 50, 6),
    ] {
        let frame = response_frame(
            ApiKey::Metadata,
            12,
            &metadata_response(brokers, topics, parts),
        );
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                rewrite_response(&map, ApiKey::Metadata, 12, black_box(frame.clone()))
                    .expect("rewrite")
            })
        });
    }
    // Produce responses: below v10 they pass through; from v10 (KIP-951 node endpoints)
    // they are decoded and re-encoded.
    let resp = produce_response_msg(&[("orders", 3)]);
    for version in [9i16, 11] {
        let frame = response_frame(ApiKey::Produce, version, &resp);
        g.bench_function(
            BenchmarkId::new("produce_3parts", format!("v{version}")),
            |b| {
                b.iter(|| {
                    rewrite_response(&map, ApiKey::Produce, version, black_box(frame.clone()))
                        .expect("rewrite")
                })
            },
        );
    }
    g.finish();
}

fn bench_batch_patch(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_patch");
    for (count, size) in [(1usize, 100usize), (16, 1000), (256, 1000)] {
        let batch = record_batch(count, size, Compression::None);
        g.throughput(Throughput::Bytes(batch.len() as u64));
        let id = format!("{}B", batch.len());
        g.bench_function(BenchmarkId::new("parse_patch_crc", &id), |b| {
            b.iter(|| {
                RecordBatch::parse(black_box(batch.clone()))
                    .expect("batch")
                    .patch(77, 1, 1234, false)
            })
        });
        let parsed = RecordBatch::parse(batch.clone()).expect("batch");
        g.bench_function(BenchmarkId::new("verify_crc", &id), |b| {
            b.iter(|| black_box(&parsed).verify_crc().expect("crc"))
        });
    }
    g.finish();
}

fn bench_capture(c: &mut Criterion) {
    let mut g = c.benchmark_group("capture");
    let batch = record_batch(16, 1000, Compression::None);
    for (name, topics) in [
        ("1topic_1part", vec![("orders", 1)]),
        ("1topic_3parts", vec![("orders", 3)]),
        (
            "4topics_6parts",
            vec![("orders", 6), ("payments", 6), ("audit", 6), ("clicks", 6)],
        ),
    ] {
        let frame = produce_request(9, &topics, &batch);
        let view = parse_produce_request(&frame).expect("parse");
        let resp = produce_response_msg(&topics);
        let budget = Arc::new(Budget::new(1 << 30));
        let sink = Arc::new(NoopSink);
        let capture = Capture::new(sink, budget, Duration::from_secs(60));
        g.bench_function(name, |b| {
            b.iter(|| {
                let ticket = capture.on_request(black_box(&view)).expect("ticket");
                black_box(ticket.complete(black_box(&resp)));
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_header_peek, bench_produce_parse, bench_rewrite, bench_batch_patch,
        bench_capture
}
criterion_main!(benches);
