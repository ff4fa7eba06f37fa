//! The follower side of replication (Kafka's `ReplicaFetcherThread`): one task per leader
//! broker fetches every partition this broker follows from that leader, with Fetch v12 as
//! replica `node.id`, and stores what comes back unchanged.
//!
//! Each fetch names, per partition, the follower's log end (the fetch offset, which the
//! leader takes as the follower's progress) and the newest leader epoch in its log
//! (`lastFetchedEpoch`). When the leader's log has that epoch ending earlier, it answers
//! with a *diverging epoch* instead of records and the follower cuts its log back there
//! (KIP-595's fetch-based truncation, which Kafka followers use since 2.7): after a leader
//! change a follower never keeps records the new leader does not have.
//!
//! The set of partitions per leader comes from the controller's image
//! ([`ReplicaFetcherManager::assign`]); a partition whose fetch fails (not leader, stale
//! epoch) pauses for `replica.fetch.backoff.ms` until the image moves it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use sluice_log::UNDEFINED_EPOCH;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::config::BrokerConfig;
use crate::partition::Partition;

/// The Fetch version followers speak: replica id in the request, lastFetchedEpoch and
/// divergingEpoch (v12); topic names, not ids.
const REPLICA_FETCH_VERSION: i16 = 12;
/// Client id in the fetch request header (the leader's logs show it).
const CLIENT_ID: &str = "sluice-replica-fetcher";

/// One partition a fetcher follows.
#[derive(Clone)]
pub struct FollowedPartition {
    pub partition: Arc<Partition>,
    /// The leader epoch of the image that made this broker a follower (KIP-320 check at
    /// the leader: a stale one is refused, a newer leader is not fetched from by mistake).
    pub leader_epoch: i32,
}

/// What one fetcher task fetches, shared with the manager.
struct FetcherState {
    partitions: BTreeMap<(Arc<str>, i32), Followed>,
    leader_address: String,
}

struct Followed {
    followed: FollowedPartition,
    /// No fetch before this instant (after an error).
    paused_until: Option<tokio::time::Instant>,
}

struct Fetcher {
    state: Arc<Mutex<FetcherState>>,
    changed: Arc<Notify>,
    stop: watch::Sender<bool>,
}

/// All fetcher tasks of this broker, one per leader.
pub struct ReplicaFetcherManager {
    fetchers: Mutex<HashMap<i32, Fetcher>>,
}

impl Default for ReplicaFetcherManager {
    fn default() -> Self {
        ReplicaFetcherManager {
            fetchers: Mutex::new(HashMap::new()),
        }
    }
}

impl ReplicaFetcherManager {
    /// Makes the fetchers follow exactly `wanted`: leader id -> (its address, partitions).
    /// Fetchers of leaders not in `wanted` stop; new ones start; a partition whose leader
    /// epoch changed starts over (its pause is lifted).
    pub fn assign(
        &self,
        config: &Arc<BrokerConfig>,
        wanted: HashMap<i32, (String, Vec<FollowedPartition>)>,
    ) {
        let mut fetchers = self.fetchers.lock();
        fetchers.retain(|leader, fetcher| {
            let keep = wanted.contains_key(leader);
            if !keep {
                fetcher.stop.send_replace(true);
                tracing::info!(leader, "stopped fetching from leader");
            }
            keep
        });
        for (leader, (address, partitions)) in wanted {
            let fetcher = fetchers.entry(leader).or_insert_with(|| {
                let fetcher = Fetcher {
                    state: Arc::new(Mutex::new(FetcherState {
                        partitions: BTreeMap::new(),
                        leader_address: address.clone(),
                    })),
                    changed: Arc::new(Notify::new()),
                    stop: watch::channel(false).0,
                };
                tracing::info!(leader, %address, "fetching from leader");
                tokio::spawn(run_fetcher(
                    leader,
                    Arc::clone(config),
                    Arc::clone(&fetcher.state),
                    Arc::clone(&fetcher.changed),
                    fetcher.stop.subscribe(),
                ));
                fetcher
            });
            let mut state = fetcher.state.lock();
            state.leader_address = address;
            let mut next = BTreeMap::new();
            for followed in partitions {
                let key = (
                    Arc::clone(&followed.partition.topic),
                    followed.partition.index,
                );
                let paused_until = state
                    .partitions
                    .get(&key)
                    .filter(|old| {
                        old.followed.leader_epoch == followed.leader_epoch
                            && Arc::ptr_eq(&old.followed.partition, &followed.partition)
                    })
                    .and_then(|old| old.paused_until);
                next.insert(
                    key,
                    Followed {
                        followed,
                        paused_until,
                    },
                );
            }
            state.partitions = next;
            drop(state);
            fetcher.changed.notify_one();
        }
    }

