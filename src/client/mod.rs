//! A small Kafka client on the kafka-protocol crate, used for DC2 (produce, topics,
//! producer id) and for reading back from DC1 (fetch, configs).
//!
//! - `conn`: one pipelined connection per broker (writer task, reader task, FIFO);
//!   `dial` opens it (TCP, socket buffers, TLS).
//! - this file: bootstrap, metadata cache (topic -> partitions -> leader, broker
//!   addresses), connection pool, typed `send` helpers and retry with backoff.
//! - `error`: what went wrong, which cluster it came from, and whether a retry or a
//!   metadata refresh can help.
//! - `ops`: the requests the tee needs (InitProducerId, Fetch, CreateTopics,
//!   DescribeConfigs, ListOffsets), each with its error handling.
//!
//! Every network wait is bounded: connects by `connect_timeout`, requests by
//! `request_timeout` (a broker that does not answer in time loses its connection).
//! Errors name the cluster they came from.

mod conn;
mod dial;
mod error;
pub mod group;
mod ops;
mod sasl;

use std::collections::HashMap;
use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::sync::{lock, read, write};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, TopicName, metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::{Request, StrBytes};

pub use conn::{BrokerConnection, PendingResponse};
pub use error::{ClientError, check, is_metadata_error};
pub use ops::{CreateTopicOutcome, EARLIEST, FetchedPartition, IsolationLevel, LATEST};
pub use sasl::{SaslCredentials, SaslError};

/// Which cluster a client talks to; every error names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cluster {
    Dc1,
    Dc2,
}

impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cluster::Dc1 => "DC1",
            Cluster::Dc2 => "DC2",
        })
    }
}

/// How a client connects and how long it waits.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub cluster: Cluster,
    /// `HOST:PORT` addresses tried in order until one answers.
    pub bootstrap: Vec<String>,
    pub client_id: String,
    pub connect_timeout: Duration,
    /// Longest wait for any one response; past it the connection is closed.
    pub request_timeout: Duration,
    pub max_frame_bytes: usize,
    /// Requests written to one broker and not yet answered.
    pub max_in_flight_per_connection: usize,
    /// SO_SNDBUF / SO_RCVBUF set before connecting; 0 leaves the OS's (autotuned).
    pub socket_send_buffer_bytes: usize,
    pub socket_receive_buffer_bytes: usize,
    /// First retry backoff, doubled per attempt up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// TLS towards the cluster's brokers; `None` dials plain TCP.
    pub tls: Option<ClientTls>,
    /// SASL login on every new connection; `None` skips it.
    pub sasl: Option<SaslCredentials>,
}

/// The client side of TLS towards one cluster: the connector and the settings that
/// name the server to verify.
#[derive(Clone)]
pub struct ClientTls {
    pub connector: tokio_rustls::TlsConnector,
    pub settings: crate::config::UpstreamTlsConfig,
}

impl ClientTls {
    /// `None` when `settings` has TLS off.
    pub fn new(
        settings: &crate::config::UpstreamTlsConfig,
    ) -> Result<Option<Self>, crate::net::tls::TlsError> {
        Ok(settings.connector()?.map(|connector| Self {
            connector,
            settings: settings.clone(),
        }))
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.settings.ca)
            .field("server_name", &self.settings.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    pub fn new(cluster: Cluster, bootstrap: Vec<String>) -> Self {
        Self {
            cluster,
            bootstrap,
            client_id: "kafka-tee".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_frame_bytes: 100 * 1024 * 1024,
            max_in_flight_per_connection: 64,
            socket_send_buffer_bytes: 0,
            socket_receive_buffer_bytes: 0,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
            tls: None,
            sasl: None,
        }
    }

    /// TLS and SASL as a cluster's configuration asks (`[source]` or `[target]`).
    /// Errors name the cluster and the setting, never a password.
    pub fn secured(mut self, settings: &crate::config::ClusterConfig) -> anyhow::Result<Self> {
        let cluster = self.cluster;
        self.tls =
            ClientTls::new(&settings.tls).map_err(|e| anyhow::anyhow!("{cluster} TLS: {e}"))?;
        self.sasl = match &settings.sasl {
            Some(s) => {
                let password = s
                    .password()
                    .map_err(|e| anyhow::anyhow!("{cluster} SASL: {e}"))?;
                Some(SaslCredentials::new(
                    s.mechanism,
                    s.username.clone(),
                    password,
                ))
            }
            None => None,
        };
        if let Some(s) = &self.sasl
            && s.mechanism == crate::config::SaslMechanism::Plain
            && self.tls.is_none()
        {
            tracing::warn!(
                "{cluster}: SASL PLAIN without TLS sends the password in clear text; turn on TLS \
                 for this cluster"
            );
        }
        Ok(self)
    }
}

/// One partition as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    /// -1 when the partition has no leader right now.
    pub leader: i32,
    pub leader_epoch: i32,
    pub error: Option<ResponseError>,
}

