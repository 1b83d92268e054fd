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
//! Two more signals serve the replicator (`tier`), see [`Hooks`]: a [`Lease`] that
//! the DC2 senders check before writing a request (so an instance that was frozen
//! past its session timeout sends nothing once it runs again, before this loop has
//! even noticed), and a handshake before rejoining: the member rejoins only once the
//! replicator says the generation's partitions are released (their sends to DC2
//! answered), so no batch of a deposed owner lands after the new owner looked at DC2.
//! proto-tests/group.rs runs this against a real broker's coordinator.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Until when this member may act on its assignment: the last answered heartbeat plus
/// the session timeout minus one heartbeat interval (before the coordinator can have
/// given the partitions to someone else). Read with a monotonic clock, which keeps
/// running while the process is stopped (SIGSTOP), so a frozen member finds it expired.
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    /// Milliseconds after `base`; 0: no lease.
    until_ms: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }
}

impl Lease {
    pub fn valid(&self) -> bool {
        let until = self.until_ms.load(Ordering::Acquire);
        until > 0 && (self.base.elapsed().as_millis() as u64) < until
    }

    fn grant(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.base).as_millis() as u64;
        self.until_ms.store(ms.max(1), Ordering::Release);
    }

    fn end(&self) {
        self.until_ms.store(0, Ordering::Release);
    }
}

/// What the replicator gets besides the assignment.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub lease: Arc<Lease>,
    /// The replicator publishes here the last generation whose partitions it has
    /// released; `None`: nobody waits for it (the member rejoins at once).
    pub released: Option<watch::Receiver<i32>>,
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
    run_with(client, settings, partitions, tx, Hooks::default(), stop).await
}

/// [`run`] with the replicator's lease and release handshake.
pub async fn run_with(
    client: Client,
    settings: GroupSettings,
    partitions: PartitionSource,
    tx: watch::Sender<Option<Assignment>>,
    mut hooks: Hooks,
    stop: CancellationToken,
) {
    let mut member_id = String::new();
    let mut owned: Vec<TopicPartition> = Vec::new();
    let mut backoff = client.backoff();
    while !stop.is_cancelled() {
        hooks.lease.end();
        tx.send_replace(None);
        let mut generation = None;
        let round = tokio::select! {
            r = one_generation(&client, &settings, &partitions, &tx, &hooks.lease, &mut generation, &mut member_id, &mut owned, &stop) => r,
            _ = stop.cancelled() => Ok(()),
        };
        hooks.lease.end();
        tx.send_replace(None);
        if let (Some(g), Some(released)) = (generation, hooks.released.as_mut()) {
            // Rejoining before the partitions are released could let their new owner
            // start while this instance's batches are still on the way to DC2. A
            // member that takes longer than the rebalance timeout is dropped anyway.
            let wait = settings.rebalance_timeout.mul_f64(0.75);
            let done = tokio::time::timeout(wait, released.wait_for(|&r| r >= g)).await;
            if done.is_err() {
                tracing::warn!(group = %settings.group, generation = g, "partitions not released in time; rejoining anyway");
            }
        }
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
#[allow(clippy::too_many_arguments)]
async fn one_generation(
    client: &Client,
    settings: &GroupSettings,
    partitions: &PartitionSource,
    tx: &watch::Sender<Option<Assignment>>,
    lease: &Lease,
    generation: &mut Option<i32>,
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
    *generation = Some(joined.generation);
    let doubt_after = settings
        .session_timeout
        .saturating_sub(settings.heartbeat_interval);
    let mut last_ok = Instant::now();
    lease.grant(last_ok + doubt_after);
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
    // The leader also rejoins when the partitions to share changed (a new topic or
    // more partitions), so they get an owner.
    let mut watched = partitions.clone();
    watched.mark_unchanged();
    loop {
        let changed = tokio::select! {
            _ = tokio::time::sleep(settings.heartbeat_interval) => false,
            c = watched.changed(), if joined.is_leader() => c.is_ok(),
            _ = stop.cancelled() => return Ok(()),
        };
        if changed {
            // Kafka rebalances when its leader rejoins; Tansu 0.6 answers the rejoin
            // with the same generation. Leaving and joining as a new member makes
            // every coordinator rebalance (the partitions owned are still announced).
            tracing::info!(group, "the partitions to replicate changed; rebalancing");
            if let Err(e) = client.leave_group(coord, group, &joined.member_id).await {
                tracing::debug!(group, error = %e, "leaving to rebalance failed; rejoining");
            }
            member_id.clear();
            return Ok(());
        }
        let sent_at = Instant::now();
        let beat = tokio::time::timeout(
            doubt_after
                .saturating_sub(last_ok.elapsed())
                .max(Duration::from_millis(1)),
            client.heartbeat(coord, group, joined.generation, &joined.member_id),
        )
        .await;
        match beat {
            Ok(Ok(())) => {
                // The coordinator's session counts from when it got the heartbeat, at
                // the earliest when it was sent.
                last_ok = sent_at;
                lease.grant(last_ok + doubt_after);
            }
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
