//! Entry points for the fuzz targets (`fuzz/` at the repository root) and their regression
//! tests (`tests/fuzz_regressions.rs`): a connection's request path without the socket.
//!
//! [`FrameHarness::handle_frame`] takes the bytes of one request frame (without the size
//! prefix) and runs exactly what a connection runs on it: the frame size checks of the
//! reader, then `server::dispatch_frame` (header, version check, body decoding, the
//! handler), and awaits a deferred response the way the writer does. The broker behind it
//! is a real [`Broker`] over a real data directory, so handlers and storage are fuzzed
//! too. Kept in the library (not behind a feature) so the regression tests, which are
//! ordinary `cargo test` tests, exercise the same code as the fuzzer.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;
use tokio::sync::watch;

use crate::api::ApiError;
use crate::broker::{Broker, StartError};
use crate::config::BrokerConfig;
use crate::group::GroupCoordinator;
use crate::replica_manager::ReplicaManager;
use crate::server::{self, CloseReason, Dispatched};

/// What became of one request frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameOutcome {
    /// The response frame as the writer would send it (size prefix included).
    Response(Bytes),
    /// Nothing is sent back (an acks=0 produce).
    NoResponse,
    /// The broker would close the connection, for this reason.
    Closed(String),
    /// The response was not ready within the harness's wait (a long poll, a rebalance):
    /// dropped, as when a client disconnects.
    Pending,
}

/// A broker without a listener: the state every connection shares, its partition flushers
/// and group timers. Retention, the cleaner and the checkpointer are not started (they
/// run on timers of minutes and would make runs depend on the clock).
pub struct FrameHarness {
    broker: Arc<Broker>,
    /// Dropped with the harness: stops the group timers.
    _shutdown: watch::Sender<bool>,
}

impl FrameHarness {
    /// Opens (recovering) the data directory of `config` as [`crate::start`] does. Must be
    /// called inside a multi-threaded tokio runtime: flushers are spawned, and some
    /// handlers use `block_in_place`.
    pub fn open(config: BrokerConfig) -> Result<FrameHarness, StartError> {
        let replicas = ReplicaManager::open(config.clone())?;
        let groups = GroupCoordinator::open(Arc::clone(&replicas), &config)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let broker = Arc::new(Broker {
            cluster_id: replicas.cluster_id(),
            replicas: Arc::clone(&replicas),
            groups: Arc::clone(&groups),
            faults: server::FaultSwitch::new(&config),
            metrics: Arc::default(),
            shutdown: shutdown_rx.clone(),
        });
        tokio::spawn(groups.run(shutdown_rx));
        Ok(FrameHarness {
            broker,
            _shutdown: shutdown,
        })
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Stops the partition flushers and flushes every partition, as a graceful shutdown
    /// does; the group timers stop when the harness is dropped.
    pub fn close(self) {
        self.broker.replicas.shutdown();
    }

    /// Runs one request frame (`frame` is what follows the 4-byte size prefix) through the
    /// connection's request path. A deferred response is awaited at most `wait`.
    pub async fn handle_frame(&self, frame: &[u8], wait: Duration) -> FrameOutcome {
        // The reader's checks (`server::read_frame`): at least api key, version and
        // correlation id, at most socket.request.max.bytes.
        if frame.len() < 8 {
            return FrameOutcome::Closed(format!("invalid request size {}", frame.len()));
        }
        let frame_bytes_max = self.broker.config().socket_request_max_bytes();
        if frame.len() > frame_bytes_max {
            return FrameOutcome::Closed(format!(
                "request size {} exceeds socket.request.max.bytes {frame_bytes_max}",
                frame.len()
            ));
        }
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let dispatched =
            match server::dispatch_frame(&self.broker, BytesMut::from(frame), peer).await {
                Ok(dispatched) => dispatched,
                Err(CloseReason::Fatal(reason)) => return FrameOutcome::Closed(reason),
                Err(other) => return FrameOutcome::Closed(format!("{other:?}")),
            };
        let closed = |error: ApiError| FrameOutcome::Closed(format!("{error:?}"));
        let frame = match dispatched {
            Dispatched::Now(frame) => frame,
            Dispatched::Later(pending) => match tokio::time::timeout(wait, pending).await {
                Ok(Ok(frame)) => frame,
                Ok(Err(error)) => return closed(error),
                Err(_) => return FrameOutcome::Pending,
            },
            Dispatched::LaterParts(pending) => match tokio::time::timeout(wait, pending).await {
                Ok(Ok(Some(parts))) => match parts.to_bytes() {
                    Ok(bytes) => Some(bytes),
                    Err(error) => return FrameOutcome::Closed(format!("read failed: {error}")),
                },
                Ok(Ok(None)) => None,
                Ok(Err(error)) => return closed(error),
                Err(_) => return FrameOutcome::Pending,
            },
        };
        match frame {
            Some(bytes) => FrameOutcome::Response(bytes),
            None => FrameOutcome::NoResponse,
        }
    }
}

/// How long [`FrameHarness::run_stream`] waits for a deferred response (a produce waiting
/// for its fsync, a long-polling fetch, a join waiting for a rebalance). Short: a fuzzer
/// runs thousands of inputs a second, and a dropped wait is what a disconnect does.
pub const STREAM_RESPONSE_WAIT: Duration = Duration::from_millis(20);

/// Frames of one input of the `request_frame` target, at most (more would only be slow).
pub const STREAM_FRAMES_MAX: usize = 16;

impl FrameHarness {
    /// The `request_frame` fuzz target: `data` is what a client wrote on one connection
    /// (size-prefixed frames, as recorded by `scripts/fuzz_seed.py`). Each frame goes
    /// through [`FrameHarness::handle_frame`]; every response must pass
    /// [`verify_response`] (panics otherwise: a finding). Stops where the broker would
    /// close the connection. Returns the outcomes.
    pub async fn run_stream(&self, data: &[u8]) -> Vec<FrameOutcome> {
        let mut rest = data;
        let mut outcomes = Vec::new();
        while outcomes.len() < STREAM_FRAMES_MAX {
            let Some((size, tail)) = rest.split_first_chunk::<4>() else {
                break;
            };
            let size = i32::from_be_bytes(*size);
            // A negative or short size closes the connection (`server::read_frame`);
            // a frame cut short is a client that went away.
            let Ok(size) = usize::try_from(size) else {
                break;
            };
            if size < 8 || size > tail.len() {
                break;
            }
            let (frame, tail) = tail.split_at(size);
            rest = tail;
            let outcome = self.handle_frame(frame, STREAM_RESPONSE_WAIT).await;
            if let FrameOutcome::Response(response) = &outcome {
                if let Err(problem) = verify_response(frame, response) {
                    panic!("bad response to {:02x?}: {problem}", &frame[..8]);
                }
            }
            let closed = matches!(outcome, FrameOutcome::Closed(_));
            outcomes.push(outcome);
            if closed {
                break;
            }
        }
        outcomes
    }

