//! [`Controller`]: one node of the metadata quorum, and the API brokers use.
//!
//! Requests are planned by the leader against its image and committed through raft, one at
//! a time (a mutex on the leader), so every plan sees every earlier record. A node that is
//! not the leader forwards the request to the leader over the controller listener; brokers
//! can therefore call any controller. The leader also runs the broker session check: a
//! broker whose heartbeats stop for `broker_session_timeout_ms` is fenced and its partitions
//! get new leaders.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::ControllerConfig;
use crate::control::{self, ControllerRequest, ControllerResponse, Plan};
use crate::error::{ApiError, ControllerError};
use crate::image::MetadataImage;
use crate::network::{
    read_frame, write_frame, ForwardError, NetworkFactory, RpcClient, RpcRequest, RpcResponse,
};
use crate::records::MetadataBatch;
use crate::storage::{LogStore, StateMachineStore};
use crate::{NodeId, TypeConfig};

/// Pause between attempts while there is no leader (or it just changed).
const RETRY_BACKOFF_MS: u64 = 50;
/// Pause between first-boot probes of the other voters.
const INIT_PROBE_INTERVAL_MS: u64 = 200;

/// A snapshot of this node's view of the quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerMetrics {
    pub node_id: NodeId,
    pub current_leader: Option<NodeId>,
    pub current_term: u64,
    pub is_leader: bool,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub voters: Vec<NodeId>,
    /// From this node's image.
    pub brokers_registered: usize,
    pub brokers_fenced: usize,
    pub topics: usize,
    pub partitions: usize,
    /// Partitions without a leader (no eligible in-sync replica).
    pub partitions_offline: usize,
    /// Requests proposed through this node (including forwarded ones it sent on).
    pub proposals_total: u64,
    /// Of those, the ones that ended in an error (refused, timed out, shut down).
    pub proposals_failed_total: u64,
    /// Brokers this node fenced as leader because their session expired.
    pub brokers_fenced_by_session_total: u64,
}

impl ControllerMetrics {
    /// Append the metrics in Prometheus text format (`sluice_controller_*`).
    pub fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let node = self.node_id;
        let mut gauge = |name: &str, help: &str, kind: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{node_id=\"{node}\"}} {value}");
        };
        let optional = |value: Option<u64>| value.map_or(-1.0, |v| v as f64);
        gauge(
            "sluice_controller_is_leader",
            "1 if this node is the active controller.",
            "gauge",
            f64::from(u8::from(self.is_leader)),
        );
        gauge(
            "sluice_controller_leader_id",
            "Node id of the active controller as this node knows it, -1 if none.",
            "gauge",
            optional(self.current_leader),
        );
        gauge(
            "sluice_controller_term",
            "Current raft term.",
            "gauge",
            self.current_term as f64,
        );
        gauge(
            "sluice_controller_last_log_index",
            "Index of the last metadata log entry, -1 if none.",
            "gauge",
            optional(self.last_log_index),
        );
        gauge(
            "sluice_controller_last_applied_index",
            "Index of the last applied metadata log entry, -1 if none.",
            "gauge",
            optional(self.last_applied_index),
        );
        gauge(
            "sluice_controller_snapshot_index",
            "Last index in the latest metadata snapshot, -1 if none.",
            "gauge",
            optional(self.snapshot_index),
        );
        gauge(
            "sluice_controller_voters",
            "Number of voters in the quorum.",
            "gauge",
            self.voters.len() as f64,
        );
        gauge(
            "sluice_controller_brokers_registered",
            "Registered brokers.",
            "gauge",
            self.brokers_registered as f64,
        );
        gauge(
            "sluice_controller_brokers_fenced",
            "Fenced brokers.",
            "gauge",
            self.brokers_fenced as f64,
        );
        gauge(
            "sluice_controller_topics",
            "Topics.",
            "gauge",
            self.topics as f64,
        );
        gauge(
            "sluice_controller_partitions",
            "Partitions.",
            "gauge",
            self.partitions as f64,
        );
        gauge(
            "sluice_controller_partitions_offline",
            "Partitions without a leader.",
            "gauge",
            self.partitions_offline as f64,
        );
        gauge(
            "sluice_controller_proposals_total",
            "Requests proposed through this node.",
            "counter",
            self.proposals_total as f64,
        );
        gauge(
            "sluice_controller_proposals_failed_total",
            "Proposals that ended in an error.",
            "counter",
            self.proposals_failed_total as f64,
        );
        gauge(
            "sluice_controller_brokers_fenced_by_session_total",
            "Brokers fenced by this node for an expired session.",
            "counter",
            self.brokers_fenced_by_session_total as f64,
        );
    }
}

