//! A scripted stand-in for a Kafka broker, for what Tansu cannot show.
//!
//! As DC2 it follows Apache Kafka's idempotent-producer rules to the letter: a new
//! producer's first sequence is 0, each batch must carry exactly the next sequence,
//! the last 5 batches per producer and partition are remembered (a resend of one of
//! them is DUPLICATE_SEQUENCE_NUMBER), any other sequence is
//! OUT_OF_ORDER_SEQUENCE_NUMBER, an unknown producer id is UNKNOWN_PRODUCER_ID. What
//! it stores is appended to its log with offsets and served by Fetch, as a broker's
//! tail is. Scripted actions inject errors and lost connections. As DC1 it serves a
//! log whose start can be moved, as retention would.
//!
//! For long benchmarks (benches/dc2_double.rs) it can leave batches untagged and keep
//! only the newest bytes of each partition (`untagged`, `retain_bytes`); both are off
//! by default.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest,
    FetchResponse, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, TopicName,
    api_versions_response::ApiVersion,
    create_topics_response::CreatableTopicResult,
    fetch_response::{FetchableTopicResponse, PartitionData},
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use kafka_tee::protocol::batch::RecordBatch;
use kafka_tee::testing::{ReadRequest, read_request, respond};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the mock does with a batch, by the batch's tag.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Error(i16),
    /// Drop the connection; the batch is not stored.
    CloseBeforeWrite,
    /// Store the batch, then drop the connection without answering.
    WriteThenClose,
    /// Forget the producer id (UNKNOWN_PRODUCER_ID from now on).
    ForgetProducer,
    /// Store this batch and the next n-1 stored without answering any of them, then
    /// drop the connection: DC2 holds n batches whose answers are lost.
    WriteSilently(u32),
}

/// Of one producer in one partition: (first, last) sequence of the last 5 batches, and
/// the next sequence.
type ProducerState = (VecDeque<(i32, i32)>, i32);

/// One stored batch: tag, producer id, base sequence.
pub type Stored = (String, i64, i32);

#[derive(Default)]
pub struct State {
    pub topics: HashMap<String, i32>,
    pub script: HashMap<String, VecDeque<Action>>,
    /// Tags that fail with this error every time.
    pub always: HashMap<String, i16>,
    pub stored: HashMap<(String, i32), Vec<Stored>>,
    known: HashSet<i64>,
    next_pid: i64,
    /// (pid, topic, partition) -> (first and last sequences of the last 5 batches, next sequence)
    seqs: HashMap<(i64, String, i32), ProducerState>,
    /// As DC1: batches per partition (base offsets set) and the log start offset.
    pub log: HashMap<(String, i32), Vec<Bytes>>,
    pub log_start: i64,
    /// As DC1: batches (by base offset) counted in the high watermark but left out
    /// of this many more fetches that reach them (u32::MAX: always), as Tansu does
    /// between taking an offset and storing the batch, or as compaction leaves it.
    pub unlisted: HashMap<(String, i32, i64), u32>,
    /// Stored batches still to be written without an answer (see `WriteSilently`).
    silent: u32,
    /// Batches are not read for their tag and not listed in `stored`: scripts and
    /// `always` do not apply. For long runs, where neither is used.
    pub untagged: bool,
    /// Keep only about this many of the newest bytes per partition in `log` (at least
    /// this many, and the batch that crosses it; trimmed once a quarter more has
    /// accumulated). Offsets keep counting; the partition's log start moves to the
    /// first batch kept, as retention moves it. None: keep everything.
    pub retain_bytes: Option<usize>,
    /// Per partition, the log start set by `retain_bytes` (`log_start` is the floor).
    trimmed_start: HashMap<(String, i32), i64>,
    /// Per partition, the bytes `log` holds (kept only with `retain_bytes`).
    log_bytes: HashMap<(String, i32), usize>,
}

impl State {
    /// A double with no topics; producer ids it hands out start at 1000.
    pub fn new() -> Self {
        State {
            next_pid: 1000,
            ..State::default()
        }
    }

