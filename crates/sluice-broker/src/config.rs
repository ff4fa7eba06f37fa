//! Broker configuration under Kafka's own setting names.
//!
//! Every setting is declared once in [`BROKER_SETTINGS`] with its type, default and
//! documentation. Values arrive as strings from the config file, the environment, flags
//! and `--set`; [`BrokerConfig::from_pairs`] validates each one and rejects unknown keys,
//! naming the key, so a typo fails at start-up instead of being silently ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A configuration error: always names the key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown setting `{key}`")]
    UnknownKey { key: String },
    #[error("`{key}` cannot be changed at run time; set it in the configuration and restart")]
    NotDynamic { key: String },
    #[error("invalid value `{value}` for `{key}`: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
}

/// The type of a setting and the bounds its value must respect.
#[derive(Debug, Clone, Copy)]
pub enum SettingKind {
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    /// `host:port`, optionally prefixed by `PLAINTEXT://`.
    HostPort,
    Path,
    /// One of a fixed list of words.
    Choice(&'static [&'static str]),
    /// A comma-separated, non-empty list of distinct words from a fixed list (Kafka's LIST
    /// type, e.g. `cleanup.policy=compact,delete`).
    List(&'static [&'static str]),
    /// A comma-separated, possibly empty list of `ip:count` (Kafka's STRING
    /// `max.connections.per.ip.overrides`); see [`parse_host_counts`].
    HostCounts,
    /// A decimal number between `min` and `max` (Kafka's DOUBLE type).
    Double {
        min: f64,
        max: f64,
    },
    /// Free text (Kafka's STRING), e.g. `broker.rack`.
    Text,
    /// `controller.quorum.voters`: empty, or `id@host:port,...`.
    Voters,
}

/// One broker setting: Kafka's name, aliases accepted on input, default and documentation.
#[derive(Debug)]
pub struct SettingDef {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub default: &'static str,
    pub kind: SettingKind,
    pub doc: &'static str,
}

const I32_MAX: i64 = i32::MAX as i64;

/// Words of `cleanup.policy`.
pub const CLEANUP_POLICIES: &[&str] = &["delete", "compact"];
/// Values of `compression.type`.
pub const COMPRESSION_TYPES: &[&str] =
    &["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"];

