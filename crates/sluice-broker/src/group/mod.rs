//! The group coordinator (Kafka's classic consumer-group protocol) and committed offsets.
//!
//! - [`state`]: the synchronous state machine of one group (membership, rebalances,
//!   timers with `now` passed in), unit-tested without sockets or clocks.
//! - this module: the thin async layer that owns every group behind one lock, runs
//!   the timers (session expiry, rebalance timeout, initial rebalance delay, offset
//!   retention) and makes offsets durable.
//! - [`store`]: the record layout of `__consumer_offsets` (Kafka's own).
//!
//! Durability: offsets and group metadata are appended as RecordBatch v2 to the
//! internal topic `__consumer_offsets` (partition = Java `String.hashCode` of the group,
//! as Kafka), through the ordinary partition path; an OffsetCommit is answered only
//! once its batch is replicated and fsynced (the acks=all wait).
//!
//! Coordinator failover: the coordinator of a group is the leader of the group's
//! `__consumer_offsets` partition. Every tick the coordinator compares the offsets
//! partitions this broker leads with those it has loaded: a partition it newly leads is
//! replayed from its log start to its log end (offsets come back, groups come back Empty:
//! members rejoin, as in Kafka once their sessions expire), one it no longer leads is
//! unloaded. Requests for a group answer NOT_COORDINATOR where its partition is led
//! elsewhere and COORDINATOR_LOAD_IN_PROGRESS while it is being loaded here.
//!
//! The topic is compacted (`cleanup.policy=compact`, as Kafka): deletions are tombstones,
//! and replay reads across the offset gaps the cleaner leaves.
//!
//! Not yet: transactional offset commits.

pub mod state;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use parking_lot::Mutex;

use crate::api::now_ms;
use crate::config::BrokerConfig;
use crate::partition::Partition;
use crate::replica_manager::{NewTopic, ReplicaManager, TopicError};
pub use state::{
    CommittedOffset, Group, GroupLimits, GroupState, JoinOutcome, JoinRequest, JoinResult,
    SyncOutcome, SyncResult,
};
use store::{StoredGroup, StoredMember, StoredOffset, StoredRecord};

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// How often the timers of every group are checked.
const TICK_MS: u64 = 100;

/// Committed offsets of one topic: (partition, offset if committed).
pub type TopicOffsets = (String, Vec<(i32, Option<CommittedOffset>)>);
/// Error codes of one topic: (partition, code).
pub type TopicCodes = (String, Vec<(i32, i16)>);

/// One offset to commit.
#[derive(Debug, Clone)]
pub struct OffsetToCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    /// member id, instance id, client id, client host, metadata, assignment.
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

pub struct GroupCoordinator {
    replicas: Arc<ReplicaManager>,
    limits: GroupLimits,
    max_groups: usize,
    metadata_max_bytes: usize,
    retention_ms: i64,
    retention_check_ms: u64,
    /// Partitions of `__consumer_offsets`.
    partitions: AtomicI32,
    groups: Mutex<HashMap<String, Group>>,
    /// Offsets partitions whose groups are loaded, with the leader epoch they were
    /// loaded under (a new epoch, even of this broker again, reloads).
    loaded: Mutex<HashMap<i32, i32>>,
}

impl GroupCoordinator {
    /// Creates `__consumer_offsets` if missing (once enough brokers are up: see
    /// [`GroupCoordinator::ensure_offsets_topic`]) and loads the groups of the offsets
    /// partitions this broker leads.
    pub fn open(
        replicas: Arc<ReplicaManager>,
        config: &BrokerConfig,
    ) -> Result<Arc<GroupCoordinator>, TopicError> {
        if replicas.topic(OFFSETS_TOPIC).is_some() {
            // A topic created by an older version was not compacted; Kafka's offsets topic is.
            replicas.ensure_topic_config(OFFSETS_TOPIC, "cleanup.policy", "compact")?;
        }
        let partitions = replicas
            .topic(OFFSETS_TOPIC)
            .map(|t| t.record.partitions)
            .unwrap_or(config.offsets_topic_num_partitions());
        let coordinator = GroupCoordinator {
            replicas,
            limits: GroupLimits {
                min_session_timeout_ms: config.group_min_session_timeout_ms(),
                max_session_timeout_ms: config.group_max_session_timeout_ms(),
                initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms(),
                max_size: config.group_max_size(),
            },
            max_groups: config.group_max_count(),
            metadata_max_bytes: config.offset_metadata_max_bytes(),
            retention_ms: config.offsets_retention_ms(),
            retention_check_ms: config.offsets_retention_check_interval_ms(),
            partitions: AtomicI32::new(partitions),
            groups: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
        };
        coordinator.ensure_offsets_topic(config)?;
        coordinator.follow_leadership()?;
        Ok(Arc::new(coordinator))
    }

