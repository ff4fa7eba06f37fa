//! The classic-protocol state machine of one consumer group, synchronous and
//! deterministic: time comes in as `now` (milliseconds), and the answers that must wait
//! (a JoinGroup until the rebalance completes, a follower's SyncGroup until the leader
//! syncs) are oneshot senders parked on the member and completed by later calls.
//!
//! States and transitions follow Kafka's `GroupMetadata`:
//! Empty -> PreparingRebalance (a member joins) -> CompletingRebalance (every member
//! rejoined, or the rebalance timeout removed the rest) -> Stable (the leader synced) ->
//! PreparingRebalance (a member joins, leaves, changes its protocols or dies), and Dead
//! once the group is deleted.

use std::collections::HashMap;

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;

/// Group states as Kafka names them (DescribeGroups, ListGroups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Limits and timers of the coordinator (broker settings).
#[derive(Debug, Clone)]
pub struct GroupLimits {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub initial_rebalance_delay_ms: i32,
    pub max_size: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        GroupLimits {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: 1_000,
        }
    }
}

/// What a JoinGroup gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// (member id, group instance id, metadata): only for the leader.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    pub fn error(code: i16, member_id: &str) -> JoinResult {
        JoinResult {
            error: code,
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// What a SyncGroup gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(code: i16) -> SyncResult {
        SyncResult {
            error: code,
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

/// A JoinGroup request, decoded and version-normalised.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// KIP-394 (JoinGroup v4+): an unknown member must first get an id.
    pub require_known_member_id: bool,
}

/// The answer to a join: now, or once the rebalance completes.
pub enum JoinOutcome {
    Now(JoinResult),
    Later(oneshot::Receiver<JoinResult>),
}

/// The answer to a sync: now, or once the leader syncs.
pub enum SyncOutcome {
    Now(SyncResult),
    Later(oneshot::Receiver<SyncResult>),
}

#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    last_heartbeat_ms: i64,
    awaiting_join: Option<oneshot::Sender<JoinResult>>,
    awaiting_sync: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    fn alive_at(&self, now: i64) -> bool {
        self.awaiting_join.is_some()
            || self.awaiting_sync.is_some()
            || now < self.last_heartbeat_ms + i64::from(self.session_timeout_ms)
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// Members in join order.
    pub members: IndexMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, and when they expire.
    pending_members: HashMap<String, i64>,
    /// When the join phase ends at the latest (rebalance timeout).
    rebalance_deadline_ms: i64,
    /// Until when the first rebalance of an empty group waits for more members.
    initial_delay_until_ms: Option<i64>,
    /// When the group entered its current state.
    pub state_since_ms: i64,
    pub offsets: HashMap<(String, i32), CommittedOffset>,
}

impl Group {
    pub fn new(id: &str, now: i64) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: IndexMap::new(),
            pending_members: HashMap::new(),
            rebalance_deadline_ms: 0,
            initial_delay_until_ms: None,
            state_since_ms: now,
            offsets: HashMap::new(),
        }
    }

    fn transition(&mut self, state: GroupState, now: i64) {
        tracing::debug!(group = %self.id, from = self.state.name(), to = state.name(), generation = self.generation, "group state change");
        self.state = state;
        self.state_since_ms = now;
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The instance id's current member, if it is a static member.
    fn static_member(&self, instance_id: &str) -> Option<&str> {
        self.members
            .values()
            .find(|m| m.group_instance_id.as_deref() == Some(instance_id))
            .map(|m| m.id.as_str())
    }

    /// FENCED_INSTANCE_ID when the instance id belongs to another member id.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        match instance_id.and_then(|i| self.static_member(i)) {
            Some(current) => current != member_id,
            None => false,
        }
    }

    /// Protocols every member supports (ordered by the first member's preference).
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut candidates: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for member in members {
            candidates.retain(|c| member.protocols.iter().any(|(n, _)| n == c));
        }
        candidates
    }

    /// Kafka's vote: every member votes for its most preferred candidate; most votes
    /// wins, ties go to the earlier candidate.
    pub fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes = vec![0usize; candidates.len()];
        for member in self.members.values() {
            if let Some(index) = member
                .protocols
                .iter()
                .find_map(|(name, _)| candidates.iter().position(|c| c == name))
            {
                votes[index] += 1;
            }
        }
        let mut best: Option<(usize, usize)> = None;
        for (index, count) in votes.iter().enumerate() {
            if best.is_none_or(|(_, c)| *count > c) {
                best = Some((index, *count));
            }
        }
        best.and_then(|(index, _)| candidates.get(index).cloned())
    }

    /// Whether a joiner with these protocols can be part of the group.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(name, _)| candidates.contains(name))
    }

    fn new_member_id(client_id: &str) -> String {
        format!("{client_id}-{}", uuid::Uuid::new_v4())
    }

    /// JoinGroup.
    pub fn join(&mut self, now: i64, request: JoinRequest, limits: &GroupLimits) -> JoinOutcome {
        let error = |code: ResponseError, member_id: &str| {
            JoinOutcome::Now(JoinResult::error(code.code(), member_id))
        };
        if self.state == GroupState::Dead {
            return error(ResponseError::CoordinatorNotAvailable, &request.member_id);
        }
        if request.session_timeout_ms < limits.min_session_timeout_ms
            || request.session_timeout_ms > limits.max_session_timeout_ms
        {
            return error(ResponseError::InvalidSessionTimeout, &request.member_id);
        }
        if !self.supports(&request.protocol_type, &request.protocols) {
            return error(ResponseError::InconsistentGroupProtocol, &request.member_id);
        }
        let instance_id = request.group_instance_id.clone();
        if request.member_id.is_empty() {
            // A static member rejoining under a new id replaces (fences) its old id.
            if let Some(old) = instance_id
                .as_deref()
                .and_then(|i| self.static_member(i))
                .map(str::to_string)
            {
                let new_id = Self::new_member_id(&request.client_id);
                let leader_before = self.leader.clone().unwrap_or_default();
                self.replace_static_member(&old, &new_id);
                if self.state == GroupState::Stable {
                    return self.rejoin_static_member_without_rebalance(
                        now,
                        &new_id,
                        request,
                        leader_before,
                    );
                }
                return self.update_member(now, new_id, request, limits);
            }
            if self.members.len() + self.pending_members.len() >= limits.max_size {
                return error(ResponseError::GroupMaxSizeReached, "");
            }
            let new_id = Self::new_member_id(&request.client_id);
            if request.require_known_member_id && instance_id.is_none() {
                self.pending_members
                    .insert(new_id.clone(), now + i64::from(request.session_timeout_ms));
                return error(ResponseError::MemberIdRequired, &new_id);
            }
            return self.add_member(now, new_id, request, limits);
        }
        if self.pending_members.remove(&request.member_id).is_some() {
            if self.members.len() >= limits.max_size {
                return error(ResponseError::GroupMaxSizeReached, &request.member_id);
            }
            let id = request.member_id.clone();
            return self.add_member(now, id, request, limits);
        }
        if self.fenced(&request.member_id, instance_id.as_deref()) {
            return error(ResponseError::FencedInstanceId, &request.member_id);
        }
        if !self.members.contains_key(&request.member_id) {
            return error(ResponseError::UnknownMemberId, &request.member_id);
        }
        let id = request.member_id.clone();
        self.update_member(now, id, request, limits)
    }

    /// KIP-345: a static member that restarts while the group is Stable takes its old
    /// place without a rebalance. As Kafka does, the answer names the leader by its id
    /// from before the replacement, so a restarted leader does not assume leadership and
    /// recompute (and broadcast) an assignment; it syncs and gets its stored one.
    fn rejoin_static_member_without_rebalance(
        &mut self,
        now: i64,
        new_id: &str,
        request: JoinRequest,
        leader_before: String,
    ) -> JoinOutcome {
        let mut result = self.generation_result_for(new_id);
        if let Some(member) = self.members.get_mut(new_id) {
            member.last_heartbeat_ms = now;
            member.session_timeout_ms = request.session_timeout_ms;
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
            member.client_id = request.client_id;
            member.client_host = request.client_host;
            member.protocols = request.protocols;
        }
        result.leader = leader_before;
        result.members = Vec::new();
        tracing::info!(group = %self.id, member = new_id, "static member rejoined a stable group without a rebalance");
        JoinOutcome::Now(result)
    }

    fn replace_static_member(&mut self, old: &str, new_id: &str) {
        if let Some(mut member) = self.members.shift_remove(old) {
            if let Some(tx) = member.awaiting_join.take() {
                let _ = tx.send(JoinResult::error(
                    ResponseError::FencedInstanceId.code(),
                    old,
                ));
            }
            if let Some(tx) = member.awaiting_sync.take() {
                let _ = tx.send(SyncResult::error(ResponseError::FencedInstanceId.code()));
            }
            member.id = new_id.to_string();
            if self.leader.as_deref() == Some(old) {
                self.leader = Some(new_id.to_string());
            }
            self.members.insert(new_id.to_string(), member);
            tracing::info!(group = %self.id, old_member = old, new_member = new_id, "static member replaced");
        }
    }

    fn add_member(
        &mut self,
        now: i64,
        id: String,
        request: JoinRequest,
        limits: &GroupLimits,
    ) -> JoinOutcome {
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        tracing::info!(group = %self.id, member = %id, client_id = %request.client_id, "member joins");
        self.members.insert(
            id.clone(),
            Member {
                id,
                group_instance_id: request.group_instance_id,
                client_id: request.client_id,
                client_host: request.client_host,
                session_timeout_ms: request.session_timeout_ms,
                rebalance_timeout_ms: request.rebalance_timeout_ms,
                protocol_type: request.protocol_type,
                protocols: request.protocols,
                assignment: Bytes::new(),
                last_heartbeat_ms: now,
                awaiting_join: Some(tx),
                awaiting_sync: None,
            },
        );
        self.prepare_rebalance(now, limits);
        self.try_complete_join(now);
        JoinOutcome::Later(rx)
    }

    fn update_member(
        &mut self,
        now: i64,
        id: String,
        request: JoinRequest,
        limits: &GroupLimits,
    ) -> JoinOutcome {
        let is_leader = self.leader.as_deref() == Some(id.as_str());
        let state = self.state;
        let generation_result = self.generation_result_for(&id);
        let Some(member) = self.members.get_mut(&id) else {
            return JoinOutcome::Now(JoinResult::error(
                ResponseError::UnknownMemberId.code(),
                &id,
            ));
        };
        let unchanged = member.protocols == request.protocols;
        member.last_heartbeat_ms = now;
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        member.group_instance_id = request.group_instance_id;
        // Kafka: a follower rejoining a stable group with the same protocols (or any
        // member during CompletingRebalance) gets the current generation again.
        let repeat = unchanged
            && (state == GroupState::CompletingRebalance
                || (state == GroupState::Stable && !is_leader));
        if repeat {
            return JoinOutcome::Now(generation_result);
        }
        member.protocols = request.protocols;
        let (tx, rx) = oneshot::channel();
        if let Some(old) = member.awaiting_join.replace(tx) {
            let _ = old.send(JoinResult::error(
                ResponseError::UnknownMemberId.code(),
                &id,
            ));
        }
        self.prepare_rebalance(now, limits);
        self.try_complete_join(now);
        JoinOutcome::Later(rx)
    }

    /// The join answer of the current generation for one member.
    fn generation_result_for(&self, member_id: &str) -> JoinResult {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.group_instance_id.clone(),
                        m.metadata(&protocol),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    /// Starts a rebalance (if not already in one).
    fn prepare_rebalance(&mut self, now: i64, limits: &GroupLimits) {
        let max_rebalance_timeout = self
            .members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms.max(0)))
            .max()
            .unwrap_or(0);
        match self.state {
            GroupState::PreparingRebalance => {
                // A member joining during the initial delay extends it (up to the
                // rebalance timeout), as Kafka's InitialDelayedJoin does.
                if let Some(until) = self.initial_delay_until_ms {
                    let extended = now + i64::from(limits.initial_rebalance_delay_ms);
                    self.initial_delay_until_ms =
                        Some(until.max(extended.min(self.rebalance_deadline_ms)));
                }
                return;
            }
            GroupState::Dead => return,
            GroupState::CompletingRebalance => {
                for member in self.members.values_mut() {
                    if let Some(tx) = member.awaiting_sync.take() {
                        let _ =
                            tx.send(SyncResult::error(ResponseError::RebalanceInProgress.code()));
                    }
                }
            }
            GroupState::Empty | GroupState::Stable => {}
        }
        let was_empty = self.state == GroupState::Empty;
        self.rebalance_deadline_ms = now + max_rebalance_timeout;
        self.initial_delay_until_ms = if was_empty && limits.initial_rebalance_delay_ms > 0 {
            Some(
                (now + i64::from(limits.initial_rebalance_delay_ms))
                    .min(self.rebalance_deadline_ms),
            )
        } else {
            None
        };
        self.transition(GroupState::PreparingRebalance, now);
    }

    /// Completes the join phase if every member rejoined (and the initial delay is
    /// over), or the rebalance timeout passed (members that did not rejoin are removed).
    fn try_complete_join(&mut self, now: i64) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some());
        let delay_over = self.initial_delay_until_ms.is_none_or(|until| now >= until);
        let timed_out = now >= self.rebalance_deadline_ms;
        if !(timed_out || all_joined && delay_over) {
            return;
        }
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin within the rebalance timeout");
            self.members.shift_remove(&id);
        }
        self.initial_delay_until_ms = None;
        self.generation = self.generation.saturating_add(1);
        if self.members.is_empty() {
            self.leader = None;
            self.protocol = None;
            self.protocol_type = None;
            self.transition(GroupState::Empty, now);
            return;
        }
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.protocol = self.select_protocol();
        self.transition(GroupState::CompletingRebalance, now);
        tracing::info!(group = %self.id, generation = self.generation, members = self.members.len(), protocol = ?self.protocol, "rebalance: join phase complete");
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.generation_result_for(&id);
            if let Some(member) = self.members.get_mut(&id) {
                member.last_heartbeat_ms = now;
                member.assignment = Bytes::new();
                if let Some(tx) = member.awaiting_join.take() {
                    let _ = tx.send(result);
                }
            }
        }
    }

    /// SyncGroup.
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        now: i64,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        let error = |code: ResponseError| SyncOutcome::Now(SyncResult::error(code.code()));
        if self.state == GroupState::Dead {
            return error(ResponseError::CoordinatorNotAvailable);
        }
        if self.fenced(member_id, instance_id) {
            return error(ResponseError::FencedInstanceId);
        }
        if !self.members.contains_key(member_id) {
            return error(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return error(ResponseError::IllegalGeneration);
        }
        if protocol_type.is_some_and(|t| self.protocol_type.as_deref() != Some(t))
            || protocol.is_some_and(|p| self.protocol.as_deref() != Some(p))
        {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        let ok = |assignment: Bytes, group: &Group| SyncResult {
            error: 0,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            assignment,
        };
        match self.state {
            GroupState::Empty | GroupState::Dead => error(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => error(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let assignment = self
                    .members
                    .get_mut(member_id)
                    .map(|m| {
                        m.last_heartbeat_ms = now;
                        m.assignment.clone()
                    })
                    .unwrap_or_default();
                SyncOutcome::Now(ok(assignment, self))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(member) = self.members.get_mut(member_id) {
                    member.last_heartbeat_ms = now;
                    if let Some(old) = member.awaiting_sync.replace(tx) {
                        let _ =
                            old.send(SyncResult::error(ResponseError::RebalanceInProgress.code()));
                    }
                }
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for member in self.members.values_mut() {
                        // A member the leader gave nothing gets an empty assignment.
                        member.assignment = given.remove(&member.id).unwrap_or_default();
                    }
                    self.transition(GroupState::Stable, now);
                    tracing::info!(group = %self.id, generation = self.generation, "rebalance: assignment received; group stable");
                    let protocol_type = self.protocol_type.clone();
                    let protocol = self.protocol.clone();
                    for member in self.members.values_mut() {
                        if let Some(tx) = member.awaiting_sync.take() {
                            let _ = tx.send(SyncResult {
                                error: 0,
                                protocol_type: protocol_type.clone(),
                                protocol: protocol.clone(),
                                assignment: member.assignment.clone(),
                            });
                        }
                    }
                }
                SyncOutcome::Later(rx)
            }
        }
    }

    /// Heartbeat: returns an error code.
    pub fn heartbeat(
        &mut self,
        now: i64,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        if self.state == GroupState::Dead {
            return ResponseError::CoordinatorNotAvailable.code();
        }
        if self.fenced(member_id, instance_id) {
            return ResponseError::FencedInstanceId.code();
        }
        let state = self.state;
        let current = self.generation;
        let Some(member) = self.members.get_mut(member_id) else {
            return ResponseError::UnknownMemberId.code();
        };
        if generation != current {
            return ResponseError::IllegalGeneration.code();
        }
        match state {
            GroupState::Empty | GroupState::Dead => ResponseError::UnknownMemberId.code(),
            GroupState::PreparingRebalance => {
                member.last_heartbeat_ms = now;
                ResponseError::RebalanceInProgress.code()
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.last_heartbeat_ms = now;
                0
            }
        }
    }

    /// LeaveGroup of one member (by member id, or by instance id for static members).
    pub fn leave(
        &mut self,
        now: i64,
        member_id: &str,
        instance_id: Option<&str>,
        limits: &GroupLimits,
    ) -> i16 {
        if self.state == GroupState::Dead {
            return ResponseError::CoordinatorNotAvailable.code();
        }
        let id = match instance_id {
            Some(instance) => match self.static_member(instance) {
                Some(current) if member_id.is_empty() || current == member_id => {
                    current.to_string()
                }
                Some(_) => return ResponseError::FencedInstanceId.code(),
                None => return ResponseError::UnknownMemberId.code(),
            },
            None => member_id.to_string(),
        };
        if self.pending_members.remove(&id).is_some() {
            return 0;
        }
        if !self.members.contains_key(&id) {
            return ResponseError::UnknownMemberId.code();
        }
        tracing::info!(group = %self.id, member = %id, "member leaves");
        self.remove_member(now, &id, limits);
        0
    }

    fn remove_member(&mut self, now: i64, id: &str, limits: &GroupLimits) {
        if let Some(mut member) = self.members.shift_remove(id) {
            if let Some(tx) = member.awaiting_join.take() {
                let _ = tx.send(JoinResult::error(ResponseError::UnknownMemberId.code(), id));
            }
            if let Some(tx) = member.awaiting_sync.take() {
                let _ = tx.send(SyncResult::error(ResponseError::UnknownMemberId.code()));
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.keys().next().cloned();
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, limits)
            }
            _ => {}
        }
        self.try_complete_join(now);
    }

    /// Timers: expires dead members (session timeout), pending member ids, and ends
    /// join phases whose time is up. Returns whether anything changed.
    pub fn tick(&mut self, now: i64, limits: &GroupLimits) -> bool {
        let before = (self.state, self.generation, self.members.len());
        self.pending_members.retain(|_, expires| *expires > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.alive_at(now))
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member(now, &id, limits);
        }
        self.try_complete_join(now);
        before != (self.state, self.generation, self.members.len())
    }

    /// Offsets may be committed by a member of the current generation, or by anyone
    /// ("simple" commit: generation < 0) while the group has no members.
    pub fn validate_commit(
        &mut self,
        now: i64,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        if self.state == GroupState::Dead {
            return ResponseError::CoordinatorNotAvailable.code();
        }
        if generation < 0 && self.members.is_empty() {
            return 0;
        }
        if self.pending_members.contains_key(member_id) {
            return ResponseError::RebalanceInProgress.code();
        }
        if self.fenced(member_id, instance_id) {
            return ResponseError::FencedInstanceId.code();
        }
        let state = self.state;
        let Some(member) = self.members.get_mut(member_id) else {
            return ResponseError::UnknownMemberId.code();
        };
        if generation != self.generation {
            return ResponseError::IllegalGeneration.code();
        }
        match state {
            GroupState::CompletingRebalance => ResponseError::RebalanceInProgress.code(),
            _ => {
                member.last_heartbeat_ms = now;
                0
            }
        }
    }

    /// Whether a member's subscription (consumer protocol) names the topic.
    pub fn subscribed_to(&self, topic: &str) -> bool {
        if self.protocol_type.as_deref() != Some("consumer") {
            return false;
        }
        let Some(protocol) = &self.protocol else {
            return false;
        };
        self.members.values().any(|m| {
            consumer_subscription_topics(&m.metadata(protocol))
                .iter()
                .any(|t| t == topic)
        })
    }

    /// Marks the group dead (DeleteGroups); waiting members are answered.
    pub fn mark_dead(&mut self, now: i64) {
        self.transition(GroupState::Dead, now);
    }
}