/// Every broker setting Sluice understands. Names are Kafka's.
pub static BROKER_SETTINGS: &[SettingDef] = &[
    SettingDef {
        name: "node.id",
        aliases: &["broker.id", "node-id"],
        default: "1",
        kind: SettingKind::Int { min: 0, max: I32_MAX },
        doc: "The id of this node in the cluster.",
    },
    SettingDef {
        name: "controller.quorum.voters",
        aliases: &["controller-quorum-voters"],
        default: "",
        kind: SettingKind::Voters,
        doc: "The controller quorum, id@host:port,... (Kafka's format). Empty: this node is the only voter, in process, with no reachable listener needed.",
    },
    SettingDef {
        name: "controller.listener",
        aliases: &["controller-listener"],
        default: "",
        kind: SettingKind::HostPort,
        doc: "Address the controller (Raft) listener binds, host:port; default: this node's entry in controller.quorum.voters.",
    },
    SettingDef {
        name: "broker.rack",
        aliases: &["broker-rack"],
        default: "",
        kind: SettingKind::Text,
        doc: "Rack of this broker; the controller spreads a partition's replicas over racks. Empty: no rack.",
    },
    SettingDef {
        name: "broker.session.timeout.ms",
        aliases: &[],
        default: "9000",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "A broker that has not heartbeated to the controller for this long is fenced (leads nothing).",
    },
    SettingDef {
        name: "broker.heartbeat.interval.ms",
        aliases: &[],
        default: "2000",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "Interval between a broker's heartbeats to the controller.",
    },
    SettingDef {
        name: "auto.leader.rebalance.enable",
        aliases: &[],
        default: "true",
        kind: SettingKind::Bool,
        doc: "The active controller's broker moves leadership back to in-sync preferred replicas every leader.imbalance.check.interval.seconds.",
    },
    SettingDef {
        name: "leader.imbalance.check.interval.seconds",
        aliases: &[],
        default: "300",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "How often preferred leaders are checked (auto.leader.rebalance.enable).",
    },
    SettingDef {
        name: "replica.lag.time.max.ms",
        aliases: &[],
        default: "30000",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "A follower that has not caught up with the leader's log end for this long leaves the ISR.",
    },
    SettingDef {
        name: "replica.fetch.wait.max.ms",
        aliases: &[],
        default: "500",
        kind: SettingKind::Int { min: 0, max: I32_MAX },
        doc: "How long a follower's fetch waits at the leader for new data.",
    },
    SettingDef {
        name: "replica.fetch.max.bytes",
        aliases: &[],
        default: "1048576",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "Bytes a follower fetches per partition per request (at least one batch).",
    },
    SettingDef {
        name: "replica.fetch.response.max.bytes",
        aliases: &[],
        default: "10485760",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "Bytes a follower fetches per request over all partitions (at least one batch).",
    },
    SettingDef {
        name: "replica.fetch.backoff.ms",
        aliases: &[],
        default: "1000",
        kind: SettingKind::Int { min: 0, max: I32_MAX },
        doc: "Pause of a follower after a failed fetch (leader unreachable, partition moving).",
    },
    SettingDef {
        name: "replica.socket.timeout.ms",
        aliases: &[],
        default: "30000",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "A follower drops its connection to a leader that does not answer a fetch within this (plus replica.fetch.wait.max.ms).",
    },
    SettingDef {
        name: "listeners",
        aliases: &["listen"],
        default: "127.0.0.1:9092",
        kind: SettingKind::HostPort,
        doc: "Address the Kafka listener binds, host:port.",
    },
    SettingDef {
        name: "advertised.listeners",
        aliases: &["advertise"],
        default: "",
        kind: SettingKind::HostPort,
        doc: "Address given to clients in Metadata; defaults to the listener, with 127.0.0.1 for a wildcard host.",
    },
    SettingDef {
        name: "log.dirs",
        aliases: &["log.dir", "data.dir", "data-dir"],
        default: "./sluice-data",
        kind: SettingKind::Path,
        doc: "Directory holding the partition logs and the metadata of this node.",
    },
    SettingDef {
        name: "num.partitions",
        aliases: &[],
        default: "1",
        kind: SettingKind::Int { min: 1, max: 100_000 },
        doc: "Default partition count of created and auto-created topics.",
    },
    SettingDef {
        name: "default.replication.factor",
        aliases: &[],
        default: "1",
        kind: SettingKind::Int { min: 1, max: i16::MAX as i64 },
        doc: "Default replication factor of created and auto-created topics.",
    },
    SettingDef {
        name: "auto.create.topics.enable",
        aliases: &[],
        default: "true",
        kind: SettingKind::Bool,
        doc: "Create a topic when a client asks Metadata for one that does not exist.",
    },
    SettingDef {
        name: "log.segment.bytes",
        aliases: &[],
        default: "1073741824",
        kind: SettingKind::Int { min: 14, max: I32_MAX },
        doc: "Maximum size of one segment file before a new one is rolled.",
    },
    SettingDef {
        name: "log.roll.ms",
        aliases: &[],
        default: "604800000",
        kind: SettingKind::Int { min: 1, max: i64::MAX },
        doc: "Maximum age of the active segment before a new one is rolled.",
    },
    SettingDef {
        name: "log.index.interval.bytes",
        aliases: &[],
        default: "4096",
        kind: SettingKind::Int { min: 0, max: I32_MAX },
        doc: "Bytes of log between two entries of the sparse offset index.",
    },
    SettingDef {
        name: "log.flush.interval.messages",
        aliases: &[],
        default: "9223372036854775807",
        kind: SettingKind::Int { min: 1, max: i64::MAX },
        doc: "Fsync a partition once this many records are not yet on disk (acks=all always waits for fsync).",
    },
    SettingDef {
        name: "log.flush.interval.ms",
        aliases: &[],
        default: "1000",
        kind: SettingKind::Int { min: 1, max: i64::MAX },
        doc: "Fsync a partition at least this often while it has unsynced records (acks=all always waits for fsync).",
    },
    SettingDef {
        name: "log.flush.interval.bytes",
        aliases: &[],
        default: "1048576",
        kind: SettingKind::Int { min: 1, max: i64::MAX },
        doc: "Fsync a partition once this many bytes are not yet on disk (Sluice's own setting): many small flushes keep appends flowing, where one large flush stalls them while it writes.",
    },
    SettingDef {
        name: "log.flush.method",
        aliases: &[],
        default: "fdatasync",
        kind: SettingKind::Choice(&["fdatasync", "syncfs"]),
        doc: "How group commits reach the disk: fdatasync (each partition fsyncs its own files) or syncfs (one syncfs(2) of the data directory's filesystem covers every partition; fewer, larger flushes, for a data directory on a filesystem of its own).",
    },
    SettingDef {
        name: "log.flush.offset.checkpoint.interval.ms",
        aliases: &[],
        default: "60000",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "How often the recovery point of each partition is checkpointed; recovery scans only what follows it.",
    },
    SettingDef {
        name: "num.recovery.threads.per.data.dir",
        aliases: &[],
        default: "4",
        kind: SettingKind::Int { min: 1, max: 256 },
        doc: "Threads that open (and recover) partition logs in parallel at start-up.",
    },
    SettingDef {
        name: "message.max.bytes",
        aliases: &[],
        default: "1048588",
        kind: SettingKind::Int { min: 0, max: I32_MAX },
        doc: "Largest record batch accepted (topic override: max.message.bytes).",
    },
    SettingDef {
        name: "socket.request.max.bytes",
        aliases: &[],
        default: "104857600",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "Largest request frame accepted; a larger size prefix closes the connection.",
    },
    SettingDef {
        name: "fetch.max.bytes",
        aliases: &[],
        default: "57671680",
        kind: SettingKind::Int { min: 1024, max: I32_MAX },
        doc: "Upper bound on the bytes of one Fetch response, whatever the client asks.",
    },
    SettingDef {
        name: "socket.sendfile.enable",
        aliases: &[],
        default: "true",
        kind: SettingKind::Bool,
        doc: "Send Fetch record bytes from segment files with sendfile(2); false reads them with pread and writes them like any response bytes.",
    },
    SettingDef {
        name: "min.insync.replicas",
        aliases: &[],
        default: "1",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "Replicas that must be in sync for an acks=all produce to succeed.",
    },
    SettingDef {
        name: "unclean.leader.election.enable",
        aliases: &[],
        default: "false",
        kind: SettingKind::Bool,
        doc: "Whether a replica out of the ISR may lead when no in-sync replica is left (records may be lost); off, such a partition stays offline until an in-sync replica returns. The controller reads the topic's value or the cluster-wide dynamic default (AlterConfigs), not this node's static setting.",
    },
    SettingDef {
        name: "log.cleanup.policy",
        aliases: &[],
        default: "delete",
        kind: SettingKind::List(CLEANUP_POLICIES),
        doc: "Default cleanup policy of topics: delete (retention by time and size), compact (keep the last record per key), or both.",
    },
    SettingDef {
        name: "log.retention.ms",
        aliases: &[],
        default: "604800000",
        kind: SettingKind::Int { min: -1, max: i64::MAX },
        doc: "Default time a segment is kept after its newest record before it is deleted (-1: forever).",
    },
    SettingDef {
        name: "log.retention.bytes",
        aliases: &[],
        default: "-1",
        kind: SettingKind::Int { min: -1, max: i64::MAX },
        doc: "Default size a partition may reach before its oldest segments are deleted (-1: no limit).",
    },
    SettingDef {
        name: "log.retention.check.interval.ms",
        aliases: &[],
        default: "300000",
        kind: SettingKind::Int { min: 1, max: i64::MAX },
        doc: "How often partitions are checked for segments to delete under retention.",
    },
    SettingDef {
        name: "log.cleaner.enable",
        aliases: &[],
        default: "true",
        kind: SettingKind::Bool,
        doc: "Run the log cleaner that compacts topics with cleanup.policy=compact.",
    },
    SettingDef {
        name: "log.cleaner.backoff.ms",
        aliases: &[],
        default: "15000",
        kind: SettingKind::Int { min: 0, max: i64::MAX },
        doc: "How long the cleaner sleeps when no log needs cleaning.",
    },
    SettingDef {
        name: "log.cleaner.delete.retention.ms",
        aliases: &[],
        default: "86400000",
        kind: SettingKind::Int { min: 0, max: i64::MAX },
        doc: "Default time a tombstone is kept after compaction reached it.",
    },
    SettingDef {
        name: "log.cleaner.min.compaction.lag.ms",
        aliases: &[],
        default: "0",
        kind: SettingKind::Int { min: 0, max: i64::MAX },
        doc: "Default minimum age of a record before compaction may remove it.",
    },
    SettingDef {
        name: "log.cleaner.max.compaction.lag.ms",
        aliases: &[],
        default: "9223372036854775807",
        kind: SettingKind::Int { min: 1, max: i64::MAX },
        doc: "Default maximum time a record may stay uncompacted.",
    },
    SettingDef {
        name: "log.cleaner.min.cleanable.ratio",
        aliases: &[],
        default: "0.5",
        kind: SettingKind::Double { min: 0.0, max: 1.0 },
        doc: "Default share of a log that must be uncleaned before the cleaner compacts it.",
    },
    SettingDef {
        name: "compression.type",
        aliases: &[],
        default: "producer",
        kind: SettingKind::Choice(COMPRESSION_TYPES),
        doc: "Default compression of stored batches: producer (keep what the client sent) or a codec to recompress to.",
    },
    SettingDef {
        name: "log.message.timestamp.type",
        aliases: &[],
        default: "CreateTime",
        kind: SettingKind::Choice(&["CreateTime", "LogAppendTime"]),
        doc: "Default timestamp of stored records: the producer's (CreateTime) or the broker's append time (LogAppendTime).",
    },
    SettingDef {
        name: "producer.id.expiration.ms",
        aliases: &[],
        default: "86400000",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "An idempotent producer that wrote nothing to a partition for this long is forgotten there.",
    },
    SettingDef {
        name: "producer.id.expiration.check.interval.ms",
        aliases: &[],
        default: "600000",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "How often expired producer ids are looked for.",
    },
    SettingDef {
        name: "queued.max.requests",
        aliases: &[],
        default: "500",
        kind: SettingKind::Int { min: 1, max: 1_000_000 },
        doc: "Requests of one connection that may be in progress at once (pipelining depth).",
    },
    SettingDef {
        name: "max.connections",
        aliases: &[],
        default: "1000",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "Client connections open at once; a connection over the limit is accepted and closed at once (the listener keeps accepting others), so a flood of sockets cannot exhaust file descriptors.",
    },
    SettingDef {
        name: "max.connections.per.ip",
        aliases: &[],
        default: "2147483647",
        kind: SettingKind::Int { min: 0, max: I32_MAX },
        doc: "Client connections open at once from one IP address (unlimited by default, like Kafka); a connection over the limit is accepted and closed at once.",
    },
    SettingDef {
        name: "max.connection.creation.rate",
        aliases: &[],
        default: "2147483647",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "New connections accepted per second on the listener (unlimited by default, like Kafka); above it the listener waits before the next accept, so a reconnect storm is spread out instead of refused.",
    },
    SettingDef {
        name: "queued.max.request.bytes",
        aliases: &[],
        default: "536870912",
        kind: SettingKind::Int { min: -1, max: i64::MAX },
        doc: "Bytes of requests read and being dispatched at once, over all connections (-1 or 0: unlimited, Kafka's default). A connection whose next request does not fit waits before reading its body, so many large produce requests at once cannot exhaust memory. A single request larger than the limit waits for the whole budget.",
    },
    SettingDef {
        name: "max.connections.per.ip.overrides",
        aliases: &[],
        default: "",
        kind: SettingKind::HostCounts,
        doc: "Per-IP exceptions to max.connections.per.ip, as a comma-separated list of ip:count (e.g. 127.0.0.1:200,::1:200). Addresses must be IP literals: the broker does not resolve names.",
    },
    SettingDef {
        name: "connections.max.idle.ms",
        aliases: &[],
        default: "600000",
        kind: SettingKind::Int { min: 1, max: i64::MAX },
        doc: "Close a connection after this long without reading a request or writing response bytes; a response being computed (a long-polling Fetch, an acks=all Produce) counts as activity.",
    },
    SettingDef {
        name: "connection.max.inflight.response.bytes",
        aliases: &[],
        default: "4194304",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "Response bytes of one connection waiting to be written (Sluice's own setting; a Fetch counts by its full size, sendfile ranges included): above it the broker stops reading that connection's requests until the client reads, so a client that stops reading cannot make the broker buffer without bound. queued.max.requests bounds the count of requests in progress.",
    },
    SettingDef {
        name: "group.initial.rebalance.delay.ms",
        aliases: &[],
        default: "3000",
        kind: SettingKind::Int { min: 0, max: I32_MAX },
        doc: "How long the first rebalance of an empty group waits for more members to join (tests set it low).",
    },
    SettingDef {
        name: "group.min.session.timeout.ms",
        aliases: &[],
        default: "6000",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "Smallest session timeout a group member may ask for (else INVALID_SESSION_TIMEOUT).",
    },
    SettingDef {
        name: "group.max.session.timeout.ms",
        aliases: &[],
        default: "1800000",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "Largest session timeout a group member may ask for (else INVALID_SESSION_TIMEOUT).",
    },
    SettingDef {
        name: "group.max.size",
        aliases: &[],
        default: "1000",
        kind: SettingKind::Int { min: 1, max: 1_000_000 },
        doc: "Most members one consumer group may have (else GROUP_MAX_SIZE_REACHED).",
    },
    SettingDef {
        name: "group.max.count",
        aliases: &[],
        default: "100000",
        kind: SettingKind::Int { min: 1, max: 100_000_000 },
        doc: "Most consumer groups this coordinator holds (Sluice-specific bound); new groups beyond it get COORDINATOR_NOT_AVAILABLE.",
    },
    SettingDef {
        name: "offset.metadata.max.bytes",
        aliases: &[],
        default: "4096",
        kind: SettingKind::Int { min: 0, max: 32_767 },
        doc: "Largest metadata string of one committed offset (else OFFSET_METADATA_TOO_LARGE).",
    },
    SettingDef {
        name: "offsets.topic.replication.factor",
        aliases: &[],
        default: "3",
        kind: SettingKind::Int { min: 1, max: 32_767 },
        doc: "Replicas of each __consumer_offsets partition; capped at the brokers registered when the topic is created (1 on a single node).",
    },
    SettingDef {
        name: "offsets.topic.num.partitions",
        aliases: &[],
        default: "50",
        kind: SettingKind::Int { min: 1, max: 1_000 },
        doc: "Partitions of __consumer_offsets when the broker creates it (fixed afterwards).",
    },
    SettingDef {
        name: "offsets.topic.segment.bytes",
        aliases: &[],
        default: "104857600",
        kind: SettingKind::Int { min: 14, max: I32_MAX },
        doc: "Segment size of __consumer_offsets when it is created (smaller segments compact sooner).",
    },
    SettingDef {
        name: "offsets.retention.minutes",
        aliases: &[],
        default: "10080",
        kind: SettingKind::Int { min: 1, max: I32_MAX },
        doc: "Committed offsets of an empty group are deleted this long after their commit.",
    },
    SettingDef {
        name: "offsets.retention.check.interval.ms",
        aliases: &[],
        default: "600000",
        kind: SettingKind::Int { min: 1, max: i64::MAX },
        doc: "How often expired committed offsets are looked for.",
    },
    SettingDef {
        name: "test.fault.produce.response.drop.every",
        aliases: &[],
        default: "0",
        kind: SettingKind::Int { min: 0, max: I32_MAX },
        doc: "TEST ONLY, never in production: when N > 0, every Nth Produce request (counted broker-wide) is executed (its batches are written) but its response is never sent and the connection is closed, so the client retries. 0 disables it.",
    },
    SettingDef {
        name: "test.fault.produce.response.delay.ms",
        aliases: &[],
        default: "0",
        kind: SettingKind::Int { min: 0, max: I32_MAX },
        doc: "TEST ONLY, never in production: delays every Produce response by this long after the request was executed (later responses on the connection wait behind it). 0 disables it.",
    },
    SettingDef {
        name: "metrics.listen",
        aliases: &["metrics-listen"],
        default: "",
        kind: SettingKind::HostPort,
        doc: "Address of the HTTP endpoint serving Prometheus metrics (GET /metrics) and GET /health, host:port; empty (the default) turns it off.",
    },
    SettingDef {
        name: "metrics.max.connections",
        aliases: &[],
        default: "16",
        kind: SettingKind::Int { min: 1, max: 10_000 },
        doc: "HTTP connections the metrics endpoint serves at once; further ones are closed on accept.",
    },
    SettingDef {
        name: "metrics.request.max.bytes",
        aliases: &[],
        default: "8192",
        kind: SettingKind::Int { min: 256, max: 1_048_576 },
        doc: "Largest HTTP request head the metrics endpoint reads; a larger one gets 431.",
    },
    SettingDef {
        name: "metrics.request.timeout.ms",
        aliases: &[],
        default: "5000",
        kind: SettingKind::Int { min: 1, max: 600_000 },
        doc: "Longest time one metrics endpoint connection may take in total (read, render, write); then it is closed.",
    },
];