    /// Stops every fetcher (shutdown).
    pub fn stop_all(&self) {
        for (_, fetcher) in self.fetchers.lock().drain() {
            fetcher.stop.send_replace(true);
        }
    }

    /// Partitions followed per leader (metrics, tests).
    pub fn followed_count(&self) -> usize {
        self.fetchers
            .lock()
            .values()
            .map(|f| f.state.lock().partitions.len())
            .sum()
    }
}

/// Fetches from one leader until stopped.
async fn run_fetcher(
    leader: i32,
    config: Arc<BrokerConfig>,
    state: Arc<Mutex<FetcherState>>,
    changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let backoff = Duration::from_millis(config.replica_fetch_backoff_ms());
    let mut connection: Option<LeaderConnection> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let now = tokio::time::Instant::now();
        let (address, batch) = {
            let state = state.lock();
            let batch: Vec<FollowedPartition> = state
                .partitions
                .values()
                .filter(|p| p.paused_until.is_none_or(|until| until <= now))
                .map(|p| p.followed.clone())
                .collect();
            (state.leader_address.clone(), batch)
        };
        if batch.is_empty() {
            // Nothing to fetch (all paused, or none yet): wait for a change or a pause end.
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(backoff) => {}
                _ = crate::server::stopped(&mut stop) => return,
            }
            continue;
        }
        let conn = match connection.as_mut() {
            Some(conn) if conn.address == address => conn,
            _ => {
                let connected = tokio::select! {
                    connected = LeaderConnection::connect(&address, &config) => connected,
                    _ = crate::server::stopped(&mut stop) => return,
                };
                match connected {
                    Ok(conn) => connection.insert(conn),
                    Err(error) => {
                        tracing::warn!(leader, %address, %error, "cannot connect to the leader; retrying");
                        connection = None;
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = crate::server::stopped(&mut stop) => return,
                        }
                        continue;
                    }
                }
            }
        };
        let request = fetch_request(&config, &batch);
        let answered = tokio::select! {
            answered = conn.fetch(&request) => answered,
            _ = crate::server::stopped(&mut stop) => return,
        };
        let response = match answered {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(leader, %address, %error, "fetch from the leader failed; reconnecting");
                connection = None;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::server::stopped(&mut stop) => return,
                }
                continue;
            }
        };
        if response.error_code != 0 {
            tracing::warn!(
                leader,
                code = response.error_code,
                "the leader refused the fetch"
            );
            pause_all(&state, &batch, now + backoff);
            continue;
        }
        let paused = apply_response(leader, &batch, response);
        if !paused.is_empty() {
            pause_all(&state, &paused, tokio::time::Instant::now() + backoff);
        }
    }
}

fn pause_all(
    state: &Mutex<FetcherState>,
    partitions: &[FollowedPartition],
    until: tokio::time::Instant,
) {
    let mut state = state.lock();
    for followed in partitions {
        let key = (
            Arc::clone(&followed.partition.topic),
            followed.partition.index,
        );
        if let Some(entry) = state.partitions.get_mut(&key) {
            if entry.followed.leader_epoch == followed.leader_epoch {
                entry.paused_until = Some(until);
            }
        }
    }
}

/// The fetch of every partition in `batch`, from each one's log end.
fn fetch_request(config: &BrokerConfig, batch: &[FollowedPartition]) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for followed in batch {
        let partition = &followed.partition;
        let entry = FetchPartition::default()
            .with_partition(partition.index)
            .with_current_leader_epoch(followed.leader_epoch)
            .with_fetch_offset(partition.log_end_offset())
            .with_last_fetched_epoch(partition.latest_epoch())
            .with_log_start_offset(partition.log_start_offset())
            .with_partition_max_bytes(config.replica_fetch_max_bytes());
        match topics
            .iter_mut()
            .find(|t| t.topic.as_str() == &*partition.topic)
        {
            Some(topic) => topic.partitions.push(entry),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(
                        partition.topic.to_string(),
                    )))
                    .with_partitions(vec![entry]),
            ),
        }
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(config.node_id()))
        .with_max_wait_ms(config.replica_fetch_wait_max_ms())
        .with_min_bytes(1)
        .with_max_bytes(config.replica_fetch_response_max_bytes())
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

