//! The metadata image: cluster metadata as of one log index, built by applying records.
//!
//! `apply` is deterministic and never fails: every node applies the same records in the same
//! order and ends with the same image. Records are validated before they are proposed (see
//! [`crate::control`]); a record that does not fit the image (which would be a controller
//! bug) is logged and skipped rather than panicking the state machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::records::{ConfigResource, Endpoint, MetadataRecord, PartitionRecord, NO_LEADER};

/// The registration of one broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub broker_id: i32,
    pub incarnation_id: Uuid,
    /// Log index of the registration record; requests with an older epoch are stale.
    pub broker_epoch: i64,
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    pub fenced: bool,
    pub in_controlled_shutdown: bool,
}

impl BrokerRegistration {
    /// May this broker lead partitions and be added to an ISR?
    pub fn is_eligible(&self) -> bool {
        !self.fenced && !self.in_controlled_shutdown
    }
}

/// Replication state of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRegistration {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

impl From<&PartitionRecord> for PartitionRegistration {
    fn from(record: &PartitionRecord) -> Self {
        Self {
            replicas: record.replicas.clone(),
            isr: record.isr.clone(),
            leader: record.leader,
            leader_epoch: record.leader_epoch,
            partition_epoch: record.partition_epoch,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub topic_id: Uuid,
    /// Indexed by partition number.
    pub partitions: Vec<PartitionRegistration>,
}

/// The whole cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// Raft log index of the last applied entry (0 = nothing applied).
    pub last_applied_index: u64,
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    pub topics: BTreeMap<Uuid, TopicImage>,
    pub topic_ids_by_name: BTreeMap<String, Uuid>,
    pub configs: BTreeMap<ConfigResource, BTreeMap<String, String>>,
    /// First producer id not yet handed out.
    pub next_producer_id: i64,
    /// Set once (`ClusterId` record); `None` until a broker claimed it.
    #[serde(default)]
    pub cluster_id: Option<String>,
}

impl MetadataImage {
    pub fn topic_by_name(&self, name: &str) -> Option<&TopicImage> {
        self.topic_ids_by_name
            .get(name)
            .and_then(|id| self.topics.get(id))
    }

    pub fn partition(&self, topic_id: &Uuid, partition: i32) -> Option<&PartitionRegistration> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get(topic_id)?.partitions.get(index)
    }

    /// The effective value of a topic config: topic override, else cluster default.
    pub fn topic_config(&self, topic: &str, name: &str) -> Option<&str> {
        self.configs
            .get(&ConfigResource::Topic(topic.to_string()))
            .and_then(|c| c.get(name))
            .or_else(|| {
                self.configs
                    .get(&ConfigResource::ClusterDefault)
                    .and_then(|c| c.get(name))
            })
            .map(String::as_str)
    }

    /// True if the broker is registered and may lead partitions.
    pub fn is_broker_eligible(&self, broker_id: i32) -> bool {
        self.brokers
            .get(&broker_id)
            .is_some_and(BrokerRegistration::is_eligible)
    }

