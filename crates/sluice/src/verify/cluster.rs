//! The brokers under test: one `sluice serve` child (the default, exactly as before) or
//! `--brokers N` children that form one cluster (node ids 1..=N, every node a voter of
//! the controller quorum, each with its own ports, data directory and output file).
//!
//! The layout (ports, replication) is saved as `cluster.json` in the run's directory so
//! that `--check-only` can start the same cluster on the kept data: the quorum's
//! metadata names the voters by address, so the ports must stay the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_client::admin::{AdminConfig, PartitionDescription};
use sluice_client::{Admin, ClientError};

use super::broker::{self, BrokerError, BrokerProcess};

/// File in the run's directory that records a cluster's layout.
pub const LAYOUT_FILE: &str = "cluster.json";
/// The group offsets topic, whose replicas must be in sync too before a round ends.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Pause between polls while waiting for the cluster to settle.
const SETTLE_POLL_MS: u64 = 250;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot find a free port: {0}")]
    Port(std::io::Error),
    #[error("cannot read or write the cluster layout {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the cluster layout {path} is not valid: {message}")]
    Parse { path: String, message: String },
}

/// One node of a cluster: its id, Kafka listener and controller (Raft) listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLayout {
    pub node_id: i32,
    pub listen: String,
    pub controller: String,
}

/// A cluster's nodes and the replication of the verified topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub nodes: Vec<NodeLayout>,
    pub replication_factor: i16,
    pub min_insync_replicas: i32,
}

impl Layout {
    /// `brokers` nodes on free ports of 127.0.0.1.
    pub fn on_free_ports(
        brokers: u32,
        replication_factor: i16,
        min_insync_replicas: i32,
    ) -> Result<Layout, LayoutError> {
        let mut nodes = Vec::new();
        // Hold every probe listener until all ports are chosen, so no two nodes get
        // the same port.
        let mut held = Vec::new();
        for index in 0..brokers {
            let mut address = || -> Result<String, LayoutError> {
                let listener =
                    std::net::TcpListener::bind("127.0.0.1:0").map_err(LayoutError::Port)?;
                let port = listener.local_addr().map_err(LayoutError::Port)?.port();
                held.push(listener);
                Ok(format!("127.0.0.1:{port}"))
            };
            let listen = address()?;
            let controller = address()?;
            nodes.push(NodeLayout {
                node_id: i32::try_from(index + 1).unwrap_or(i32::MAX),
                listen,
                controller,
            });
        }
        Ok(Layout {
            nodes,
            replication_factor,
            min_insync_replicas,
        })
    }

    /// The `--controller-quorum-voters` value: `id@host:port,...`.
    pub fn voters(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}@{}", n.node_id, n.controller))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn save(&self, path: &Path) -> Result<(), LayoutError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| LayoutError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(|source| LayoutError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// The layout saved in `dir`, or `None` when the run there was a single broker.
    pub fn load(dir: &Path) -> Result<Option<Layout>, LayoutError> {
        let path = dir.join(LAYOUT_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LayoutError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| LayoutError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })
    }
}

/// The replication factor when `--replication-factor` is not given: min(brokers, 3).
pub fn default_replication_factor(brokers: u32) -> i16 {
    i16::try_from(brokers.min(3)).unwrap_or(3)
}

/// `min.insync.replicas` when `--min-insync-replicas` is not given: 2 when the
/// replication factor is at least 3 (one replica may be down without blocking acks=all,
/// and every ack is on two brokers), else 1.
pub fn default_min_insync_replicas(replication_factor: i16) -> i32 {
    if replication_factor >= 3 {
        2
    } else {
        1
    }
}