    /// Partitions of `__consumer_offsets` (fixed once it exists).
    fn partitions(&self) -> i32 {
        self.partitions.load(Ordering::Relaxed)
    }

    /// Creates `__consumer_offsets` when it is missing and enough brokers can take its
    /// replicas: `offsets.topic.replication.factor`, capped at the number of controller
    /// voters (a single node needs no configuration). Until then FindCoordinator answers
    /// COORDINATOR_NOT_AVAILABLE, as Kafka does; a cluster whose brokers start together
    /// would otherwise create it with the one or two brokers that happened to be up first.
    fn ensure_offsets_topic(&self, config: &BrokerConfig) -> Result<(), TopicError> {
        if let Some(topic) = self.replicas.topic(OFFSETS_TOPIC) {
            self.partitions
                .store(topic.record.partitions, Ordering::Relaxed);
            return Ok(());
        }
        let voters = crate::cluster::controller_config(config)
            .map(|c| c.voters.len())
            .unwrap_or(1);
        let wanted = config.offsets_topic_replication_factor();
        let replication_factor = wanted.min(i16::try_from(voters).unwrap_or(i16::MAX)).max(1);
        let eligible = self.replicas.eligible_broker_count();
        if eligible < usize::try_from(replication_factor).unwrap_or(usize::MAX) {
            tracing::info!(
                replication_factor,
                eligible,
                "waiting for enough brokers to create __consumer_offsets"
            );
            return Ok(());
        }
        let segment_bytes = config.offsets_topic_segment_bytes().to_string();
        let created = self.replicas.create_topic_blocking(
            &NewTopic {
                name: OFFSETS_TOPIC,
                partitions: config.offsets_topic_num_partitions(),
                replication_factor,
                configs: vec![
                    ("segment.bytes", segment_bytes.as_str()),
                    ("cleanup.policy", "compact"),
                ],
            },
            false,
        );
        // In a cluster another broker may have created it first.
        match created {
            Ok(_) | Err(TopicError::AlreadyExists(_)) => {}
            Err(error) => return Err(error),
        }
        if let Some(topic) = self.replicas.topic(OFFSETS_TOPIC) {
            self.partitions
                .store(topic.record.partitions, Ordering::Relaxed);
        }
        Ok(())
    }

    /// NOT_COORDINATOR unless this broker leads the group's offsets partition,
    /// COORDINATOR_LOAD_IN_PROGRESS until its groups are loaded under the current epoch.
    pub fn check_coordinator(&self, group_id: &str) -> Result<(), i16> {
        let index = store::partition_for(group_id, self.partitions());
        let partition = self
            .replicas
            .partition(OFFSETS_TOPIC, index)
            .filter(|partition| partition.is_leader())
            .ok_or(ResponseError::NotCoordinator.code())?;
        if self.loaded.lock().get(&index) != Some(&partition.leader_epoch()) {
            return Err(ResponseError::CoordinatorLoadInProgress.code());
        }
        Ok(())
    }

