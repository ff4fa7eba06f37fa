//! Partition assignors the group leader runs: `range` (Kafka's RangeAssignor, eager) and
//! `cooperative-sticky` (KIP-429: members keep what they still own; a partition that must
//! move is first revoked by its owner and handed over in the next rebalance).

use std::collections::{BTreeMap, BTreeSet};

use crate::record::TopicPartition;

/// The protocol name of the cooperative sticky assignor (as the Java client names it).
pub const COOPERATIVE_STICKY: &str = "cooperative-sticky";
/// The protocol name of the range assignor.
pub const RANGE: &str = "range";

/// What one member told the leader in its JoinGroup subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberSubscription {
    pub topics: BTreeSet<String>,
    /// Partitions the member owns now (cooperative protocols only).
    pub owned: Vec<TopicPartition>,
}

/// Member id to assigned partitions.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// Whether members keep consuming their partitions during a rebalance under `protocol`.
pub fn is_cooperative(protocol: &str) -> bool {
    protocol == COOPERATIVE_STICKY
}

/// Runs the assignor named `protocol` (unknown names fall back to range).
/// `partitions_per_topic`: partition count of every topic any member subscribes to.
pub fn assign(
    protocol: &str,
    members: &BTreeMap<String, MemberSubscription>,
    partitions_per_topic: &BTreeMap<String, i32>,
) -> Assignment {
    if is_cooperative(protocol) {
        cooperative_sticky(members, partitions_per_topic)
    } else {
        range(members, partitions_per_topic)
    }
}

/// Kafka's RangeAssignor: per topic, the subscribers in member id order each get a
/// contiguous range; the first `partitions % members` get one more.
pub fn range(
    members: &BTreeMap<String, MemberSubscription>,
    partitions_per_topic: &BTreeMap<String, i32>,
) -> Assignment {
    let mut assignment: Assignment = members
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for (topic, count) in partitions_per_topic {
        let subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, s)| s.topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if subscribers.is_empty() || *count <= 0 {
            continue;
        }
        let per_member = *count as usize / subscribers.len();
        let extra = *count as usize % subscribers.len();
        let mut next = 0i32;
        for (index, member) in subscribers.iter().enumerate() {
            let take = per_member + usize::from(index < extra);
            let set = assignment.entry((*member).clone()).or_default();
            for _ in 0..take {
                set.insert(TopicPartition::new(topic.clone(), next));
                next += 1;
            }
        }
    }
    assignment
}

/// The sticky assignment (balanced, keeping owned partitions where the balance allows),
/// then KIP-429's cooperative step: a partition that moves away from a member that still
/// owns it is left unassigned in this round, so the owner revokes it and rejoins, and the
/// next rebalance hands it to its new member.
pub fn cooperative_sticky(
    members: &BTreeMap<String, MemberSubscription>,
    partitions_per_topic: &BTreeMap<String, i32>,
) -> Assignment {
    let target = sticky(members, partitions_per_topic);
    // Who owns each partition now (first claimant wins if two claim the same one).
    let mut owner: BTreeMap<&TopicPartition, &String> = BTreeMap::new();
    for (member, subscription) in members {
        for tp in &subscription.owned {
            owner.entry(tp).or_insert(member);
        }
    }
    target
        .into_iter()
        .map(|(member, partitions)| {
            let kept = partitions
                .into_iter()
                .filter(|tp| owner.get(tp).is_none_or(|o| **o == member))
                .collect();
            (member, kept)
        })
        .collect()
}

