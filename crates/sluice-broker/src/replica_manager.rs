//! All partitions hosted by this broker, and the topic lifecycle (create, add partitions,
//! delete, configs) that changes them. Kafka's `ReplicaManager` plus the broker side of
//! KRaft's metadata publishing.
//!
//! The controller quorum's metadata image is the source of truth: topic, partition and
//! config changes are proposed to the controller (`propose`), and partitions are opened,
//! created, reconfigured and deleted by following the image ([`ReplicaManager::apply_image`],
//! run by a task that watches `controller.image()` and, for read-your-writes, by the
//! request that made the change once the controller committed it). A single node and a
//! cluster take the same path.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use kafka_protocol::ResponseError;
use parking_lot::{Mutex, RwLock};
use sluice_controller::image::TopicImage;
use sluice_controller::records::ConfigResource;
use sluice_controller::{
    Controller, ControllerError, ControllerRequest, ControllerResponse, MetadataImage,
};
use sluice_log::{Log, LogError};
use uuid::Uuid;

use crate::cluster::{self, ClusterError};
use crate::config::{BrokerConfig, DynamicLayer};
use crate::flush::DataDirSync;
use crate::metadata_store::{MetadataError, MetadataStore, TopicRecord};
use crate::partition::Partition;
use crate::replica_fetcher::{FollowedPartition, ReplicaFetcherManager};
use crate::replication::{IsrChange, Transition};
use crate::topic_config::{validate_topic_configs, TopicSettings};

/// Longest topic name Kafka accepts.
pub const TOPIC_NAME_LENGTH_MAX: usize = 249;
/// Upper bound on partitions of one topic, so a request cannot make us open millions of files.
pub const TOPIC_PARTITIONS_MAX: i32 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic '{0}' already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("storage error: {0}")]
    Storage(String),
    /// The controller refused or could not commit the change (its Kafka error code).
    #[error("{message}")]
    Controller { code: i16, message: String },
    #[error("controller quorum: {0}")]
    Cluster(#[from] ClusterError),
}

impl TopicError {
    pub fn code(&self) -> i16 {
        match self {
            TopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists.code(),
            TopicError::InvalidName(_) => ResponseError::InvalidTopicException.code(),
            TopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions.code(),
            TopicError::InvalidReplicationFactor(_) => {
                ResponseError::InvalidReplicationFactor.code()
            }
            TopicError::InvalidConfig(_) => ResponseError::InvalidConfig.code(),
            TopicError::InvalidRequest(_) => ResponseError::InvalidRequest.code(),
            TopicError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition.code(),
            TopicError::Storage(_) => ResponseError::KafkaStorageError.code(),
            TopicError::Controller { code, .. } => *code,
            TopicError::Cluster(_) => ResponseError::UnknownServerError.code(),
        }
    }

    /// A controller failure for a request about topic `name`, with the well-known refusals
    /// mapped to their own variants (callers match on `AlreadyExists`).
    fn from_controller(name: &str, error: ControllerError) -> TopicError {
        let code = error.code();
        if code == ResponseError::TopicAlreadyExists.code() {
            return TopicError::AlreadyExists(name.to_string());
        }
        if code == ResponseError::UnknownTopicOrPartition.code() {
            return TopicError::UnknownTopic(name.to_string());
        }
        let message = match error {
            ControllerError::Api(api) => api.message,
            other => other.to_string(),
        };
        TopicError::Controller { code, message }
    }
}

impl From<MetadataError> for TopicError {
    fn from(e: MetadataError) -> Self {
        TopicError::Storage(e.to_string())
    }
}

impl From<LogError> for TopicError {
    fn from(e: LogError) -> Self {
        TopicError::Storage(e.to_string())
    }
}

impl From<ControllerError> for TopicError {
    fn from(e: ControllerError) -> Self {
        TopicError::Cluster(ClusterError::Controller(e))
    }
}

/// A topic and the partitions of it this broker hosts, as requests see it.
pub struct TopicState {
    /// The topic as the image has it (`partitions` = the topic's total partition count).
    pub record: TopicRecord,
    /// The partitions hosted here, sorted by index (a subset in a cluster).
    pub partitions: Vec<Arc<Partition>>,
}

