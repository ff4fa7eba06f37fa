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

/// Kafka's code for a successful partition or group answer.
const NONE: i16 = 0;

fn kafka_error(what: &str, code: i16) -> ClientError {
    let name = ResponseError::try_from_code(code)
        .map(|e| e.to_string())
        .unwrap_or_else(|| "NONE".to_string());
    ClientError::Protocol(format!("{what}: error {code} ({name})"))
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

pub struct Admin {
    bootstrap: String,
    timeout: Duration,
    connections: HashMap<String, Connection>,
}

impl Admin {
    pub async fn connect(bootstrap: &str, timeout: Duration) -> Result<Admin, ClientError> {
        let mut admin = Admin {
            bootstrap: bootstrap.to_string(),
            timeout,
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

    pub async fn describe_group(&mut self, group: &str) -> Result<GroupDescription, ClientError> {
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
        let request = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(topic_name(t)))
                    })
                    .collect(),
            ))
            .with_allow_auto_topic_creation(false);
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
