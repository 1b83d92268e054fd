//! Load generator for the end-to-end benchmarks, in the spirit of
//! kafka-producer-perf-test: produces fixed-size records through librdkafka and reports
//! records/s, MB/s and produce latency percentiles, then (with `--dc2`) how long after
//! the load stopped DC2 held every acknowledged record.
//!
//! `loadgen sink --listen 127.0.0.1:P` is a Kafka endpoint that stores nothing: it
//! answers ApiVersions, Metadata (itself as the only broker, every topic asked for
//! exists) and InitProducerId, and acknowledges Produce at once, so a proxy's forwarding
//! capacity can be measured without a broker as the limit.
//!
//! Run with `cargo bench --bench loadgen -- <args>`; the last line printed on stdout is
//! one JSON object for harnesses (`benches/e2e.py`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse,
    InitProducerIdResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    ProducerId, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Kafka produce load generator and no-storage sink for kafka-tee benchmarks",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    produce: ProduceArgs,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Produce load (the default when no subcommand is given).
    Produce(Box<ProduceArgs>),
    /// A Kafka endpoint that acknowledges Produce at once and stores nothing.
    Sink(SinkArgs),
}

#[derive(Args, Debug, Clone)]
struct ProduceArgs {
    /// Bootstrap HOST:PORT (a broker or a proxy).
    #[arg(long)]
    bootstrap: Option<String>,
    /// Topic to produce to.
    #[arg(long, default_value = "loadgen")]
    topic: String,
    /// Value size of every record, in bytes (records have no key).
    #[arg(long, default_value_t = 1000)]
    record_size: usize,
    /// Stop after this many records (across all producers).
    #[arg(long, conflicts_with = "duration")]
    num_records: Option<u64>,
    /// Stop sending after this many seconds (default 10 when --num-records is absent).
    #[arg(long)]
    duration: Option<f64>,
    /// Target records per second across all producers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Number of producer clients (each with its own connections and thread).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Compression codec: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// acks: all, -1, 0 or 1.
    #[arg(long, default_value = "all")]
    acks: String,
    /// Enable the idempotent producer.
    #[arg(long)]
    idempotence: bool,
    /// librdkafka linger.ms.
    #[arg(long, default_value_t = 5.0)]
    linger_ms: f64,
    /// librdkafka batch.size in bytes (librdkafka's default when absent).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Producer buffer (librdkafka queue.buffering.max.kbytes); 32 MiB like the Java
    /// producer's buffer.memory, so an unthrottled run measures the pipeline, not a queue.
    #[arg(long, default_value_t = 32768)]
    buffer_kbytes: u64,
    /// Seconds at the start that are not measured (connections, metadata, queues
    /// filling): acks before it do not count, records sent before it have no latency.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Do not create the topic first (the sink needs no CreateTopics).
    #[arg(long)]
    no_create_topic: bool,
    /// Extra librdkafka settings, KEY=VALUE (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    extra: Vec<String>,
    /// DC2 bootstrap HOST:PORT: after the load, wait until DC2 holds every acknowledged
    /// record and report how long that took.
    #[arg(long)]
    dc2: Option<String>,
    /// Give up waiting for DC2 after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    dc2_timeout: f64,
    /// Free-form label copied into the JSON result.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args, Debug)]
struct SinkArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// HOST:PORT to advertise in Metadata (default: the listen address). Set it to a
    /// relay's address to keep every connection on the relay.
    #[arg(long)]
    advertise: Option<String>,
    /// Partitions reported for every topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::Sink(args)) => runtime.block_on(run_sink(args)),
        Some(Command::Produce(args)) => run_produce(*args, &runtime),
        None => run_produce(cli.produce, &runtime),
    }
}

// ------------------------------------------------------------------------- produce

/// Per-producer delivery bookkeeping; each producer is polled by its own thread, so the
/// locks are uncontended.
struct Stats {
    origin: Instant,
    /// Acks before this many nanoseconds after `origin` do not count towards throughput,
    /// and records sent before it not towards latency.
    warmup_ns: u64,
    latency_us: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    measured: AtomicU64,
    errors: AtomicU64,
    last_ack_ns: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// partition -> (acked records, highest acked offset)
    partitions: Mutex<HashMap<i32, (u64, i64)>>,
    /// From librdkafka's latest statistics: what the client saw of the path.
    client: Mutex<ClientStats>,
}