/// Looks up a setting by its name or one of its aliases.
pub fn broker_setting(key: &str) -> Option<&'static SettingDef> {
    BROKER_SETTINGS
        .iter()
        .find(|def| def.name == key || def.aliases.contains(&key))
}

/// Checks a value against a setting's kind; returns the normalised value.
pub fn validate_value(def: &SettingDef, key: &str, value: &str) -> Result<String, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    let value = value.trim();
    match def.kind {
        SettingKind::Int { min, max } => {
            let parsed: i64 = value
                .parse()
                .map_err(|_| invalid("expected an integer".to_string()))?;
            if parsed < min || parsed > max {
                return Err(invalid(format!("must be between {min} and {max}")));
            }
            Ok(parsed.to_string())
        }
        SettingKind::Bool => match value.to_ascii_lowercase().as_str() {
            "true" => Ok("true".to_string()),
            "false" => Ok("false".to_string()),
            _ => Err(invalid("expected true or false".to_string())),
        },
        SettingKind::HostPort => {
            if value.is_empty() && def.default.is_empty() {
                return Ok(String::new());
            }
            parse_host_port(value).map_err(invalid)?;
            Ok(value.to_string())
        }
        SettingKind::Path => {
            if value.is_empty() {
                return Err(invalid("expected a path".to_string()));
            }
            Ok(value.to_string())
        }
        SettingKind::Choice(choices) => {
            if choices.contains(&value) {
                Ok(value.to_string())
            } else {
                Err(invalid(format!("expected one of {}", choices.join(", "))))
            }
        }
        SettingKind::List(choices) => {
            let mut words: Vec<&str> = Vec::new();
            for word in value.split(',').map(str::trim) {
                if !choices.contains(&word) {
                    return Err(invalid(format!(
                        "expected a comma-separated list of {}",
                        choices.join(", ")
                    )));
                }
                if !words.contains(&word) {
                    words.push(word);
                }
            }
            Ok(words.join(","))
        }
        SettingKind::HostCounts => {
            let counts = parse_host_counts(value).map_err(invalid)?;
            Ok(counts
                .iter()
                .map(|(ip, count)| format!("{ip}:{count}"))
                .collect::<Vec<_>>()
                .join(","))
        }
        SettingKind::Text => Ok(value.to_string()),
        SettingKind::Voters => {
            if !value.is_empty() {
                sluice_controller::config::parse_voters(value)
                    .map_err(|e| invalid(e.to_string()))?;
            }
            Ok(value.to_string())
        }
        SettingKind::Double { min, max } => {
            let parsed: f64 = value
                .parse()
                .map_err(|_| invalid("expected a number".to_string()))?;
            if !(min..=max).contains(&parsed) {
                return Err(invalid(format!("must be between {min} and {max}")));
            }
            Ok(parsed.to_string())
        }
    }
}

