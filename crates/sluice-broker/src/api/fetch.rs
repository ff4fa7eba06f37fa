//! Fetch (key 1) with long polling.
//!
//! A fetch is answered as soon as it has `min_bytes` of data, hits an error, or reaches
//! `max_wait_ms`; meanwhile it waits on the high watermark of every partition it reads,
//! so an append wakes it at once (Kafka's DelayedFetch).
//!
//! No per-record work: the log locates whole batches (`ReadSlice`: file, position, length)
//! and the response carries those ranges (see `crate::response`); the connection's writer
//! sends them with `sendfile` or `pread`.
//!
//! Fetch sessions (KIP-227) are not created: every response carries session id 0, which
//! tells clients to keep sending full fetch requests.
//!
//! A fetch with a `replica_id` is a follower's (see `crate::replica_fetcher`): it reads up
//! to the log end rather than the high watermark, waits on the log end, tells the leader
//! how far the follower got (which moves the high watermark and may add it to the ISR),
//! and answers a *diverging epoch* instead of records when the follower's newest epoch
//! ends earlier in the leader's log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::messages::fetch_response::{
    EpochEndOffset, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::ResponseError;
use sluice_log::{LogError, ReadSlice};
use tokio::sync::watch;

use super::produce::log_error_code;
use super::{ApiError, RequestContext};
use crate::partition::Partition;
use crate::response::{encode_fetch_frame, ResponseParts};
use crate::server::Dispatched;

/// Upper bound on how long one fetch may be parked, whatever the client asks.
const FETCH_WAIT_MS_MAX: u64 = 5 * 60 * 1000;
const READ_COMMITTED: i8 = 1;

/// One partition the fetch reads.
struct FetchTarget {
    topic_index: usize,
    partition_index: i32,
    partition: Result<Arc<Partition>, ResponseError>,
    fetch_offset: i64,
    max_bytes: usize,
    /// The leader epoch the client believes current (-1: unchecked), KIP-320.
    current_leader_epoch: i32,
    /// A follower's fetch only: where its log diverges from this leader's (epoch, end).
    diverging: Option<(i32, i64)>,
}

pub fn handle(ctx: RequestContext, request: FetchRequest) -> Dispatched {
    Dispatched::LaterParts(Box::pin(async move { fetch(ctx, request).await }))
}

