use super::*;
use crate::config::Config;
use std::collections::BTreeMap;

/// A replicator view with fixed rows and totals, changeable between reports.
#[derive(Default)]
struct View {
    rows: Mutex<Vec<PartitionState>>,
    totals: Mutex<ReplicationTotals>,
    group: Option<GroupState>,
}

impl ReplicationView for View {
    fn partitions(&self) -> Vec<PartitionState> {
        lock(&self.rows).clone()
    }

    fn totals(&self) -> ReplicationTotals {
        *lock(&self.totals)
    }

    fn group(&self) -> Option<GroupState> {
        self.group.clone()
    }
}

fn row(topic: &str, partition: i32, offset: i64, lag: u64, state: &str) -> PartitionState {
    PartitionState {
        topic: topic.into(),
        partition: Some(partition),
        replicated_offset: Some(offset),
        lag_records: Some(lag),
        lag_bytes: Some(lag * 100),
        pending_bytes: Some(0),
        oldest_pending_seconds: Some(0.0),
        records_per_second: None,
        state: state.into(),
        owner: None,
    }
}

fn status_with(view: Option<Arc<View>>) -> (Arc<Status>, Arc<ProxyStats>) {
    let mut cfg = Config::default();
    cfg.source.bootstrap = vec!["127.0.0.1:1".into()];
    let router = Router::new(
        "127.0.0.1".parse().expect("ip"),
        "127.0.0.1".into(),
        0,
        BTreeMap::new(),
    );
    let tee = view.map(|view| {
        struct NoSink;
        impl crate::tee::capture::Sink for NoSink {
            fn push(&self, _: crate::tee::TopicPartition, _: crate::tee::Pending) {}
            fn wants(&self, _: &str) -> bool {
                true
            }
        }
        let budget = Arc::new(Budget::new(4096));
        let capture = Capture::new(Arc::new(NoSink), budget.clone(), Duration::from_secs(1));
        TeeSources {
            budget,
            capture,
            replication: view,
        }
    });
    let proxy = Arc::new(ProxyStats::default());
    let addr = "127.0.0.1:9092".parse().expect("addr");
    (Status::new(&cfg, addr, router, proxy.clone(), tee), proxy)
}

#[test]
fn readiness_needs_listeners_and_a_recent_dc1() {
    let (s, _) = status_with(None);
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

#[test]
fn report_is_the_parts_snapshots() {
    let view = Arc::new(View::default());
    *lock(&view.rows) = vec![row("orders", 0, 41, 0, "in sync")];
    *lock(&view.totals) = ReplicationTotals {
        replicated_records: 90,
        replicated_bytes: 9000,
        catchup_batches: 2,
        dc2_errors: 3,
        data_lost_records: 1,
    };
    let (s, proxy) = status_with(Some(view));
    let open = proxy.accepted();
    let _closed = proxy.accepted();
    drop(_closed);
    proxy.refused();
    let peek = crate::protocol::RequestHeaderPeek {
        api_key: 18,
        api_version: 3,
        correlation_id: 1,
    };
    proxy.request(&peek, 20);
    proxy.request(&peek, 20);
    let r = s.report();
    drop(open);
    assert_eq!(
        r.connections,
        Connections {
            open: 1,
            accepted_total: 2,
            refused_total: 1
        }
    );
    assert_eq!(r.requests_total, 2);
    let rep = &r.replication;
    assert!(rep.enabled);
    assert_eq!(rep.detail, "replicator");
    assert_eq!((rep.pending_bytes, rep.pending_bytes_limit), (0, 4096));
    assert_eq!(rep.acked_records_total, 0);
    assert_eq!(
        (
            rep.replicated_records_total,
            rep.replicated_bytes_total,
            rep.catchup_batches_total,
            rep.dc2_errors_total,
            rep.data_lost_records_total
        ),
        (90, 9000, 2, 3, 1)
    );
    assert_eq!(rep.partitions, vec![row("orders", 0, 41, 0, "in sync")]);
    let t = render_table(&r);
    for needle in [
        "connections 1 open, 2 accepted, 1 refused",
        "requests 2",
        "LOST 1",
    ] {
        assert!(t.contains(needle), "{needle} missing:\n{t}");
    }
}

#[test]
fn rows_keep_the_replicators_state_and_gain_rates() {
    let view = Arc::new(View::default());
    *lock(&view.rows) = vec![
        row("two", 0, 5, 3, "replicating"),
        row("two", 1, 7, 0, "held: the DC2 topic does not exist"),
    ];
    let (s, _) = status_with(Some(view.clone()));
    s.sample_rates();
    std::thread::sleep(Duration::from_millis(50));
    *lock(&view.rows) = vec![
        row("two", 0, 105, 0, "in sync"),
        row("two", 1, 7, 0, "held: the DC2 topic does not exist"),
    ];
    lock(&view.totals).replicated_records = 100;
    s.sample_rates();
    let r = s.report();
    let rows = &r.replication.partitions;
    assert_eq!(rows[0].state, "in sync");
    assert_eq!(rows[0].replicated_offset, Some(105));
    assert!(rows[0].records_per_second.is_some_and(|v| v > 0.0), "{r:?}");
    assert_eq!(rows[1].records_per_second, Some(0.0));
    assert_eq!(rows[1].state, "held: the DC2 topic does not exist");
    assert!(r.replication.records_per_second.is_some_and(|v| v > 0.0));
    let table = render_table(&r);
    for needle in ["TOPIC", "IN DC2 UP TO", "in sync", "105", "held"] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }
    // Survives a JSON round trip (what `kafka-tee status` reads).
    let json = serde_json::to_string(&r).expect("json");
    let back: StatusReport = serde_json::from_str(&json).expect("parse");
    // Floats may lose their last bit through JSON; what a person reads may not.
    assert_eq!(render_table(&back), render_table(&r));
}

