//! Configuration: the TOML file format, command-line overrides, defaults and
//! validation that reports every problem at once.
//!
//! Every field is documented in `config/kafka-tee.toml`; a test parses every file under
//! `config/` so the examples never drift from these types.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration, as read from a file and then overridden by flags.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub source: ClusterConfig,
    /// Replication is off when `target.bootstrap` is empty.
    pub target: ClusterConfig,
    pub replication: ReplicationConfig,
    pub admin: AdminConfig,
    pub state: StateConfig,
    pub tls: TlsConfig,
}

/// How clients reach the proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Bootstrap listener, `HOST:PORT`.
    pub listen: String,
    /// Host name or IP put into rewritten broker addresses. Defaults to the listen host.
    pub advertised_host: Option<String>,
    /// First port of the per-broker listeners. Defaults to the listen port + 1.
    pub first_broker_port: Option<u16>,
    /// Explicit broker id -> proxy port assignments; they win over the sequential scheme.
    pub broker_ports: BTreeMap<i32, u16>,
    /// Largest request or response frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Most client connections open at once; further connections are refused.
    pub max_connections: usize,
    /// Most requests awaiting a response on one client connection; reading from the
    /// client pauses at this bound.
    pub max_in_flight: usize,
    /// Timeout for connecting to a DC1 broker, in milliseconds.
    pub connect_timeout_ms: u64,
    /// A client connection with no request and nothing in flight for this long is closed.
    pub idle_timeout_ms: u64,
    /// A request whose bytes stop arriving mid-frame for this long closes the
    /// connection, in milliseconds.
    pub frame_read_timeout_ms: u64,
    /// Grace period on SIGINT/SIGTERM for in-flight requests and the replicator, in ms.
    pub shutdown_grace_ms: u64,
    /// Threads that run connections (0: one per CPU core).
    pub worker_threads: usize,
    /// Frames of at least this many bytes that the proxy does not need to read (large
    /// Produce requests with the tee off, Fetch responses) are moved between plaintext
    /// sockets with splice(2), without copying their bytes through the proxy. 0: off.
    pub splice_min_bytes: usize,
    /// With the tee on, large Produce requests (from `splice_min_bytes`) are spliced to
    /// DC1 while the proxy reads a copy with tee(2): one copy through the proxy's
    /// memory instead of two. false: such requests are read whole and written out.
    pub tee_splice: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9092".into(),
            advertised_host: None,
            first_broker_port: None,
            broker_ports: BTreeMap::new(),
            max_frame_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            max_in_flight: 512,
            connect_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            frame_read_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            worker_threads: 0,
            splice_min_bytes: 64 * 1024,
            tee_splice: true,
        }
    }
}

/// A Kafka cluster the proxy talks to.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Bootstrap addresses, `HOST:PORT` each.
    pub bootstrap: Vec<String>,
    /// TLS from the proxy to this cluster's brokers.
    pub tls: UpstreamTlsConfig,
    /// SASL credentials for kafka-tee's own connections to this cluster (the replicator
    /// and catch-up reads). Clients' connections through the proxy authenticate
    /// themselves; their SASL frames pass through untouched.
    pub sasl: Option<SaslConfig>,
}

/// A SASL mechanism kafka-tee can authenticate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name sent in SaslHandshake.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL username and where its password comes from: exactly one of `password`,
/// `password_file` (first line; the file is read at start-up) and `password_env`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
}

/// Never prints the password.
impl std::fmt::Debug for SaslConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslConfig")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .finish()
    }
}

impl SaslConfig {
    /// The password from wherever the configuration says it is. Errors name the
    /// source, never the secret.
    pub fn password(&self) -> Result<String, String> {
        match (&self.password, &self.password_file, &self.password_env) {
            (Some(p), None, None) => Ok(p.clone()),
            (None, Some(path), None) => std::fs::read_to_string(path)
                .map(|text| text.lines().next().unwrap_or_default().to_string())
                .map_err(|e| format!("password_file {}: {e}", path.display())),
            (None, None, Some(var)) => std::env::var(var)
                .map_err(|_| format!("password_env: environment variable {var} is not set")),
            _ => Err("give exactly one of password, password_file, password_env".into()),
        }
    }
}

/// TLS from the proxy to a cluster.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    /// Connect with TLS.
    pub enabled: bool,
    /// PEM CA bundle that signed the brokers' certificates (required when enabled).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, when the brokers require mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify the broker certificate against (default: the dialled host).
    pub server_name: Option<String>,
}

