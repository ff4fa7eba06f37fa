//! Admin calls for consumer groups and offsets, routed like a Kafka client routes them:
//! group calls to the group's coordinator (FindCoordinator), offset lookups to each
//! partition's leader (Metadata).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::connection::{ClientError, Connection};
use crate::topics::metadata_request;

/// Repeats `$call` (an `.await`ed `Result`) after retriable errors, up to `retries` times
/// with exponential backoff; a dropped connection is forgotten so the retry reconnects.
macro_rules! retrying {
    ($self:ident, $what:expr, $call:expr) => {{
        let mut attempt: u32 = 0;
        loop {
            match $call {
                Err(error) if attempt < $self.config.retries && error.is_retriable() => {
                    let backoff = $self.backoff(attempt);
                    attempt += 1;
                    tracing::debug!(
                        operation = $what,
                        attempt,
                        backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        %error,
                        "retrying an admin call"
                    );
                    if let ClientError::Io { address, .. } = &error {
                        $self.connections.remove(address);
                    }
                    tokio::time::sleep(backoff).await;
                }
                result => break result,
            }
        }
    }};
}

/// Kafka's code for a successful partition or group answer.
const NONE: i16 = 0;

fn kafka_error(what: &str, code: i16) -> ClientError {
    kafka_error_with(what, code, None)
}

/// A typed Kafka error for `code`, with the broker's message when it sent one.
fn kafka_error_with(what: &str, code: i16, message: Option<&StrBytes>) -> ClientError {
    ClientError::Kafka {
        operation: what.to_string(),
        code,
        name: error_name(code),
        message: message
            .map(|m| m.as_str().to_string())
            .filter(|m| !m.is_empty()),
    }
}

/// One name's answer in a call about several names: `Ok`, or its own Kafka error. A
/// retriable error (other than not found) fails the whole call instead, so that `retrying!`
/// sends it again.
fn name_result(
    what: &str,
    code: i16,
    message: Option<&StrBytes>,
) -> Result<Result<(), ClientError>, ClientError> {
    if code == NONE {
        return Ok(Ok(()));
    }
    let error = kafka_error_with(what, code, message);
    if error.is_retriable() && !error.is_not_found() {
        return Err(error);
    }
    Ok(Err(error))
}

/// Kafka's name for an error code (`UNKNOWN_TOPIC_OR_PARTITION`), as the Java client and
/// the broker's logs spell it.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(code)) => format!("UNKNOWN_ERROR_CODE_{code}"),
        Some(error) => {
            let camel = format!("{error:?}");
            let mut snake = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_uppercase());
            }
            snake
        }
    }
}

fn group_id(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_string()))
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A topic partition.
pub type TopicPartition = (String, i32);

#[derive(Debug, Clone)]
pub struct GroupListing {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
}

#[derive(Debug, Clone)]
pub struct GroupMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Partitions assigned, decoded from the consumer protocol assignment (empty for
    /// other protocol types or an empty assignment).
    pub assignment: Vec<TopicPartition>,
}

#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<GroupMember>,
}

#[derive(Debug, Clone)]
pub struct CommittedOffset {
    pub offset: i64,
    pub metadata: String,
}

/// Offset lookups ListOffsets understands besides timestamps.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

/// Limits of an [`Admin`], under the Java admin client's names.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `request.timeout.ms`: how long one request (and one connection attempt) may take.
    pub request_timeout_ms: u64,
    /// `retries`: how many times a call is repeated after a retriable error (not the
    /// coordinator or controller, leader moved, connection dropped) before it fails.
    pub retries: u32,
    /// `retry.backoff.ms`: the first pause before a retry; doubled on each further one.
    pub retry_backoff_ms: u64,
    /// `retry.backoff.max.ms`: the longest pause between retries.
    pub retry_backoff_max_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            request_timeout_ms: 30_000,
            retries: 5,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 1_000,
        }
    }
}

pub struct Admin {
    bootstrap: String,
    timeout: Duration,
    config: AdminConfig,
    connections: HashMap<String, Connection>,
}

impl Admin {
    pub async fn connect(bootstrap: &str, timeout: Duration) -> Result<Admin, ClientError> {
        let config = AdminConfig {
            request_timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            ..AdminConfig::default()
        };
        Admin::connect_with(bootstrap, config).await
    }

    /// Connects to `bootstrap` (negotiating versions) with explicit limits.
    pub async fn connect_with(bootstrap: &str, config: AdminConfig) -> Result<Admin, ClientError> {
        let mut admin = Admin {
            bootstrap: bootstrap.to_string(),
            timeout: Duration::from_millis(config.request_timeout_ms),
            config,
            connections: HashMap::new(),
        };
        admin.connection(bootstrap).await?;
        Ok(admin)
    }

    async fn connection(&mut self, address: &str) -> Result<&mut Connection, ClientError> {
        if !self.connections.contains_key(address) {
            let connection = Connection::connect(address, self.timeout).await?;
            self.connections.insert(address.to_string(), connection);
        }
        self.connections
            .get_mut(address)
            .ok_or_else(|| ClientError::Protocol(format!("no connection to {address}")))
    }

    async fn bootstrap(&mut self) -> Result<&mut Connection, ClientError> {
        let address = self.bootstrap.clone();
        self.connection(&address).await
    }