#[test]
fn group_line_and_owner_column() {
    let view = Arc::new(View {
        group: Some(GroupState {
            group: "kafka-tee-replication".into(),
            generation: 4,
            member_id: "kafka-tee-a1".into(),
            leader: true,
            owned_partitions: 1,
            rebalances_total: 3,
            last_takeover_seconds: Some(2.5),
        }),
        ..View::default()
    });
    *lock(&view.rows) = vec![
        PartitionState {
            owner: Some("kafka-tee-a1".into()),
            ..row("orders", 0, 41, 0, "in sync")
        },
        row("orders", 1, 7, 0, "in sync"),
    ];
    let (s, _) = status_with(Some(view));
    let r = s.report();
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
    let line = |p: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().take(2).eq(["orders", p]))
            .copied()
            .unwrap_or_default()
    };
    assert!(line("0").ends_with("in sync  kafka-tee-a1"), "{t}");
    // A row without an owner shows a dash in the column.
    assert!(line("1").ends_with("in sync  -"), "{t}");

    let json = serde_json::to_string(&r).expect("json");
    let back: StatusReport = serde_json::from_str(&json).expect("parse");
    assert_eq!(back.group, r.group);
    assert_eq!(back.replication.partitions, r.replication.partitions);
    assert_eq!(render_table(&back), t);
}

#[test]
fn no_group_no_owner_column_and_older_json_parses() {
    let view = Arc::new(View::default());
    *lock(&view.rows) = vec![row("one", 0, 10, 0, "in sync")];
    let (s, _) = status_with(Some(view));
    let r = s.report();
    assert_eq!(r.group, None);
    let t = render_table(&r);
    assert!(!t.contains("OWNER"), "{t}");
    assert!(!t.contains("group "), "{t}");
    // A report from a version without groups or pending bytes per row.
    let mut json = serde_json::to_value(&r).expect("json");
    json.as_object_mut().expect("object").remove("group");
    for p in json["replication"]["partitions"]
        .as_array_mut()
        .expect("rows")
    {
        let p = p.as_object_mut().expect("row");
        p.remove("owner");
        p.remove("pending_bytes");
    }
    assert!(!json.to_string().contains("owner"));
    let back: StatusReport = serde_json::from_value(json).expect("older report parses");
    assert_eq!(back.group, None);
    assert_eq!(back.replication.partitions[0].pending_bytes, None);
    assert_eq!(render_table(&back), t);
}

#[test]
fn table_without_replication_says_so() {
    let (s, _) = status_with(None);
    let r = s.report();
    assert!(!r.replication.enabled);
    assert_eq!(r.replication.detail, "none");
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