/// The outcome of one attempt: retry (nothing was written) or finish.
enum Attempt {
    Retry,
    Done(Result<ControllerResponse, ControllerError>),
}

/// Leader-side broker liveness: last heartbeat per broker, reset when leadership changes
/// (a new leader gives every broker a full session before fencing it).
#[derive(Default)]
struct SessionTracker {
    term: u64,
    last_heartbeat: HashMap<i32, Instant>,
}

#[derive(Default)]
struct Counters {
    proposals_total: AtomicU64,
    proposals_failed_total: AtomicU64,
    brokers_fenced_by_session_total: AtomicU64,
}

struct Inner {
    node_id: NodeId,
    counters: Counters,
    config: ControllerConfig,
    raft: Raft<TypeConfig>,
    image: watch::Receiver<Arc<MetadataImage>>,
    /// One request at a time on the leader: each plan sees the records of the previous one.
    propose_lock: Mutex<()>,
    sessions: std::sync::Mutex<SessionTracker>,
    /// Idle forwarding connections per peer.
    peer_clients: std::sync::Mutex<HashMap<NodeId, Vec<RpcClient>>>,
    shutdown: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// A node of the metadata quorum. Cheap to clone (all clones share the node).
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

impl Controller {
    /// Start a node: bind the controller listener, open `metadata/`, join the quorum.
    pub async fn start(config: ControllerConfig) -> Result<Self, ControllerError> {
        let address = config.listener_address()?;
        let listener = TcpListener::bind(&address).await?;
        Self::start_with_listener(config, listener).await
    }

    /// Like [`Controller::start`] with an already bound listener (tests bind port 0 first).
    pub async fn start_with_listener(
        config: ControllerConfig,
        listener: TcpListener,
    ) -> Result<Self, ControllerError> {
        Self::start_inner(config, Some(listener)).await
    }

    /// Starts the only voter of a one-voter quorum without any listener: nobody sends it
    /// RPCs (there are no peers), so a single-node broker opens no extra port. Refused
    /// for a quorum with other voters.
    pub async fn start_sole_voter(config: ControllerConfig) -> Result<Self, ControllerError> {
        if config.voters.len() != 1 {
            return Err(ControllerError::Config(format!(
                "a controller without a listener must be the only voter, not one of {:?}",
                config.voters
            )));
        }
        Self::start_inner(config, None).await
    }

