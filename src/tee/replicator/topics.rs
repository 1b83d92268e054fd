//! Which topics are replicated, and whether each one's DC2 twin is ready: it exists
//! (created from DC1's partition count and settings when allowed) with exactly DC1's
//! partition count. A topic that is not ready is held, never mis-routed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use regex::Regex;

use crate::client::{Client, ClientError, CreateTopicOutcome};

/// DC1 topic configs copied to a DC2 topic it creates: the ones that make DC2 keep the
/// batches as sent (compression, timestamps) and keep them as long as DC1 does.
pub const COPIED_CONFIGS: [&str; 5] = [
    "compression.type",
    "message.timestamp.type",
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
];

/// How long a topic that is not ready waits before it is checked again.
pub const RECHECK: Duration = Duration::from_secs(30);
const FILTER_CACHE_MAX: usize = 100_000;

/// Include/exclude patterns; exclude wins, an empty include list means all topics.
#[derive(Debug)]
pub struct TopicFilter {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    cache: DashMap<String, bool>,
}

impl TopicFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, regex::Error> {
        Ok(Self {
            include: include
                .iter()
                .map(|p| Regex::new(p))
                .collect::<Result<_, _>>()?,
            exclude: exclude
                .iter()
                .map(|p| Regex::new(p))
                .collect::<Result<_, _>>()?,
            cache: DashMap::new(),
        })
    }

    pub fn wants(&self, topic: &str) -> bool {
        if let Some(v) = self.cache.get(topic) {
            return *v;
        }
        let v = !self.exclude.iter().any(|r| r.is_match(topic))
            && (self.include.is_empty() || self.include.iter().any(|r| r.is_match(topic)));
        if self.cache.len() >= FILTER_CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(topic.to_string(), v);
        v
    }
}

/// Where a DC1 topic stands in DC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicStatus {
    /// The DC2 topic exists with DC1's partition count.
    Ready { partitions: usize },
    /// Partition counts differ: nothing is sent, the data is read back from DC1 once
    /// they match.
    Mismatch { dc1: usize, dc2: usize },
    /// The DC2 topic does not exist and creating topics is off.
    Missing,
    /// The topic is gone from DC1 or cannot be created in DC2.
    Failed(String),
}

impl TopicStatus {
    pub fn is_ready(&self) -> bool {
        matches!(self, TopicStatus::Ready { .. })
    }
}

#[derive(Debug, Default)]
struct GateState {
    status: Option<TopicStatus>,
    checked: Option<Instant>,
    /// The status last logged, so a topic that stays broken is reported once.
    logged: Option<TopicStatus>,
}

/// The readiness of one topic, checked by one worker at a time.
#[derive(Debug, Default)]
pub struct TopicGate {
    state: tokio::sync::Mutex<GateState>,
}

/// What the gate needs to check a topic.
pub struct GateContext<'a> {
    pub dc1: &'a Client,
    pub dc2: &'a Client,
    pub create_topics: bool,
    pub timeout: Duration,
}

impl TopicGate {
    /// The topic's status: cached while ready (until [`TopicGate::invalidate`]),
    /// re-checked after [`RECHECK`] otherwise. Network errors are returned for the
    /// caller to retry.
    pub async fn ensure(
        &self,
        ctx: &GateContext<'_>,
        dc1_topic: &str,
        dc2_topic: &str,
    ) -> Result<TopicStatus, ClientError> {
        let mut st = self.state.lock().await;
        if let (Some(s), Some(at)) = (&st.status, st.checked)
            && (s.is_ready() || at.elapsed() < RECHECK)
        {
            return Ok(s.clone());
        }
        let status = check(ctx, dc1_topic, dc2_topic).await?;
        if st.logged.as_ref() != Some(&status) {
            log_status(dc1_topic, dc2_topic, &status);
            st.logged = Some(status.clone());
        }
        st.status = Some(status.clone());
        st.checked = Some(Instant::now());
        metrics::gauge!("kafka_tee_topics_held", "topic" => dc1_topic.to_string())
            .set(if status.is_ready() { 0.0 } else { 1.0 });
        Ok(status)
    }

    /// Forgets the status (DC2 reported the topic unknown), so the next `ensure`
    /// checks again.
    pub async fn invalidate(&self) {
        let mut st = self.state.lock().await;
        st.status = None;
        st.checked = None;
    }
}