/// Stores each partition's answer; returns the partitions to pause.
fn apply_response(
    leader: i32,
    batch: &[FollowedPartition],
    response: FetchResponse,
) -> Vec<FollowedPartition> {
    let mut paused = Vec::new();
    let now_ms = crate::api::now_ms();
    for topic in response.responses {
        for data in topic.partitions {
            let Some(followed) = batch.iter().find(|f| {
                &*f.partition.topic == topic.topic.as_str()
                    && f.partition.index == data.partition_index
            }) else {
                continue;
            };
            let partition = &followed.partition;
            match apply_partition(partition, followed.leader_epoch, &data, now_ms) {
                Ok(()) => {}
                Err(reason) => {
                    tracing::warn!(leader, topic = %partition.topic, partition = partition.index, %reason, "follower fetch paused");
                    paused.push(followed.clone());
                }
            }
        }
    }
    paused
}

/// One partition's part of a fetch response.
/// `leader_epoch`: the epoch the fetch was made under; the partition refuses writes of an
/// answer that arrives after it changed (this broker took over, or follows a newer epoch).
fn apply_partition(
    partition: &Partition,
    leader_epoch: i32,
    data: &kafka_protocol::messages::fetch_response::PartitionData,
    now_ms: i64,
) -> Result<(), String> {
    if data.error_code == ResponseError::OffsetOutOfRange.code() {
        return repair_out_of_range(
            partition,
            leader_epoch,
            data.log_start_offset,
            data.high_watermark,
        );
    }
    if data.error_code != 0 {
        return Err(format!("leader answered error code {}", data.error_code));
    }
    if data.diverging_epoch.epoch >= 0 {
        let own = partition.end_offset_for_epoch(data.diverging_epoch.epoch);
        let target = truncation_offset(
            data.diverging_epoch.epoch,
            data.diverging_epoch.end_offset,
            own,
            partition.log_start_offset(),
            partition.log_end_offset(),
        );
        tracing::info!(topic = %partition.topic, partition = partition.index, epoch = data.diverging_epoch.epoch, leader_end_offset = data.diverging_epoch.end_offset, truncate_to = target, "log diverges from the leader's; truncating");
        partition
            .truncate_to(target, leader_epoch)
            .map_err(|error| format!("truncation failed: {error}"))?;
        return Ok(());
    }
    let records: &[u8] = data.records.as_deref().unwrap_or(&[]);
    partition
        .append_as_follower(records, data.high_watermark, leader_epoch, now_ms)
        .map_err(|error| format!("append failed: {error}"))?;
    // DeleteRecords and retention on the leader move the log start; follow it (below
    // the high watermark only).
    if data.log_start_offset > partition.log_start_offset()
        && data.log_start_offset <= partition.high_watermark()
    {
        if let Err(error) = partition.delete_records(data.log_start_offset) {
            tracing::warn!(topic = %partition.topic, partition = partition.index, %error, "cannot follow the leader's log start");
        }
    }
    Ok(())
}

/// The follower's fetch offset is outside the leader's log: below its start (retention
/// removed what the follower still needs: start over there), or past its end (the leader
/// lost records, an unclean election: cut back to the leader's high watermark, which the
/// leader has).
fn repair_out_of_range(
    partition: &Partition,
    leader_epoch: i32,
    leader_log_start_offset: i64,
    leader_high_watermark: i64,
) -> Result<(), String> {
    let log_end = partition.log_end_offset();
    if leader_log_start_offset >= 0 && log_end < leader_log_start_offset {
        tracing::warn!(topic = %partition.topic, partition = partition.index, log_end, leader_log_start_offset, "follower is behind the leader's log start; starting over there");
        return partition
            .reset_to(leader_log_start_offset, leader_epoch)
            .map_err(|error| format!("reset failed: {error}"));
    }
    if leader_high_watermark >= 0 && leader_high_watermark < log_end {
        tracing::warn!(topic = %partition.topic, partition = partition.index, log_end, leader_high_watermark, "follower is past the leader's log end; truncating to its high watermark");
        return partition
            .truncate_to(leader_high_watermark, leader_epoch)
            .map(|_| ())
            .map_err(|error| format!("truncation failed: {error}"));
    }
    Err("offset out of range at the leader".to_string())
}

/// Where a follower cuts its log when the leader says its log ends epoch
/// `leader_epoch` at `leader_end_offset` (Kafka's rule): `own` is the follower's answer
/// to the same question (largest epoch at most `leader_epoch` and where it ends).
/// - Both have that epoch: keep the shorter of the two.
/// - The follower's largest such epoch is older: everything from its end on is unknown to
///   the leader; the next fetch (with an older lastFetchedEpoch) checks again from there.
/// - The follower has no such epoch: nothing of its log is known good.
pub fn truncation_offset(
    leader_epoch: i32,
    leader_end_offset: i64,
    own: (i32, i64),
    log_start_offset: i64,
    log_end_offset: i64,
) -> i64 {
    let (own_epoch, own_end_offset) = own;
    let target = if own_epoch == UNDEFINED_EPOCH || own_end_offset < 0 {
        log_start_offset
    } else if own_epoch == leader_epoch {
        leader_end_offset.min(own_end_offset)
    } else {
        own_end_offset
    };
    target.clamp(log_start_offset.min(log_end_offset), log_end_offset)
}