/// Parses `host:port` or `PLAINTEXT://host:port` (IPv6 hosts in brackets).
/// Parses `ip:count,ip:count` (an IPv6 address may be bracketed: `[::1]:5`); an empty
/// string is an empty list. Names are refused rather than resolved, so the limit that
/// applies to a peer never depends on DNS.
pub fn parse_host_counts(value: &str) -> Result<Vec<(std::net::IpAddr, usize)>, String> {
    let mut out: Vec<(std::net::IpAddr, usize)> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (host, count) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("`{entry}` is not ip:count"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = host
            .parse()
            .map_err(|_| format!("`{host}` is not an IP address"))?;
        let count: usize = count
            .parse()
            .ok()
            .filter(|count| i32::try_from(*count).is_ok())
            .ok_or_else(|| format!("`{count}` is not a connection count (0 to 2147483647)"))?;
        match out.iter_mut().find(|(seen, _)| *seen == ip) {
            Some(slot) => slot.1 = count,
            None => out.push((ip, count)),
        }
    }
    Ok(out)
}

pub fn parse_host_port(value: &str) -> Result<(String, u16), String> {
    let value = value.strip_prefix("PLAINTEXT://").unwrap_or(value);
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_string())?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}

/// Where a broker setting's value comes from, most specific first (Kafka's ConfigSource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerSource {
    /// Set at run time for this broker (AlterConfigs on `BROKER` with its id).
    DynamicBroker,
    /// Set at run time for every broker (AlterConfigs on `BROKER` with an empty name).
    DynamicDefault,
    /// Set at start-up (config file, environment, flags).
    Static,
    Default,
}

