//! Membership of a replication group: an instance joins the group at DC1's group
//! coordinator, the group's leader computes who replicates which partition
//! (`assign`), and heartbeats keep the membership alive. What this instance owns is
//! published on a watch channel:
//! - `Some(assignment)` while the membership is sure (the generation formed and the
//!   last heartbeat was answered within the session timeout);
//! - `None` as soon as it is in doubt: a rebalance started, a heartbeat was refused,
//!   or no heartbeat was answered for longer than the session timeout minus one
//!   heartbeat interval. Whoever replicates stops sending for every partition then,
//!   before the coordinator can have given them to another member.
//!
//! Rebalances are eager (every member gives up everything, then rejoins) and the
//! assignment sticky, so a partition that stays with its owner resumes at once.
//!
//! The replicator does not take its partitions from here yet: `replication.instances`
//! and `replication.instance` still decide ownership. proto-tests/group.rs runs this
//! against a real broker's coordinator.

use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::assign::{self, PROTOCOL, PROTOCOL_TYPE};
use crate::client::group::{JoinSpec, Joined};
use crate::client::{Client, ClientError};
use crate::tee::TopicPartition;

/// How an instance takes part in a replication group.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub group: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
}

/// What this instance owns in one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub generation: i32,
    pub member_id: String,
    pub leader: bool,
    pub partitions: Vec<TopicPartition>,
}

/// The partitions the group replicates, as this instance's discovery sees them: the
/// leader assigns what its own view holds when the generation forms.
pub type PartitionSource = watch::Receiver<Vec<TopicPartition>>;

/// Takes part in the group until `stop`, then leaves it (so the others rebalance at
/// once). `client` must be a DC1 client of its own whose request timeout is longer
/// than the rebalance timeout (JoinGroup answers only when the generation forms).
pub async fn run(
    client: Client,
    settings: GroupSettings,
    partitions: PartitionSource,
    tx: watch::Sender<Option<Assignment>>,
    stop: CancellationToken,
) {
    let mut member_id = String::new();
    let mut owned: Vec<TopicPartition> = Vec::new();
    let mut backoff = client.backoff();
    while !stop.is_cancelled() {
        tx.send_replace(None);
        let round = tokio::select! {
            r = one_generation(&client, &settings, &partitions, &tx, &mut member_id, &mut owned, &stop) => r,
            _ = stop.cancelled() => Ok(()),
        };
        tx.send_replace(None);
        match round {
            Ok(()) => backoff.reset(),
            Err(e) => {
                if matches!(
                    e.kafka_error(),
                    Some(ResponseError::UnknownMemberId | ResponseError::FencedInstanceId)
                ) {
                    // The coordinator forgot this member (its session expired): join
                    // as a new one, owning nothing.
                    member_id.clear();
                    owned.clear();
                }
                tracing::warn!(group = %settings.group, error = %e, "replication group membership lost; joining again");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }
    if !member_id.is_empty()
        && let Ok(coord) = client.find_group_coordinator(&settings.group).await
    {
        match client.leave_group(coord, &settings.group, &member_id).await {
            Ok(()) => {
                tracing::info!(group = %settings.group, member = %member_id, "left the replication group")
            }
            Err(e) => {
                tracing::warn!(group = %settings.group, error = %e, "could not leave the replication group; the others take over after the session timeout")
            }
        }
    }
}

/// Joins, syncs and heartbeats through one generation. `Ok` when a rebalance asks
/// to rejoin; `Err` for anything else.
async fn one_generation(
    client: &Client,
    settings: &GroupSettings,
    partitions: &PartitionSource,
    tx: &watch::Sender<Option<Assignment>>,
    member_id: &mut String,
    owned: &mut Vec<TopicPartition>,
    stop: &CancellationToken,
) -> Result<(), ClientError> {
    let group = settings.group.as_str();
    let coord = client.find_group_coordinator(group).await?;
    let meta = assign::encode(owned);
    let protocols = [(PROTOCOL, meta)];
    let spec = JoinSpec {
        group,
        member_id,
        session_timeout: settings.session_timeout,
        rebalance_timeout: settings.rebalance_timeout,
        protocol_type: PROTOCOL_TYPE,
        protocols: &protocols,
    };
    let joined = client.join_group(coord, &spec).await?;
    *member_id = joined.member_id.clone();
    let plan = if joined.is_leader() {
        leader_plan(group, &joined, partitions.borrow().clone())
    } else {
        Vec::new()
    };
    let mine = match client
        .sync_group(coord, group, &joined, PROTOCOL_TYPE, plan)
        .await
    {
        Ok(m) => m,
        Err(e) if rejoin(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mine = match assign::decode(&mine) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(group, error = %e, "the group leader's assignment for this instance cannot be read; owning nothing this generation");
            Vec::new()
        }
    };
    *owned = mine.clone();
    tracing::info!(
        group, generation = joined.generation, member = %joined.member_id,
        leader = joined.is_leader(), partitions = mine.len(),
        "replication group generation formed"
    );
    tx.send_replace(Some(Assignment {
        generation: joined.generation,
        member_id: joined.member_id.clone(),
        leader: joined.is_leader(),
        partitions: mine,
    }));
    // Heartbeats. The membership is in doubt once no heartbeat was answered for the
    // session timeout minus one interval: the coordinator may expire it any moment.
    let doubt_after = settings
        .session_timeout
        .saturating_sub(settings.heartbeat_interval);
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.heartbeat_interval) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        let beat = tokio::time::timeout(
            doubt_after
                .saturating_sub(last_ok.elapsed())
                .max(Duration::from_millis(1)),
            client.heartbeat(coord, group, joined.generation, &joined.member_id),
        )
        .await;
        match beat {
            Ok(Ok(())) => last_ok = Instant::now(),
            Ok(Err(e)) if rejoin(&e) => return Ok(()),
            Ok(Err(e)) if e.kafka_error().is_some() => return Err(e),
            Ok(Err(e)) => {
                tracing::debug!(group, error = %e, "heartbeat failed; trying again");
            }
            Err(_) => {}
        }
        if last_ok.elapsed() >= doubt_after {
            // `run` withdraws the assignment as soon as this returns.
            return Err(ClientError::NoBroker {
                cluster: client.cluster(),
                detail: format!(
                    "no heartbeat of group {group} answered for {:?}",
                    last_ok.elapsed()
                ),
            });
        }
    }
}

/// A rebalance is under way: rejoin with the same member id.
fn rejoin(e: &ClientError) -> bool {
    matches!(
        e.kafka_error(),
        Some(ResponseError::RebalanceInProgress | ResponseError::IllegalGeneration)
    )
}

/// The leader's assignment, one encoded entry per member.
fn leader_plan(
    group: &str,
    joined: &Joined,
    partitions: Vec<TopicPartition>,
) -> Vec<(String, bytes::Bytes)> {
    let members: Vec<(String, Vec<TopicPartition>)> = joined
        .members
        .iter()
        .map(|(id, meta)| {
            let owned = assign::decode(meta).unwrap_or_else(|e| {
                tracing::warn!(group, member = %id, error = %e, "a member's metadata cannot be read; taking it as owning nothing");
                Vec::new()
            });
            (id.clone(), owned)
        })
        .collect();
    assign::assign(&members, &partitions)
        .into_iter()
        .map(|(id, ps)| (id, assign::encode(&ps)))
        .collect()
}