    async fn start_inner(
        config: ControllerConfig,
        listener: Option<TcpListener>,
    ) -> Result<Self, ControllerError> {
        config.validate()?;
        let raft_config = openraft::Config {
            cluster_name: "sluice".to_string(),
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            heartbeat_interval: config.raft_heartbeat_interval_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: config.log_entries_kept_after_snapshot,
            purge_batch_size: 1,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| ControllerError::Config(e.to_string()))?,
        );
        let log_store = LogStore::open(&config.metadata_dir)?;
        let (state_machine, image) = StateMachineStore::open(&config.metadata_dir)?;
        let network = NetworkFactory {
            frame_bytes_max: config.frame_bytes_max,
        };
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ControllerError::Raft(e.to_string()))?;
        warn_if_voters_differ(&raft, &config);
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            node_id: config.node_id,
            counters: Counters::default(),
            config,
            raft,
            image,
            propose_lock: Mutex::new(()),
            sessions: std::sync::Mutex::new(SessionTracker::default()),
            peer_clients: std::sync::Mutex::new(HashMap::new()),
            shutdown,
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        tracing::info!(
            node_id = inner.node_id,
            address = ?listener.as_ref().and_then(|l| l.local_addr().ok()),
            voters = ?inner.config.voters,
            "controller started"
        );
        let mut tasks = vec![
            tokio::spawn(initialize_when_ready(inner.clone())),
            tokio::spawn(check_broker_sessions(inner.clone())),
        ];
        if let Some(listener) = listener {
            tasks.push(tokio::spawn(serve(inner.clone(), listener)));
        }
        inner.lock_tasks().extend(tasks);
        Ok(Self { inner })
    }

    /// Commit a request through the quorum and return its answer. Forwarded to the leader
    /// when this node is not the leader; retried while there is no leader, until
    /// `request_timeout_ms`.
    pub async fn propose(
        &self,
        request: ControllerRequest,
    ) -> Result<ControllerResponse, ControllerError> {
        let timeout_ms = self.inner.config.request_timeout_ms;
        self.inner
            .counters
            .proposals_total
            .fetch_add(1, Ordering::Relaxed);
        let result = self.propose_until(request, timeout_ms).await;
        if result.is_err() {
            self.inner
                .counters
                .proposals_failed_total
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn propose_until(
        &self,
        request: ControllerRequest,
        timeout_ms: u64,
    ) -> Result<ControllerResponse, ControllerError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if *self.inner.shutdown.borrow() {
                return Err(ControllerError::Shutdown);
            }
            let attempt = match self.leader_id() {
                Some(leader) if leader == self.inner.node_id => {
                    let inner = &self.inner;
                    inner
                        .propose_on_leader(deadline, |image, config| {
                            inner.plan_request(image, config, &request)
                        })
                        .await
                }
                Some(leader) => self.inner.forward(leader, &request, deadline).await,
                None => Attempt::Retry,
            };
            match attempt {
                Attempt::Done(result) => {
                    if result.is_ok() {
                        self.inner.note_heartbeat(&request);
                    }
                    return result;
                }
                Attempt::Retry => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ControllerError::Timeout { timeout_ms });
                    }
                    let pause =
                        tokio::time::Instant::now() + Duration::from_millis(RETRY_BACKOFF_MS);
                    tokio::time::sleep_until(pause.min(deadline)).await;
                }
            }
        }
    }

    /// A receiver of the metadata image: `borrow()` for the current one, `changed()` to
    /// wait for the next. Images are immutable `Arc`s, cheap to hold.
    pub fn image(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.inner.image.clone()
    }

    /// The current metadata image of this node (may lag the leader's).
    pub fn current_image(&self) -> Arc<MetadataImage> {
        self.inner.image.borrow().clone()
    }

    /// The node id of the current leader as this node knows it.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn metrics(&self) -> ControllerMetrics {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let image = self.current_image();
        let counters = &self.inner.counters;
        ControllerMetrics {
            brokers_registered: image.brokers.len(),
            brokers_fenced: image.brokers.values().filter(|b| b.fenced).count(),
            topics: image.topics.len(),
            partitions: image.topics.values().map(|t| t.partitions.len()).sum(),
            partitions_offline: image.offline_partitions().len(),
            proposals_total: counters.proposals_total.load(Ordering::Relaxed),
            proposals_failed_total: counters.proposals_failed_total.load(Ordering::Relaxed),
            brokers_fenced_by_session_total: counters
                .brokers_fenced_by_session_total
                .load(Ordering::Relaxed),
            node_id: self.inner.node_id,
            current_leader: metrics.current_leader,
            current_term: metrics.current_term,
            is_leader: metrics.state == ServerState::Leader,
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            voters: metrics.membership_config.membership().voter_ids().collect(),
        }
    }

    /// openraft's own metrics, for waiting on conditions in tests and diagnostics.
    pub fn raft_metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, BasicNode>> {
        self.inner.raft.metrics()
    }

    /// Stop this node: no more RPCs are served, raft stops, the listener closes.
    pub async fn shutdown(&self) {
        if self.inner.shutdown.send_replace(true) {
            return;
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        let tasks = std::mem::take(&mut *self.inner.lock_tasks());
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        tracing::info!(node_id = self.inner.node_id, "controller stopped");
    }
}

/// The quorum's membership lives in the log; `controller.quorum.voters` is only used to
/// initialise it and to find peers. Changing the voters of an existing quorum is not
/// supported (no membership change yet): say so rather than misbehave quietly.
fn warn_if_voters_differ(raft: &Raft<TypeConfig>, config: &ControllerConfig) {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let stored: BTreeMap<NodeId, String> = metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect();
    if !stored.is_empty() && stored != config.voters {
        tracing::warn!(
            stored = ?stored,
            configured = ?config.voters,
            "controller.quorum.voters differs from the voters stored in the metadata log; the stored ones are used"
        );
    }
}

/// Placement seed: varies the start broker of new topics like Kafka's random start index.
fn rand_seed() -> u64 {
    Uuid::new_v4().as_u64_pair().0
}

