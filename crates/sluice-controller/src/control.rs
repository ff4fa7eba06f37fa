//! Controller logic: pure functions from (image, request) to the records that carry it out.
//!
//! These run on the active controller only, one request at a time, against an image that
//! includes every committed record (see `Controller::propose`). They validate the request
//! and return either the records to propose (plus the answer to give once they commit) or a
//! Kafka error code. Nothing here touches the network, the disk or the clock: time comes in
//! as an argument, which keeps the rules unit-testable.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::image::{MetadataImage, PartitionRegistration};
use crate::placement::{assign_replicas, PlacementBroker};
use crate::records::{ConfigResource, Endpoint, MetadataRecord, PartitionRecord, NO_LEADER};

/// Topic config that allows electing a leader outside the ISR (may lose records).
pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";

/// Largest topic name Kafka accepts.
const TOPIC_NAME_BYTES_MAX: usize = 249;

/// A request to the controller (what brokers and admin tools send).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerRequest {
    /// A broker starts (or restarts with a new incarnation id).
    RegisterBroker {
        broker_id: i32,
        incarnation_id: Uuid,
        endpoints: Vec<Endpoint>,
        rack: Option<String>,
    },
    /// Periodic liveness signal. `want_fence` keeps the broker fenced (it is still
    /// recovering its logs); `want_shutdown` starts a controlled shutdown.
    BrokerHeartbeat {
        broker_id: i32,
        broker_epoch: i64,
        want_fence: bool,
        want_shutdown: bool,
    },
    CreateTopic {
        name: String,
        /// Partitions when `assignments` is empty.
        num_partitions: i32,
        /// Replication factor when `assignments` is empty.
        replication_factor: i16,
        /// Manual assignment: replicas per partition (preferred leader first).
        assignments: Vec<Vec<i32>>,
        configs: BTreeMap<String, String>,
    },
    /// Adopt a topic that already exists on a broker's disk, keeping its id (migration of
    /// single-node data into the quorum on the first start with a controller).
    ImportTopic {
        name: String,
        topic_id: Uuid,
        /// Replicas per partition (preferred leader first).
        assignments: Vec<Vec<i32>>,
        configs: BTreeMap<String, String>,
    },
    /// Never hand out producer ids below `next_producer_id` (migration of the single-node
    /// producer id counter).
    RaiseProducerIdFloor {
        next_producer_id: i64,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        /// The new total number of partitions.
        total_count: i32,
    },
    /// A partition leader asks to change the ISR (Kafka's AlterPartition).
    AlterPartition {
        broker_id: i32,
        broker_epoch: i64,
        topic_id: Uuid,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: Vec<i32>,
    },
    /// Set (`Some`) or delete (`None`) configuration entries.
    AlterConfigs {
        resource: ConfigResource,
        entries: BTreeMap<String, Option<String>>,
    },
    /// Hand the broker a block of producer ids.
    AllocateProducerIds {
        broker_id: i32,
        broker_epoch: i64,
    },
    /// Move leadership back to the preferred (first) replica where it is in the ISR and
    /// eligible. An empty list means every partition.
    ElectPreferredLeaders {
        partitions: Vec<(Uuid, i32)>,
    },
    /// Set the cluster id unless one is set; the answer is the cluster's id either way (a
    /// broker proposes the id of its `meta.properties` and adopts the answer).
    ClaimClusterId {
        cluster_id: String,
    },
    /// Start (`Some(target replicas)`) or cancel (`None`) partition reassignments
    /// (Kafka's AlterPartitionReassignments, KIP-455). Each entry is
    /// `(topic id, partition, target)` and succeeds or fails on its own.
    AlterPartitionReassignments {
        reassignments: Vec<(Uuid, i32, Option<Vec<i32>>)>,
    },
}

/// The answer to a [`ControllerRequest`] once its records are committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerResponse {
    BrokerRegistered {
        broker_epoch: i64,
    },
    Heartbeat {
        is_fenced: bool,
        /// The controlled shutdown finished: the broker leads nothing and may exit.
        should_shut_down: bool,
    },
    TopicCreated {
        topic_id: Uuid,
    },
    Done,
    PartitionAltered {
        /// Boxed: the registration is the largest answer, and every broker error type
        /// that carries a response would grow with it.
        state: Box<PartitionRegistration>,
    },
    ProducerIds {
        first_producer_id: i64,
        count: i64,
    },
    LeadersElected {
        count: usize,
    },
    ClusterId {
        cluster_id: String,
    },
    /// One entry per requested reassignment, in request order: `None` = accepted (started,
    /// finished at once, or cancelled), `Some` = refused with this error.
    ReassignmentsAltered {
        results: Vec<Option<ApiError>>,
    },
}

/// Limits and timings of the controller logic.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Number of producer ids in one allocated block.
    pub producer_id_block_size: i64,
    /// Most partitions a single CreateTopic/CreatePartitions may create.
    pub partitions_per_request_max: i32,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            producer_id_block_size: 1000,
            partitions_per_request_max: 10_000,
        }
    }
}

/// What to propose and, once committed, what to answer. `broker_epoch_from_index` answers
/// with the broker epoch = log index of the committed entry (RegisterBroker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub records: Vec<MetadataRecord>,
    pub response: ControllerResponse,
    pub broker_epoch_from_index: bool,
}

impl Plan {
    fn new(records: Vec<MetadataRecord>, response: ControllerResponse) -> Self {
        Self {
            records,
            response,
            broker_epoch_from_index: false,
        }
    }
}

/// Plan a request against the image. `new_topic_id` is used for CreateTopic; `seed` drives
/// placement.
pub fn plan(
    image: &MetadataImage,
    config: &ControlConfig,
    request: &ControllerRequest,
    new_topic_id: Uuid,
    seed: u64,
) -> Result<Plan, ApiError> {
    match request {
        ControllerRequest::RegisterBroker {
            broker_id,
            incarnation_id,
            endpoints,
            rack,
        } => Ok(register_broker(
            image,
            *broker_id,
            *incarnation_id,
            endpoints,
            rack,
        )),
        ControllerRequest::BrokerHeartbeat {
            broker_id,
            broker_epoch,
            want_fence,
            want_shutdown,
        } => heartbeat(
            image,
            *broker_id,
            *broker_epoch,
            *want_fence,
            *want_shutdown,
        ),
        ControllerRequest::CreateTopic {
            name,
            num_partitions,
            replication_factor,
            assignments,
            configs,
        } => create_topic(
            image,
            config,
            name,
            *num_partitions,
            *replication_factor,
            assignments,
            configs,
            new_topic_id,
            seed,
        ),
        ControllerRequest::ImportTopic {
            name,
            topic_id,
            assignments,
            configs,
        } => {
            if assignments.is_empty() {
                return Err(ApiError::new(
                    ResponseError::InvalidReplicaAssignment,
                    "an imported topic needs its replica assignment",
                ));
            }
            create_topic(
                image,
                config,
                name,
                -1,
                -1,
                assignments,
                configs,
                *topic_id,
                seed,
            )
        }
        ControllerRequest::RaiseProducerIdFloor { next_producer_id } => {
            let records = if image.next_producer_id < *next_producer_id {
                vec![MetadataRecord::ProducerIds {
                    broker_id: -1,
                    broker_epoch: -1,
                    next_producer_id: *next_producer_id,
                }]
            } else {
                Vec::new()
            };
            Ok(Plan::new(records, ControllerResponse::Done))
        }
        ControllerRequest::DeleteTopic { name } => {
            let topic = image
                .topic_by_name(name)
                .ok_or_else(|| unknown_topic(name))?;
            Ok(Plan::new(
                vec![MetadataRecord::DeleteTopic {
                    topic_id: topic.topic_id,
                }],
                ControllerResponse::Done,
            ))
        }
        ControllerRequest::CreatePartitions { name, total_count } => {
            create_partitions(image, config, name, *total_count, seed)
        }
        ControllerRequest::AlterPartition {
            broker_id,
            broker_epoch,
            topic_id,
            partition,
            leader_epoch,
            partition_epoch,
            new_isr,
        } => alter_partition(
            image,
            *broker_id,
            *broker_epoch,
            topic_id,
            *partition,
            *leader_epoch,
            *partition_epoch,
            new_isr,
        ),
        ControllerRequest::AlterConfigs { resource, entries } => {
            if let ConfigResource::Topic(name) = resource {
                image
                    .topic_by_name(name)
                    .ok_or_else(|| unknown_topic(name))?;
            }
            let records = entries
                .iter()
                .map(|(name, value)| MetadataRecord::Config {
                    resource: resource.clone(),
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect();
            Ok(Plan::new(records, ControllerResponse::Done))
        }
        ControllerRequest::AllocateProducerIds {
            broker_id,
            broker_epoch,
        } => {
            check_broker_epoch(image, *broker_id, *broker_epoch)?;
            let first = image.next_producer_id;
            let next = first
                .checked_add(config.producer_id_block_size)
                .ok_or_else(|| {
                    ApiError::new(ResponseError::UnknownServerError, "producer ids exhausted")
                })?;
            Ok(Plan::new(
                vec![MetadataRecord::ProducerIds {
                    broker_id: *broker_id,
                    broker_epoch: *broker_epoch,
                    next_producer_id: next,
                }],
                ControllerResponse::ProducerIds {
                    first_producer_id: first,
                    count: config.producer_id_block_size,
                },
            ))
        }
        ControllerRequest::ClaimClusterId { cluster_id } => {
            if cluster_id.is_empty() {
                return Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    "the cluster id must not be empty",
                ));
            }
            Ok(match &image.cluster_id {
                Some(existing) => Plan::new(
                    Vec::new(),
                    ControllerResponse::ClusterId {
                        cluster_id: existing.clone(),
                    },
                ),
                None => Plan::new(
                    vec![MetadataRecord::ClusterId {
                        cluster_id: cluster_id.clone(),
                    }],
                    ControllerResponse::ClusterId {
                        cluster_id: cluster_id.clone(),
                    },
                ),
            })
        }
        ControllerRequest::ElectPreferredLeaders { partitions } => {
            let records = elect_preferred_leaders(image, partitions);
            let count = records.len();
            Ok(Plan::new(
                records,
                ControllerResponse::LeadersElected { count },
            ))
        }
        ControllerRequest::AlterPartitionReassignments { reassignments } => {
            Ok(alter_partition_reassignments(image, reassignments))
        }
    }
}

