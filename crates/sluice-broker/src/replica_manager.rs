//! All partitions hosted by this broker, and the topic lifecycle (create, add partitions,
//! delete) that changes them. Kafka's `ReplicaManager`, reduced to one node.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use parking_lot::{Mutex, RwLock};
use sluice_log::{Log, LogError};
use uuid::Uuid;

use crate::config::{BrokerConfig, DynamicLayer};
use crate::flush::DataDirSync;
use crate::metadata_store::{MetadataError, MetadataStore, TopicRecord};
use crate::partition::Partition;
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
        }
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

/// A topic and its partitions, as requests see it.
pub struct TopicState {
    pub record: TopicRecord,
    pub partitions: Vec<Arc<Partition>>,
}

impl TopicState {
    pub fn partition(&self, index: i32) -> Option<&Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// What CreateTopics asks for, already defaulted.
pub struct NewTopic<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(&'a str, &'a str)>,
}

pub struct ReplicaManager {
    /// The effective configuration: static settings plus the dynamic layers; replaced
    /// whole when a dynamic setting changes.
    config: RwLock<Arc<BrokerConfig>>,
    data_dir: PathBuf,
    /// Group commit of the whole data directory (`log.flush.method=syncfs`).
    dir_sync: Arc<DataDirSync>,
    metadata: Mutex<MetadataStore>,
    topics: RwLock<HashMap<String, Arc<TopicState>>>,
}