impl TopicState {
    /// The hosted partition `index`, if this broker hosts it.
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        self.partitions
            .binary_search_by_key(&index, |p| p.index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// The partition `index` of `topic` when this broker leads it, for the APIs only a leader
/// serves (Produce, Fetch, ListOffsets, DeleteRecords, OffsetForLeaderEpoch):
/// UNKNOWN_TOPIC_OR_PARTITION when the topic or partition does not exist,
/// NOT_LEADER_OR_FOLLOWER when it is led elsewhere or offline (the client refreshes its
/// metadata and goes to the leader).
pub fn leader_partition(
    topic: Option<&Arc<TopicState>>,
    index: i32,
) -> Result<Arc<Partition>, ResponseError> {
    let Some(topic) = topic else {
        return Err(ResponseError::UnknownTopicOrPartition);
    };
    if index < 0 || index >= topic.record.partitions {
        return Err(ResponseError::UnknownTopicOrPartition);
    }
    match topic.partition(index) {
        Some(partition) if partition.is_leader() => Ok(Arc::clone(partition)),
        _ => Err(ResponseError::NotLeaderOrFollower),
    }
}

/// What CreateTopics asks for, already defaulted.
pub struct NewTopic<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(&'a str, &'a str)>,
}

/// Producer ids handed out by the controller to this broker, `[next, end)`.
#[derive(Default)]
struct ProducerIdBlock {
    next: i64,
    end: i64,
}

pub struct ReplicaManager {
    /// The effective configuration: static settings plus the dynamic layers (from the
    /// image); replaced whole when a dynamic setting changes.
    config: RwLock<Arc<BrokerConfig>>,
    data_dir: PathBuf,
    /// The cluster's id: the quorum's (`ClaimClusterId`), kept in `meta.properties`.
    cluster_id: RwLock<String>,
    /// Group commit of the whole data directory (`log.flush.method=syncfs`).
    dir_sync: Arc<DataDirSync>,
    /// This node's member of the controller quorum.
    controller: Controller,
    /// This process's registration: a new incarnation id per start.
    incarnation_id: Uuid,
    /// The broker epoch the controller gave this incarnation (-1 before registration).
    broker_epoch: AtomicI64,
    /// Serialises [`ReplicaManager::apply_image`] (the image task and requests both call it)
    /// and holds the log index of the newest image applied: an older image that arrives
    /// later (the image task took it before a request applied a newer one) is skipped, or
    /// it would undo the newer one (a topic just created would vanish for a moment).
    apply_lock: Mutex<u64>,
    topics: RwLock<HashMap<String, Arc<TopicState>>>,
    producer_ids: tokio::sync::Mutex<ProducerIdBlock>,
    /// The follower side of replication: a fetcher per leader this broker follows.
    fetchers: ReplicaFetcherManager,
}

impl ReplicaManager {
    /// [`ReplicaManager::start`] for synchronous callers (tests, tools). Needs a
    /// multi-threaded tokio runtime.
    pub fn open(config: BrokerConfig) -> Result<Arc<ReplicaManager>, TopicError> {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(Self::start(config))
        })
    }

    /// Starts this node's controller, registers the broker, opens (recovering) every
    /// partition the image assigns to it, imports single-node metadata once, and waits
    /// until the controller unfences the broker. The advertised listener in `config` must
    /// be final (it is registered).
    pub async fn start(config: BrokerConfig) -> Result<Arc<ReplicaManager>, TopicError> {
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            TopicError::Storage(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let legacy = MetadataStore::open(&data_dir, config.node_id())?;
        let dir_sync = Arc::new(DataDirSync::open(&data_dir).map_err(|e| {
            TopicError::Storage(format!("cannot open {}: {e}", data_dir.display()))
        })?);
        let controller = cluster::start_controller(&config).await?;
        let manager = Arc::new(ReplicaManager {
            config: RwLock::new(Arc::new(config.clone())),
            data_dir: data_dir.clone(),
            cluster_id: RwLock::new(legacy.cluster_id().to_string()),
            dir_sync,
            controller: controller.clone(),
            incarnation_id: Uuid::new_v4(),
            broker_epoch: AtomicI64::new(-1),
            apply_lock: Mutex::new(0),
            topics: RwLock::new(HashMap::new()),
            producer_ids: tokio::sync::Mutex::new(ProducerIdBlock::default()),
            fetchers: ReplicaFetcherManager::default(),
        });
        match manager.join_cluster(&legacy).await {
            Ok(()) => {}
            Err(error) => {
                controller.shutdown().await;
                return Err(error);
            }
        }
        tokio::spawn(run_image_follower(
            Arc::downgrade(&manager),
            controller.image(),
        ));
        Ok(manager)
    }

    async fn join_cluster(self: &Arc<Self>, legacy: &MetadataStore) -> Result<(), TopicError> {
        let config = self.config();
        let node_id = config.node_id();
        let broker_epoch =
            cluster::register(&self.controller, &config, self.incarnation_id).await?;
        self.broker_epoch.store(broker_epoch, Ordering::SeqCst);
        let cluster_id = cluster::claim_cluster_id(&self.controller, legacy.cluster_id()).await?;
        if cluster_id != legacy.cluster_id() {
            tracing::info!(
                %cluster_id,
                previous = legacy.cluster_id(),
                "adopting the cluster id of the controller quorum"
            );
            crate::metadata_store::write_meta_properties(&self.data_dir, &cluster_id, node_id)?;
        }
        *self.cluster_id.write() = cluster_id;
        // Our registration is in this node's image once it applied the record.
        let mut images = self.controller.image();
        let registered = images
            .wait_for(|image| {
                image
                    .brokers
                    .get(&node_id)
                    .is_some_and(|b| b.broker_epoch == broker_epoch)
            })
            .await
            .map(|image| Arc::clone(&image))
            .map_err(|_| TopicError::from(ControllerError::Shutdown))?;
        self.apply_image_blocking(&registered, true)?;
        // Logs are open: ask to be unfenced (lead partitions).
        loop {
            match cluster::heartbeat(&self.controller, node_id, broker_epoch, false).await {
                Ok((false, _)) => break,
                Ok((true, _)) => {}
                Err(ClusterError::Controller(ControllerError::Timeout { .. })) => {
                    tracing::warn!("no controller quorum yet to unfence this broker; retrying");
                }
                Err(error) => return Err(error.into()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let imported =
            cluster::import_single_node_metadata(&self.controller, &self.data_dir, legacy, node_id)
                .await?;
        // The unfencing (and the leader elections committed with it) must be in this node's
        // image before the broker serves, or it would refuse partitions it already leads.
        let mut images = self.controller.image();
        let unfenced = images.wait_for(|image| {
            image
                .brokers
                .get(&node_id)
                .is_some_and(|b| b.broker_epoch == broker_epoch && !b.fenced)
        });
        let session = Duration::from_millis(config.broker_session_timeout_ms());
        match tokio::time::timeout(session, unfenced).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(ControllerError::Shutdown.into()),
            Err(_) => tracing::warn!(
                "this node's metadata does not show the broker unfenced yet; serving anyway"
            ),
        }
        let image = self.controller.current_image();
        self.apply_image_blocking(&image, imported > 0)?;
        tracing::info!(
            node_id,
            broker_epoch,
            topics = image.topics.len(),
            "broker joined the cluster"
        );
        Ok(())
    }

    fn apply_image_blocking(
        &self,
        image: &MetadataImage,
        adopt_existing_dirs: bool,
    ) -> Result<(), TopicError> {
        tokio::task::block_in_place(|| self.apply_image(image, adopt_existing_dirs))
    }

    /// This node's controller.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The broker epoch of this incarnation (-1 before registration).
    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::SeqCst)
    }

    /// How many brokers may take new replicas now (registered, unfenced, not shutting down).
    pub fn eligible_broker_count(&self) -> usize {
        self.image()
            .brokers
            .values()
            .filter(|b| b.is_eligible())
            .count()
    }

    /// The controller's current metadata image as this node has applied it.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.controller.current_image()
    }

    /// Heartbeats to the controller every `broker.heartbeat.interval.ms` until shutdown
    /// (a broker that stops heartbeating is fenced after `broker.session.timeout.ms`).
    pub async fn run_heartbeats(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.config().broker_heartbeat_interval_ms());
        let node_id = self.config().node_id();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            match cluster::heartbeat(&self.controller, node_id, self.broker_epoch(), false).await {
                Ok((true, _)) => tracing::warn!("the controller keeps this broker fenced"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "broker heartbeat failed"),
            }
        }
    }

    /// Controlled shutdown: heartbeats with `want_shutdown` until the controller has moved
    /// every leadership away (or `broker.session.timeout.ms` passed), then stops this
    /// node's controller.
    pub async fn controlled_shutdown(&self) {
        let config = self.config();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(config.broker_session_timeout_ms());
        let node_id = config.node_id();
        loop {
            match cluster::heartbeat(&self.controller, node_id, self.broker_epoch(), true).await {
                Ok((_, true)) => {
                    tracing::info!("controlled shutdown: the controller released this broker");
                    break;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "controlled shutdown heartbeat failed"),
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("controlled shutdown not confirmed in time; stopping anyway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.controller.shutdown().await;
    }

    /// A fresh producer id for InitProducerId: from the block the controller gave this
    /// broker, asking for a new block (`AllocateProducerIds`) when it is used up. Blocks
    /// are committed in the metadata log, so no id is handed out twice, across restarts
    /// and across brokers.
    pub async fn allocate_producer_id(&self) -> Result<i64, ControllerError> {
        let mut block = self.producer_ids.lock().await;
        if block.next >= block.end {
            let request = ControllerRequest::AllocateProducerIds {
                broker_id: self.config().node_id(),
                broker_epoch: self.broker_epoch(),
            };
            match self.controller.propose(request).await? {
                ControllerResponse::ProducerIds {
                    first_producer_id,
                    count,
                } => {
                    tracing::info!(
                        block_start = first_producer_id,
                        count,
                        "received a block of producer ids"
                    );
                    block.next = first_producer_id;
                    block.end = first_producer_id.saturating_add(count);
                }
                other => {
                    return Err(ControllerError::Raft(format!(
                        "unexpected answer to AllocateProducerIds: {other:?}"
                    )))
                }
            }
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }

    /// Forgets, in every partition, idempotent producers idle for `producer.id.expiration.ms`.
    pub fn expire_producers(&self, now_ms: i64) {
        let expiration_ms = self.config().producer_id_expiration_ms();
        for topic in self.all_topics() {
            for partition in &topic.partitions {
                let removed = partition.remove_expired_producers(now_ms, expiration_ms);
                if removed > 0 {
                    tracing::info!(topic = %partition.topic, partition = partition.index, removed, "expired idle producer ids");
                }
            }
        }
    }

    /// The producer id expiration task: every `producer.id.expiration.check.interval.ms`.
    pub async fn run_producer_expiration(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let interval =
            Duration::from_millis(self.config().producer_id_expiration_check_interval_ms());
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            self.expire_producers(crate::api::now_ms());
        }
    }

    pub fn cluster_id(&self) -> String {
        self.cluster_id.read().clone()
    }

    /// The effective configuration at this moment (cheap: an `Arc` clone).
    pub fn config(&self) -> Arc<BrokerConfig> {
        Arc::clone(&self.config.read())
    }

    /// Replaces the static part of the configuration (start-up only: the advertised port).
    pub fn update_config(&self, change: impl FnOnce(&mut BrokerConfig)) {
        let mut config = self.config.write();
        let mut updated = BrokerConfig::clone(&config);
        change(&mut updated);
        *config = Arc::new(updated);
    }

    /// Follows the image: dynamic broker configs, then topics. Opens (creating) partitions
    /// assigned to this broker that are not open, applies changed topic configs, closes and
    /// deletes partitions and topics the image no longer has. Idempotent.
    ///
    /// `adopt_existing_dirs`: at start-up (and right after the single-node import) the
    /// partition directories on disk are the data of the image's partitions; later, a
    /// partition that appears in the image is new, and a directory of its name is what an
    /// earlier topic of the same name left behind (removed first).
    pub fn apply_image(
        &self,
        image: &MetadataImage,
        adopt_existing_dirs: bool,
    ) -> Result<(), TopicError> {
        let mut applied_index = self.apply_lock.lock();
        if image.last_applied_index < *applied_index {
            return Ok(());
        }
        self.apply_image_locked(image, adopt_existing_dirs)?;
        *applied_index = image.last_applied_index;
        Ok(())
    }

    /// [`ReplicaManager::apply_image`] under its lock.
    fn apply_image_locked(
        &self,
        image: &MetadataImage,
        adopt_existing_dirs: bool,
    ) -> Result<(), TopicError> {
        let configs_changed = self.apply_dynamic_configs(image);
        let config = self.config();
        let node_id = config.node_id();
        let current: HashMap<String, Arc<TopicState>> = self.topics.read().clone();
        // Topics gone from the image (or replaced by a new topic of the same name).
        for (name, state) in &current {
            let same = image
                .topic_by_name(name)
                .is_some_and(|t| t.topic_id == state.record.id);
            if !same {
                self.remove_topic_locally(name);
            }
        }
        let mut to_open: Vec<(TopicRecord, Vec<i32>)> = Vec::new();
        let mut records: Vec<TopicRecord> = Vec::new();
        for topic in image.topics.values() {
            let record = topic_record(image, topic);
            let hosted = hosted_partitions(topic, node_id);
            let existing = current
                .get(&topic.name)
                .filter(|state| state.record.id == topic.topic_id);
            let missing: Vec<i32> = hosted
                .iter()
                .copied()
                .filter(|index| existing.is_none_or(|state| state.partition(*index).is_none()))
                .collect();
            if let Some(state) = existing {
                // Partitions no longer assigned here (reassignment, later stages).
                let unassigned: Vec<Arc<Partition>> = state
                    .partitions
                    .iter()
                    .filter(|p| !hosted.contains(&p.index))
                    .cloned()
                    .collect();
                if !unassigned.is_empty() {
                    let kept = state
                        .partitions
                        .iter()
                        .filter(|p| hosted.contains(&p.index))
                        .cloned()
                        .collect();
                    self.topics.write().insert(
                        topic.name.clone(),
                        Arc::new(TopicState {
                            record: state.record.clone(),
                            partitions: kept,
                        }),
                    );
                    delete_partitions(&topic.name, unassigned);
                }
            }
            if !missing.is_empty() {
                if !adopt_existing_dirs {
                    for index in &missing {
                        let dir = partition_dir(&self.data_dir, &topic.name, *index);
                        if dir.exists() {
                            tracing::warn!(dir = %dir.display(), "removing stale partition directory");
                            std::fs::remove_dir_all(&dir)
                                .map_err(|e| TopicError::Storage(e.to_string()))?;
                        }
                    }
                }
                to_open.push((record.clone(), missing));
            }
            records.push(record);
        }
        let opened = open_topics(
            &self.data_dir,
            &self.dir_sync,
            &config,
            to_open,
            config.recovery_threads(),
        )?;
        let mut opened: HashMap<String, Vec<Arc<Partition>>> = opened.into_iter().collect();
        for record in records {
            let name = record.name.clone();
            let previous = self.topics.read().get(&name).cloned();
            let new_partitions = opened.remove(&name).unwrap_or_default();
            for partition in &new_partitions {
                tokio::spawn(Arc::clone(partition).run_flusher());
            }
            let changed_record = previous.as_ref().is_none_or(|p| p.record != record);
            if !changed_record && new_partitions.is_empty() && !configs_changed {
                continue;
            }
            let mut partitions = previous
                .as_ref()
                .map(|p| p.partitions.clone())
                .unwrap_or_default();
            if changed_record || configs_changed {
                let settings = TopicSettings::resolve(&record.configs, &config);
                for partition in &partitions {
                    partition.set_settings(settings.clone());
                }
                if previous.is_some() && changed_record {
                    tracing::info!(topic = %name, "topic metadata changed");
                }
            }
            if !new_partitions.is_empty() {
                tracing::info!(topic = %name, partitions = new_partitions.len(), "opened partitions assigned to this broker");
            }
            partitions.extend(new_partitions);
            partitions.sort_by_key(|p| p.index);
            self.topics
                .write()
                .insert(name, Arc::new(TopicState { record, partitions }));
        }
        self.apply_registrations(image, &config);
        Ok(())
    }

    /// Gives every hosted partition its role, epoch and ISR from the image, and points
    /// the fetchers at the leaders of the partitions this broker follows.
    fn apply_registrations(&self, image: &MetadataImage, config: &Arc<BrokerConfig>) {
        let node_id = config.node_id();
        let lag_max_ms = config.replica_lag_time_max_ms();
        let now_ms = crate::api::now_ms();
        let mut followed: HashMap<i32, (String, Vec<FollowedPartition>)> = HashMap::new();
        for topic in image.topics.values() {
            let Some(state) = self.topic(&topic.name) else {
                continue;
            };
            for partition in &state.partitions {
                let registration = usize::try_from(partition.index)
                    .ok()
                    .and_then(|i| topic.partitions.get(i));
                let Some(registration) = registration else {
                    continue;
                };
                let transition = partition.apply_registration(registration, lag_max_ms, now_ms);
                match transition {
                    Transition::Unchanged => {}
                    Transition::BecameLeader => {
                        tracing::info!(topic = %topic.name, partition = partition.index, leader_epoch = registration.leader_epoch, isr = ?registration.isr, "leading partition")
                    }
                    Transition::BecameFollower { leader } => {
                        tracing::info!(topic = %topic.name, partition = partition.index, leader, leader_epoch = registration.leader_epoch, "following partition")
                    }
                    Transition::WentOffline => {
                        tracing::warn!(topic = %topic.name, partition = partition.index, "partition offline: no leader")
                    }
                }
                let leader = registration.leader;
                if leader == node_id || leader == sluice_controller::records::NO_LEADER {
                    continue;
                }
                let Some(address) = image
                    .brokers
                    .get(&leader)
                    .and_then(|b| b.endpoints.first())
                    .map(|e| format!("{}:{}", e.host, e.port))
                else {
                    tracing::warn!(topic = %topic.name, partition = partition.index, leader, "leader has no registered endpoint");
                    continue;
                };
                followed
                    .entry(leader)
                    .or_insert_with(|| (address, Vec::new()))
                    .1
                    .push(FollowedPartition {
                        partition: Arc::clone(partition),
                        leader_epoch: registration.leader_epoch,
                    });
            }
        }
        self.fetchers.assign(config, followed);
    }

    /// Asks the controller for an ISR change of a partition this broker leads
    /// (AlterPartition), in the background; the image brings the result. On refusal or
    /// no answer the partition may ask again.
    pub fn request_isr_change(self: &Arc<Self>, partition: Arc<Partition>, change: IsrChange) {
        let Some(topic_id) = self.topic(&partition.topic).map(|t| t.record.id) else {
            partition.isr_change_failed(&change);
            return;
        };
        let request = ControllerRequest::AlterPartition {
            broker_id: self.config().node_id(),
            broker_epoch: self.broker_epoch(),
            topic_id,
            partition: partition.index,
            leader_epoch: change.leader_epoch,
            partition_epoch: change.partition_epoch,
            new_isr: change.new_isr.clone(),
        };
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            tracing::info!(topic = %partition.topic, partition = partition.index, new_isr = ?change.new_isr, "asking the controller to change the ISR");
            match manager.controller.propose(request).await {
                Ok(_) => {
                    // Visible here once this node's image has it.
                    let _ = manager
                        .catch_up(|image| {
                            image.partition(&topic_id, partition.index).is_none_or(|p| {
                                p.partition_epoch > change.partition_epoch
                                    || p.leader_epoch > change.leader_epoch
                            })
                        })
                        .await;
                }
                Err(error) => {
                    tracing::warn!(topic = %partition.topic, partition = partition.index, %error, "ISR change refused");
                    partition.isr_change_failed(&change);
                }
            }
        });
    }

    /// Moves leadership of `partitions` to their preferred replicas (ElectLeaders); the
    /// controller skips any that became ineligible meanwhile. Returns once this broker's
    /// image has the result.
    pub async fn elect_preferred_leaders(
        &self,
        partitions: Vec<(Uuid, i32)>,
    ) -> Result<(), TopicError> {
        let before = self.image();
        let epochs: Vec<(Uuid, i32, i32)> = partitions
            .iter()
            .filter_map(|(id, p)| before.partition(id, *p).map(|s| (*id, *p, s.leader_epoch)))
            .collect();
        self.controller
            .propose(ControllerRequest::ElectPreferredLeaders { partitions })
            .await?;
        self.catch_up(|image| {
            epochs.iter().all(|(id, p, epoch)| {
                image.partition(id, *p).is_none_or(|s| {
                    s.leader_epoch > *epoch || s.replicas.first() == Some(&s.leader)
                })
            })
        })
        .await
    }

    /// `auto.leader.rebalance.enable`: every `leader.imbalance.check.interval.seconds`, the
    /// active controller's broker moves leadership back to preferred replicas that are in
    /// sync (after a broker restart its partitions are led elsewhere until then).
    pub async fn run_leader_rebalance(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let config = self.config();
            let interval = Duration::from_secs(config.leader_imbalance_check_interval_seconds());
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            if !config.auto_leader_rebalance_enable()
                || self.controller.leader_id() != u64::try_from(config.node_id()).ok()
            {
                continue;
            }
            let image = self.image();
            let electable: Vec<(Uuid, i32)> = image.partitions_matching(|state| {
                state.replicas.first().is_some_and(|preferred| {
                    *preferred != state.leader
                        && state.isr.contains(preferred)
                        && image.is_broker_eligible(*preferred)
                })
            });
            if electable.is_empty() {
                continue;
            }
            tracing::info!(
                partitions = electable.len(),
                "moving leadership back to preferred replicas"
            );
            if let Err(error) = self.elect_preferred_leaders(electable).await {
                tracing::warn!(%error, "preferred leader election failed");
            }
        }
    }

    /// Every `replica.lag.time.max.ms / 2`, drops followers that lag from the ISR of the
    /// partitions this broker leads (Kafka's `isr-expiration` task).
    pub async fn run_isr_maintenance(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let lag_max_ms =
                u64::try_from(self.config().replica_lag_time_max_ms()).unwrap_or(30_000);
            let interval = Duration::from_millis((lag_max_ms / 2).max(1));
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            let now_ms = crate::api::now_ms();
            for topic in self.all_topics() {
                for partition in &topic.partitions {
                    if let Some(change) = partition.isr_shrink(now_ms) {
                        tracing::warn!(topic = %partition.topic, partition = partition.index, new_isr = ?change.new_isr, "followers lag; shrinking the ISR");
                        self.request_isr_change(Arc::clone(partition), change);
                    }
                }
            }
        }
    }

    /// Takes the dynamic broker configs (cluster default and this broker) from the image;
    /// returns whether they changed. A stored value this version no longer accepts is
    /// skipped with an error line rather than stopping the broker.
    fn apply_dynamic_configs(&self, image: &MetadataImage) -> bool {
        let current = self.config();
        let mut updated = BrokerConfig::clone(&current);
        for (layer, resource) in [
            (DynamicLayer::ClusterDefault, ConfigResource::ClusterDefault),
            (
                DynamicLayer::Broker,
                ConfigResource::Broker(current.node_id()),
            ),
        ] {
            let empty = BTreeMap::new();
            let stored = image.configs.get(&resource).unwrap_or(&empty);
            let mut accepted: Vec<(&str, &str)> = Vec::new();
            for (key, value) in stored {
                let mut probe = BrokerConfig::clone(&current);
                match probe.set_dynamic(layer, [(key.as_str(), value.as_str())]) {
                    Ok(()) => accepted.push((key.as_str(), value.as_str())),
                    Err(error) => {
                        tracing::error!(?layer, %error, "ignoring a stored dynamic setting")
                    }
                }
            }
            if let Err(error) = updated.set_dynamic(layer, accepted) {
                tracing::error!(?layer, %error, "ignoring the stored dynamic settings");
            }
        }
        let changed = [DynamicLayer::ClusterDefault, DynamicLayer::Broker]
            .iter()
            .any(|layer| updated.dynamic(*layer) != current.dynamic(*layer));
        if changed {
            *self.config.write() = Arc::new(updated);
            tracing::info!("dynamic broker configuration changed");
        }
        changed
    }

    /// Closes a topic's partitions and removes their directories (after the image dropped it).
    fn remove_topic_locally(&self, name: &str) {
        let Some(state) = self.topics.write().remove(name) else {
            return;
        };
        let partitions = match Arc::try_unwrap(state) {
            Ok(state) => state.partitions,
            Err(shared) => shared.partitions.clone(),
        };
        delete_partitions(name, partitions);
        tracing::info!(topic = name, "deleted topic");
    }

    /// Waits (up to the controller's request timeout) until this node's image satisfies
    /// `ready`, then applies it: the change a request just committed is visible to the
    /// request's own response and to the next request on this broker.
    async fn catch_up(&self, ready: impl Fn(&MetadataImage) -> bool) -> Result<(), TopicError> {
        let mut images = self.controller.image();
        let waited = tokio::time::timeout(
            Duration::from_millis(self.controller_request_timeout_ms()),
            images.wait_for(|image| ready(image)),
        )
        .await;
        let image = match waited {
            Ok(Ok(image)) => Arc::clone(&image),
            Ok(Err(_)) => return Err(ControllerError::Shutdown.into()),
            Err(_) => {
                return Err(TopicError::Controller {
                    code: ResponseError::RequestTimedOut.code(),
                    message: "the change is committed but not yet visible on this broker"
                        .to_string(),
                })
            }
        };
        self.apply_image_blocking(&image, false)
    }

    fn controller_request_timeout_ms(&self) -> u64 {
        cluster::controller_config(&self.config())
            .map(|c| c.request_timeout_ms)
            .unwrap_or(10_000)
    }

    /// Replaces a topic's configuration overrides (AlterConfigs and IncrementalAlterConfigs
    /// have computed the full new set): validated, committed through the controller, then
    /// applied to every hosted partition without a restart. With `validate_only` nothing
    /// changes.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        configs: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let configs = validate_topic_configs(configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| TopicError::InvalidConfig(e.to_string()))?;
        let current = self
            .topic(name)
            .ok_or_else(|| TopicError::UnknownTopic(name.to_string()))?;
        if validate_only {
            return Ok(());
        }
        let entries = config_changes(&current.record.configs, &configs);
        if entries.is_empty() {
            return Ok(());
        }
        self.controller
            .propose(ControllerRequest::AlterConfigs {
                resource: ConfigResource::Topic(name.to_string()),
                entries,
            })
            .await
            .map_err(|e| TopicError::from_controller(name, e))?;
        let topic_id = current.record.id;
        self.catch_up(|image| {
            image
                .topic_by_name(name)
                .is_none_or(|t| t.topic_id != topic_id)
                || image
                    .configs
                    .get(&ConfigResource::Topic(name.to_string()))
                    .cloned()
                    .unwrap_or_default()
                    == configs
        })
        .await?;
        tracing::info!(topic = name, "topic configuration changed");
        Ok(())
    }

    /// Replaces one dynamic layer of broker settings (AlterConfigs on a `BROKER` resource)
    /// through the controller; every broker (this one included) re-resolves the topics
    /// whose settings follow the broker defaults when it applies the image.
    pub async fn alter_broker_configs(
        &self,
        layer: DynamicLayer,
        configs: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let current = self.config();
        let mut updated = BrokerConfig::clone(&current);
        updated
            .set_dynamic(layer, configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| TopicError::InvalidConfig(e.to_string()))?;
        if validate_only {
            return Ok(());
        }
        let stored: BTreeMap<String, String> = updated
            .dynamic(layer)
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let resource = match layer {
            DynamicLayer::ClusterDefault => ConfigResource::ClusterDefault,
            DynamicLayer::Broker => ConfigResource::Broker(current.node_id()),
        };
        let image = self.image();
        let before = image.configs.get(&resource).cloned().unwrap_or_default();
        let entries = config_changes(&before, &stored);
        if entries.is_empty() {
            return Ok(());
        }
        self.controller
            .propose(ControllerRequest::AlterConfigs {
                resource: resource.clone(),
                entries,
            })
            .await
            .map_err(|e| TopicError::from_controller("", e))?;
        self.catch_up(|image| image.configs.get(&resource).cloned().unwrap_or_default() == stored)
            .await?;
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicState>> {
        self.topics.read().get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<TopicState>> {
        self.topics
            .read()
            .values()
            .find(|t| t.record.id == id)
            .cloned()
    }

    /// All topics, sorted by name.
    pub fn all_topics(&self) -> Vec<Arc<TopicState>> {
        let mut topics: Vec<_> = self.topics.read().values().cloned().collect();
        topics.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        topics
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        self.topic(topic)?.partition(index).cloned()
    }

    /// Validates a CreateTopics entry and creates the topic through the controller (which
    /// places its partitions over the brokers); with `validate_only` nothing changes.
    pub async fn create_topic(
        &self,
        new: &NewTopic<'_>,
        validate_only: bool,
    ) -> Result<TopicRecord, TopicError> {
        self.create_topic_with_assignments(new, Vec::new(), validate_only)
            .await
    }

    /// [`ReplicaManager::create_topic`] for synchronous start-up code (the group
    /// coordinator creating `__consumer_offsets`). Needs a multi-threaded runtime.
    pub fn create_topic_blocking(
        &self,
        new: &NewTopic<'_>,
        validate_only: bool,
    ) -> Result<TopicRecord, TopicError> {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(self.create_topic(new, validate_only))
        })
    }

    /// CreateTopics with a manual assignment (`assignments[p]` = replicas of partition
    /// `p`); empty = placed by the controller.
    pub async fn create_topic_with_assignments(
        &self,
        new: &NewTopic<'_>,
        assignments: Vec<Vec<i32>>,
        validate_only: bool,
    ) -> Result<TopicRecord, TopicError> {
        validate_topic_name(new.name)?;
        if new.partitions < 1 || new.partitions > TOPIC_PARTITIONS_MAX {
            return Err(TopicError::InvalidPartitions(format!(
                "number of partitions must be between 1 and {TOPIC_PARTITIONS_MAX}, got {}",
                new.partitions
            )));
        }
        let image = self.image();
        let eligible = image.brokers.values().filter(|b| b.is_eligible()).count();
        if new.replication_factor < 1
            || usize::try_from(new.replication_factor).unwrap_or(usize::MAX) > eligible.max(1)
        {
            return Err(TopicError::InvalidReplicationFactor(format!(
                "replication factor {} is not possible: {eligible} brokers can take replicas",
                new.replication_factor
            )));
        }
        let configs = validate_topic_configs(new.configs.iter().copied())
            .map_err(|e| TopicError::InvalidConfig(e.to_string()))?;
        if let Some(existing) = colliding_topic(&image, new.name) {
            if existing == new.name {
                return Err(TopicError::AlreadyExists(new.name.to_string()));
            }
            return Err(TopicError::InvalidName(format!(
                "topic '{}' collides with existing topic '{existing}' ('.' and '_' are equivalent in metric names)",
                new.name
            )));
        }
        let record = TopicRecord {
            name: new.name.to_string(),
            id: Uuid::new_v4(),
            partitions: new.partitions,
            replication_factor: new.replication_factor,
            configs: configs.clone(),
        };
        if validate_only {
            return Ok(record);
        }
        let request = ControllerRequest::CreateTopic {
            name: new.name.to_string(),
            num_partitions: new.partitions,
            replication_factor: new.replication_factor,
            assignments,
            configs,
        };
        let answer = match self.controller.propose(request).await {
            Ok(answer) => answer,
            Err(error) => {
                let error = TopicError::from_controller(new.name, error);
                if matches!(error, TopicError::AlreadyExists(_)) {
                    // Created meanwhile through another broker (several brokers creating
                    // `__consumer_offsets` at start-up, auto-creation): show it here too.
                    let name = new.name;
                    self.catch_up(|image| image.topic_by_name(name).is_some())
                        .await?;
                }
                return Err(error);
            }
        };
        let topic_id = match answer {
            ControllerResponse::TopicCreated { topic_id } => topic_id,
            other => {
                return Err(TopicError::Controller {
                    code: ResponseError::UnknownServerError.code(),
                    message: format!("unexpected controller answer {other:?}"),
                })
            }
        };
        self.catch_up(|image| image.topics.contains_key(&topic_id))
            .await?;
        let created = self
            .topic(new.name)
            .filter(|t| t.record.id == topic_id)
            .map(|t| t.record.clone())
            .unwrap_or(TopicRecord {
                id: topic_id,
                ..record
            });
        tracing::info!(topic = %created.name, partitions = created.partitions, "created topic");
        Ok(created)
    }

    /// Sets one topic config override and applies it. Returns false when the topic already
    /// had that value. Used at start-up (synchronously) to give an internal topic created by
    /// an older version the configs it needs now.
    pub fn ensure_topic_config(
        &self,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<bool, TopicError> {
        let Some(current) = self.topic(name) else {
            return Err(TopicError::UnknownTopic(name.to_string()));
        };
        if current.record.configs.get(key).map(String::as_str) == Some(value) {
            return Ok(false);
        }
        let mut configs = current.record.configs.clone();
        configs.insert(key.to_string(), value.to_string());
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(self.alter_topic_configs(name, &configs, false))
        })?;
        tracing::info!(topic = name, key, value, "set topic config");
        Ok(true)
    }

    /// Grows a topic to `count` partitions (placed by the controller).
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let current = self
            .topic(name)
            .ok_or_else(|| TopicError::UnknownTopic(name.to_string()))?;
        let existing = current.record.partitions;
        if count <= existing {
            return Err(TopicError::InvalidPartitions(format!(
                "topic '{name}' has {existing} partitions; the new count must be larger, got {count}"
            )));
        }
        if count > TOPIC_PARTITIONS_MAX {
            return Err(TopicError::InvalidPartitions(format!(
                "number of partitions must be at most {TOPIC_PARTITIONS_MAX}"
            )));
        }
        if validate_only {
            return Ok(());
        }
        self.controller
            .propose(ControllerRequest::CreatePartitions {
                name: name.to_string(),
                total_count: count,
            })
            .await
            .map_err(|e| TopicError::from_controller(name, e))?;
        let topic_id = current.record.id;
        let wanted = usize::try_from(count).unwrap_or(usize::MAX);
        self.catch_up(|image| {
            image
                .topics
                .get(&topic_id)
                .is_none_or(|t| t.partitions.len() >= wanted)
        })
        .await?;
        tracing::info!(
            topic = name,
            from = existing,
            to = count,
            "added partitions"
        );
        Ok(())
    }

    /// Deletes a topic through the controller; its directories go once the image drops it.
    pub async fn delete_topic(&self, name: &str) -> Result<TopicRecord, TopicError> {
        let Some(state) = self.topic(name) else {
            return Err(TopicError::UnknownTopic(name.to_string()));
        };
        self.controller
            .propose(ControllerRequest::DeleteTopic {
                name: name.to_string(),
            })
            .await
            .map_err(|e| TopicError::from_controller(name, e))?;
        let topic_id = state.record.id;
        self.catch_up(|image| !image.topics.contains_key(&topic_id))
            .await?;
        Ok(state.record.clone())
    }

    /// Checkpoints every partition (recovery point and index files).
    pub fn checkpoint_all(&self) {
        for topic in self.all_topics() {
            for partition in &topic.partitions {
                if let Err(error) = partition.checkpoint() {
                    tracing::error!(topic = %partition.topic, partition = partition.index, %error, "checkpoint failed");
                }
            }
        }
    }

    /// Runs the periodic checkpoint until shutdown.
    pub async fn run_checkpointer(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let interval = Duration::from_millis(self.config().checkpoint_interval_ms());
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            let manager = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || manager.checkpoint_all()).await;
        }
    }

    /// Clean shutdown: stop flushers, fsync and checkpoint every partition.
    pub fn shutdown(&self) {
        self.fetchers.stop_all();
        for topic in self.all_topics() {
            for partition in &topic.partitions {
                partition.close();
                if let Err(error) = partition.flush() {
                    tracing::error!(topic = %partition.topic, partition = partition.index, %error, "flush at shutdown failed");
                }
            }
        }
        self.stop_controller();
    }

    /// Stops this node's controller (idempotent). Blocks until it has stopped.
    fn stop_controller(&self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let controller = self.controller.clone();
            tokio::task::block_in_place(|| handle.block_on(controller.shutdown()));
        }
    }
}