async fn fetch(
    ctx: RequestContext,
    request: FetchRequest,
) -> Result<Option<ResponseParts>, ApiError> {
    if let Some(code) = session_error(&request) {
        let response = FetchResponse::default().with_error_code(code);
        return ctx.respond(&response).map(|frame| Some(frame.into()));
    }
    let topics: Vec<TopicName> = request.topics.iter().map(|t| t.topic.clone()).collect();
    let replica_id = request.replica_id.0;
    let mut targets = Vec::new();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let state = ctx.broker.replicas.topic(topic.topic.as_str());
        for partition in &topic.partitions {
            targets.push(FetchTarget {
                topic_index,
                partition_index: partition.partition,
                partition: crate::replica_manager::leader_partition(
                    state.as_ref(),
                    partition.partition,
                ),
                fetch_offset: partition.fetch_offset,
                max_bytes: usize::try_from(partition.partition_max_bytes).unwrap_or(0),
                current_leader_epoch: partition.current_leader_epoch,
                diverging: None,
            });
        }
        if replica_id >= 0 {
            let last_fetched_epochs = topic.partitions.iter().map(|p| p.last_fetched_epoch);
            let first = targets.len() - topic.partitions.len();
            for (target, last_fetched_epoch) in targets[first..].iter_mut().zip(last_fetched_epochs)
            {
                follower_fetched(&ctx, replica_id, target, last_fetched_epoch);
            }
        }
    }
    let response_bytes_max = usize::try_from(request.max_bytes)
        .unwrap_or(0)
        .min(ctx.broker.config().fetch_max_bytes());
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let wait = Duration::from_millis(
        u64::try_from(request.max_wait_ms)
            .unwrap_or(0)
            .min(FETCH_WAIT_MS_MAX),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut watchers: Vec<watch::Receiver<i64>> = targets
        .iter()
        .filter_map(|t| {
            t.partition.as_ref().ok().map(|p| {
                if replica_id >= 0 {
                    p.subscribe_log_end()
                } else {
                    p.subscribe_high_watermark()
                }
            })
        })
        .collect();
    let read_committed = request.isolation_level == READ_COMMITTED;
    let mut shutdown = ctx.broker.shutdown_signal();
    let partitions = loop {
        for watcher in &mut watchers {
            watcher.borrow_and_update();
        }
        let (partitions, bytes, has_error) = read_all(
            &targets,
            response_bytes_max,
            read_committed,
            replica_id >= 0,
        );
        let now = tokio::time::Instant::now();
        let stopping = *shutdown.borrow();
        if bytes >= min_bytes || has_error || now >= deadline || watchers.is_empty() || stopping {
            break partitions;
        }
        let any_append = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = any_append => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = crate::server::stopped(&mut shutdown) => {}
        }
    };
    let mut responses: Vec<FetchableTopicResponse> = topics
        .into_iter()
        .map(|name| FetchableTopicResponse::default().with_topic(name))
        .collect();
    let mut slices_by_topic: Vec<Vec<Option<ReadSlice>>> = vec![Vec::new(); responses.len()];
    for (target, (data, slice)) in targets.iter().zip(partitions) {
        if let (Some(topic), Some(slices)) = (
            responses.get_mut(target.topic_index),
            slices_by_topic.get_mut(target.topic_index),
        ) {
            crate::metrics::fetched(target.partition.as_deref().ok(), slice.as_ref());
            topic.partitions.push(data);
            slices.push(slice);
        }
    }
    // The order kafka-protocol encodes partitions in: topic by topic.
    let slices: Vec<Option<ReadSlice>> = slices_by_topic.into_iter().flatten().collect();
    let mut response = FetchResponse::default().with_responses(responses);
    if let Some(frame) = encode_fetch_frame(
        ctx.version(),
        ctx.header.correlation_id,
        &mut response,
        &slices,
    )? {
        return Ok(Some(frame));
    }
    tracing::warn!("fetch response placeholders ambiguous; encoding the records from memory");
    respond_from_memory(&ctx, response, &slices).map(Some)
}

/// The plain encoding: every file range read into memory (see `crate::response`).
fn respond_from_memory(
    ctx: &RequestContext,
    mut response: FetchResponse,
    slices: &[Option<ReadSlice>],
) -> Result<ResponseParts, ApiError> {
    let partitions = response
        .responses
        .iter_mut()
        .flat_map(|topic| topic.partitions.iter_mut());
    for (data, slice) in partitions.zip(slices) {
        if let Some(slice) = slice {
            match slice.read_to_vec() {
                Ok(bytes) => data.records = Some(Bytes::from(bytes)),
                Err(error) => {
                    tracing::error!(partition = data.partition_index, %error, "fetch read failed");
                    data.error_code = ResponseError::KafkaStorageError.code();
                    data.records = Some(Bytes::new());
                }
            }
        }
    }
    ctx.respond(&response).map(ResponseParts::from)
}

/// Kafka answers session ids it does not know with FETCH_SESSION_ID_NOT_FOUND; we
/// never hand one out, so any non-zero id is unknown.
fn session_error(request: &FetchRequest) -> Option<i16> {
    if request.session_id != 0 {
        return Some(ResponseError::FetchSessionIdNotFound.code());
    }
    if request.session_epoch > 0 {
        return Some(ResponseError::InvalidFetchSessionEpoch.code());
    }
    None
}

/// A follower's fetch of one partition, before anything is read: checks its epoch, finds
/// where its log diverges from ours, or records its progress (which may move the high
/// watermark and add it to the ISR). Done once per request, not per long-poll wake-up.
fn follower_fetched(
    ctx: &RequestContext,
    replica_id: i32,
    target: &mut FetchTarget,
    last_fetched_epoch: i32,
) {
    let Ok(partition) = target.partition.as_ref() else {
        return;
    };
    let partition = Arc::clone(partition);
    if let Err(error) = partition.check_leader_epoch(target.current_leader_epoch) {
        target.partition = Err(error);
        return;
    }
    if last_fetched_epoch >= 0 {
        let (epoch, end_offset) = partition.end_offset_for_epoch(last_fetched_epoch);
        if epoch >= 0 && (end_offset < target.fetch_offset || epoch < last_fetched_epoch) {
            target.diverging = Some((epoch, end_offset));
            return;
        }
    }
    if target.fetch_offset < partition.log_start_offset()
        || target.fetch_offset > partition.log_end_offset()
    {
        return; // answered OFFSET_OUT_OF_RANGE by the read
    }
    let (known, change) =
        partition.record_follower_fetch(replica_id, target.fetch_offset, super::now_ms());
    if !known {
        tracing::warn!(topic = %partition.topic, partition = partition.index, replica_id, "fetch from a broker that is not a follower of this partition");
        target.partition = Err(ResponseError::NotLeaderOrFollower);
        return;
    }
    if let Some(change) = change {
        ctx.broker
            .replicas
            .request_isr_change(Arc::clone(&partition), change);
    }
}

