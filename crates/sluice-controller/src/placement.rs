//! Replica placement for new partitions: Kafka's (rack-aware) round robin.
//!
//! This is the algorithm of Kafka's `AdminUtils.assignReplicasToBrokers`: the leaders of
//! consecutive partitions walk round the broker list from a start index, and the followers
//! are placed at a shift from the leader that grows every time the partitions wrap round, so
//! that leaders and followers both spread evenly. With racks, the broker list is first
//! arranged to alternate racks, and a follower is placed only on a rack (and a broker) that
//! holds no replica of the partition yet, unless every rack (broker) already holds one.
//!
//! Kafka picks the start index and shift at random; here the caller passes them (derived from
//! the request), so that placement is a pure function and tests are reproducible.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;

use crate::error::ApiError;

/// A broker that may receive replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementBroker {
    pub broker_id: i32,
    pub rack: Option<String>,
}

/// Assign `replication_factor` replicas to each of `partition_count` partitions numbered from
/// `first_partition`. Rack-aware when every broker has a rack.
///
/// `seed` chooses the start index and the initial follower shift.
pub fn assign_replicas(
    brokers: &[PlacementBroker],
    partition_count: i32,
    replication_factor: i16,
    first_partition: i32,
    seed: u64,
) -> Result<Vec<Vec<i32>>, ApiError> {
    if partition_count < 1 {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!("number of partitions must be at least 1, got {partition_count}"),
        ));
    }
    if replication_factor < 1 {
        return Err(ApiError::new(
            ResponseError::InvalidReplicationFactor,
            format!("replication factor must be at least 1, got {replication_factor}"),
        ));
    }
    let replication_factor = usize::try_from(replication_factor).unwrap_or(usize::MAX);
    if replication_factor > brokers.len() {
        return Err(ApiError::new(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {replication_factor} is larger than the {} available brokers",
                brokers.len()
            ),
        ));
    }
    let rack_aware = brokers.iter().all(|b| b.rack.is_some());
    let (arranged, racks_by_broker) = if rack_aware {
        let racks: BTreeMap<i32, String> = brokers
            .iter()
            .map(|b| (b.broker_id, b.rack.clone().unwrap_or_default()))
            .collect();
        (rack_alternated(&racks), racks)
    } else {
        let mut ids: Vec<i32> = brokers.iter().map(|b| b.broker_id).collect();
        ids.sort_unstable();
        // Without racks every broker is its own "rack": the rack rule then equals the broker rule.
        let racks = ids.iter().map(|id| (*id, id.to_string())).collect();
        (ids, racks)
    };
    let broker_count = arranged.len();
    let rack_count = racks_by_broker.values().collect::<BTreeSet<_>>().len();
    // The rack-aware walk multiplies the shift by the number of racks (Kafka does the same),
    // so that consecutive followers land on other racks.
    let shift_factor = if rack_aware { rack_count } else { 1 };

    let seed = usize::try_from(seed % (u32::MAX as u64)).unwrap_or(0);
    let start_index = seed % broker_count;
    let mut next_replica_shift = (seed / broker_count) % broker_count;
    let mut assignment = Vec::with_capacity(usize::try_from(partition_count).unwrap_or(0));
    let first = usize::try_from(first_partition.max(0)).unwrap_or(0);
    let count = usize::try_from(partition_count).unwrap_or(0);
    for current in first..first + count {
        if current > 0 && current % broker_count == 0 {
            next_replica_shift += 1;
        }
        let first_index = (current + start_index) % broker_count;
        let leader = arranged[first_index];
        let mut replicas = vec![leader];
        let mut racks_used = BTreeSet::from([racks_by_broker[&leader].clone()]);
        let mut brokers_used = BTreeSet::from([leader]);
        let mut k = 0;
        while replicas.len() < replication_factor {
            let index = replica_index(
                first_index,
                next_replica_shift * shift_factor,
                k,
                broker_count,
            );
            let broker = arranged[index];
            let rack = &racks_by_broker[&broker];
            k += 1;
            let rack_ok = !racks_used.contains(rack) || racks_used.len() == rack_count;
            let broker_ok = !brokers_used.contains(&broker) || brokers_used.len() == broker_count;
            if rack_ok && broker_ok && !brokers_used.contains(&broker) {
                replicas.push(broker);
                racks_used.insert(rack.clone());
                brokers_used.insert(broker);
            }
            debug_assert!(
                k <= broker_count * broker_count + broker_count,
                "placement loop does not end"
            );
        }
        assignment.push(replicas);
    }
    Ok(assignment)
}