impl Inner {
    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, SessionTracker> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Plan a request on the leader. Beyond the pure rules of [`control::plan`], this refuses
    /// a registration with a new incarnation id while the registered incarnation is still
    /// heartbeating (two processes configured with one broker id), as Kafka does with
    /// DUPLICATE_BROKER_REGISTRATION; the restarted broker retries and gets in once the old
    /// session expires.
    fn plan_request(
        &self,
        image: &MetadataImage,
        config: &control::ControlConfig,
        request: &ControllerRequest,
    ) -> Result<Plan, ApiError> {
        if let ControllerRequest::RegisterBroker {
            broker_id,
            incarnation_id,
            ..
        } = request
        {
            if let Some(existing) = image.brokers.get(broker_id) {
                let session = Duration::from_millis(self.config.broker_session_timeout_ms);
                let other_alive = !existing.fenced
                    && existing.incarnation_id != *incarnation_id
                    && self
                        .lock_sessions()
                        .last_heartbeat
                        .get(broker_id)
                        .is_some_and(|last| last.elapsed() <= session);
                if other_alive {
                    return Err(ApiError::new(
                        ResponseError::DuplicateBrokerRegistration,
                        format!("broker {broker_id} is registered by another live incarnation"),
                    ));
                }
            }
        }
        control::plan(image, config, request, Uuid::new_v4(), rand_seed())
    }

    /// Record a broker's liveness on the leader after a successful heartbeat/registration.
    fn note_heartbeat(&self, request: &ControllerRequest) {
        let broker_id = match request {
            ControllerRequest::BrokerHeartbeat { broker_id, .. }
            | ControllerRequest::RegisterBroker { broker_id, .. } => *broker_id,
            _ => return,
        };
        self.lock_sessions()
            .last_heartbeat
            .insert(broker_id, Instant::now());
    }

