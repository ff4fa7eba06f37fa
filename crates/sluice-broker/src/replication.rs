//! The replication bookkeeping of one partition on this broker (the ISR part of Kafka's
//! `Partition`): its role from the controller's image, and on the leader what each
//! follower has fetched, which decides the high watermark and ISR changes.
//!
//! Pure logic, no I/O and no clock of its own (times are passed in), so every rule is
//! tested deterministically below. [`crate::partition::Partition`] holds one behind a
//! mutex and acts on its answers.
//!
//! The rules, as in Kafka:
//! - The high watermark is the smallest log end offset over the *maximal* ISR: the ISR of
//!   the image plus replicas a pending AlterPartition adds (so the high watermark never
//!   passes a replica that is about to count as in sync), plus followers that are caught up
//!   but not yet in the ISR. It only ever moves up while this broker leads.
//! - A follower is caught up when it fetched at or past the leader's log end, or at or
//!   past where the log ended at its previous fetch (it has everything that was there
//!   then). One that has not been caught up for `replica.lag.time.max.ms` while behind the
//!   leader's log end leaves the ISR.
//! - A follower joins the ISR once it has everything up to the high watermark and the start
//!   of the current leader epoch.

use std::collections::BTreeMap;

use sluice_controller::image::PartitionRegistration;
use sluice_controller::records::NO_LEADER;

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerState {
    /// The follower's log end offset (its last fetch offset); -1 before it fetched in this
    /// leader epoch.
    pub log_end_offset: i64,
    /// When the follower was last caught up (see the module docs).
    pub last_caught_up_ms: i64,
    /// The leader's log end offset and the time at the follower's previous fetch.
    last_fetch_leader_log_end_offset: i64,
    last_fetch_ms: i64,
}

impl FollowerState {
    fn new(now_ms: i64) -> FollowerState {
        FollowerState {
            log_end_offset: -1,
            last_caught_up_ms: now_ms,
            last_fetch_leader_log_end_offset: -1,
            last_fetch_ms: now_ms,
        }
    }
}

/// This broker's role for the partition, from the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower {
        leader: i32,
    },
    /// No leader (offline), or this broker is not (yet) told.
    Offline,
}

/// What applying a new registration changed for this broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    /// Leader of a new epoch (from follower, offline, or re-elected).
    BecameLeader,
    /// Follower of `leader` under a new epoch or a new leader.
    BecameFollower {
        leader: i32,
    },
    WentOffline,
}

/// An ISR change the leader asked the controller for and has not seen in the image yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingIsr {
    isr: Vec<i32>,
    requested_ms: i64,
}

/// A request for the controller (AlterPartition), as the leader sees its partition now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<i32>,
}

#[derive(Debug)]
pub struct ReplicaSet {
    node_id: i32,
    role: Role,
    leader_epoch: i32,
    partition_epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    /// Only while leader: every other replica.
    followers: BTreeMap<i32, FollowerState>,
    pending_isr: Option<PendingIsr>,
    /// The log end when this broker became leader of `leader_epoch`.
    epoch_start_offset: i64,
}