/// Kafka's `replicaIndex`: the follower `replica` positions after the leader, never 0.
fn replica_index(
    first_index: usize,
    second_shift: usize,
    replica: usize,
    broker_count: usize,
) -> usize {
    if broker_count == 1 {
        return first_index;
    }
    let shift = 1 + (second_shift + replica) % (broker_count - 1);
    (first_index + shift) % broker_count
}

/// Brokers ordered so that racks alternate: r1b1, r2b1, r3b1, r1b2, r2b2, ...
fn rack_alternated(racks_by_broker: &BTreeMap<i32, String>) -> Vec<i32> {
    let mut by_rack: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (broker, rack) in racks_by_broker {
        by_rack.entry(rack.as_str()).or_default().push(*broker);
    }
    let longest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    let mut arranged = Vec::with_capacity(racks_by_broker.len());
    for round in 0..longest {
        for brokers in by_rack.values() {
            if let Some(broker) = brokers.get(round) {
                arranged.push(*broker);
            }
        }
    }
    arranged
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn brokers(racks: &[(i32, Option<&str>)]) -> Vec<PlacementBroker> {
        racks
            .iter()
            .map(|(id, rack)| PlacementBroker {
                broker_id: *id,
                rack: rack.map(str::to_string),
            })
            .collect()
    }

    fn count_leaders(assignment: &[Vec<i32>]) -> BTreeMap<i32, usize> {
        let mut counts = BTreeMap::new();
        for replicas in assignment {
            *counts.entry(replicas[0]).or_default() += 1;
        }
        counts
    }

    #[test]
    fn leaders_and_replicas_spread_evenly_without_racks() {
        let b = brokers(&[(1, None), (2, None), (3, None)]);
        for seed in 0..10 {
            let assignment = assign_replicas(&b, 6, 3, 0, seed).unwrap();
            assert_eq!(assignment.len(), 6);
            let leaders = count_leaders(&assignment);
            assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
            for replicas in &assignment {
                let distinct: BTreeSet<_> = replicas.iter().collect();
                assert_eq!(distinct.len(), 3, "{replicas:?}");
            }
        }
    }

    #[test]
    fn replicas_of_a_partition_land_on_distinct_racks() {
        let b = brokers(&[
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("b")),
            (4, Some("b")),
            (5, Some("c")),
            (6, Some("c")),
        ]);
        let rack = |id: i32| b.iter().find(|x| x.broker_id == id).unwrap().rack.clone();
        for seed in 0..20 {
            let assignment = assign_replicas(&b, 12, 3, 0, seed).unwrap();
            for replicas in &assignment {
                let racks: BTreeSet<_> = replicas.iter().map(|id| rack(*id)).collect();
                assert_eq!(racks.len(), 3, "seed {seed}: {replicas:?}");
            }
            let leaders = count_leaders(&assignment);
            assert_eq!(leaders.len(), 6, "every broker leads some partition");
            assert!(leaders.values().all(|n| *n == 2), "{leaders:?}");
        }
    }

    #[test]
    fn more_replicas_than_racks_reuse_racks_but_not_brokers() {
        let b = brokers(&[
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("b")),
            (4, Some("b")),
        ]);
        let assignment = assign_replicas(&b, 4, 3, 0, 1).unwrap();
        for replicas in &assignment {
            let distinct: BTreeSet<_> = replicas.iter().collect();
            assert_eq!(distinct.len(), 3);
            let racks: BTreeSet<_> = replicas
                .iter()
                .map(|id| if *id <= 2 { "a" } else { "b" })
                .collect();
            assert_eq!(racks.len(), 2);
        }
    }

    #[test]
    fn replication_factor_above_broker_count_is_refused() {
        let b = brokers(&[(1, None), (2, None)]);
        let err = assign_replicas(&b, 1, 3, 0, 0).unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidReplicationFactor);
        let err = assign_replicas(&b, 1, 0, 0, 0).unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidReplicationFactor);
        let err = assign_replicas(&b, 0, 1, 0, 0).unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidPartitions);
        let err = assign_replicas(&[], 1, 1, 0, 0).unwrap_err();
        assert_eq!(err.kind(), ResponseError::InvalidReplicationFactor);
    }

    #[test]
    fn added_partitions_continue_the_leader_rotation() {
        let b = brokers(&[(1, None), (2, None), (3, None)]);
        let all = assign_replicas(&b, 6, 2, 0, 5).unwrap();
        let tail = assign_replicas(&b, 3, 2, 3, 5).unwrap();
        assert_eq!(&all[3..], &tail[..]);
    }

    #[test]
    fn single_broker_gets_every_partition() {
        let b = brokers(&[(7, None)]);
        let assignment = assign_replicas(&b, 3, 1, 0, 99).unwrap();
        assert_eq!(assignment, vec![vec![7], vec![7], vec![7]]);
    }
}
