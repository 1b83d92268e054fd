//! Kafka's group membership and offset requests (FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups, ListGroups), each turned into a plain result
//! with the broker's error codes mapped to [`ClientError`]. The protocol inside the
//! group (what members announce and what the leader assigns) is the caller's: the
//! coordinator only passes those bytes along. Callers decide whether to retry.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    DescribeGroupsRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupRequest,
    join_group_request::JoinGroupRequestProtocol,
    leave_group_request::MemberIdentity,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::OffsetFetchRequestTopic,
    sync_group_request::SyncGroupRequestAssignment,
};
use kafka_protocol::protocol::StrBytes;

use super::ops::topic_name;
use super::{Client, ClientError, check};

/// FindCoordinator key type of a group (as opposed to a transactional id).
const KEY_TYPE_GROUP: i8 = 0;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn group_id(g: &str) -> GroupId {
    GroupId(s(g))
}

/// A member's timeouts and the protocols it offers, for [`Client::join_group`].
#[derive(Debug, Clone)]
pub struct JoinSpec<'a> {
    pub group: &'a str,
    /// Empty on the first join; the coordinator then gives one (KIP-394).
    pub member_id: &'a str,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: &'a str,
    /// (protocol name, member metadata) in order of preference.
    pub protocols: &'a [(&'a str, Bytes)],
}

/// What JoinGroup answered: the generation, this member's id, the leader and, for the
/// leader only, every member with the metadata it announced.
#[derive(Debug, Clone)]
pub struct Joined {
    pub generation: i32,
    pub member_id: String,
    pub leader: String,
    pub protocol: Option<String>,
    pub members: Vec<(String, Bytes)>,
}

impl Joined {
    pub fn is_leader(&self) -> bool {
        self.leader == self.member_id
    }
}

/// A group as its coordinator describes it (DescribeGroups), for status pages: who
/// the members are and what the leader assigned each of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupDescription {
    /// "Stable", "PreparingRebalance", "CompletingRebalance", "Empty" or "Dead".
    pub state: String,
    /// Empty when the group has no members.
    pub protocol_type: String,
    /// The protocol the generation chose; empty outside a stable generation.
    pub protocol: String,
    pub members: Vec<GroupMember>,
}

/// One member of a described group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    /// The bytes the leader assigned this member in the current generation (empty
    /// while a rebalance is under way); their format is the group protocol's.
    pub assignment: Bytes,
}

/// One committed position: (topic, partition, offset, metadata).
pub type Committed = (String, i32, i64, Option<String>);

/// (topic, partition) pairs as OffsetFetch asks for them: per topic (sorted), its
/// partitions.
pub fn by_topic(tps: impl IntoIterator<Item = (String, i32)>) -> Vec<(String, Vec<i32>)> {
    let mut out: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for (t, p) in tps {
        out.entry(t).or_default().push(p);
    }
    out.into_iter().collect()
}

impl Client {
    /// The broker id of `group`'s coordinator, known to the client's metadata (it is
    /// refreshed when the coordinator is a broker the client has not seen yet).
    pub async fn find_group_coordinator(&self, group: &str) -> Result<i32, ClientError> {
        let conn = self.any_connection().await?;
        let v = conn.version_for::<FindCoordinatorRequest>(0..=6)?;
        let mut req = FindCoordinatorRequest::default();
        if v >= 4 {
            req.coordinator_keys = vec![s(group)];
        } else {
            req.key = s(group);
        }
        if v >= 1 {
            req.key_type = KEY_TYPE_GROUP;
        }
        let resp = conn.call(&req, v).await?;
        let (code, node) = if v >= 4 {
            let c = resp
                .coordinators
                .into_iter()
                .next()
                .ok_or_else(|| ClientError::Protocol {
                    cluster: self.cluster(),
                    broker: -1,
                    message: format!("FindCoordinator for group {group} answered no coordinator"),
                })?;
            (c.error_code, c.node_id.0)
        } else {
            (resp.error_code, resp.node_id.0)
        };
        check(self.cluster(), code, || {
            format!("find the coordinator of group {group}")
        })?;
        if !self.brokers().contains_key(&node) {
            self.refresh_metadata(Some(&[])).await?;
        }
        Ok(node)
    }

