//! The SDK's consumer, modelled on Kafka's Java consumer and librdkafka: group membership
//! on the classic protocol (cooperative-sticky assignment by default, range as fallback),
//! manual commit by default (commit after processing), optional auto-commit, seek,
//! pause/resume and a rebalance listener. Works against any Kafka-compatible broker: API
//! versions are negotiated, partitions are fetched from their leaders as Metadata reports
//! them, and retriable errors are retried as a Kafka client does.
//!
//! ```no_run
//! # async fn run() -> Result<(), sluice_client::ClientError> {
//! use sluice_client::consumer::{Consumer, ConsumerOptions};
//! let mut consumer = Consumer::connect(
//!     "127.0.0.1:9092",
//!     ConsumerOptions { group_id: Some("billing".into()), ..ConsumerOptions::default() },
//! )
//! .await?;
//! consumer.subscribe(&["orders"]).await?;
//! loop {
//!     let records = consumer.poll(std::time::Duration::from_secs(1)).await?;
//!     for record in &records { /* process */ }
//!     consumer.commit_records(&records).await?;
//! }
//! # }
//! ```

pub mod assignor;
mod fetch;
mod group;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::task::JoinSet;

use crate::connection::{ClientError, Connection};
use crate::pipeline::PipelinedConnection;
use crate::record::{ConsumerRecord, TopicPartition};

use fetch::{FetchLimits, FetchOutcome, PartitionFetch};
use group::GroupMembership;

/// Where a partition without a committed offset starts (Kafka's `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoOffsetReset {
    Earliest,
    #[default]
    Latest,
    /// Fail with [`ClientError::NoOffset`] instead of guessing.
    None,
}

/// Consumer settings under Kafka's names, with Kafka's defaults.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// `group.id`: without one only [`Consumer::assign`] works and nothing is committed.
    pub group_id: Option<String>,
    /// `group.instance.id`: static membership (KIP-345); a restart within the session
    /// timeout keeps the assignment without a rebalance.
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub session_timeout_ms: u32,
    pub heartbeat_interval_ms: u32,
    /// A member that does not call `poll` for this long leaves the group so its
    /// partitions go to members that make progress.
    pub max_poll_interval_ms: u32,
    /// How long the coordinator waits for members to rejoin (the Java client uses
    /// `max.poll.interval.ms`).
    pub rebalance_timeout_ms: u32,
    pub auto_offset_reset: AutoOffsetReset,
    /// Off by default: commit after processing with [`Consumer::commit_records`].
    pub enable_auto_commit: bool,
    pub auto_commit_interval_ms: u32,
    pub fetch_min_bytes: u32,
    pub fetch_max_wait_ms: u32,
    /// Bounds one Fetch response and the records buffered ahead of `poll`.
    pub fetch_max_bytes: u32,
    pub max_partition_fetch_bytes: u32,
    pub max_poll_records: usize,
    /// Connect and response timeout of metadata, offset and fetch requests.
    pub request_timeout_ms: u32,
    /// Pause before retrying a retriable error (`retry.backoff.ms`).
    pub retry_backoff_ms: u32,
    /// Assignors advertised in JoinGroup, most preferred first (`partition.assignment.strategy`):
    /// names from [`assignor`].
    pub partition_assignment_strategy: Vec<String>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            group_id: None,
            group_instance_id: None,
            client_id: "sluice-consumer".to_string(),
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 3_000,
            max_poll_interval_ms: 300_000,
            rebalance_timeout_ms: 300_000,
            auto_offset_reset: AutoOffsetReset::Latest,
            enable_auto_commit: false,
            auto_commit_interval_ms: 5_000,
            fetch_min_bytes: 1,
            fetch_max_wait_ms: 500,
            fetch_max_bytes: 52_428_800,
            max_partition_fetch_bytes: 1_048_576,
            max_poll_records: 500,
            request_timeout_ms: 30_000,
            retry_backoff_ms: 100,
            partition_assignment_strategy: vec![
                assignor::COOPERATIVE_STICKY.to_string(),
                assignor::RANGE.to_string(),
            ],
        }
    }
}