/// One topic as the metadata describes it; partitions sorted by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    pub fn leader(&self, partition: i32) -> Option<i32> {
        self.partitions
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.leader)
            .filter(|l| *l >= 0)
    }
}

#[derive(Debug, Default)]
struct MetadataCache {
    brokers: HashMap<i32, String>,
    topics: HashMap<String, TopicInfo>,
    controller: Option<i32>,
}

/// Exponential backoff: `initial`, doubled per step up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            next: initial,
            initial,
            max: max.max(initial),
        }
    }

    /// The delay to wait now; the following one is twice as long (up to the max).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A Kafka client for one cluster. Cheap to clone; clones share connections and
/// metadata.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    meta: RwLock<MetadataCache>,
    conns: RwLock<HashMap<i32, Arc<BrokerConnection>>>,
    /// One connect at a time per broker id, so a burst of callers opens one socket.
    connecting: Mutex<HashMap<i32, Arc<tokio::sync::Mutex<()>>>>,
    /// Coalesces concurrent metadata refreshes.
    /// When each topic's metadata was last refreshed ("" for brokers only).
    refreshing: tokio::sync::Mutex<HashMap<String, Instant>>,
    /// Round-robin start for bootstrap addresses.
    bootstrap_next: AtomicUsize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cluster", &self.inner.cfg.cluster)
            .field("bootstrap", &self.inner.cfg.bootstrap)
            .finish()
    }
}

/// Pseudo broker ids for bootstrap connections (before broker ids are known).
fn bootstrap_id(index: usize) -> i32 {
    -1000 - index as i32
}

