//! The broker's side of the controller quorum: starting this node's controller, registering
//! the broker, its heartbeats, the controlled shutdown and the one-time import of a
//! single-node data directory into the quorum.
//!
//! The metadata image of the quorum is the source of truth for topics, partitions,
//! configs and producer ids; `ReplicaManager` follows it (see `ReplicaManager::apply_image`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kafka_protocol::ResponseError;
use sluice_controller::config::{parse_voters, ControllerConfig, METADATA_DIR_NAME};
use sluice_controller::records::{ConfigResource, Endpoint};
use sluice_controller::{Controller, ControllerError, ControllerRequest, ControllerResponse};
use tokio::net::TcpListener;

use crate::config::BrokerConfig;
use crate::metadata_store::{write_atomically, MetadataStore};

/// Marker written into `__cluster_metadata/` once the single-node metadata has been
/// imported into the quorum: from then on the quorum is the source of truth and
/// `metadata.json` is only kept for reference (never imported twice, which would bring
/// back deleted topics).
pub const IMPORT_DONE_MARKER: &str = "imported-into-quorum";
/// Directory of the single-node metadata (`metadata_store.rs`).
const LEGACY_METADATA_DIR: &str = "__cluster_metadata";
/// The voter address a single in-process voter records in its membership: it never
/// dials itself, so no reachable address is needed.
const SINGLE_VOTER_ADDRESS: &str = "127.0.0.1:0";
/// Pause between attempts while the quorum has no leader yet (a cluster whose voters
/// start one after the other).
const RETRY_PAUSE_MS: u64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("controller: {0}")]
    Controller(#[from] ControllerError),
    #[error("cannot bind the controller listener {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("the controller answered {0:?} to {1}")]
    UnexpectedAnswer(ControllerResponse, &'static str),
    #[error("migration of the single-node metadata: {0}")]
    Migration(String),
}

/// The controller configuration of this node: the voters of `controller.quorum.voters`, or
/// this node alone.
pub fn controller_config(config: &BrokerConfig) -> Result<ControllerConfig, ClusterError> {
    let node_id = u64::try_from(config.node_id())
        .map_err(|_| ControllerError::Config("node.id must not be negative".into()))?;
    let metadata_dir = config.data_dir().join(METADATA_DIR_NAME);
    let mut controller = match config.controller_quorum_voters() {
        Some(voters) => ControllerConfig::new(node_id, parse_voters(&voters)?, metadata_dir),
        None => ControllerConfig::single_node(node_id, SINGLE_VOTER_ADDRESS.into(), metadata_dir),
    };
    controller.listener = config.controller_listener();
    controller.broker_session_timeout_ms = config.broker_session_timeout_ms();
    Ok(controller)
}

/// Starts this node's controller. A sole voter without `controller.listener` opens no
/// listener at all: nobody needs to reach it (a single node keeps exactly one port).
pub async fn start_controller(config: &BrokerConfig) -> Result<Controller, ClusterError> {
    let controller_config = controller_config(config)?;
    let single = controller_config.voters.len() == 1;
    let address = match (&controller_config.listener, single) {
        (Some(listener), _) => listener.clone(),
        (None, true) => return Ok(Controller::start_sole_voter(controller_config).await?),
        (None, false) => controller_config.listener_address()?,
    };
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|source| ClusterError::Listen {
            address: address.clone(),
            source,
        })?;
    Ok(Controller::start_with_listener(controller_config, listener).await?)
}

/// Proposes `request`, retrying while the quorum has no leader (REQUEST_TIMED_OUT), e.g.
/// while the other voters of a new cluster are still starting. Other errors are returned.
pub async fn propose_until_leader(
    controller: &Controller,
    request: ControllerRequest,
    what: &'static str,
) -> Result<ControllerResponse, ControllerError> {
    loop {
        match controller.propose(request.clone()).await {
            Err(ControllerError::Timeout { timeout_ms }) => {
                tracing::warn!(
                    timeout_ms,
                    what,
                    "no controller quorum yet; retrying (are the other voters up?)"
                );
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            }
            other => return other,
        }
    }
}

/// This broker's listener as the controller records it.
pub fn endpoint(config: &BrokerConfig) -> Endpoint {
    let (host, port) = config.advertised();
    Endpoint {
        name: "PLAINTEXT".to_string(),
        host,
        port,
    }
}

/// Registers this broker (a new incarnation: it starts fenced) and returns its broker epoch.
/// A restart right after a crash is refused with DUPLICATE_BROKER_REGISTRATION while the
/// old incarnation's session lasts (`broker.session.timeout.ms`): retried until it expired.
pub async fn register(
    controller: &Controller,
    config: &BrokerConfig,
    incarnation_id: uuid::Uuid,
) -> Result<i64, ClusterError> {
    let request = ControllerRequest::RegisterBroker {
        broker_id: config.node_id(),
        incarnation_id,
        endpoints: vec![endpoint(config)],
        rack: config.broker_rack(),
    };
    let answer = loop {
        match propose_until_leader(controller, request.clone(), "register the broker").await {
            Err(error) if error.code() == ResponseError::DuplicateBrokerRegistration.code() => {
                tracing::info!(
                    "the previous incarnation of this broker is still registered; retrying until its session expires"
                );
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            }
            other => break other?,
        }
    };
    match answer {
        ControllerResponse::BrokerRegistered { broker_epoch } => {
            tracing::info!(
                broker_id = config.node_id(),
                broker_epoch,
                "broker registered with the controller"
            );
            Ok(broker_epoch)
        }
        other => Err(ClusterError::UnexpectedAnswer(other, "RegisterBroker")),
    }
}

