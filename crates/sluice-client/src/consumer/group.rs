//! Classic group membership for the consumer: FindCoordinator, JoinGroup (with KIP-394's
//! MEMBER_ID_REQUIRED round), the leader's assignment, SyncGroup, a background heartbeat,
//! LeaveGroup, and the offsets kept at the coordinator (OffsetFetch, OffsetCommit).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::assignor::{self, MemberSubscription};
use super::{broker_error, call, codes, topic_name, Consumer};
use crate::connection::ClientError;
use crate::pipeline::PipelinedConnection;
use crate::record::TopicPartition;

/// The group protocol type of consumers.
const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// ConsumerProtocolSubscription version sent: v1 carries the owned partitions that
/// cooperative rebalancing needs.
const SUBSCRIPTION_VERSION: i16 = 1;
/// The highest ConsumerProtocol version this client decodes; newer versions only add
/// fields at the end, so they are read as this one (as the Java client does).
const PROTOCOL_VERSION_MAX: i16 = 3;

/// What the heartbeat task tells `poll`.
pub(crate) struct Shared {
    rejoin: AtomicBool,
    /// The member was fenced (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID) or left after
    /// `max_poll_interval_ms`: its partitions are lost, not revoked.
    lost: AtomicBool,
    /// Join again with an empty member id.
    reset_member: AtomicBool,
    coordinator_gone: AtomicBool,
    signal: Arc<Notify>,
    started: Instant,
    last_poll_ms: AtomicU64,
}

impl Shared {
    fn wake(&self) {
        self.rejoin.store(true, Ordering::SeqCst);
        self.signal.notify_one();
    }

    fn since_poll(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_poll_ms.load(Ordering::SeqCst)))
    }
}

/// The consumer's membership in its group.
pub(crate) struct GroupMembership {
    pub(crate) id: String,
    instance_id: Option<String>,
    coordinator: Option<Arc<PipelinedConnection>>,
    member_id: String,
    generation_id: i32,
    /// The assignor of the current generation.
    protocol: Option<String>,
    joined: bool,
    shared: Arc<Shared>,
    heartbeat: Option<JoinHandle<()>>,
}

impl GroupMembership {
    pub(crate) fn new(id: String, instance_id: Option<String>) -> GroupMembership {
        GroupMembership {
            id,
            instance_id,
            coordinator: None,
            member_id: String::new(),
            generation_id: -1,
            protocol: None,
            joined: false,
            shared: Arc::new(Shared {
                rejoin: AtomicBool::new(false),
                lost: AtomicBool::new(false),
                reset_member: AtomicBool::new(false),
                coordinator_gone: AtomicBool::new(false),
                signal: Arc::new(Notify::new()),
                started: Instant::now(),
                last_poll_ms: AtomicU64::new(0),
            }),
            heartbeat: None,
        }
    }

    pub(crate) fn request_rejoin(&self) {
        self.shared.wake();
    }

    pub(crate) fn rejoin_signal(&self) -> Arc<Notify> {
        self.shared.signal.clone()
    }

    pub(crate) fn mark_poll(&self) {
        let now = self.shared.started.elapsed().as_millis() as u64;
        self.shared.last_poll_ms.store(now, Ordering::SeqCst);
    }

    fn needs_join(&self) -> bool {
        !self.joined || self.shared.rejoin.load(Ordering::SeqCst)
    }

    fn stop_heartbeat(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }

    /// The generation and member id to commit under: those of the current generation for
    /// a subscribed member, -1 and "" for a consumer with manual assignment.
    fn commit_identity(&self) -> (i32, String) {
        if self.joined {
            (self.generation_id, self.member_id.clone())
        } else {
            (-1, String::new())
        }
    }
}