    /// Appends a batch to the DC1 log, setting its base offset.
    pub fn append(&mut self, topic: &str, partition: i32, batch: &Bytes) -> i64 {
        let key = (topic.to_string(), partition);
        let log = self.log.entry(key.clone()).or_default();
        let base = log.last().map_or(0, end_of);
        let mut b = BytesMut::from(&batch[..]);
        b[..8].copy_from_slice(&base.to_be_bytes());
        log.push(b.freeze());
        if let Some(keep) = self.retain_bytes {
            let held = self.log_bytes.entry(key.clone()).or_default();
            *held += batch.len();
            if *held > keep + keep / 4 {
                // Drop the oldest batches while what remains still holds `keep` bytes.
                let mut drop = 0;
                while drop + 1 < log.len() && *held - log[drop].len() >= keep {
                    *held -= log[drop].len();
                    drop += 1;
                }
                log.drain(..drop);
                if let Some(first) = log.first() {
                    let start = i64::from_be_bytes(first[..8].try_into().expect("8 bytes"));
                    self.trimmed_start.insert(key, start);
                }
            }
        }
        base
    }

    /// The partition's log start offset.
    fn log_start_of(&self, topic: &str, partition: i32) -> i64 {
        self.trimmed_start
            .get(&(topic.to_string(), partition))
            .map_or(self.log_start, |s| self.log_start.max(*s))
    }

    fn high_watermark(&self, topic: &str, partition: i32) -> i64 {
        self.log
            .get(&(topic.to_string(), partition))
            .and_then(|l| l.last())
            .map_or(0, end_of)
    }
}

/// The offset after a batch's last record.
fn end_of(b: &Bytes) -> i64 {
    let rb = RecordBatch::parse(b.clone()).expect("batch");
    rb.base_offset() + i64::from(rb.last_offset_delta()) + 1
}

enum Outcome {
    Code(i16),
    /// Stored at this offset.
    Stored(i64),
    Close,
    StoreThenClose,
    /// Stored; no answer.
    Silent,
}

impl State {
    fn produce(&mut self, topic: &str, partition: i32, records: &Bytes) -> Outcome {
        let Ok(batch) = RecordBatch::parse(records.clone()) else {
            return Outcome::Code(87);
        };
        let tag = if self.untagged {
            String::new()
        } else {
            tag_of(records)
        };
        if let Some(code) = self.always.get(&tag) {
            return Outcome::Code(*code);
        }
        // Errors and lost connections hit whatever arrives; the other actions wait
        // for the batch to arrive in sequence.
        let action = if self.untagged {
            None
        } else {
            self.script.get(&tag).and_then(|q| q.front().copied())
        };
        match action {
            Some(Action::Error(code)) => {
                self.pop(&tag);
                return Outcome::Code(code);
            }
            Some(Action::CloseBeforeWrite) => {
                self.pop(&tag);
                return Outcome::Close;
            }
            _ => {}
        }
        let pid = batch.producer_id();
        if !self.known.contains(&pid) {
            return Outcome::Code(59);
        }
        let seq = batch.base_sequence();
        let last = seq + batch.last_offset_delta();
        let key = (pid, topic.to_string(), partition);
        let (recent, next) = self.seqs.entry(key).or_insert((VecDeque::new(), 0));
        if recent.contains(&(seq, last)) {
            return Outcome::Code(46);
        }
        if seq != *next {
            return Outcome::Code(45);
        }
        if let Some(Action::ForgetProducer) = action {
            self.pop(&tag);
            self.known.remove(&pid);
            return Outcome::Code(59);
        }
        recent.push_back((seq, last));
        if recent.len() > 5 {
            recent.pop_front();
        }
        *next = last + 1;
        if !self.untagged {
            self.stored
                .entry((topic.to_string(), partition))
                .or_default()
                .push((tag.clone(), pid, seq));
        }
        let offset = self.append(topic, partition, records);
        if let Some(Action::WriteSilently(n)) = action {
            self.pop(&tag);
            self.silent = n;
        }
        if self.silent > 0 {
            self.silent -= 1;
            return if self.silent == 0 {
                Outcome::StoreThenClose
            } else {
                Outcome::Silent
            };
        }
        if let Some(Action::WriteThenClose) = action {
            self.pop(&tag);
            return Outcome::StoreThenClose;
        }
        Outcome::Stored(offset)
    }

    /// Answers again from now on (ends a `WriteSilently`).
    pub fn silent_off(&mut self) {
        self.silent = 0;
    }