/// A few of librdkafka's statistics: how requests were shaped and how long they took.
#[derive(Debug, Default, Clone, Copy)]
struct ClientStats {
    produce_requests: i64,
    batch_records_avg: i64,
    batch_bytes_avg: i64,
    rtt_us_avg: i64,
    queue_us_avg: i64,
}

impl Stats {
    fn new(origin: Instant, warmup_ns: u64) -> Self {
        Self {
            origin,
            warmup_ns,
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")),
            acked: AtomicU64::new(0),
            measured: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_ack_ns: AtomicU64::new(0),
            first_error: Mutex::new(None),
            partitions: Mutex::new(HashMap::new()),
            client: Mutex::new(ClientStats::default()),
        }
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

impl ClientContext for Stats {
    fn error(&self, error: KafkaError, reason: &str) {
        eprintln!("loadgen: client error: {error}: {reason}");
    }

    fn stats(&self, st: Statistics) {
        let brokers = || st.brokers.values().filter(|b| b.nodeid >= 0);
        let window_avg = |w: Option<&rdkafka::statistics::Window>| w.map_or(0, |w| w.avg);
        let busiest = brokers().max_by_key(|b| b.tx);
        let topic = st.topics.values().max_by_key(|t| t.batchcnt.cnt);
        *self.client.lock().expect("lock") = ClientStats {
            produce_requests: brokers()
                .map(|b| b.req.get("Produce").copied().unwrap_or(0))
                .sum(),
            batch_records_avg: topic.map_or(0, |t| t.batchcnt.avg),
            batch_bytes_avg: topic.map_or(0, |t| t.batchsize.avg),
            rtt_us_avg: window_avg(busiest.and_then(|b| b.rtt.as_ref())),
            queue_us_avg: window_avg(busiest.and_then(|b| b.int_latency.as_ref())),
        };
    }
}

impl ProducerContext for Stats {
    /// Nanoseconds after `origin` at which the record was handed to librdkafka.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        let now = self.now_ns();
        match result {
            Ok(msg) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                self.last_ack_ns.fetch_max(now, Ordering::Relaxed);
                {
                    let mut parts = self.partitions.lock().expect("lock");
                    let e = parts.entry(msg.partition()).or_insert((0, -1));
                    e.0 += 1;
                    e.1 = e.1.max(msg.offset());
                }
                if now >= self.warmup_ns {
                    self.measured.fetch_add(1, Ordering::Relaxed);
                }
                if sent_ns as u64 >= self.warmup_ns {
                    let us = now.saturating_sub(sent_ns as u64) / 1000;
                    let _ = self
                        .latency_us
                        .lock()
                        .expect("lock")
                        .record(us.clamp(1, 120_000_000));
                }
            }
            Err((e, _)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("lock");
                if first.is_none() {
                    *first = Some(e.to_string());
                }
            }
        }
    }
}

fn client_config(a: &ProduceArgs, bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("acks", &a.acks)
        .set("compression.codec", &a.compression)
        .set("linger.ms", a.linger_ms.to_string())
        .set("enable.idempotence", a.idempotence.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", a.buffer_kbytes.to_string())
        .set("message.timeout.ms", "120000")
        .set("statistics.interval.ms", "500");
    if let Some(b) = a.batch_size {
        c.set("batch.size", b.to_string());
    }
    for kv in &a.extra {
        if let Some((k, v)) = kv.split_once('=') {
            c.set(k, v);
        }
    }
    c
}

/// A buffer of random capital letters (like kafka-producer-perf-test's payloads, so
/// compression has something realistic to do); records are windows into it.
fn payload_pool(record_size: usize) -> Vec<u8> {
    let len = (1 << 20).max(record_size * 4);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'A' + (x % 26) as u8
        })
        .collect()
}