    /// Joins (or rejoins) a group and waits for the generation to form. A first join
    /// that the coordinator answers with MEMBER_ID_REQUIRED is repeated with the
    /// member id it gave, as KIP-394 asks (Tansu answers so at every version).
    ///
    /// The coordinator holds the answer until every member has joined, up to the
    /// rebalance timeout: the client's request timeout must be longer than that, so
    /// group membership uses a client of its own.
    pub async fn join_group(&self, coord: i32, spec: &JoinSpec<'_>) -> Result<Joined, ClientError> {
        let conn = self.connection(coord).await?;
        let v = conn.version_for::<JoinGroupRequest>(1..=9)?;
        let mut member_id = spec.member_id.to_string();
        for _ in 0..2 {
            let mut req = JoinGroupRequest::default();
            req.group_id = group_id(spec.group);
            req.session_timeout_ms = millis(spec.session_timeout);
            req.rebalance_timeout_ms = millis(spec.rebalance_timeout);
            req.member_id = s(&member_id);
            req.protocol_type = s(spec.protocol_type);
            req.protocols = spec
                .protocols
                .iter()
                .map(|(name, meta)| {
                    let mut p = JoinGroupRequestProtocol::default();
                    p.name = s(name);
                    p.metadata = meta.clone();
                    p
                })
                .collect();
            let resp = conn.call(&req, v).await?;
            if ResponseError::try_from_code(resp.error_code)
                == Some(ResponseError::MemberIdRequired)
                && member_id.is_empty()
                && !resp.member_id.is_empty()
            {
                member_id = resp.member_id.to_string();
                continue;
            }
            check(self.cluster(), resp.error_code, || {
                format!("join group {}", spec.group)
            })?;
            return Ok(Joined {
                generation: resp.generation_id,
                member_id: resp.member_id.to_string(),
                leader: resp.leader.to_string(),
                protocol: resp.protocol_name.map(|p| p.to_string()),
                members: resp
                    .members
                    .into_iter()
                    .map(|m| (m.member_id.to_string(), m.metadata))
                    .collect(),
            });
        }
        Err(ClientError::Protocol {
            cluster: self.cluster(),
            broker: coord,
            message: format!(
                "group {}: the coordinator asked for a member id twice",
                spec.group
            ),
        })
    }

