//! The requests the tee needs, each turned into a plain result with the broker's error
//! codes mapped to [`ClientError`]. Callers decide whether to retry.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, DescribeConfigsRequest, FetchRequest, InitProducerIdRequest,
    ListOffsetsRequest, TopicName,
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    describe_configs_request::DescribeConfigsResource,
    fetch_request::{FetchPartition, FetchTopic},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
};
use kafka_protocol::protocol::StrBytes;

use super::{Client, ClientError, check};
use crate::protocol::batch::{CONTROL_COMMIT, split_batches};

/// Fetch isolation: read_committed stops at the last stable offset and reports the
/// aborted transactions in the returned range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationLevel {
    ReadUncommitted = 0,
    ReadCommitted = 1,
}

/// What a Fetch returned for one partition. `records` holds raw record batches as the
/// broker stores them (possibly ending in a partial batch).
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub high_watermark: i64,
    /// -1 when the broker does not report it.
    pub last_stable_offset: i64,
    /// -1 when the broker does not report it.
    pub log_start_offset: i64,
    /// `(producer_id, first_offset)` of aborted transactions in the returned range.
    pub aborted: Vec<(i64, i64)>,
    pub records: Bytes,
}

/// How a CreateTopics request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateTopicOutcome {
    Created,
    AlreadyExisted,
}

/// ListOffsets timestamp for the log start offset.
pub const EARLIEST: i64 = -2;
/// ListOffsets timestamp for the log end offset.
pub const LATEST: i64 = -1;
/// Config resource type of a topic (DescribeConfigs).
const RESOURCE_TOPIC: i8 = 2;

pub(super) fn topic_name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

impl Client {
    /// A fresh producer id and epoch for an idempotent (non-transactional) producer.
    pub async fn init_producer_id(&self) -> Result<(i64, i16), ClientError> {
        let mut req = InitProducerIdRequest::default();
        req.transactional_id = None;
        req.transaction_timeout_ms = 60_000;
        req.producer_id = (-1).into();
        req.producer_epoch = -1;
        let (_, resp) = self.send_any(&req, 0..=5).await?;
        check(self.cluster(), resp.error_code, || "InitProducerId".into())?;
        Ok((resp.producer_id.0, resp.producer_epoch))
    }