/// A balanced assignment that keeps as many owned partitions in place as the balance
/// allows: every member ends with `floor(P/N)` or `ceil(P/N)` partitions when all members
/// subscribe to the same topics.
pub fn sticky(
    members: &BTreeMap<String, MemberSubscription>,
    partitions_per_topic: &BTreeMap<String, i32>,
) -> Assignment {
    let mut assignment: Assignment = members
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    if members.is_empty() {
        return assignment;
    }
    let all: BTreeSet<TopicPartition> = partitions_per_topic
        .iter()
        .filter(|(topic, _)| members.values().any(|s| s.topics.contains(*topic)))
        .flat_map(|(topic, count)| (0..*count).map(move |p| TopicPartition::new(topic.clone(), p)))
        .collect();
    let min_quota = all.len() / members.len();
    let mut extra_slots = all.len() % members.len();
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    // Members owning the most keep first, so the extra slots go to those that already
    // hold more than the minimum (fewest moves).
    let mut by_owned: Vec<(&String, &MemberSubscription)> = members.iter().collect();
    by_owned.sort_by(|a, b| b.1.owned.len().cmp(&a.1.owned.len()).then(a.0.cmp(b.0)));
    for (member, subscription) in by_owned {
        let valid: Vec<&TopicPartition> = subscription
            .owned
            .iter()
            .filter(|tp| all.contains(*tp) && subscription.topics.contains(&tp.topic))
            .filter(|tp| !taken.contains(*tp))
            .collect();
        let mut quota = min_quota;
        if valid.len() > min_quota && extra_slots > 0 {
            quota += 1;
            extra_slots -= 1;
        }
        let set = assignment.entry(member.clone()).or_default();
        for tp in valid.into_iter().take(quota) {
            taken.insert(tp.clone());
            set.insert(tp.clone());
        }
    }
    // The rest go, one at a time, to the least loaded subscriber.
    for tp in all.iter().filter(|tp| !taken.contains(*tp)) {
        let least = members
            .iter()
            .filter(|(_, s)| s.topics.contains(&tp.topic))
            .map(|(m, _)| m)
            .min_by_key(|m| (assignment.get(*m).map_or(0, |s| s.len()), (*m).clone()));
        if let Some(member) = least {
            assignment
                .entry(member.clone())
                .or_default()
                .insert(tp.clone());
        }
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(topics: &[&str], owned: &[(&str, i32)]) -> MemberSubscription {
        MemberSubscription {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned
                .iter()
                .map(|(t, p)| TopicPartition::new(*t, *p))
                .collect(),
        }
    }

    fn counts(topic: &str, n: i32) -> BTreeMap<String, i32> {
        BTreeMap::from([(topic.to_string(), n)])
    }

    fn covers_without_overlap(assignment: &Assignment, topic: &str, n: i32) {
        let mut seen = BTreeSet::new();
        for partitions in assignment.values() {
            for tp in partitions {
                assert!(seen.insert(tp.clone()), "{tp} assigned twice");
            }
        }
        let expected: BTreeSet<_> = (0..n).map(|p| TopicPartition::new(topic, p)).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn range_splits_contiguously_with_extras_first() {
        let members = BTreeMap::from([
            ("a".to_string(), member(&["t"], &[])),
            ("b".to_string(), member(&["t"], &[])),
        ]);
        let assignment = range(&members, &counts("t", 5));
        let a: Vec<i32> = assignment["a"].iter().map(|tp| tp.partition).collect();
        let b: Vec<i32> = assignment["b"].iter().map(|tp| tp.partition).collect();
        assert_eq!(a, vec![0, 1, 2]);
        assert_eq!(b, vec![3, 4]);
    }

    #[test]
    fn range_skips_members_not_subscribed() {
        let members = BTreeMap::from([
            ("a".to_string(), member(&["t"], &[])),
            ("b".to_string(), member(&["other"], &[])),
        ]);
        let assignment = range(&members, &counts("t", 3));
        assert_eq!(assignment["a"].len(), 3);
        assert!(assignment["b"].is_empty());
    }

    #[test]
    fn sticky_first_assignment_is_balanced() {
        let members = BTreeMap::from([
            ("a".to_string(), member(&["t"], &[])),
            ("b".to_string(), member(&["t"], &[])),
            ("c".to_string(), member(&["t"], &[])),
        ]);
        let assignment = cooperative_sticky(&members, &counts("t", 7));
        covers_without_overlap(&assignment, "t", 7);
        let sizes: Vec<usize> = assignment.values().map(|s| s.len()).collect();
        assert!(sizes.iter().all(|s| *s == 2 || *s == 3), "{sizes:?}");
    }

    #[test]
    fn a_new_member_only_takes_what_must_move_and_owners_revoke_first() {
        let owned_a: Vec<(&str, i32)> = (0..3).map(|p| ("t", p)).collect();
        let owned_b: Vec<(&str, i32)> = (3..6).map(|p| ("t", p)).collect();
        let members = BTreeMap::from([
            ("a".to_string(), member(&["t"], &owned_a)),
            ("b".to_string(), member(&["t"], &owned_b)),
            ("c".to_string(), member(&["t"], &[])),
        ]);
        // Round one: a and b keep two each and give up one; c gets nothing yet.
        let first = cooperative_sticky(&members, &counts("t", 6));
        assert_eq!(first["a"].len(), 2);
        assert_eq!(first["b"].len(), 2);
        assert!(first["c"].is_empty());
        assert!(first["a"].iter().all(|tp| tp.partition < 3));
        assert!(first["b"].iter().all(|tp| tp.partition >= 3));
        // Round two: they rejoin owning what they kept; c receives the two released.
        let members = BTreeMap::from([
            (
                "a".to_string(),
                MemberSubscription {
                    topics: BTreeSet::from(["t".to_string()]),
                    owned: first["a"].iter().cloned().collect(),
                },
            ),
            (
                "b".to_string(),
                MemberSubscription {
                    topics: BTreeSet::from(["t".to_string()]),
                    owned: first["b"].iter().cloned().collect(),
                },
            ),
            ("c".to_string(), member(&["t"], &[])),
        ]);
        let second = cooperative_sticky(&members, &counts("t", 6));
        covers_without_overlap(&second, "t", 6);
        assert_eq!(second["a"], first["a"]);
        assert_eq!(second["b"], first["b"]);
        assert_eq!(second["c"].len(), 2);
    }

    #[test]
    fn a_leaving_member_frees_its_partitions_at_once() {
        let members = BTreeMap::from([
            ("a".to_string(), member(&["t"], &[("t", 0), ("t", 1)])),
            ("c".to_string(), member(&["t"], &[("t", 4), ("t", 5)])),
        ]);
        // b (who owned 2 and 3) left: nobody owns them, so they are handed over now.
        let assignment = cooperative_sticky(&members, &counts("t", 6));
        covers_without_overlap(&assignment, "t", 6);
        assert!(assignment["a"].contains(&TopicPartition::new("t", 0)));
        assert!(assignment["c"].contains(&TopicPartition::new("t", 5)));
        assert_eq!(assignment["a"].len(), 3);
        assert_eq!(assignment["c"].len(), 3);
    }

    #[test]
    fn a_partition_claimed_twice_is_kept_by_one_member_only() {
        let members = BTreeMap::from([
            ("a".to_string(), member(&["t"], &[("t", 0)])),
            ("b".to_string(), member(&["t"], &[("t", 0)])),
        ]);
        let target = sticky(&members, &counts("t", 2));
        covers_without_overlap(&target, "t", 2);
    }
}
