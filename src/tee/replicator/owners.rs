//! Who owns which DC1 partition in a replication group, as the group's coordinator
//! tells it (DescribeGroups): for `kafka-tee status`, which may run on any machine and
//! is no member itself. Each member's assignment is the one the leader gave it in the
//! current generation, in `assign`'s wire format.
//!
//! While a rebalance is under way the coordinator holds no assignments (members own
//! nothing then, see `membership`), so the answer may be empty or partial; it is a
//! snapshot for people, not something to decide ownership by.

use super::assign::{self, PROTOCOL_TYPE};
use crate::client::group::GroupDescription;
use crate::client::{Client, ClientError};
use crate::tee::TopicPartition;

/// One partition and the member the group's leader assigned it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwner {
    pub tp: TopicPartition,
    pub member_id: String,
    pub client_id: String,
    /// The member's address as the coordinator saw it (often "/10.0.0.7").
    pub host: String,
}

/// The owner of every partition assigned in `group`'s current generation, sorted by
/// partition. A group that is not a replication group (another protocol type, or no
/// members and so no type) has no owners here.
pub async fn owners(client: &Client, group: &str) -> Result<Vec<PartitionOwner>, ClientError> {
    let coord = client.find_group_coordinator(group).await?;
    let described = client.describe_group(coord, group).await?;
    Ok(from_description(group, &described))
}

/// The owners a description names. A member whose assignment cannot be read is
/// logged and left out: the bytes come from the network, written by whichever
/// instance led the generation (perhaps another kafka-tee version).
fn from_description(group: &str, d: &GroupDescription) -> Vec<PartitionOwner> {
    if d.protocol_type != PROTOCOL_TYPE {
        if !d.protocol_type.is_empty() {
            tracing::debug!(
                group, protocol_type = %d.protocol_type, expected = PROTOCOL_TYPE,
                "not a kafka-tee replication group; its members own no partitions here"
            );
        }
        return Vec::new();
    }
    if d.state == "Stable"
        && !d.members.is_empty()
        && d.members.iter().all(|m| m.assignment.is_empty())
    {
        // Either the group replicates nothing yet, or the coordinator does not report
        // assignments (Tansu 0.6 describes members by id only).
        tracing::debug!(
            group,
            members = d.members.len(),
            "the coordinator reports no assignment for any member of the stable group"
        );
    }
    let mut out: Vec<PartitionOwner> = Vec::new();
    for m in &d.members {
        match assign::decode(&m.assignment) {
            Ok(parts) => out.extend(parts.into_iter().map(|tp| PartitionOwner {
                tp,
                member_id: m.member_id.clone(),
                client_id: m.client_id.clone(),
                host: m.client_host.clone(),
            })),
            Err(e) => tracing::warn!(
                group, member = %m.member_id, client_id = %m.client_id, error = %e,
                "a member's assignment cannot be read; leaving it out of the owners"
            ),
        }
    }
    // Member id second, so the order is the same on every call even if a leader ever
    // gave one partition to two members.
    out.sort_by(|a, b| (&a.tp, &a.member_id).cmp(&(&b.tp, &b.member_id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::group::GroupMember;
    use bytes::Bytes;

    fn tp(t: &str, p: i32) -> TopicPartition {
        TopicPartition {
            topic: t.into(),
            partition: p,
        }
    }

    fn member(id: &str, assignment: Bytes) -> GroupMember {
        GroupMember {
            member_id: id.into(),
            client_id: format!("client-{id}"),
            client_host: "/127.0.0.1".into(),
            assignment,
        }
    }

    #[test]
    fn decodes_every_member_and_sorts_by_partition() {
        let d = GroupDescription {
            state: "Stable".into(),
            protocol_type: PROTOCOL_TYPE.into(),
            protocol: assign::PROTOCOL.into(),
            members: vec![
                member("b", assign::encode(&[tp("orders", 1), tp("audit", 0)])),
                member("a", assign::encode(&[tp("orders", 0)])),
                // Owns nothing (a rebalance, or more members than partitions).
                member("c", Bytes::new()),
            ],
        };
        let got: Vec<(TopicPartition, String, String)> = from_description("g", &d)
            .into_iter()
            .map(|o| (o.tp, o.member_id, o.client_id))
            .collect();
        assert_eq!(
            got,
            vec![
                (tp("audit", 0), "b".into(), "client-b".into()),
                (tp("orders", 0), "a".into(), "client-a".into()),
                (tp("orders", 1), "b".into(), "client-b".into()),
            ]
        );
    }

    #[test]
    fn unreadable_assignments_and_other_groups_are_skipped() {
        let d = GroupDescription {
            state: "Stable".into(),
            protocol_type: PROTOCOL_TYPE.into(),
            protocol: assign::PROTOCOL.into(),
            members: vec![
                member("a", Bytes::from_static(&[0, 0, 0, 0, 0, 9, 0])),
                member("b", Bytes::from_static(&[0, 7, 0, 0, 0, 0])),
                member("c", assign::encode(&[tp("orders", 3)])),
            ],
        };
        let got: Vec<String> = from_description("g", &d)
            .into_iter()
            .map(|o| format!("{} {}", o.tp, o.member_id))
            .collect();
        assert_eq!(got, vec![format!("{} c", tp("orders", 3))]);

        let consumers = GroupDescription {
            protocol_type: "consumer".into(),
            ..d.clone()
        };
        assert!(from_description("g", &consumers).is_empty());
        let empty = GroupDescription {
            state: "Empty".into(),
            ..GroupDescription::default()
        };
        assert!(from_description("g", &empty).is_empty());
    }
}
