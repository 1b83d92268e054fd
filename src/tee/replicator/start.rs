//! Starting the replicator: settings from the configuration, the checkpoint loaded,
//! the shared state built, and the background tasks (replication group, checkpoint,
//! gauges, consumer group offsets) spawned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::checkpoint::Checkpoint;
use super::identity::{Identity, IdentityCell};
use super::{
    Progress, Replicator, ReplicatorHandle, Settings, Shared, TopicFilter, durable, group_offsets,
    membership, offset_map, sender, tier, topics, view, window,
};
use crate::client::{Client, ClientConfig, Cluster};
use crate::config::{ClusterConfig, Config};
use crate::tee::TopicPartition;

pub(super) fn client_config(
    cluster: Cluster,
    target: &ClusterConfig,
    config: &Config,
) -> anyhow::Result<ClientConfig> {
    let r = &config.replication;
    let mut c = ClientConfig::new(cluster, target.bootstrap.clone()).secured(target)?;
    c.connect_timeout = config.connect_timeout();
    c.request_timeout = Duration::from_millis(r.request_timeout_ms.max(1));
    c.retry_backoff = Duration::from_millis(r.retry_backoff_ms.max(1));
    c.retry_backoff_max = Duration::from_millis(r.retry_backoff_max_ms.max(r.retry_backoff_ms));
    c.max_frame_bytes = config.proxy.max_frame_bytes;
    c.client_id = "kafka-tee-replicator".into();
    // Batches of many partitions and many batches of one travel on one connection
    // per broker; the window bounds them (in bytes), not the connection.
    c.max_in_flight_per_connection = sender::MAX_REQUESTS_IN_FLIGHT;
    c.socket_send_buffer_bytes = r.socket_send_buffer_bytes;
    c.socket_receive_buffer_bytes = r.socket_receive_buffer_bytes;
    Ok(c)
}