/// What the tee replicates and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Regular expressions; a topic is replicated when it matches one (empty: all).
    pub include: Vec<String>,
    /// Regular expressions; a matching topic is never replicated. Wins over include.
    pub exclude: Vec<String>,
    /// Prefix put before the topic name in DC2 (for example "dc1.").
    pub topic_prefix: String,
    /// Create missing DC2 topics with DC1's partition count and storage settings.
    pub create_topics: bool,
    /// Memory bound for batches waiting for DC2, in bytes. Past it, the replicator
    /// reads the missing offsets back from DC1 instead of holding them.
    pub max_pending_bytes: usize,
    /// Batches in flight per DC2 partition (each its own Produce request). Not limited
    /// to Kafka's 5: after a fault the replicator reads DC2's tail to learn what it
    /// holds (see README, "Long links").
    pub max_in_flight_per_partition: usize,
    /// Bytes in flight per DC2 partition: with the total below, what fills the
    /// bandwidth-delay product of the link to DC2.
    pub max_in_flight_bytes_per_partition: usize,
    /// Bytes in flight to DC2 over all partitions (a partition always has at least
    /// one batch in flight).
    pub max_in_flight_bytes: usize,
    /// SO_SNDBUF / SO_RCVBUF of connections to DC2, in bytes. 0 (the default) leaves
    /// them to the OS, which on Linux grows them with the link (up to net.ipv4.tcp_wmem
    /// and tcp_rmem); a set value turns that off and is capped by net.core.wmem_max /
    /// rmem_max.
    pub socket_send_buffer_bytes: usize,
    pub socket_receive_buffer_bytes: usize,
    /// Timeout of one request to DC2, in milliseconds.
    pub request_timeout_ms: u64,
    /// First retry backoff towards DC2, doubled up to `retry_backoff_max_ms`.
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// Topics (regular expressions) whose producers wait for DC2 before their response.
    pub sync_topics: Vec<String>,
    /// How often the checkpoint is written, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// A partition with nothing to copy for this long, in milliseconds, has its end in
    /// DC1 looked up: offsets DC1 holds that no acknowledgement through this proxy
    /// showed (a producer that bypasses the proxy, a request whose answer never came
    /// back) are read back and copied. The wait doubles while nothing is found, up to
    /// a minute. 0: off (such offsets are copied only when later traffic shows them).
    pub follow_interval_ms: u64,
    /// A replication group: kafka-tee instances started with the same group name
    /// share the replication of DC1's partitions, whatever their number. Ownership
    /// comes from Kafka's group protocol at DC1's group coordinator, and positions are
    /// that group's committed offsets in DC1 (see README, "Running several
    /// instances"). None: this instance replicates every partition it carries.
    pub group: Option<String>,
    /// A member whose heartbeats stop for this long is dropped from the group and its
    /// partitions taken over by the others. In milliseconds.
    pub group_session_timeout_ms: u64,
    /// How often a member heartbeats, in milliseconds.
    pub group_heartbeat_interval_ms: u64,
    /// How long the coordinator waits for every member to rejoin in a rebalance; a
    /// member first waits for its batches in flight to DC2 to be answered, so it must
    /// exceed `request_timeout_ms`. In milliseconds.
    pub group_rebalance_timeout_ms: u64,
    /// Consumer group offsets copied to DC2, translated (see README, "Failing
    /// consumers over to DC2"). Off unless `include` names groups.
    pub group_offsets: GroupOffsetsConfig,
    /// Replaced by `group`; a configuration that still has them is refused with a
    /// message that says so.
    #[doc(hidden)]
    pub instances: Option<serde::de::IgnoredAny>,
    #[doc(hidden)]
    pub instance: Option<serde::de::IgnoredAny>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: vec!["^__".into()],
            topic_prefix: String::new(),
            create_topics: true,
            max_pending_bytes: 256 * 1024 * 1024,
            max_in_flight_per_partition: 1024,
            max_in_flight_bytes_per_partition: 16 * 1024 * 1024,
            max_in_flight_bytes: 128 * 1024 * 1024,
            socket_send_buffer_bytes: 0,
            socket_receive_buffer_bytes: 0,
            request_timeout_ms: 30_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 5_000,
            sync_topics: Vec::new(),
            checkpoint_interval_ms: 1_000,
            follow_interval_ms: 1_000,
            group: None,
            group_session_timeout_ms: 10_000,
            group_heartbeat_interval_ms: 1_000,
            group_rebalance_timeout_ms: 60_000,
            group_offsets: GroupOffsetsConfig::default(),
            instances: None,
            instance: None,
        }
    }
}

/// Which DC1 consumer groups have their committed offsets translated and committed
/// to the same group in DC2, and how often.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupOffsetsConfig {
    /// Regular expressions; a group is synced when it matches one. Empty: off.
    pub include: Vec<String>,
    /// Regular expressions; a matching group is never synced. Wins over include.
    pub exclude: Vec<String>,
    /// How often DC1's committed offsets are read and DC2's updated, in milliseconds.
    pub interval_ms: u64,
}