    fn pop(&mut self, tag: &str) {
        if let Some(q) = self.script.get_mut(tag) {
            q.pop_front();
        }
    }
}

/// The tag of a test batch: the second word of its first record's value.
pub fn tag_of(records: &Bytes) -> String {
    let mut b = records.clone();
    RecordBatchDecoder::decode(&mut b)
        .ok()
        .and_then(|set| set.records.into_iter().next())
        .and_then(|r| r.value)
        .and_then(|v| {
            String::from_utf8_lossy(&v)
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

pub struct MockDc2 {
    pub addr: String,
    pub state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockDc2 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockDc2 {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::new()));
        let task = tokio::spawn(accept_loop(
            listener,
            state.clone(),
            addr.ip().to_string(),
            addr.port(),
        ));
        Self {
            addr: addr.to_string(),
            state,
            task,
        }
    }

    pub fn stored(&self, topic: &str, partition: i32) -> Vec<Stored> {
        let st = self.state.lock().expect("state");
        st.stored
            .get(&(topic.to_string(), partition))
            .cloned()
            .unwrap_or_default()
    }
}

/// Serves every connection `listener` accepts from `state`; Metadata names the broker
/// `host:port` (the address clients are to connect to).
pub async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, host: String, port: u16) {
    let host: Arc<str> = host.into();
    while let Ok((sock, _)) = listener.accept().await {
        let _ = sock.set_nodelay(true);
        tokio::spawn(serve(sock, state.clone(), host.clone(), port));
    }
}