/// Broker settings of every node of a cluster run (before `--broker-arg`): short broker
/// sessions and replica lag, so that a killed broker is fenced, re-registers and drops out
/// of (and rejoins) the ISR within seconds rather than Kafka's defaults of tens of
/// seconds; the offsets topic replicated like the verified topic, so that the group's
/// commits survive a broker's loss too; and few offsets partitions, to keep the cluster
/// light on a small machine.
pub fn cluster_settings(layout: &Layout) -> Vec<(String, String)> {
    [
        ("broker.session.timeout.ms", "3000".to_string()),
        ("broker.heartbeat.interval.ms", "500".to_string()),
        ("replica.lag.time.max.ms", "3000".to_string()),
        (
            "offsets.topic.replication.factor",
            layout.replication_factor.to_string(),
        ),
        ("offsets.topic.num.partitions", "4".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// True when every partition has a leader and all its replicas are in sync.
pub fn fully_in_sync(partitions: &[PartitionDescription]) -> bool {
    !partitions.is_empty()
        && partitions.iter().all(|p| {
            p.leader.is_some()
                && !p.replicas.is_empty()
                && p.replicas.iter().all(|r| p.isr.contains(r))
        })
}

/// Leader and leader epoch per partition: what [`leader_changes`] compares.
pub type Leadership = BTreeMap<i32, (Option<i32>, i32)>;

pub fn leadership(partitions: &[PartitionDescription]) -> Leadership {
    partitions
        .iter()
        .map(|p| (p.partition, (p.leader, p.leader_epoch)))
        .collect()
}

/// Partitions whose leader or leader epoch differs between two snapshots (a leader that
/// moved away and back between them shows as one change, by its newer epoch).
pub fn leader_changes(before: &Leadership, after: &Leadership) -> u32 {
    let changed = after
        .iter()
        .filter(|(partition, now)| before.get(partition).is_some_and(|then| then != *now))
        .count();
    u32::try_from(changed).unwrap_or(u32::MAX)
}

/// The brokers of a run and the addresses clients use to reach them.
pub struct Cluster {
    pub nodes: Vec<BrokerProcess>,
    /// Which address the next admin connection tries first (rotates, so a dead broker
    /// is not always tried first).
    next: AtomicUsize,
}

impl Cluster {
    /// One broker, as before clusters: data in `work_dir/log`, output in `broker.log`.
    pub fn single(
        bin: PathBuf,
        address: String,
        work_dir: &Path,
        settings: Vec<(String, String)>,
    ) -> Cluster {
        Cluster {
            nodes: vec![BrokerProcess::new(
                bin,
                address,
                work_dir.join("log"),
                work_dir.join("broker.log"),
                settings,
            )],
            next: AtomicUsize::new(0),
        }
    }

    /// The nodes of `layout`: node N keeps its data in `work_dir/node-N` and its output
    /// in `work_dir/broker-N.log`.
    pub fn from_layout(
        bin: &Path,
        layout: &Layout,
        work_dir: &Path,
        settings: &[(String, String)],
    ) -> Cluster {
        let voters = layout.voters();
        let nodes = layout
            .nodes
            .iter()
            .map(|node| {
                BrokerProcess::new(
                    bin.to_path_buf(),
                    node.listen.clone(),
                    work_dir.join(format!("node-{}", node.node_id)),
                    work_dir.join(format!("broker-{}.log", node.node_id)),
                    settings.to_vec(),
                )
                .with_node(
                    node.node_id,
                    vec![
                        "--node-id".to_string(),
                        node.node_id.to_string(),
                        "--controller-quorum-voters".to_string(),
                        voters.clone(),
                        "--controller-listener".to_string(),
                        node.controller.clone(),
                    ],
                )
            })
            .collect();
        Cluster {
            nodes,
            next: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Every node's Kafka address.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address().to_string()).collect()
    }

    /// A bootstrap list for clients that take several (`a,b,c`).
    pub fn bootstrap(&self) -> String {
        self.addresses().join(",")
    }

    /// Node ids in node order (1 for the single broker).
    pub fn node_ids(&self) -> Vec<i32> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.node_id()
                    .unwrap_or_else(|| i32::try_from(i + 1).unwrap_or(i32::MAX))
            })
            .collect()
    }

    /// Starts every node, then waits for each: a new cluster elects its controller only
    /// once a quorum runs. In a cluster it then waits until every node's Metadata lists
    /// every node, so that topics created next (the offsets topic on the first group
    /// request too) get all their replicas rather than being capped at the brokers
    /// registered so far.
    pub async fn start_all(&mut self, timeout: Duration) -> Result<(), BrokerError> {
        let deadline = Instant::now() + timeout;
        for node in &mut self.nodes {
            node.spawn()?;
        }
        for node in &mut self.nodes {
            node.wait_ready(timeout).await?;
        }
        if !self.is_cluster() {
            return Ok(());
        }
        let mut wanted = self.node_ids();
        wanted.sort_unstable();
        for node in &self.nodes {
            loop {
                let listed = match broker::probe(node.address()).await {
                    Ok(mut listed) => {
                        listed.sort_unstable();
                        listed
                    }
                    Err(error) => {
                        tracing::debug!(%error, "probing {}", node.address());
                        Vec::new()
                    }
                };
                if listed == wanted {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(BrokerError::NotReady {
                        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                        last: format!(
                            "{} lists brokers {listed:?}, not {wanted:?}",
                            node.address()
                        ),
                        log: "the broker-N.log files".to_string(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(SETTLE_POLL_MS)).await;
            }
        }
        Ok(())
    }

    pub async fn kill_all(&mut self) -> Result<(), BrokerError> {
        for node in &mut self.nodes {
            node.kill().await?;
        }
        Ok(())
    }

    /// Stops every node cleanly (SIGTERM to all first, so that controlled shutdowns do
    /// not wait for each other one by one).
    pub async fn terminate_all(&mut self) -> Result<(), BrokerError> {
        let mut first_error = None;
        for node in &mut self.nodes {
            if let Err(error) = node.terminate().await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Fails if any node exited without being told to.
    pub fn check_alive(&mut self) -> Result<(), BrokerError> {
        for node in &mut self.nodes {
            node.check_alive()?;
        }
        Ok(())
    }

    /// An admin client on the first node that answers, trying them in turn.
    pub async fn admin(&self, request_timeout_ms: u64) -> Result<Admin, ClientError> {
        let addresses = self.addresses();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = ClientError::Protocol("no broker address".to_string());
        for i in 0..addresses.len() {
            let address = &addresses[(start + i) % addresses.len()];
            let config = AdminConfig {
                request_timeout_ms,
                ..AdminConfig::default()
            };
            match Admin::connect_with(address, config).await {
                Ok(admin) => return Ok(admin),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    /// Partitions, leaders and ISR of `topic` as some live node reports them.
    pub async fn describe(
        &self,
        topic: &str,
        request_timeout_ms: u64,
    ) -> Result<Vec<PartitionDescription>, ClientError> {
        let mut admin = self.admin(request_timeout_ms).await?;
        let described = admin.describe_topics(&[topic.to_string()]).await?;
        Ok(described
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions)
            .unwrap_or_default())
    }

    /// Waits until every partition of `topic` and of the offsets topic (once it exists)
    /// has a leader and a full ISR; returns the last leadership of `topic` seen and
    /// whether both were in sync before `timeout`.
    pub async fn wait_in_sync(
        &self,
        topic: &str,
        timeout: Duration,
        request_timeout_ms: u64,
    ) -> (Option<Leadership>, bool) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            match self.describe(topic, request_timeout_ms).await {
                Ok(partitions) => {
                    last = Some(leadership(&partitions));
                    if fully_in_sync(&partitions) {
                        match self.describe(OFFSETS_TOPIC, request_timeout_ms).await {
                            Ok(offsets) if offsets.is_empty() || fully_in_sync(&offsets) => {
                                return (last, true)
                            }
                            Ok(_) => {}
                            // Not created yet (no group request so far).
                            Err(error) if error.is_not_found() => return (last, true),
                            Err(error) => tracing::debug!(%error, "describing {OFFSETS_TOPIC}"),
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "describing {topic}; retrying"),
            }
            if Instant::now() >= deadline {
                return (last, false);
            }
            tokio::time::sleep(Duration::from_millis(SETTLE_POLL_MS)).await;
        }
    }
}

/// A free port for the single broker (kept for the single-node path).
pub fn free_address() -> std::io::Result<String> {
    Ok(format!("127.0.0.1:{}", broker::free_port()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(
        partition: i32,
        leader: Option<i32>,
        epoch: i32,
        replicas: &[i32],
        isr: &[i32],
    ) -> PartitionDescription {
        PartitionDescription {
            partition,
            leader,
            leader_epoch: epoch,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            offline_replicas: Vec::new(),
        }
    }

    #[test]
    fn defaults_follow_the_broker_count() {
        assert_eq!(default_replication_factor(1), 1);
        assert_eq!(default_replication_factor(2), 2);
        assert_eq!(default_replication_factor(3), 3);
        assert_eq!(default_replication_factor(5), 3);
        assert_eq!(default_min_insync_replicas(1), 1);
        assert_eq!(default_min_insync_replicas(2), 1);
        assert_eq!(default_min_insync_replicas(3), 2);
    }

    #[test]
    fn a_layout_has_distinct_ports_and_names_every_voter() {
        let layout = Layout::on_free_ports(3, 3, 2).unwrap();
        let mut addresses: Vec<&String> = layout
            .nodes
            .iter()
            .flat_map(|n| [&n.listen, &n.controller])
            .collect();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), 6);
        assert_eq!(
            layout.nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let voters = layout.voters();
        for node in &layout.nodes {
            assert!(voters.contains(&format!("{}@{}", node.node_id, node.controller)));
        }
        assert_eq!(voters.matches('@').count(), 3);
        let settings = cluster_settings(&layout);
        assert!(settings.contains(&(
            "offsets.topic.replication.factor".to_string(),
            "3".to_string()
        )));
    }

    #[test]
    fn a_layout_round_trips_through_its_file() {
        let dir = std::env::temp_dir().join(format!("sluice-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Layout::load(&dir).unwrap(), None);
        let layout = Layout::on_free_ports(2, 2, 1).unwrap();
        layout.save(&dir.join(LAYOUT_FILE)).unwrap();
        assert_eq!(Layout::load(&dir).unwrap(), Some(layout));
        std::fs::write(dir.join(LAYOUT_FILE), "{not json").unwrap();
        assert!(matches!(Layout::load(&dir), Err(LayoutError::Parse { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn in_sync_needs_a_leader_and_every_replica_in_the_isr() {
        assert!(!fully_in_sync(&[]));
        assert!(fully_in_sync(&[
            partition(0, Some(1), 0, &[1, 2, 3], &[3, 1, 2]),
            partition(1, Some(2), 4, &[2, 3, 1], &[2, 3, 1]),
        ]));
        assert!(!fully_in_sync(&[
            partition(0, Some(1), 0, &[1, 2, 3], &[1, 2, 3]),
            partition(1, Some(2), 4, &[2, 3, 1], &[2, 3]),
        ]));
        assert!(!fully_in_sync(&[partition(
            0,
            None,
            0,
            &[1, 2, 3],
            &[1, 2, 3]
        )]));
    }

    #[test]
    fn leader_changes_count_partitions_with_a_new_leader_or_epoch() {
        let before = leadership(&[
            partition(0, Some(1), 0, &[1, 2, 3], &[1, 2, 3]),
            partition(1, Some(2), 0, &[2, 3, 1], &[2, 3, 1]),
            partition(2, Some(3), 0, &[3, 1, 2], &[3, 1, 2]),
        ]);
        let after = leadership(&[
            // Moved to 2.
            partition(0, Some(2), 1, &[1, 2, 3], &[2, 3]),
            // Moved away and back: same leader, newer epoch.
            partition(1, Some(2), 2, &[2, 3, 1], &[2, 3, 1]),
            // Unchanged.
            partition(2, Some(3), 0, &[3, 1, 2], &[3, 1, 2]),
            // Not in the earlier snapshot: not counted.
            partition(3, Some(1), 0, &[1, 2, 3], &[1, 2, 3]),
        ]);
        assert_eq!(leader_changes(&before, &after), 2);
        assert_eq!(leader_changes(&after, &after), 0);
        let offline = leadership(&[partition(2, None, 0, &[3, 1, 2], &[3])]);
        assert_eq!(leader_changes(&before, &offline), 1);
    }
}