impl Default for GroupOffsetsConfig {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
            interval_ms: 5_000,
        }
    }
}

/// Admin HTTP endpoint (metrics, health).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `HOST:PORT`; no admin endpoint when unset.
    pub listen: Option<String>,
}

/// Where durable state (checkpoints) lives.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory for checkpoints; without it replication state lives in memory only.
    pub dir: Option<PathBuf>,
}

/// TLS on the client-facing listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; TLS is on when cert and key are both set.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes; new connections use the new
    /// certificate, open ones keep theirs. In milliseconds.
    pub reload_interval_ms: u64,
    /// A TLS handshake that takes longer closes the connection. In milliseconds.
    pub handshake_timeout_ms: u64,
    /// SNI routing: brokers are handed out as `broker-<id>.<domain>` on the bootstrap
    /// port and told apart by the TLS server name, instead of one port per broker.
    /// The names must resolve to the proxy (a wildcard DNS record).
    pub sni_domain: Option<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            reload_interval_ms: 10_000,
            handshake_timeout_ms: 10_000,
            sni_domain: None,
        }
    }
}

impl TlsConfig {
    /// Whether the client-facing ports speak TLS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// A configuration error, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads and parses a TOML file (not yet validated).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text (not yet validated).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Whether the tee is on.
    pub fn replication_enabled(&self) -> bool {
        !self.target.bootstrap.is_empty()
    }