/// Told about assignment changes, inside `poll` (Kafka's `ConsumerRebalanceListener`).
pub trait RebalanceListener: Send {
    /// `partitions` are about to be given up. Offsets returned are committed before they
    /// are released: the place to commit work done for them (Kafka's `commitSync` inside
    /// `onPartitionsRevoked`). With auto-commit on, the consumer's positions of these
    /// partitions are committed as well.
    fn on_partitions_revoked(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, i64)> {
        let _ = partitions;
        Vec::new()
    }
    /// `partitions` were added to the assignment (only the new ones under cooperative
    /// rebalancing).
    fn on_partitions_assigned(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }
    /// `partitions` were taken away without a chance to commit (the member was fenced or
    /// its session expired): another member may already be processing them.
    fn on_partitions_lost(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }
}

/// The consumer's state of one assigned partition.
#[derive(Debug, Clone, Default)]
struct PartitionState {
    /// The next offset `poll` returns; `None` until resolved from the committed offset or
    /// `auto_offset_reset`.
    position: Option<i64>,
    /// Set after OFFSET_OUT_OF_RANGE: resolve with `auto_offset_reset` (not the committed
    /// offset).
    reset_needed: bool,
    paused: bool,
}

/// Records fetched for one partition and not yet returned by `poll`.
struct Buffered {
    records: VecDeque<ConsumerRecord>,
    /// The position once every record here is returned.
    next_offset: i64,
    bytes: usize,
}

/// The cluster as Metadata reports it.
#[derive(Debug, Default)]
struct ClusterView {
    brokers: HashMap<i32, String>,
    /// Topic to partition to leader id.
    topics: HashMap<String, BTreeMap<i32, i32>>,
}

/// Kafka error codes the consumer reacts to.
pub(crate) mod codes {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_INSTANCE_ID: i16 = 82;
}

/// A Kafka error code as a [`ClientError`] naming the call.
pub(crate) fn broker_error(what: &str, code: i16) -> ClientError {
    let name = ResponseError::try_from_code(code)
        .map(|e| e.to_string())
        .unwrap_or_else(|| "unknown error".to_string());
    ClientError::Protocol(format!("{what}: error {code} ({name})"))
}

/// Sends `request` over a pipelined connection at the best common version in `versions`.
pub(crate) async fn call<R: kafka_protocol::protocol::Request>(
    connection: &PipelinedConnection,
    versions: std::ops::RangeInclusive<i16>,
    build: impl FnOnce(i16) -> R,
) -> Result<(i16, R::Response), ClientError> {
    let api = ApiKey::try_from(R::KEY)
        .map_err(|_| ClientError::Protocol(format!("unknown API key {}", R::KEY)))?;
    let version = connection.version_for(api, versions)?;
    let request = build(version);
    let response = connection.submit(version, &request).await?.wait().await?;
    Ok((version, response))
}

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A Kafka consumer: see the module documentation.
pub struct Consumer {
    bootstrap: String,
    options: ConsumerOptions,
    metadata_connection: Option<Connection>,
    cluster: ClusterView,
    metadata_stale: bool,
    /// Pipelined connections to partition leaders, by address.
    connections: HashMap<String, Arc<PipelinedConnection>>,
    subscription: Vec<String>,
    assignment: BTreeMap<TopicPartition, PartitionState>,
    buffered: BTreeMap<TopicPartition, Buffered>,
    in_flight: JoinSet<FetchOutcome>,
    /// Leaders with a Fetch in flight (one at a time per leader).
    fetching: BTreeSet<String>,
    group: Option<GroupMembership>,
    listener: Option<Box<dyn RebalanceListener>>,
    last_auto_commit: Instant,
}