/// A connection to a leader: one fetch in flight at a time.
struct LeaderConnection {
    address: String,
    stream: TcpStream,
    correlation_id: i32,
    /// A fetch waits up to `replica.fetch.wait.max.ms` at the leader, plus this.
    timeout: Duration,
    response_bytes_max: usize,
}

impl LeaderConnection {
    async fn connect(address: &str, config: &BrokerConfig) -> Result<LeaderConnection, String> {
        let timeout = Duration::from_millis(config.replica_socket_timeout_ms());
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| format!("connecting to {address} timed out"))?
            .map_err(|error| format!("connecting to {address}: {error}"))?;
        let _ = stream.set_nodelay(true);
        // The leader may return one batch beyond the requested bytes (KIP-74).
        let response_bytes_max = usize::try_from(config.replica_fetch_response_max_bytes())
            .unwrap_or(usize::MAX)
            .saturating_add(config.message_max_bytes())
            .saturating_add(1 << 20);
        Ok(LeaderConnection {
            address: address.to_string(),
            stream,
            correlation_id: 0,
            timeout: timeout
                + Duration::from_millis(
                    u64::try_from(config.replica_fetch_wait_max_ms()).unwrap_or(0),
                ),
            response_bytes_max,
        })
    }

    async fn fetch(&mut self, request: &FetchRequest) -> Result<FetchResponse, String> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let version = REPLICA_FETCH_VERSION;
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, FetchRequest::header_version(version))
            .map_err(|e| format!("encoding the fetch header: {e}"))?;
        request
            .encode(&mut body, version)
            .map_err(|e| format!("encoding the fetch: {e}"))?;
        let size = i32::try_from(body.len()).map_err(|_| "fetch request too large".to_string())?;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_i32(size);
        frame.extend_from_slice(&body);
        let mut response = tokio::time::timeout(self.timeout, self.round_trip(&frame))
            .await
            .map_err(|_| format!("no fetch response within {:?}", self.timeout))??;
        let response_header =
            ResponseHeader::decode(&mut response, FetchResponse::header_version(version))
                .map_err(|e| format!("fetch response header: {e}"))?;
        if response_header.correlation_id != self.correlation_id {
            return Err(format!(
                "correlation id {} in the response, expected {}",
                response_header.correlation_id, self.correlation_id
            ));
        }
        FetchResponse::decode(&mut response, version).map_err(|e| format!("fetch response: {e}"))
    }

    async fn round_trip(&mut self, frame: &[u8]) -> Result<Bytes, String> {
        let io = |e: std::io::Error| format!("{}: {e}", self.address);
        self.stream.write_all(frame).await.map_err(io)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).await.map_err(io)?;
        let size = i32::from_be_bytes(size);
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= self.response_bytes_max)
            .ok_or_else(|| format!("fetch response size {size} out of bounds"))?;
        let mut response = vec![0u8; size];
        self.stream.read_exact(&mut response).await.map_err(io)?;
        Ok(Bytes::from(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_shorter_log_when_both_have_the_epoch() {
        // Leader's epoch 3 ends at 100; the follower has epoch 3 up to 120 (records the
        // old leader never replicated).
        assert_eq!(truncation_offset(3, 100, (3, 120), 0, 120), 100);
        // The follower's epoch 3 ends first: nothing to cut (it fetches the rest).
        assert_eq!(truncation_offset(3, 100, (3, 80), 0, 80), 80);
    }

    #[test]
    fn truncation_goes_back_to_the_older_epoch_the_follower_has() {
        // The leader knows epochs up to 2 ending at 50; the follower's largest epoch <= 2
        // is 1, ending at 40: cut there, then ask again with epoch 1.
        assert_eq!(truncation_offset(2, 50, (1, 40), 0, 90), 40);
    }

    #[test]
    fn truncation_without_a_common_epoch_empties_to_the_log_start() {
        assert_eq!(truncation_offset(2, 50, (UNDEFINED_EPOCH, -1), 10, 90), 10);
    }

    #[test]
    fn truncation_never_goes_past_the_log_end() {
        assert_eq!(truncation_offset(3, 500, (3, 500), 0, 120), 120);
    }
}