    /// Settings of a fuzzing broker over `data_dir`: one offsets partition and no initial
    /// rebalance delay (fast start, fast joins); everything else is the default.
    pub fn fuzz_config(data_dir: &std::path::Path) -> Result<BrokerConfig, crate::ConfigError> {
        BrokerConfig::from_pairs([
            ("log.dirs", data_dir.display().to_string()),
            ("offsets.topic.num.partitions", "1".to_string()),
            ("group.initial.rebalance.delay.ms", "0".to_string()),
            ("log.segment.bytes", (1 << 20).to_string()),
        ])
    }
}

/// Checks a response frame against the request frame it answers: the size prefix matches,
/// the correlation id is echoed, and the body decodes as the response of that API and
/// version (what a client would do with it). An unsupported ApiVersions version is
/// answered in v0 (KIP-511).
pub fn verify_response(request: &[u8], response: &[u8]) -> Result<(), String> {
    let mut peek = request;
    if peek.len() < 8 {
        return Err("request shorter than a header".to_string());
    }
    let api_key_raw = peek.get_i16();
    let mut version = peek.get_i16();
    let correlation_id = peek.get_i32();
    let api_key =
        ApiKey::try_from(api_key_raw).map_err(|_| format!("answered unknown key {api_key_raw}"))?;
    if api_key == ApiKey::ApiVersions && !crate::api::is_supported(api_key, version) {
        version = 0;
    }
    let mut body = Bytes::copy_from_slice(response);
    if body.len() < 4 {
        return Err("response shorter than its size prefix".to_string());
    }
    let size = body.get_i32();
    if usize::try_from(size).ok() != Some(body.len()) {
        return Err(format!("size prefix {size}, {} bytes follow", body.len()));
    }
    let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))
        .map_err(|e| format!("response header: {e}"))?;
    if header.correlation_id != correlation_id {
        return Err(format!(
            "correlation id {} answers {correlation_id}",
            header.correlation_id
        ));
    }
    decode_response_body(api_key, &mut body, version)
        .map_err(|e| format!("{api_key:?} v{version} response does not decode: {e}"))?;
    if body.has_remaining() {
        return Err(format!(
            "{} bytes after the {api_key:?} v{version} response",
            body.remaining()
        ));
    }
    Ok(())
}

/// Decodes the response body of a supported API (`kafka-protocol`'s `ResponseKind` needs a
/// feature the workspace does not enable).
fn decode_response_body(api_key: ApiKey, body: &mut Bytes, version: i16) -> anyhow::Result<()> {
    macro_rules! decode {
        ($($key:ident => $response:ty),* $(,)?) => {
            match api_key {
                $(ApiKey::$key => <$response>::decode(body, version).map(drop),)*
                other => Err(anyhow::anyhow!("{other:?} is not answered by this broker")),
            }
        };
    }
    decode!(
        Produce => ProduceResponse,
        Fetch => FetchResponse,
        ListOffsets => ListOffsetsResponse,
        Metadata => MetadataResponse,
        ApiVersions => ApiVersionsResponse,
        CreateTopics => CreateTopicsResponse,
        DeleteTopics => DeleteTopicsResponse,
        DescribeConfigs => DescribeConfigsResponse,
        AlterConfigs => AlterConfigsResponse,
        IncrementalAlterConfigs => IncrementalAlterConfigsResponse,
        CreatePartitions => CreatePartitionsResponse,
        DescribeCluster => DescribeClusterResponse,
        FindCoordinator => FindCoordinatorResponse,
        JoinGroup => JoinGroupResponse,
        SyncGroup => SyncGroupResponse,
        Heartbeat => HeartbeatResponse,
        LeaveGroup => LeaveGroupResponse,
        OffsetCommit => OffsetCommitResponse,
        OffsetFetch => OffsetFetchResponse,
        ListGroups => ListGroupsResponse,
        DescribeGroups => DescribeGroupsResponse,
        DeleteGroups => DeleteGroupsResponse,
        OffsetDelete => OffsetDeleteResponse,
        DeleteRecords => DeleteRecordsResponse,
        InitProducerId => InitProducerIdResponse,
    )
}