    /// Loads the groups of offsets partitions this broker now leads and unloads those of
    /// partitions it no longer leads.
    fn follow_leadership(&self) -> Result<(), TopicError> {
        for index in 0..self.partitions() {
            let leading = self
                .replicas
                .partition(OFFSETS_TOPIC, index)
                .filter(|partition| partition.is_leader());
            let loaded_epoch = self.loaded.lock().get(&index).copied();
            match leading {
                Some(partition) if loaded_epoch != Some(partition.leader_epoch()) => {
                    let epoch = partition.leader_epoch();
                    self.load_partition(&partition)?;
                    self.loaded.lock().insert(index, epoch);
                }
                Some(_) => {}
                None if loaded_epoch.is_some() => {
                    self.loaded.lock().remove(&index);
                    let mut groups = self.groups.lock();
                    let before = groups.len();
                    groups.retain(|id, _| store::partition_for(id, self.partitions()) != index);
                    tracing::info!(partition = index, groups = before - groups.len(), "no longer the coordinator of an offsets partition; its groups are unloaded");
                }
                None => {}
            }
        }
        Ok(())
    }

    fn offsets_partition(&self, group: &str) -> Option<Arc<Partition>> {
        self.replicas.partition(
            OFFSETS_TOPIC,
            store::partition_for(group, self.partitions()),
        )
    }

    /// Replays one partition of the offsets topic, from its log start to its log end (the
    /// leader's log is the truth), replacing what was loaded of its groups.
    fn load_partition(&self, partition: &Partition) -> Result<(), TopicError> {
        let index = partition.index;
        let mut groups = self.groups.lock();
        groups.retain(|id, _| store::partition_for(id, self.partitions()) != index);
        let before = groups.len();
        let mut records = 0usize;
        let mut offset = partition.log_start_offset();
        while offset < partition.log_end_offset() {
            let read = partition.read_for_replica(offset, 1 << 20)?;
            let Some(slice) = read.slice else { break };
            let mut bytes = Bytes::from(slice.read_to_vec().map_err(sluice_log::LogError::Io)?);
            let sets = match RecordBatchDecoder::decode_all(&mut bytes) {
                Ok(sets) => sets,
                Err(error) => {
                    tracing::error!(partition = index, offset, %error, "undecodable batch in __consumer_offsets; skipping the rest of the partition");
                    break;
                }
            };
            for set in sets {
                for record in set.records {
                    let Some(key) = record.key.as_deref() else {
                        continue;
                    };
                    match store::decode(key, record.value.as_deref()) {
                        Some(decoded) => {
                            records += 1;
                            apply(&mut groups, decoded);
                        }
                        None => tracing::warn!(
                            partition = index,
                            offset = record.offset,
                            "unreadable record in __consumer_offsets; ignored"
                        ),
                    }
                }
            }
            if slice.next_offset <= offset {
                break;
            }
            offset = slice.next_offset;
        }
        tracing::info!(
            partition = index,
            leader_epoch = partition.leader_epoch(),
            groups = groups.len() - before,
            records,
            "loaded consumer groups: this broker coordinates them"
        );
        Ok(())
    }

    pub fn limits(&self) -> &GroupLimits {
        &self.limits
    }

