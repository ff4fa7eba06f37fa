//! Controller-to-controller RPC over TCP: openraft's append-entries, vote and
//! install-snapshot, plus proposals forwarded to the leader and the first-boot probe.
//!
//! Framing: `[payload length u32 BE][payload]`, payload = JSON of [`RpcRequest`] or
//! [`RpcResponse`]. A connection carries one request at a time, answered in order; a frame
//! larger than `frame_bytes_max` closes the connection. A client drops its connection on any
//! error and reconnects on the next call.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::control::{ControllerRequest, ControllerResponse};
use crate::error::ApiError;
use crate::{NodeId, TypeConfig};

/// A request from one controller to another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A proposal forwarded to the node believed to be the leader.
    Propose(ControllerRequest),
    /// First boot: does this node already hold raft state?
    Probe,
}

/// Why a forwarded proposal failed on the receiving node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardError {
    Api(ApiError),
    /// The receiver is not (or no longer) the leader: ask again.
    NotLeader,
    /// The leader could not commit in time (the request may still commit).
    Timeout {
        timeout_ms: u64,
    },
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Propose(Result<ControllerResponse, ForwardError>),
    Probe {
        initialized: bool,
    },
}

pub(crate) async fn write_frame<T: Serialize>(
    stream: &mut TcpStream,
    message: &T,
    frame_bytes_max: usize,
) -> std::io::Result<()> {
    let payload = serde_json::to_vec(message)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if payload.len() > frame_bytes_max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds {frame_bytes_max}", payload.len()),
        ));
    }
    let length = u32::try_from(payload.len())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut buffer = Vec::with_capacity(4 + payload.len());
    buffer.extend_from_slice(&length.to_be_bytes());
    buffer.extend_from_slice(&payload);
    stream.write_all(&buffer).await?;
    stream.flush().await
}

/// Read one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub(crate) async fn read_frame<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
    frame_bytes_max: usize,
) -> std::io::Result<Option<T>> {
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_be_bytes(header) as usize;
    if length > frame_bytes_max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {length} bytes exceeds {frame_bytes_max}"),
        ));
    }
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await?;
    serde_json::from_slice(&payload)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Why an RPC call failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("rpc to {address} failed: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("rpc to {address} timed out after {timeout_ms} ms")]
    Timeout { address: String, timeout_ms: u64 },
}

/// One connection to one peer, reconnected on demand.
pub(crate) struct RpcClient {
    address: String,
    stream: Option<TcpStream>,
    frame_bytes_max: usize,
}

impl RpcClient {
    pub(crate) fn new(address: String, frame_bytes_max: usize) -> Self {
        Self {
            address,
            stream: None,
            frame_bytes_max,
        }
    }

    pub(crate) async fn call(
        &mut self,
        request: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, CallError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        match tokio::time::timeout(timeout, self.call_inner(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(CallError::Timeout {
                    address: self.address.clone(),
                    timeout_ms,
                })
            }
        }
    }

    async fn call_inner(&mut self, request: &RpcRequest) -> Result<RpcResponse, CallError> {
        if self.stream.is_none() {
            let stream =
                TcpStream::connect(&self.address)
                    .await
                    .map_err(|source| CallError::Connect {
                        address: self.address.clone(),
                        source,
                    })?;
            // Raft messages are small and latency-bound.
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let address = self.address.clone();
        let io = |source| CallError::Io {
            address: address.clone(),
            source,
        };
        let Some(stream) = self.stream.as_mut() else {
            return Err(io(std::io::Error::other("no connection")));
        };
        write_frame(stream, request, self.frame_bytes_max)
            .await
            .map_err(io)?;
        match read_frame(stream, self.frame_bytes_max).await.map_err(io)? {
            Some(response) => Ok(response),
            None => Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "peer closed the connection",
            ))),
        }
    }
}

/// Creates one [`PeerNetwork`] per peer and replication stream (openraft's factory).
pub(crate) struct NetworkFactory {
    pub(crate) frame_bytes_max: usize,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerNetwork {
            target,
            client: RpcClient::new(node.addr.clone(), self.frame_bytes_max),
        }
    }
}

pub(crate) struct PeerNetwork {
    target: NodeId,
    client: RpcClient,
}

type RaftRpcError<E = openraft::error::Infallible> =
    RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

fn call_error<E: std::error::Error>(error: CallError) -> RPCError<NodeId, BasicNode, E> {
    match &error {
        CallError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&error)),
        _ => RPCError::Network(NetworkError::new(&error)),
    }
}

fn unexpected<E: std::error::Error>(response: &RpcResponse) -> RPCError<NodeId, BasicNode, E> {
    let error = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("unexpected response kind {response:?}"),
    );
    RPCError::Network(NetworkError::new(&error))
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftRpcError> {
        let response = self
            .client
            .call(&RpcRequest::AppendEntries(rpc), option.hard_ttl())
            .await
            .map_err(call_error)?;
        match response {
            RpcResponse::AppendEntries(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RaftRpcError<InstallSnapshotError>> {
        let response = self
            .client
            .call(&RpcRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await
            .map_err(call_error)?;
        match response {
            RpcResponse::InstallSnapshot(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RaftRpcError> {
        let response = self
            .client
            .call(&RpcRequest::Vote(rpc), option.hard_ttl())
            .await
            .map_err(call_error)?;
        match response {
            RpcResponse::Vote(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(&other)),
        }
    }
}