    /// Checks every field and reports all problems together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = parse_addr(&self.proxy.listen) {
            problems.push(format!("proxy.listen: {e}"));
        }
        if self.source.bootstrap.is_empty() {
            problems
                .push("source.bootstrap: at least one DC1 address is required (--source)".into());
        }
        for (name, cluster) in [("source", &self.source), ("target", &self.target)] {
            for a in &cluster.bootstrap {
                if let Err(e) = check_host_port(a) {
                    problems.push(format!("{name}.bootstrap: {e}"));
                }
            }
        }
        if let Some(a) = &self.admin.listen
            && let Err(e) = parse_addr(a)
        {
            problems.push(format!("admin.listen: {e}"));
        }
        let p = &self.proxy;
        if p.max_frame_bytes < 1024 {
            problems.push(format!(
                "proxy.max_frame_bytes: {} is too small (at least 1024)",
                p.max_frame_bytes
            ));
        }
        let min_splice = 4 * crate::protocol::HEAD_BYTES;
        if p.splice_min_bytes != 0 && p.splice_min_bytes < min_splice {
            problems.push(format!(
                "proxy.splice_min_bytes: {} is too small (0 for off, or at least {min_splice})",
                p.splice_min_bytes
            ));
        }
        for (field, v) in [
            ("proxy.max_connections", p.max_connections),
            ("proxy.max_in_flight", p.max_in_flight),
        ] {
            if v == 0 {
                problems.push(format!("{field}: must be at least 1"));
            }
        }
        let r = &self.replication;
        // Longer waits are mistakes, and deadlines computed from them must not overflow.
        const DAY_MS: u64 = 24 * 60 * 60 * 1000;
        for (field, v) in [
            ("proxy.connect_timeout_ms", p.connect_timeout_ms),
            ("proxy.idle_timeout_ms", p.idle_timeout_ms),
            ("proxy.frame_read_timeout_ms", p.frame_read_timeout_ms),
            ("proxy.shutdown_grace_ms", p.shutdown_grace_ms),
            ("replication.request_timeout_ms", r.request_timeout_ms),
            ("replication.retry_backoff_ms", r.retry_backoff_ms),
            ("replication.retry_backoff_max_ms", r.retry_backoff_max_ms),
            (
                "replication.checkpoint_interval_ms",
                r.checkpoint_interval_ms,
            ),
            ("replication.follow_interval_ms", r.follow_interval_ms),
            ("tls.reload_interval_ms", self.tls.reload_interval_ms),
            ("tls.handshake_timeout_ms", self.tls.handshake_timeout_ms),
        ] {
            if v > DAY_MS {
                problems.push(format!("{field}: {v} is more than a day ({DAY_MS} ms)"));
            }
        }
        if r.instances.is_some() || r.instance.is_some() {
            problems.push(
                "replication.instances / replication.instance: replaced by replication.group; \
                 start every instance with the same `group = \"NAME\"` (or \
                 --replication-group NAME) and remove both fields: ownership and positions \
                 then live in DC1's consumer group NAME (see README, \"Running several \
                 instances\")"
                    .into(),
            );
        }
        if let Some(g) = &r.group {
            if g.trim().is_empty() || g.len() > 249 {
                problems.push(format!(
                    "replication.group: {g:?} must be 1 to 249 characters, not blank"
                ));
            }
            if !r.sync_topics.is_empty() {
                problems.push(
                    "replication.sync_topics: not available with replication.group (an \
                     instance cannot confirm partitions another instance replicates)"
                        .into(),
                );
            }
            if r.follow_interval_ms == 0 {
                problems.push(
                    "replication.follow_interval_ms: must not be 0 with replication.group \
                     (records produced through the other instances are found by it)"
                        .into(),
                );
            }
            if !(1_000..=DAY_MS).contains(&r.group_session_timeout_ms) {
                problems.push(format!(
                    "replication.group_session_timeout_ms: {} is outside 1000..={DAY_MS}",
                    r.group_session_timeout_ms
                ));
            }
            if r.group_heartbeat_interval_ms == 0
                || r.group_heartbeat_interval_ms.saturating_mul(3) > r.group_session_timeout_ms
            {
                problems.push(format!(
                    "replication.group_heartbeat_interval_ms: {} must be above 0 and at most a \
                     third of group_session_timeout_ms ({})",
                    r.group_heartbeat_interval_ms, r.group_session_timeout_ms
                ));
            }
            if r.group_rebalance_timeout_ms <= r.request_timeout_ms
                || r.group_rebalance_timeout_ms > DAY_MS
            {
                problems.push(format!(
                    "replication.group_rebalance_timeout_ms: {} must exceed request_timeout_ms \
                     ({}) and be at most a day",
                    r.group_rebalance_timeout_ms, r.request_timeout_ms
                ));
            }
        }
        if !(1..=65_536).contains(&r.max_in_flight_per_partition) {
            problems.push(format!(
                "replication.max_in_flight_per_partition: {} is outside 1..=65536",
                r.max_in_flight_per_partition
            ));
        }
        for (name, v) in [
            (
                "max_in_flight_bytes_per_partition",
                r.max_in_flight_bytes_per_partition,
            ),
            ("max_in_flight_bytes", r.max_in_flight_bytes),
        ] {
            if v < 1024 {
                problems.push(format!("replication.{name}: must be at least 1024"));
            }
        }
        if !(100..=DAY_MS).contains(&r.group_offsets.interval_ms) {
            problems.push(format!(
                "replication.group_offsets.interval_ms: {} is outside 100..={DAY_MS}",
                r.group_offsets.interval_ms
            ));
        }
        if r.max_pending_bytes < 1024 {
            problems.push("replication.max_pending_bytes: must be at least 1024".into());
        }
        for (field, list) in [
            ("replication.include", &r.include),
            ("replication.exclude", &r.exclude),
            ("replication.sync_topics", &r.sync_topics),
            (
                "replication.group_offsets.include",
                &r.group_offsets.include,
            ),
            (
                "replication.group_offsets.exclude",
                &r.group_offsets.exclude,
            ),
        ] {
            for pat in list {
                if let Err(e) = regex::Regex::new(pat) {
                    problems.push(format!("{field}: bad pattern {pat:?}: {e}"));
                }
            }
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) | (None, Some(_)) => {
                problems.push("tls: cert and key must be given together".into())
            }
            _ => {}
        }
        if self.tls.sni_domain.is_some() && !self.tls.enabled() {
            problems.push("tls.sni_domain: SNI routing needs tls.cert and tls.key".into());
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            problems.push("tls.client_ca: needs tls.cert and tls.key".into());
        }
        for (field, path) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                problems.push(format!(
                    "{field}: {} is not a readable file",
                    path.display()
                ));
            }
        }
        for (name, cluster) in [("source", &self.source), ("target", &self.target)] {
            let t = &cluster.tls;
            if t.enabled && t.ca.is_none() {
                problems.push(format!(
                    "{name}.tls.ca: required when {name}.tls.enabled = true"
                ));
            }
            if t.cert.is_some() != t.key.is_some() {
                problems.push(format!("{name}.tls: cert and key must be given together"));
            }
            for (field, path) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
                if let Some(path) = path
                    && !path.is_file()
                {
                    problems.push(format!(
                        "{name}.tls.{field}: {} is not a readable file",
                        path.display()
                    ));
                }
            }
        }
        for (name, cluster) in [("source", &self.source), ("target", &self.target)] {
            if let Some(sasl) = &cluster.sasl {
                if sasl.username.is_empty() {
                    problems.push(format!("{name}.sasl.username: must not be empty"));
                }
                match sasl.password() {
                    Ok(p) if p.is_empty() => {
                        problems.push(format!("{name}.sasl: the password is empty"))
                    }
                    Ok(_) => {}
                    Err(e) => problems.push(format!("{name}.sasl: {e}")),
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.proxy.connect_timeout_ms)
    }
}

/// Parses a listen address; only IP literals bind deterministically.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|e| format!("{s:?} is not an IP:PORT address ({e})"))
}

/// Checks a `HOST:PORT` upstream address without resolving it.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("{s:?} has an empty host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{s:?} has an invalid port {port:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