impl Drop for GroupMembership {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

/// Encodes a consumer protocol message with its version prefix.
fn encode_versioned<T: Encodable>(message: &T, version: i16) -> Result<Bytes, ClientError> {
    let mut buffer = BytesMut::new();
    buffer.put_i16(version);
    message.encode(&mut buffer, version).map_err(|e| {
        ClientError::Protocol(format!("encoding consumer protocol v{version}: {e}"))
    })?;
    Ok(buffer.freeze())
}

/// Decodes a consumer protocol message behind its version prefix.
fn decode_versioned<T: Decodable>(bytes: &Bytes) -> Result<(i16, T), ClientError> {
    if bytes.len() < 2 {
        return Err(ClientError::Protocol(
            "empty consumer protocol message".to_string(),
        ));
    }
    let mut body = bytes.clone();
    let version = body.get_i16();
    if version < 0 {
        return Err(ClientError::Protocol(format!(
            "consumer protocol version {version}"
        )));
    }
    let message = T::decode(&mut body, version.min(PROTOCOL_VERSION_MAX)).map_err(|e| {
        ClientError::Protocol(format!("decoding consumer protocol v{version}: {e}"))
    })?;
    Ok((version, message))
}

pub(crate) fn encode_subscription(
    topics: &[String],
    owned: &[TopicPartition],
) -> Result<Bytes, ClientError> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in owned {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let subscription = ConsumerProtocolSubscription::default()
        .with_topics(
            topics
                .iter()
                .map(|t| StrBytes::from_string(t.clone()))
                .collect(),
        )
        .with_owned_partitions(
            by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    consumer_protocol_subscription::TopicPartition::default()
                        .with_topic(topic_name(topic))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    encode_versioned(&subscription, SUBSCRIPTION_VERSION)
}

pub(crate) fn decode_subscription(bytes: &Bytes) -> Result<(i16, MemberSubscription), ClientError> {
    let (version, subscription): (i16, ConsumerProtocolSubscription) = decode_versioned(bytes)?;
    Ok((
        version,
        MemberSubscription {
            topics: subscription
                .topics
                .iter()
                .map(|t| t.as_str().to_string())
                .collect(),
            owned: subscription
                .owned_partitions
                .iter()
                .flat_map(|t| {
                    let topic = t.topic.as_str().to_string();
                    t.partitions
                        .iter()
                        .map(move |p| TopicPartition::new(topic.clone(), *p))
                })
                .collect(),
        },
    ))
}

pub(crate) fn encode_assignment(
    partitions: &BTreeSet<TopicPartition>,
    version: i16,
) -> Result<Bytes, ClientError> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(topic_name(topic))
                    .with_partitions(partitions)
            })
            .collect(),
    );
    encode_versioned(&assignment, version)
}

pub(crate) fn decode_assignment(bytes: &Bytes) -> Result<BTreeSet<TopicPartition>, ClientError> {
    // An empty assignment may come as no bytes at all.
    if bytes.is_empty() {
        return Ok(BTreeSet::new());
    }
    let (_, assignment): (i16, ConsumerProtocolAssignment) = decode_versioned(bytes)?;
    Ok(assignment
        .assigned_partitions
        .iter()
        .flat_map(|t| {
            let topic = t.topic.as_str().to_string();
            t.partitions
                .iter()
                .map(move |p| TopicPartition::new(topic.clone(), *p))
        })
        .collect())
}