fn log_status(dc1_topic: &str, dc2_topic: &str, status: &TopicStatus) {
    match status {
        TopicStatus::Ready { partitions } => {
            tracing::info!(topic = %dc1_topic, dc2_topic = %dc2_topic, partitions, "replicating topic to DC2")
        }
        TopicStatus::Mismatch { dc1, dc2 } => tracing::error!(
            topic = %dc1_topic, dc2_topic = %dc2_topic, dc1_partitions = dc1, dc2_partitions = dc2,
            "PARTITION COUNT MISMATCH: DC1 and DC2 partition counts differ; holding this topic's \
             data (it will be read back from DC1 once the counts match)"
        ),
        TopicStatus::Missing => tracing::error!(
            topic = %dc1_topic, dc2_topic = %dc2_topic,
            "DC2 topic does not exist and replication.create_topics is off; holding this topic's data"
        ),
        TopicStatus::Failed(why) => tracing::error!(
            topic = %dc1_topic, dc2_topic = %dc2_topic, reason = %why,
            "cannot replicate topic; holding its data"
        ),
    }
}

async fn check(
    ctx: &GateContext<'_>,
    dc1_topic: &str,
    dc2_topic: &str,
) -> Result<TopicStatus, ClientError> {
    let Some(src) = ctx.dc1.topic(dc1_topic).await? else {
        return Ok(TopicStatus::Failed(
            "the topic does not exist in DC1".into(),
        ));
    };
    let want = src.partition_count();
    if let Some(dst) = ctx.dc2.topic(dc2_topic).await? {
        return Ok(compare(want, dst.partition_count()));
    }
    if !ctx.create_topics {
        return Ok(TopicStatus::Missing);
    }
    let configs = ctx
        .dc1
        .describe_topic_configs(dc1_topic, &COPIED_CONFIGS)
        .await?;
    let partitions = i32::try_from(want).unwrap_or(i32::MAX);
    match ctx
        .dc2
        .create_topic(dc2_topic, partitions, &configs, ctx.timeout)
        .await
    {
        Ok(CreateTopicOutcome::Created) => {
            metrics::counter!("kafka_tee_dc2_topics_created_total").increment(1);
            tracing::info!(topic = %dc2_topic, partitions, ?configs, "created DC2 topic");
        }
        Ok(CreateTopicOutcome::AlreadyExisted) => {}
        Err(e) if e.is_retriable() => return Err(e),
        Err(e) => return Ok(TopicStatus::Failed(e.to_string())),
    }
    // The new topic may take a moment to show up with leaders.
    let until = Instant::now() + ctx.timeout;
    let mut backoff = ctx.dc2.backoff();
    loop {
        if let Some(dst) = ctx.dc2.topic(dc2_topic).await?
            && dst.partitions.iter().all(|p| p.leader >= 0)
        {
            return Ok(compare(want, dst.partition_count()));
        }
        if Instant::now() >= until {
            return Err(ClientError::NoLeader {
                cluster: ctx.dc2.cluster(),
                topic: dc2_topic.to_string(),
                partition: 0,
            });
        }
        backoff.wait().await;
    }
}

fn compare(dc1: usize, dc2: usize) -> TopicStatus {
    if dc1 == dc2 {
        TopicStatus::Ready { partitions: dc1 }
    } else {
        TopicStatus::Mismatch { dc1, dc2 }
    }
}

/// One gate per DC1 topic.
#[derive(Debug, Default)]
pub struct TopicGates {
    gates: Mutex<HashMap<Arc<str>, Arc<TopicGate>>>,
}

impl TopicGates {
    pub fn gate(&self, topic: &Arc<str>) -> Arc<TopicGate> {
        crate::sync::lock(&self.gates)
            .entry(topic.clone())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_wins_and_default_excludes_internal_topics() {
        let f = TopicFilter::new(
            &["^orders".into(), "^__keep".into()],
            &["^__".into(), "tmp$".into()],
        )
        .expect("patterns");
        assert!(f.wants("orders.eu"));
        assert!(!f.wants("orders.tmp"));
        assert!(!f.wants("__keep_me"));
        assert!(!f.wants("payments"));
        let all = TopicFilter::new(&[], &["^__".into()]).expect("patterns");
        assert!(all.wants("payments"));
        assert!(!all.wants("__consumer_offsets"));
        assert!(!all.wants("__transaction_state"));
        // Cached answers stay the same.
        assert!(all.wants("payments"));
    }

    #[test]
    fn compare_partition_counts() {
        assert_eq!(compare(3, 3), TopicStatus::Ready { partitions: 3 });
        assert_eq!(compare(3, 4), TopicStatus::Mismatch { dc1: 3, dc2: 4 });
    }
}