/// Topics of a consumer-protocol subscription (version i16, topics array of strings);
/// anything unreadable gives no topics.
pub fn consumer_subscription_topics(metadata: &[u8]) -> Vec<String> {
    let mut reader = crate::group::store::Reader::new(metadata);
    let mut topics = Vec::new();
    if reader.i16().is_none() {
        return topics;
    }
    let Some(count) = reader.i32() else {
        return topics;
    };
    for _ in 0..count.clamp(0, 100_000) {
        match reader.string() {
            Some(Some(topic)) => topics.push(topic),
            _ => break,
        }
    }
    topics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> GroupLimits {
        GroupLimits {
            initial_rebalance_delay_ms: 0,
            ..GroupLimits::default()
        }
    }

    fn request(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_string(),
            group_instance_id: None,
            client_id: "client".to_string(),
            client_host: "/127.0.0.1".to_string(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".to_string(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
                .collect(),
            require_known_member_id: true,
        }
    }

    fn now_result(outcome: JoinOutcome) -> JoinResult {
        match outcome {
            JoinOutcome::Now(result) => result,
            JoinOutcome::Later(_) => panic!("expected an immediate answer"),
        }
    }

    fn later(outcome: JoinOutcome) -> oneshot::Receiver<JoinResult> {
        match outcome {
            JoinOutcome::Later(rx) => rx,
            JoinOutcome::Now(result) => panic!("expected to wait, got {result:?}"),
        }
    }

    /// MEMBER_ID_REQUIRED, then the rejoin; returns the member id and the receiver.
    fn handshake(
        group: &mut Group,
        now: i64,
        protocols: &[&str],
    ) -> (String, oneshot::Receiver<JoinResult>) {
        let first = now_result(group.join(now, request("", protocols), &limits()));
        assert_eq!(first.error, ResponseError::MemberIdRequired.code());
        assert!(first.member_id.starts_with("client-"));
        let rx = later(group.join(now, request(&first.member_id, protocols), &limits()));
        (first.member_id, rx)
    }

    fn sync_now(outcome: SyncOutcome) -> SyncResult {
        match outcome {
            SyncOutcome::Now(result) => result,
            SyncOutcome::Later(mut rx) => rx.try_recv().expect("sync answered"),
        }
    }

    #[test]
    fn two_members_join_sync_and_heartbeat() {
        let mut group = Group::new("g", 0);
        let (a, mut rx_a) = handshake(&mut group, 0, &["range"]);
        // Alone and no initial delay: the join completes at once.
        let join_a = rx_a.try_recv().unwrap();
        assert_eq!(join_a.generation, 1);
        assert_eq!(join_a.leader, a);
        assert_eq!(group.state, GroupState::CompletingRebalance);
        let sync_a = sync_now(group.sync(
            1,
            1,
            &a,
            None,
            None,
            None,
            vec![(a.clone(), Bytes::from_static(b"A"))],
        ));
        assert_eq!(sync_a.assignment, Bytes::from_static(b"A"));
        assert_eq!(group.state, GroupState::Stable);
        // B joins: rebalance; A learns by heartbeat and rejoins.
        let (b, mut rx_b) = handshake(&mut group, 2, &["range"]);
        assert_eq!(group.state, GroupState::PreparingRebalance);
        assert_eq!(
            group.heartbeat(3, 1, &a, None),
            ResponseError::RebalanceInProgress.code()
        );
        assert!(rx_b.try_recv().is_err());
        let mut rx_a = later(group.join(4, request(&a, &["range"]), &limits()));
        let join_a = rx_a.try_recv().unwrap();
        let join_b = rx_b.try_recv().unwrap();
        assert_eq!(join_a.generation, 2);
        assert_eq!(join_a.leader, a, "the leader is kept when it rejoins");
        assert_eq!(join_a.members.len(), 2);
        assert!(join_b.members.is_empty());
        assert_eq!(join_b.protocol.as_deref(), Some("range"));
        // The follower waits for the leader's sync; B gets no assignment: empty bytes.
        let SyncOutcome::Later(mut rx_sync_b) = group.sync(5, 2, &b, None, None, None, vec![])
        else {
            panic!("follower waits")
        };
        assert!(rx_sync_b.try_recv().is_err());
        assert_eq!(group.heartbeat(5, 2, &b, None), 0);
        let sync_a = sync_now(group.sync(
            6,
            2,
            &a,
            None,
            Some("consumer"),
            Some("range"),
            vec![(a.clone(), Bytes::from_static(b"A2"))],
        ));
        assert_eq!(sync_a.assignment, Bytes::from_static(b"A2"));
        let sync_b = rx_sync_b.try_recv().unwrap();
        assert_eq!(sync_b.error, 0);
        assert!(sync_b.assignment.is_empty());
        assert_eq!(
            group.heartbeat(7, 1, &a, None),
            ResponseError::IllegalGeneration.code()
        );
        assert_eq!(
            group.heartbeat(7, 2, "nobody", None),
            ResponseError::UnknownMemberId.code()
        );
        assert_eq!(
            sync_now(group.sync(7, 2, &a, None, Some("other"), None, vec![])).error,
            ResponseError::InconsistentGroupProtocol.code()
        );
    }

    #[test]
    fn session_expiry_and_leave_trigger_rebalance() {
        let mut group = Group::new("g", 0);
        let (a, _rx) = handshake(&mut group, 0, &["range"]);
        sync_now(group.sync(0, 1, &a, None, None, None, vec![]));
        let (b, mut rx_b) = handshake(&mut group, 0, &["range"]);
        let _rx_a = later(group.join(0, request(&a, &["range"]), &limits()));
        rx_b.try_recv().unwrap();
        sync_now(group.sync(0, 2, &a, None, None, None, vec![]));
        assert_eq!(group.state, GroupState::Stable);
        // B heartbeats, A does not: after A's 10 s session, A is gone.
        assert_eq!(group.heartbeat(9_000, 2, &b, None), 0);
        assert!(!group.tick(9_999, &limits()));
        assert!(group.tick(10_000, &limits()));
        assert!(!group.members.contains_key(&a));
        assert_eq!(group.state, GroupState::PreparingRebalance);
        assert_eq!(group.leader.as_deref(), Some(b.as_str()));
        // B never rejoins: the rebalance timeout (30 s) removes it; the group is Empty.
        assert!(group.tick(9_000 + 10_000 + 30_000, &limits()));
        assert_eq!(group.state, GroupState::Empty);
        assert!(group.members.is_empty());
        // Leave of an unknown member.
        assert_eq!(
            group.leave(0, &b, None, &limits()),
            ResponseError::UnknownMemberId.code()
        );
    }

    #[test]
    fn leave_rebalances_the_rest() {
        let mut group = Group::new("g", 0);
        let (a, _) = handshake(&mut group, 0, &["range"]);
        sync_now(group.sync(0, 1, &a, None, None, None, vec![]));
        let (b, mut rx_b) = handshake(&mut group, 0, &["range"]);
        let mut rx_a = later(group.join(0, request(&a, &["range"]), &limits()));
        rx_b.try_recv().unwrap();
        rx_a.try_recv().unwrap();
        sync_now(group.sync(0, 2, &a, None, None, None, vec![]));
        assert_eq!(group.leave(1, &a, None, &limits()), 0);
        assert_eq!(group.state, GroupState::PreparingRebalance);
        let mut rx_b = later(group.join(2, request(&b, &["range"]), &limits()));
        let join = rx_b.try_recv().unwrap();
        assert_eq!(join.generation, 3);
        assert_eq!(join.leader, b);
    }

    #[test]
    fn protocol_selection_and_inconsistent_protocols() {
        let mut group = Group::new("g", 0);
        let lim = GroupLimits {
            initial_rebalance_delay_ms: 1_000,
            ..GroupLimits::default()
        };
        let join = |group: &mut Group, protocols: &[&str]| {
            let mut req = request("", protocols);
            req.require_known_member_id = false;
            later(group.join(0, req, &lim))
        };
        let mut rx1 = join(&mut group, &["roundrobin", "range"]);
        let mut rx2 = join(&mut group, &["range", "roundrobin"]);
        let mut rx3 = join(&mut group, &["range", "sticky"]);
        // Initial delay still running: nobody answered yet.
        assert!(rx1.try_recv().is_err());
        let mut bad = request("", &["cooperative-sticky"]);
        bad.require_known_member_id = false;
        assert_eq!(
            now_result(group.join(0, bad, &lim)).error,
            ResponseError::InconsistentGroupProtocol.code()
        );
        assert!(group.tick(1_000, &lim));
        let r1 = rx1.try_recv().unwrap();
        rx2.try_recv().unwrap();
        rx3.try_recv().unwrap();
        assert_eq!(r1.protocol.as_deref(), Some("range"), "2 votes to 1");
        assert_eq!(r1.members.len(), 3);
        assert_eq!(r1.members[0].2, Bytes::from_static(b"meta-range"));
    }

    #[test]
    fn session_timeout_bounds_and_unknown_member() {
        let mut group = Group::new("g", 0);
        let mut req = request("", &["range"]);
        req.session_timeout_ms = 10;
        assert_eq!(
            now_result(group.join(0, req, &limits())).error,
            ResponseError::InvalidSessionTimeout.code()
        );
        assert_eq!(
            now_result(group.join(0, request("ghost", &["range"]), &limits())).error,
            ResponseError::UnknownMemberId.code()
        );
    }

    #[test]
    fn static_member_replacement_fences_the_old_id() {
        let mut group = Group::new("g", 0);
        let mut req = request("", &["range"]);
        req.group_instance_id = Some("instance-1".to_string());
        // Static members get their id without the MEMBER_ID_REQUIRED round trip.
        let mut rx = later(group.join(0, req.clone(), &limits()));
        let old = rx.try_recv().unwrap().member_id;
        sync_now(group.sync(
            0,
            1,
            &old,
            Some("instance-1"),
            None,
            None,
            vec![(old.clone(), Bytes::from_static(b"partitions-of-1"))],
        ));
        let generation = group.generation;
        // Rejoining a Stable group: no rebalance, same generation, and the leader is
        // named by its old id so the restarted member does not reassign.
        let new = now_result(group.join(1, req, &limits()));
        assert_eq!(new.error, 0);
        assert_ne!(new.member_id, old);
        assert_eq!(new.generation, generation);
        assert_eq!(new.leader, old);
        assert!(new.members.is_empty());
        assert_eq!(group.state, GroupState::Stable);
        // It syncs and gets its stored assignment back.
        let sync = sync_now(group.sync(
            1,
            generation,
            &new.member_id,
            Some("instance-1"),
            None,
            None,
            vec![],
        ));
        assert_eq!(sync.error, 0);
        assert_eq!(sync.assignment, Bytes::from_static(b"partitions-of-1"));
        assert_eq!(
            group.heartbeat(2, new.generation, &old, Some("instance-1")),
            ResponseError::FencedInstanceId.code()
        );
        assert_eq!(
            group.leave(2, &old, Some("instance-1"), &limits()),
            ResponseError::FencedInstanceId.code()
        );
        assert_eq!(group.leave(2, "", Some("instance-1"), &limits()), 0);
        assert!(group.members.is_empty());
    }

    #[test]
    fn commit_validation() {
        let mut group = Group::new("g", 0);
        assert_eq!(
            group.validate_commit(0, -1, "", None),
            0,
            "simple commit, no members"
        );
        let (a, _) = handshake(&mut group, 0, &["range"]);
        assert_eq!(
            group.validate_commit(0, 1, &a, None),
            ResponseError::RebalanceInProgress.code()
        );
        assert_eq!(
            group.validate_commit(0, -1, "", None),
            ResponseError::UnknownMemberId.code()
        );
        sync_now(group.sync(0, 1, &a, None, None, None, vec![]));
        assert_eq!(group.validate_commit(0, 1, &a, None), 0);
        assert_eq!(
            group.validate_commit(0, 0, &a, None),
            ResponseError::IllegalGeneration.code()
        );
    }

    #[test]
    fn subscription_topics_are_read_from_consumer_metadata() {
        let mut metadata = vec![0, 1, 0, 0, 0, 2];
        for topic in ["a", "bc"] {
            metadata.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            metadata.extend_from_slice(topic.as_bytes());
        }
        assert_eq!(consumer_subscription_topics(&metadata), vec!["a", "bc"]);
        assert!(consumer_subscription_topics(&[0, 1, 0x7f, 0, 0, 0]).is_empty());
    }
}