async fn create_topic(a: &ProduceArgs, bootstrap: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .create()
        .context("admin client")?;
    let topic = NewTopic::new(&a.topic, a.partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res = admin
        .create_topics([&topic], &opts)
        .await
        .with_context(|| format!("CreateTopics {} at {bootstrap}", a.topic))?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("cannot create topic {t} at {bootstrap}: {e}"),
        }
    }
    Ok(())
}

struct ProducerResult {
    stats: Arc<Stats>,
    sent: u64,
    /// Kept until the run is over: dropping a client blocks for a while, which would
    /// otherwise delay the DC2 check.
    producer: BaseProducer<Stats>,
}

/// Pacing: the shortest and longest sleep between bursts of due records.
const PACE_MIN_SLEEP: Duration = Duration::from_millis(1);
const PACE_MAX_SLEEP: Duration = Duration::from_millis(2);

fn run_producer(
    a: &ProduceArgs,
    bootstrap: &str,
    stats: Stats,
    quota: Option<u64>,
    deadline: Option<Instant>,
    rate: f64,
    pool: &[u8],
) -> anyhow::Result<ProducerResult> {
    let producer: BaseProducer<Stats> = client_config(a, bootstrap)
        .create_with_context(stats)
        .context("producer")?;
    let stats = producer.context().clone();
    let size = a.record_size;
    let windows = (pool.len() - size).max(1);
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        if quota.is_some_and(|q| sent >= q) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if now < due {
                // Sleep at least a millisecond and then send what fell due as a burst:
                // spinning until each record's own instant costs a whole core at
                // 20,000 records/s, a core the brokers and the proxy then lack.
                producer.poll(Duration::ZERO);
                std::thread::sleep((due - now).clamp(PACE_MIN_SLEEP, PACE_MAX_SLEEP));
                continue;
            }
        }
        let off = (sent as usize).wrapping_mul(7919) % windows;
        let record =
            BaseRecord::<(), [u8], usize>::with_opaque_to(&a.topic, stats.now_ns() as usize)
                .payload(&pool[off..off + size]);
        match producer.send(record) {
            Ok(()) => sent += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(1));
                continue;
            }
            Err((e, _)) => bail!("send failed: {e}"),
        }
        if sent.is_multiple_of(128) {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flush: records still unacknowledged after 120 s")?;
    producer.poll(Duration::ZERO);
    Ok(ProducerResult {
        stats,
        sent,
        producer,
    })
}