impl Consumer {
    /// Connects to `bootstrap` (host:port) and negotiates API versions. Joining a group
    /// happens in the first `poll` after [`Consumer::subscribe`].
    pub async fn connect(
        bootstrap: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer, ClientError> {
        if options.heartbeat_interval_ms >= options.session_timeout_ms {
            return Err(ClientError::InvalidUse(
                "heartbeat_interval_ms must be lower than session_timeout_ms".to_string(),
            ));
        }
        let timeout = Duration::from_millis(u64::from(options.request_timeout_ms));
        let metadata_connection =
            Connection::connect_as(bootstrap, timeout, &options.client_id).await?;
        let group = options
            .group_id
            .clone()
            .map(|id| GroupMembership::new(id, options.group_instance_id.clone()));
        Ok(Consumer {
            bootstrap: bootstrap.to_string(),
            options,
            metadata_connection: Some(metadata_connection),
            cluster: ClusterView::default(),
            metadata_stale: true,
            connections: HashMap::new(),
            subscription: Vec::new(),
            assignment: BTreeMap::new(),
            buffered: BTreeMap::new(),
            in_flight: JoinSet::new(),
            fetching: BTreeSet::new(),
            group,
            listener: None,
            last_auto_commit: Instant::now(),
        })
    }

    pub fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    /// Sets the listener told about revoked, assigned and lost partitions.
    pub fn set_rebalance_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(listener);
    }

    /// Joins the group (in the next `poll`) for `topics`. Needs a `group_id`.
    pub async fn subscribe(&mut self, topics: &[&str]) -> Result<(), ClientError> {
        if self.group.is_none() {
            return Err(ClientError::InvalidUse(
                "subscribe needs a group_id; without a group use assign()".to_string(),
            ));
        }
        if topics.is_empty() {
            return Err(ClientError::InvalidUse(
                "subscribe to at least one topic".to_string(),
            ));
        }
        let mut topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        topics.sort();
        topics.dedup();
        if topics != self.subscription {
            self.subscription = topics;
            self.metadata_stale = true;
            if let Some(group) = &mut self.group {
                group.request_rejoin();
            }
        }
        Ok(())
    }

    /// Reads exactly `partitions`, without group membership (Kafka's `assign`): positions
    /// start at the committed offset when a group id is set, else at `auto_offset_reset`,
    /// unless [`Consumer::seek`] says otherwise.
    pub fn assign(&mut self, partitions: Vec<TopicPartition>) -> Result<(), ClientError> {
        if !self.subscription.is_empty() {
            return Err(ClientError::InvalidUse(
                "this consumer is subscribed; assign() and subscribe() do not mix".to_string(),
            ));
        }
        let wanted: BTreeSet<TopicPartition> = partitions.into_iter().collect();
        self.assignment.retain(|tp, _| wanted.contains(tp));
        self.buffered.retain(|tp, _| wanted.contains(tp));
        for tp in wanted {
            self.assignment.entry(tp).or_default();
        }
        self.metadata_stale = true;
        Ok(())
    }