impl ReplicaManager {
    /// Loads the metadata and opens (recovering) every partition log.
    pub fn open(config: BrokerConfig) -> Result<Arc<ReplicaManager>, TopicError> {
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            TopicError::Storage(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let metadata = MetadataStore::open(&data_dir, config.node_id())?;
        let mut config = config;
        for layer in [DynamicLayer::ClusterDefault, DynamicLayer::Broker] {
            load_dynamic_layer(&mut config, &metadata, layer);
        }
        let dir_sync = Arc::new(DataDirSync::open(&data_dir).map_err(|e| {
            TopicError::Storage(format!("cannot open {}: {e}", data_dir.display()))
        })?);
        let records: Vec<TopicRecord> = metadata.topics().cloned().collect();
        let threads = config.recovery_threads();
        let mut topics = HashMap::new();
        for state in open_topics(&data_dir, &dir_sync, &config, records, threads)? {
            topics.insert(state.record.name.clone(), state);
        }
        let manager = Arc::new(ReplicaManager {
            config: RwLock::new(Arc::new(config)),
            data_dir,
            dir_sync,
            metadata: Mutex::new(metadata),
            topics: RwLock::new(topics),
        });
        for topic in manager.topics.read().values() {
            for partition in &topic.partitions {
                tokio::spawn(Arc::clone(partition).run_flusher());
            }
        }
        Ok(manager)
    }

    /// A fresh producer id for InitProducerId (see `MetadataStore::allocate_producer_id`).
    pub fn allocate_producer_id(&self) -> Result<i64, MetadataError> {
        self.metadata.lock().allocate_producer_id()
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
        self.metadata.lock().cluster_id().to_string()
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

    /// Replaces a topic's configuration overrides (AlterConfigs and IncrementalAlterConfigs
    /// have computed the full new set). Validated, persisted, then applied to every
    /// partition without a restart. With `validate_only` nothing changes.
    pub fn alter_topic_configs(
        &self,
        name: &str,
        configs: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let configs = validate_topic_configs(configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| TopicError::InvalidConfig(e.to_string()))?;
        let mut metadata = self.metadata.lock();
        let current = self
            .topic(name)
            .ok_or_else(|| TopicError::UnknownTopic(name.to_string()))?;
        if validate_only {
            return Ok(());
        }
        let mut record = current.record.clone();
        record.configs = configs;
        metadata.put_topic(record.clone())?;
        let settings = TopicSettings::resolve(&record.configs, &self.config());
        for partition in &current.partitions {
            partition.set_settings(settings.clone());
        }
        let partitions = current.partitions.clone();
        self.topics.write().insert(
            name.to_string(),
            Arc::new(TopicState { record, partitions }),
        );
        tracing::info!(topic = name, "topic configuration changed");
        Ok(())
    }

    /// Replaces one dynamic layer of broker settings (AlterConfigs on a `BROKER` resource),
    /// persists it and re-resolves every topic whose settings follow the broker defaults.
    pub fn alter_broker_configs(
        &self,
        layer: DynamicLayer,
        configs: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let mut metadata = self.metadata.lock();
        let mut updated = BrokerConfig::clone(&self.config());
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
        metadata.put_broker_configs(&dynamic_resource_name(layer, updated.node_id()), stored)?;
        let updated = Arc::new(updated);
        *self.config.write() = Arc::clone(&updated);
        for topic in self.all_topics() {
            let settings = TopicSettings::resolve(&topic.record.configs, &updated);
            for partition in &topic.partitions {
                partition.set_settings(settings.clone());
            }
        }
        tracing::info!(?layer, "dynamic broker configuration changed");
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

    /// Validates a CreateTopics entry; with `validate_only` nothing changes.
    pub fn create_topic(
        &self,
        new: &NewTopic<'_>,
        validate_only: bool,
    ) -> Result<TopicRecord, TopicError> {
        validate_topic_name(new.name)?;
        if new.partitions < 1 || new.partitions > TOPIC_PARTITIONS_MAX {
            return Err(TopicError::InvalidPartitions(format!(
                "number of partitions must be between 1 and {TOPIC_PARTITIONS_MAX}, got {}",
                new.partitions
            )));
        }
        if new.replication_factor != 1 {
            return Err(TopicError::InvalidReplicationFactor(format!(
                "replication factor {} is larger than the 1 available broker",
                new.replication_factor
            )));
        }
        let configs = validate_topic_configs(new.configs.iter().copied())
            .map_err(|e| TopicError::InvalidConfig(e.to_string()))?;
        let mut metadata = self.metadata.lock();
        if let Some(existing) = self.colliding_topic(new.name) {
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
            configs,
        };
        if validate_only {
            return Ok(record);
        }
        // Remove what an earlier topic of the same name may have left behind.
        for index in 0..record.partitions {
            let dir = partition_dir(&self.data_dir, &record.name, index);
            if dir.exists() {
                tracing::warn!(dir = %dir.display(), "removing stale partition directory");
                std::fs::remove_dir_all(&dir).map_err(|e| TopicError::Storage(e.to_string()))?;
            }
        }
        metadata.put_topic(record.clone())?;
        let state = open_topic(
            &self.data_dir,
            &self.dir_sync,
            &self.config(),
            record.clone(),
            0,
        )?;
        for partition in &state.partitions {
            tokio::spawn(Arc::clone(partition).run_flusher());
        }
        self.topics.write().insert(record.name.clone(), state);
        tracing::info!(topic = %record.name, partitions = record.partitions, "created topic");
        Ok(record)
    }

    /// Sets one topic config override (persisted) and applies it to the open partitions.
    /// Returns false when the topic already had that value. Used at start-up to give an
    /// internal topic created by an older version the configs it needs now.
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
        self.alter_topic_configs(name, &configs, false)?;
        tracing::info!(topic = name, key, value, "set topic config");
        Ok(true)
    }

    /// Grows a topic to `count` partitions.
    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let mut metadata = self.metadata.lock();
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
        let mut record = current.record.clone();
        record.partitions = count;
        metadata.put_topic(record.clone())?;
        let added = open_topic(
            &self.data_dir,
            &self.dir_sync,
            &self.config(),
            record.clone(),
            existing,
        )?;
        let mut partitions = current.partitions.clone();
        for partition in &added.partitions {
            tokio::spawn(Arc::clone(partition).run_flusher());
        }
        partitions.extend(added.partitions.iter().cloned());
        self.topics.write().insert(
            name.to_string(),
            Arc::new(TopicState { record, partitions }),
        );
        tracing::info!(
            topic = name,
            from = existing,
            to = count,
            "added partitions"
        );
        Ok(())
    }

    /// Deletes a topic: metadata first (durable), then its directories.
    pub fn delete_topic(&self, name: &str) -> Result<TopicRecord, TopicError> {
        let mut metadata = self.metadata.lock();
        let Some(state) = self.topics.write().remove(name) else {
            return Err(TopicError::UnknownTopic(name.to_string()));
        };
        if let Err(e) = metadata.remove_topic(name) {
            self.topics.write().insert(name.to_string(), state);
            return Err(e.into());
        }
        drop(metadata);
        let record = state.record.clone();
        let partitions = match Arc::try_unwrap(state) {
            Ok(state) => state.partitions,
            Err(shared) => shared.partitions.clone(),
        };
        for partition in partitions {
            partition.close();
            let index = partition.index;
            if let Err(error) = partition.delete() {
                tracing::error!(topic = name, partition = index, %error, "could not remove partition directory");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(record)
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
        for topic in self.all_topics() {
            for partition in &topic.partitions {
                partition.close();
                if let Err(error) = partition.flush() {
                    tracing::error!(topic = %partition.topic, partition = partition.index, %error, "flush at shutdown failed");
                }
            }
        }
    }

    /// Another topic whose name equals `name` once '.' and '_' are identified.
    fn colliding_topic(&self, name: &str) -> Option<String> {
        let normalised = name.replace('.', "_");
        self.topics
            .read()
            .keys()
            .find(|existing| existing.replace('.', "_") == normalised)
            .cloned()
    }
}

/// The metadata key of a dynamic layer: "" for the cluster default, else the node id.
fn dynamic_resource_name(layer: DynamicLayer, node_id: i32) -> String {
    match layer {
        DynamicLayer::ClusterDefault => String::new(),
        DynamicLayer::Broker => node_id.to_string(),
    }
}

/// Applies a persisted dynamic layer at start-up; a stored value this version no longer
/// accepts is skipped with an error line rather than stopping the broker.
fn load_dynamic_layer(config: &mut BrokerConfig, metadata: &MetadataStore, layer: DynamicLayer) {
    let stored = metadata.broker_configs(&dynamic_resource_name(layer, config.node_id()));
    let mut accepted: Vec<(&str, &str)> = Vec::new();
    for (key, value) in &stored {
        let mut probe = config.clone();
        match probe.set_dynamic(layer, [(key.as_str(), value.as_str())]) {
            Ok(()) => accepted.push((key.as_str(), value.as_str())),
            Err(error) => tracing::error!(?layer, %error, "ignoring a stored dynamic setting"),
        }
    }
    if let Err(error) = config.set_dynamic(layer, accepted) {
        tracing::error!(?layer, %error, "ignoring the stored dynamic settings");
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

/// Opens every partition of `records` at start-up on up to `threads` threads (their logs
/// recover independently, and a recovery mostly waits on the disk), keeping the order of
/// topics and partitions. The first error wins, as with one thread.
fn open_topics(
    data_dir: &Path,
    dir_sync: &Arc<DataDirSync>,
    config: &BrokerConfig,
    records: Vec<TopicRecord>,
    threads: usize,
) -> Result<Vec<Arc<TopicState>>, TopicError> {
    let settings: Vec<TopicSettings> = records
        .iter()
        .map(|record| TopicSettings::resolve(&record.configs, config))
        .collect();
    let jobs: Vec<(usize, i32)> = records
        .iter()
        .enumerate()
        .flat_map(|(topic, record)| (0..record.partitions).map(move |index| (topic, index)))
        .collect();
    let results: Vec<Mutex<Option<Result<Log, LogError>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    let next_job = std::sync::atomic::AtomicUsize::new(0);
    let open_jobs = || loop {
        let job = next_job.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(&(topic, index)) = jobs.get(job) else {
            break;
        };
        let dir = partition_dir(data_dir, &records[topic].name, index);
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
    let mut states = Vec::with_capacity(records.len());
    for (record, settings) in records.into_iter().zip(settings) {
        let name: Arc<str> = Arc::from(record.name.as_str());
        let mut partitions = Vec::new();
        for index in 0..record.partitions {
            let log = results.next().flatten().ok_or_else(|| {
                TopicError::Storage(format!("partition {}-{index} was not opened", record.name))
            })??;
            tracing::debug!(topic = %record.name, partition = index, log_end_offset = log.log_end_offset(), "opened partition");
            partitions.push(Partition::new(
                Arc::clone(&name),
                index,
                log,
                settings.clone(),
                Arc::clone(dir_sync),
            ));
        }
        states.push(Arc::new(TopicState { record, partitions }));
    }
    Ok(states)
}

/// Opens partitions `first..record.partitions` of a topic.
fn open_topic(
    data_dir: &Path,
    dir_sync: &Arc<DataDirSync>,
    config: &BrokerConfig,
    record: TopicRecord,
    first: i32,
) -> Result<Arc<TopicState>, TopicError> {
    let settings = TopicSettings::resolve(&record.configs, config);
    let name: Arc<str> = Arc::from(record.name.as_str());
    let mut partitions = Vec::new();
    for index in first..record.partitions {
        let dir = partition_dir(data_dir, &record.name, index);
        let log = Log::open(&dir, settings.log.clone())?;
        tracing::debug!(topic = %record.name, partition = index, log_end_offset = log.log_end_offset(), "opened partition");
        partitions.push(Partition::new(
            Arc::clone(&name),
            index,
            log,
            settings.clone(),
            Arc::clone(dir_sync),
        ));
    }
    Ok(Arc::new(TopicState { record, partitions }))
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
            replicas.create_topic(&new, false).unwrap();
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