/// Starts the replicator: loads the checkpoint (if `state.dir` is set) and starts the
/// checkpoint timer. Nothing connects yet; DC2 is reached on the first push, so a
/// DC2 outage at start-up does not keep the proxy from serving.
pub async fn start(config: &Config) -> anyhow::Result<Replicator> {
    anyhow::ensure!(
        config.replication_enabled(),
        "replication needs target.bootstrap (DC2 addresses)"
    );
    let r = &config.replication;
    let filter = TopicFilter::new(&r.include, &r.exclude).context("replication include/exclude")?;
    let settings = Settings {
        topic_prefix: r.topic_prefix.clone(),
        create_topics: r.create_topics,
        window: window::Limits {
            batches: r.max_in_flight_per_partition.max(1),
            bytes: r.max_in_flight_bytes_per_partition.max(1),
        },
        max_in_flight_bytes: r.max_in_flight_bytes.max(1),
        request_timeout: Duration::from_millis(r.request_timeout_ms.max(1)),
        retry_backoff: Duration::from_millis(r.retry_backoff_ms.max(1)),
        retry_backoff_max: Duration::from_millis(r.retry_backoff_max_ms.max(r.retry_backoff_ms)),
        checkpoint_interval: Duration::from_millis(r.checkpoint_interval_ms.max(10)),
        follow_interval: (r.follow_interval_ms > 0)
            .then(|| Duration::from_millis(r.follow_interval_ms.max(10))),
        state_dir: config.state.dir.clone(),
    };
    let progress = DashMap::new();
    let offsets = DashMap::new();
    let identity = IdentityCell::default();
    let mut loaded_partitions = Vec::new();
    if let Some(dir) = &settings.state_dir {
        let dir = dir.clone();
        let loaded = tokio::task::spawn_blocking(move || Checkpoint::load(&dir))
            .await
            .context("checkpoint loader")??;
        if let Some(cp) = loaded {
            if cp.producer_id >= 0 {
                identity.set(Identity {
                    producer_id: cp.producer_id,
                    epoch: cp.producer_epoch,
                    generation: 1,
                });
            }
            for p in &cp.partitions {
                let tp = TopicPartition {
                    topic: Arc::from(p.topic.as_str()),
                    partition: p.partition,
                };
                if !p.offset_map.is_empty() {
                    match offset_map::OffsetMap::decode(&p.offset_map) {
                        Ok(m) => {
                            offsets.insert(tp.clone(), m);
                        }
                        Err(e) => {
                            tracing::warn!(partition = %tp, error = %e, "offset map in the checkpoint not used: consumer offsets before this start are not translated");
                        }
                    }
                }
                progress.insert(
                    tp,
                    Progress {
                        offset: p.offset,
                        producer_id: p.producer_id,
                        producer_epoch: p.producer_epoch,
                        next_sequence: p.next_sequence,
                        dc2_next: None,
                    },
                );
            }
            tracing::info!(
                partitions = cp.partitions.len(),
                producer_id = cp.producer_id,
                "replicator checkpoint loaded"
            );
            loaded_partitions = cp.partitions;
        }
    }
    let shared = Arc::new(Shared {
        dc1: Client::new(client_config(Cluster::Dc1, &config.source, config)?),
        dc2: Client::new(client_config(Cluster::Dc2, &config.target, config)?),
        settings,
        filter,
        gates: topics::TopicGates::default(),
        identity,
        progress,
        offsets,
        progress_version: AtomicU64::new(0),
        in_flight_bytes: std::sync::atomic::AtomicUsize::new(0),
        durable: durable::Durability::new(&loaded_partitions),
        committed: Notify::new(),
        workers: DashMap::new(),
        states: DashMap::new(),
        tasks: Mutex::new(Vec::new()),
        senders: Mutex::new(HashMap::new()),
        sender_tasks: Mutex::new(Vec::new()),
        closed: AtomicBool::new(false),
        tier: r.group.clone().map(tier::Tier::new),
        draining: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
        runtime: tokio::runtime::Handle::current(),
        counters: Default::default(),
    });
    let handle = ReplicatorHandle {
        shared: shared.clone(),
    };
    let tier_stop = CancellationToken::new();
    let mut tier_task = None;
    if let Some(group) = &r.group {
        // JoinGroup answers only when the generation forms: the member's own client
        // waits longer than the rebalance timeout.
        let mut mc = client_config(Cluster::Dc1, &config.source, config)?;
        let rebalance = Duration::from_millis(r.group_rebalance_timeout_ms);
        mc.request_timeout = rebalance + Duration::from_secs(5);
        mc.client_id = "kafka-tee-group".into();
        let settings = membership::GroupSettings {
            group: group.clone(),
            session_timeout: Duration::from_millis(r.group_session_timeout_ms),
            rebalance_timeout: rebalance,
            heartbeat_interval: Duration::from_millis(r.group_heartbeat_interval_ms),
        };
        tracing::info!(group = %group, "replicating the partitions the replication group assigns this instance");
        tier_task = Some(tokio::spawn(tier::run(
            handle.clone(),
            Client::new(mc),
            settings,
            tier_stop.clone(),
        )));
    } else {
        // Partitions in the checkpoint resume at once: what DC1 acknowledged after the
        // checkpoint is copied even if they get no new records.
        let restored: Vec<TopicPartition> = shared
            .progress
            .iter()
            .map(|e| e.key().clone())
            .filter(|tp| shared.filter.wants(&tp.topic))
            .collect();
        for tp in restored {
            let tx = handle.spawn_worker(tp.clone());
            shared.workers.insert(tp, tx);
        }
    }
    let checkpoint_stop = CancellationToken::new();
    let checkpoint_task = shared.settings.state_dir.clone().map(|dir| {
        tokio::spawn(durable::checkpoint_loop(
            shared.clone(),
            dir,
            checkpoint_stop.clone(),
        ))
    });
    let gauges_task = Some(tokio::spawn(view::gauges_loop(
        handle.clone(),
        checkpoint_stop.clone(),
    )));
    let group_offsets_task = group_offsets::Selection::new(&r.group_offsets)?.map(|sel| {
        tokio::spawn(group_offsets::run(
            handle.clone(),
            sel,
            checkpoint_stop.clone(),
        ))
    });
    tracing::info!(
        dc2 = ?config.target.bootstrap, dc2_tls = config.target.tls.enabled,
        dc1_tls = config.source.tls.enabled, prefix = %shared.settings.topic_prefix,
        "replicator started"
    );
    Ok(Replicator {
        shared,
        tier_task,
        tier_stop,
        checkpoint_task,
        gauges_task,
        group_offsets_task,
        checkpoint_stop,
    })
}