fn unknown_topic(name: &str) -> ApiError {
    ApiError::new(
        ResponseError::UnknownTopicOrPartition,
        format!("topic {name} does not exist"),
    )
}

fn check_broker_epoch(
    image: &MetadataImage,
    broker_id: i32,
    broker_epoch: i64,
) -> Result<(), ApiError> {
    match image.brokers.get(&broker_id) {
        None => Err(ApiError::new(
            ResponseError::BrokerIdNotRegistered,
            format!("broker {broker_id} is not registered"),
        )),
        Some(b) if b.broker_epoch != broker_epoch => Err(ApiError::new(
            ResponseError::StaleBrokerEpoch,
            format!(
                "broker {broker_id} epoch {broker_epoch} is not the registered epoch {}",
                b.broker_epoch
            ),
        )),
        Some(_) => Ok(()),
    }
}

fn register_broker(
    image: &MetadataImage,
    broker_id: i32,
    incarnation_id: Uuid,
    endpoints: &[Endpoint],
    rack: &Option<String>,
) -> Plan {
    if let Some(existing) = image.brokers.get(&broker_id) {
        if existing.incarnation_id == incarnation_id {
            // A retried registration of the same process: answer with the epoch it has.
            return Plan::new(
                Vec::new(),
                ControllerResponse::BrokerRegistered {
                    broker_epoch: existing.broker_epoch,
                },
            );
        }
    }
    // A new incarnation replaces the old one: whatever the old process led is moved away
    // first (the restarted process has to catch up before it may lead again).
    let mut records = if image.brokers.contains_key(&broker_id) {
        leave_broker_records(image, broker_id)
    } else {
        Vec::new()
    };
    records.push(MetadataRecord::RegisterBroker {
        broker_id,
        incarnation_id,
        endpoints: endpoints.to_vec(),
        rack: rack.clone(),
    });
    Plan {
        records,
        response: ControllerResponse::BrokerRegistered { broker_epoch: 0 },
        broker_epoch_from_index: true,
    }
}

fn heartbeat(
    image: &MetadataImage,
    broker_id: i32,
    broker_epoch: i64,
    want_fence: bool,
    want_shutdown: bool,
) -> Result<Plan, ApiError> {
    check_broker_epoch(image, broker_id, broker_epoch)?;
    let broker = &image.brokers[&broker_id];
    let mut records = Vec::new();
    if want_shutdown {
        if !broker.in_controlled_shutdown {
            records.push(MetadataRecord::BrokerShuttingDown {
                broker_id,
                broker_epoch,
            });
        }
        let moves = leave_broker_records(image, broker_id);
        // Done once an earlier heartbeat moved everything: nothing is left to move.
        let should_shut_down = broker.in_controlled_shutdown && moves.is_empty();
        records.extend(moves);
        return Ok(Plan::new(
            records,
            ControllerResponse::Heartbeat {
                is_fenced: broker.fenced,
                should_shut_down,
            },
        ));
    }
    if want_fence {
        if !broker.fenced {
            records.push(MetadataRecord::FenceBroker {
                broker_id,
                broker_epoch,
            });
            records.extend(leave_broker_records(image, broker_id));
        }
        return Ok(Plan::new(
            records,
            ControllerResponse::Heartbeat {
                is_fenced: true,
                should_shut_down: false,
            },
        ));
    }
    if broker.fenced || broker.in_controlled_shutdown {
        records.push(MetadataRecord::UnfenceBroker {
            broker_id,
            broker_epoch,
        });
        records.extend(join_broker_records(image, broker_id));
    }
    Ok(Plan::new(
        records,
        ControllerResponse::Heartbeat {
            is_fenced: false,
            should_shut_down: false,
        },
    ))
}

/// Records that fence a broker whose session expired and move leadership off it.
pub fn fence_broker(image: &MetadataImage, broker_id: i32) -> Vec<MetadataRecord> {
    let Some(broker) = image.brokers.get(&broker_id) else {
        return Vec::new();
    };
    if broker.fenced {
        return Vec::new();
    }
    let mut records = vec![MetadataRecord::FenceBroker {
        broker_id,
        broker_epoch: broker.broker_epoch,
    }];
    records.extend(leave_broker_records(image, broker_id));
    records
}

/// Partition changes for a broker that stops serving (fenced, shutting down or replaced):
/// it leaves every ISR it is in unless it is the last member (the last in-sync replica is
/// remembered, so that the partition can come back without loss when it returns), and
/// every partition it leads gets a new leader from the remaining eligible ISR, or none.
fn leave_broker_records(image: &MetadataImage, broker_id: i32) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in image.topics.values() {
        let unclean = image
            .topic_config(&topic.name, UNCLEAN_LEADER_ELECTION_ENABLE)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        for (index, state) in topic.partitions.iter().enumerate() {
            let partition = i32::try_from(index).unwrap_or(i32::MAX);
            if state.leader != broker_id && !state.isr.contains(&broker_id) {
                continue;
            }
            let eligible = |r: &i32| *r != broker_id && image.is_broker_eligible(*r);
            let mut isr: Vec<i32> = state
                .isr
                .iter()
                .copied()
                .filter(|r| *r != broker_id)
                .collect();
            if isr.is_empty() {
                isr = state.isr.clone();
            }
            let mut leader = if state.leader == broker_id {
                Some(
                    state
                        .replicas
                        .iter()
                        .copied()
                        .find(|r| isr.contains(r) && eligible(r))
                        .unwrap_or(NO_LEADER),
                )
            } else {
                None
            };
            if leader == Some(NO_LEADER) && unclean {
                if let Some(r) = state.replicas.iter().copied().find(eligible) {
                    tracing::warn!(topic = %topic.name, partition, broker_id = r, "unclean leader election: records may be lost");
                    leader = Some(r);
                    isr = vec![r];
                }
            }
            let isr_change = (isr != state.isr).then_some(isr);
            if leader.is_none() && isr_change.is_none() {
                continue;
            }
            records.push(MetadataRecord::PartitionChange {
                topic_id: topic.topic_id,
                partition,
                leader,
                isr: isr_change,
                replicas: None,
                adding_replicas: None,
                removing_replicas: None,
            });
        }
    }
    records
}