impl Client {
    /// A client that connects lazily on first use.
    pub fn new(cfg: ClientConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                meta: RwLock::new(MetadataCache::default()),
                conns: RwLock::new(HashMap::new()),
                connecting: Mutex::new(HashMap::new()),
                refreshing: tokio::sync::Mutex::new(HashMap::new()),
                bootstrap_next: AtomicUsize::new(0),
            }),
        }
    }

    /// A client that has reached the cluster once (metadata for no topics), so
    /// configuration errors surface early.
    pub async fn connect(cfg: ClientConfig) -> Result<Self, ClientError> {
        let c = Self::new(cfg);
        c.refresh_metadata(Some(&[])).await?;
        Ok(c)
    }

    pub fn cluster(&self) -> Cluster {
        self.inner.cfg.cluster
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            self.inner.cfg.retry_backoff,
            self.inner.cfg.retry_backoff_max,
        )
    }

    /// Broker id -> `HOST:PORT` from the latest metadata.
    pub fn brokers(&self) -> HashMap<i32, String> {
        read(&self.inner.meta).brokers.clone()
    }

    /// The cached description of a topic, if the metadata has it.
    pub fn cached_topic(&self, topic: &str) -> Option<TopicInfo> {
        read(&self.inner.meta).topics.get(topic).cloned()
    }

    /// The cached leader of a partition.
    pub fn cached_leader(&self, topic: &str, partition: i32) -> Option<i32> {
        read(&self.inner.meta)
            .topics
            .get(topic)
            .and_then(|t| t.leader(partition))
    }

    /// Fetches metadata for `topics` (`None`: all topics) and updates the cache.
    pub async fn refresh_metadata(
        &self,
        topics: Option<&[&str]>,
    ) -> Result<MetadataResponse, ClientError> {
        let mut req = MetadataRequest::default();
        req.allow_auto_topic_creation = false;
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    let mut mt = MetadataRequestTopic::default();
                    mt.name = Some(TopicName(StrBytes::from_string((*t).to_string())));
                    mt
                })
                .collect()
        });
        let (_, resp) = self.send_any(&req, 1..=12).await?;
        self.apply_metadata(&resp);
        if !resp.brokers.is_empty() {
            // Brokers are known by id now; bootstrap connections close once unused.
            write(&self.inner.conns).retain(|id, _| *id > bootstrap_id(0));
        }
        Ok(resp)
    }

    /// Refreshes metadata unless another caller finished a refresh within the last
    /// `retry_backoff`; used after leader errors, where many callers notice at once.
    pub async fn refresh_metadata_coalesced(&self, topics: &[&str]) -> Result<(), ClientError> {
        let started = Instant::now();
        let fresh_since = started
            .checked_sub(self.inner.cfg.retry_backoff)
            .unwrap_or(started);
        let keys: Vec<&str> = if topics.is_empty() {
            vec![""]
        } else {
            topics.to_vec()
        };
        let mut last = self.inner.refreshing.lock().await;
        if keys
            .iter()
            .all(|k| last.get(*k).is_some_and(|t| *t >= fresh_since))
        {
            return Ok(());
        }
        let r = self.refresh_metadata(Some(topics)).await;
        let now = Instant::now();
        for k in keys {
            last.insert(k.to_string(), now);
        }
        if last.len() > 10_000 {
            last.retain(|_, t| *t >= fresh_since);
        }
        r.map(|_| ())
    }

    fn apply_metadata(&self, resp: &MetadataResponse) {
        let mut m = write(&self.inner.meta);
        if !resp.brokers.is_empty() {
            m.brokers = resp
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
                .collect();
        }
        m.controller = Some(resp.controller_id.0).filter(|c| *c >= 0);
        for t in &resp.topics {
            let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
                continue;
            };
            match ResponseError::try_from_code(t.error_code) {
                Some(ResponseError::UnknownTopicOrPartition)
                | Some(ResponseError::InvalidTopicException) => {
                    m.topics.remove(&name);
                }
                Some(ResponseError::LeaderNotAvailable) | None => {
                    let mut partitions: Vec<PartitionInfo> = t
                        .partitions
                        .iter()
                        .map(|p| PartitionInfo {
                            partition: p.partition_index,
                            leader: p.leader_id.0,
                            leader_epoch: p.leader_epoch,
                            error: ResponseError::try_from_code(p.error_code),
                        })
                        .collect();
                    partitions.sort_by_key(|p| p.partition);
                    m.topics
                        .insert(name.clone(), TopicInfo { name, partitions });
                }
                Some(e) => {
                    tracing::debug!(cluster = %self.cluster(), topic = %name, error = %e, "metadata error for topic");
                }
            }
        }
    }

    /// Describes one topic from fresh metadata; `None` when it does not exist.
    pub async fn topic(&self, topic: &str) -> Result<Option<TopicInfo>, ClientError> {
        let resp = self.refresh_metadata(Some(&[topic])).await?;
        for t in &resp.topics {
            if t.name.as_ref().map(|n| n.0.as_str()) != Some(topic) {
                continue;
            }
            match ResponseError::try_from_code(t.error_code) {
                None | Some(ResponseError::LeaderNotAvailable) => {}
                Some(ResponseError::UnknownTopicOrPartition) => return Ok(None),
                Some(error) => {
                    return Err(ClientError::Kafka {
                        cluster: self.cluster(),
                        error,
                        context: format!("metadata for topic {topic}"),
                    });
                }
            }
        }
        Ok(self.cached_topic(topic))
    }

    /// The leader of a partition, from the cache or, when unknown, fresh metadata.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<i32, ClientError> {
        if let Some(l) = self.cached_leader(topic, partition) {
            return Ok(l);
        }
        match self.topic(topic).await? {
            None => Err(ClientError::UnknownTopic {
                cluster: self.cluster(),
                topic: topic.to_string(),
            }),
            Some(t) => t.leader(partition).ok_or_else(|| ClientError::NoLeader {
                cluster: self.cluster(),
                topic: topic.to_string(),
                partition,
            }),
        }
    }

    /// Drops a topic from the metadata cache, so the next lookup asks the cluster
    /// (after leader errors).
    pub fn forget_topic(&self, topic: &str) {
        write(&self.inner.meta).topics.remove(topic);
    }

    /// The controller (for CreateTopics), or any broker when none is known.
    pub fn controller(&self) -> Option<i32> {
        read(&self.inner.meta).controller
    }

    /// An open connection to `broker`, opening one if needed.
    pub async fn connection(&self, broker: i32) -> Result<Arc<BrokerConnection>, ClientError> {
        if let Some(c) = read(&self.inner.conns).get(&broker)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let addr = if broker <= bootstrap_id(0) {
            let i = (bootstrap_id(0) - broker) as usize;
            self.inner.cfg.bootstrap.get(i).cloned()
        } else {
            read(&self.inner.meta).brokers.get(&broker).cloned()
        };
        let Some(addr) = addr else {
            return Err(ClientError::UnknownBroker {
                cluster: self.cluster(),
                broker,
            });
        };
        let gate = lock(&self.inner.connecting)
            .entry(broker)
            .or_default()
            .clone();
        let _g = gate.lock().await;
        // Someone else may have connected while this caller waited.
        if let Some(c) = read(&self.inner.conns).get(&broker)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let conn = BrokerConnection::open(&self.inner.cfg, BrokerId(broker), &addr)
            .await
            .inspect_err(|e| {
                let stage = if matches!(e, ClientError::Auth { .. }) {
                    "login"
                } else {
                    "connect"
                };
                metrics::counter!(
                    "kafka_tee_upstream_connect_failures_total",
                    "cluster" => self.inner.cfg.cluster.to_string(),
                    "stage" => stage
                )
                .increment(1);
            })?;
        write(&self.inner.conns).insert(broker, conn.clone());
        Ok(conn)
    }

    /// A connection to some broker: an open one if any, else known brokers, else the
    /// bootstrap addresses in turn.
    pub async fn any_connection(&self) -> Result<Arc<BrokerConnection>, ClientError> {
        if let Some(c) = read(&self.inner.conns)
            .iter()
            .filter(|(id, c)| **id >= 0 && !c.is_closed())
            .map(|(_, c)| c.clone())
            .next()
        {
            return Ok(c);
        }
        let mut candidates: Vec<i32> = read(&self.inner.meta).brokers.keys().copied().collect();
        candidates.sort_unstable();
        let n = self.inner.cfg.bootstrap.len();
        let start = self.inner.bootstrap_next.fetch_add(1, Ordering::Relaxed);
        candidates.extend((0..n).map(|i| bootstrap_id((start + i) % n.max(1))));
        let mut errors = Vec::new();
        for id in candidates {
            match self.connection(id).await {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(ClientError::NoBroker {
            cluster: self.cluster(),
            detail: if errors.is_empty() {
                "no bootstrap addresses configured".into()
            } else {
                errors.join("; ")
            },
        })
    }

    /// Sends a request to a broker at the highest version both sides support within
    /// `versions`, and returns that version with the response.
    pub async fn send<R: Request>(
        &self,
        broker: i32,
        req: &R,
        versions: RangeInclusive<i16>,
    ) -> Result<(i16, R::Response), ClientError> {
        let conn = self.connection(broker).await?;
        let v = conn.version_for::<R>(versions)?;
        Ok((v, conn.call(req, v).await?))
    }

    /// Like [`Client::send`], to whichever broker is reachable.
    pub async fn send_any<R: Request>(
        &self,
        req: &R,
        versions: RangeInclusive<i16>,
    ) -> Result<(i16, R::Response), ClientError> {
        let conn = self.any_connection().await?;
        let v = conn.version_for::<R>(versions)?;
        Ok((v, conn.call(req, v).await?))
    }

    /// Runs `op` until it succeeds, fails with a non-retriable error, or `deadline`
    /// passes; between attempts it refreshes metadata when the error calls for it and
    /// backs off.
    pub async fn retry<T, F, Fut>(&self, deadline: Duration, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let until = Instant::now() + deadline;
        let mut backoff = self.backoff();
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retriable() && Instant::now() < until => {
                    tracing::debug!(error = %e, "retrying");
                    if e.needs_metadata_refresh() {
                        let _ = self.refresh_metadata_coalesced(&[]).await;
                    }
                    let d = backoff
                        .next_delay()
                        .min(until.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(d).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes every connection (in-flight requests fail).
    pub fn close(&self) {
        for c in write(&self.inner.conns).drain() {
            c.1.close();
        }
    }
}

// The locks above guard plain maps and are never held across an await (see
// `crate::sync` for why a poisoned one is used as is).

#[cfg(test)]
mod tests;
