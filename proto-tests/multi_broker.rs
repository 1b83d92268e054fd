//! The proxy in front of a three-broker DC1 (librdkafka's mock cluster on real sockets),
//! driven by a real librdkafka client: every broker address the client sees is a proxy
//! address, produce and consume work across brokers, and a leader moving between
//! brokers is followed.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use kafka_tee::config::Config;

struct Proxy {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_proxy(source: &str) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config::default();
    config.proxy.listen = addr.to_string();
    config.source.bootstrap = source.split(',').map(str::to_owned).collect();
    config.validate().expect("config");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(kafka_tee::server::run(config, listener, shutdown.clone()));
    Proxy {
        addr,
        shutdown,
        task,
    }
}

fn mock_ports(cluster: &MockCluster<'_, impl rdkafka::ClientContext>) -> Vec<u16> {
    cluster
        .bootstrap_servers()
        .split(',')
        .filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .collect()
}

async fn produce(bootstrap: &str, topic: &str, partitions: i32, from: usize, n: usize, acks: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", "0")
        .set("max.in.flight", "5")
        .create()
        .expect("producer");
    let mut waits = Vec::new();
    for i in from..from + n {
        let key = format!("k{i}");
        let value = format!("v{i}");
        let rec = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .partition(i as i32 % partitions);
        waits.push(
            producer
                .send_result(rec)
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    for w in waits {
        w.await.expect("delivery").expect("acked");
    }
}

fn consume_all(
    bootstrap: &str,
    topic: &str,
    group: &str,
    expect: usize,
) -> BTreeMap<i32, Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut got: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut total = 0;
    while total < expect && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            got.entry(m.partition()).or_default().push(v);
            total += 1;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_leader_moves_and_addresses_stay_on_the_proxy() {
    let cluster = MockCluster::new(3).expect("mock cluster");
    let topic = "multi";
    cluster.create_topic(topic, 3, 1).expect("topic");
    for p in 0..3 {
        cluster
            .partition_leader(topic, p, Some(p + 1))
            .expect("leader");
    }
    cluster
        .coordinator(MockCoordinator::Group("g-multi".into()), 3)
        .expect("coordinator");
    let dc1_ports = mock_ports(&cluster);
    let proxy = start_proxy(&cluster.bootstrap_servers()).await;
    let bootstrap = proxy.addr.to_string();

    // Metadata seen through the proxy names only proxy ports, one per broker.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("client");
    let md =
        tokio::task::block_in_place(|| probe.fetch_metadata(Some(topic), Duration::from_secs(10)))
            .expect("metadata");
    let brokers: Vec<(i32, String, i32)> = md
        .brokers()
        .iter()
        .map(|b| (b.id(), b.host().to_owned(), b.port()))
        .collect();
    assert_eq!(brokers.len(), 3, "{brokers:?}");
    for (_, host, port) in &brokers {
        assert_eq!(host, "127.0.0.1");
        assert!(
            !dc1_ports.contains(&(*port as u16)),
            "DC1 port {port} leaked: {brokers:?}"
        );
        assert!(*port as u16 > proxy.addr.port(), "{brokers:?}");
    }

    produce(&bootstrap, topic, 3, 0, 300, "all").await;
    // Move partition 0 to another broker; the client must follow through the proxy.
    cluster
        .partition_leader(topic, 0, Some(2))
        .expect("move leader");
    produce(&bootstrap, topic, 3, 300, 300, "1").await;
    // acks=0: no responses, nothing in the in-flight queue.
    produce(&bootstrap, topic, 3, 600, 30, "0").await;

    let got = tokio::task::block_in_place(|| consume_all(&bootstrap, topic, "g-multi", 630));
    for p in 0..3 {
        let values = got.get(&p).cloned().unwrap_or_default();
        let want: Vec<String> = (0..630)
            .filter(|i| i % 3 == p as usize)
            .map(|i| format!("v{i}"))
            .collect();
        assert_eq!(values.len(), want.len(), "partition {p}");
        assert_eq!(values, want, "partition {p} order");
    }

    proxy.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), proxy.task)
        .await
        .expect("shutdown in time")
        .expect("join")
        .expect("clean exit");
}