/// Locates every target's bytes once (no copy). Returns each partition's data with the file
/// range of its records, the record bytes gathered and whether any partition has an error
/// (which answers the fetch at once). A follower's fetch reads up to the log end.
fn read_all(
    targets: &[FetchTarget],
    response_bytes_max: usize,
    read_committed: bool,
    for_replica: bool,
) -> (Vec<(PartitionData, Option<ReadSlice>)>, usize, bool) {
    let mut bytes_total = 0usize;
    let mut has_error = false;
    let mut out = Vec::with_capacity(targets.len());
    for target in targets {
        let data = PartitionData::default().with_partition_index(target.partition_index);
        let data = if read_committed {
            data.with_aborted_transactions(Some(Vec::new()))
        } else {
            data
        };
        // Not served here (unknown, not the leader) or a stale leader epoch (KIP-320).
        let checked = target
            .partition
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|partition| {
                partition
                    .check_leader_epoch(target.current_leader_epoch)
                    .map(|()| partition)
            });
        let partition = match checked {
            Ok(partition) => partition,
            Err(error) => {
                has_error = true;
                out.push((
                    data.with_error_code(error.code())
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_records(Some(Bytes::new())),
                    None,
                ));
                continue;
            }
        };
        if let Some((epoch, end_offset)) = target.diverging {
            has_error = true;
            let diverging = EpochEndOffset::default()
                .with_epoch(epoch)
                .with_end_offset(end_offset);
            out.push((
                data.with_diverging_epoch(diverging)
                    .with_high_watermark(partition.high_watermark())
                    .with_last_stable_offset(partition.high_watermark())
                    .with_log_start_offset(partition.log_start_offset())
                    .with_records(Some(Bytes::new())),
                None,
            ));
            continue;
        }
        // KIP-74: only the first partition with data may exceed the limits (by one
        // batch, so a large batch cannot block a consumer); later partitions whose next
        // batch does not fit come back empty.
        let first_with_data = bytes_total == 0;
        let budget = if first_with_data {
            target.max_bytes.min(response_bytes_max)
        } else {
            target
                .max_bytes
                .min(response_bytes_max.saturating_sub(bytes_total))
        };
        let read = if for_replica {
            partition.read_for_replica(target.fetch_offset, budget.max(1))
        } else {
            partition.read(target.fetch_offset, budget.max(1))
        };
        let result = read.map(|mut read| {
            if !first_with_data && read.slice.as_ref().is_some_and(|s| s.len > budget) {
                read.slice = None;
            }
            read
        });
        let entry = match result {
            Ok(read) => {
                bytes_total += read.slice.as_ref().map_or(0, |slice| slice.len);
                let data = data
                    .with_high_watermark(read.high_watermark)
                    .with_last_stable_offset(read.high_watermark)
                    .with_log_start_offset(read.log_start_offset)
                    .with_records(Some(Bytes::new()));
                (data, read.slice.filter(|slice| slice.len > 0))
            }
            Err(error) => {
                has_error = true;
                if !matches!(error, LogError::OffsetOutOfRange { .. }) {
                    tracing::error!(topic = %partition.topic, partition = partition.index, %error, "fetch read failed");
                }
                let data = data
                    .with_error_code(log_error_code(&error))
                    .with_high_watermark(partition.high_watermark())
                    .with_last_stable_offset(partition.high_watermark())
                    .with_log_start_offset(partition.log_start_offset())
                    .with_records(Some(Bytes::new()));
                (data, None)
            }
        };
        out.push(entry);
    }
    (out, bytes_total, has_error)
}