/// Partition changes for a broker that becomes eligible again: offline partitions that
/// it can lead without loss (it is in their ISR) get it as leader.
fn join_broker_records(image: &MetadataImage, broker_id: i32) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in image.topics.values() {
        for (index, state) in topic.partitions.iter().enumerate() {
            if state.leader == NO_LEADER && state.isr.contains(&broker_id) {
                records.push(MetadataRecord::PartitionChange {
                    topic_id: topic.topic_id,
                    partition: i32::try_from(index).unwrap_or(i32::MAX),
                    leader: Some(broker_id),
                    isr: None,
                    replicas: None,
                    adding_replicas: None,
                    removing_replicas: None,
                });
            }
        }
    }
    records
}

fn validate_topic_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= TOPIC_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ApiError::new(
            ResponseError::InvalidTopicException,
            format!("invalid topic name {name:?}"),
        ))
    }
}

fn placement_brokers(image: &MetadataImage) -> Vec<PlacementBroker> {
    image
        .brokers
        .values()
        .filter(|b| b.is_eligible())
        .map(|b| PlacementBroker {
            broker_id: b.broker_id,
            rack: b.rack.clone(),
        })
        .collect()
}

fn new_partition_records(
    first_partition: i32,
    assignments: Vec<Vec<i32>>,
    image: &MetadataImage,
) -> Vec<PartitionRecord> {
    assignments
        .into_iter()
        .zip(first_partition..)
        .map(|(replicas, partition)| {
            let isr: Vec<i32> = replicas
                .iter()
                .copied()
                .filter(|r| image.is_broker_eligible(*r))
                .collect();
            let leader = isr.first().copied().unwrap_or(NO_LEADER);
            PartitionRecord {
                partition,
                replicas,
                isr,
                leader,
                leader_epoch: 0,
                partition_epoch: 0,
            }
        })
        .collect()
}

fn validate_manual_assignments(
    image: &MetadataImage,
    assignments: &[Vec<i32>],
) -> Result<(), ApiError> {
    let invalid = |message: String| ApiError::new(ResponseError::InvalidReplicaAssignment, message);
    let replication_factor = assignments.first().map(Vec::len).unwrap_or(0);
    for (partition, replicas) in assignments.iter().enumerate() {
        if replicas.is_empty() || replicas.len() != replication_factor {
            return Err(invalid(format!(
                "partition {partition} has {} replicas, expected {replication_factor} (at least 1)",
                replicas.len()
            )));
        }
        if replicas.iter().collect::<BTreeSet<_>>().len() != replicas.len() {
            return Err(invalid(format!(
                "partition {partition} lists a broker twice"
            )));
        }
        if let Some(r) = replicas.iter().find(|r| !image.brokers.contains_key(r)) {
            return Err(invalid(format!(
                "broker {r} of partition {partition} is not registered"
            )));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn create_topic(
    image: &MetadataImage,
    config: &ControlConfig,
    name: &str,
    num_partitions: i32,
    replication_factor: i16,
    assignments: &[Vec<i32>],
    configs: &BTreeMap<String, String>,
    topic_id: Uuid,
    seed: u64,
) -> Result<Plan, ApiError> {
    validate_topic_name(name)?;
    if image.topic_by_name(name).is_some() {
        return Err(ApiError::new(
            ResponseError::TopicAlreadyExists,
            format!("topic {name} already exists"),
        ));
    }
    if image.topics.contains_key(&topic_id) {
        return Err(ApiError::new(
            ResponseError::TopicAlreadyExists,
            "topic id collision",
        ));
    }
    let assignments = if assignments.is_empty() {
        if num_partitions > config.partitions_per_request_max {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "{num_partitions} partitions exceed the limit of {}",
                    config.partitions_per_request_max
                ),
            ));
        }
        assign_replicas(
            &placement_brokers(image),
            num_partitions,
            replication_factor,
            0,
            seed,
        )?
    } else {
        if assignments.len() > usize::try_from(config.partitions_per_request_max).unwrap_or(0) {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                "too many partitions",
            ));
        }
        validate_manual_assignments(image, assignments)?;
        assignments.to_vec()
    };
    Ok(Plan::new(
        vec![MetadataRecord::CreateTopic {
            name: name.to_string(),
            topic_id,
            configs: configs.clone(),
            partitions: new_partition_records(0, assignments, image),
        }],
        ControllerResponse::TopicCreated { topic_id },
    ))
}

fn create_partitions(
    image: &MetadataImage,
    config: &ControlConfig,
    name: &str,
    total_count: i32,
    seed: u64,
) -> Result<Plan, ApiError> {
    let topic = image
        .topic_by_name(name)
        .ok_or_else(|| unknown_topic(name))?;
    let current = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
    if total_count <= current {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!("topic {name} has {current} partitions; the new count must be larger, got {total_count}"),
        ));
    }
    let added = total_count - current;
    if added > config.partitions_per_request_max {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            "too many partitions",
        ));
    }
    // The target's size: during a reassignment `replicas` also holds the leaving ones.
    let replication_factor = topic
        .partitions
        .first()
        .map(|p| i16::try_from(p.target_replicas().len()).unwrap_or(i16::MAX))
        .unwrap_or(1);
    let assignments = assign_replicas(
        &placement_brokers(image),
        added,
        replication_factor,
        current,
        seed,
    )?;
    Ok(Plan::new(
        vec![MetadataRecord::CreatePartitions {
            topic_id: topic.topic_id,
            partitions: new_partition_records(current, assignments, image),
        }],
        ControllerResponse::Done,
    ))
}

#[allow(clippy::too_many_arguments)]
fn alter_partition(
    image: &MetadataImage,
    broker_id: i32,
    broker_epoch: i64,
    topic_id: &Uuid,
    partition: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    new_isr: &[i32],
) -> Result<Plan, ApiError> {
    check_broker_epoch(image, broker_id, broker_epoch)?;
    let state = image.partition(topic_id, partition).ok_or_else(|| {
        ApiError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("partition {topic_id}-{partition} does not exist"),
        )
    })?;
    if leader_epoch < state.leader_epoch {
        return Err(ApiError::new(
            ResponseError::FencedLeaderEpoch,
            format!(
                "leader epoch {leader_epoch} is older than {}",
                state.leader_epoch
            ),
        ));
    }
    if state.leader != broker_id || leader_epoch > state.leader_epoch {
        return Err(ApiError::new(
            ResponseError::NotLeaderOrFollower,
            format!("broker {broker_id} at epoch {leader_epoch} is not the leader"),
        ));
    }
    if partition_epoch != state.partition_epoch {
        return Err(ApiError::new(
            ResponseError::InvalidUpdateVersion,
            format!(
                "partition epoch {partition_epoch} is not the current {}",
                state.partition_epoch
            ),
        ));
    }
    let distinct: BTreeSet<i32> = new_isr.iter().copied().collect();
    if !new_isr.contains(&broker_id)
        || distinct.len() != new_isr.len()
        || new_isr.iter().any(|r| !state.replicas.contains(r))
    {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            "the new ISR must hold the leader and only distinct replicas of the partition",
        ));
    }
    if let Some(r) = new_isr
        .iter()
        .find(|r| !state.isr.contains(r) && !image.is_broker_eligible(**r))
    {
        return Err(ApiError::new(
            ResponseError::IneligibleReplica,
            format!("broker {r} is fenced or shutting down and cannot join the ISR"),
        ));
    }
    // An ISR expansion that brings the last adding replica in sync finishes a reassignment
    // in the same record.
    let mut expanded = state.clone();
    expanded.isr = new_isr.to_vec();
    let change = match complete_reassignment(image, &expanded) {
        Some(mut finish) => {
            finish.isr.get_or_insert_with(|| new_isr.to_vec());
            finish
        }
        None => PartitionChangeFields {
            isr: Some(new_isr.to_vec()),
            ..PartitionChangeFields::default()
        },
    };
    let mut next = state.clone();
    change.apply_to(&mut next);
    Ok(Plan::new(
        vec![change.into_record(*topic_id, partition)],
        ControllerResponse::PartitionAltered {
            state: Box::new(next),
        },
    ))
}