    /// The address of the coordinator of `group`.
    pub async fn coordinator(&mut self, group: &str) -> Result<String, ClientError> {
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_string()))
            .with_key_type(0);
        let (_, response) = self.bootstrap().await?.send(0..=3, &request).await?;
        if response.error_code != NONE {
            return Err(kafka_error("FindCoordinator", response.error_code));
        }
        Ok(format!("{}:{}", response.host.as_str(), response.port))
    }

    async fn coordinator_connection(
        &mut self,
        group: &str,
    ) -> Result<&mut Connection, ClientError> {
        let address = self.coordinator(group).await?;
        self.connection(&address).await
    }

    /// Every group of every broker in the cluster.
    pub async fn list_groups(&mut self) -> Result<Vec<GroupListing>, ClientError> {
        retrying!(self, "ListGroups", self.list_groups_once().await)
    }

    /// Every group of every broker in the cluster.
    async fn list_groups_once(&mut self) -> Result<Vec<GroupListing>, ClientError> {
        let mut groups = Vec::new();
        for address in self.broker_addresses().await? {
            let (_, response) = self
                .connection(&address)
                .await?
                .send(0..=4, &ListGroupsRequest::default())
                .await?;
            if response.error_code != NONE {
                return Err(kafka_error("ListGroups", response.error_code));
            }
            groups.extend(response.groups.into_iter().map(|g| GroupListing {
                group_id: g.group_id.as_str().to_string(),
                state: g.group_state.as_str().to_string(),
                protocol_type: g.protocol_type.as_str().to_string(),
            }));
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(groups)
    }

    /// A group's state, protocol and members with their assigned partitions; Kafka
    /// describes an unknown group as `Dead` without an error.
    pub async fn describe_group(&mut self, group: &str) -> Result<GroupDescription, ClientError> {
        retrying!(
            self,
            "DescribeGroups",
            self.describe_group_once(group).await
        )
    }

    async fn describe_group_once(&mut self, group: &str) -> Result<GroupDescription, ClientError> {
        let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
        let (_, response) = self
            .coordinator_connection(group)
            .await?
            .send(0..=5, &request)
            .await?;
        let described = response
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("DescribeGroups: empty answer".to_string()))?;
        if described.error_code != NONE {
            return Err(kafka_error("DescribeGroups", described.error_code));
        }
        let consumer = described.protocol_type.as_str() == "consumer";
        let members = described
            .members
            .into_iter()
            .map(|m| GroupMember {
                member_id: m.member_id.as_str().to_string(),
                group_instance_id: m.group_instance_id.map(|i| i.as_str().to_string()),
                client_id: m.client_id.as_str().to_string(),
                client_host: m.client_host.as_str().to_string(),
                assignment: if consumer {
                    decode_assignment(&m.member_assignment)
                } else {
                    Vec::new()
                },
            })
            .collect();
        Ok(GroupDescription {
            group_id: group.to_string(),
            state: described.group_state.as_str().to_string(),
            protocol_type: described.protocol_type.as_str().to_string(),
            protocol: described.protocol_data.as_str().to_string(),
            members,
        })
    }

    /// Every committed offset of the group.
    pub async fn committed_offsets(
        &mut self,
        group: &str,
    ) -> Result<BTreeMap<TopicPartition, CommittedOffset>, ClientError> {
        retrying!(
            self,
            "OffsetFetch",
            self.committed_offsets_once(group).await
        )
    }

    /// Every committed offset of the group.
    async fn committed_offsets_once(
        &mut self,
        group: &str,
    ) -> Result<BTreeMap<TopicPartition, CommittedOffset>, ClientError> {
        let request = OffsetFetchRequest::default()
            .with_group_id(group_id(group))
            .with_topics(None);
        let (_, response) = self
            .coordinator_connection(group)
            .await?
            .send(2..=7, &request)
            .await?;
        if response.error_code != NONE {
            return Err(kafka_error("OffsetFetch", response.error_code));
        }
        let mut offsets = BTreeMap::new();
        for topic in response.topics {
            for partition in topic.partitions {
                if partition.error_code != NONE {
                    return Err(kafka_error("OffsetFetch partition", partition.error_code));
                }
                if partition.committed_offset >= 0 {
                    offsets.insert(
                        (topic.name.as_str().to_string(), partition.partition_index),
                        CommittedOffset {
                            offset: partition.committed_offset,
                            metadata: partition
                                .metadata
                                .map(|m| m.as_str().to_string())
                                .unwrap_or_default(),
                        },
                    );
                }
            }
        }
        Ok(offsets)
    }

    /// Commits offsets for a group without members (generation -1), as offset reset
    /// tools do.
    pub async fn commit_offsets(
        &mut self,
        group: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), ClientError> {
        retrying!(
            self,
            "OffsetCommit",
            self.commit_offsets_once(group, offsets).await
        )
    }

    /// Commits offsets for a group without members (generation -1), as offset reset
    /// tools do.
    async fn commit_offsets_once(
        &mut self,
        group: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), ClientError> {
        let mut by_topic: BTreeMap<&str, Vec<offset_commit_request::OffsetCommitRequestPartition>> =
            BTreeMap::new();
        for ((topic, partition), offset) in offsets {
            by_topic.entry(topic).or_default().push(
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(*offset),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        offset_commit_request::OffsetCommitRequestTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let (_, response) = self
            .coordinator_connection(group)
            .await?
            .send(2..=8, &request)
            .await?;
        for topic in response.topics {
            for partition in topic.partitions {
                if partition.error_code != NONE {
                    return Err(kafka_error(
                        &format!(
                            "OffsetCommit {}-{}",
                            topic.name.as_str(),
                            partition.partition_index
                        ),
                        partition.error_code,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Partition counts and leader addresses of `topics`.
    pub async fn partition_leaders(
        &mut self,
        topics: &[String],
    ) -> Result<BTreeMap<TopicPartition, String>, ClientError> {
        let request = metadata_request(Some(topics), false);
        let (_, response) = self.bootstrap().await?.send(1..=12, &request).await?;
        let brokers: HashMap<i32, String> = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let mut leaders = BTreeMap::new();
        for topic in response.topics {
            let name = topic
                .name
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            if topic.error_code != NONE {
                return Err(kafka_error(
                    &format!("Metadata for topic {name}"),
                    topic.error_code,
                ));
            }
            for partition in topic.partitions {
                let leader = brokers
                    .get(&partition.leader_id.0)
                    .cloned()
                    .ok_or_else(|| {
                        ClientError::Protocol(format!(
                            "{name}-{} has no available leader",
                            partition.partition_index
                        ))
                    })?;
                leaders.insert((name.clone(), partition.partition_index), leader);
            }
        }
        Ok(leaders)
    }

    /// ListOffsets for each partition at `timestamp` (LATEST, EARLIEST or milliseconds);
    /// -1 where no record is at or after the timestamp.
    pub async fn list_offsets(
        &mut self,
        partitions: &[TopicPartition],
        timestamp: i64,
    ) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
        retrying!(
            self,
            "ListOffsets",
            self.list_offsets_once(partitions, timestamp).await
        )
    }

    /// ListOffsets for each partition at `timestamp` (LATEST, EARLIEST or milliseconds);
    /// -1 where no record is at or after the timestamp.
    async fn list_offsets_once(
        &mut self,
        partitions: &[TopicPartition],
        timestamp: i64,
    ) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
        let topics: Vec<String> = {
            let mut t: Vec<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
            t.dedup();
            t
        };
        let leaders = self.partition_leaders(&topics).await?;
        let mut by_leader: BTreeMap<String, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        for (topic, partition) in partitions {
            let leader = leaders.get(&(topic.clone(), *partition)).ok_or_else(|| {
                ClientError::Protocol(format!("unknown partition {topic}-{partition}"))
            })?;
            by_leader
                .entry(leader.clone())
                .or_default()
                .entry(topic.clone())
                .or_default()
                .push(*partition);
        }
        let mut offsets = BTreeMap::new();
        for (leader, topics) in by_leader {
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(
                    topics
                        .iter()
                        .map(|(topic, partitions)| {
                            list_offsets_request::ListOffsetsTopic::default()
                                .with_name(topic_name(topic))
                                .with_partitions(
                                    partitions
                                        .iter()
                                        .map(|p| {
                                            list_offsets_request::ListOffsetsPartition::default()
                                                .with_partition_index(*p)
                                                .with_timestamp(timestamp)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            let (_, response) = self
                .connection(&leader)
                .await?
                .send(1..=7, &request)
                .await?;
            for topic in response.topics {
                for partition in topic.partitions {
                    if partition.error_code != NONE {
                        return Err(kafka_error("ListOffsets", partition.error_code));
                    }
                    offsets.insert(
                        (topic.name.as_str().to_string(), partition.partition_index),
                        partition.offset,
                    );
                }
            }
        }
        Ok(offsets)
    }

    /// Every partition of `topic`.
    pub async fn partitions_of(&mut self, topic: &str) -> Result<Vec<TopicPartition>, ClientError> {
        Ok(self
            .partition_leaders(&[topic.to_string()])
            .await?
            .into_keys()
            .collect())
    }

    async fn broker_addresses(&mut self) -> Result<Vec<String>, ClientError> {
        let request = MetadataRequest::default().with_topics(Some(Vec::new()));
        let (_, response) = self.bootstrap().await?.send(1..=12, &request).await?;
        Ok(response
            .brokers
            .iter()
            .map(|b| format!("{}:{}", b.host.as_str(), b.port))
            .collect())
    }
}

/// Decodes a consumer protocol assignment (versioned: an i16 version, then the body).
fn decode_assignment(bytes: &Bytes) -> Vec<TopicPartition> {
    if bytes.len() < 2 {
        return Vec::new();
    }
    let mut body = bytes.clone();
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    let _ = bytes::Buf::get_i16(&mut body);
    match ConsumerProtocolAssignment::decode(&mut body, version.clamp(0, 3)) {
        Ok(assignment) => assignment
            .assigned_partitions
            .into_iter()
            .flat_map(|tp| {
                let topic = tp.topic.as_str().to_string();
                tp.partitions.into_iter().map(move |p| (topic.clone(), p))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Kafka's error codes for "this topic or group does not exist".
const NOT_FOUND_CODES: [i16; 3] = [
    3,   // UNKNOWN_TOPIC_OR_PARTITION
    69,  // GROUP_ID_NOT_FOUND
    100, // UNKNOWN_TOPIC_ID
];

/// Errors after which a Kafka client asks again (after refreshing where to send): the
/// coordinator, controller or leader moved or is loading, or the connection dropped.
/// `UNKNOWN_TOPIC_OR_PARTITION` is retriable in Kafka's table but an admin call that meets
/// it reports it at once (the topic does not exist), as the Java admin client does.
const RETRIABLE_CODES: [i16; 8] = [
    5,  // LEADER_NOT_AVAILABLE
    6,  // NOT_LEADER_OR_FOLLOWER
    7,  // REQUEST_TIMED_OUT
    13, // NETWORK_EXCEPTION
    14, // COORDINATOR_LOAD_IN_PROGRESS
    15, // COORDINATOR_NOT_AVAILABLE
    16, // NOT_COORDINATOR
    41, // NOT_CONTROLLER
];

impl ClientError {
    /// The Kafka error code, when the broker answered with one.
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the error says a topic, partition or group does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kafka_code()
            .is_some_and(|code| NOT_FOUND_CODES.contains(&code))
    }

    /// Whether the broker could not be reached at all (nothing listening, no route, the
    /// connection attempt timed out).
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Timeout(_, what) => what.starts_with("a connection to"),
            _ => false,
        }
    }

    /// Whether asking again (after refreshing routes) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Kafka { code, .. } => RETRIABLE_CODES.contains(code),
            ClientError::Io { .. } => true,
            _ => false,
        }
    }
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    /// -1: the broker's `num.partitions`.
    pub num_partitions: i32,
    /// -1: the broker's `default.replication.factor`.
    pub replication_factor: i16,
    /// Topic configs under Kafka's names (`retention.ms`, `cleanup.policy`, ...).
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic with the broker's default partition count and replication factor.
    pub fn new(name: &str) -> NewTopic {
        NewTopic {
            name: name.to_string(),
            num_partitions: -1,
            replication_factor: -1,
            configs: BTreeMap::new(),
        }
    }

    pub fn with_partitions(mut self, num_partitions: i32) -> NewTopic {
        self.num_partitions = num_partitions;
        self
    }

    pub fn with_replication_factor(mut self, replication_factor: i16) -> NewTopic {
        self.replication_factor = replication_factor;
        self
    }

    pub fn with_config(mut self, name: &str, value: &str) -> NewTopic {
        self.configs.insert(name.to_string(), value.to_string());
        self
    }
}

/// What the broker created (or, with `validate_only`, would create).
#[derive(Debug, Clone)]
pub struct CreatedTopic {
    pub name: String,
    /// None from brokers older than CreateTopics v7.
    pub topic_id: Option<String>,
    /// -1 from brokers older than CreateTopics v5.
    pub num_partitions: i32,
    pub replication_factor: i16,
    /// The topic's configs as created (CreateTopics v5+).
    pub configs: Vec<ConfigEntry>,
}

/// One topic of `list_topics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    pub name: String,
    pub topic_id: Option<String>,
    pub internal: bool,
    pub partition_count: usize,
}

/// One partition of a described topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    pub partition: i32,
    /// None while the partition has no leader.
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
}

/// A topic as Metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub topic_id: Option<String>,
    pub internal: bool,
    pub partitions: Vec<PartitionDescription>,
}

/// What a config call is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigResource {
    Topic(String),
    Broker(i32),
}

impl ConfigResource {
    fn resource_type(&self) -> i8 {
        match self {
            ConfigResource::Topic(_) => 2,
            ConfigResource::Broker(_) => 4,
        }
    }

    fn resource_name(&self) -> String {
        match self {
            ConfigResource::Topic(name) => name.clone(),
            ConfigResource::Broker(id) => id.to_string(),
        }
    }
}

/// Where a config value comes from (DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    Unknown,
    DynamicTopic,
    DynamicBroker,
    DynamicDefaultBroker,
    StaticBroker,
    Default,
    DynamicBrokerLogger,
    ClientMetrics,
    Group,
}

impl ConfigSource {
    fn from_code(code: i8) -> ConfigSource {
        match code {
            1 => ConfigSource::DynamicTopic,
            2 => ConfigSource::DynamicBroker,
            3 => ConfigSource::DynamicDefaultBroker,
            4 => ConfigSource::StaticBroker,
            5 => ConfigSource::Default,
            6 => ConfigSource::DynamicBrokerLogger,
            7 => ConfigSource::ClientMetrics,
            8 => ConfigSource::Group,
            _ => ConfigSource::Unknown,
        }
    }

    /// Kafka's name for the source, as `kafka-configs.sh --describe` prints it.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConfigSource::Unknown => "UNKNOWN",
            ConfigSource::DynamicTopic => "DYNAMIC_TOPIC_CONFIG",
            ConfigSource::DynamicBroker => "DYNAMIC_BROKER_CONFIG",
            ConfigSource::DynamicDefaultBroker => "DYNAMIC_DEFAULT_BROKER_CONFIG",
            ConfigSource::StaticBroker => "STATIC_BROKER_CONFIG",
            ConfigSource::Default => "DEFAULT_CONFIG",
            ConfigSource::DynamicBrokerLogger => "DYNAMIC_BROKER_LOGGER_CONFIG",
            ConfigSource::ClientMetrics => "CLIENT_METRICS_CONFIG",
            ConfigSource::Group => "GROUP_CONFIG",
        }
    }
}

/// One config of a topic or broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    /// None for sensitive values and unset ones.
    pub value: Option<String>,
    pub source: ConfigSource,
    pub read_only: bool,
    pub sensitive: bool,
    /// Whether the value is the default (nobody set it for this resource or broker).
    pub is_default: bool,
}

/// One change of IncrementalAlterConfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterConfigOp {
    /// Sets `name` to `value`.
    Set { name: String, value: String },
    /// Removes the override: the value falls back to the broker's default.
    Delete { name: String },
    /// Adds `value` to a list config.
    Append { name: String, value: String },
    /// Removes `value` from a list config.
    Subtract { name: String, value: String },
}

impl AlterConfigOp {
    fn to_wire(&self) -> incremental_alter_configs_request::AlterableConfig {
        let (name, operation, value) = match self {
            AlterConfigOp::Set { name, value } => (name, 0, Some(value)),
            AlterConfigOp::Delete { name } => (name, 1, None),
            AlterConfigOp::Append { name, value } => (name, 2, Some(value)),
            AlterConfigOp::Subtract { name, value } => (name, 3, Some(value)),
        };
        incremental_alter_configs_request::AlterableConfig::default()
            .with_name(StrBytes::from_string(name.clone()))
            .with_config_operation(operation)
            .with_value(value.map(|v| StrBytes::from_string(v.clone())))
    }
}

/// A broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerNode {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerNode {
    /// `host:port`, as a connection is made to it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The cluster as DescribeCluster (or, from older brokers, Metadata) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_id: Option<String>,
    /// None when the broker names no controller.
    pub controller_id: Option<i32>,
    pub brokers: Vec<BrokerNode>,
}