/// Sends heartbeats every `interval` until the coordinator reports a rebalance, the member
/// is fenced or the application stops polling for `max_poll_interval`; then tells `poll`
/// and ends (the next generation starts a new task).
#[allow(clippy::too_many_arguments)]
async fn heartbeat_loop(
    connection: Arc<PipelinedConnection>,
    shared: Arc<Shared>,
    group_id: String,
    member_id: String,
    generation_id: i32,
    instance_id: Option<String>,
    interval: Duration,
    max_poll_interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        if shared.since_poll() > max_poll_interval {
            tracing::warn!(
                group = %group_id,
                "poll was not called within max_poll_interval_ms; leaving the group so others take the partitions (process faster, lower max_poll_records or raise max_poll_interval_ms)"
            );
            if instance_id.is_none() {
                let _ = call(&connection, 0..=5, |v| {
                    leave_request(v, &group_id, &member_id, None)
                })
                .await;
            }
            shared.lost.store(true, Ordering::SeqCst);
            shared.reset_member.store(true, Ordering::SeqCst);
            shared.wake();
            return;
        }
        let answer = call(&connection, 0..=4, |version| {
            let request = HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group_id.clone())))
                .with_generation_id(generation_id)
                .with_member_id(StrBytes::from_string(member_id.clone()));
            if version >= 3 {
                request.with_group_instance_id(instance_id.clone().map(StrBytes::from_string))
            } else {
                request
            }
        })
        .await;
        let code = match answer {
            Ok((_, response)) => response.error_code,
            Err(error) => {
                tracing::warn!(group = %group_id, %error, "heartbeat failed; finding the coordinator again");
                shared.coordinator_gone.store(true, Ordering::SeqCst);
                shared.wake();
                return;
            }
        };
        match code {
            codes::NONE => {}
            codes::REBALANCE_IN_PROGRESS => {
                tracing::debug!(group = %group_id, "rebalance in progress; rejoining");
                shared.wake();
                return;
            }
            codes::ILLEGAL_GENERATION => {
                shared.lost.store(true, Ordering::SeqCst);
                shared.wake();
                return;
            }
            codes::UNKNOWN_MEMBER_ID | codes::FENCED_INSTANCE_ID => {
                shared.lost.store(true, Ordering::SeqCst);
                shared.reset_member.store(true, Ordering::SeqCst);
                shared.wake();
                return;
            }
            codes::NOT_COORDINATOR | codes::COORDINATOR_NOT_AVAILABLE => {
                shared.coordinator_gone.store(true, Ordering::SeqCst);
                shared.wake();
                return;
            }
            code => {
                tracing::warn!(group = %group_id, error = %broker_error("Heartbeat", code), "heartbeat error");
            }
        }
    }
}

fn leave_request(
    version: i16,
    group_id: &str,
    member_id: &str,
    instance_id: Option<&str>,
) -> LeaveGroupRequest {
    let request = LeaveGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group_id.to_string())));
    if version >= 3 {
        request.with_members(vec![leave_group_request::MemberIdentity::default()
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_group_instance_id(
                instance_id.map(|i| StrBytes::from_string(i.to_string())),
            )])
    } else {
        request.with_member_id(StrBytes::from_string(member_id.to_string()))
    }
}

/// What one JoinGroup/SyncGroup round ended with.
enum Round {
    Joined,
    Retry,
}

impl Consumer {
    fn group_mut(&mut self) -> Result<&mut GroupMembership, ClientError> {
        self.group.as_mut().ok_or_else(|| {
            ClientError::InvalidUse("this needs a group_id in ConsumerOptions".to_string())
        })
    }