/// The fields of one `PartitionChange` record (`None` = unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PartitionChangeFields {
    leader: Option<i32>,
    isr: Option<Vec<i32>>,
    replicas: Option<Vec<i32>>,
    adding_replicas: Option<Vec<i32>>,
    removing_replicas: Option<Vec<i32>>,
}

impl PartitionChangeFields {
    fn apply_to(&self, state: &mut PartitionRegistration) {
        state.apply_change(
            self.leader,
            self.isr.as_deref(),
            self.replicas.as_deref(),
            self.adding_replicas.as_deref(),
            self.removing_replicas.as_deref(),
        );
    }

    fn into_record(self, topic_id: Uuid, partition: i32) -> MetadataRecord {
        MetadataRecord::PartitionChange {
            topic_id,
            partition,
            leader: self.leader,
            isr: self.isr,
            replicas: self.replicas,
            adding_replicas: self.adding_replicas,
            removing_replicas: self.removing_replicas,
        }
    }
}

/// Plans every entry of an AlterPartitionReassignments request on its own: a refused entry
/// does not stop the others. Entries are planned against the state the earlier entries
/// leave, so naming a partition twice behaves as two requests in a row.
fn alter_partition_reassignments(
    image: &MetadataImage,
    reassignments: &[(Uuid, i32, Option<Vec<i32>>)],
) -> Plan {
    let mut planned: BTreeMap<(Uuid, i32), PartitionRegistration> = BTreeMap::new();
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(reassignments.len());
    for (topic_id, partition, target) in reassignments {
        let key = (*topic_id, *partition);
        let Some(state) = planned
            .get(&key)
            .or_else(|| image.partition(topic_id, *partition))
            .cloned()
        else {
            results.push(Some(ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("partition {topic_id}-{partition} does not exist"),
            )));
            continue;
        };
        let changes = match target {
            Some(target) => start_reassignment(image, &state, target),
            None => cancel_reassignment(image, &state),
        };
        match changes {
            Ok(changes) => {
                let mut next = state;
                for change in changes {
                    change.apply_to(&mut next);
                    records.push(change.into_record(*topic_id, *partition));
                }
                planned.insert(key, next);
                results.push(None);
            }
            Err(error) => results.push(Some(error)),
        }
    }
    Plan::new(
        records,
        ControllerResponse::ReassignmentsAltered { results },
    )
}

/// Starts moving a partition to `target` (KIP-455): replicas = target ∪ current (target
/// order first, so the preferred leader is the target's first), adding = target − current,
/// removing = current − target. A new target replaces one in progress: "current" for
/// `adding` is then the original assignment (so the same target again changes nothing),
/// while replicas an earlier target added stay assigned until this one finishes (they may
/// hold the only in-sync copy). When nothing has to be copied (a shrink or a reorder) it
/// finishes in the same batch.
fn start_reassignment(
    image: &MetadataImage,
    state: &PartitionRegistration,
    target: &[i32],
) -> Result<Vec<PartitionChangeFields>, ApiError> {
    let invalid = |message: String| ApiError::new(ResponseError::InvalidReplicaAssignment, message);
    if target.is_empty() {
        return Err(invalid("the target replica list is empty".to_string()));
    }
    if target.iter().collect::<BTreeSet<_>>().len() != target.len() {
        return Err(invalid(format!(
            "the target {target:?} lists a broker twice"
        )));
    }
    for replica in target {
        match image.brokers.get(replica) {
            None => {
                return Err(invalid(format!("broker {replica} is not registered")));
            }
            Some(broker) if broker.fenced => {
                return Err(invalid(format!("broker {replica} is fenced")));
            }
            Some(_) => {}
        }
    }
    let current = &state.replicas;
    let original = state.original_replicas();
    let mut replicas = target.to_vec();
    replicas.extend(current.iter().copied().filter(|r| !target.contains(r)));
    let adding: Vec<i32> = target
        .iter()
        .copied()
        .filter(|r| !original.contains(r))
        .collect();
    let removing: Vec<i32> = current
        .iter()
        .copied()
        .filter(|r| !target.contains(r))
        .collect();
    if replicas == state.replicas
        && adding == state.adding_replicas
        && removing == state.removing_replicas
    {
        return Ok(Vec::new());
    }
    let start = PartitionChangeFields {
        replicas: Some(replicas),
        adding_replicas: Some(adding),
        removing_replicas: Some(removing),
        ..PartitionChangeFields::default()
    };
    let mut next = state.clone();
    start.apply_to(&mut next);
    let mut changes = vec![start];
    changes.extend(complete_reassignment(image, &next));
    Ok(changes)
}

/// The change that finishes a reassignment, if it can finish now: every adding replica is
/// in the ISR, the ISR keeps at least one target replica, and a leader being removed has
/// an eligible in-sync target replica to hand over to. Otherwise it waits (the next ISR
/// change asks again). Finishing sets replicas = target, ISR = ISR ∩ target and clears
/// adding/removing; a new leader starts a new leader epoch.
fn complete_reassignment(
    image: &MetadataImage,
    state: &PartitionRegistration,
) -> Option<PartitionChangeFields> {
    if !state.is_reassigning() || state.adding_replicas.iter().any(|r| !state.isr.contains(r)) {
        return None;
    }
    narrow_to(image, state, state.target_replicas(), false)
}

/// The change that narrows a reassigning partition to `replicas` (the target when it
/// finishes, the original replicas when it is cancelled): ISR ∩ `replicas`, adding and
/// removing cleared, and a leader outside `replicas` handing over to the first eligible
/// in-sync one of them. `None` when the ISR would be empty, or when no such replica can lead
/// and `may_go_offline` is false (with it, the partition waits offline, as after fencing).
fn narrow_to(
    image: &MetadataImage,
    state: &PartitionRegistration,
    replicas: Vec<i32>,
    may_go_offline: bool,
) -> Option<PartitionChangeFields> {
    let isr: Vec<i32> = state
        .isr
        .iter()
        .copied()
        .filter(|r| replicas.contains(r))
        .collect();
    if isr.is_empty() {
        return None;
    }
    let leader = if state.leader == NO_LEADER || replicas.contains(&state.leader) {
        None
    } else {
        let successor = replicas
            .iter()
            .copied()
            .find(|r| isr.contains(r) && image.is_broker_eligible(*r));
        Some(match successor {
            Some(successor) => successor,
            None if may_go_offline => NO_LEADER,
            None => return None,
        })
    };
    Some(PartitionChangeFields {
        leader,
        isr: (isr != state.isr).then_some(isr),
        replicas: Some(replicas),
        adding_replicas: Some(Vec::new()),
        removing_replicas: Some(Vec::new()),
    })
}

/// Cancels a reassignment: back to the original replicas (current − adding), ISR ∩ those,
/// and a leader that was being added hands over to an eligible in-sync original replica
/// (none: the partition waits offline, as after fencing). Refused when no original
/// replica is in sync: then only the new replicas hold every acknowledged record.
fn cancel_reassignment(
    image: &MetadataImage,
    state: &PartitionRegistration,
) -> Result<Vec<PartitionChangeFields>, ApiError> {
    if !state.is_reassigning() {
        return Err(ApiError::new(
            ResponseError::NoReassignmentInProgress,
            "no reassignment of this partition is in progress",
        ));
    }
    let change = narrow_to(image, state, state.original_replicas(), true).ok_or_else(|| {
        ApiError::new(
            ResponseError::ReassignmentInProgress,
            "no original replica is in sync, so cancelling would lose records; \
             let the reassignment finish or start a new one",
        )
    })?;
    Ok(vec![change])
}