    /// Runs `f` on the group (created if missing and `create`), then persists its
    /// metadata if it just became Stable or Empty.
    fn with_group<T>(
        &self,
        group_id: &str,
        create: bool,
        f: impl FnOnce(&mut Group, i64) -> T,
    ) -> Result<T, i16> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId.code());
        }
        self.check_coordinator(group_id)?;
        let now = now_ms();
        let mut groups = self.groups.lock();
        if !groups.contains_key(group_id) {
            if !create {
                return Err(ResponseError::GroupIdNotFound.code());
            }
            if groups.len() >= self.max_groups {
                tracing::warn!(
                    group = group_id,
                    max = self.max_groups,
                    "group.max.count reached; refusing a new group"
                );
                return Err(ResponseError::CoordinatorNotAvailable.code());
            }
            groups.insert(group_id.to_string(), Group::new(group_id, now));
        }
        let Some(group) = groups.get_mut(group_id) else {
            return Err(ResponseError::GroupIdNotFound.code());
        };
        let before = (group.state, group.generation);
        let result = f(group, now);
        self.persist_if_settled(group, before);
        Ok(result)
    }

    fn persist_if_settled(&self, group: &Group, before: (GroupState, i32)) {
        let after = (group.state, group.generation);
        if after != before && matches!(group.state, GroupState::Stable | GroupState::Empty) {
            let value = stored_group(group);
            if let Err(code) = self.append(
                &group.id,
                vec![(
                    store::group_key(&group.id),
                    Some(store::group_value(&value)),
                )],
            ) {
                tracing::error!(group = %group.id, code, "could not write group metadata");
            }
        }
    }

    /// Appends records to the group's partition; returns where to wait for durability.
    fn append(
        &self,
        group_id: &str,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<(Arc<Partition>, i64), i16> {
        // In a cluster only the leader of the group's offsets partition coordinates it:
        // elsewhere NOT_COORDINATOR sends the client back to FindCoordinator.
        let partition = self
            .offsets_partition(group_id)
            .filter(|partition| partition.is_leader())
            .ok_or(ResponseError::NotCoordinator.code())?;
        let now = now_ms();
        let records: Vec<Record> = records
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i64::try_from(i).unwrap_or(i64::MAX),
                sequence: i32::try_from(i).unwrap_or(i32::MAX),
                timestamp: now,
                key: Some(key),
                value,
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|error| {
            tracing::error!(group = group_id, %error, "could not encode offsets batch");
            ResponseError::UnknownServerError.code()
        })?;
        let mut batch = buf.to_vec();
        match partition.append(&mut batch, now) {
            Ok(info) => {
                partition.request_sync();
                Ok((partition, info.last_offset + 1))
            }
            Err(error) => {
                tracing::error!(group = group_id, %error, "append to __consumer_offsets failed");
                Err(match error {
                    sluice_log::LogError::BatchTooLarge { .. } => {
                        ResponseError::OffsetMetadataTooLarge.code()
                    }
                    _ => ResponseError::CoordinatorNotAvailable.code(),
                })
            }
        }
    }

    pub fn join(&self, group_id: &str, request: JoinRequest) -> JoinOutcome {
        let member_id = request.member_id.clone();
        let limits = &self.limits;
        self.with_group(group_id, true, |group, now| {
            group.join(now, request, limits)
        })
        .unwrap_or_else(|code| JoinOutcome::Now(JoinResult::error(code, &member_id)))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        self.with_group(group_id, false, |group, now| {
            group.sync(
                now,
                generation,
                member_id,
                instance_id,
                protocol_type,
                protocol,
                assignments,
            )
        })
        .unwrap_or_else(|code| {
            let code = if code == ResponseError::GroupIdNotFound.code() {
                ResponseError::UnknownMemberId.code()
            } else {
                code
            };
            SyncOutcome::Now(SyncResult::error(code))
        })
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        self.with_group(group_id, false, |group, now| {
            group.heartbeat(now, generation, member_id, instance_id)
        })
        .unwrap_or_else(unknown_member_for_missing_group)
    }

    /// LeaveGroup of several members; per member an error code.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<i16>, i16> {
        let limits = &self.limits;
        self.with_group(group_id, false, |group, now| {
            members
                .iter()
                .map(|(member_id, instance_id)| {
                    group.leave(now, member_id, instance_id.as_deref(), limits)
                })
                .collect()
        })
        .map_err(unknown_member_for_missing_group)
    }

    /// OffsetCommit: validates, appends, and returns per-offset codes plus where to wait
    /// for durability (if anything was written).
    pub fn commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: &[OffsetToCommit],
    ) -> (Vec<i16>, Option<(Arc<Partition>, i64)>) {
        let all = |code: i16| (vec![code; offsets.len()], None);
        if group_id.is_empty() {
            return all(ResponseError::InvalidGroupId.code());
        }
        if let Err(code) = self.check_coordinator(group_id) {
            return all(code);
        }
        // Kafka: a commit for an unknown group with a generation is from a stale member.
        if generation >= 0 && !self.groups.lock().contains_key(group_id) {
            return all(ResponseError::IllegalGeneration.code());
        }
        let result = self.with_group(group_id, true, |group, now| {
            let code = group.validate_commit(now, generation, member_id, instance_id);
            if code != 0 {
                return all(code);
            }
            let mut codes = Vec::with_capacity(offsets.len());
            let mut records = Vec::new();
            let mut accepted = Vec::new();
            for offset in offsets {
                let metadata = offset.metadata.clone().unwrap_or_default();
                let code = if metadata.len() > self.metadata_max_bytes {
                    ResponseError::OffsetMetadataTooLarge.code()
                } else if !self.replicas.topic(&offset.topic).is_some_and(|t| {
                    // The partition exists in the cluster (it may be hosted elsewhere).
                    (0..t.record.partitions).contains(&offset.partition)
                }) {
                    ResponseError::UnknownTopicOrPartition.code()
                } else {
                    0
                };
                codes.push(code);
                if code == 0 {
                    let value = StoredOffset {
                        offset: offset.offset,
                        leader_epoch: offset.leader_epoch,
                        metadata,
                        commit_timestamp_ms: now,
                    };
                    records.push((
                        store::offset_key(group_id, &offset.topic, offset.partition),
                        Some(store::offset_value(&value)),
                    ));
                    accepted.push((offset, value));
                }
            }
            if records.is_empty() {
                return (codes, None);
            }
            match self.append(group_id, records) {
                Ok(wait) => {
                    for (offset, value) in accepted {
                        group
                            .offsets
                            .insert((offset.topic.clone(), offset.partition), committed(value));
                    }
                    (codes, Some(wait))
                }
                Err(code) => (
                    codes
                        .into_iter()
                        .map(|c| if c == 0 { code } else { c })
                        .collect(),
                    None,
                ),
            }
        });
        result.unwrap_or_else(all)
    }

    /// Committed offsets of a group: `None` topics = every committed offset.
    /// Unknown groups and partitions give offset -1 (no error), as Kafka.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<TopicOffsets> {
        let groups = self.groups.lock();
        let group = groups.get(group_id);
        match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let found = partitions
                        .into_iter()
                        .map(|p| {
                            let offset =
                                group.and_then(|g| g.offsets.get(&(topic.clone(), p)).cloned());
                            (p, offset)
                        })
                        .collect();
                    (topic, found)
                })
                .collect(),
            None => {
                let mut by_topic: HashMap<String, Vec<(i32, Option<CommittedOffset>)>> =
                    HashMap::new();
                if let Some(group) = group {
                    for ((topic, partition), offset) in &group.offsets {
                        by_topic
                            .entry(topic.clone())
                            .or_default()
                            .push((*partition, Some(offset.clone())));
                    }
                }
                let mut out: Vec<_> = by_topic.into_iter().collect();
                out.sort_by(|a, b| a.0.cmp(&b.0));
                for (_, partitions) in &mut out {
                    partitions.sort_by_key(|(p, _)| *p);
                }
                out
            }
        }
    }

    /// (group id, protocol type, state) of every group.
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        let groups = self.groups.lock();
        let mut out: Vec<_> = groups
            .values()
            .map(|g| {
                (
                    g.id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state,
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let groups = self.groups.lock();
        let group = groups.get(group_id)?;
        let protocol = group.protocol.clone().unwrap_or_default();
        // Kafka shows member metadata and assignments only once the group is Stable.
        let stable = group.state == GroupState::Stable;
        Some(GroupDescription {
            state: group.state,
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: group
                .members
                .values()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.group_instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        if stable {
                            m.metadata(&protocol)
                        } else {
                            Bytes::new()
                        },
                        if stable {
                            m.assignment.clone()
                        } else {
                            Bytes::new()
                        },
                    )
                })
                .collect(),
        })
    }

    /// DeleteGroups of one group.
    pub fn delete_group(&self, group_id: &str) -> i16 {
        if group_id.is_empty() {
            return ResponseError::InvalidGroupId.code();
        }
        if let Err(code) = self.check_coordinator(group_id) {
            return code;
        }
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return ResponseError::GroupIdNotFound.code();
        };
        if !group.is_empty() {
            return ResponseError::NonEmptyGroup.code();
        }
        let mut records: Vec<(Bytes, Option<Bytes>)> = group
            .offsets
            .keys()
            .map(|(topic, partition)| (store::offset_key(group_id, topic, *partition), None))
            .collect();
        records.push((store::group_key(group_id), None));
        if let Err(code) = self.append(group_id, records) {
            return code;
        }
        group.mark_dead(now_ms());
        groups.remove(group_id);
        tracing::info!(group = group_id, "group deleted");
        0
    }

    /// OffsetDelete: group-level error, or per-partition codes.
    pub fn delete_offsets(
        &self,
        group_id: &str,
        topics: &[(String, Vec<i32>)],
    ) -> Result<Vec<TopicCodes>, i16> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId.code());
        }
        self.check_coordinator(group_id)?;
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Err(ResponseError::GroupIdNotFound.code());
        };
        let mut out = Vec::new();
        let mut records = Vec::new();
        let mut removed = Vec::new();
        for (topic, partitions) in topics {
            let subscribed = !group.is_empty() && group.subscribed_to(topic);
            let mut codes = Vec::new();
            for partition in partitions {
                if subscribed {
                    codes.push((*partition, ResponseError::GroupSubscribedToTopic.code()));
                    continue;
                }
                if group.offsets.contains_key(&(topic.clone(), *partition)) {
                    records.push((store::offset_key(group_id, topic, *partition), None));
                    removed.push((topic.clone(), *partition));
                }
                codes.push((*partition, 0));
            }
            out.push((topic.clone(), codes));
        }
        if !records.is_empty() {
            self.append(group_id, records)?;
            for key in removed {
                group.offsets.remove(&key);
            }
        }
        Ok(out)
    }

    /// Runs the group timers and offset retention until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut next_retention =
            now_ms() + i64::try_from(self.retention_check_ms).unwrap_or(i64::MAX);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(TICK_MS)) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            if self.replicas.topic(OFFSETS_TOPIC).is_none() {
                let config = self.replicas.config();
                if let Err(error) =
                    tokio::task::block_in_place(|| self.ensure_offsets_topic(&config))
                {
                    tracing::warn!(%error, "cannot create __consumer_offsets yet");
                }
            }
            if let Err(error) = self.follow_leadership() {
                tracing::error!(%error, "cannot load consumer groups of an offsets partition this broker leads");
            }
            let now = now_ms();
            {
                let mut groups = self.groups.lock();
                for group in groups.values_mut() {
                    let before = (group.state, group.generation);
                    if group.tick(now, &self.limits) {
                        self.persist_if_settled(group, before);
                    }
                }
            }
            if now >= next_retention {
                next_retention = now + i64::try_from(self.retention_check_ms).unwrap_or(i64::MAX);
                self.expire_offsets(now);
            }
        }
    }

    /// Offset retention: offsets of Empty groups committed longer than
    /// `offsets.retention.minutes` ago are deleted (tombstones); an Empty group left
    /// without offsets is deleted too.
    pub fn expire_offsets(&self, now: i64) {
        let mut groups = self.groups.lock();
        let mut dead_groups = Vec::new();
        for group in groups.values_mut() {
            if group.state != GroupState::Empty {
                continue;
            }
            let expired: Vec<(String, i32)> = group
                .offsets
                .iter()
                .filter(|(_, o)| {
                    now.saturating_sub(o.commit_timestamp_ms.max(group.state_since_ms))
                        >= self.retention_ms
                })
                .map(|(k, _)| k.clone())
                .collect();
            let mut records: Vec<(Bytes, Option<Bytes>)> = expired
                .iter()
                .map(|(t, p)| (store::offset_key(&group.id, t, *p), None))
                .collect();
            let group_gone = group.offsets.len() == expired.len()
                && now.saturating_sub(group.state_since_ms) >= self.retention_ms;
            if group_gone {
                records.push((store::group_key(&group.id), None));
            }
            if records.is_empty() {
                continue;
            }
            if self.append(&group.id, records).is_ok() {
                for key in &expired {
                    group.offsets.remove(key);
                }
                tracing::info!(group = %group.id, expired = expired.len(), "expired committed offsets");
                if group_gone {
                    dead_groups.push(group.id.clone());
                }
            }
        }
        for id in dead_groups {
            groups.remove(&id);
        }
    }
}