impl ClusterDescription {
    pub fn controller(&self) -> Option<&BrokerNode> {
        let id = self.controller_id?;
        self.brokers.iter().find(|b| b.id == id)
    }
}

/// A topic id as text; None for the nil id older brokers send. (Generic so this crate
/// needs no direct `uuid` dependency for kafka-protocol's `Uuid`.)
fn topic_id_string<T: Default + PartialEq + std::fmt::Display>(id: &T) -> Option<String> {
    (*id != T::default()).then(|| id.to_string())
}

fn brokers_of(metadata: &MetadataResponse) -> Vec<BrokerNode> {
    let mut brokers: Vec<BrokerNode> = metadata
        .brokers
        .iter()
        .map(|b| BrokerNode {
            id: b.node_id.0,
            host: b.host.as_str().to_string(),
            port: b.port,
            rack: b.rack.as_ref().map(|r| r.as_str().to_string()),
        })
        .collect();
    brokers.sort_by_key(|b| b.id);
    brokers
}

fn config_entry(
    name: &StrBytes,
    value: &Option<StrBytes>,
    source: i8,
    read_only: bool,
    sensitive: bool,
) -> ConfigEntry {
    let source = ConfigSource::from_code(source);
    ConfigEntry {
        name: name.as_str().to_string(),
        value: value.as_ref().map(|v| v.as_str().to_string()),
        source,
        read_only,
        sensitive,
        is_default: source == ConfigSource::Default,
    }
}