fn run_produce(a: ProduceArgs, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let Some(bootstrap) = a.bootstrap.clone() else {
        bail!("--bootstrap HOST:PORT is required (or use the `sink` subcommand)");
    };
    if a.producers == 0 {
        bail!("--producers must be at least 1");
    }
    if !a.no_create_topic {
        rt.block_on(create_topic(&a, &bootstrap))?;
    }
    let pool = payload_pool(a.record_size);
    let duration = match (a.num_records, a.duration) {
        (Some(_), _) => None,
        (None, d) => Some(Duration::from_secs_f64(d.unwrap_or(10.0))),
    };
    let origin = Instant::now();
    let warmup_ns = (a.warmup * 1e9) as u64;
    let deadline = duration.map(|d| origin + Duration::from_secs_f64(a.warmup) + d);
    let n = a.producers as u64;
    let per_rate = a.rate as f64 / n as f64;

    let results: Vec<anyhow::Result<ProducerResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let quota = a.num_records.map(|t| t / n + u64::from(i < t % n));
                let stats = Stats::new(origin, warmup_ns);
                let (a, bootstrap, pool) = (&a, &bootstrap, &pool);
                s.spawn(move || run_producer(a, bootstrap, stats, quota, deadline, per_rate, pool))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("producer panicked")))
            })
            .collect()
    });

    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let (mut sent, mut acked, mut measured, mut errors, mut last_ack_ns) = (0, 0, 0, 0, 0);
    let mut partitions: BTreeMap<i32, (u64, i64)> = BTreeMap::new();
    let mut first_error = None;
    let mut client = ClientStats::default();
    let mut producers = Vec::new();
    for r in results {
        let r = r?;
        producers.push(r.producer);
        let st = &r.stats;
        sent += r.sent;
        acked += st.acked.load(Ordering::Relaxed);
        measured += st.measured.load(Ordering::Relaxed);
        errors += st.errors.load(Ordering::Relaxed);
        last_ack_ns = last_ack_ns.max(st.last_ack_ns.load(Ordering::Relaxed));
        hist.add(&*st.latency_us.lock().expect("lock"))?;
        for (p, (c, o)) in st.partitions.lock().expect("lock").iter() {
            let e = partitions.entry(*p).or_insert((0, -1));
            e.0 += c;
            e.1 = e.1.max(*o);
        }
        if first_error.is_none() {
            first_error = st.first_error.lock().expect("lock").clone();
        }
        // Sums over producers; averages from the busiest one.
        let c = *st.client.lock().expect("lock");
        client.produce_requests += c.produce_requests;
        if c.batch_records_avg > client.batch_records_avg {
            client = ClientStats {
                produce_requests: client.produce_requests,
                ..c
            };
        }
    }
    let load_end = origin + Duration::from_nanos(last_ack_ns);
    let elapsed = (last_ack_ns.saturating_sub(warmup_ns)) as f64 / 1e9;
    let rps = if elapsed > 0.0 {
        measured as f64 / elapsed
    } else {
        0.0
    };
    let mbps = rps * a.record_size as f64 / 1e6;
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    eprintln!(
        "loadgen: {measured} records measured ({acked} acked, {sent} sent, {errors} errors) in \
         {elapsed:.2} s: {rps:.0} records/s, {mbps:.2} MB/s, latency ms p50 {:.2} p99 {:.2} \
         p99.9 {:.2} max {:.2}",
        q(0.5),
        q(0.99),
        q(0.999),
        hist.max() as f64 / 1000.0
    );
    if let Some(e) = &first_error {
        eprintln!("loadgen: first delivery error: {e}");
    }

    let mut dc2_catchup = None;
    let mut dc2_error = None;
    if let Some(dc2) = &a.dc2 {
        // The DC2 copy of a fresh topic gets the same offsets as DC1: wait until each
        // partition holds the highest offset DC1 acknowledged.
        let targets: Vec<(i32, i64)> = partitions
            .iter()
            .map(|(p, (c, o))| (*p, if *o >= 0 { *o } else { *c as i64 - 1 }))
            .filter(|(_, o)| *o >= 0)
            .collect();
        let timeout = Duration::from_secs_f64(a.dc2_timeout);
        match rt.block_on(wait_dc2(dc2, &a.topic, &targets, timeout)) {
            Ok(done) => {
                let s = done.saturating_duration_since(load_end).as_secs_f64();
                eprintln!("loadgen: DC2 held every record {s:.3} s after the last DC1 ack");
                dc2_catchup = Some(s);
            }
            Err(e) => {
                eprintln!("loadgen: DC2 check failed: {e:#}");
                dc2_error = Some(format!("{e:#}"));
            }
        }
    }

    let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.4}"));
    let opt_str = |v: &Option<String>| v.as_ref().map_or("null".to_string(), |s| json_str(s));
    println!(
        "{{\"mode\":\"produce\",\"label\":{},\"bootstrap\":{},\"topic\":{},\"record_size\":{},\
         \"producers\":{},\"rate_target\":{},\"compression\":{},\"acks\":{},\"idempotence\":{},\
         \"linger_ms\":{},\"sent\":{sent},\"acked\":{acked},\"measured\":{measured},\
         \"errors\":{errors},\"first_error\":{},\"elapsed_s\":{elapsed:.4},\
         \"records_per_s\":{rps:.1},\"mb_per_s\":{mbps:.3},\"latency_ms\":{{\"p50\":{:.3},\
         \"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3},\"mean\":{:.3}}},\"dc2_catchup_s\":{},\
         \"dc2_error\":{},\"client\":{{\"produce_requests\":{},\"records_per_request\":{:.1},\
         \"batch_records_avg\":{},\"batch_bytes_avg\":{},\"rtt_ms_avg\":{:.3},\
         \"queue_ms_avg\":{:.3}}},\"librdkafka\":{}}}",
        json_str(&a.label),
        json_str(&bootstrap),
        json_str(&a.topic),
        a.record_size,
        a.producers,
        a.rate,
        json_str(&a.compression),
        json_str(&a.acks),
        a.idempotence,
        a.linger_ms,
        opt_str(&first_error),
        q(0.5),
        q(0.99),
        q(0.999),
        hist.max() as f64 / 1000.0,
        hist.mean() / 1000.0,
        opt(dc2_catchup),
        opt_str(&dc2_error),
        client.produce_requests,
        acked as f64 / client.produce_requests.max(1) as f64,
        client.batch_records_avg,
        client.batch_bytes_avg,
        client.rtt_us_avg as f64 / 1000.0,
        client.queue_us_avg as f64 / 1000.0,
        json_str(&rdkafka::util::get_rdkafka_version().1),
    );
    drop(producers);
    if errors > 0 && acked == 0 {
        bail!("no record was acknowledged");
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ------------------------------------------------------------ minimal Kafka client

/// One connection with strictly sequential request/response exchanges.
struct Conn {
    stream: TcpStream,
    correlation: i32,
}

impl Conn {
    async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            correlation: 0,
        })
    }

    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> anyhow::Result<Resp> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("loadgen")));
        let mut body = BytesMut::new();
        header.encode(&mut body, key.request_header_version(version))?;
        req.encode(&mut body, version)?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.put_slice(&body);
        self.stream.write_all(&frame).await?;
        let len = self.stream.read_i32().await? as usize;
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await?;
        let mut buf = Bytes::from(buf);
        let rh = ResponseHeader::decode(&mut buf, key.response_header_version(version))?;
        if rh.correlation_id != self.correlation {
            bail!(
                "correlation id {} != {}",
                rh.correlation_id,
                self.correlation
            );
        }
        Resp::decode(&mut buf, version)
    }
}

