//! What went wrong talking to a cluster: [`ClientError`], which names the cluster,
//! and the decisions taken on it (retriable, stale metadata).

use std::ops::RangeInclusive;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;

use super::Cluster;

/// What went wrong talking to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{cluster}: cannot connect to {addr}: {reason}")]
    Connect {
        cluster: Cluster,
        addr: String,
        reason: String,
    },
    #[error("{cluster}: SASL {mechanism} login to broker {broker} ({addr}) failed: {reason}")]
    Auth {
        cluster: Cluster,
        broker: i32,
        addr: String,
        mechanism: &'static str,
        reason: String,
    },
    #[error("{cluster}: no broker reachable: {detail}")]
    NoBroker { cluster: Cluster, detail: String },
    #[error("{cluster}: connection to broker {broker} ({addr}) lost: {reason}")]
    Disconnected {
        cluster: Cluster,
        broker: i32,
        addr: String,
        reason: String,
    },
    #[error("{cluster}: broker {broker} ({addr}) did not answer {api:?} within {timeout:?}")]
    Timeout {
        cluster: Cluster,
        broker: i32,
        addr: String,
        api: ApiKey,
        timeout: Duration,
    },
    #[error(
        "{cluster}: broker {broker} offers {api:?} versions {broker_range:?}, kafka-tee needs one of {wanted:?}"
    )]
    UnsupportedVersion {
        cluster: Cluster,
        broker: i32,
        api: ApiKey,
        broker_range: Option<(i16, i16)>,
        wanted: RangeInclusive<i16>,
    },
    #[error("{cluster}: protocol error with broker {broker}: {message}")]
    Protocol {
        cluster: Cluster,
        broker: i32,
        message: String,
    },
    #[error("{cluster}: {context}: {error}")]
    Kafka {
        cluster: Cluster,
        error: ResponseError,
        context: String,
    },
    /// Tansu 0.6 answers some fetches without the partition asked for.
    #[error("{cluster}: broker {broker} answered {api:?} without {topic}-{partition}")]
    MissingPartition {
        cluster: Cluster,
        broker: i32,
        api: ApiKey,
        topic: String,
        partition: i32,
    },
    #[error("{cluster}: broker {broker} is not in the metadata")]
    UnknownBroker { cluster: Cluster, broker: i32 },
    #[error("{cluster}: topic {topic} does not exist")]
    UnknownTopic { cluster: Cluster, topic: String },
    #[error("{cluster}: {topic}-{partition} has no leader")]
    NoLeader {
        cluster: Cluster,
        topic: String,
        partition: i32,
    },
}

impl ClientError {
    pub fn cluster(&self) -> Cluster {
        match self {
            ClientError::Connect { cluster, .. }
            | ClientError::Auth { cluster, .. }
            | ClientError::NoBroker { cluster, .. }
            | ClientError::Disconnected { cluster, .. }
            | ClientError::Timeout { cluster, .. }
            | ClientError::UnsupportedVersion { cluster, .. }
            | ClientError::Protocol { cluster, .. }
            | ClientError::Kafka { cluster, .. }
            | ClientError::UnknownBroker { cluster, .. }
            | ClientError::MissingPartition { cluster, .. }
            | ClientError::UnknownTopic { cluster, .. }
            | ClientError::NoLeader { cluster, .. } => *cluster,
        }
    }

    /// The Kafka error code behind this error, if a broker returned one.
    pub fn kafka_error(&self) -> Option<ResponseError> {
        match self {
            ClientError::Kafka { error, .. } => Some(*error),
            _ => None,
        }
    }

    /// Whether trying again later (after a metadata refresh) can succeed. A refused
    /// SASL login is: credentials get fixed on the broker without restarting kafka-tee,
    /// and giving up would drop data.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Auth { .. }
            | ClientError::NoBroker { .. }
            | ClientError::Disconnected { .. }
            | ClientError::Timeout { .. }
            | ClientError::UnknownBroker { .. }
            | ClientError::MissingPartition { .. }
            | ClientError::NoLeader { .. } => true,
            ClientError::Kafka { error, .. } => {
                error.is_retriable() || matches!(error, ResponseError::BrokerNotAvailable)
            }
            ClientError::UnknownTopic { .. }
            | ClientError::UnsupportedVersion { .. }
            | ClientError::Protocol { .. } => false,
        }
    }

    /// Whether the metadata (leaders, brokers) should be refreshed before a retry.
    pub fn needs_metadata_refresh(&self) -> bool {
        match self {
            ClientError::Kafka { error, .. } => is_metadata_error(*error),
            ClientError::UnknownTopic { .. } => true,
            other => other.is_retriable(),
        }
    }
}

/// Errors that mean the client's idea of leaders or topics is stale.
pub fn is_metadata_error(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::NotLeaderOrFollower
            | ResponseError::UnknownTopicOrPartition
            | ResponseError::LeaderNotAvailable
            | ResponseError::FencedLeaderEpoch
            | ResponseError::UnknownLeaderEpoch
            | ResponseError::BrokerNotAvailable
            | ResponseError::ReplicaNotAvailable
            | ResponseError::NotController
            | ResponseError::UnknownTopicId
            | ResponseError::KafkaStorageError
    )
}

/// Turns an error code into `Ok(())` or a [`ClientError::Kafka`].
pub fn check(
    cluster: Cluster,
    code: i16,
    context: impl FnOnce() -> String,
) -> Result<(), ClientError> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(ClientError::Kafka {
            cluster,
            error,
            context: context(),
        }),
    }
}