impl Drop for ReplicaManager {
    /// A manager dropped without `shutdown` (tests) must not leave its controller running
    /// on the metadata directory a reopened manager will use.
    fn drop(&mut self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let controller = self.controller.clone();
            handle.spawn(async move { controller.shutdown().await });
        }
    }
}
/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::InvalidName("topic name is empty".to_string()));
    }
    if name == "." || name == ".." {
        return Err(TopicError::InvalidName(format!(
            "topic name cannot be '{name}'"
        )));
    }
    if name.len() > TOPIC_NAME_LENGTH_MAX {
        return Err(TopicError::InvalidName(format!(
            "topic name is longer than {TOPIC_NAME_LENGTH_MAX} characters"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(TopicError::InvalidName(format!(
            "topic name '{name}' contains '{bad}'; legal characters are ASCII letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

pub fn partition_dir(data_dir: &Path, topic: &str, index: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{index}"))
}

/// Follows the controller's image until the manager is dropped or the controller stops.
async fn run_image_follower(
    manager: Weak<ReplicaManager>,
    mut images: tokio::sync::watch::Receiver<Arc<MetadataImage>>,
) {
    while images.changed().await.is_ok() {
        let image = Arc::clone(&images.borrow_and_update());
        let Some(manager) = manager.upgrade() else {
            return;
        };
        if let Err(error) = manager.apply_image_blocking(&image, false) {
            tracing::error!(%error, index = image.last_applied_index, "cannot apply the metadata image");
        }
    }
}

/// The topic as requests see it, from the image.
fn topic_record(image: &MetadataImage, topic: &TopicImage) -> TopicRecord {
    TopicRecord {
        name: topic.name.clone(),
        id: topic.topic_id,
        partitions: i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX),
        replication_factor: topic
            .partitions
            .first()
            .map(|p| i16::try_from(p.replicas.len()).unwrap_or(i16::MAX))
            .unwrap_or(1),
        configs: image
            .configs
            .get(&ConfigResource::Topic(topic.name.clone()))
            .cloned()
            .unwrap_or_default(),
    }
}

/// The partitions of `topic` with a replica on `node_id`.
fn hosted_partitions(topic: &TopicImage, node_id: i32) -> Vec<i32> {
    topic
        .partitions
        .iter()
        .zip(0..)
        .filter(|(p, _)| p.replicas.contains(&node_id))
        .map(|(_, index)| index)
        .collect()
}

/// Closes partitions and removes their directories.
fn delete_partitions(topic: &str, partitions: Vec<Arc<Partition>>) {
    for partition in partitions {
        partition.close();
        let index = partition.index;
        if let Err(error) = partition.delete() {
            tracing::error!(topic, partition = index, %error, "could not remove partition directory");
        }
    }
}

/// Another topic of the image whose name equals `name` once '.' and '_' are identified.
fn colliding_topic(image: &MetadataImage, name: &str) -> Option<String> {
    let normalised = name.replace('.', "_");
    image
        .topic_ids_by_name
        .keys()
        .find(|existing| existing.replace('.', "_") == normalised)
        .cloned()
}

/// The AlterConfigs entries that turn `before` into `after` (`None` deletes).
fn config_changes(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let mut entries: BTreeMap<String, Option<String>> = before
        .keys()
        .filter(|key| !after.contains_key(*key))
        .map(|key| (key.clone(), None))
        .collect();
    for (key, value) in after {
        if before.get(key) != Some(value) {
            entries.insert(key.clone(), Some(value.clone()));
        }
    }
    entries
}

/// A topic name and the partitions of it just opened.
type OpenedTopic = (String, Vec<Arc<Partition>>);

/// Opens the given partitions of each topic on up to `threads` threads (their logs recover
/// independently, and a recovery mostly waits on the disk). Returns the opened partitions
/// per topic name, in the order asked. The first error wins, as with one thread.
fn open_topics(
    data_dir: &Path,
    dir_sync: &Arc<DataDirSync>,
    config: &BrokerConfig,
    wanted: Vec<(TopicRecord, Vec<i32>)>,
    threads: usize,
) -> Result<Vec<OpenedTopic>, TopicError> {
    let settings: Vec<TopicSettings> = wanted
        .iter()
        .map(|(record, _)| TopicSettings::resolve(&record.configs, config))
        .collect();
    let jobs: Vec<(usize, i32)> = wanted
        .iter()
        .enumerate()
        .flat_map(|(topic, (_, indexes))| indexes.iter().map(move |index| (topic, *index)))
        .collect();
    let results: Vec<Mutex<Option<Result<Log, LogError>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    let next_job = std::sync::atomic::AtomicUsize::new(0);
    let open_jobs = || loop {
        let job = next_job.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(&(topic, index)) = jobs.get(job) else {
            break;
        };
        let dir = partition_dir(data_dir, &wanted[topic].0.name, index);
        let opened = Log::open(&dir, settings[topic].log.clone());
        if let Some(slot) = results.get(job) {
            *slot.lock() = Some(opened);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.clamp(1, jobs.len().max(1)) {
            scope.spawn(open_jobs);
        }
        open_jobs();
    });
    let mut results = results.into_iter().map(|slot| slot.into_inner());
    let mut opened = Vec::with_capacity(wanted.len());
    for ((record, indexes), settings) in wanted.into_iter().zip(settings) {
        let name: Arc<str> = Arc::from(record.name.as_str());
        let mut partitions = Vec::new();
        for index in indexes {
            let log = results.next().flatten().ok_or_else(|| {
                TopicError::Storage(format!("partition {}-{index} was not opened", record.name))
            })??;
            tracing::debug!(topic = %record.name, partition = index, log_end_offset = log.log_end_offset(), "opened partition");
            partitions.push(Partition::new(
                Arc::clone(&name),
                index,
                config.node_id(),
                log,
                settings.clone(),
                Arc::clone(dir_sync),
            ));
        }
        opened.push((record.name, partitions));
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopening_on_several_threads_keeps_every_topic_and_partition_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig::from_pairs([
            ("log.dirs", dir.path().display().to_string()),
            ("num.recovery.threads.per.data.dir", "3".to_string()),
        ])
        .unwrap();
        assert_eq!(config.recovery_threads(), 3);
        let topics = [("alpha", 5), ("beta", 1), ("gamma", 3)];
        let replicas = ReplicaManager::open(config.clone()).unwrap();
        for (name, partitions) in topics {
            let new = NewTopic {
                name,
                partitions,
                replication_factor: 1,
                configs: vec![],
            };
            replicas.create_topic_blocking(&new, false).unwrap();
            // Partition i gets i + 1 batches of (topic length) records: distinct log ends.
            for index in 0..partitions {
                let partition = replicas.partition(name, index).unwrap();
                for _ in 0..=index {
                    let mut batch = sluice_log::testing::batch(name.len(), 10, 1_000);
                    partition.append(&mut batch, 1_000).unwrap();
                }
            }
        }
        replicas.shutdown();
        drop(replicas);
        let reopened = ReplicaManager::open(config).unwrap();
        assert_eq!(reopened.all_topics().len(), topics.len());
        for (name, partitions) in topics {
            let topic = reopened.topic(name).unwrap();
            assert_eq!(topic.partitions.len(), partitions as usize);
            for (position, partition) in topic.partitions.iter().enumerate() {
                assert_eq!(partition.index as usize, position);
                assert_eq!(&*partition.topic, name);
                let expected = (i64::from(partition.index) + 1) * name.len() as i64;
                assert_eq!(partition.log_end_offset(), expected, "{name}-{position}");
            }
        }
        reopened.shutdown();
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "a b", "tópico", "a/b"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}

#[cfg(test)]
mod import_tests {
    use super::*;
    use crate::metadata_store::MetadataStore;

    /// A data directory written by the single-node broker (before the controller quorum):
    /// `__cluster_metadata/metadata.json` with topics, dynamic configs and producer id
    /// blocks, and partition logs with records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single_node_metadata_is_imported_once_and_the_image_rules_after() {
        let dir = tempfile::tempdir().unwrap();
        let orders_id = Uuid::new_v4();
        let (cluster_id, last_old_producer_id) = {
            let mut legacy = MetadataStore::open(dir.path(), 1).unwrap();
            legacy
                .put_topic(TopicRecord {
                    name: "orders".into(),
                    id: orders_id,
                    partitions: 2,
                    replication_factor: 1,
                    configs: BTreeMap::from([("retention.ms".into(), "60000".into())]),
                })
                .unwrap();
            legacy
                .put_broker_configs(
                    "",
                    BTreeMap::from([("log.retention.ms".into(), "120000".into())]),
                )
                .unwrap();
            let mut last = 0;
            for _ in 0..3 {
                last = legacy.allocate_producer_id().unwrap();
            }
            for index in 0..2 {
                let log_dir = partition_dir(dir.path(), "orders", index);
                let mut log = Log::open(&log_dir, Default::default()).unwrap();
                let batch = sluice_log::testing::batch(5, 10, 1_000);
                log.append_batch(&batch, 0, 1_000).unwrap();
                log.flush().unwrap();
            }
            (legacy.cluster_id().to_string(), last)
        };
        let config =
            BrokerConfig::from_pairs([("log.dirs", dir.path().display().to_string())]).unwrap();
        let replicas = ReplicaManager::open(config.clone()).unwrap();
        assert_eq!(replicas.cluster_id(), cluster_id);
        let orders = replicas.topic("orders").unwrap();
        assert_eq!(orders.record.id, orders_id);
        assert_eq!(orders.record.partitions, 2);
        assert_eq!(
            orders
                .record
                .configs
                .get("retention.ms")
                .map(String::as_str),
            Some("60000")
        );
        for partition in &orders.partitions {
            assert_eq!(partition.log_end_offset(), 5, "records kept");
        }
        assert_eq!(
            replicas
                .config()
                .dynamic(DynamicLayer::ClusterDefault)
                .get("log.retention.ms"),
            Some(&"120000".to_string())
        );
        let producer_id = replicas.allocate_producer_id().await.unwrap();
        assert!(producer_id > last_old_producer_id, "{producer_id}");
        // After the import the image is the truth: a deleted topic stays deleted.
        replicas.delete_topic("orders").await.unwrap();
        assert!(!partition_dir(dir.path(), "orders", 0).exists());
        replicas.shutdown();
        drop(replicas);
        let reopened = ReplicaManager::open(config).unwrap();
        assert!(reopened.topic("orders").is_none());
        assert!(reopened.allocate_producer_id().await.unwrap() > producer_id);
        reopened.shutdown();
    }
}