/// Polls DC2 with Fetch until every `(partition, offset)` in `targets` is readable;
/// returns the moment that was first seen.
async fn wait_dc2(
    dc2: &str,
    topic: &str,
    targets: &[(i32, i64)],
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut conn = Conn::connect(dc2).await?;
    let versions: ApiVersionsResponse = conn
        .call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())
        .await?;
    let max_of = |k: ApiKey| {
        versions
            .api_keys
            .iter()
            .find(|v| v.api_key == k as i16)
            .map(|v| v.max_version)
    };
    // Fetch v12 is the last version that names topics (v13+ use topic ids).
    let fetch_v = max_of(ApiKey::Fetch).context("DC2 has no Fetch")?.min(12);
    let meta_v = max_of(ApiKey::Metadata)
        .context("DC2 has no Metadata")?
        .min(9);
    let mut pending: BTreeMap<i32, i64> = targets.iter().copied().collect();
    let mut leaders: HashMap<i32, String> = HashMap::new();
    let mut conns: HashMap<String, Conn> = HashMap::new();
    loop {
        if pending.is_empty() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "DC2 still lacks offsets {:?} after {:.0} s",
                pending,
                timeout.as_secs_f64()
            );
        }
        if pending.keys().any(|p| !leaders.contains_key(p)) {
            let req = MetadataRequest::default()
                .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                    TopicName(StrBytes::from_string(topic.to_string())),
                ))]));
            let md: MetadataResponse = conn.call(ApiKey::Metadata, meta_v, &req).await?;
            let brokers: HashMap<i32, String> = md
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
                .collect();
            for t in md.topics.iter().filter(|t| t.error_code == 0) {
                for p in &t.partitions {
                    if let Some(addr) = brokers.get(&p.leader_id.0) {
                        leaders.insert(p.partition_index, addr.clone());
                    }
                }
            }
        }
        // One partition per Fetch: a broker may fill a response's byte limit with the
        // first partition's batch and return nothing for the others.
        let ready: Vec<(i32, i64, String)> = pending
            .iter()
            .filter_map(|(p, o)| leaders.get(p).map(|l| (*p, *o, l.clone())))
            .collect();
        for (partition, want, leader) in ready {
            if !conns.contains_key(&leader) {
                conns.insert(leader.clone(), Conn::connect(&leader).await?);
            }
            let c = conns.get_mut(&leader).expect("inserted");
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(20)
                .with_min_bytes(1)
                .with_max_bytes(1 << 16)
                .with_isolation_level(0)
                .with_session_epoch(-1)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(partition)
                                .with_fetch_offset(want)
                                .with_partition_max_bytes(1 << 14),
                        ]),
                ]);
            let resp: FetchResponse = c.call(ApiKey::Fetch, fetch_v, &req).await?;
            let debug = std::env::var_os("LOADGEN_DEBUG").is_some();
            for p in resp.responses.iter().flat_map(|t| &t.partitions) {
                if p.partition_index != partition {
                    continue;
                }
                let last = last_offset(p.records.as_deref().unwrap_or(&[]));
                if debug {
                    eprintln!(
                        "loadgen: DC2 fetch p{partition} at {want}: error {} high watermark {} \
                         last offset returned {last}",
                        p.error_code, p.high_watermark
                    );
                }
                if p.error_code == 6 {
                    leaders.remove(&partition); // NOT_LEADER_OR_FOLLOWER
                }
                if p.error_code == 0 && last >= want {
                    pending.remove(&partition);
                }
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The highest offset covered by the record batches in `records` (-1 when none);
/// a partial batch at the end still names its offsets in its header.
fn last_offset(mut records: &[u8]) -> i64 {
    let mut last = -1;
    while records.len() >= 27 {
        let base = i64::from_be_bytes(records[0..8].try_into().expect("8 bytes"));
        let len = i32::from_be_bytes(records[8..12].try_into().expect("4 bytes"));
        let delta = i32::from_be_bytes(records[23..27].try_into().expect("4 bytes"));
        last = last.max(base + i64::from(delta));
        let total = 12 + len.max(0) as usize;
        if len <= 0 || total > records.len() {
            break;
        }
        records = &records[total..];
    }
    last
}

// ---------------------------------------------------------------------------- sink

struct SinkState {
    host: String,
    port: i32,
    partitions: i32,
    /// Next offset per (topic, partition), so acks look like a broker's.
    offsets: Mutex<HashMap<(String, i32), i64>>,
    next_producer_id: AtomicU64,
}

async fn run_sink(args: SinkArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let advertise = args.advertise.unwrap_or_else(|| local.to_string());
    let (host, port) = advertise
        .rsplit_once(':')
        .context("--advertise must be HOST:PORT")?;
    let state = Arc::new(SinkState {
        host: host.to_string(),
        port: port.parse().context("advertised port")?,
        partitions: args.partitions,
        offsets: Mutex::new(HashMap::new()),
        next_producer_id: AtomicU64::new(1000),
    });
    eprintln!("loadgen sink: listening on {local}, advertising {advertise}");
    loop {
        let (sock, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = sink_conn(sock, state).await {
                eprintln!("loadgen sink: connection ended: {e:#}");
            }
        });
    }
}