/// Which dynamic layer an AlterConfigs on a `BROKER` resource changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynamicLayer {
    /// This broker only (resource name = node id).
    Broker,
    /// The cluster-wide default (empty resource name).
    ClusterDefault,
}

/// Broker settings that can change at run time (AlterConfigs / IncrementalAlterConfigs on a
/// `BROKER` resource): the defaults of topic settings and a few broker-wide knobs, as in
/// Kafka's `DynamicBrokerConfig`. Everything else needs a restart.
pub fn is_dynamic(name: &str) -> bool {
    const OTHERS: &[&str] = &[
        "producer.id.expiration.ms",
        "log.cleaner.backoff.ms",
        "log.flush.method",
        "log.flush.interval.bytes",
        "log.retention.check.interval.ms",
    ];
    OTHERS.contains(&name)
        || crate::topic_config::TOPIC_SETTINGS
            .iter()
            .any(|setting| setting.broker_synonym == name)
}

/// The validated broker configuration: defaults, then static settings, then the dynamic
/// cluster default and dynamic per-broker layers (later wins).
#[derive(Debug, Clone, Default)]
pub struct BrokerConfig {
    /// Values by canonical Kafka name; only keys that were set explicitly at start-up.
    overrides: BTreeMap<&'static str, String>,
    dynamic_default: BTreeMap<&'static str, String>,
    dynamic_broker: BTreeMap<&'static str, String>,
}