    /// Plan against an up-to-date image and commit, on the leader.
    async fn propose_on_leader(
        &self,
        deadline: tokio::time::Instant,
        planner: impl FnOnce(&MetadataImage, &control::ControlConfig) -> Result<Plan, ApiError>,
    ) -> Attempt {
        let timeout_ms = self.config.request_timeout_ms;
        let _turn = match tokio::time::timeout_at(deadline, self.propose_lock.lock()).await {
            Ok(turn) => turn,
            Err(_) => return Attempt::Done(Err(ControllerError::Timeout { timeout_ms })),
        };
        // A new leader may not have applied every committed record yet: wait until it has.
        match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
            Err(_) => return Attempt::Done(Err(ControllerError::Timeout { timeout_ms })),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                return Attempt::Retry
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                return Attempt::Retry
            }
            Ok(Err(e)) => return Attempt::Done(Err(ControllerError::Raft(e.to_string()))),
            Ok(Ok(_)) => {}
        }
        let image = self.image.borrow().clone();
        let plan = match planner(&image, &self.config.control) {
            Ok(plan) => plan,
            Err(e) => return Attempt::Done(Err(ControllerError::Api(e))),
        };
        if plan.records.is_empty() {
            return Attempt::Done(Ok(plan.response));
        }
        let batch = MetadataBatch::new(plan.records);
        match tokio::time::timeout_at(deadline, self.raft.client_write(batch)).await {
            Err(_) => Attempt::Done(Err(ControllerError::Timeout { timeout_ms })),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Attempt::Retry,
            Ok(Err(e)) => Attempt::Done(Err(ControllerError::Raft(e.to_string()))),
            Ok(Ok(written)) => {
                let response = if plan.broker_epoch_from_index {
                    ControllerResponse::BrokerRegistered {
                        broker_epoch: i64::try_from(written.log_id.index).unwrap_or(i64::MAX),
                    }
                } else {
                    plan.response
                };
                Attempt::Done(Ok(response))
            }
        }
    }

    fn peer_address(&self, node_id: NodeId) -> Option<String> {
        self.config.voters.get(&node_id).cloned()
    }

    fn take_client(&self, node_id: NodeId, address: String) -> RpcClient {
        let mut pool = self.peer_clients.lock().unwrap_or_else(|e| e.into_inner());
        pool.get_mut(&node_id)
            .and_then(Vec::pop)
            .unwrap_or_else(|| RpcClient::new(address, self.config.frame_bytes_max))
    }

    fn return_client(&self, node_id: NodeId, client: RpcClient) {
        let mut pool = self.peer_clients.lock().unwrap_or_else(|e| e.into_inner());
        pool.entry(node_id).or_default().push(client);
    }

    /// Send the request to the leader. Connection failures retry (the leader may be gone);
    /// a request that reached the leader is not resent unless the leader says it is not
    /// the leader any more.
    async fn forward(
        &self,
        leader: NodeId,
        request: &ControllerRequest,
        deadline: tokio::time::Instant,
    ) -> Attempt {
        let Some(address) = self.peer_address(leader) else {
            tracing::warn!(leader, "leader is not among the configured voters");
            return Attempt::Retry;
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut client = self.take_client(leader, address);
        let response = client
            .call(&RpcRequest::Propose(request.clone()), remaining)
            .await;
        match response {
            Ok(RpcResponse::Propose(result)) => {
                self.return_client(leader, client);
                match result {
                    Ok(response) => Attempt::Done(Ok(response)),
                    Err(ForwardError::NotLeader) => Attempt::Retry,
                    Err(ForwardError::Api(e)) => Attempt::Done(Err(ControllerError::Api(e))),
                    Err(ForwardError::Timeout { timeout_ms }) => {
                        Attempt::Done(Err(ControllerError::Timeout { timeout_ms }))
                    }
                    Err(ForwardError::Failed(message)) => {
                        Attempt::Done(Err(ControllerError::Raft(message)))
                    }
                }
            }
            Ok(other) => {
                tracing::warn!(leader, response = ?other, "unexpected answer to a forwarded proposal");
                Attempt::Retry
            }
            Err(e) => {
                tracing::debug!(leader, error = %e, "forwarding to the controller leader failed");
                Attempt::Retry
            }
        }
    }

    /// A proposal forwarded by another node: handle it here only if this node leads.
    async fn handle_forwarded(
        &self,
        request: ControllerRequest,
    ) -> Result<ControllerResponse, ForwardError> {
        if self.raft.metrics().borrow().current_leader != Some(self.node_id) {
            return Err(ForwardError::NotLeader);
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
        let attempt = self
            .propose_on_leader(deadline, |image, config| {
                self.plan_request(image, config, &request)
            })
            .await;
        match attempt {
            Attempt::Retry => Err(ForwardError::NotLeader),
            Attempt::Done(Ok(response)) => {
                self.note_heartbeat(&request);
                Ok(response)
            }
            Attempt::Done(Err(ControllerError::Api(e))) => Err(ForwardError::Api(e)),
            Attempt::Done(Err(ControllerError::Timeout { timeout_ms })) => {
                Err(ForwardError::Timeout { timeout_ms })
            }
            Attempt::Done(Err(e)) => Err(ForwardError::Failed(e.to_string())),
        }
    }

    async fn handle_rpc(&self, request: RpcRequest) -> RpcResponse {
        match request {
            RpcRequest::AppendEntries(rpc) => {
                RpcResponse::AppendEntries(self.raft.append_entries(rpc).await)
            }
            RpcRequest::Vote(rpc) => RpcResponse::Vote(self.raft.vote(rpc).await),
            RpcRequest::InstallSnapshot(rpc) => {
                RpcResponse::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            RpcRequest::Propose(request) => {
                RpcResponse::Propose(self.handle_forwarded(request).await)
            }
            RpcRequest::Probe => RpcResponse::Probe {
                initialized: self.raft.is_initialized().await.unwrap_or(true),
            },
        }
    }
}

/// Resolves once shutdown is signalled (or the controller is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopped| *stopped).await;
}

/// Accept controller connections until shutdown.
async fn serve(inner: Arc<Inner>, listener: TcpListener) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let inner = inner.clone();
                    // Connection tasks end by themselves on shutdown (see `serve_connection`).
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(inner, stream).await {
                            tracing::debug!(%peer, error = %e, "controller connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a controller connection failed");
                    tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await;
                }
            }
        }
    }
}

/// Serve one connection: requests answered in order, until EOF, error or shutdown.
async fn serve_connection(inner: Arc<Inner>, mut stream: TcpStream) -> std::io::Result<()> {
    let mut shutdown = inner.shutdown.subscribe();
    let frame_bytes_max = inner.config.frame_bytes_max;
    loop {
        let request = tokio::select! {
            _ = stopped(&mut shutdown) => return Ok(()),
            request = read_frame::<RpcRequest>(&mut stream, frame_bytes_max) => request?,
        };
        let Some(request) = request else {
            return Ok(());
        };
        let response = tokio::select! {
            _ = stopped(&mut shutdown) => return Ok(()),
            response = inner.handle_rpc(request) => response,
        };
        write_frame(&mut stream, &response, frame_bytes_max).await?;
    }
}