impl ReplicaSet {
    pub fn new(node_id: i32) -> ReplicaSet {
        ReplicaSet {
            node_id,
            role: Role::Offline,
            leader_epoch: -1,
            partition_epoch: -1,
            replicas: Vec::new(),
            isr: Vec::new(),
            followers: BTreeMap::new(),
            pending_isr: None,
            epoch_start_offset: 0,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn replicas(&self) -> &[i32] {
        &self.replicas
    }

    /// The ISR as the image has it.
    pub fn isr(&self) -> &[i32] {
        &self.isr
    }

    pub fn follower(&self, replica: i32) -> Option<&FollowerState> {
        self.followers.get(&replica)
    }

    /// Takes the partition's registration from a new image. `log_end_offset` is this
    /// broker's log end (where a new leader epoch starts).
    pub fn apply(
        &mut self,
        registration: &PartitionRegistration,
        log_end_offset: i64,
        now_ms: i64,
    ) -> Transition {
        let role = match registration.leader {
            leader if leader == self.node_id => Role::Leader,
            NO_LEADER => Role::Offline,
            leader => Role::Follower { leader },
        };
        let new_epoch = registration.leader_epoch != self.leader_epoch;
        let transition = match role {
            _ if role == self.role && !new_epoch => Transition::Unchanged,
            Role::Leader => Transition::BecameLeader,
            Role::Follower { leader } => Transition::BecameFollower { leader },
            Role::Offline => Transition::WentOffline,
        };
        if registration.partition_epoch != self.partition_epoch || new_epoch {
            // Whatever was pending was either applied (it is in this image) or refused.
            self.pending_isr = None;
        }
        self.role = role;
        self.leader_epoch = registration.leader_epoch;
        self.partition_epoch = registration.partition_epoch;
        self.replicas = registration.replicas.clone();
        self.isr = registration.isr.clone();
        match role {
            Role::Leader => {
                if transition == Transition::BecameLeader {
                    self.epoch_start_offset = log_end_offset;
                    self.followers.clear();
                }
                // Replicas added by a reassignment start unknown; removed ones are forgotten.
                let others: Vec<i32> = self
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| *r != self.node_id)
                    .collect();
                self.followers.retain(|r, _| others.contains(r));
                for replica in others {
                    self.followers
                        .entry(replica)
                        .or_insert_with(|| FollowerState::new(now_ms));
                }
            }
            Role::Follower { .. } | Role::Offline => self.followers.clear(),
        }
        transition
    }

    /// The ISR plus replicas a pending change adds.
    fn maximal_isr(&self) -> Vec<i32> {
        let mut isr = self.isr.clone();
        if let Some(pending) = &self.pending_isr {
            for replica in &pending.isr {
                if !isr.contains(replica) {
                    isr.push(*replica);
                }
            }
        }
        isr
    }

    /// The high watermark the leader may publish now (never below `current`), given its own
    /// log end offset. `None` when not leader.
    pub fn high_watermark(
        &self,
        current: i64,
        leader_log_end_offset: i64,
        now_ms: i64,
        lag_max_ms: i64,
    ) -> Option<i64> {
        if !self.is_leader() {
            return None;
        }
        let maximal = self.maximal_isr();
        let mut candidate = leader_log_end_offset;
        for (replica, state) in &self.followers {
            let in_isr = maximal.contains(replica);
            let caught_up = state.log_end_offset >= 0
                && now_ms.saturating_sub(state.last_caught_up_ms) <= lag_max_ms;
            if in_isr || (caught_up && state.log_end_offset >= current) {
                // An ISR member that has not fetched in this epoch holds the mark where it is.
                candidate = candidate.min(state.log_end_offset.max(-1));
            }
        }
        Some(candidate.max(current))
    }

    /// Records a follower's fetch at `fetch_offset` (it has every offset below). False when
    /// `replica` is not a follower of this leader.
    pub fn record_fetch(
        &mut self,
        replica: i32,
        fetch_offset: i64,
        leader_log_end_offset: i64,
        now_ms: i64,
    ) -> bool {
        if !self.is_leader() {
            return false;
        }
        let Some(state) = self.followers.get_mut(&replica) else {
            return false;
        };
        if fetch_offset >= leader_log_end_offset {
            state.last_caught_up_ms = now_ms;
        } else if fetch_offset >= state.last_fetch_leader_log_end_offset {
            state.last_caught_up_ms = state.last_caught_up_ms.max(state.last_fetch_ms);
        }
        state.log_end_offset = fetch_offset;
        state.last_fetch_leader_log_end_offset = leader_log_end_offset;
        state.last_fetch_ms = now_ms;
        true
    }

    /// Whether a change is in flight (asked within `retry_ms`): no second one is asked.
    fn change_in_flight(&self, now_ms: i64, retry_ms: i64) -> bool {
        self.pending_isr
            .as_ref()
            .is_some_and(|p| now_ms.saturating_sub(p.requested_ms) < retry_ms)
    }

    /// The ISR with `replica` added, when it has caught up to the high watermark and the
    /// start of this leader epoch and is not in the ISR yet.
    pub fn expansion(
        &self,
        replica: i32,
        high_watermark: i64,
        now_ms: i64,
        retry_ms: i64,
    ) -> Option<IsrChange> {
        if !self.is_leader()
            || self.isr.contains(&replica)
            || self.change_in_flight(now_ms, retry_ms)
        {
            return None;
        }
        let state = self.followers.get(&replica)?;
        if state.log_end_offset < high_watermark || state.log_end_offset < self.epoch_start_offset {
            return None;
        }
        let mut new_isr = self.isr.clone();
        new_isr.push(replica);
        Some(self.change(new_isr))
    }

    /// The ISR without followers that lag: not caught up for more than `lag_max_ms` and
    /// behind the leader's log end.
    pub fn shrink(
        &self,
        leader_log_end_offset: i64,
        now_ms: i64,
        lag_max_ms: i64,
        retry_ms: i64,
    ) -> Option<IsrChange> {
        if !self.is_leader() || self.change_in_flight(now_ms, retry_ms) {
            return None;
        }
        let lagging = |replica: &i32| {
            self.followers.get(replica).is_some_and(|state| {
                state.log_end_offset != leader_log_end_offset
                    && now_ms.saturating_sub(state.last_caught_up_ms) > lag_max_ms
            })
        };
        if !self.isr.iter().any(lagging) {
            return None;
        }
        let new_isr = self.isr.iter().copied().filter(|r| !lagging(r)).collect();
        Some(self.change(new_isr))
    }

    fn change(&self, new_isr: Vec<i32>) -> IsrChange {
        IsrChange {
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            new_isr,
        }
    }

    /// Notes that `change` was sent to the controller.
    pub fn isr_change_sent(&mut self, change: &IsrChange, now_ms: i64) {
        if change.partition_epoch == self.partition_epoch {
            self.pending_isr = Some(PendingIsr {
                isr: change.new_isr.clone(),
                requested_ms: now_ms,
            });
        }
    }

    /// The controller refused or did not answer: the next check may ask again.
    pub fn isr_change_failed(&mut self, change: &IsrChange) {
        if self
            .pending_isr
            .as_ref()
            .is_some_and(|p| p.isr == change.new_isr)
        {
            self.pending_isr = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG_MS: i64 = 10_000;
    const RETRY_MS: i64 = 5_000;

    fn registration(leader: i32, leader_epoch: i32, isr: &[i32]) -> PartitionRegistration {
        PartitionRegistration {
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            leader,
            leader_epoch,
            partition_epoch: leader_epoch,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }

    fn leader_of_three() -> ReplicaSet {
        let mut set = ReplicaSet::new(1);
        assert_eq!(
            set.apply(&registration(1, 0, &[1, 2, 3]), 0, 0),
            Transition::BecameLeader
        );
        set
    }

    #[test]
    fn roles_follow_the_registration_and_a_new_epoch_is_a_new_transition() {
        let mut set = ReplicaSet::new(1);
        assert_eq!(
            set.apply(&registration(2, 0, &[1, 2, 3]), 0, 0),
            Transition::BecameFollower { leader: 2 }
        );
        assert_eq!(
            set.apply(&registration(2, 0, &[1, 2, 3]), 0, 0),
            Transition::Unchanged
        );
        assert_eq!(
            set.apply(&registration(2, 1, &[1, 2]), 0, 0),
            Transition::BecameFollower { leader: 2 },
            "re-elected leader, new epoch: the follower revalidates its log"
        );
        assert_eq!(
            set.apply(&registration(1, 2, &[1, 2]), 5, 0),
            Transition::BecameLeader
        );
        assert_eq!(set.epoch_start_offset, 5);
        assert_eq!(
            set.apply(&registration(NO_LEADER, 3, &[1]), 5, 0),
            Transition::WentOffline
        );
        assert!(set.followers.is_empty());
    }

    #[test]
    fn high_watermark_is_the_smallest_log_end_over_the_isr_and_never_goes_back() {
        let mut set = leader_of_three();
        // Followers have not fetched in this epoch: the mark stays.
        assert_eq!(set.high_watermark(0, 10, 0, LAG_MS), Some(0));
        assert!(set.record_fetch(2, 10, 10, 1));
        assert_eq!(set.high_watermark(0, 10, 1, LAG_MS), Some(0));
        assert!(set.record_fetch(3, 7, 10, 1));
        assert_eq!(set.high_watermark(0, 10, 1, LAG_MS), Some(7));
        // A follower reporting less (it truncated) does not pull the mark back.
        assert!(set.record_fetch(3, 4, 10, 2));
        assert_eq!(set.high_watermark(7, 10, 2, LAG_MS), Some(7));
        // Not a replica, or not leader: nothing recorded.
        assert!(!set.record_fetch(9, 10, 10, 2));
        let mut follower = ReplicaSet::new(2);
        follower.apply(&registration(1, 0, &[1, 2, 3]), 0, 0);
        assert!(!follower.record_fetch(3, 10, 10, 2));
        assert_eq!(follower.high_watermark(0, 10, 2, LAG_MS), None);
    }

    #[test]
    fn a_leader_alone_in_the_isr_publishes_its_log_end() {
        let mut set = ReplicaSet::new(1);
        set.apply(&registration(1, 0, &[1]), 0, 0);
        assert_eq!(set.high_watermark(0, 42, 0, LAG_MS), Some(42));
    }

    #[test]
    fn a_caught_up_follower_outside_the_isr_holds_the_mark_back_until_it_joins() {
        let mut set = ReplicaSet::new(1);
        set.apply(&registration(1, 0, &[1, 2]), 0, 0);
        set.record_fetch(2, 20, 20, 1);
        set.record_fetch(3, 20, 20, 1);
        assert_eq!(set.high_watermark(0, 20, 1, LAG_MS), Some(20));
        // Leader appends to 30; follower 2 gets it, 3 (caught up a moment ago) not yet.
        set.record_fetch(2, 30, 30, 2);
        assert_eq!(set.high_watermark(20, 30, 2, LAG_MS), Some(20));
        let change = set.expansion(3, 20, 2, RETRY_MS).expect("3 has the mark");
        assert_eq!(change.new_isr, vec![1, 2, 3]);
        set.isr_change_sent(&change, 2);
        assert_eq!(
            set.expansion(3, 20, 3, RETRY_MS),
            None,
            "one change at a time"
        );
        // Long after, 3 no longer counts unless pending in the maximal ISR: it is.
        assert_eq!(set.high_watermark(20, 30, 2 + 2 * LAG_MS, LAG_MS), Some(20));
        set.isr_change_failed(&change);
        assert_eq!(set.high_watermark(20, 30, 2 + 2 * LAG_MS, LAG_MS), Some(30));
    }

    #[test]
    fn a_follower_joins_only_with_the_mark_and_the_epoch_start() {
        let mut set = ReplicaSet::new(1);
        set.apply(&registration(1, 0, &[1]), 50, 0);
        set.record_fetch(2, 40, 60, 1);
        assert_eq!(
            set.expansion(2, 40, 1, RETRY_MS),
            None,
            "below the epoch start"
        );
        set.record_fetch(2, 55, 60, 2);
        assert_eq!(set.expansion(2, 58, 2, RETRY_MS), None, "below the mark");
        assert_eq!(
            set.expansion(2, 55, 2, RETRY_MS).map(|c| c.new_isr),
            Some(vec![1, 2])
        );
    }

    #[test]
    fn a_follower_that_stops_fetching_leaves_the_isr_after_the_lag_time() {
        let mut set = leader_of_three();
        set.record_fetch(2, 10, 10, 0);
        set.record_fetch(3, 10, 10, 0);
        // The leader appends; 2 keeps up, 3 goes silent.
        set.record_fetch(2, 20, 20, LAG_MS);
        assert_eq!(set.shrink(20, LAG_MS, LAG_MS, RETRY_MS), None);
        set.record_fetch(2, 20, 20, LAG_MS + 1);
        let change = set
            .shrink(20, LAG_MS + 1, LAG_MS, RETRY_MS)
            .expect("3 lags");
        assert_eq!(change.new_isr, vec![1, 2]);
        set.isr_change_sent(&change, LAG_MS + 1);
        assert_eq!(set.shrink(20, LAG_MS + 2, LAG_MS, RETRY_MS), None);
        // Asked again once the retry time passed without an answer.
        assert!(set
            .shrink(20, LAG_MS + 1 + RETRY_MS, LAG_MS, RETRY_MS)
            .is_some());
        // The image applies it: nothing pending, nothing more to shrink.
        let mut applied = registration(1, 0, &[1, 2]);
        applied.partition_epoch = 1;
        assert_eq!(set.apply(&applied, 20, LAG_MS + 3), Transition::Unchanged);
        assert_eq!(set.shrink(20, LAG_MS + 3, LAG_MS, RETRY_MS), None);
    }

    #[test]
    fn a_slow_follower_that_keeps_reaching_the_previous_end_stays_in_sync() {
        let mut set = leader_of_three();
        set.record_fetch(3, 10, 10, 0);
        set.record_fetch(2, 10, 10, 0);
        // Every fetch of 3 reaches where the log ended at its previous fetch, never the
        // current end (the leader appends all the time).
        let mut now = 0;
        let mut end = 10;
        for _ in 0..10 {
            now += LAG_MS / 2;
            let previous_end = end;
            end += 10;
            set.record_fetch(2, end, end, now);
            set.record_fetch(3, previous_end, end, now);
        }
        assert_eq!(set.shrink(end, now, LAG_MS, RETRY_MS), None);
    }

    #[test]
    fn an_idle_follower_at_the_log_end_stays_in_sync() {
        let mut set = leader_of_three();
        set.record_fetch(2, 10, 10, 0);
        set.record_fetch(3, 10, 10, 0);
        assert_eq!(set.shrink(10, 10 * LAG_MS, LAG_MS, RETRY_MS), None);
    }
}