impl Admin {
    fn backoff(&self, attempt: u32) -> Duration {
        let ms = self
            .config
            .retry_backoff_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(
                self.config
                    .retry_backoff_max_ms
                    .max(self.config.retry_backoff_ms),
            );
        Duration::from_millis(ms)
    }

    /// The request timeout as the `timeout_ms` field of topic requests.
    fn timeout_ms_field(&self) -> i32 {
        i32::try_from(self.config.request_timeout_ms).unwrap_or(i32::MAX)
    }

    /// Metadata for `topics` (None: every topic; empty: only brokers and controller).
    async fn metadata(
        &mut self,
        topics: Option<&[String]>,
    ) -> Result<MetadataResponse, ClientError> {
        let request = metadata_request(topics, false);
        let (_, response) = self.bootstrap().await?.send(1..=12, &request).await?;
        Ok(response)
    }

    /// The broker topic changes go to: the controller Metadata names, or the bootstrap
    /// broker when it names none we know (KRaft brokers forward to the controller).
    async fn controller_address(&mut self) -> Result<String, ClientError> {
        let metadata = self.metadata(Some(&[])).await?;
        Ok(brokers_of(&metadata)
            .into_iter()
            .find(|b| b.id == metadata.controller_id.0)
            .map(|b| b.address())
            .unwrap_or_else(|| self.bootstrap.clone()))
    }