/// First boot: a single voter initialises itself; in a larger quorum the voter with the
/// lowest id initialises once every other voter answers that it has no state. A node that
/// restarts from its directory is already initialised and does nothing.
async fn initialize_when_ready(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let lowest = inner.config.voters.keys().next().copied();
    if lowest != Some(inner.node_id) {
        return;
    }
    let members: BTreeMap<NodeId, BasicNode> = inner
        .config
        .voters
        .iter()
        .map(|(id, address)| (*id, BasicNode::new(address)))
        .collect();
    loop {
        match inner.raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "raft stopped before initialisation");
                return;
            }
        }
        match probe_peers(&inner).await {
            Some(true) => {
                tracing::info!("another voter already has quorum state; joining it");
                return;
            }
            Some(false) => {
                match inner.raft.initialize(members.clone()).await {
                    Ok(()) => {
                        tracing::info!(voters = ?members.keys().collect::<Vec<_>>(), "initialised the metadata quorum")
                    }
                    Err(e) => tracing::warn!(error = %e, "initialising the metadata quorum failed"),
                }
                return;
            }
            None => {}
        }
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(Duration::from_millis(INIT_PROBE_INTERVAL_MS)) => {}
        }
    }
}

/// `Some(true)` if a peer has state, `Some(false)` if every peer answered without state,
/// `None` if some peer did not answer.
async fn probe_peers(inner: &Inner) -> Option<bool> {
    let timeout = Duration::from_millis(inner.config.election_timeout_min_ms);
    let mut all_answered = true;
    for (id, address) in &inner.config.voters {
        if *id == inner.node_id {
            continue;
        }
        let mut client = RpcClient::new(address.clone(), inner.config.frame_bytes_max);
        match client.call(&RpcRequest::Probe, timeout).await {
            Ok(RpcResponse::Probe { initialized: true }) => return Some(true),
            Ok(RpcResponse::Probe { initialized: false }) => {}
            Ok(_) | Err(_) => all_answered = false,
        }
    }
    all_answered.then_some(false)
}

/// On the leader: fence brokers whose session expired.
async fn check_broker_sessions(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let session = Duration::from_millis(inner.config.broker_session_timeout_ms);
    let tick = (session / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let (is_leader, term) = {
            let metrics = inner.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state == ServerState::Leader, metrics.current_term)
        };
        let expired = {
            let mut sessions = inner.lock_sessions();
            if !is_leader || sessions.term != term {
                sessions.term = term;
                sessions.last_heartbeat.clear();
            }
            if !is_leader {
                continue;
            }
            let image = inner.image.borrow().clone();
            let now = Instant::now();
            let mut expired = Vec::new();
            for broker in image.brokers.values().filter(|b| !b.fenced) {
                let last = *sessions
                    .last_heartbeat
                    .entry(broker.broker_id)
                    .or_insert(now);
                if now.duration_since(last) > session {
                    expired.push(broker.broker_id);
                }
            }
            expired
        };
        for broker_id in expired {
            tracing::warn!(
                broker_id,
                session_timeout_ms = inner.config.broker_session_timeout_ms,
                "broker session expired: fencing it"
            );
            let deadline = tokio::time::Instant::now()
                + Duration::from_millis(inner.config.request_timeout_ms);
            let attempt = inner
                .propose_on_leader(deadline, move |image, _| {
                    Ok(Plan {
                        records: control::fence_broker(image, broker_id),
                        response: ControllerResponse::Done,
                        broker_epoch_from_index: false,
                    })
                })
                .await;
            match attempt {
                Attempt::Done(Ok(_)) => {
                    inner
                        .counters
                        .brokers_fenced_by_session_total
                        .fetch_add(1, Ordering::Relaxed);
                }
                Attempt::Done(Err(e)) => {
                    tracing::warn!(broker_id, error = %e, "fencing an expired broker failed")
                }
                Attempt::Retry => {
                    tracing::debug!(broker_id, "lost leadership while fencing a broker")
                }
            }
        }
    }
}