fn unknown_member_for_missing_group(code: i16) -> i16 {
    if code == ResponseError::GroupIdNotFound.code() {
        ResponseError::UnknownMemberId.code()
    } else {
        code
    }
}

fn committed(value: StoredOffset) -> CommittedOffset {
    CommittedOffset {
        offset: value.offset,
        leader_epoch: value.leader_epoch,
        metadata: value.metadata,
        commit_timestamp_ms: value.commit_timestamp_ms,
    }
}

fn stored_group(group: &Group) -> StoredGroup {
    let protocol = group.protocol.clone().unwrap_or_default();
    StoredGroup {
        protocol_type: group.protocol_type.clone().unwrap_or_default(),
        generation: group.generation,
        protocol: group.protocol.clone(),
        leader: group.leader.clone(),
        state_timestamp_ms: group.state_since_ms,
        members: group
            .members
            .values()
            .map(|m| StoredMember {
                member_id: m.id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                subscription: m.metadata(&protocol),
                assignment: m.assignment.clone(),
            })
            .collect(),
    }
}

/// Applies one replayed record.
fn apply(groups: &mut HashMap<String, Group>, record: StoredRecord) {
    match record {
        StoredRecord::Offset {
            group,
            topic,
            partition,
            value,
        } => match value {
            Some(value) => {
                let entry = groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group, value.commit_timestamp_ms));
                entry.offsets.insert((topic, partition), committed(value));
            }
            None => {
                if let Some(entry) = groups.get_mut(&group) {
                    entry.offsets.remove(&(topic, partition));
                }
            }
        },
        StoredRecord::Group { group, value } => match value {
            Some(value) => {
                let entry = groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group, value.state_timestamp_ms));
                entry.generation = value.generation;
                if !value.protocol_type.is_empty() {
                    entry.protocol_type = Some(value.protocol_type);
                }
                entry.state_since_ms = value.state_timestamp_ms;
            }
            None => {
                groups.remove(&group);
            }
        },
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    fn config(dir: &std::path::Path) -> BrokerConfig {
        BrokerConfig::from_pairs([
            ("log.dirs", dir.display().to_string()),
            ("offsets.topic.num.partitions", "2".to_string()),
            ("offsets.retention.minutes", "1".to_string()),
        ])
        .unwrap()
    }

    fn open(dir: &std::path::Path) -> Arc<GroupCoordinator> {
        let config = config(dir);
        let replicas = ReplicaManager::open(config.clone()).unwrap();
        GroupCoordinator::open(replicas, &config).unwrap()
    }

    fn committed(coordinator: &GroupCoordinator, group: &str) -> Option<i64> {
        let topics = coordinator.fetch_offsets(group, Some(vec![("t".to_string(), vec![0])]));
        topics[0].1[0].1.as_ref().map(|c| c.offset)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offsets_of_empty_groups_expire_after_retention_and_stay_expired() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = open(dir.path());
        coordinator
            .replicas
            .create_topic_blocking(
                &NewTopic {
                    name: "t",
                    partitions: 1,
                    replication_factor: 1,
                    configs: Vec::new(),
                },
                false,
            )
            .unwrap();
        let commit = |group: &str| {
            let (codes, _) = coordinator.commit(
                group,
                -1,
                "",
                None,
                &[OffsetToCommit {
                    topic: "t".to_string(),
                    partition: 0,
                    offset: 42,
                    leader_epoch: -1,
                    metadata: None,
                }],
            );
            assert_eq!(codes, vec![0]);
        };
        commit("old");
        let committed_at = now_ms();
        assert_eq!(committed(&coordinator, "old"), Some(42));
        // Before the retention time nothing expires.
        coordinator.expire_offsets(committed_at + 30_000);
        assert_eq!(committed(&coordinator, "old"), Some(42));
        // A minute (offsets.retention.minutes = 1) after the commit, the offset is gone.
        coordinator.expire_offsets(committed_at + 61_000);
        assert_eq!(committed(&coordinator, "old"), None);
        assert!(coordinator.list().iter().all(|(id, _, _)| id != "old"));
        // The tombstones are in __consumer_offsets: a restart does not bring it back.
        commit("fresh");
        coordinator
            .replicas
            .all_topics()
            .iter()
            .flat_map(|t| t.partitions.clone())
            .for_each(|p| p.flush().unwrap());
        drop(coordinator);
        let reopened = open(dir.path());
        assert_eq!(committed(&reopened, "old"), None);
        assert_eq!(committed(&reopened, "fresh"), Some(42));
    }
}
