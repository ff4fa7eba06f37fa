//! Fetch (key 1) with long polling.
//!
//! A fetch is answered as soon as it has `min_bytes` of data, hits an error, or reaches
//! `max_wait_ms`; meanwhile it waits on the high watermark of every partition it reads,
//! so an append wakes it at once (Kafka's DelayedFetch).
//!
//! Fetch sessions (KIP-227) are not created: every response carries session id 0, which
//! tells clients to keep sending full fetch requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::ResponseError;
use sluice_log::LogError;
use tokio::sync::watch;

use super::produce::log_error_code;
use super::{ApiError, RequestContext};
use crate::partition::Partition;
use crate::server::Dispatched;

/// Upper bound on how long one fetch may be parked, whatever the client asks.
const FETCH_WAIT_MS_MAX: u64 = 5 * 60 * 1000;
const READ_COMMITTED: i8 = 1;

/// One partition the fetch reads.
struct FetchTarget {
    topic_index: usize,
    partition_index: i32,
    partition: Option<Arc<Partition>>,
    fetch_offset: i64,
    max_bytes: usize,
}

pub fn handle(ctx: RequestContext, request: FetchRequest) -> Dispatched {
    Dispatched::Later(Box::pin(async move { fetch(ctx, request).await }))
}

async fn fetch(ctx: RequestContext, request: FetchRequest) -> Result<Option<Bytes>, ApiError> {
    if let Some(code) = session_error(&request) {
        let response = FetchResponse::default().with_error_code(code);
        return ctx.respond(&response).map(Some);
    }
    let topics: Vec<TopicName> = request.topics.iter().map(|t| t.topic.clone()).collect();
    let mut targets = Vec::new();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let state = ctx.broker.replicas.topic(topic.topic.as_str());
        for partition in &topic.partitions {
            targets.push(FetchTarget {
                topic_index,
                partition_index: partition.partition,
                partition: state
                    .as_ref()
                    .and_then(|s| s.partition(partition.partition))
                    .cloned(),
                fetch_offset: partition.fetch_offset,
                max_bytes: usize::try_from(partition.partition_max_bytes).unwrap_or(0),
            });
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
        .filter_map(|t| t.partition.as_ref().map(|p| p.subscribe_high_watermark()))
        .collect();
    let read_committed = request.isolation_level == READ_COMMITTED;
    let mut shutdown = ctx.broker.shutdown_signal();
    let partitions = loop {
        for watcher in &mut watchers {
            watcher.borrow_and_update();
        }
        let (partitions, bytes, has_error) = read_all(&targets, response_bytes_max, read_committed);
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
    for (target, data) in targets.iter().zip(partitions) {
        crate::metrics::fetched(target.partition.as_deref(), &data);
        if let Some(topic) = responses.get_mut(target.topic_index) {
            topic.partitions.push(data);
        }
    }
    ctx.respond(&FetchResponse::default().with_responses(responses))
        .map(Some)
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

/// Reads every target once. Returns the partition data, the record bytes gathered and
/// whether any partition has an error (which answers the fetch at once).
fn read_all(
    targets: &[FetchTarget],
    response_bytes_max: usize,
    read_committed: bool,
) -> (Vec<PartitionData>, usize, bool) {
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
        let Some(partition) = &target.partition else {
            has_error = true;
            out.push(
                data.with_error_code(ResponseError::UnknownTopicOrPartition.code())
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_records(Some(Bytes::new())),
            );
            continue;
        };
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
        let result = partition
            .read(target.fetch_offset, budget.max(1))
            .map(|mut read| {
                if !first_with_data && read.slice.as_ref().is_some_and(|s| s.len > budget) {
                    read.slice = None;
                }
                read
            });
        let data = match result.and_then(|read| {
            let records = match &read.slice {
                Some(slice) => Bytes::from(slice.read_to_vec().map_err(LogError::Io)?),
                None => Bytes::new(),
            };
            Ok((read, records))
        }) {
            Ok((read, records)) => {
                bytes_total += records.len();
                data.with_high_watermark(read.high_watermark)
                    .with_last_stable_offset(read.high_watermark)
                    .with_log_start_offset(read.log_start_offset)
                    .with_records(Some(records))
            }
            Err(error) => {
                has_error = true;
                if !matches!(error, LogError::OffsetOutOfRange { .. }) {
                    tracing::error!(topic = %partition.topic, partition = partition.index, %error, "fetch read failed");
                }
                data.with_error_code(log_error_code(&error))
                    .with_high_watermark(partition.high_watermark())
                    .with_last_stable_offset(partition.high_watermark())
                    .with_log_start_offset(partition.log_start_offset())
                    .with_records(Some(Bytes::new()))
            }
        };
        out.push(data);
    }
    (out, bytes_total, has_error)
}
