//! Metadata records: the entries of the replicated metadata log.
//!
//! Modelled on Kafka's KRaft records (KIP-631): every change to cluster metadata is one
//! record, records are applied in log order by [`crate::image::MetadataImage::apply`], and
//! the image is a pure function of the records. Records are validated by the controller
//! logic on the active controller *before* they are proposed, so applying one never fails
//! (an inconsistent record is logged and ignored, which keeps every node's image identical).
//!
//! The encoding is serde (JSON on disk and on the wire). [`MetadataBatch::version`] names the
//! record schema so that a future layout can be read next to this one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Kafka's "no leader" value for a partition leader.
pub const NO_LEADER: i32 = -1;

/// The record schema version written by this build.
pub const METADATA_RECORD_VERSION: u16 = 1;

/// One raft log entry's payload: records applied atomically (all or none are visible).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataBatch {
    /// Schema version of `records` ([`METADATA_RECORD_VERSION`]).
    pub version: u16,
    pub records: Vec<MetadataRecord>,
}

impl MetadataBatch {
    pub fn new(records: Vec<MetadataRecord>) -> Self {
        Self {
            version: METADATA_RECORD_VERSION,
            records,
        }
    }
}

impl std::fmt::Display for MetadataBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MetadataBatch(v{}, {} records)",
            self.version,
            self.records.len()
        )
    }
}

/// A listener of a broker, as advertised to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Listener name (`PLAINTEXT`).
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// Replica assignment and replication state of one partition, as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub partition: i32,
    /// Broker ids; the first is the preferred leader.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Broker id of the leader or [`NO_LEADER`].
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

/// What a configuration entry applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConfigResource {
    /// Cluster-wide default for every topic and broker (Kafka's default broker resource `""`).
    ClusterDefault,
    Broker(i32),
    Topic(String),
}

/// One metadata change. Variants are never removed or renumbered; new fields are added as
/// `#[serde(default)]` so that older logs keep decoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    /// A broker (re)joined with a new incarnation. Its broker epoch is the log index of this
    /// record. A registered broker starts fenced: it leads nothing until its first
    /// heartbeat unfences it.
    RegisterBroker {
        broker_id: i32,
        incarnation_id: Uuid,
        endpoints: Vec<Endpoint>,
        rack: Option<String>,
    },
    /// The broker's session expired (or it asked to be fenced): it can lead nothing.
    FenceBroker {
        broker_id: i32,
        broker_epoch: i64,
    },
    /// The broker heartbeats again and may lead partitions.
    UnfenceBroker {
        broker_id: i32,
        broker_epoch: i64,
    },
    /// The broker asked for a controlled shutdown; leadership is being moved off it.
    BrokerShuttingDown {
        broker_id: i32,
        broker_epoch: i64,
    },
    CreateTopic {
        name: String,
        topic_id: Uuid,
        configs: BTreeMap<String, String>,
        partitions: Vec<PartitionRecord>,
    },
    DeleteTopic {
        topic_id: Uuid,
    },
    /// New partitions appended to an existing topic (numbered after the existing ones).
    CreatePartitions {
        topic_id: Uuid,
        partitions: Vec<PartitionRecord>,
    },
    /// A change of leader, ISR and/or replicas. Applying it bumps `partition_epoch` by one,
    /// and `leader_epoch` by one when `leader` is present (a new leader election, even
    /// re-electing the same broker, starts a new epoch so followers truncate correctly).
    PartitionChange {
        topic_id: Uuid,
        partition: i32,
        leader: Option<i32>,
        isr: Option<Vec<i32>>,
        replicas: Option<Vec<i32>>,
        /// Replicas a reassignment adds (KIP-455); `Some(vec![])` ends the reassignment.
        /// Absent in records written before reassignment existed, and skipped when `None`
        /// so that such records keep their old bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        adding_replicas: Option<Vec<i32>>,
        /// Replicas a reassignment removes once the adding ones are in sync.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        removing_replicas: Option<Vec<i32>>,
    },
    /// Set (`value: Some`) or delete (`value: None`) one configuration entry.
    Config {
        resource: ConfigResource,
        name: String,
        value: Option<String>,
    },
    /// Producer ids below `next_producer_id` are handed out (to `broker_id`): the next block
    /// starts there, so ids stay unique across the cluster and across controller failover.
    ProducerIds {
        broker_id: i32,
        broker_epoch: i64,
        next_producer_id: i64,
    },
    /// The cluster id (Kafka's `cluster.id`), set once by the first broker that claims it;
    /// every broker of the cluster answers clients with it.
    ClusterId {
        cluster_id: String,
    },
}