    /// The partitions assigned now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment.keys().cloned().collect()
    }

    /// The next offset `poll` returns for `tp` (resolving it from the committed offset or
    /// `auto_offset_reset` if no record was read yet).
    pub async fn position(&mut self, tp: &TopicPartition) -> Result<i64, ClientError> {
        self.ensure_assigned(tp)?;
        self.resolve_positions().await?;
        self.assignment
            .get(tp)
            .and_then(|s| s.position)
            .ok_or_else(|| ClientError::NoOffset(tp.to_string()))
    }

    /// The next `poll` returns `tp` from `offset`.
    pub fn seek(&mut self, tp: &TopicPartition, offset: i64) -> Result<(), ClientError> {
        self.ensure_assigned(tp)?;
        if offset < 0 {
            return Err(ClientError::InvalidUse(format!(
                "cannot seek {tp} to {offset}"
            )));
        }
        self.buffered.remove(tp);
        if let Some(state) = self.assignment.get_mut(tp) {
            state.position = Some(offset);
            state.reset_needed = false;
        }
        Ok(())
    }

    /// Moves `partitions` to their log start offset.
    pub async fn seek_to_beginning(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<(), ClientError> {
        self.seek_to(partitions, admin_offsets::EARLIEST).await
    }

    /// Moves `partitions` to their log end offset (only new records are read).
    pub async fn seek_to_end(&mut self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        self.seek_to(partitions, admin_offsets::LATEST).await
    }

    async fn seek_to(
        &mut self,
        partitions: &[TopicPartition],
        timestamp: i64,
    ) -> Result<(), ClientError> {
        for tp in partitions {
            self.ensure_assigned(tp)?;
        }
        let offsets = self.list_offsets(partitions, timestamp).await?;
        for (tp, offset) in offsets {
            self.seek(&tp, offset)?;
        }
        Ok(())
    }

    /// Stops returning and fetching `partitions` until [`Consumer::resume`]; their
    /// positions and the group membership are kept.
    pub fn pause(&mut self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        for tp in partitions {
            self.ensure_assigned(tp)?;
            if let Some(state) = self.assignment.get_mut(tp) {
                state.paused = true;
            }
        }
        Ok(())
    }

    pub fn resume(&mut self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        for tp in partitions {
            self.ensure_assigned(tp)?;
            if let Some(state) = self.assignment.get_mut(tp) {
                state.paused = false;
            }
        }
        Ok(())
    }

    /// The partitions paused now.
    pub fn paused(&self) -> Vec<TopicPartition> {
        self.assignment
            .iter()
            .filter(|(_, s)| s.paused)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    fn ensure_assigned(&self, tp: &TopicPartition) -> Result<(), ClientError> {
        if self.assignment.contains_key(tp) {
            Ok(())
        } else {
            Err(ClientError::InvalidUse(format!(
                "{tp} is not assigned to this consumer"
            )))
        }
    }

    /// Waits up to `timeout` for records and returns at most `max_poll_records`. Group
    /// membership (joining, heartbeats' rebalance signals, assignment changes and the
    /// rebalance listener) happens here, so call it at least every `max_poll_interval_ms`.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(group) = &self.group {
            group.mark_poll();
        }
        loop {
            self.maybe_auto_commit().await?;
            if !self.subscription.is_empty() {
                self.ensure_membership().await?;
            }
            if self.metadata_stale {
                if let Err(error) = self.refresh_metadata().await {
                    tracing::warn!(%error, "metadata refresh failed; retrying");
                    self.backoff().await;
                }
            }
            self.resolve_positions().await?;
            let records = self.drain_buffered();
            if !records.is_empty() {
                return Ok(records);
            }
            self.send_fetches().await;
            let rejoin = self.group.as_ref().map(|g| g.rejoin_signal());
            tokio::select! {
                outcome = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match outcome {
                        Some(Ok(outcome)) => self.handle_fetch(outcome).await?,
                        Some(Err(error)) => {
                            tracing::warn!(%error, "a fetch task failed");
                            self.fetching.clear();
                        }
                        None => {}
                    }
                }
                _ = async {
                    match rejoin {
                        Some(signal) => signal.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                // Nothing to wait for (no assignment yet, all paused): poll again soon.
                _ = tokio::time::sleep(Duration::from_millis(u64::from(self.options.retry_backoff_ms))), if self.in_flight.is_empty() => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(self.drain_buffered());
            }
        }
    }

    /// Up to `max_poll_records` buffered records of unpaused partitions, in partition
    /// order, advancing their positions.
    fn drain_buffered(&mut self) -> Vec<ConsumerRecord> {
        let mut out = Vec::new();
        let limit = self.options.max_poll_records.max(1);
        let partitions: Vec<TopicPartition> = self.buffered.keys().cloned().collect();
        for tp in partitions {
            if out.len() >= limit {
                break;
            }
            let Some(state) = self.assignment.get_mut(&tp) else {
                self.buffered.remove(&tp);
                continue;
            };
            if state.paused {
                continue;
            }
            let Some(buffer) = self.buffered.get_mut(&tp) else {
                continue;
            };
            while out.len() < limit {
                let Some(record) = buffer.records.pop_front() else {
                    break;
                };
                state.position = Some(record.offset + 1);
                out.push(record);
            }
            if buffer.records.is_empty() {
                state.position = Some(state.position.unwrap_or(0).max(buffer.next_offset));
                self.buffered.remove(&tp);
            }
        }
        out
    }

    fn buffered_bytes(&self) -> usize {
        self.buffered.values().map(|b| b.bytes).sum()
    }

    /// Starts one Fetch per leader without one in flight, for its assigned, unpaused
    /// partitions with a known position and nothing buffered. Nothing new is fetched while
    /// the buffer holds `fetch_max_bytes` or more.
    async fn send_fetches(&mut self) {
        if self.buffered_bytes() >= self.options.fetch_max_bytes as usize {
            return;
        }
        let mut by_leader: BTreeMap<String, Vec<(TopicPartition, i64)>> = BTreeMap::new();
        for (tp, state) in &self.assignment {
            let Some(position) = state.position else {
                continue;
            };
            if state.paused || self.buffered.contains_key(tp) {
                continue;
            }
            let Some(leader) = self.leader_of(tp) else {
                self.metadata_stale = true;
                continue;
            };
            if self.fetching.contains(&leader) {
                continue;
            }
            by_leader
                .entry(leader)
                .or_default()
                .push((tp.clone(), position));
        }
        let limits = FetchLimits {
            max_wait_ms: i32::try_from(self.options.fetch_max_wait_ms).unwrap_or(i32::MAX),
            min_bytes: i32::try_from(self.options.fetch_min_bytes).unwrap_or(i32::MAX),
            max_bytes: i32::try_from(self.options.fetch_max_bytes).unwrap_or(i32::MAX),
            partition_max_bytes: i32::try_from(self.options.max_partition_fetch_bytes)
                .unwrap_or(i32::MAX),
        };
        for (leader, partitions) in by_leader {
            let connection = match self.data_connection(&leader).await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%leader, %error, "cannot connect to a partition leader");
                    self.metadata_stale = true;
                    continue;
                }
            };
            tracing::trace!(%leader, partitions = partitions.len(), "fetch");
            self.fetching.insert(leader.clone());
            self.in_flight
                .spawn(fetch::fetch(connection, leader, partitions, limits));
        }
    }

    async fn handle_fetch(&mut self, outcome: FetchOutcome) -> Result<(), ClientError> {
        self.fetching.remove(&outcome.leader);
        let answers = match outcome.result {
            Ok(answers) => answers,
            Err(error) => {
                tracing::warn!(leader = %outcome.leader, %error, "fetch failed; reconnecting");
                self.connections.remove(&outcome.leader);
                self.metadata_stale = true;
                self.backoff().await;
                return Ok(());
            }
        };
        for (tp, answer) in answers {
            let asked = outcome
                .asked
                .iter()
                .find(|(p, _)| *p == tp)
                .map(|(_, o)| *o);
            let Some(state) = self.assignment.get_mut(&tp) else {
                continue; // revoked or unassigned meanwhile
            };
            if asked.is_none() || state.position != asked {
                continue; // sought meanwhile: the next fetch starts at the new position
            }
            match answer {
                PartitionFetch::Records {
                    records,
                    next_offset,
                    bytes,
                } => {
                    if records.is_empty() {
                        // Only control records or compacted gaps: move past them.
                        if let Some(position) = state.position {
                            state.position = Some(position.max(next_offset));
                        }
                    } else {
                        self.buffered.insert(
                            tp,
                            Buffered {
                                records: records.into(),
                                next_offset,
                                bytes,
                            },
                        );
                    }
                }
                PartitionFetch::Error(codes::OFFSET_OUT_OF_RANGE) => {
                    tracing::info!(%tp, position = ?state.position, reset = ?self.options.auto_offset_reset, "offset out of range; resetting");
                    state.position = None;
                    state.reset_needed = true;
                }
                PartitionFetch::Error(
                    code @ (codes::NOT_LEADER_OR_FOLLOWER
                    | codes::UNKNOWN_TOPIC_OR_PARTITION
                    | codes::LEADER_NOT_AVAILABLE
                    | codes::FENCED_LEADER_EPOCH
                    | codes::UNKNOWN_LEADER_EPOCH),
                ) => {
                    tracing::debug!(%tp, code, "partition moved or is not ready; refreshing metadata");
                    self.metadata_stale = true;
                }
                PartitionFetch::Error(code) => {
                    tracing::warn!(%tp, error = %broker_error("Fetch", code), "fetch error; retrying");
                    self.metadata_stale = true;
                }
            }
        }
        if self.metadata_stale {
            self.backoff().await;
        }
        Ok(())
    }

    /// The pause before a retry; borrows nothing, so `poll` stays `Send` with a
    /// listener that is only `Send`.
    fn backoff(&self) -> tokio::time::Sleep {
        tokio::time::sleep(Duration::from_millis(u64::from(
            self.options.retry_backoff_ms,
        )))
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.options.request_timeout_ms))
    }

    async fn data_connection(
        &mut self,
        address: &str,
    ) -> Result<Arc<PipelinedConnection>, ClientError> {
        if let Some(connection) = self.connections.get(address) {
            return Ok(connection.clone());
        }
        // The response timeout must outlast the broker's long poll.
        let timeout = self.request_timeout()
            + Duration::from_millis(u64::from(self.options.fetch_max_wait_ms));
        let connection = Arc::new(
            PipelinedConnection::connect_as(address, timeout, 4, &self.options.client_id).await?,
        );
        self.connections
            .insert(address.to_string(), connection.clone());
        Ok(connection)
    }

    fn leader_of(&self, tp: &TopicPartition) -> Option<String> {
        let leader = self.cluster.topics.get(&tp.topic)?.get(&tp.partition)?;
        self.cluster.brokers.get(leader).cloned()
    }

    /// The topics whose metadata the consumer needs: subscribed and assigned ones.
    fn wanted_topics(&self) -> Vec<String> {
        let mut topics: BTreeSet<String> = self.subscription.iter().cloned().collect();
        topics.extend(self.assignment.keys().map(|tp| tp.topic.clone()));
        topics.into_iter().collect()
    }

    async fn metadata_connection(&mut self) -> Result<&mut Connection, ClientError> {
        if self.metadata_connection.is_none() {
            let connection = Connection::connect_as(
                &self.bootstrap,
                self.request_timeout(),
                &self.options.client_id,
            )
            .await?;
            self.metadata_connection = Some(connection);
        }
        self.metadata_connection
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("no bootstrap connection".to_string()))
    }

    /// Reloads brokers and partition leaders of the wanted topics (plus `extra`).
    async fn refresh_metadata_for(&mut self, extra: &[String]) -> Result<(), ClientError> {
        let mut topics = self.wanted_topics();
        topics.extend(extra.iter().cloned());
        topics.sort();
        topics.dedup();
        let request = crate::topics::metadata_request(Some(&topics), false);
        let result = self
            .metadata_connection()
            .await?
            .send(1..=12, &request)
            .await;
        let (_, response) = match result {
            Ok(answer) => answer,
            Err(error) => {
                self.metadata_connection = None;
                return Err(error);
            }
        };
        self.cluster.brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let mut complete = true;
        for topic in response.topics {
            let Some(name) = topic.name.map(|n| n.as_str().to_string()) else {
                continue;
            };
            if topic.error_code != codes::NONE {
                tracing::debug!(topic = %name, error = %broker_error("Metadata", topic.error_code), "topic not available");
                self.cluster.topics.remove(&name);
                complete = false;
                continue;
            }
            let mut leaders = BTreeMap::new();
            for partition in topic.partitions {
                if partition.leader_id.0 < 0 {
                    complete = false;
                }
                leaders.insert(partition.partition_index, partition.leader_id.0);
            }
            self.cluster.topics.insert(name, leaders);
        }
        self.metadata_stale = !complete;
        Ok(())
    }

    async fn refresh_metadata(&mut self) -> Result<(), ClientError> {
        self.refresh_metadata_for(&[]).await
    }

    /// Resolves positions still unknown: from the committed offset (with a group) or
    /// `auto_offset_reset`; partitions after OFFSET_OUT_OF_RANGE go to `auto_offset_reset`.
    async fn resolve_positions(&mut self) -> Result<(), ClientError> {
        let unknown: Vec<TopicPartition> = self
            .assignment
            .iter()
            .filter(|(_, s)| s.position.is_none())
            .map(|(tp, _)| tp.clone())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let mut to_reset: Vec<TopicPartition> = Vec::new();
        let from_committed: Vec<TopicPartition> = unknown
            .iter()
            .filter(|tp| !self.assignment.get(*tp).is_some_and(|s| s.reset_needed))
            .cloned()
            .collect();
        to_reset.extend(
            unknown
                .iter()
                .filter(|tp| !from_committed.contains(tp))
                .cloned(),
        );
        if self.group.is_some() && !from_committed.is_empty() {
            let committed = self.committed(&from_committed).await?;
            for tp in from_committed {
                match committed.get(&tp) {
                    Some(offset) if *offset >= 0 => {
                        if let Some(state) = self.assignment.get_mut(&tp) {
                            state.position = Some(*offset);
                        }
                    }
                    _ => to_reset.push(tp),
                }
            }
        } else {
            to_reset.extend(from_committed);
        }
        if to_reset.is_empty() {
            return Ok(());
        }
        let timestamp = match self.options.auto_offset_reset {
            AutoOffsetReset::Earliest => admin_offsets::EARLIEST,
            AutoOffsetReset::Latest => admin_offsets::LATEST,
            AutoOffsetReset::None => {
                return Err(ClientError::NoOffset(
                    to_reset
                        .iter()
                        .map(|tp| tp.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                ))
            }
        };
        let offsets = self.list_offsets(&to_reset, timestamp).await?;
        for (tp, offset) in offsets {
            if let Some(state) = self.assignment.get_mut(&tp) {
                tracing::debug!(%tp, offset, "position reset");
                state.position = Some(offset);
                state.reset_needed = false;
            }
        }
        Ok(())
    }

    /// ListOffsets at each partition's leader; retried after a metadata refresh when a
    /// leader moved.
    async fn list_offsets(
        &mut self,
        partitions: &[TopicPartition],
        timestamp: i64,
    ) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
        let mut result = BTreeMap::new();
        let mut pending: Vec<TopicPartition> = partitions.to_vec();
        let deadline = Instant::now() + self.request_timeout();
        while !pending.is_empty() {
            if self.metadata_stale || pending.iter().any(|tp| self.leader_of(tp).is_none()) {
                let topics: Vec<String> = pending.iter().map(|tp| tp.topic.clone()).collect();
                if let Err(error) = self.refresh_metadata_for(&topics).await {
                    tracing::debug!(%error, "metadata refresh failed");
                }
            }
            let mut by_leader: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
            for tp in &pending {
                if let Some(leader) = self.leader_of(tp) {
                    by_leader.entry(leader).or_default().push(tp.clone());
                }
            }
            let mut retry = Vec::new();
            for (leader, tps) in by_leader {
                let connection = self.data_connection(&leader).await?;
                let mut topics: Vec<list_offsets_request::ListOffsetsTopic> = Vec::new();
                for tp in &tps {
                    let partition = list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(tp.partition)
                        .with_timestamp(timestamp);
                    match topics.iter_mut().find(|t| t.name.as_str() == tp.topic) {
                        Some(t) => t.partitions.push(partition),
                        None => topics.push(
                            list_offsets_request::ListOffsetsTopic::default()
                                .with_name(topic_name(&tp.topic))
                                .with_partitions(vec![partition]),
                        ),
                    }
                }
                let answer = call(&connection, 1..=7, |_| {
                    ListOffsetsRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_topics(topics)
                })
                .await;
                let response = match answer {
                    Ok((_, response)) => response,
                    Err(error) => {
                        tracing::warn!(%leader, %error, "ListOffsets failed; retrying");
                        self.connections.remove(&leader);
                        retry.extend(tps);
                        continue;
                    }
                };
                for topic in response.topics {
                    for partition in topic.partitions {
                        let tp =
                            TopicPartition::new(topic.name.as_str(), partition.partition_index);
                        match partition.error_code {
                            codes::NONE => {
                                result.insert(tp, partition.offset);
                            }
                            codes::NOT_LEADER_OR_FOLLOWER
                            | codes::UNKNOWN_TOPIC_OR_PARTITION
                            | codes::LEADER_NOT_AVAILABLE
                            | codes::FENCED_LEADER_EPOCH
                            | codes::UNKNOWN_LEADER_EPOCH => retry.push(tp),
                            code => return Err(broker_error(&format!("ListOffsets {tp}"), code)),
                        }
                    }
                }
            }
            retry.extend(
                pending
                    .iter()
                    .filter(|tp| self.leader_of(tp).is_none())
                    .cloned(),
            );
            pending = retry;
            if !pending.is_empty() {
                if Instant::now() >= deadline {
                    return Err(ClientError::Timeout(
                        self.request_timeout(),
                        format!(
                            "the offsets of {}",
                            pending
                                .iter()
                                .map(|tp| tp.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                self.metadata_stale = true;
                self.backoff().await;
            }
        }
        Ok(result)
    }

    async fn maybe_auto_commit(&mut self) -> Result<(), ClientError> {
        if !self.options.enable_auto_commit || self.group.is_none() {
            return Ok(());
        }
        let interval = Duration::from_millis(u64::from(self.options.auto_commit_interval_ms));
        if self.last_auto_commit.elapsed() < interval {
            return Ok(());
        }
        self.last_auto_commit = Instant::now();
        match self.commit_sync().await {
            Ok(()) => Ok(()),
            // A rebalance fails the commit; the partitions' new owners continue from the
            // last commit, and this member rejoins in this poll.
            Err(ClientError::CommitFailed(reason)) => {
                tracing::warn!(%reason, "auto-commit failed");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// The positions of every assigned partition whose position is known.
    pub fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        self.assignment
            .iter()
            .filter_map(|(tp, s)| s.position.map(|p| (tp.clone(), p)))
            .collect()
    }

    /// Commits the current positions (everything `poll` returned so far).
    pub async fn commit_sync(&mut self) -> Result<(), ClientError> {
        let positions = self.positions();
        if positions.is_empty() {
            return Ok(());
        }
        self.commit(&positions).await
    }

    /// Commits, per partition, the offset after the last of `records` (the next record to
    /// read), as "commit after processing" does.
    pub async fn commit_records(&mut self, records: &[ConsumerRecord]) -> Result<(), ClientError> {
        let mut offsets: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        for record in records {
            let next = record.offset + 1;
            let entry = offsets.entry(record.topic_partition()).or_insert(next);
            *entry = (*entry).max(next);
        }
        if offsets.is_empty() {
            return Ok(());
        }
        self.commit(&offsets).await
    }

    /// Stops fetching, leaves the group (LeaveGroup; not for a static member, whose
    /// assignment is kept for its restart) and commits the positions first when
    /// auto-commit is on.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.in_flight.abort_all();
        if self.options.enable_auto_commit && self.group.is_some() {
            if let Err(error) = self.commit_sync().await {
                tracing::warn!(%error, "final auto-commit failed");
            }
        }
        if !self.subscription.is_empty() {
            let owned: Vec<TopicPartition> = self.assignment.keys().cloned().collect();
            if !owned.is_empty() {
                if let Some(listener) = &mut self.listener {
                    let offsets = listener.on_partitions_revoked(&owned);
                    if !offsets.is_empty() {
                        let offsets = offsets.into_iter().collect();
                        if let Err(error) = self.commit(&offsets).await {
                            tracing::warn!(%error, "commit of the revoked partitions failed");
                        }
                    }
                }
            }
            self.leave_group().await;
        }
        Ok(())
    }
}

/// ListOffsets targets besides timestamps (the same values as [`crate::admin`]'s).
mod admin_offsets {
    pub const LATEST: i64 = crate::admin::LATEST;
    pub const EARLIEST: i64 = crate::admin::EARLIEST;
}
