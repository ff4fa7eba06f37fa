//! The metadata quorum with 1, 3 and 5 real nodes in one process, talking over TCP on
//! localhost, each with its own metadata directory. Nodes are stopped with `shutdown()` and
//! restarted from their directories. Waits poll with a generous bound only to fail instead
//! of hanging; nothing asserts how long anything takes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use sluice_controller::image::MetadataImage;
use sluice_controller::records::{Endpoint, NO_LEADER};
use sluice_controller::{
    Controller, ControllerConfig, ControllerError, ControllerRequest, ControllerResponse, NodeId,
};
use tempfile::TempDir;
use uuid::Uuid;

/// Upper bound of any wait, so that a broken quorum fails the test rather than hanging it.
const WAIT_BOUND: Duration = Duration::from_secs(60);

struct Cluster {
    voters: BTreeMap<NodeId, String>,
    dirs: BTreeMap<NodeId, TempDir>,
    nodes: BTreeMap<NodeId, Controller>,
    request_timeout_ms: u64,
    broker_session_timeout_ms: u64,
}

fn free_addresses(count: usize) -> Vec<String> {
    let listeners: Vec<_> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

impl Cluster {
    async fn start(size: u64) -> Self {
        // Sessions longer than any test: brokers that stop heartbeating stay unfenced.
        Self::start_with(size, 5_000, 600_000).await
    }

    async fn start_with(
        size: u64,
        request_timeout_ms: u64,
        broker_session_timeout_ms: u64,
    ) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let addresses = free_addresses(size as usize);
        let voters: BTreeMap<NodeId, String> = (1..=size).zip(addresses).collect();
        let dirs = voters
            .keys()
            .map(|id| (*id, tempfile::tempdir().unwrap()))
            .collect();
        let mut cluster = Self {
            voters,
            dirs,
            nodes: BTreeMap::new(),
            request_timeout_ms,
            broker_session_timeout_ms,
        };
        for id in 1..=size {
            cluster.start_node(id).await;
        }
        cluster
    }

    fn config(&self, id: NodeId) -> ControllerConfig {
        let mut config = ControllerConfig::new(
            id,
            self.voters.clone(),
            self.dirs[&id].path().join("metadata"),
        );
        config.election_timeout_min_ms = 300;
        config.election_timeout_max_ms = 600;
        config.raft_heartbeat_interval_ms = 50;
        config.request_timeout_ms = self.request_timeout_ms;
        config.broker_session_timeout_ms = self.broker_session_timeout_ms;
        config.snapshot_after_entries = 20;
        config.log_entries_kept_after_snapshot = 5;
        config
    }

    async fn start_node(&mut self, id: NodeId) {
        let config = self.config(id);
        let mut attempts = 0;
        let listener = loop {
            // The port of a node that just stopped may take a moment to be free again.
            match tokio::net::TcpListener::bind(&self.voters[&id]).await {
                Ok(listener) => break listener,
                Err(e) if attempts < 100 => {
                    attempts += 1;
                    eprintln!("bind {}: {e}; retrying", self.voters[&id]);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {}: {e}", self.voters[&id]),
            }
        };
        let node = Controller::start_with_listener(config, listener)
            .await
            .unwrap();
        self.nodes.insert(id, node);
    }

    async fn stop_node(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap();
        node.shutdown().await;
    }

    fn node(&self, id: NodeId) -> &Controller {
        &self.nodes[&id]
    }

    /// Wait until every running node names the same running leader.
    async fn wait_for_leader(&self) -> NodeId {
        let waited = tokio::time::timeout(WAIT_BOUND, async {
            loop {
                let leaders: Vec<_> = self.nodes.values().map(|n| n.leader_id()).collect();
                if let Some(Some(leader)) = leaders.first() {
                    if leaders.iter().all(|l| *l == Some(*leader))
                        && self
                            .nodes
                            .get(leader)
                            .is_some_and(|n| n.metrics().is_leader)
                    {
                        return *leader;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        waited.expect("no common leader among the running nodes")
    }

    fn follower(&self, leader: NodeId) -> NodeId {
        *self.nodes.keys().find(|id| **id != leader).unwrap()
    }

    /// Wait until every running node has applied the same image, satisfying `check`.
    async fn wait_converged(&self, check: impl Fn(&MetadataImage) -> bool) -> Arc<MetadataImage> {
        let waited = tokio::time::timeout(WAIT_BOUND, async {
            loop {
                let images: Vec<_> = self.nodes.values().map(|n| n.current_image()).collect();
                let first = images[0].clone();
                if check(&first) && images.iter().all(|i| **i == *first) {
                    return first;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        waited.expect("images did not converge")
    }

    async fn shutdown(self) {
        for node in self.nodes.values() {
            node.shutdown().await;
        }
    }
}

async fn register_and_unfence(controller: &Controller, broker_id: i32) -> i64 {
    let response = controller
        .propose(ControllerRequest::RegisterBroker {
            broker_id,
            incarnation_id: Uuid::new_v4(),
            endpoints: vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9000 + broker_id as u16,
            }],
            rack: None,
        })
        .await
        .unwrap();
    let ControllerResponse::BrokerRegistered { broker_epoch } = response else {
        panic!("unexpected {response:?}")
    };
    heartbeat(controller, broker_id, broker_epoch)
        .await
        .unwrap();
    broker_epoch
}

async fn heartbeat(
    controller: &Controller,
    broker_id: i32,
    broker_epoch: i64,
) -> Result<ControllerResponse, ControllerError> {
    controller
        .propose(ControllerRequest::BrokerHeartbeat {
            broker_id,
            broker_epoch,
            want_fence: false,
            want_shutdown: false,
        })
        .await
}

fn create_topic(name: &str, partitions: i32, replication_factor: i16) -> ControllerRequest {
    ControllerRequest::CreateTopic {
        name: name.into(),
        num_partitions: partitions,
        replication_factor,
        assignments: vec![],
        configs: BTreeMap::new(),
    }
}

async fn create(
    controller: &Controller,
    name: &str,
    partitions: i32,
    replication_factor: i16,
) -> Uuid {
    match controller
        .propose(create_topic(name, partitions, replication_factor))
        .await
        .unwrap()
    {
        ControllerResponse::TopicCreated { topic_id } => topic_id,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_initialises_itself_and_restarts_from_disk() {
    let mut cluster = Cluster::start(1).await;
    assert_eq!(cluster.wait_for_leader().await, 1);
    let node = cluster.node(1).clone();
    let epoch = register_and_unfence(&node, 1).await;
    let topic_id = create(&node, "orders", 3, 1).await;
    let err = node
        .propose(create_topic("orders", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ResponseError::TopicAlreadyExists.code());
    let err = node.propose(create_topic("wide", 1, 2)).await.unwrap_err();
    assert_eq!(err.code(), ResponseError::InvalidReplicationFactor.code());
    let image = node.current_image();
    assert_eq!(image.topics[&topic_id].partitions.len(), 3);
    assert!(!image.brokers[&1].fenced);

    // Watchers see new images.
    let mut watcher = node.image();
    watcher.borrow_and_update();
    create(&node, "later", 1, 1).await;
    watcher.changed().await.unwrap();
    assert!(watcher.borrow().topic_by_name("later").is_some());

    // Enough records to take a snapshot and purge the log, then restart from the directory.
    for i in 0..25 {
        create(&node, &format!("t{i}"), 1, 1).await;
    }
    // Snapshots are built in the background: wait for one so the restart starts from it.
    tokio::time::timeout(WAIT_BOUND, async {
        while node.metrics().snapshot_index.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no snapshot was taken");
    let before = node.current_image();
    cluster.stop_node(1).await;
    cluster.start_node(1).await;
    cluster.wait_for_leader().await;
    let node = cluster.node(1).clone();
    let after = cluster
        .wait_converged(|i| i.last_applied_index >= before.last_applied_index)
        .await;
    assert_eq!(after.topics, before.topics);
    assert_eq!(after.brokers[&1].broker_epoch, epoch);
    assert!(
        node.metrics().snapshot_index.is_some(),
        "the snapshot is found again after the restart"
    );
    // And it keeps accepting writes.
    create(&node, "after-restart", 1, 1).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_forward_to_the_leader_and_converge() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.node(cluster.follower(leader)).clone();
    for broker in 1..=3 {
        register_and_unfence(&follower, broker).await;
    }
    let topic_id = create(&follower, "replicated", 6, 3).await;
    // An API error from the leader comes back through the forwarding node.
    let err = follower
        .propose(create_topic("replicated", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ResponseError::TopicAlreadyExists.code());
    let image = cluster
        .wait_converged(|i| i.topics.contains_key(&topic_id))
        .await;
    let topic = &image.topics[&topic_id];
    assert_eq!(topic.partitions.len(), 6);
    for partition in &topic.partitions {
        assert_eq!(partition.replicas.len(), 3);
        assert_eq!(partition.isr.len(), 3);
    }
    let leaders: std::collections::BTreeSet<i32> =
        topic.partitions.iter().map(|p| p.leader).collect();
    assert_eq!(
        leaders.len(),
        3,
        "partition leaders spread over the brokers"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_restarted_node_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let first_leader = cluster.wait_for_leader().await;
    let any = cluster.node(cluster.follower(first_leader)).clone();
    register_and_unfence(&any, 1).await;
    create(&any, "before", 1, 1).await;
    cluster
        .wait_converged(|i| i.topic_by_name("before").is_some())
        .await;

    cluster.stop_node(first_leader).await;
    let second_leader = cluster.wait_for_leader().await;
    assert_ne!(second_leader, first_leader);
    let survivor = cluster.node(cluster.follower(second_leader)).clone();
    // Many proposals while the old leader is down: the survivors snapshot and purge, so the
    // returning node may need the snapshot.
    for i in 0..30 {
        create(&survivor, &format!("during-{i}"), 1, 1).await;
    }

    cluster.start_node(first_leader).await;
    let image = cluster
        .wait_converged(|i| {
            i.topic_by_name("during-29").is_some() && i.topic_by_name("before").is_some()
        })
        .await;
    assert_eq!(image.topics.len(), 31);
    // The restarted node takes part again: writes through it work.
    create(cluster.node(first_leader), "after", 1, 1).await;
    cluster
        .wait_converged(|i| i.topic_by_name("after").is_some())
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_keep_working_with_two_down() {
    let mut cluster = Cluster::start(5).await;
    let leader = cluster.wait_for_leader().await;
    register_and_unfence(cluster.node(leader), 1).await;
    // Stop the leader and one follower.
    let follower = cluster.follower(leader);
    cluster.stop_node(leader).await;
    cluster.stop_node(follower).await;
    let new_leader = cluster.wait_for_leader().await;
    let through = cluster.node(cluster.follower(new_leader)).clone();
    let topic_id = create(&through, "five", 2, 1).await;
    cluster
        .wait_converged(|i| i.topics.contains_key(&topic_id))
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_two_down_refuse_writes_and_resume_when_one_returns() {
    let mut cluster = Cluster::start_with(3, 1_500, 600_000).await;
    let leader = cluster.wait_for_leader().await;
    register_and_unfence(cluster.node(leader), 1).await;
    let remaining = cluster.follower(leader);
    let stopped: Vec<NodeId> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != remaining)
        .collect();
    for id in &stopped {
        cluster.stop_node(*id).await;
    }
    let err = cluster
        .node(remaining)
        .propose(create_topic("no-quorum", 1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, ControllerError::Timeout { .. }), "{err:?}");
    assert_eq!(err.code(), ResponseError::RequestTimedOut.code());

    cluster.start_node(stopped[0]).await;
    cluster.wait_for_leader().await;
    // The refused request may or may not have been kept; new writes go through (retried:
    // the short request timeout of this test may end while the returning node catches up).
    let mut created = None;
    for attempt in 0..40 {
        // A fresh name per attempt: a timed-out attempt may still have committed.
        let name = format!("quorum-back-{attempt}");
        match cluster
            .node(remaining)
            .propose(create_topic(&name, 1, 1))
            .await
        {
            Ok(ControllerResponse::TopicCreated { topic_id }) => {
                created = Some(topic_id);
                break;
            }
            Err(ControllerError::Timeout { .. }) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    let topic_id = created.expect("writes did not resume");
    cluster
        .wait_converged(|i| i.topics.contains_key(&topic_id))
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_broker_session_fences_the_broker_and_moves_its_leaders() {
    let cluster = Cluster::start_with(3, 5_000, 2_000).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.node(cluster.follower(leader)).clone();
    let mut epochs = BTreeMap::new();
    for broker in 1..=3 {
        epochs.insert(broker, register_and_unfence(&node, broker).await);
    }
    let topic_id = create(&node, "moving", 6, 3).await;
    let before = cluster
        .wait_converged(|i| i.topics.contains_key(&topic_id))
        .await;
    let led_by_1: Vec<usize> = before.topics[&topic_id]
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.leader == 1)
        .map(|(i, _)| i)
        .collect();
    assert!(!led_by_1.is_empty());

    // Brokers 2 and 3 keep heartbeating; broker 1 goes silent.
    let running = Arc::new(AtomicBool::new(true));
    let beating = {
        let running = running.clone();
        let node = node.clone();
        let epochs = epochs.clone();
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                for broker in [2, 3] {
                    let _ = heartbeat(&node, broker, epochs[&broker]).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // (A heartbeat delayed past the session on a loaded machine fences 2 or 3 for a moment;
    // their next heartbeat unfences them, so wait for the steady state.)
    let after = cluster
        .wait_converged(|i| i.brokers[&1].fenced && !i.brokers[&2].fenced && !i.brokers[&3].fenced)
        .await;
    // Another process claiming a live (heartbeating) broker id is refused.
    let register = |broker_id: i32| ControllerRequest::RegisterBroker {
        broker_id,
        incarnation_id: Uuid::new_v4(),
        endpoints: vec![],
        rack: None,
    };
    let err = node.propose(register(2)).await.unwrap_err();
    assert_eq!(
        err.code(),
        ResponseError::DuplicateBrokerRegistration.code()
    );
    running.store(false, Ordering::Relaxed);
    beating.await.unwrap();
    for (index, partition) in after.topics[&topic_id].partitions.iter().enumerate() {
        assert_ne!(partition.leader, 1);
        assert_ne!(partition.leader, NO_LEADER);
        assert!(!partition.isr.contains(&1));
        if led_by_1.contains(&index) {
            let old = &before.topics[&topic_id].partitions[index];
            assert!(
                partition.leader_epoch > old.leader_epoch,
                "a new leader gets a new epoch"
            );
        }
    }
    // Whoever led when the session expired counted the fencing.
    let fenced_by_session: u64 = cluster
        .nodes
        .values()
        .map(|n| n.metrics().brokers_fenced_by_session_total)
        .sum();
    assert!(fenced_by_session >= 1);
    let leader = cluster.wait_for_leader().await;
    let metrics = cluster.node(leader).metrics();
    assert_eq!(metrics.brokers_registered, 3);
    let mut text = String::new();
    metrics.write_prometheus(&mut text);
    assert!(
        text.contains(&format!(
            "sluice_controller_is_leader{{node_id=\"{leader}\"}} 1"
        )),
        "{text}"
    );
    assert!(text.contains("# TYPE sluice_controller_proposals_total counter"));
    // Broker 1 returns: heartbeat unfences it (it rejoins ISRs through AlterPartition).
    let response = heartbeat(&node, 1, epochs[&1]).await.unwrap();
    assert_eq!(
        response,
        ControllerResponse::Heartbeat {
            is_fenced: false,
            should_shut_down: false
        }
    );
    cluster.wait_converged(|i| !i.brokers[&1].fenced).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restarts_from_disk_without_reinitialising() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    register_and_unfence(cluster.node(leader), 1).await;
    let topic_id = create(cluster.node(leader), "durable", 2, 1).await;
    let before = cluster
        .wait_converged(|i| i.topics.contains_key(&topic_id))
        .await;
    let applied_before = before.last_applied_index;
    for id in 1..=3 {
        cluster.stop_node(id).await;
    }
    for id in (1..=3).rev() {
        cluster.start_node(id).await;
    }
    let leader = cluster.wait_for_leader().await;
    let after = cluster
        .wait_converged(|i| i.last_applied_index >= applied_before)
        .await;
    assert_eq!(after.topics, before.topics);
    assert_eq!(
        after.brokers[&1].broker_epoch,
        before.brokers[&1].broker_epoch
    );
    // The log continued rather than starting over: new entries come after the old ones.
    let topic_id = create(cluster.node(leader), "after-restart", 1, 1).await;
    let latest = cluster
        .wait_converged(|i| i.topics.contains_key(&topic_id))
        .await;
    assert!(latest.last_applied_index > applied_before);
    assert!(latest
        .topics
        .contains_key(&before.topic_ids_by_name["durable"]));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_voter_works_without_a_listener_and_restarts_from_disk() {
    let dir = TempDir::new().unwrap();
    let config = || ControllerConfig::single_node(1, "127.0.0.1:0".into(), dir.path().join("m"));
    let node = Controller::start_sole_voter(config()).await.unwrap();
    register_and_unfence(&node, 1).await;
    let topic_id = create(&node, "orders", 2, 1).await;
    node.shutdown().await;
    let node = Controller::start_sole_voter(config()).await.unwrap();
    let mut images = node.image();
    let image = images
        .wait_for(|image| image.topics.contains_key(&topic_id))
        .await
        .unwrap()
        .clone();
    assert_eq!(image.topics[&topic_id].partitions.len(), 2);
    node.shutdown().await;
    // A voter of a larger quorum needs its listener.
    let voters = sluice_controller::parse_voters("1@127.0.0.1:1,2@127.0.0.1:2").unwrap();
    let larger = ControllerConfig::new(1, voters, dir.path().join("other"));
    assert!(Controller::start_sole_voter(larger).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reassignment_survives_a_restart_and_finishes_when_the_new_replica_is_in_sync() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.node(cluster.follower(leader)).clone();
    let mut broker_epochs = BTreeMap::new();
    for broker in 1..=3 {
        broker_epochs.insert(broker, register_and_unfence(&follower, broker).await);
    }
    let response = follower
        .propose(ControllerRequest::CreateTopic {
            name: "moving".into(),
            num_partitions: -1,
            replication_factor: -1,
            assignments: vec![vec![1, 2]],
            configs: BTreeMap::new(),
        })
        .await
        .unwrap();
    let ControllerResponse::TopicCreated { topic_id } = response else {
        panic!("unexpected {response:?}")
    };
    // Through a follower (forwarded): one entry accepted, one refused.
    let response = follower
        .propose(ControllerRequest::AlterPartitionReassignments {
            reassignments: vec![(topic_id, 0, Some(vec![3])), (topic_id, 1, Some(vec![3]))],
        })
        .await
        .unwrap();
    let ControllerResponse::ReassignmentsAltered { results } = response else {
        panic!("unexpected {response:?}")
    };
    assert!(results[0].is_none(), "{results:?}");
    assert_eq!(
        results[1].as_ref().map(|e| e.kind()),
        Some(ResponseError::UnknownTopicOrPartition)
    );
    let moving = |i: &MetadataImage| {
        i.partition(&topic_id, 0)
            .is_some_and(|p| p.adding_replicas == vec![3] && p.removing_replicas == vec![1, 2])
    };
    let before = cluster.wait_converged(moving).await;
    assert_eq!(before.reassigning_partitions(), vec![(topic_id, 0)]);

    // The move in progress is in the log (and snapshots): a whole-cluster restart keeps it.
    for id in 1..=3 {
        cluster.stop_node(id).await;
    }
    for id in 1..=3 {
        cluster.start_node(id).await;
    }
    let leader = cluster.wait_for_leader().await;
    let after = cluster
        .wait_converged(|i| i.last_applied_index >= before.last_applied_index)
        .await;
    assert_eq!(after.topics, before.topics);

    // The partition leader (1) reports 3 in sync: the move finishes, 3 leads.
    let state = after.partition(&topic_id, 0).unwrap().clone();
    let response = cluster
        .node(leader)
        .propose(ControllerRequest::AlterPartition {
            broker_id: 1,
            broker_epoch: broker_epochs[&1],
            topic_id,
            partition: 0,
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            new_isr: vec![1, 2, 3],
        })
        .await
        .unwrap();
    let ControllerResponse::PartitionAltered { state: finished } = response else {
        panic!("unexpected {response:?}")
    };
    assert_eq!(
        (
            finished.replicas.clone(),
            finished.isr.clone(),
            finished.leader
        ),
        (vec![3], vec![3], 3)
    );
    let done = cluster
        .wait_converged(|i| i.reassigning_partitions().is_empty())
        .await;
    assert_eq!(done.partition(&topic_id, 0), Some(&*finished));
    cluster.shutdown().await;
}
