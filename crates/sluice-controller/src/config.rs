//! Controller configuration (Kafka's names in the docs of each field).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::control::ControlConfig;
use crate::error::ControllerError;
use crate::NodeId;

/// Name of the raft directory under a broker's data directory.
pub const METADATA_DIR_NAME: &str = "metadata";

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// `node.id`.
    pub node_id: NodeId,
    /// `controller.quorum.voters`: node id -> `host:port` of its controller listener.
    pub voters: BTreeMap<NodeId, String>,
    /// `controller.listener`: where this node accepts controller RPCs (`host:port`); by
    /// default its own entry in `voters`.
    pub listener: Option<String>,
    /// Raft log, vote and snapshot (`<data dir>/metadata`).
    pub metadata_dir: PathBuf,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How often the leader sends heartbeats (must be well below the election timeout).
    pub raft_heartbeat_interval_ms: u64,
    /// How long `propose` tries (finding a leader, committing) before giving up.
    pub request_timeout_ms: u64,
    /// `broker.session.timeout.ms`: a broker not heartbeating for this long is fenced.
    pub broker_session_timeout_ms: u64,
    /// Take a snapshot after this many log entries since the last one.
    pub snapshot_after_entries: u64,
    /// Log entries kept after a snapshot (lets a lagging follower catch up from the log
    /// instead of a full snapshot).
    pub log_entries_kept_after_snapshot: u64,
    /// Largest RPC frame sent or accepted.
    pub frame_bytes_max: usize,
    /// Rules of the controller logic (producer id block size, partition limits).
    pub control: ControlConfig,
}

impl ControllerConfig {
    /// A single-node quorum (the embedded default): one voter that initialises itself.
    pub fn single_node(node_id: NodeId, listener: String, metadata_dir: PathBuf) -> Self {
        Self::new(node_id, BTreeMap::from([(node_id, listener)]), metadata_dir)
    }

    /// A node of a quorum with the given voters and Kafka's default timings.
    pub fn new(node_id: NodeId, voters: BTreeMap<NodeId, String>, metadata_dir: PathBuf) -> Self {
        Self {
            node_id,
            voters,
            listener: None,
            metadata_dir,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            raft_heartbeat_interval_ms: 250,
            request_timeout_ms: 10_000,
            broker_session_timeout_ms: 9_000,
            snapshot_after_entries: 10_000,
            log_entries_kept_after_snapshot: 1_000,
            frame_bytes_max: 64 * 1024 * 1024,
            control: ControlConfig::default(),
        }
    }

    /// The address this node listens on.
    pub fn listener_address(&self) -> Result<String, ControllerError> {
        match &self.listener {
            Some(listener) => Ok(listener.clone()),
            None => self.voters.get(&self.node_id).cloned().ok_or_else(|| {
                ControllerError::Config(format!(
                    "node.id {} is not one of the controller.quorum.voters",
                    self.node_id
                ))
            }),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ControllerError> {
        if !self.voters.contains_key(&self.node_id) {
            return Err(ControllerError::Config(format!(
                "node.id {} is not one of the controller.quorum.voters {:?}",
                self.node_id, self.voters
            )));
        }
        if self.election_timeout_min_ms == 0
            || self.election_timeout_min_ms >= self.election_timeout_max_ms
            || self.raft_heartbeat_interval_ms >= self.election_timeout_min_ms
        {
            return Err(ControllerError::Config(
                "need 0 < raft heartbeat interval < election timeout min < election timeout max"
                    .into(),
            ));
        }
        if self.request_timeout_ms == 0
            || self.broker_session_timeout_ms == 0
            || self.snapshot_after_entries == 0
        {
            return Err(ControllerError::Config(
                "request timeout, broker session timeout and snapshot interval must be positive"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Parse Kafka's `controller.quorum.voters`: `1@host:port,2@host:port,3@host:port`.
pub fn parse_voters(text: &str) -> Result<BTreeMap<NodeId, String>, ControllerError> {
    let mut voters = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let invalid =
            || ControllerError::Config(format!("invalid voter {item:?}: expected id@host:port"));
        let (id, address) = item.split_once('@').ok_or_else(invalid)?;
        let id: NodeId = id.trim().parse().map_err(|_| invalid())?;
        let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(invalid());
        }
        if voters.insert(id, address.to_string()).is_some() {
            return Err(ControllerError::Config(format!(
                "voter id {id} is listed twice"
            )));
        }
    }
    if voters.is_empty() {
        return Err(ControllerError::Config(
            "controller.quorum.voters is empty".into(),
        ));
    }
    Ok(voters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kafka_voter_lists() {
        let voters = parse_voters("1@localhost:9093, 2@127.0.0.1:9094,3@[::1]:9095").unwrap();
        assert_eq!(voters.len(), 3);
        assert_eq!(voters[&2], "127.0.0.1:9094");
        assert_eq!(voters[&3], "[::1]:9095");
        for bad in [
            "",
            "1@host",
            "x@host:1",
            "1@:9093",
            "1@h:1,1@h:2",
            "1@h:99999",
        ] {
            assert!(parse_voters(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_must_be_a_voter_and_timeouts_ordered() {
        let config = ControllerConfig::new(4, parse_voters("1@h:1").unwrap(), "/tmp/x".into());
        assert!(config.validate().is_err());
        let mut config = ControllerConfig::single_node(1, "h:1".into(), "/tmp/x".into());
        assert!(config.validate().is_ok());
        config.raft_heartbeat_interval_ms = config.election_timeout_min_ms;
        assert!(config.validate().is_err());
    }
}