    /// Reads one partition from `offset`, from its leader.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait: Duration,
        isolation: IsolationLevel,
    ) -> Result<FetchedPartition, ClientError> {
        let leader = self.leader(topic, partition).await?;
        let mut p = FetchPartition::default();
        p.partition = partition;
        p.fetch_offset = offset;
        p.partition_max_bytes = max_bytes;
        let mut t = FetchTopic::default();
        t.topic = topic_name(topic);
        t.partitions = vec![p];
        let mut req = FetchRequest::default();
        req.max_wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
        req.min_bytes = 1;
        req.max_bytes = max_bytes;
        req.isolation_level = isolation as i8;
        req.topics = vec![t];
        // v13+ names topics by id, which this client does not track.
        let result = self
            .fetch_from(leader, topic, partition, offset, &req)
            .await;
        if let Err(e) = &result
            && e.needs_metadata_refresh()
        {
            self.forget_topic(topic);
        }
        result
    }

    async fn fetch_from(
        &self,
        leader: i32,
        topic: &str,
        partition: i32,
        offset: i64,
        req: &FetchRequest,
    ) -> Result<FetchedPartition, ClientError> {
        let (_, resp) = self.send(leader, req, 4..=12).await?;
        let context = || format!("fetch {topic}-{partition} at offset {offset}");
        check(self.cluster(), resp.error_code, context)?;
        let data = resp
            .responses
            .into_iter()
            .filter(|r| r.topic.0.as_str() == topic)
            .flat_map(|r| r.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| ClientError::MissingPartition {
                cluster: self.cluster(),
                broker: leader,
                api: ApiKey::Fetch,
                topic: topic.to_string(),
                partition,
            })?;
        check(self.cluster(), data.error_code, context)?;
        Ok(FetchedPartition {
            high_watermark: data.high_watermark,
            last_stable_offset: data.last_stable_offset,
            log_start_offset: data.log_start_offset,
            aborted: data
                .aborted_transactions
                .unwrap_or_default()
                .into_iter()
                .map(|a| (a.producer_id.0, a.first_offset))
                .collect(),
            records: data.records.unwrap_or_default(),
        })
    }

    /// Reads ahead from `from` to the next transaction marker of `producer_id` and
    /// returns its offset and whether it commits; `None` when the partition has no
    /// such marker yet (the transaction is still open). Batches are only looked at,
    /// not kept, so memory stays bounded however long the transaction.
    pub async fn find_txn_marker(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
        from: i64,
    ) -> Result<Option<(i64, bool)>, ClientError> {
        let mut offset = from;
        let mut max_bytes: i32 = 1024 * 1024;
        loop {
            let f = self
                .fetch(
                    topic,
                    partition,
                    offset,
                    max_bytes,
                    Duration::from_millis(50),
                    IsolationLevel::ReadUncommitted,
                )
                .await?;
            let had_bytes = !f.records.is_empty();
            let before = offset;
            for b in split_batches(f.records) {
                let b = b.map_err(|e| ClientError::Protocol {
                    cluster: self.cluster(),
                    broker: -1,
                    message: format!("{topic}-{partition} at offset {offset}: {e}"),
                })?;
                let last = b.base_offset() + i64::from(b.last_offset_delta());
                if last < offset {
                    continue;
                }
                offset = last + 1;
                if b.is_control() && b.producer_id() == producer_id {
                    return Ok(Some((
                        b.base_offset(),
                        b.control_type() == Some(CONTROL_COMMIT),
                    )));
                }
            }
            if offset == before {
                if had_bytes && max_bytes < 64 * 1024 * 1024 {
                    max_bytes = max_bytes.saturating_mul(2);
                    continue;
                }
                return Ok(None);
            }
        }
    }

    /// The offset for `timestamp` ([`EARLIEST`], [`LATEST`] or a time in ms).
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<i64, ClientError> {
        let leader = self.leader(topic, partition).await?;
        let mut p = ListOffsetsPartition::default();
        p.partition_index = partition;
        p.timestamp = timestamp;
        let mut t = ListOffsetsTopic::default();
        t.name = topic_name(topic);
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.replica_id = (-1).into();
        req.topics = vec![t];
        let (_, resp) = self.send(leader, &req, 1..=9).await.inspect_err(|e| {
            if e.needs_metadata_refresh() {
                self.forget_topic(topic);
            }
        })?;
        let data = resp
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| ClientError::MissingPartition {
                cluster: self.cluster(),
                broker: leader,
                api: ApiKey::ListOffsets,
                topic: topic.to_string(),
                partition,
            })?;
        check(self.cluster(), data.error_code, || {
            format!("list offsets of {topic}-{partition}")
        })
        .inspect_err(|e| {
            if e.needs_metadata_refresh() {
                self.forget_topic(topic);
            }
        })?;
        Ok(data.offset)
    }

    /// The values of the named configs of a topic, as the cluster reports them; keys
    /// the cluster does not report are left out.
    pub async fn describe_topic_configs(
        &self,
        topic: &str,
        keys: &[&str],
    ) -> Result<Vec<(String, String)>, ClientError> {
        let mut res = DescribeConfigsResource::default();
        res.resource_type = RESOURCE_TOPIC;
        res.resource_name = StrBytes::from_string(topic.to_string());
        // All configs, filtered here: Tansu 0.6 drops the connection when the request
        // names configuration keys.
        res.configuration_keys = None;
        let mut req = DescribeConfigsRequest::default();
        req.resources = vec![res];
        let (_, resp) = self.send_any(&req, 1..=4).await?;
        let mut out = Vec::new();
        for r in resp.results {
            check(self.cluster(), r.error_code, || {
                format!("describe configs of topic {topic}")
            })?;
            for c in r.configs {
                let name = c.name.to_string();
                if let Some(v) = c.value
                    && keys.contains(&name.as_str())
                {
                    out.push((name, v.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// Creates a topic with the broker's default replication factor.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        configs: &[(String, String)],
        timeout: Duration,
    ) -> Result<CreateTopicOutcome, ClientError> {
        let mut t = CreatableTopic::default();
        t.name = topic_name(topic);
        t.num_partitions = partitions;
        t.configs = configs
            .iter()
            .map(|(k, v)| {
                let mut c = CreatableTopicConfig::default();
                c.name = StrBytes::from_string(k.clone());
                c.value = Some(StrBytes::from_string(v.clone()));
                c
            })
            .collect();
        let mut req = CreateTopicsRequest::default();
        req.timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let conn = match self.controller() {
            Some(c) => self.connection(c).await?,
            None => self.any_connection().await?,
        };
        let v = conn.version_for::<CreateTopicsRequest>(2..=7)?;
        // -1 (the broker's default) is only understood from v4 on.
        t.replication_factor = if v >= 4 { -1 } else { 1 };
        req.topics = vec![t];
        let resp = conn.call(&req, v).await?;
        for r in resp.topics {
            if r.name.0.as_str() != topic {
                continue;
            }
            return match ResponseError::try_from_code(r.error_code) {
                None => Ok(CreateTopicOutcome::Created),
                Some(ResponseError::TopicAlreadyExists) => Ok(CreateTopicOutcome::AlreadyExisted),
                Some(error) => Err(ClientError::Kafka {
                    cluster: self.cluster(),
                    error,
                    context: format!(
                        "create topic {topic}{}",
                        r.error_message
                            .map(|m| format!(" ({})", m.as_str()))
                            .unwrap_or_default()
                    ),
                }),
            };
        }
        Err(ClientError::Protocol {
            cluster: self.cluster(),
            broker: conn.broker().0,
            message: format!("create topics response has no {topic}"),
        })
    }
}