/// Proposes this directory's cluster id; returns the cluster's (the first one claimed).
pub async fn claim_cluster_id(
    controller: &Controller,
    local_cluster_id: &str,
) -> Result<String, ClusterError> {
    let request = ControllerRequest::ClaimClusterId {
        cluster_id: local_cluster_id.to_string(),
    };
    match propose_until_leader(controller, request, "claim the cluster id").await? {
        ControllerResponse::ClusterId { cluster_id } => Ok(cluster_id),
        other => Err(ClusterError::UnexpectedAnswer(other, "ClaimClusterId")),
    }
}

/// One heartbeat; returns `(is_fenced, should_shut_down)`.
pub async fn heartbeat(
    controller: &Controller,
    broker_id: i32,
    broker_epoch: i64,
    want_shutdown: bool,
) -> Result<(bool, bool), ClusterError> {
    let request = ControllerRequest::BrokerHeartbeat {
        broker_id,
        broker_epoch,
        want_fence: false,
        want_shutdown,
    };
    match controller.propose(request).await? {
        ControllerResponse::Heartbeat {
            is_fenced,
            should_shut_down,
        } => Ok((is_fenced, should_shut_down)),
        other => Err(ClusterError::UnexpectedAnswer(other, "BrokerHeartbeat")),
    }
}

/// Imports the single-node metadata (`__cluster_metadata/metadata.json`) into the quorum
/// once: every topic with its id and configs on this node, the dynamic broker configs, and
/// a producer id floor past every id the old store may have handed out. Idempotent: a
/// topic already in the image with the same id is skipped, so a crash in the middle is
/// repaired by the next start. Returns the number of topics imported.
pub async fn import_single_node_metadata(
    controller: &Controller,
    data_dir: &Path,
    legacy: &MetadataStore,
    node_id: i32,
) -> Result<usize, ClusterError> {
    let legacy_dir = data_dir.join(LEGACY_METADATA_DIR);
    if legacy_dir.join(IMPORT_DONE_MARKER).exists() || !legacy.has_image() {
        return Ok(0);
    }
    let mut imported = 0;
    for topic in legacy.topics() {
        let image = controller.current_image();
        match image.topic_by_name(&topic.name) {
            Some(existing) if existing.topic_id == topic.id => continue,
            Some(existing) => {
                return Err(ClusterError::Migration(format!(
                    "topic '{}' is in the quorum with id {} but on disk with id {}",
                    topic.name, existing.topic_id, topic.id
                )))
            }
            None => {}
        }
        let partitions = usize::try_from(topic.partitions).unwrap_or(0);
        let request = ControllerRequest::ImportTopic {
            name: topic.name.clone(),
            topic_id: topic.id,
            assignments: vec![vec![node_id]; partitions],
            configs: topic.configs.clone(),
        };
        propose_until_leader(controller, request, "import a topic").await?;
        imported += 1;
        tracing::info!(topic = %topic.name, topic_id = %topic.id, partitions, "imported topic into the controller quorum");
    }
    for (resource_name, configs) in legacy.all_broker_configs() {
        let resource = if resource_name.is_empty() {
            ConfigResource::ClusterDefault
        } else {
            match resource_name.parse::<i32>() {
                Ok(id) => ConfigResource::Broker(id),
                Err(_) => {
                    tracing::warn!(resource = %resource_name, "skipping dynamic configs of an unknown resource");
                    continue;
                }
            }
        };
        let entries: BTreeMap<String, Option<String>> = configs
            .into_iter()
            .map(|(key, value)| (key, Some(value)))
            .collect();
        if entries.is_empty() {
            continue;
        }
        propose_until_leader(
            controller,
            ControllerRequest::AlterConfigs { resource, entries },
            "import dynamic configs",
        )
        .await?;
    }
    let floor = legacy.producer_id_block_end();
    if floor > 0 {
        propose_until_leader(
            controller,
            ControllerRequest::RaiseProducerIdFloor {
                next_producer_id: floor,
            },
            "import the producer id floor",
        )
        .await?;
    }
    write_atomically(&legacy_dir, IMPORT_DONE_MARKER, b"1\n")
        .map_err(|e| ClusterError::Migration(e.to_string()))?;
    tracing::info!(
        topics = imported,
        producer_id_floor = floor,
        "single-node metadata imported into the controller quorum"
    );
    Ok(imported)
}