    /// The coordinator of the group, found with FindCoordinator when unknown.
    async fn coordinator(&mut self) -> Result<Arc<PipelinedConnection>, ClientError> {
        if let Some(connection) = self.group_mut()?.coordinator.clone() {
            return Ok(connection);
        }
        let group_id = self.group_mut()?.id.clone();
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let request = FindCoordinatorRequest::default()
                .with_key(StrBytes::from_string(group_id.clone()))
                .with_key_type(0);
            let answer = match self.metadata_connection().await {
                Ok(connection) => connection.send(0..=3, &request).await,
                Err(error) => Err(error),
            };
            let retriable = match answer {
                Ok((_, response)) if response.error_code == codes::NONE => {
                    let address = format!("{}:{}", response.host.as_str(), response.port);
                    // JoinGroup waits up to the rebalance timeout for the others.
                    let timeout = self.request_timeout()
                        + Duration::from_millis(u64::from(self.options.rebalance_timeout_ms));
                    match PipelinedConnection::connect_as(
                        &address,
                        timeout,
                        4,
                        &self.options.client_id,
                    )
                    .await
                    {
                        Ok(connection) => {
                            tracing::debug!(group = %group_id, coordinator = %address, "found the coordinator");
                            let connection = Arc::new(connection);
                            self.group_mut()?.coordinator = Some(connection.clone());
                            return Ok(connection);
                        }
                        Err(error) => error,
                    }
                }
                Ok((_, response)) => match response.error_code {
                    codes::COORDINATOR_NOT_AVAILABLE
                    | codes::NOT_COORDINATOR
                    | codes::COORDINATOR_LOAD_IN_PROGRESS => {
                        broker_error("FindCoordinator", response.error_code)
                    }
                    code => {
                        return Err(broker_error(
                            &format!("FindCoordinator for group {group_id}"),
                            code,
                        ))
                    }
                },
                Err(error) => {
                    self.metadata_connection = None;
                    error
                }
            };
            if Instant::now() >= deadline {
                return Err(retriable);
            }
            tracing::debug!(group = %group_id, error = %retriable, "coordinator not available yet");
            self.backoff().await;
        }
    }

    fn forget_coordinator(&mut self) {
        if let Some(group) = &mut self.group {
            group.coordinator = None;
        }
    }

    /// Joins or rejoins the group when needed (first poll, a rebalance, a fence).
    pub(super) async fn ensure_membership(&mut self) -> Result<(), ClientError> {
        loop {
            let Some(group) = &self.group else {
                return Ok(());
            };
            if !group.needs_join() {
                return Ok(());
            }
            self.prepare_rejoin().await?;
            match self.join_round().await? {
                Round::Joined => {}
                Round::Retry => {
                    // prepare_rejoin cleared the flag; this round did not complete.
                    if let Some(group) = &self.group {
                        group.shared.rejoin.store(true, Ordering::SeqCst);
                    }
                    self.backoff().await
                }
            }
        }
    }

    /// Stops heartbeats and settles the partitions before JoinGroup: lost ones are dropped
    /// (the listener hears `on_partitions_lost`); under an eager protocol every partition is
    /// revoked; partitions of topics no longer subscribed are revoked.
    async fn prepare_rejoin(&mut self) -> Result<(), ClientError> {
        let group = self.group_mut()?;
        group.stop_heartbeat();
        group.shared.rejoin.store(false, Ordering::SeqCst);
        if group.shared.coordinator_gone.swap(false, Ordering::SeqCst) {
            group.coordinator = None;
        }
        if group.shared.reset_member.swap(false, Ordering::SeqCst) {
            group.member_id.clear();
            group.generation_id = -1;
        }
        let lost = group.shared.lost.swap(false, Ordering::SeqCst);
        let eager = group
            .protocol
            .as_deref()
            .is_some_and(|p| !assignor::is_cooperative(p));
        let owned: Vec<TopicPartition> = self.assignment.keys().cloned().collect();
        if lost && !owned.is_empty() {
            tracing::warn!(
                partitions = owned.len(),
                "partitions lost: this member was fenced from its group"
            );
            if let Some(listener) = &mut self.listener {
                listener.on_partitions_lost(&owned);
            }
            self.assignment.clear();
            self.buffered.clear();
        } else if eager && !owned.is_empty() {
            self.revoke(&owned).await;
        } else {
            let unsubscribed: Vec<TopicPartition> = owned
                .into_iter()
                .filter(|tp| !self.subscription.contains(&tp.topic))
                .collect();
            if !unsubscribed.is_empty() {
                self.revoke(&unsubscribed).await;
            }
        }
        Ok(())
    }

    /// Commits what auto-commit and the listener want for `partitions`, then drops them.
    async fn revoke(&mut self, partitions: &[TopicPartition]) {
        let mut offsets: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        if self.options.enable_auto_commit {
            for tp in partitions {
                if let Some(position) = self.assignment.get(tp).and_then(|s| s.position) {
                    offsets.insert(tp.clone(), position);
                }
            }
        }
        if let Some(listener) = &mut self.listener {
            offsets.extend(listener.on_partitions_revoked(partitions));
        }
        if !offsets.is_empty() {
            if let Err(error) = self.commit(&offsets).await {
                tracing::warn!(%error, "commit of revoked partitions failed; their next owner re-reads from the last commit");
            }
        }
        for tp in partitions {
            self.assignment.remove(tp);
            self.buffered.remove(tp);
        }
        tracing::info!(partitions = ?partitions.iter().map(|tp| tp.to_string()).collect::<Vec<_>>(), "partitions revoked");
    }

    async fn join_round(&mut self) -> Result<Round, ClientError> {
        let coordinator = self.coordinator().await?;
        let owned: Vec<TopicPartition> = self.assignment.keys().cloned().collect();
        let metadata = encode_subscription(&self.subscription, &owned)?;
        let (group_id, instance_id, member_id) = {
            let group = self.group_mut()?;
            (
                group.id.clone(),
                group.instance_id.clone(),
                group.member_id.clone(),
            )
        };
        let protocols: Vec<join_group_request::JoinGroupRequestProtocol> = self
            .options
            .partition_assignment_strategy
            .iter()
            .map(|name| {
                join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_string(name.clone()))
                    .with_metadata(metadata.clone())
            })
            .collect();
        let session_timeout_ms = i32::try_from(self.options.session_timeout_ms).unwrap_or(i32::MAX);
        let rebalance_timeout_ms =
            i32::try_from(self.options.rebalance_timeout_ms).unwrap_or(i32::MAX);
        let answer = call(&coordinator, 0..=9, |version| {
            let mut request = JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group_id.clone())))
                .with_session_timeout_ms(session_timeout_ms)
                .with_member_id(StrBytes::from_string(member_id.clone()))
                .with_protocol_type(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE))
                .with_protocols(protocols);
            if version >= 1 {
                request = request.with_rebalance_timeout_ms(rebalance_timeout_ms);
            }
            if version >= 5 {
                request =
                    request.with_group_instance_id(instance_id.clone().map(StrBytes::from_string));
            }
            request
        })
        .await;
        let response = match answer {
            Ok((_, response)) => response,
            Err(error) => {
                tracing::warn!(group = %group_id, %error, "JoinGroup failed; finding the coordinator again");
                self.forget_coordinator();
                return Ok(Round::Retry);
            }
        };
        if response.error_code != codes::NONE {
            tracing::debug!(group = %group_id, error = %broker_error("JoinGroup", response.error_code), "join answered with an error");
        }
        match response.error_code {
            codes::NONE => {}
            codes::MEMBER_ID_REQUIRED => {
                // KIP-394: the coordinator assigned an id; join again with it at once.
                self.group_mut()?.member_id = response.member_id.as_str().to_string();
                return Box::pin(self.join_round()).await;
            }
            codes::UNKNOWN_MEMBER_ID => {
                let group = self.group_mut()?;
                group.member_id.clear();
                group.generation_id = -1;
                return Ok(Round::Retry);
            }
            codes::REBALANCE_IN_PROGRESS
            | codes::COORDINATOR_LOAD_IN_PROGRESS
            | codes::ILLEGAL_GENERATION => return Ok(Round::Retry),
            codes::NOT_COORDINATOR | codes::COORDINATOR_NOT_AVAILABLE => {
                self.forget_coordinator();
                return Ok(Round::Retry);
            }
            code => return Err(broker_error(&format!("JoinGroup {group_id}"), code)),
        }
        let member_id = response.member_id.as_str().to_string();
        let generation_id = response.generation_id;
        let protocol = response
            .protocol_name
            .as_ref()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| assignor::RANGE.to_string());
        tracing::debug!(group = %group_id, %member_id, generation_id, %protocol, leader = %response.leader.as_str(), "joined");
        let assignments = if response.leader.as_str() == member_id {
            self.lead(&protocol, &response.members).await?
        } else {
            Vec::new()
        };
        tracing::debug!(group = %group_id, %member_id, generation_id, "sending SyncGroup");
        let answer = call(&coordinator, 0..=5, |version| {
            let mut request = SyncGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group_id.clone())))
                .with_generation_id(generation_id)
                .with_member_id(StrBytes::from_string(member_id.clone()))
                .with_assignments(assignments);
            if version >= 3 {
                request =
                    request.with_group_instance_id(instance_id.clone().map(StrBytes::from_string));
            }
            if version >= 5 {
                request = request
                    .with_protocol_type(Some(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE)))
                    .with_protocol_name(Some(StrBytes::from_string(protocol.clone())));
            }
            request
        })
        .await;
        let response = match answer {
            Ok((_, response)) => response,
            Err(error) => {
                tracing::warn!(group = %group_id, %error, "SyncGroup failed; finding the coordinator again");
                self.forget_coordinator();
                return Ok(Round::Retry);
            }
        };
        if response.error_code != codes::NONE {
            tracing::debug!(group = %group_id, error = %broker_error("SyncGroup", response.error_code), "sync failed; joining again");
        }
        match response.error_code {
            codes::NONE => {}
            codes::REBALANCE_IN_PROGRESS | codes::ILLEGAL_GENERATION => return Ok(Round::Retry),
            codes::UNKNOWN_MEMBER_ID => {
                let group = self.group_mut()?;
                group.member_id.clear();
                group.generation_id = -1;
                return Ok(Round::Retry);
            }
            codes::NOT_COORDINATOR | codes::COORDINATOR_NOT_AVAILABLE => {
                self.forget_coordinator();
                return Ok(Round::Retry);
            }
            code => return Err(broker_error(&format!("SyncGroup {group_id}"), code)),
        }
        let assigned: BTreeSet<TopicPartition> = decode_assignment(&response.assignment)?
            .into_iter()
            .filter(|tp| self.subscription.contains(&tp.topic))
            .collect();
        {
            let group = self.group_mut()?;
            group.member_id = member_id.clone();
            group.generation_id = generation_id;
            group.protocol = Some(protocol.clone());
            group.joined = true;
        }
        self.apply_assignment(&protocol, assigned).await;
        self.start_heartbeat(coordinator)?;
        tracing::info!(group = %group_id, generation_id, %protocol, partitions = self.assignment.len(), "group joined");
        Ok(Round::Joined)
    }

    /// The leader's part: decodes every member's subscription and runs the assignor.
    async fn lead(
        &mut self,
        protocol: &str,
        members: &[join_group_response::JoinGroupResponseMember],
    ) -> Result<Vec<sync_group_request::SyncGroupRequestAssignment>, ClientError> {
        let mut subscriptions: BTreeMap<String, MemberSubscription> = BTreeMap::new();
        let mut version = PROTOCOL_VERSION_MAX;
        for member in members {
            match decode_subscription(&member.metadata) {
                Ok((v, subscription)) => {
                    version = version.min(v);
                    subscriptions.insert(member.member_id.as_str().to_string(), subscription);
                }
                Err(error) => {
                    tracing::warn!(member = %member.member_id.as_str(), %error, "unreadable subscription; assigning nothing to it");
                    subscriptions.insert(
                        member.member_id.as_str().to_string(),
                        MemberSubscription::default(),
                    );
                }
            }
        }
        let topics: Vec<String> = subscriptions
            .values()
            .flat_map(|s| s.topics.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.refresh_metadata_for(&topics).await?;
        let partitions_per_topic: BTreeMap<String, i32> = topics
            .iter()
            .filter_map(|t| {
                self.cluster
                    .topics
                    .get(t)
                    .map(|p| (t.clone(), p.len() as i32))
            })
            .collect();
        let assignment = assignor::assign(protocol, &subscriptions, &partitions_per_topic);
        tracing::debug!(protocol, ?assignment, "leader computed the assignment");
        assignment
            .iter()
            .map(|(member, partitions)| {
                Ok(sync_group_request::SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member.clone()))
                    .with_assignment(encode_assignment(partitions, version.clamp(0, 1))?))
            })
            .collect()
    }

    /// Applies the assignment of a new generation. Cooperative: revokes what is gone
    /// (then rejoins, so the coordinator can hand those partitions over), adds what is new.
    async fn apply_assignment(&mut self, protocol: &str, assigned: BTreeSet<TopicPartition>) {
        let owned: BTreeSet<TopicPartition> = self.assignment.keys().cloned().collect();
        let revoked: Vec<TopicPartition> = owned.difference(&assigned).cloned().collect();
        let added: Vec<TopicPartition> = assigned.difference(&owned).cloned().collect();
        if !revoked.is_empty() {
            self.revoke(&revoked).await;
            if assignor::is_cooperative(protocol) {
                if let Some(group) = &self.group {
                    group.shared.rejoin.store(true, Ordering::SeqCst);
                }
            }
        }
        for tp in &added {
            self.assignment.entry(tp.clone()).or_default();
        }
        if !added.is_empty() {
            self.metadata_stale = true;
        }
        tracing::info!(added = ?added.iter().map(|tp| tp.to_string()).collect::<Vec<_>>(), "partitions assigned");
        if let Some(listener) = &mut self.listener {
            listener.on_partitions_assigned(&added);
        }
    }

    fn start_heartbeat(
        &mut self,
        coordinator: Arc<PipelinedConnection>,
    ) -> Result<(), ClientError> {
        let interval = Duration::from_millis(u64::from(self.options.heartbeat_interval_ms));
        let max_poll_interval = Duration::from_millis(u64::from(self.options.max_poll_interval_ms));
        let group = self.group_mut()?;
        group.stop_heartbeat();
        group.heartbeat = Some(tokio::spawn(heartbeat_loop(
            coordinator,
            group.shared.clone(),
            group.id.clone(),
            group.member_id.clone(),
            group.generation_id,
            group.instance_id.clone(),
            interval,
            max_poll_interval,
        )));
        Ok(())
    }

    /// LeaveGroup, so the others rebalance at once instead of after the session timeout.
    /// A static member (group_instance_id) stays: a restart keeps its partitions.
    pub(super) async fn leave_group(&mut self) {
        let Some(group) = &mut self.group else { return };
        group.stop_heartbeat();
        if !group.joined || group.instance_id.is_some() {
            return;
        }
        let (group_id, member_id) = (group.id.clone(), group.member_id.clone());
        group.joined = false;
        let Some(coordinator) = group.coordinator.clone() else {
            return;
        };
        match call(&coordinator, 0..=5, |v| {
            leave_request(v, &group_id, &member_id, None)
        })
        .await
        {
            Ok((_, response)) if response.error_code != codes::NONE => {
                tracing::debug!(error = %broker_error("LeaveGroup", response.error_code), "leave failed")
            }
            Ok(_) => tracing::debug!(group = %group_id, "left the group"),
            Err(error) => tracing::debug!(%error, "LeaveGroup failed"),
        }
    }

    /// The committed offsets of `partitions` (those without a commit are absent).
    pub async fn committed(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
        let group_id = self.group_mut()?.id.clone();
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        let topics: Vec<offset_fetch_request::OffsetFetchRequestTopic> = by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partition_indexes(partitions)
            })
            .collect();
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let coordinator = self.coordinator().await?;
            let answer = call(&coordinator, 1..=7, |_| {
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(group_id.clone())))
                    .with_topics(Some(topics.clone()))
            })
            .await;
            let retry_error = match answer {
                Err(error) => {
                    self.forget_coordinator();
                    error
                }
                Ok((_, response)) => {
                    let mut code = response.error_code;
                    let mut offsets = BTreeMap::new();
                    for topic in &response.topics {
                        for partition in &topic.partitions {
                            if partition.error_code != codes::NONE {
                                code = partition.error_code;
                            } else if partition.committed_offset >= 0 {
                                offsets.insert(
                                    TopicPartition::new(
                                        topic.name.as_str(),
                                        partition.partition_index,
                                    ),
                                    partition.committed_offset,
                                );
                            }
                        }
                    }
                    match code {
                        codes::NONE => return Ok(offsets),
                        codes::NOT_COORDINATOR | codes::COORDINATOR_NOT_AVAILABLE => {
                            self.forget_coordinator();
                            broker_error("OffsetFetch", code)
                        }
                        // COORDINATOR_LOAD_IN_PROGRESS, UNSTABLE_OFFSET_COMMIT: retriable.
                        codes::COORDINATOR_LOAD_IN_PROGRESS | 88 => {
                            broker_error("OffsetFetch", code)
                        }
                        code => {
                            return Err(broker_error(
                                &format!("OffsetFetch for group {group_id}"),
                                code,
                            ))
                        }
                    }
                }
            };
            if Instant::now() >= deadline {
                return Err(retry_error);
            }
            self.backoff().await;
        }
    }

    /// Commits `offsets` (the next offset to read per partition) for the group. Fails with
    /// [`ClientError::CommitFailed`] when the group rebalanced meanwhile: those partitions
    /// may belong to another member now.
    pub async fn commit(
        &mut self,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), ClientError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let (group_id, instance_id, (generation_id, member_id)) = {
            let group = self.group_mut()?;
            (
                group.id.clone(),
                group.instance_id.clone(),
                group.commit_identity(),
            )
        };
        let mut by_topic: BTreeMap<&str, Vec<offset_commit_request::OffsetCommitRequestPartition>> =
            BTreeMap::new();
        for (tp, offset) in offsets {
            by_topic.entry(&tp.topic).or_default().push(
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(tp.partition)
                    .with_committed_offset(*offset),
            );
        }
        let topics: Vec<offset_commit_request::OffsetCommitRequestTopic> = by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(partitions)
            })
            .collect();
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let coordinator = self.coordinator().await?;
            let answer = call(&coordinator, 2..=8, |version| {
                let request = OffsetCommitRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(group_id.clone())))
                    .with_generation_id_or_member_epoch(generation_id)
                    .with_member_id(StrBytes::from_string(member_id.clone()))
                    .with_topics(topics.clone());
                if version >= 7 && generation_id >= 0 {
                    request.with_group_instance_id(instance_id.clone().map(StrBytes::from_string))
                } else {
                    request
                }
            })
            .await;
            let retry_error = match answer {
                Err(error) => {
                    self.forget_coordinator();
                    error
                }
                Ok((_, response)) => {
                    let code = response
                        .topics
                        .iter()
                        .flat_map(|t| t.partitions.iter())
                        .map(|p| p.error_code)
                        .find(|c| *c != codes::NONE)
                        .unwrap_or(codes::NONE);
                    match code {
                        codes::NONE => {
                            tracing::debug!(group = %group_id, partitions = offsets.len(), "committed");
                            return Ok(());
                        }
                        codes::REBALANCE_IN_PROGRESS
                        | codes::ILLEGAL_GENERATION
                        | codes::UNKNOWN_MEMBER_ID => {
                            if let Some(group) = &self.group {
                                if code == codes::UNKNOWN_MEMBER_ID {
                                    group.shared.reset_member.store(true, Ordering::SeqCst);
                                }
                                group.request_rejoin();
                            }
                            return Err(ClientError::CommitFailed(
                                broker_error(&format!("OffsetCommit for group {group_id}"), code)
                                    .to_string(),
                            ));
                        }
                        codes::NOT_COORDINATOR | codes::COORDINATOR_NOT_AVAILABLE => {
                            self.forget_coordinator();
                            broker_error("OffsetCommit", code)
                        }
                        codes::COORDINATOR_LOAD_IN_PROGRESS => broker_error("OffsetCommit", code),
                        code => {
                            return Err(broker_error(
                                &format!("OffsetCommit for group {group_id}"),
                                code,
                            ))
                        }
                    }
                }
            };
            if Instant::now() >= deadline {
                return Err(retry_error);
            }
            self.backoff().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_round_trips_with_owned_partitions() {
        let topics = vec!["a".to_string(), "b".to_string()];
        let owned = vec![TopicPartition::new("a", 0), TopicPartition::new("a", 2)];
        let bytes = encode_subscription(&topics, &owned).unwrap();
        assert_eq!(&bytes[..2], &SUBSCRIPTION_VERSION.to_be_bytes());
        let (version, decoded) = decode_subscription(&bytes).unwrap();
        assert_eq!(version, SUBSCRIPTION_VERSION);
        assert_eq!(decoded.topics, topics.into_iter().collect());
        assert_eq!(decoded.owned, owned);
    }

    #[test]
    fn assignment_round_trips_and_empty_bytes_mean_nothing() {
        let partitions: BTreeSet<_> =
            [TopicPartition::new("t", 1), TopicPartition::new("u", 0)].into();
        let bytes = encode_assignment(&partitions, 1).unwrap();
        assert_eq!(decode_assignment(&bytes).unwrap(), partitions);
        assert!(decode_assignment(&Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn a_newer_subscription_version_is_read_as_the_newest_known() {
        let subscription = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("t")])
            .with_generation_id(7);
        let mut bytes = BytesMut::new();
        bytes.put_i16(3);
        subscription.encode(&mut bytes, 3).unwrap();
        let (version, decoded) = decode_subscription(&bytes.freeze()).unwrap();
        assert_eq!(version, 3);
        assert!(decoded.topics.contains("t"));
    }
}