fn elect_preferred_leaders(
    image: &MetadataImage,
    partitions: &[(Uuid, i32)],
) -> Vec<MetadataRecord> {
    let wanted: Vec<(Uuid, i32)> = if partitions.is_empty() {
        image.partitions_matching(|_| true)
    } else {
        partitions.to_vec()
    };
    wanted
        .into_iter()
        .filter_map(|(topic_id, partition)| {
            let state = image.partition(&topic_id, partition)?;
            let preferred = *state.replicas.first()?;
            let electable = preferred != state.leader
                && state.isr.contains(&preferred)
                && image.is_broker_eligible(preferred);
            electable.then_some(MetadataRecord::PartitionChange {
                topic_id,
                partition,
                leader: Some(preferred),
                isr: None,
                replicas: None,
                adding_replicas: None,
                removing_replicas: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plan and apply a request (the request is built before `image` is borrowed mutably).
    macro_rules! run {
        ($image:ident, $request:expr) => {{
            let request = $request;
            run(&mut $image, request)
        }};
    }

    /// An image with `brokers` registered and unfenced, racks `r{id % 3}`.
    fn image_with_brokers(brokers: &[i32]) -> MetadataImage {
        let mut image = MetadataImage::default();
        let mut index = 0;
        for id in brokers {
            index += 1;
            image.apply(
                index,
                &MetadataRecord::RegisterBroker {
                    broker_id: *id,
                    incarnation_id: Uuid::from_u128(*id as u128),
                    endpoints: vec![],
                    rack: Some(format!("r{}", id % 3)),
                },
            );
            let epoch = index as i64;
            index += 1;
            image.apply(
                index,
                &MetadataRecord::UnfenceBroker {
                    broker_id: *id,
                    broker_epoch: epoch,
                },
            );
        }
        image.last_applied_index = index;
        image
    }

    fn apply_plan(image: &mut MetadataImage, plan: &Plan) {
        for record in &plan.records {
            image.last_applied_index += 1;
            let index = image.last_applied_index;
            image.apply(index, record);
        }
    }

    fn run(
        image: &mut MetadataImage,
        request: ControllerRequest,
    ) -> Result<ControllerResponse, ApiError> {
        let plan = plan(
            image,
            &ControlConfig::default(),
            &request,
            Uuid::from_u128(1000 + image.last_applied_index as u128),
            0,
        )?;
        apply_plan(image, &plan);
        Ok(plan.response)
    }

    fn create(name: &str, partitions: i32, rf: i16) -> ControllerRequest {
        ControllerRequest::CreateTopic {
            name: name.into(),
            num_partitions: partitions,
            replication_factor: rf,
            assignments: vec![],
            configs: BTreeMap::new(),
        }
    }

    fn epoch(image: &MetadataImage, broker: i32) -> i64 {
        image.brokers[&broker].broker_epoch
    }

    /// A heartbeat of `broker` at its current epoch.
    fn heartbeat_request(
        image: &MetadataImage,
        broker: i32,
        want_shutdown: bool,
    ) -> ControllerRequest {
        ControllerRequest::BrokerHeartbeat {
            broker_id: broker,
            broker_epoch: epoch(image, broker),
            want_fence: false,
            want_shutdown,
        }
    }

    #[test]
    fn create_topic_places_replicas_on_unfenced_brokers_and_validates() {
        let mut image = image_with_brokers(&[1, 2, 3]);
        let ControllerResponse::TopicCreated { topic_id } = run!(image, create("t", 3, 3)).unwrap()
        else {
            panic!("expected TopicCreated")
        };
        let topic = &image.topics[&topic_id];
        assert_eq!(topic.partitions.len(), 3);
        let leaders: BTreeSet<i32> = topic.partitions.iter().map(|p| p.leader).collect();
        assert_eq!(leaders.len(), 3, "leaders spread over brokers");
        for p in &topic.partitions {
            assert_eq!(p.isr, p.replicas);
            assert_eq!(p.leader, p.replicas[0]);
        }
        let err = run!(image, create("t", 1, 1)).unwrap_err();
        assert_eq!(err.kind(), ResponseError::TopicAlreadyExists);
        let err = run!(image, create("u", 1, 4)).unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidReplicationFactor);
        let err = run!(image, create("bad/name", 1, 1)).unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidTopicException);
        // A fenced broker receives no replicas.
        let records = fence_broker(&image, 3);
        for r in &records {
            image.apply(99, r);
        }
        let err = run!(image, create("v", 1, 3)).unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidReplicationFactor);
    }

    #[test]
    fn manual_assignment_is_validated() {
        let mut image = image_with_brokers(&[1, 2]);
        let request = |assignments: Vec<Vec<i32>>| ControllerRequest::CreateTopic {
            name: "m".into(),
            num_partitions: -1,
            replication_factor: -1,
            assignments,
            configs: BTreeMap::new(),
        };
        for bad in [
            vec![vec![1, 1]],
            vec![vec![1, 9]],
            vec![vec![1, 2], vec![1]],
        ] {
            let err = run!(image, request(bad)).unwrap_err();
            assert_eq!(err.kind(), ResponseError::InvalidReplicaAssignment);
        }
        run!(image, request(vec![vec![2, 1], vec![1, 2]])).unwrap();
        let topic = image.topic_by_name("m").unwrap();
        assert_eq!(topic.partitions[0].leader, 2);
        assert_eq!(topic.partitions[1].leader, 1);
    }

    #[test]
    fn fencing_moves_leadership_to_another_isr_member_with_a_new_epoch() {
        let mut image = image_with_brokers(&[1, 2, 3]);
        run!(image, create("t", 3, 3)).unwrap();
        let topic_id = image.topic_by_name("t").unwrap().topic_id;
        let led_before = image.partitions_led_by(1);
        assert_eq!(led_before.len(), 1);
        let records = fence_broker(&image, 1);
        for r in &records {
            image.apply(50, r);
        }
        assert!(image.brokers[&1].fenced);
        assert!(image.partitions_led_by(1).is_empty());
        for p in &image.topics[&topic_id].partitions {
            assert!(!p.isr.contains(&1), "fenced broker leaves the ISR: {p:?}");
            assert_ne!(p.leader, NO_LEADER);
        }
        let (_, moved) = led_before[0];
        let state = image.partition(&topic_id, moved).unwrap();
        assert_eq!(state.leader_epoch, 1);
        // Fencing twice changes nothing.
        assert!(fence_broker(&image, 1).is_empty());
    }

    #[test]
    fn last_isr_member_fenced_leaves_the_partition_offline_unless_unclean_allowed() {
        let mut image = image_with_brokers(&[1, 2]);
        run!(
            image,
            ControllerRequest::CreateTopic {
                name: "clean".into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: vec![vec![1, 2]],
                configs: BTreeMap::new(),
            }
        )
        .unwrap();
        run!(
            image,
            ControllerRequest::CreateTopic {
                name: "unclean".into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: vec![vec![1, 2]],
                configs: BTreeMap::from([(
                    UNCLEAN_LEADER_ELECTION_ENABLE.to_string(),
                    "true".to_string()
                )]),
            }
        )
        .unwrap();
        let clean = image.topic_by_name("clean").unwrap().topic_id;
        let unclean = image.topic_by_name("unclean").unwrap().topic_id;
        // The follower 2 falls out of both ISRs (AlterPartition by the leader).
        for topic_id in [clean, unclean] {
            run!(
                image,
                ControllerRequest::AlterPartition {
                    broker_id: 1,
                    broker_epoch: epoch(&image, 1),
                    topic_id,
                    partition: 0,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    new_isr: vec![1],
                }
            )
            .unwrap();
        }
        for r in fence_broker(&image, 1) {
            image.apply(60, &r);
        }
        let c = image.partition(&clean, 0).unwrap();
        assert_eq!(c.leader, NO_LEADER, "no in-sync replica: offline");
        assert_eq!(c.isr, vec![1], "the last in-sync replica is remembered");
        let u = image.partition(&unclean, 0).unwrap();
        assert_eq!(u.leader, 2, "unclean election picks an out-of-sync replica");
        assert_eq!(u.isr, vec![2]);
        // Broker 1 comes back (new heartbeat after fencing): it leads its offline partition.
        run!(image, heartbeat_request(&image, 1, false)).unwrap();
        assert!(!image.brokers[&1].fenced);
        let c = image.partition(&clean, 0).unwrap();
        assert_eq!((c.leader, c.leader_epoch), (1, 2));
    }

    #[test]
    fn alter_partition_checks_epochs_and_eligibility() {
        let mut image = image_with_brokers(&[1, 2, 3]);
        run!(
            image,
            ControllerRequest::CreateTopic {
                name: "t".into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: vec![vec![1, 2, 3]],
                configs: BTreeMap::new(),
            }
        )
        .unwrap();
        let topic_id = image.topic_by_name("t").unwrap().topic_id;
        let alter =
            |image: &MetadataImage, broker: i32, leader_epoch, partition_epoch, isr: Vec<i32>| {
                ControllerRequest::AlterPartition {
                    broker_id: broker,
                    broker_epoch: epoch(image, broker),
                    topic_id,
                    partition: 0,
                    leader_epoch,
                    partition_epoch,
                    new_isr: isr,
                }
            };
        // Shrink.
        let ControllerResponse::PartitionAltered { state } =
            run!(image, alter(&image, 1, 0, 0, vec![1, 2])).unwrap()
        else {
            panic!()
        };
        assert_eq!((state.isr.clone(), state.partition_epoch), (vec![1, 2], 1));
        assert_eq!(image.partition(&topic_id, 0).unwrap(), &*state);
        // Stale partition epoch.
        let err = run!(image, alter(&image, 1, 0, 0, vec![1])).unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidUpdateVersion);
        // Not the leader.
        let err = run!(image, alter(&image, 2, 0, 1, vec![2])).unwrap_err();
        assert_eq!(err.kind(), ResponseError::NotLeaderOrFollower);
        // ISR without the leader, or with a non-replica.
        let err = run!(image, alter(&image, 1, 0, 1, vec![2])).unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidRequest);
        let err = run!(image, alter(&image, 1, 0, 1, vec![1, 9])).unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidRequest);
        // Stale broker epoch.
        let mut request = alter(&image, 1, 0, 1, vec![1]);
        if let ControllerRequest::AlterPartition { broker_epoch, .. } = &mut request {
            *broker_epoch -= 1;
        }
        assert_eq!(
            run!(image, request).unwrap_err().kind(),
            ResponseError::StaleBrokerEpoch
        );
        // A fenced broker may not rejoin.
        for r in fence_broker(&image, 3) {
            image.apply(70, &r);
        }
        let err = run!(image, alter(&image, 1, 0, 1, vec![1, 2, 3])).unwrap_err();
        assert_eq!(err.kind(), ResponseError::IneligibleReplica);
        // Leadership moves to 2: the old leader's epoch is fenced.
        for r in fence_broker(&image, 1) {
            image.apply(71, &r);
        }
        assert_eq!(image.partition(&topic_id, 0).unwrap().leader, 2);
        let err = run!(image, alter(&image, 1, 0, 2, vec![1])).unwrap_err();
        assert_eq!(err.kind(), ResponseError::FencedLeaderEpoch);
    }

    #[test]
    fn heartbeat_unfences_and_controlled_shutdown_moves_leaders() {
        let mut image = image_with_brokers(&[1, 2]);
        run!(
            image,
            ControllerRequest::CreateTopic {
                name: "t".into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: vec![vec![1, 2]],
                configs: BTreeMap::new(),
            }
        )
        .unwrap();
        let topic_id = image.topic_by_name("t").unwrap().topic_id;
        let response = run!(image, heartbeat_request(&image, 1, true)).unwrap();
        assert_eq!(
            response,
            ControllerResponse::Heartbeat {
                is_fenced: false,
                should_shut_down: false
            }
        );
        assert_eq!(image.partition(&topic_id, 0).unwrap().leader, 2);
        // Next heartbeat: nothing left to move, the broker may exit.
        let response = run!(image, heartbeat_request(&image, 1, true)).unwrap();
        assert_eq!(
            response,
            ControllerResponse::Heartbeat {
                is_fenced: false,
                should_shut_down: true
            }
        );
        // Stale epoch after re-registration.
        let response = run!(
            image,
            ControllerRequest::RegisterBroker {
                broker_id: 1,
                incarnation_id: Uuid::from_u128(77),
                endpoints: vec![],
                rack: None,
            }
        )
        .unwrap();
        assert!(matches!(
            response,
            ControllerResponse::BrokerRegistered { .. }
        ));
        assert!(image.brokers[&1].fenced);
        let err = run!(
            image,
            ControllerRequest::BrokerHeartbeat {
                broker_id: 1,
                broker_epoch: 3,
                want_fence: false,
                want_shutdown: false,
            }
        )
        .unwrap_err();
        assert_eq!(err.kind(), ResponseError::StaleBrokerEpoch);
    }

    #[test]
    fn preferred_leader_election_moves_leaders_back() {
        let mut image = image_with_brokers(&[1, 2, 3]);
        run!(image, create("t", 3, 2)).unwrap();
        let topic_id = image.topic_by_name("t").unwrap().topic_id;
        for r in fence_broker(&image, 1) {
            image.apply(80, &r);
        }
        // Broker 1 returns; in a real cluster it rejoins the ISR via AlterPartition.
        run!(image, heartbeat_request(&image, 1, false)).unwrap();
        for (index, p) in image.topics[&topic_id]
            .partitions
            .clone()
            .iter()
            .enumerate()
        {
            if p.replicas.contains(&1) && !p.isr.contains(&1) {
                let mut isr = p.isr.clone();
                isr.push(1);
                run!(
                    image,
                    ControllerRequest::AlterPartition {
                        broker_id: p.leader,
                        broker_epoch: epoch(&image, p.leader),
                        topic_id,
                        partition: index as i32,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                        new_isr: isr,
                    }
                )
                .unwrap();
            }
        }
        let response = run!(
            image,
            ControllerRequest::ElectPreferredLeaders { partitions: vec![] }
        )
        .unwrap();
        assert!(matches!(response, ControllerResponse::LeadersElected { count } if count >= 1));
        for p in &image.topics[&topic_id].partitions {
            assert_eq!(p.leader, p.replicas[0]);
        }
    }

    #[test]
    fn the_first_cluster_id_claimed_is_the_clusters() {
        let mut image = MetadataImage::default();
        let claim = |id: &str| ControllerRequest::ClaimClusterId {
            cluster_id: id.to_string(),
        };
        let answer = |id: &str| ControllerResponse::ClusterId {
            cluster_id: id.to_string(),
        };
        assert_eq!(run(&mut image, claim("first")).unwrap(), answer("first"));
        assert_eq!(run(&mut image, claim("second")).unwrap(), answer("first"));
        assert_eq!(image.cluster_id.as_deref(), Some("first"));
        assert_eq!(
            run(&mut image, claim("")).unwrap_err().kind(),
            ResponseError::InvalidRequest
        );
    }

    #[test]
    fn imported_topic_keeps_its_id_and_producer_floor_only_rises() {
        let mut image = image_with_brokers(&[1]);
        let topic_id = Uuid::from_u128(0xabc);
        let response = run!(
            image,
            ControllerRequest::ImportTopic {
                name: "old".into(),
                topic_id,
                assignments: vec![vec![1], vec![1]],
                configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
            }
        )
        .unwrap();
        assert_eq!(response, ControllerResponse::TopicCreated { topic_id });
        assert_eq!(image.topics[&topic_id].partitions.len(), 2);
        assert_eq!(image.topic_config("old", "retention.ms"), Some("1000"));
        run!(
            image,
            ControllerRequest::RaiseProducerIdFloor {
                next_producer_id: 5000
            }
        )
        .unwrap();
        run!(
            image,
            ControllerRequest::RaiseProducerIdFloor {
                next_producer_id: 10
            }
        )
        .unwrap();
        assert_eq!(image.next_producer_id, 5000);
    }

    #[test]
    fn producer_id_blocks_do_not_overlap() {
        let mut image = image_with_brokers(&[1, 2]);
        let mut firsts = Vec::new();
        for broker in [1, 2, 1] {
            let response = run!(
                image,
                ControllerRequest::AllocateProducerIds {
                    broker_id: broker,
                    broker_epoch: epoch(&image, broker),
                }
            )
            .unwrap();
            let ControllerResponse::ProducerIds {
                first_producer_id,
                count,
            } = response
            else {
                panic!()
            };
            assert_eq!(count, 1000);
            firsts.push(first_producer_id);
        }
        assert_eq!(firsts, vec![0, 1000, 2000]);
    }

    #[test]
    fn create_partitions_and_configs_need_an_existing_topic() {
        let mut image = image_with_brokers(&[1, 2, 3]);
        run!(image, create("t", 2, 2)).unwrap();
        run!(
            image,
            ControllerRequest::CreatePartitions {
                name: "t".into(),
                total_count: 5
            }
        )
        .unwrap();
        assert_eq!(image.topic_by_name("t").unwrap().partitions.len(), 5);
        let err = run!(
            image,
            ControllerRequest::CreatePartitions {
                name: "t".into(),
                total_count: 5
            }
        )
        .unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidPartitions);
        let err = run!(
            image,
            ControllerRequest::CreatePartitions {
                name: "x".into(),
                total_count: 5
            }
        )
        .unwrap_err();
        assert_eq!(err.kind(), ResponseError::UnknownTopicOrPartition);
        let err = run!(
            image,
            ControllerRequest::AlterConfigs {
                resource: ConfigResource::Topic("x".into()),
                entries: BTreeMap::from([("retention.ms".into(), Some("1".into()))]),
            }
        )
        .unwrap_err();
        assert_eq!(err.kind(), ResponseError::UnknownTopicOrPartition);
        run!(image, ControllerRequest::DeleteTopic { name: "t".into() }).unwrap();
        assert!(image.topics.is_empty());
    }

    /// Brokers 1..=4 and topic "t" with one partition on `replicas` (leader first).
    fn reassignment_fixture(replicas: Vec<i32>) -> (MetadataImage, Uuid) {
        let mut image = image_with_brokers(&[1, 2, 3, 4]);
        run!(
            image,
            ControllerRequest::CreateTopic {
                name: "t".into(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: vec![replicas],
                configs: BTreeMap::new(),
            }
        )
        .unwrap();
        let topic_id = image.topic_by_name("t").unwrap().topic_id;
        (image, topic_id)
    }

    fn reassign(
        image: &mut MetadataImage,
        entries: Vec<(Uuid, i32, Option<Vec<i32>>)>,
    ) -> Vec<Option<ResponseError>> {
        let request = ControllerRequest::AlterPartitionReassignments {
            reassignments: entries,
        };
        let ControllerResponse::ReassignmentsAltered { results } = run(image, request).unwrap()
        else {
            panic!("expected ReassignmentsAltered")
        };
        results.into_iter().map(|r| r.map(|e| e.kind())).collect()
    }

    /// The current leader of partition 0 asks for `new_isr`.
    fn leader_alters_isr(
        image: &mut MetadataImage,
        topic_id: Uuid,
        new_isr: Vec<i32>,
    ) -> PartitionRegistration {
        let state = image.partition(&topic_id, 0).unwrap().clone();
        let request = ControllerRequest::AlterPartition {
            broker_id: state.leader,
            broker_epoch: epoch(image, state.leader),
            topic_id,
            partition: 0,
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            new_isr,
        };
        let ControllerResponse::PartitionAltered { state: next } = run(image, request).unwrap()
        else {
            panic!("expected PartitionAltered")
        };
        assert_eq!(image.partition(&topic_id, 0).unwrap(), &*next);
        *next
    }

    #[test]
    fn reassignment_starts_with_the_union_and_the_adding_and_removing_sets() {
        let (mut image, topic_id) = reassignment_fixture(vec![1, 2]);
        let results = reassign(&mut image, vec![(topic_id, 0, Some(vec![3, 4]))]);
        assert_eq!(results, vec![None]);
        let p = image.partition(&topic_id, 0).unwrap();
        assert_eq!(p.replicas, vec![3, 4, 1, 2]);
        assert_eq!(p.adding_replicas, vec![3, 4]);
        assert_eq!(p.removing_replicas, vec![1, 2]);
        assert_eq!(
            (p.isr.clone(), p.leader, p.leader_epoch),
            (vec![1, 2], 1, 0)
        );
        assert_eq!(p.target_replicas(), vec![3, 4]);
        assert_eq!(p.original_replicas(), vec![1, 2]);
        assert_eq!(image.reassigning_partitions(), vec![(topic_id, 0)]);
        // Partitions added meanwhile get the target's replication factor, not the union's.
        run!(
            image,
            ControllerRequest::CreatePartitions {
                name: "t".into(),
                total_count: 2,
            }
        )
        .unwrap();
        assert_eq!(image.partition(&topic_id, 1).unwrap().replicas.len(), 2);
        // The same target again changes nothing.
        let before = image.partition(&topic_id, 0).unwrap().clone();
        assert_eq!(
            reassign(&mut image, vec![(topic_id, 0, Some(vec![3, 4]))]),
            vec![None]
        );
        assert_eq!(image.partition(&topic_id, 0).unwrap(), &before);
    }

    #[test]
    fn reassignment_finishes_when_every_adding_replica_is_in_sync_and_moves_the_leader() {
        let (mut image, topic_id) = reassignment_fixture(vec![1, 2]);
        reassign(&mut image, vec![(topic_id, 0, Some(vec![3, 4]))]);
        // One of two adding replicas in sync: still moving.
        let state = leader_alters_isr(&mut image, topic_id, vec![1, 2, 3]);
        assert_eq!(state.isr, vec![1, 2, 3]);
        assert!(state.is_reassigning());
        // The last one: finished in the same record, leadership to the first target.
        let state = leader_alters_isr(&mut image, topic_id, vec![1, 2, 3, 4]);
        assert!(!state.is_reassigning());
        assert_eq!(state.replicas, vec![3, 4]);
        assert_eq!(state.isr, vec![3, 4]);
        assert_eq!((state.leader, state.leader_epoch), (3, 1));
        assert!(image.reassigning_partitions().is_empty());
    }

    #[test]
    fn reassignment_keeping_the_leader_keeps_its_epoch() {
        let (mut image, topic_id) = reassignment_fixture(vec![1, 2]);
        reassign(&mut image, vec![(topic_id, 0, Some(vec![1, 3]))]);
        let p = image.partition(&topic_id, 0).unwrap();
        assert_eq!(
            (p.replicas.clone(), p.adding_replicas.clone()),
            (vec![1, 3, 2], vec![3])
        );
        let state = leader_alters_isr(&mut image, topic_id, vec![1, 2, 3]);
        assert_eq!(
            (state.replicas, state.isr, state.leader, state.leader_epoch),
            (vec![1, 3], vec![1, 3], 1, 0)
        );
    }

    #[test]
    fn a_shrink_or_reorder_finishes_at_once() {
        let (mut image, topic_id) = reassignment_fixture(vec![1, 2, 3]);
        assert_eq!(
            reassign(&mut image, vec![(topic_id, 0, Some(vec![2, 3]))]),
            vec![None]
        );
        let p = image.partition(&topic_id, 0).unwrap();
        assert!(!p.is_reassigning());
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader, p.leader_epoch),
            (vec![2, 3], vec![2, 3], 2, 1)
        );
        reassign(&mut image, vec![(topic_id, 0, Some(vec![3, 2]))]);
        let p = image.partition(&topic_id, 0).unwrap();
        assert_eq!((p.replicas.clone(), p.leader), (vec![3, 2], 2));
        assert!(!p.is_reassigning());
    }

    #[test]
    fn finishing_waits_while_no_target_replica_is_in_sync() {
        let (mut image, topic_id) = reassignment_fixture(vec![1, 2]);
        leader_alters_isr(&mut image, topic_id, vec![1]);
        // Nothing to copy, but the only target replica is out of sync: wait.
        reassign(&mut image, vec![(topic_id, 0, Some(vec![2]))]);
        let p = image.partition(&topic_id, 0).unwrap();
        assert!(p.is_reassigning());
        assert_eq!((p.replicas.clone(), p.isr.clone()), (vec![2, 1], vec![1]));
        // It catches up: finished, leadership handed over.
        let state = leader_alters_isr(&mut image, topic_id, vec![1, 2]);
        assert_eq!(
            (state.replicas, state.isr, state.leader),
            (vec![2], vec![2], 2)
        );
        assert!(!image.partition(&topic_id, 0).unwrap().is_reassigning());
    }

    #[test]
    fn finishing_waits_while_no_eligible_target_replica_can_lead() {
        let mut image = image_with_brokers(&[1, 2, 3]);
        // 3 is in sync but shutting down (its ISR exit not yet applied): the leader, which
        // is being removed, may not hand over to it yet.
        image.apply(
            90,
            &MetadataRecord::BrokerShuttingDown {
                broker_id: 3,
                broker_epoch: epoch(&image, 3),
            },
        );
        let state = PartitionRegistration {
            replicas: vec![3, 1],
            isr: vec![1, 3],
            leader: 1,
            leader_epoch: 0,
            partition_epoch: 0,
            adding_replicas: vec![3],
            removing_replicas: vec![1],
        };
        assert_eq!(complete_reassignment(&image, &state), None);
        // Eligible again: it finishes.
        image.apply(
            91,
            &MetadataRecord::UnfenceBroker {
                broker_id: 3,
                broker_epoch: epoch(&image, 3),
            },
        );
        let finish = complete_reassignment(&image, &state).unwrap();
        assert_eq!(
            (finish.leader, finish.isr, finish.replicas),
            (Some(3), Some(vec![3]), Some(vec![3]))
        );
    }

    #[test]
    fn reassignment_entries_are_validated_one_by_one() {
        let (mut image, topic_id) = reassignment_fixture(vec![1, 2]);
        for r in fence_broker(&image, 4) {
            image.apply(80, &r);
        }
        let results = reassign(
            &mut image,
            vec![
                (Uuid::from_u128(7), 0, Some(vec![1])),
                (topic_id, 5, Some(vec![1])),
                (topic_id, -1, None),
                (topic_id, 0, Some(vec![])),
                (topic_id, 0, Some(vec![3, 3])),
                (topic_id, 0, Some(vec![3, 9])),
                (topic_id, 0, Some(vec![3, 4])),
                (topic_id, 0, None),
                (topic_id, 0, Some(vec![2, 3])),
            ],
        );
        use ResponseError::*;
        assert_eq!(
            results,
            vec![
                Some(UnknownTopicOrPartition),
                Some(UnknownTopicOrPartition),
                Some(UnknownTopicOrPartition),
                Some(InvalidReplicaAssignment),
                Some(InvalidReplicaAssignment),
                Some(InvalidReplicaAssignment),
                Some(InvalidReplicaAssignment),
                Some(NoReassignmentInProgress),
                None,
            ]
        );
        let p = image.partition(&topic_id, 0).unwrap();
        assert_eq!(
            (p.replicas.clone(), p.adding_replicas.clone()),
            (vec![2, 3, 1], vec![3])
        );
    }

    #[test]
    fn a_new_target_replaces_the_one_in_progress_and_entries_apply_in_order() {
        let (mut image, topic_id) = reassignment_fixture(vec![1, 2]);
        // Start, then in the same request go back to [1, 2]: the second entry sees the
        // first and finishes at once (nothing to copy).
        let results = reassign(
            &mut image,
            vec![
                (topic_id, 0, Some(vec![3, 4])),
                (topic_id, 0, Some(vec![1, 2])),
            ],
        );
        assert_eq!(results, vec![None, None]);
        let p = image.partition(&topic_id, 0).unwrap();
        assert!(!p.is_reassigning());
        assert_eq!(
            (p.replicas.clone(), p.isr.clone()),
            (vec![1, 2], vec![1, 2])
        );
        // A replacement keeps the replicas the first one added.
        reassign(&mut image, vec![(topic_id, 0, Some(vec![3, 4]))]);
        reassign(&mut image, vec![(topic_id, 0, Some(vec![1, 3]))]);
        let p = image.partition(&topic_id, 0).unwrap();
        assert_eq!(p.replicas, vec![1, 3, 4, 2]);
        assert_eq!(p.adding_replicas, vec![3]);
        assert_eq!(p.removing_replicas, vec![4, 2]);
        // Finished once 3 is in sync; 4 goes although it never caught up.
        let state = leader_alters_isr(&mut image, topic_id, vec![1, 2, 3]);
        assert_eq!(
            (state.replicas, state.isr, state.leader),
            (vec![1, 3], vec![1, 3], 1)
        );
    }

    #[test]
    fn cancel_goes_back_to_the_original_replicas() {
        let (mut image, topic_id) = reassignment_fixture(vec![1, 2]);
        reassign(&mut image, vec![(topic_id, 0, Some(vec![3, 4]))]);
        leader_alters_isr(&mut image, topic_id, vec![1, 2, 3]);
        assert_eq!(reassign(&mut image, vec![(topic_id, 0, None)]), vec![None]);
        let p = image.partition(&topic_id, 0).unwrap();
        assert!(!p.is_reassigning());
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader, p.leader_epoch),
            (vec![1, 2], vec![1, 2], 1, 0)
        );
        assert_eq!(
            reassign(&mut image, vec![(topic_id, 0, None)]),
            vec![Some(ResponseError::NoReassignmentInProgress)]
        );
    }

    #[test]
    fn cancel_moves_leadership_off_an_adding_replica_or_refuses_to_lose_records() {
        let (mut image, topic_id) = reassignment_fixture(vec![1, 2]);
        reassign(&mut image, vec![(topic_id, 0, Some(vec![3, 4]))]);
        leader_alters_isr(&mut image, topic_id, vec![1, 2, 3]);
        // The leader dies: 3 (first in replicas, in sync) takes over.
        for r in fence_broker(&image, 1) {
            image.apply(80, &r);
        }
        let p = image.partition(&topic_id, 0).unwrap().clone();
        assert_eq!((p.leader, p.isr.clone()), (3, vec![2, 3]));
        let mut cancelled = image.clone();
        assert_eq!(
            reassign(&mut cancelled, vec![(topic_id, 0, None)]),
            vec![None]
        );
        let c = cancelled.partition(&topic_id, 0).unwrap();
        assert_eq!(
            (c.replicas.clone(), c.isr.clone(), c.leader),
            (vec![1, 2], vec![2], 2)
        );
        assert_eq!(c.leader_epoch, p.leader_epoch + 1);
        // With 2 gone too only the new replica 3 holds the records: no cancel.
        for r in fence_broker(&image, 2) {
            image.apply(81, &r);
        }
        assert_eq!(image.partition(&topic_id, 0).unwrap().isr, vec![3]);
        assert_eq!(
            reassign(&mut image, vec![(topic_id, 0, None)]),
            vec![Some(ResponseError::ReassignmentInProgress)]
        );
    }
}