async fn serve(mut sock: TcpStream, state: Arc<Mutex<State>>, host: Arc<str>, port: u16) {
    loop {
        let Some(ReadRequest {
            key,
            version,
            header,
            mut body,
        }) = read_request(&mut sock).await
        else {
            return;
        };
        let cid = header.correlation_id;
        let (frame, close) = match key {
            ApiKey::ApiVersions => {
                let mut r = ApiVersionsResponse::default();
                for (k, lo, hi) in [
                    (0, 3, 9),
                    (1, 4, 11),
                    (2, 1, 7),
                    (3, 1, 9),
                    (18, 0, 3),
                    (19, 2, 5),
                    (22, 0, 4),
                ] {
                    let mut v = ApiVersion::default();
                    v.api_key = k;
                    v.min_version = lo;
                    v.max_version = hi;
                    r.api_keys.push(v);
                }
                (respond(cid, version, &r), false)
            }
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut body, version).expect("metadata");
                let st = state.lock().expect("state");
                let names: Vec<String> = match req.topics {
                    Some(ts) => ts
                        .into_iter()
                        .filter_map(|t| t.name.map(|n| n.0.to_string()))
                        .collect(),
                    None => st.topics.keys().cloned().collect(),
                };
                let mut r = MetadataResponse::default();
                let mut b = MetadataResponseBroker::default();
                b.node_id = BrokerId(1);
                b.host = StrBytes::from_string(host.to_string());
                b.port = i32::from(port);
                r.brokers = vec![b];
                r.controller_id = BrokerId(1);
                for n in names {
                    let mut t = MetadataResponseTopic::default();
                    t.name = Some(TopicName(StrBytes::from_string(n.clone())));
                    match st.topics.get(&n) {
                        Some(count) => {
                            t.partitions = (0..*count)
                                .map(|i| {
                                    let mut p = MetadataResponsePartition::default();
                                    p.partition_index = i;
                                    p.leader_id = BrokerId(1);
                                    p.replica_nodes = vec![BrokerId(1)];
                                    p.isr_nodes = vec![BrokerId(1)];
                                    p
                                })
                                .collect();
                        }
                        None => t.error_code = 3,
                    }
                    r.topics.push(t);
                }
                (respond(cid, version, &r), false)
            }
            ApiKey::InitProducerId => {
                let mut st = state.lock().expect("state");
                let pid = st.next_pid;
                st.next_pid += 1;
                st.known.insert(pid);
                let mut r = InitProducerIdResponse::default();
                r.producer_id = pid.into();
                r.producer_epoch = 0;
                (respond(cid, version, &r), false)
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut body, version).expect("create");
                let mut st = state.lock().expect("state");
                let mut r = CreateTopicsResponse::default();
                for t in req.topics {
                    let mut res = CreatableTopicResult::default();
                    res.name = t.name.clone();
                    if st.topics.contains_key(t.name.0.as_str()) {
                        res.error_code = 36;
                    } else {
                        st.topics.insert(t.name.0.to_string(), t.num_partitions);
                    }
                    r.topics.push(res);
                }
                (respond(cid, version, &r), false)
            }
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut body, version).expect("produce");
                let mut st = state.lock().expect("state");
                let mut r = ProduceResponse::default();
                let mut close = None;
                let mut silent = false;
                for t in req.topic_data {
                    let mut tr = TopicProduceResponse::default();
                    tr.name = t.name.clone();
                    for p in t.partition_data {
                        let records = p.records.unwrap_or_default();
                        let mut pr = PartitionProduceResponse::default();
                        pr.index = p.index;
                        match st.produce(t.name.0.as_str(), p.index, &records) {
                            Outcome::Code(c) => pr.error_code = c,
                            Outcome::Stored(offset) => pr.base_offset = offset,
                            Outcome::Close => close = Some(false),
                            Outcome::StoreThenClose => close = Some(true),
                            Outcome::Silent => silent = true,
                        }
                        tr.partition_responses.push(pr);
                    }
                    r.responses.push(tr);
                }
                if close.is_some() {
                    return;
                }
                if silent {
                    continue;
                }
                (respond(cid, version, &r), false)
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut body, version).expect("fetch");
                let mut st = state.lock().expect("state");
                let mut r = FetchResponse::default();
                for t in req.topics {
                    let mut tr = FetchableTopicResponse::default();
                    tr.topic = t.topic.clone();
                    for p in t.partitions {
                        let name = t.topic.0.to_string();
                        let hw = st.high_watermark(&name, p.partition);
                        let st = &mut *st;
                        let mut pd = PartitionData::default();
                        pd.partition_index = p.partition;
                        pd.high_watermark = hw;
                        pd.last_stable_offset = hw;
                        let start = st.log_start_of(&name, p.partition);
                        pd.log_start_offset = start;
                        pd.aborted_transactions = Some(Vec::new());
                        if p.fetch_offset < start || p.fetch_offset > hw {
                            pd.error_code = 1;
                        } else {
                            let mut out = BytesMut::new();
                            let log = st
                                .log
                                .get(&(name.clone(), p.partition))
                                .map_or(&[][..], |l| &l[..]);
                            // Ends grow along the log: skip to the first batch that
                            // reaches past the fetch offset.
                            let first = log.partition_point(|b| end_of(b) <= p.fetch_offset);
                            for b in &log[first..] {
                                if out.len() >= p.partition_max_bytes as usize {
                                    break;
                                }
                                let base = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                                if let Some(n) =
                                    st.unlisted.get_mut(&(name.clone(), p.partition, base))
                                    && *n > 0
                                {
                                    *n = n.saturating_sub(u32::from(*n != u32::MAX));
                                    continue;
                                }
                                out.extend_from_slice(b);
                            }
                            pd.records = Some(out.freeze());
                        }
                        tr.partitions.push(pd);
                    }
                    r.responses.push(tr);
                }
                (respond(cid, version, &r), false)
            }
            ApiKey::ListOffsets => {
                let req = ListOffsetsRequest::decode(&mut body, version).expect("list");
                let st = state.lock().expect("state");
                let mut r = ListOffsetsResponse::default();
                for t in req.topics {
                    let mut tr = ListOffsetsTopicResponse::default();
                    tr.name = t.name.clone();
                    for p in t.partitions {
                        let mut pr = ListOffsetsPartitionResponse::default();
                        pr.partition_index = p.partition_index;
                        pr.offset = if p.timestamp == -2 {
                            st.log_start_of(t.name.0.as_str(), p.partition_index)
                        } else {
                            st.high_watermark(t.name.0.as_str(), p.partition_index)
                        };
                        tr.partitions.push(pr);
                    }
                    r.topics.push(tr);
                }
                (respond(cid, version, &r), false)
            }
            _ => return,
        };
        if sock.write_all(&frame).await.is_err() || close {
            return;
        }
    }
}
