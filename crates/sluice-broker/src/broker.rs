//! The broker process: shared state behind one handle, start-up and graceful shutdown.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::BrokerConfig;
use crate::group::GroupCoordinator;
use crate::replica_manager::{ReplicaManager, TopicError};
use crate::server;

/// State shared by every connection.
pub struct Broker {
    pub(crate) cluster_id: String,
    pub replicas: Arc<ReplicaManager>,
    /// The group coordinator (every group of this node) and committed offsets.
    pub groups: Arc<GroupCoordinator>,
    /// Test-only produce response faults (off unless `test.fault.*` settings are set).
    pub faults: server::FaultSwitch,
    /// Request and connection counters for the metrics endpoint.
    pub metrics: Arc<crate::metrics::BrokerMetrics>,
    /// Turns true at shutdown: parked requests answer at once instead of waiting out
    /// their deadline.
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Broker {
    /// The effective configuration (static plus dynamic settings) at this moment.
    pub fn config(&self) -> Arc<BrokerConfig> {
        self.replicas.config()
    }

    pub fn node_id(&self) -> i32 {
        self.replicas.config().node_id()
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the data directory: {0}")]
    Storage(#[from] TopicError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}

/// A started broker: its bound address and the handle that stops it.
pub struct RunningBroker {
    pub local_addr: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningBroker {
    /// Stops accepting, lets in-flight requests finish, flushes every partition.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let _ = self.task.await;
    }
}

/// A listener on port 0 gets a port from the OS; clients must be told that one.
fn advertise_bound_port(config: &mut BrokerConfig, bound_port: u16) {
    let (host, port) = config.advertised();
    if port == 0 {
        let address = if host.contains(':') {
            format!("[{host}]:{bound_port}")
        } else {
            format!("{host}:{bound_port}")
        };
        if let Err(error) = config.set("advertised.listeners", &address) {
            tracing::error!(%error, "cannot advertise the bound port");
        }
    }
}

/// Binds the listener, starts this node's controller and registers the broker, opens the
/// partitions the metadata image assigns to it (recovering every log) and serves.
pub async fn start(config: BrokerConfig) -> Result<RunningBroker, StartError> {
    let (host, port) = config.listen();
    let address = format!("{host}:{port}");
    // Bound first: the controller registers the advertised address, which needs the port.
    // Clients that connect before the broker serves wait in the accept backlog.
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|source| StartError::Listen {
            address: address.clone(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        address: address.clone(),
        source,
    })?;
    let mut config = config;
    advertise_bound_port(&mut config, local_addr.port());
    let replicas = ReplicaManager::start(config.clone()).await?;
    let groups =
        tokio::task::block_in_place(|| GroupCoordinator::open(Arc::clone(&replicas), &config))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let faults = server::FaultSwitch::new(&config);
    let broker = Arc::new(Broker {
        cluster_id: replicas.cluster_id(),
        replicas: Arc::clone(&replicas),
        groups: Arc::clone(&groups),
        faults,
        metrics: Arc::default(),
        shutdown: shutdown_rx.clone(),
    });
    let metrics_http =
        crate::http::spawn(&config, Arc::clone(&broker), shutdown_rx.clone()).await?;
    let checkpointer = tokio::spawn(Arc::clone(&replicas).run_checkpointer(shutdown_rx.clone()));
    let group_timers = tokio::spawn(groups.run(shutdown_rx.clone()));
    let retention = tokio::spawn(crate::retention::run_retention(
        Arc::clone(&replicas),
        shutdown_rx.clone(),
    ));
    let log_cleaner = tokio::spawn(crate::log_cleaner::run_log_cleaner(
        Arc::clone(&replicas),
        shutdown_rx.clone(),
    ));
    let producer_expiration =
        tokio::spawn(Arc::clone(&replicas).run_producer_expiration(shutdown_rx.clone()));
    let heartbeats = tokio::spawn(Arc::clone(&replicas).run_heartbeats(shutdown_rx.clone()));
    let isr_maintenance =
        tokio::spawn(Arc::clone(&replicas).run_isr_maintenance(shutdown_rx.clone()));
    let leader_rebalance =
        tokio::spawn(Arc::clone(&replicas).run_leader_rebalance(shutdown_rx.clone()));
    let node_id = replicas.config().node_id();
    let task = tokio::spawn(async move {
        server::run_listener(listener, broker, shutdown_rx).await;
        let _ = checkpointer.await;
        let _ = group_timers.await;
        let _ = retention.await;
        let _ = log_cleaner.await;
        let _ = producer_expiration.await;
        let _ = heartbeats.await;
        let _ = isr_maintenance.await;
        let _ = leader_rebalance.await;
        replicas.controlled_shutdown().await;
        if let Some(metrics_http) = metrics_http {
            let _ = metrics_http.await;
        }
        let flushing = Arc::clone(&replicas);
        let _ = tokio::task::spawn_blocking(move || flushing.shutdown()).await;
        tracing::info!("broker stopped; every partition flushed");
    });
    tracing::info!(%local_addr, node_id, "broker listening");
    Ok(RunningBroker {
        local_addr,
        shutdown,
        task,
    })
}