impl BrokerConfig {
    /// Builds a configuration from `(key, value)` pairs applied in order (later wins).
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<BrokerConfig, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut config = BrokerConfig::default();
        for (key, value) in pairs {
            config.set(key.as_ref(), value.as_ref())?;
        }
        Ok(config)
    }

    /// Sets one value after validating it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let def = broker_setting(key).ok_or_else(|| ConfigError::UnknownKey {
            key: key.to_string(),
        })?;
        let normalised = validate_value(def, key, value)?;
        self.overrides.insert(def.name, normalised);
        Ok(())
    }

    /// The value of a setting (dynamic, static or default) as a string.
    pub fn value(&self, name: &str) -> Option<&str> {
        let def = broker_setting(name)?;
        Some(
            self.dynamic_broker
                .get(def.name)
                .or_else(|| self.dynamic_default.get(def.name))
                .or_else(|| self.overrides.get(def.name))
                .map(String::as_str)
                .unwrap_or(def.default),
        )
    }

    /// Whether a setting has its built-in default (was set neither statically nor at run time).
    pub fn is_default(&self, name: &str) -> bool {
        self.source(name) == BrokerSource::Default
    }

    /// Where the effective value of a setting comes from.
    pub fn source(&self, name: &str) -> BrokerSource {
        let Some(def) = broker_setting(name) else {
            return BrokerSource::Default;
        };
        if self.dynamic_broker.contains_key(def.name) {
            BrokerSource::DynamicBroker
        } else if self.dynamic_default.contains_key(def.name) {
            BrokerSource::DynamicDefault
        } else if self.overrides.contains_key(def.name) {
            BrokerSource::Static
        } else {
            BrokerSource::Default
        }
    }

    /// Every layer that sets `name`, most specific first: (value, source).
    pub fn layers(&self, name: &str) -> Vec<(&str, BrokerSource)> {
        let Some(def) = broker_setting(name) else {
            return Vec::new();
        };
        let mut layers = Vec::new();
        for (map, source) in [
            (&self.dynamic_broker, BrokerSource::DynamicBroker),
            (&self.dynamic_default, BrokerSource::DynamicDefault),
            (&self.overrides, BrokerSource::Static),
        ] {
            if let Some(value) = map.get(def.name) {
                layers.push((value.as_str(), source));
            }
        }
        layers.push((def.default, BrokerSource::Default));
        layers
    }

    /// The dynamic values of one layer (as persisted).
    pub fn dynamic(&self, layer: DynamicLayer) -> &BTreeMap<&'static str, String> {
        match layer {
            DynamicLayer::Broker => &self.dynamic_broker,
            DynamicLayer::ClusterDefault => &self.dynamic_default,
        }
    }

    /// Replaces one dynamic layer with `values` after validating every entry: each key must
    /// be a known, dynamic setting with a valid value. Nothing changes on error.
    pub fn set_dynamic<'a, I>(&mut self, layer: DynamicLayer, values: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut validated = BTreeMap::new();
        for (key, value) in values {
            let def = broker_setting(key).ok_or_else(|| ConfigError::UnknownKey {
                key: key.to_string(),
            })?;
            if !is_dynamic(def.name) {
                return Err(ConfigError::NotDynamic {
                    key: key.to_string(),
                });
            }
            validated.insert(def.name, validate_value(def, key, value)?);
        }
        match layer {
            DynamicLayer::Broker => self.dynamic_broker = validated,
            DynamicLayer::ClusterDefault => self.dynamic_default = validated,
        }
        Ok(())
    }

    fn int(&self, name: &str) -> i64 {
        // Values are validated on the way in and defaults are valid integers, which the
        // unit test `defaults_are_valid` checks; 0 is only a fallback for a misspelt name.
        let value = self.value(name).unwrap_or("0");
        debug_assert!(
            value.parse::<i64>().is_ok(),
            "setting {name} is not an integer"
        );
        value.parse().unwrap_or(0)
    }

    fn usize_value(&self, name: &str) -> usize {
        usize::try_from(self.int(name)).unwrap_or(usize::MAX)
    }

    pub fn node_id(&self) -> i32 {
        i32::try_from(self.int("node.id")).unwrap_or(1)
    }

    /// The listener address `host:port`.
    pub fn listen(&self) -> (String, u16) {
        let value = self.value("listeners").unwrap_or("127.0.0.1:9092");
        parse_host_port(value).unwrap_or(("127.0.0.1".to_string(), 9092))
    }

    /// The address given to clients: explicit, else the listener with a wildcard host
    /// replaced by 127.0.0.1 (never `localhost`, which some clients resolve to IPv6 first).
    pub fn advertised(&self) -> (String, u16) {
        let explicit = self.value("advertised.listeners").unwrap_or("");
        if let Ok(pair) = parse_host_port(explicit) {
            return pair;
        }
        let (host, port) = self.listen();
        let host = match host.as_str() {
            "" | "0.0.0.0" | "::" | "localhost" => "127.0.0.1".to_string(),
            _ => host,
        };
        (host, port)
    }

    /// `controller.quorum.voters`, or `None` for a single node (one in-process voter).
    pub fn controller_quorum_voters(&self) -> Option<String> {
        self.value("controller.quorum.voters")
            .filter(|v| !v.trim().is_empty())
            .map(str::to_string)
    }

    /// `controller.listener`, if set.
    pub fn controller_listener(&self) -> Option<String> {
        self.value("controller.listener")
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().trim_start_matches("PLAINTEXT://").to_string())
    }

    /// `broker.rack`, if set.
    pub fn broker_rack(&self) -> Option<String> {
        self.value("broker.rack")
            .filter(|v| !v.trim().is_empty())
            .map(str::to_string)
    }

    pub fn broker_session_timeout_ms(&self) -> u64 {
        u64::try_from(self.int("broker.session.timeout.ms")).unwrap_or(9000)
    }

    pub fn broker_heartbeat_interval_ms(&self) -> u64 {
        u64::try_from(self.int("broker.heartbeat.interval.ms")).unwrap_or(2000)
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.value("log.dirs").unwrap_or("./sluice-data"))
    }

    pub fn num_partitions(&self) -> i32 {
        i32::try_from(self.int("num.partitions")).unwrap_or(1)
    }

    pub fn default_replication_factor(&self) -> i16 {
        i16::try_from(self.int("default.replication.factor")).unwrap_or(1)
    }

    pub fn auto_create_topics_enable(&self) -> bool {
        self.value("auto.create.topics.enable") == Some("true")
    }

    pub fn socket_request_max_bytes(&self) -> usize {
        self.usize_value("socket.request.max.bytes")
    }

    pub fn socket_sendfile_enable(&self) -> bool {
        self.value("socket.sendfile.enable") == Some("true")
    }

    pub fn fetch_max_bytes(&self) -> usize {
        self.usize_value("fetch.max.bytes")
    }

    pub fn log_flush_interval_messages(&self) -> i64 {
        self.int("log.flush.interval.messages")
    }

    pub fn log_flush_interval_bytes(&self) -> i64 {
        self.int("log.flush.interval.bytes")
    }

    pub fn log_flush_interval_ms(&self) -> u64 {
        u64::try_from(self.int("log.flush.interval.ms")).unwrap_or(1000)
    }

    pub fn checkpoint_interval_ms(&self) -> u64 {
        u64::try_from(self.int("log.flush.offset.checkpoint.interval.ms")).unwrap_or(60_000)
    }

    /// Threads opening partition logs at start-up (`num.recovery.threads.per.data.dir`).
    pub fn recovery_threads(&self) -> usize {
        usize::try_from(self.int("num.recovery.threads.per.data.dir")).unwrap_or(1)
    }

    pub fn queued_max_requests(&self) -> usize {
        self.usize_value("queued.max.requests")
    }

    /// The metrics endpoint address, `None` when off (`metrics.listen` empty).
    pub fn max_connections(&self) -> usize {
        self.usize_value("max.connections")
    }

    pub fn max_connections_per_ip(&self) -> usize {
        self.usize_value("max.connections.per.ip")
    }

    /// The per-IP exceptions to `max.connections.per.ip` (validated on the way in).
    pub fn max_connections_per_ip_overrides(&self) -> Vec<(std::net::IpAddr, usize)> {
        parse_host_counts(self.value("max.connections.per.ip.overrides").unwrap_or(""))
            .unwrap_or_default()
    }

    /// `max.connection.creation.rate`: accepts per second.
    pub fn max_connection_creation_rate(&self) -> u32 {
        u32::try_from(self.int("max.connection.creation.rate")).unwrap_or(u32::MAX)
    }

    /// `queued.max.request.bytes`, `None` when unlimited (-1 or 0).
    pub fn queued_max_request_bytes(&self) -> Option<usize> {
        let bytes = self.int("queued.max.request.bytes");
        (bytes > 0).then(|| usize::try_from(bytes).unwrap_or(usize::MAX))
    }

    pub fn connections_max_idle_ms(&self) -> u64 {
        u64::try_from(self.int("connections.max.idle.ms")).unwrap_or(600_000)
    }

    pub fn connection_max_inflight_response_bytes(&self) -> usize {
        self.usize_value("connection.max.inflight.response.bytes")
    }

    pub fn metrics_listen(&self) -> Option<(String, u16)> {
        parse_host_port(self.value("metrics.listen").unwrap_or("")).ok()
    }

    pub fn metrics_max_connections(&self) -> usize {
        self.usize_value("metrics.max.connections")
    }

    pub fn metrics_request_max_bytes(&self) -> usize {
        self.usize_value("metrics.request.max.bytes")
    }

    pub fn metrics_request_timeout_ms(&self) -> u64 {
        u64::try_from(self.int("metrics.request.timeout.ms")).unwrap_or(5000)
    }

    pub fn group_initial_rebalance_delay_ms(&self) -> i32 {
        i32::try_from(self.int("group.initial.rebalance.delay.ms")).unwrap_or(3000)
    }

    pub fn group_min_session_timeout_ms(&self) -> i32 {
        i32::try_from(self.int("group.min.session.timeout.ms")).unwrap_or(6000)
    }

    pub fn group_max_session_timeout_ms(&self) -> i32 {
        i32::try_from(self.int("group.max.session.timeout.ms")).unwrap_or(1_800_000)
    }

    pub fn group_max_size(&self) -> usize {
        self.usize_value("group.max.size")
    }

    pub fn group_max_count(&self) -> usize {
        self.usize_value("group.max.count")
    }

    pub fn offset_metadata_max_bytes(&self) -> usize {
        self.usize_value("offset.metadata.max.bytes")
    }

    pub fn offsets_topic_replication_factor(&self) -> i16 {
        i16::try_from(self.int("offsets.topic.replication.factor")).unwrap_or(3)
    }

    pub fn auto_leader_rebalance_enable(&self) -> bool {
        self.value("auto.leader.rebalance.enable") == Some("true")
    }

    pub fn leader_imbalance_check_interval_seconds(&self) -> u64 {
        u64::try_from(self.int("leader.imbalance.check.interval.seconds")).unwrap_or(300)
    }

    pub fn replica_lag_time_max_ms(&self) -> i64 {
        self.int("replica.lag.time.max.ms")
    }

    pub fn replica_fetch_wait_max_ms(&self) -> i32 {
        i32::try_from(self.int("replica.fetch.wait.max.ms")).unwrap_or(500)
    }

    pub fn replica_fetch_max_bytes(&self) -> i32 {
        i32::try_from(self.int("replica.fetch.max.bytes")).unwrap_or(1_048_576)
    }

    pub fn replica_fetch_response_max_bytes(&self) -> i32 {
        i32::try_from(self.int("replica.fetch.response.max.bytes")).unwrap_or(10_485_760)
    }

    pub fn replica_fetch_backoff_ms(&self) -> u64 {
        u64::try_from(self.int("replica.fetch.backoff.ms")).unwrap_or(1000)
    }

    pub fn replica_socket_timeout_ms(&self) -> u64 {
        u64::try_from(self.int("replica.socket.timeout.ms")).unwrap_or(30_000)
    }

    pub fn message_max_bytes(&self) -> usize {
        self.usize_value("message.max.bytes")
    }

    pub fn offsets_topic_num_partitions(&self) -> i32 {
        i32::try_from(self.int("offsets.topic.num.partitions")).unwrap_or(50)
    }

    pub fn offsets_retention_ms(&self) -> i64 {
        self.int("offsets.retention.minutes").saturating_mul(60_000)
    }

    pub fn offsets_retention_check_interval_ms(&self) -> u64 {
        u64::try_from(self.int("offsets.retention.check.interval.ms")).unwrap_or(600_000)
    }

    pub fn offsets_topic_segment_bytes(&self) -> i64 {
        self.int("offsets.topic.segment.bytes")
    }

    pub fn log_retention_check_interval_ms(&self) -> u64 {
        u64::try_from(self.int("log.retention.check.interval.ms")).unwrap_or(300_000)
    }

    pub fn log_cleaner_enable(&self) -> bool {
        self.value("log.cleaner.enable") == Some("true")
    }

    pub fn log_cleaner_backoff_ms(&self) -> u64 {
        u64::try_from(self.int("log.cleaner.backoff.ms")).unwrap_or(15_000)
    }

    pub fn producer_id_expiration_ms(&self) -> i64 {
        self.int("producer.id.expiration.ms")
    }

    pub fn producer_id_expiration_check_interval_ms(&self) -> u64 {
        u64::try_from(self.int("producer.id.expiration.check.interval.ms")).unwrap_or(600_000)
    }

    /// Test-only fault switch: drop the response of every Nth Produce request (0: off).
    pub fn test_fault_produce_response_drop_every(&self) -> u64 {
        u64::try_from(self.int("test.fault.produce.response.drop.every")).unwrap_or(0)
    }

    /// Test-only fault switch: delay every Produce response by this long (0: off).
    pub fn test_fault_produce_response_delay_ms(&self) -> u64 {
        u64::try_from(self.int("test.fault.produce.response.delay.ms")).unwrap_or(0)
    }

    /// Every setting with its current value and whether it is the default.
    pub fn describe(&self) -> impl Iterator<Item = (&'static SettingDef, &str, BrokerSource)> {
        BROKER_SETTINGS.iter().map(|def| {
            (
                def,
                self.value(def.name).unwrap_or(def.default),
                self.source(def.name),
            )
        })
    }
}