    /// Apply one record at log index `index`.
    pub fn apply(&mut self, index: u64, record: &MetadataRecord) {
        match record {
            MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id,
                endpoints,
                rack,
            } => {
                let broker_epoch = i64::try_from(index).unwrap_or(i64::MAX);
                self.brokers.insert(
                    *broker_id,
                    BrokerRegistration {
                        broker_id: *broker_id,
                        incarnation_id: *incarnation_id,
                        broker_epoch,
                        endpoints: endpoints.clone(),
                        rack: rack.clone(),
                        fenced: true,
                        in_controlled_shutdown: false,
                    },
                );
            }
            MetadataRecord::FenceBroker {
                broker_id,
                broker_epoch,
            } => self.update_broker(*broker_id, *broker_epoch, |b| b.fenced = true),
            MetadataRecord::UnfenceBroker {
                broker_id,
                broker_epoch,
            } => self.update_broker(*broker_id, *broker_epoch, |b| {
                b.fenced = false;
                b.in_controlled_shutdown = false;
            }),
            MetadataRecord::BrokerShuttingDown {
                broker_id,
                broker_epoch,
            } => self.update_broker(*broker_id, *broker_epoch, |b| {
                b.in_controlled_shutdown = true
            }),
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                configs,
                partitions,
            } => {
                if self.topics.contains_key(topic_id) || self.topic_ids_by_name.contains_key(name) {
                    tracing::warn!(topic = %name, %topic_id, "ignoring CreateTopic of an existing topic");
                    return;
                }
                self.topic_ids_by_name.insert(name.clone(), *topic_id);
                self.topics.insert(
                    *topic_id,
                    TopicImage {
                        name: name.clone(),
                        topic_id: *topic_id,
                        partitions: partitions.iter().map(PartitionRegistration::from).collect(),
                    },
                );
                if !configs.is_empty() {
                    self.configs
                        .insert(ConfigResource::Topic(name.clone()), configs.clone());
                }
            }
            MetadataRecord::DeleteTopic { topic_id } => {
                if let Some(topic) = self.topics.remove(topic_id) {
                    self.topic_ids_by_name.remove(&topic.name);
                    self.configs.remove(&ConfigResource::Topic(topic.name));
                }
            }
            MetadataRecord::CreatePartitions {
                topic_id,
                partitions,
            } => {
                let Some(topic) = self.topics.get_mut(topic_id) else {
                    tracing::warn!(%topic_id, "ignoring CreatePartitions of an unknown topic");
                    return;
                };
                for record in partitions {
                    if usize::try_from(record.partition).ok() != Some(topic.partitions.len()) {
                        tracing::warn!(%topic_id, partition = record.partition, "ignoring out-of-order partition");
                        continue;
                    }
                    topic.partitions.push(PartitionRegistration::from(record));
                }
            }
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                leader,
                isr,
                replicas,
            } => {
                let Some(state) = self.partition_mut(topic_id, *partition) else {
                    tracing::warn!(%topic_id, partition, "ignoring PartitionChange of an unknown partition");
                    return;
                };
                if let Some(leader) = leader {
                    state.leader = *leader;
                    state.leader_epoch = state.leader_epoch.saturating_add(1);
                }
                if let Some(isr) = isr {
                    state.isr = isr.clone();
                }
                if let Some(replicas) = replicas {
                    state.replicas = replicas.clone();
                }
                state.partition_epoch = state.partition_epoch.saturating_add(1);
            }
            MetadataRecord::Config {
                resource,
                name,
                value,
            } => {
                let entries = self.configs.entry(resource.clone()).or_default();
                match value {
                    Some(value) => {
                        entries.insert(name.clone(), value.clone());
                    }
                    None => {
                        entries.remove(name);
                    }
                }
                if entries.is_empty() {
                    self.configs.remove(resource);
                }
            }
            MetadataRecord::ProducerIds {
                next_producer_id, ..
            } => {
                self.next_producer_id = self.next_producer_id.max(*next_producer_id);
            }
            MetadataRecord::ClusterId { cluster_id } => {
                if self.cluster_id.is_none() {
                    self.cluster_id = Some(cluster_id.clone());
                }
            }
        }
    }

    fn update_broker(
        &mut self,
        broker_id: i32,
        broker_epoch: i64,
        change: impl FnOnce(&mut BrokerRegistration),
    ) {
        match self.brokers.get_mut(&broker_id) {
            Some(broker) if broker.broker_epoch == broker_epoch => change(broker),
            _ => tracing::warn!(
                broker_id,
                broker_epoch,
                "ignoring broker record with an unknown broker or stale epoch"
            ),
        }
    }

    fn partition_mut(
        &mut self,
        topic_id: &Uuid,
        partition: i32,
    ) -> Option<&mut PartitionRegistration> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get_mut(topic_id)?.partitions.get_mut(index)
    }

    /// Partitions (topic id, partition) led by `broker_id`.
    pub fn partitions_led_by(&self, broker_id: i32) -> Vec<(Uuid, i32)> {
        self.partitions_matching(|p| p.leader == broker_id)
    }

    /// Partitions (topic id, partition) whose leader is [`NO_LEADER`].
    pub fn offline_partitions(&self) -> Vec<(Uuid, i32)> {
        self.partitions_matching(|p| p.leader == NO_LEADER)
    }

    /// Partitions (topic id, partition) whose registration satisfies `predicate`.
    pub fn partitions_matching(
        &self,
        predicate: impl Fn(&PartitionRegistration) -> bool,
    ) -> Vec<(Uuid, i32)> {
        let mut found = Vec::new();
        for topic in self.topics.values() {
            for (index, state) in topic.partitions.iter().enumerate() {
                if predicate(state) {
                    found.push((topic.topic_id, i32::try_from(index).unwrap_or(i32::MAX)));
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(image: &mut MetadataImage, index: u64, broker_id: i32) {
        image.apply(
            index,
            &MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id: Uuid::from_u128(broker_id as u128),
                endpoints: vec![Endpoint {
                    name: "PLAINTEXT".into(),
                    host: "localhost".into(),
                    port: 9092,
                }],
                rack: None,
            },
        );
    }

    fn topic_record(topic_id: Uuid) -> MetadataRecord {
        MetadataRecord::CreateTopic {
            name: "orders".into(),
            topic_id,
            configs: BTreeMap::from([("cleanup.policy".into(), "compact".into())]),
            partitions: vec![PartitionRecord {
                partition: 0,
                replicas: vec![1, 2],
                isr: vec![1, 2],
                leader: 1,
                leader_epoch: 0,
                partition_epoch: 0,
            }],
        }
    }

    #[test]
    fn registered_broker_starts_fenced_with_epoch_equal_to_log_index() {
        let mut image = MetadataImage::default();
        register(&mut image, 7, 1);
        let broker = &image.brokers[&1];
        assert!(broker.fenced);
        assert_eq!(broker.broker_epoch, 7);
        image.apply(
            8,
            &MetadataRecord::UnfenceBroker {
                broker_id: 1,
                broker_epoch: 7,
            },
        );
        assert!(image.is_broker_eligible(1));
    }

    #[test]
    fn fence_with_stale_epoch_is_ignored() {
        let mut image = MetadataImage::default();
        register(&mut image, 3, 1);
        image.apply(
            4,
            &MetadataRecord::UnfenceBroker {
                broker_id: 1,
                broker_epoch: 3,
            },
        );
        image.apply(
            5,
            &MetadataRecord::FenceBroker {
                broker_id: 1,
                broker_epoch: 2,
            },
        );
        assert!(!image.brokers[&1].fenced);
    }

    #[test]
    fn create_and_delete_topic_keep_name_index_and_configs() {
        let mut image = MetadataImage::default();
        let id = Uuid::from_u128(42);
        image.apply(1, &topic_record(id));
        assert_eq!(image.topic_by_name("orders").map(|t| t.topic_id), Some(id));
        assert_eq!(
            image.topic_config("orders", "cleanup.policy"),
            Some("compact")
        );
        // A second create with the same name is ignored.
        image.apply(
            2,
            &MetadataRecord::CreateTopic {
                name: "orders".into(),
                topic_id: Uuid::from_u128(43),
                configs: BTreeMap::new(),
                partitions: vec![],
            },
        );
        assert_eq!(image.topics.len(), 1);
        image.apply(3, &MetadataRecord::DeleteTopic { topic_id: id });
        assert!(image.topic_by_name("orders").is_none());
        assert!(image.configs.is_empty());
    }

    #[test]
    fn partition_change_bumps_epochs_by_the_rules() {
        let mut image = MetadataImage::default();
        let id = Uuid::from_u128(42);
        image.apply(1, &topic_record(id));
        // ISR only: partition epoch moves, leader epoch stays.
        image.apply(
            2,
            &MetadataRecord::PartitionChange {
                topic_id: id,
                partition: 0,
                leader: None,
                isr: Some(vec![1]),
                replicas: None,
            },
        );
        let p = image.partition(&id, 0).cloned().unwrap();
        assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (1, 0, 1));
        assert_eq!(p.isr, vec![1]);
        // New leader: both move.
        image.apply(
            3,
            &MetadataRecord::PartitionChange {
                topic_id: id,
                partition: 0,
                leader: Some(2),
                isr: Some(vec![2]),
                replicas: None,
            },
        );
        let p = image.partition(&id, 0).cloned().unwrap();
        assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (2, 1, 2));
        // Unknown partition: ignored.
        image.apply(
            4,
            &MetadataRecord::PartitionChange {
                topic_id: id,
                partition: 5,
                leader: Some(1),
                isr: None,
                replicas: None,
            },
        );
        assert_eq!(image.topics[&id].partitions.len(), 1);
    }

    #[test]
    fn create_partitions_appends_in_order_only() {
        let mut image = MetadataImage::default();
        let id = Uuid::from_u128(42);
        image.apply(1, &topic_record(id));
        let new = |partition| PartitionRecord {
            partition,
            replicas: vec![2],
            isr: vec![2],
            leader: 2,
            leader_epoch: 0,
            partition_epoch: 0,
        };
        image.apply(
            2,
            &MetadataRecord::CreatePartitions {
                topic_id: id,
                partitions: vec![new(1), new(3)],
            },
        );
        assert_eq!(image.topics[&id].partitions.len(), 2);
    }

    #[test]
    fn configs_set_delete_and_default() {
        let mut image = MetadataImage::default();
        image.apply(
            1,
            &MetadataRecord::Config {
                resource: ConfigResource::ClusterDefault,
                name: "unclean.leader.election.enable".into(),
                value: Some("true".into()),
            },
        );
        assert_eq!(
            image.topic_config("t", "unclean.leader.election.enable"),
            Some("true")
        );
        image.apply(
            2,
            &MetadataRecord::Config {
                resource: ConfigResource::Topic("t".into()),
                name: "unclean.leader.election.enable".into(),
                value: Some("false".into()),
            },
        );
        assert_eq!(
            image.topic_config("t", "unclean.leader.election.enable"),
            Some("false")
        );
        image.apply(
            3,
            &MetadataRecord::Config {
                resource: ConfigResource::Topic("t".into()),
                name: "unclean.leader.election.enable".into(),
                value: None,
            },
        );
        assert!(!image
            .configs
            .contains_key(&ConfigResource::Topic("t".into())));
    }

    #[test]
    fn producer_ids_only_move_forward() {
        let mut image = MetadataImage::default();
        let block = |next| MetadataRecord::ProducerIds {
            broker_id: 1,
            broker_epoch: 1,
            next_producer_id: next,
        };
        image.apply(1, &block(1000));
        image.apply(2, &block(500));
        assert_eq!(image.next_producer_id, 1000);
    }
}