async fn sink_conn(sock: TcpStream, state: Arc<SinkState>) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        let len = match rd.read_i32().await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if !(8..=100 << 20).contains(&len) {
            bail!("bad frame length {len}");
        }
        let mut frame = BytesMut::zeroed(len as usize);
        rd.read_exact(&mut frame).await?;
        sink_handle(&state, frame.freeze(), &mut out)?;
        // Answer a pipelined burst with one write.
        if rd.buffer().is_empty() && !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
}

fn sink_versions() -> Vec<ApiVersion> {
    [
        (ApiKey::Produce, 3, 12),
        (ApiKey::Metadata, 0, 12),
        (ApiKey::ApiVersions, 0, 3),
        (ApiKey::InitProducerId, 0, 4),
    ]
    .into_iter()
    .map(|(k, min, max)| {
        ApiVersion::default()
            .with_api_key(k as i16)
            .with_min_version(min)
            .with_max_version(max)
    })
    .collect()
}

fn put_response<T: Encodable>(
    out: &mut BytesMut,
    key: ApiKey,
    version: i16,
    header_version: i16,
    correlation: i32,
    body: &T,
) -> anyhow::Result<()> {
    let header = ResponseHeader::default().with_correlation_id(correlation);
    let size = header.compute_size(header_version)? + body.compute_size(version)?;
    out.reserve(size + 4);
    out.put_i32(size as i32);
    header.encode(out, header_version)?;
    body.encode(out, version)
        .with_context(|| format!("encode {key:?} v{version}"))?;
    Ok(())
}