/// Flattens a TOML document into dotted keys: `num.partitions = 3` (a nested table in
/// TOML's grammar) and `"num.partitions" = 3` both give `num.partitions`.
pub fn flatten_toml(text: &str) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
    let mut out = Vec::new();
    flatten_into("", &toml::Value::Table(table), &mut out)?;
    Ok(out)
}

fn flatten_into(
    prefix: &str,
    value: &toml::Value,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_into(&name, value, out)?;
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        toml::Value::Integer(i) => out.push((prefix.to_string(), i.to_string())),
        toml::Value::Boolean(b) => out.push((prefix.to_string(), b.to_string())),
        other => {
            return Err(format!(
                "setting `{prefix}` has an unsupported value type: {other}"
            ))
        }
    }
    Ok(())
}

/// Maps `SLUICE_NUM_PARTITIONS` to `num.partitions`; variables that are not settings
/// (the log filter) return None.
pub fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix("SLUICE_")?;
    if matches!(rest, "LOG" | "BIN" | "BOOTSTRAP") || rest.is_empty() {
        return None;
    }
    Some(rest.to_ascii_lowercase().replace('_', "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        for def in BROKER_SETTINGS {
            if def.default.is_empty() {
                continue;
            }
            validate_value(def, def.name, def.default).expect(def.name);
        }
        let config = BrokerConfig::default();
        assert_eq!(config.listen(), ("127.0.0.1".to_string(), 9092));
        assert_eq!(config.advertised(), ("127.0.0.1".to_string(), 9092));
        assert_eq!(config.node_id(), 1);
        assert_eq!(config.data_dir(), PathBuf::from("./sluice-data"));
        assert!(config.auto_create_topics_enable());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = BrokerConfig::from_pairs([("no.such.key", "1")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::UnknownKey {
                key: "no.such.key".into()
            }
        );
        assert!(err.to_string().contains("no.such.key"));
    }

    #[test]
    fn bad_values_are_named() {
        for (key, value) in [
            ("num.partitions", "abc"),
            ("num.partitions", "0"),
            ("auto.create.topics.enable", "yes"),
            ("listeners", "nonsense"),
            ("log.cleanup.policy", "compact,shred"),
        ] {
            let err = BrokerConfig::from_pairs([(key, value)]).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn dynamic_layers_win_over_static_and_are_validated() {
        let mut config = BrokerConfig::from_pairs([("log.retention.ms", "1000")]).unwrap();
        assert_eq!(config.source("log.retention.ms"), BrokerSource::Static);
        config
            .set_dynamic(DynamicLayer::ClusterDefault, [("log.retention.ms", "2000")])
            .unwrap();
        assert_eq!(config.value("log.retention.ms"), Some("2000"));
        config
            .set_dynamic(DynamicLayer::Broker, [("log.retention.ms", "3000")])
            .unwrap();
        assert_eq!(config.value("log.retention.ms"), Some("3000"));
        assert_eq!(
            config.source("log.retention.ms"),
            BrokerSource::DynamicBroker
        );
        let layers: Vec<_> = config.layers("log.retention.ms");
        assert_eq!(layers.len(), 4);
        assert!(matches!(
            config.set_dynamic(DynamicLayer::Broker, [("listeners", "0.0.0.0:1")]),
            Err(ConfigError::NotDynamic { .. })
        ));
        assert!(config
            .set_dynamic(DynamicLayer::Broker, [("log.retention.ms", "soon")])
            .is_err());
        assert_eq!(config.value("log.retention.ms"), Some("3000"));
        config.set_dynamic(DynamicLayer::Broker, []).unwrap();
        assert_eq!(config.value("log.retention.ms"), Some("2000"));
    }

    #[test]
    fn aliases_and_later_values_win() {
        let config = BrokerConfig::from_pairs([
            ("listen", "0.0.0.0:1234"),
            ("data-dir", "/tmp/x"),
            ("num.partitions", "3"),
            ("num.partitions", "4"),
        ])
        .unwrap();
        assert_eq!(config.listen(), ("0.0.0.0".to_string(), 1234));
        assert_eq!(config.advertised(), ("127.0.0.1".to_string(), 1234));
        assert_eq!(config.data_dir(), PathBuf::from("/tmp/x"));
        assert_eq!(config.num_partitions(), 4);
        assert!(!config.is_default("num.partitions"));
        assert!(config.is_default("message.max.bytes"));
    }

    #[test]
    fn toml_keys_flatten_to_kafka_names() {
        let pairs = flatten_toml(
            "\"num.partitions\" = 5\nlog.segment.bytes = 1048576\n[auto.create.topics]\nenable = false\n",
        )
        .unwrap();
        let config = BrokerConfig::from_pairs(pairs).unwrap();
        assert_eq!(config.num_partitions(), 5);
        assert_eq!(config.value("log.segment.bytes"), Some("1048576"));
        assert!(!config.auto_create_topics_enable());
    }

    #[test]
    fn env_names_map_to_kafka_names() {
        assert_eq!(
            env_key("SLUICE_NUM_PARTITIONS").as_deref(),
            Some("num.partitions")
        );
        assert_eq!(env_key("SLUICE_DATA_DIR").as_deref(), Some("data.dir"));
        assert_eq!(env_key("SLUICE_LOG"), None);
        // Names that are no setting map to keys that `broker_setting` does not know; the
        // binary warns about those and goes on.
        assert_eq!(
            env_key("SLUICE_SKIP_INSTALL").as_deref(),
            Some("skip.install")
        );
        assert!(broker_setting("skip.install").is_none());
        assert_eq!(env_key("PATH"), None);
    }

    #[test]
    fn connection_limit_settings_parse_and_default() {
        let config = BrokerConfig::default();
        assert_eq!(config.max_connections(), 1000);
        assert_eq!(config.max_connections_per_ip(), i32::MAX as usize);
        assert!(config.max_connections_per_ip_overrides().is_empty());
        assert_eq!(config.connections_max_idle_ms(), 600_000);
        assert_eq!(config.connection_max_inflight_response_bytes(), 4 << 20);

        let config = BrokerConfig::from_pairs([(
            "max.connections.per.ip.overrides",
            " 127.0.0.1:5, [::1]:0,10.0.0.1:7,127.0.0.1:6 ",
        )])
        .unwrap();
        let localhost: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let v6: std::net::IpAddr = "::1".parse().unwrap();
        let other: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            config.max_connections_per_ip_overrides(),
            vec![(localhost, 6), (v6, 0), (other, 7)]
        );
        assert_eq!(
            config.value("max.connections.per.ip.overrides"),
            Some("127.0.0.1:6,::1:0,10.0.0.1:7")
        );
        for bad in [
            "localhost:5",
            "127.0.0.1",
            "127.0.0.1:-1",
            "127.0.0.1:3000000000",
        ] {
            let err =
                BrokerConfig::from_pairs([("max.connections.per.ip.overrides", bad)]).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidValue { ref key, .. } if key == "max.connections.per.ip.overrides"),
                "{bad}: {err:?}"
            );
        }
    }
}