    async fn broker_address(&mut self, id: i32) -> Result<String, ClientError> {
        let metadata = self.metadata(Some(&[])).await?;
        brokers_of(&metadata)
            .into_iter()
            .find(|b| b.id == id)
            .map(|b| b.address())
            .ok_or_else(|| ClientError::Protocol(format!("no broker with id {id} in the cluster")))
    }

    /// Creates topics; one result per topic (an existing topic is a
    /// `TOPIC_ALREADY_EXISTS` error in its entry). With `validate_only` the broker only
    /// checks the request.
    pub async fn create_topics(
        &mut self,
        topics: &[NewTopic],
        validate_only: bool,
    ) -> Result<BTreeMap<String, Result<CreatedTopic, ClientError>>, ClientError> {
        retrying!(
            self,
            "CreateTopics",
            self.create_topics_once(topics, validate_only).await
        )
    }

    /// Creates one topic.
    pub async fn create_topic(&mut self, topic: NewTopic) -> Result<CreatedTopic, ClientError> {
        let name = topic.name.clone();
        self.create_topics(&[topic], false)
            .await?
            .remove(&name)
            .unwrap_or_else(|| Err(missing("CreateTopics", &name)))
    }

    async fn create_topics_once(
        &mut self,
        topics: &[NewTopic],
        validate_only: bool,
    ) -> Result<BTreeMap<String, Result<CreatedTopic, ClientError>>, ClientError> {
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(self.timeout_ms_field())
            .with_validate_only(validate_only)
            .with_topics(
                topics
                    .iter()
                    .map(|t| {
                        create_topics_request::CreatableTopic::default()
                            .with_name(topic_name(&t.name))
                            .with_num_partitions(t.num_partitions)
                            .with_replication_factor(t.replication_factor)
                            .with_configs(
                                t.configs
                                    .iter()
                                    .map(|(k, v)| {
                                        create_topics_request::CreatableTopicConfig::default()
                                            .with_name(StrBytes::from_string(k.clone()))
                                            .with_value(Some(StrBytes::from_string(v.clone())))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let address = self.controller_address().await?;
        let (_, response) = self
            .connection(&address)
            .await?
            .send(2..=7, &request)
            .await?;
        let mut results = BTreeMap::new();
        for topic in response.topics {
            let name = topic.name.as_str().to_string();
            let result = if topic.error_code != NONE {
                let error = kafka_error_with(
                    &format!("creating topic `{name}`"),
                    topic.error_code,
                    topic.error_message.as_ref(),
                );
                if error.is_retriable() {
                    return Err(error);
                }
                Err(error)
            } else {
                Ok(CreatedTopic {
                    name: name.clone(),
                    topic_id: topic_id_string(&topic.topic_id),
                    num_partitions: topic.num_partitions,
                    replication_factor: topic.replication_factor,
                    configs: topic
                        .configs
                        .unwrap_or_default()
                        .iter()
                        .map(|c| {
                            config_entry(
                                &c.name,
                                &c.value,
                                c.config_source,
                                c.read_only,
                                c.is_sensitive,
                            )
                        })
                        .collect(),
                })
            };
            results.insert(name, result);
        }
        Ok(results)
    }

    /// Deletes topics; one result per topic (`UNKNOWN_TOPIC_OR_PARTITION` for a topic
    /// that does not exist).
    pub async fn delete_topics(
        &mut self,
        names: &[String],
    ) -> Result<BTreeMap<String, Result<(), ClientError>>, ClientError> {
        retrying!(self, "DeleteTopics", self.delete_topics_once(names).await)
    }

    async fn delete_topics_once(
        &mut self,
        names: &[String],
    ) -> Result<BTreeMap<String, Result<(), ClientError>>, ClientError> {
        let address = self.controller_address().await?;
        let timeout_ms = self.timeout_ms_field();
        let connection = self.connection(&address).await?;
        let version = connection.version_for(ApiKey::DeleteTopics, 1..=6)?;
        // v6 names topics in `topics` (by name or id), older versions in `topic_names`.
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
        if version >= 6 {
            request = request.with_topics(
                names
                    .iter()
                    .map(|n| {
                        delete_topics_request::DeleteTopicState::default()
                            .with_name(Some(topic_name(n)))
                    })
                    .collect(),
            );
        } else {
            request = request.with_topic_names(names.iter().map(|n| topic_name(n)).collect());
        }
        let response = connection.send_at_version(version, &request).await?;
        let mut results = BTreeMap::new();
        for topic in response.responses {
            let name = topic
                .name
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            let result = name_result(
                &format!("deleting topic `{name}`"),
                topic.error_code,
                topic.error_message.as_ref(),
            )?;
            results.insert(name, result);
        }
        Ok(results)
    }

    /// Every topic's name, id and partition count; internal topics (such as
    /// `__consumer_offsets`) only with `include_internal`.
    pub async fn list_topics(
        &mut self,
        include_internal: bool,
    ) -> Result<Vec<TopicListing>, ClientError> {
        let metadata = retrying!(self, "Metadata", self.metadata(None).await)?;
        let mut topics: Vec<TopicListing> = metadata
            .topics
            .iter()
            .filter(|t| t.error_code == NONE && (include_internal || !t.is_internal))
            .map(|t| TopicListing {
                name: t
                    .name
                    .as_ref()
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
                topic_id: topic_id_string(&t.topic_id),
                internal: t.is_internal,
                partition_count: t.partitions.len(),
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// Partitions, leaders, replicas and ISR of each of `names`; an unknown topic is an
    /// `UNKNOWN_TOPIC_OR_PARTITION` error.
    pub async fn describe_topics(
        &mut self,
        names: &[String],
    ) -> Result<Vec<TopicDescription>, ClientError> {
        // A topic-level LEADER_NOT_AVAILABLE (just created) is retried like the request.
        retrying!(self, "Metadata", self.describe_topics_once(names).await)
    }

    async fn describe_topics_once(
        &mut self,
        names: &[String],
    ) -> Result<Vec<TopicDescription>, ClientError> {
        let metadata = self.metadata(Some(names)).await?;
        let mut described = Vec::new();
        for topic in metadata.topics {
            let name = topic
                .name
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            if topic.error_code != NONE {
                return Err(kafka_error(
                    &format!("describing topic `{name}`"),
                    topic.error_code,
                ));
            }
            let mut partitions: Vec<PartitionDescription> = topic
                .partitions
                .into_iter()
                .map(|p| PartitionDescription {
                    partition: p.partition_index,
                    leader: (p.leader_id.0 >= 0).then_some(p.leader_id.0),
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    offline_replicas: p.offline_replicas.iter().map(|b| b.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            described.push(TopicDescription {
                name,
                topic_id: topic_id_string(&topic.topic_id),
                internal: topic.is_internal,
                partitions,
            });
        }
        Ok(described)
    }

    /// Raises topics' partition counts (`topic -> new total count`); one result per topic.
    pub async fn create_partitions(
        &mut self,
        new_counts: &BTreeMap<String, i32>,
        validate_only: bool,
    ) -> Result<BTreeMap<String, Result<(), ClientError>>, ClientError> {
        retrying!(
            self,
            "CreatePartitions",
            self.create_partitions_once(new_counts, validate_only).await
        )
    }

    async fn create_partitions_once(
        &mut self,
        new_counts: &BTreeMap<String, i32>,
        validate_only: bool,
    ) -> Result<BTreeMap<String, Result<(), ClientError>>, ClientError> {
        let request = CreatePartitionsRequest::default()
            .with_timeout_ms(self.timeout_ms_field())
            .with_validate_only(validate_only)
            .with_topics(
                new_counts
                    .iter()
                    .map(|(name, count)| {
                        create_partitions_request::CreatePartitionsTopic::default()
                            .with_name(topic_name(name))
                            .with_count(*count)
                            .with_assignments(None)
                    })
                    .collect(),
            );
        let address = self.controller_address().await?;
        let (_, response) = self
            .connection(&address)
            .await?
            .send(0..=3, &request)
            .await?;
        let mut results = BTreeMap::new();
        for topic in response.results {
            let name = topic.name.as_str().to_string();
            let result = name_result(
                &format!("adding partitions to `{name}`"),
                topic.error_code,
                topic.error_message.as_ref(),
            )?;
            results.insert(name, result);
        }
        Ok(results)
    }

    /// Every config of a topic or broker, with where its value comes from. Broker
    /// configs are asked of that broker, as only it knows its static settings.
    pub async fn describe_configs(
        &mut self,
        resource: &ConfigResource,
    ) -> Result<Vec<ConfigEntry>, ClientError> {
        retrying!(
            self,
            "DescribeConfigs",
            self.describe_configs_once(resource).await
        )
    }

    async fn config_address(&mut self, resource: &ConfigResource) -> Result<String, ClientError> {
        match resource {
            ConfigResource::Broker(id) => self.broker_address(*id).await,
            ConfigResource::Topic(_) => Ok(self.bootstrap.clone()),
        }
    }

    async fn describe_configs_once(
        &mut self,
        resource: &ConfigResource,
    ) -> Result<Vec<ConfigEntry>, ClientError> {
        let request = DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(resource.resource_type())
                .with_resource_name(StrBytes::from_string(resource.resource_name()))
                .with_configuration_keys(None),
        ]);
        let address = self.config_address(resource).await?;
        let (_, response) = self
            .connection(&address)
            .await?
            .send(1..=4, &request)
            .await?;
        let result =
            response.results.into_iter().next().ok_or_else(|| {
                ClientError::Protocol("DescribeConfigs: empty answer".to_string())
            })?;
        if result.error_code != NONE {
            return Err(kafka_error_with(
                &format!("describing configs of {}", describe_resource(resource)),
                result.error_code,
                result.error_message.as_ref(),
            ));
        }
        let mut entries: Vec<ConfigEntry> = result
            .configs
            .iter()
            .map(|c| {
                config_entry(
                    &c.name,
                    &c.value,
                    c.config_source,
                    c.read_only,
                    c.is_sensitive,
                )
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Changes configs of a topic or broker with IncrementalAlterConfigs: only the named
    /// configs change, the others keep their values.
    pub async fn alter_configs(
        &mut self,
        resource: &ConfigResource,
        changes: &[AlterConfigOp],
        validate_only: bool,
    ) -> Result<(), ClientError> {
        retrying!(
            self,
            "IncrementalAlterConfigs",
            self.alter_configs_once(resource, changes, validate_only)
                .await
        )
    }

    async fn alter_configs_once(
        &mut self,
        resource: &ConfigResource,
        changes: &[AlterConfigOp],
        validate_only: bool,
    ) -> Result<(), ClientError> {
        let request = IncrementalAlterConfigsRequest::default()
            .with_validate_only(validate_only)
            .with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(resource.resource_type())
                    .with_resource_name(StrBytes::from_string(resource.resource_name()))
                    .with_configs(changes.iter().map(AlterConfigOp::to_wire).collect()),
            ]);
        let address = match resource {
            ConfigResource::Broker(_) => self.config_address(resource).await?,
            ConfigResource::Topic(_) => self.controller_address().await?,
        };
        let (_, response) = self
            .connection(&address)
            .await?
            .send(0..=1, &request)
            .await?;
        for result in response.responses {
            if result.error_code != NONE {
                return Err(kafka_error_with(
                    &format!("altering configs of {}", describe_resource(resource)),
                    result.error_code,
                    result.error_message.as_ref(),
                ));
            }
        }
        Ok(())
    }

    /// Deletes consumer groups (each must have no members); one result per group
    /// (`GROUP_ID_NOT_FOUND` for an unknown group, `NON_EMPTY_GROUP` for one in use).
    pub async fn delete_groups(
        &mut self,
        groups: &[String],
    ) -> Result<BTreeMap<String, Result<(), ClientError>>, ClientError> {
        let mut results = BTreeMap::new();
        for group in groups {
            let result = retrying!(self, "DeleteGroups", self.delete_group_once(group).await);
            match result {
                Err(error) if error.kafka_code().is_none() => return Err(error),
                result => {
                    results.insert(group.clone(), result);
                }
            }
        }
        Ok(results)
    }

    async fn delete_group_once(&mut self, group: &str) -> Result<(), ClientError> {
        let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
        let (_, response) = self
            .coordinator_connection(group)
            .await?
            .send(0..=2, &request)
            .await?;
        let result = response
            .results
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("DeleteGroups: empty answer".to_string()))?;
        if result.error_code != NONE {
            return Err(kafka_error(
                &format!("deleting group `{group}`"),
                result.error_code,
            ));
        }
        Ok(())
    }

    /// Deletes a group's committed offsets of `partitions` (OffsetDelete); the group must
    /// not be subscribed to their topics.
    pub async fn delete_committed_offsets(
        &mut self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<(), ClientError> {
        retrying!(
            self,
            "OffsetDelete",
            self.delete_committed_offsets_once(group, partitions).await
        )
    }

    async fn delete_committed_offsets_once(
        &mut self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<(), ClientError> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            by_topic.entry(topic).or_default().push(*partition);
        }
        let request = OffsetDeleteRequest::default()
            .with_group_id(group_id(group))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        offset_delete_request::OffsetDeleteRequestTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        offset_delete_request::OffsetDeleteRequestPartition::default()
                                            .with_partition_index(p)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let (_, response) = self
            .coordinator_connection(group)
            .await?
            .send(0..=0, &request)
            .await?;
        if response.error_code != NONE {
            return Err(kafka_error(
                &format!("deleting offsets of group `{group}`"),
                response.error_code,
            ));
        }
        for topic in response.topics {
            for partition in topic.partitions {
                if partition.error_code != NONE {
                    return Err(kafka_error(
                        &format!(
                            "deleting the offset of group `{group}` for {}-{}",
                            topic.name.as_str(),
                            partition.partition_index
                        ),
                        partition.error_code,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Cluster id, controller and brokers: DescribeCluster where the broker has it,
    /// Metadata otherwise.
    pub async fn describe_cluster(&mut self) -> Result<ClusterDescription, ClientError> {
        retrying!(self, "DescribeCluster", self.describe_cluster_once().await)
    }

    async fn describe_cluster_once(&mut self) -> Result<ClusterDescription, ClientError> {
        let connection = self.bootstrap().await?;
        match connection.version_for(ApiKey::DescribeCluster, 0..=1) {
            Ok(version) => {
                let response = connection
                    .send_at_version(version, &DescribeClusterRequest::default())
                    .await?;
                if response.error_code != NONE {
                    return Err(kafka_error_with(
                        "DescribeCluster",
                        response.error_code,
                        response.error_message.as_ref(),
                    ));
                }
                let mut brokers: Vec<BrokerNode> = response
                    .brokers
                    .iter()
                    .map(|b| BrokerNode {
                        id: b.broker_id.0,
                        host: b.host.as_str().to_string(),
                        port: b.port,
                        rack: b.rack.as_ref().map(|r| r.as_str().to_string()),
                    })
                    .collect();
                brokers.sort_by_key(|b| b.id);
                Ok(ClusterDescription {
                    cluster_id: Some(response.cluster_id.as_str().to_string()),
                    controller_id: (response.controller_id.0 >= 0)
                        .then_some(response.controller_id.0),
                    brokers,
                })
            }
            Err(ClientError::UnsupportedApi { .. }) => {
                tracing::debug!("the broker lacks DescribeCluster; describing it from Metadata");
                let metadata = self.metadata(Some(&[])).await?;
                Ok(ClusterDescription {
                    cluster_id: metadata.cluster_id.as_ref().map(|c| c.as_str().to_string()),
                    controller_id: (metadata.controller_id.0 >= 0)
                        .then_some(metadata.controller_id.0),
                    brokers: brokers_of(&metadata),
                })
            }
            Err(error) => Err(error),
        }
    }

    /// Deletes every record before the given offset of each partition (DeleteRecords, sent
    /// to each partition's leader; -1 means the high watermark). Returns each
    /// partition's new log start offset.
    pub async fn delete_records(
        &mut self,
        before: &BTreeMap<TopicPartition, i64>,
    ) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
        retrying!(
            self,
            "DeleteRecords",
            self.delete_records_once(before).await
        )
    }

    async fn delete_records_once(
        &mut self,
        before: &BTreeMap<TopicPartition, i64>,
    ) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
        let mut topics: Vec<String> = before.keys().map(|(t, _)| t.clone()).collect();
        topics.dedup();
        let leaders = self.partition_leaders(&topics).await?;
        let mut by_leader: BTreeMap<String, OffsetsByTopic<'_>> = BTreeMap::new();
        for ((topic, partition), offset) in before {
            let leader = leaders.get(&(topic.clone(), *partition)).ok_or_else(|| {
                kafka_error(
                    &format!("deleting records of {topic}-{partition}"),
                    ResponseError::UnknownTopicOrPartition.code(),
                )
            })?;
            by_leader
                .entry(leader.clone())
                .or_default()
                .entry(topic)
                .or_default()
                .push((*partition, *offset));
        }
        let timeout_ms = self.timeout_ms_field();
        let mut low_watermarks = BTreeMap::new();
        for (leader, topics) in by_leader {
            let request = DeleteRecordsRequest::default()
                .with_timeout_ms(timeout_ms)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(topic, partitions)| {
                            delete_records_request::DeleteRecordsTopic::default()
                                .with_name(topic_name(topic))
                                .with_partitions(
                                    partitions
                                        .into_iter()
                                        .map(|(p, offset)| {
                                            delete_records_request::DeleteRecordsPartition::default(
                                            )
                                            .with_partition_index(p)
                                            .with_offset(offset)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            let (_, response) = self
                .connection(&leader)
                .await?
                .send(0..=2, &request)
                .await?;
            for topic in response.topics {
                for partition in topic.partitions {
                    if partition.error_code != NONE {
                        return Err(kafka_error(
                            &format!(
                                "deleting records of {}-{}",
                                topic.name.as_str(),
                                partition.partition_index
                            ),
                            partition.error_code,
                        ));
                    }
                    low_watermarks.insert(
                        (topic.name.as_str().to_string(), partition.partition_index),
                        partition.low_watermark,
                    );
                }
            }
        }
        Ok(low_watermarks)
    }
}

impl Admin {
    /// Starts (`Some(target replicas)`, preferred leader first) or cancels (`None`)
    /// partition reassignments (AlterPartitionReassignments, KIP-455); one result per
    /// partition. The call returns once the move has *started*: the data is copied in the
    /// background and [`Admin::list_partition_reassignments`] lists the partition until
    /// every new replica is in sync. Sending the same target again changes nothing, so a
    /// retry is safe.
    pub async fn alter_partition_reassignments(
        &mut self,
        reassignments: &BTreeMap<TopicPartition, Option<Vec<i32>>>,
    ) -> Result<BTreeMap<TopicPartition, Result<(), ClientError>>, ClientError> {
        retrying!(
            self,
            "AlterPartitionReassignments",
            self.alter_partition_reassignments_once(reassignments).await
        )
    }

    async fn alter_partition_reassignments_once(
        &mut self,
        reassignments: &BTreeMap<TopicPartition, Option<Vec<i32>>>,
    ) -> Result<BTreeMap<TopicPartition, Result<(), ClientError>>, ClientError> {
        let mut by_topic: TargetsByTopic = BTreeMap::new();
        for ((topic, partition), target) in reassignments {
            by_topic
                .entry(topic.as_str())
                .or_default()
                .push((*partition, target.as_deref()));
        }
        let request = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(self.timeout_ms_field())
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        alter_partition_reassignments_request::ReassignableTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|(partition, target)| {
                                        alter_partition_reassignments_request::ReassignablePartition::default()
                                            .with_partition_index(partition)
                                            .with_replicas(target.map(|replicas| {
                                                replicas.iter().map(|id| BrokerId(*id)).collect()
                                            }))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let address = self.controller_address().await?;
        let (_, response) = self
            .connection(&address)
            .await?
            .send(0..=0, &request)
            .await?;
        if response.error_code != NONE {
            return Err(kafka_error_with(
                "AlterPartitionReassignments",
                response.error_code,
                response.error_message.as_ref(),
            ));
        }
        let mut results = BTreeMap::new();
        for topic in response.responses {
            let name = topic.name.as_str().to_string();
            for partition in topic.partitions {
                let result = name_result(
                    &format!(
                        "reassigning `{name}` partition {}",
                        partition.partition_index
                    ),
                    partition.error_code,
                    partition.error_message.as_ref(),
                )?;
                results.insert((name.clone(), partition.partition_index), result);
            }
        }
        Ok(results)
    }

    /// The reassignments in progress (ListPartitionReassignments), sorted by topic and
    /// partition: all of them, or those among `partitions`.
    pub async fn list_partition_reassignments(
        &mut self,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<Vec<PartitionReassignment>, ClientError> {
        retrying!(
            self,
            "ListPartitionReassignments",
            self.list_partition_reassignments_once(partitions).await
        )
    }

    async fn list_partition_reassignments_once(
        &mut self,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<Vec<PartitionReassignment>, ClientError> {
        let topics = partitions.map(|partitions| {
            let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for (topic, partition) in partitions {
                by_topic.entry(topic.as_str()).or_default().push(*partition);
            }
            by_topic
                .into_iter()
                .map(|(topic, indexes)| {
                    list_partition_reassignments_request::ListPartitionReassignmentsTopics::default(
                    )
                    .with_name(topic_name(topic))
                    .with_partition_indexes(indexes)
                })
                .collect()
        });
        let request = ListPartitionReassignmentsRequest::default()
            .with_timeout_ms(self.timeout_ms_field())
            .with_topics(topics);
        let address = self.controller_address().await?;
        let (_, response) = self
            .connection(&address)
            .await?
            .send(0..=0, &request)
            .await?;
        if response.error_code != NONE {
            return Err(kafka_error_with(
                "ListPartitionReassignments",
                response.error_code,
                response.error_message.as_ref(),
            ));
        }
        let ids = |nodes: &[BrokerId]| nodes.iter().map(|id| id.0).collect::<Vec<i32>>();
        let mut ongoing: Vec<PartitionReassignment> = response
            .topics
            .iter()
            .flat_map(|topic| {
                topic
                    .partitions
                    .iter()
                    .map(move |partition| PartitionReassignment {
                        topic: topic.name.as_str().to_string(),
                        partition: partition.partition_index,
                        replicas: ids(&partition.replicas),
                        adding_replicas: ids(&partition.adding_replicas),
                        removing_replicas: ids(&partition.removing_replicas),
                    })
            })
            .collect();
        ongoing.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(ongoing)
    }
}

/// A partition reassignment in progress, as ListPartitionReassignments reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReassignment {
    pub topic: String,
    pub partition: i32,
    /// Every replica assigned now: the target first, then the ones being removed.
    pub replicas: Vec<i32>,
    /// Target replicas still copying the partition.
    pub adding_replicas: Vec<i32>,
    /// Replicas that go once every adding replica is in sync.
    pub removing_replicas: Vec<i32>,
}

impl PartitionReassignment {
    /// The replicas the partition moves to.
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing_replicas.contains(r))
            .collect()
    }
}

/// Per topic, (partition, target replicas or None to cancel): one
/// AlterPartitionReassignments request's worth.
type TargetsByTopic<'a> = BTreeMap<&'a str, Vec<(i32, Option<&'a [i32]>)>>;

/// Per topic, (partition, offset) pairs: one DeleteRecords request's worth.
type OffsetsByTopic<'a> = BTreeMap<&'a str, Vec<(i32, i64)>>;

fn describe_resource(resource: &ConfigResource) -> String {
    match resource {
        ConfigResource::Topic(name) => format!("topic `{name}`"),
        ConfigResource::Broker(id) => format!("broker {id}"),
    }
}

fn missing(operation: &str, name: &str) -> ClientError {
    ClientError::Protocol(format!("{operation}: the answer does not mention `{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(69), "GROUP_ID_NOT_FOUND");
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
    }

    #[test]
    fn kafka_errors_classify() {
        let not_found = kafka_error("describing topic `x`", 3);
        assert!(not_found.is_not_found());
        assert!(!not_found.is_retriable());
        assert_eq!(
            not_found.to_string(),
            "describing topic `x`: UNKNOWN_TOPIC_OR_PARTITION (error code 3)"
        );
        let with_message = kafka_error_with(
            "creating topic `y`",
            37,
            Some(&StrBytes::from_static_str("must be at least 1")),
        );
        assert!(with_message.to_string().ends_with(": must be at least 1"));
        assert!(kafka_error("x", 16).is_retriable());
        assert!(kafka_error("x", 41).is_retriable());
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let admin = Admin {
            bootstrap: String::new(),
            timeout: Duration::from_secs(1),
            config: AdminConfig::default(),
            connections: HashMap::new(),
        };
        assert_eq!(admin.backoff(0), Duration::from_millis(100));
        assert_eq!(admin.backoff(1), Duration::from_millis(200));
        assert_eq!(admin.backoff(10), Duration::from_millis(1_000));
    }

    #[test]
    fn alter_ops_use_kafkas_operation_codes() {
        let set = AlterConfigOp::Set {
            name: "retention.ms".into(),
            value: "1000".into(),
        }
        .to_wire();
        assert_eq!(
            (set.config_operation, set.value.as_deref()),
            (0, Some("1000"))
        );
        let delete = AlterConfigOp::Delete {
            name: "retention.ms".into(),
        }
        .to_wire();
        assert_eq!((delete.config_operation, delete.value), (1, None));
    }
}