fn sink_handle(state: &SinkState, mut frame: Bytes, out: &mut BytesMut) -> anyhow::Result<()> {
    let (key, version, correlation) = {
        let mut b = &frame[..8];
        (b.get_i16(), b.get_i16(), b.get_i32())
    };
    let api = ApiKey::try_from(key).map_err(|_| anyhow::anyhow!("unknown api key {key}"))?;
    if api == ApiKey::ApiVersions {
        // The response header is always v0 (KIP-511); an unsupported version gets the
        // v0 error body listing what is supported.
        let mut resp = ApiVersionsResponse::default().with_api_keys(sink_versions());
        let v = if version > 3 {
            resp.error_code = 35;
            0
        } else {
            version
        };
        return put_response(out, api, v, 0, correlation, &resp);
    }
    RequestHeader::decode(&mut frame, api.request_header_version(version))?;
    let rhv = api.response_header_version(version);
    match api {
        ApiKey::Metadata => {
            let req = MetadataRequest::decode(&mut frame, version)?;
            let topics = req
                .topics
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| t.name)
                .map(|name| {
                    MetadataResponseTopic::default()
                        .with_name(Some(name))
                        .with_partitions(
                            (0..state.partitions)
                                .map(|p| {
                                    MetadataResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_leader_id(BrokerId(1))
                                        .with_leader_epoch(0)
                                        .with_replica_nodes(vec![BrokerId(1)])
                                        .with_isr_nodes(vec![BrokerId(1)])
                                })
                                .collect(),
                        )
                })
                .collect();
            let resp = MetadataResponse::default()
                .with_brokers(vec![
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(1))
                        .with_host(StrBytes::from_string(state.host.clone()))
                        .with_port(state.port),
                ])
                .with_cluster_id(Some(StrBytes::from_static_str("sink")))
                .with_controller_id(BrokerId(1))
                .with_topics(topics);
            put_response(out, api, version, rhv, correlation, &resp)
        }
        ApiKey::InitProducerId => {
            let id = state.next_producer_id.fetch_add(1, Ordering::Relaxed) as i64;
            let resp = InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0);
            put_response(out, api, version, rhv, correlation, &resp)
        }
        ApiKey::Produce => {
            let req = ProduceRequest::decode(&mut frame, version)?;
            if req.acks == 0 {
                return Ok(());
            }
            let mut offsets = state.offsets.lock().expect("lock");
            let responses = req
                .topic_data
                .iter()
                .map(|t| {
                    let parts = t
                        .partition_data
                        .iter()
                        .map(|p| {
                            let count = p
                                .records
                                .as_deref()
                                .and_then(|r| r.get(57..61))
                                .map_or(1, |c| {
                                    i64::from(i32::from_be_bytes(c.try_into().expect("4 bytes")))
                                });
                            let next = offsets.entry((t.name.0.to_string(), p.index)).or_insert(0);
                            let base = *next;
                            *next += count.max(1);
                            PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_base_offset(base)
                                .with_log_append_time_ms(-1)
                        })
                        .collect();
                    TopicProduceResponse::default()
                        .with_name(t.name.clone())
                        .with_partition_responses(parts)
                })
                .collect();
            drop(offsets);
            let resp = ProduceResponse::default().with_responses(responses);
            put_response(out, api, version, rhv, correlation, &resp)
        }
        other => bail!("sink does not answer {other:?}"),
    }
}