    /// Sends the leader's assignments (empty for the other members) and returns this
    /// member's own.
    pub async fn sync_group(
        &self,
        coord: i32,
        group: &str,
        joined: &Joined,
        protocol_type: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, ClientError> {
        let conn = self.connection(coord).await?;
        let v = conn.version_for::<SyncGroupRequest>(0..=5)?;
        let mut req = SyncGroupRequest::default();
        req.group_id = group_id(group);
        req.generation_id = joined.generation;
        req.member_id = s(&joined.member_id);
        if v >= 5 {
            req.protocol_type = Some(s(protocol_type));
            req.protocol_name = joined.protocol.as_deref().map(s);
        }
        req.assignments = assignments
            .into_iter()
            .map(|(m, a)| {
                let mut x = SyncGroupRequestAssignment::default();
                x.member_id = s(&m);
                x.assignment = a;
                x
            })
            .collect();
        let resp = conn.call(&req, v).await?;
        check(self.cluster(), resp.error_code, || {
            format!("sync group {group} (generation {})", joined.generation)
        })?;
        Ok(resp.assignment)
    }

    /// One heartbeat; REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION and UNKNOWN_MEMBER_ID
    /// come back as [`ClientError::Kafka`] for the caller to rejoin.
    pub async fn heartbeat(
        &self,
        coord: i32,
        group: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<(), ClientError> {
        let mut req = HeartbeatRequest::default();
        req.group_id = group_id(group);
        req.generation_id = generation;
        req.member_id = s(member_id);
        let (_, resp) = self.send(coord, &req, 0..=4).await?;
        check(self.cluster(), resp.error_code, || {
            format!("heartbeat to group {group} (generation {generation})")
        })
    }

    /// Leaves the group, so the others rebalance at once instead of after the session
    /// timeout.
    pub async fn leave_group(
        &self,
        coord: i32,
        group: &str,
        member_id: &str,
    ) -> Result<(), ClientError> {
        let conn = self.connection(coord).await?;
        let v = conn.version_for::<LeaveGroupRequest>(0..=5)?;
        let mut req = LeaveGroupRequest::default();
        req.group_id = group_id(group);
        if v >= 3 {
            let mut m = MemberIdentity::default();
            m.member_id = s(member_id);
            req.members = vec![m];
        } else {
            req.member_id = s(member_id);
        }
        let resp = conn.call(&req, v).await?;
        check(self.cluster(), resp.error_code, || {
            format!("leave group {group}")
        })?;
        for m in resp.members {
            check(self.cluster(), m.error_code, || {
                format!("leave group {group}")
            })?;
        }
        Ok(())
    }

    /// Commits positions for `group` as the member of `generation` (-1 and an empty
    /// member id commit outside any generation). A coordinator that follows Kafka's
    /// rules refuses a commit from an older generation (ILLEGAL_GENERATION) or from a
    /// member it no longer knows (UNKNOWN_MEMBER_ID): the first per-partition error is
    /// returned.
    pub async fn commit_offsets(
        &self,
        coord: i32,
        group: &str,
        generation: i32,
        member_id: &str,
        positions: &[Committed],
    ) -> Result<(), ClientError> {
        let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
        for (topic, partition, offset, metadata) in positions {
            let mut p = OffsetCommitRequestPartition::default();
            p.partition_index = *partition;
            p.committed_offset = *offset;
            p.committed_metadata = metadata.as_deref().map(s);
            match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partitions.push(p),
                None => {
                    let mut t = OffsetCommitRequestTopic::default();
                    t.name = topic_name(topic);
                    t.partitions = vec![p];
                    topics.push(t);
                }
            }
        }
        let mut req = OffsetCommitRequest::default();
        req.group_id = group_id(group);
        req.generation_id_or_member_epoch = generation;
        req.member_id = s(member_id);
        req.topics = topics;
        let (_, resp) = self.send(coord, &req, 2..=8).await?;
        for t in resp.topics {
            for p in t.partitions {
                check(self.cluster(), p.error_code, || {
                    format!(
                        "commit the position of {}-{} in group {group} (generation {generation})",
                        t.name.0, p.partition_index
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Describes `group` at its coordinator: its state, protocol and members with
    /// their assignments. A coordinator that does not know the group answers it as
    /// "Dead" with no members (or, from v6, GROUP_ID_NOT_FOUND, returned as an error).
    pub async fn describe_group(
        &self,
        coord: i32,
        group: &str,
    ) -> Result<GroupDescription, ClientError> {
        let mut req = DescribeGroupsRequest::default();
        req.groups = vec![group_id(group)];
        let (_, resp) = self.send(coord, &req, 0..=6).await?;
        // One group asked for, so one answered; find it by id rather than trust order.
        let g = resp
            .groups
            .into_iter()
            .find(|g| g.group_id.0.as_str() == group)
            .ok_or_else(|| ClientError::Protocol {
                cluster: self.cluster(),
                broker: coord,
                message: format!("DescribeGroups for group {group} did not answer it"),
            })?;
        check(self.cluster(), g.error_code, || match &g.error_message {
            Some(m) if !m.is_empty() => format!("describe group {group} ({m})"),
            _ => format!("describe group {group}"),
        })?;
        Ok(GroupDescription {
            state: g.group_state.to_string(),
            protocol_type: g.protocol_type.to_string(),
            protocol: g.protocol_data.to_string(),
            members: g
                .members
                .into_iter()
                .map(|m| GroupMember {
                    member_id: m.member_id.to_string(),
                    client_id: m.client_id.to_string(),
                    client_host: m.client_host.to_string(),
                    assignment: m.member_assignment,
                })
                .collect(),
        })
    }

    /// The groups every broker of the cluster coordinates: (group id, protocol type),
    /// sorted and without repeats. Each broker lists only its own groups, so all are
    /// asked; one that cannot answer fails the call (a partial list would make
    /// groups look gone).
    pub async fn list_groups(&self) -> Result<Vec<(String, String)>, ClientError> {
        if self.brokers().is_empty() {
            self.refresh_metadata(Some(&[])).await?;
        }
        let mut out = Vec::new();
        for broker in self.brokers().into_keys() {
            let (_, resp) = self
                .send(broker, &ListGroupsRequest::default(), 0..=4)
                .await?;
            check(self.cluster(), resp.error_code, || "list the groups".into())?;
            out.extend(
                resp.groups
                    .into_iter()
                    .map(|g| (g.group_id.0.to_string(), g.protocol_type.to_string())),
            );
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The positions `group` has committed for the partitions asked for; partitions
    /// without a committed offset are left out.
    pub async fn fetch_offsets(
        &self,
        coord: i32,
        group: &str,
        partitions: &[(String, Vec<i32>)],
    ) -> Result<Vec<Committed>, ClientError> {
        let mut req = OffsetFetchRequest::default();
        req.group_id = group_id(group);
        req.topics = Some(
            partitions
                .iter()
                .map(|(t, ps)| {
                    let mut x = OffsetFetchRequestTopic::default();
                    x.name = topic_name(t);
                    x.partition_indexes = ps.clone();
                    x
                })
                .collect(),
        );
        let (v, resp) = self.send(coord, &req, 1..=7).await?;
        if v >= 2 {
            check(self.cluster(), resp.error_code, || {
                format!("fetch the positions of group {group}")
            })?;
        }
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                check(self.cluster(), p.error_code, || {
                    format!(
                        "fetch the position of {}-{} in group {group}",
                        t.name.0, p.partition_index
                    )
                })?;
                if p.committed_offset >= 0 {
                    out.push((
                        t.name.0.to_string(),
                        p.partition_index,
                        p.committed_offset,
                        p.metadata.map(|m| m.to_string()),
                    ));
                }
            }
        }
        Ok(out)
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}
