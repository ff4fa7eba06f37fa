//! Produce (key 0): append record batches; answer per `acks`.
//!
//! acks=0 gets no response (an error closes the connection, as Kafka does, so the
//! client notices); acks=1 is answered once the batch is in the leader's log (page cache);
//! acks=all is refused with NOT_ENOUGH_REPLICAS while the ISR is below
//! `min.insync.replicas`, and answered once every ISR member has the batch (the high
//! watermark passed it) and it is on the leader's disk: the append happens now, in
//! request order, and the wait is the part handed to the writer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_log::{BatchHeader, LogError};

use super::{now_ms, ApiError, RequestContext};
use crate::partition::{Partition, SyncWait};
use crate::server::Dispatched;

/// Maps a storage error to the Kafka error code a producer understands.
pub fn log_error_code(error: &LogError) -> i16 {
    match error {
        LogError::CorruptBatch(_) => ResponseError::CorruptMessage.code(),
        LogError::InvalidBatch(_) | LogError::InvalidRecords { .. } => {
            ResponseError::InvalidRecord.code()
        }
        LogError::BatchTooLarge { .. } => ResponseError::MessageTooLarge.code(),
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        LogError::Io(_) => ResponseError::KafkaStorageError.code(),
        LogError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber.code(),
        LogError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch.code(),
    }
}

/// A partition's answer, and the partition to wait on for acks=all.
struct PartitionOutcome {
    response: PartitionProduceResponse,
    durable_at: Option<(Arc<Partition>, i64)>,
}

fn error_outcome(index: i32, code: i16, message: String) -> PartitionOutcome {
    PartitionOutcome {
        response: PartitionProduceResponse::default()
            .with_index(index)
            .with_error_code(code)
            .with_base_offset(-1)
            .with_error_message(Some(StrBytes::from_string(message))),
        durable_at: None,
    }
}

pub fn handle(ctx: RequestContext, request: ProduceRequest) -> Result<Dispatched, ApiError> {
    let acks = request.acks;
    let refusal = if request.transactional_id.is_some() {
        Some((
            ResponseError::InvalidRequest.code(),
            "transactional produce is not supported yet".to_string(),
        ))
    } else if !matches!(acks, -1..=1) {
        Some((
            ResponseError::InvalidRequiredAcks.code(),
            format!("acks must be -1, 0 or 1, got {acks}"),
        ))
    } else {
        None
    };
    let mut topics = Vec::with_capacity(request.topic_data.len());
    let mut failed = false;
    for topic_data in request.topic_data {
        let name = topic_data.name.as_str();
        let topic = ctx.broker.replicas.topic(name);
        let mut outcomes = Vec::with_capacity(topic_data.partition_data.len());
        for data in topic_data.partition_data {
            let partition = crate::replica_manager::leader_partition(topic.as_ref(), data.index);
            let outcome = match (&refusal, partition) {
                (Some((code, message)), _) => error_outcome(data.index, *code, message.clone()),
                (None, Err(ResponseError::UnknownTopicOrPartition)) => error_outcome(
                    data.index,
                    ResponseError::UnknownTopicOrPartition.code(),
                    format!("unknown topic-partition {name}-{}", data.index),
                ),
                (None, Err(error)) => error_outcome(
                    data.index,
                    error.code(),
                    format!("this broker does not lead {name}-{}", data.index),
                ),
                (None, Ok(partition)) => append(&partition, data.records, acks, ctx.version()),
            };
            failed |= outcome.response.error_code != 0;
            outcomes.push(outcome);
        }
        topics.push((topic_data.name, outcomes));
    }
    if acks == 0 {
        if failed {
            return Err(ApiError::Close(
                "acks=0 produce failed; closing so the client notices".to_string(),
            ));
        }
        return Ok(Dispatched::Now(None));
    }
    if acks == 1 {
        let response = build_response(topics);
        return Ok(Dispatched::Now(Some(ctx.respond(&response)?)));
    }
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms.max(0)).unwrap_or(0));
    let deadline = tokio::time::Instant::now() + timeout;
    // Start every partition's group commit before waiting for any: their fsyncs overlap.
    for (_, outcomes) in &topics {
        for (partition, _) in outcomes.iter().filter_map(|o| o.durable_at.as_ref()) {
            partition.request_sync();
        }
    }
    Ok(Dispatched::Later(Box::pin(async move {
        for (_, outcomes) in &mut topics {
            for outcome in outcomes.iter_mut() {
                if let Some((partition, offset_end)) = outcome.durable_at.take() {
                    match partition.wait_durable(offset_end, deadline).await {
                        SyncWait::Synced => {}
                        SyncWait::Failed => {
                            outcome.response.error_code = ResponseError::KafkaStorageError.code();
                            outcome.response.error_message = Some(StrBytes::from_static_str(
                                "fsync failed: the batch may not be on disk",
                            ));
                        }
                        SyncWait::TimedOut => {
                            outcome.response.error_code = ResponseError::RequestTimedOut.code();
                            outcome.response.error_message = Some(StrBytes::from_static_str(
                                "the batch was not replicated and on disk within the request timeout",
                            ));
                        }
                        SyncWait::NotLeader => {
                            outcome.response.error_code = ResponseError::NotLeaderOrFollower.code();
                            outcome.response.error_message = Some(StrBytes::from_static_str(
                                "leadership moved before the batch was replicated",
                            ));
                        }
                        SyncWait::NotEnoughReplicas => {
                            outcome.response.error_code =
                                ResponseError::NotEnoughReplicasAfterAppend.code();
                            outcome.response.error_message = Some(StrBytes::from_static_str(
                                "written, but the in-sync replica set shrank below min.insync.replicas",
                            ));
                        }
                    }
                }
            }
        }
        let response = build_response(topics);
        ctx.respond(&response).map(Some)
    })))
}

fn append(
    partition: &Arc<Partition>,
    records: Option<Bytes>,
    acks: i16,
    version: i16,
) -> PartitionOutcome {
    let index = partition.index;
    let Some(records) = records else {
        return error_outcome(
            index,
            ResponseError::InvalidRecord.code(),
            "no records".to_string(),
        );
    };
    if acks == -1 {
        if let Err((isr, min_isr)) = partition.has_min_isr() {
            return error_outcome(
                index,
                ResponseError::NotEnoughReplicas.code(),
                format!("min.insync.replicas is {min_isr} but the in-sync replica set has {isr}"),
            );
        }
    }
    // Straight from the request buffer: copied only if the topic's policy changes the batch.
    match partition.append_bytes(records, now_ms()) {
        Ok((info, prepared)) => {
            partition.metrics.produced(&info);
            if acks == -1 {
                partition.request_sync();
            }
            // The stored header says whether the topic stamped LogAppendTime (-1 otherwise).
            let log_append_time_ms = Some(prepared.header)
                .filter(BatchHeader::is_log_append_time)
                .map_or(-1, |header| header.max_timestamp);
            let mut response = PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(info.base_offset)
                .with_log_append_time_ms(log_append_time_ms);
            if version >= 5 {
                response = response.with_log_start_offset(partition.log_start_offset());
            }
            PartitionOutcome {
                response,
                durable_at: (acks == -1).then(|| (Arc::clone(partition), info.last_offset + 1)),
            }
        }
        Err(error) => {
            // Storage errors are logged (rate-limited) by the partition, not per request.
            if !matches!(error, LogError::Io(_)) {
                tracing::info!(topic = %partition.topic, partition = index, %error, "produce rejected");
            }
            let mut outcome = error_outcome(index, log_error_code(&error), error.to_string());
            if let LogError::InvalidRecords {
                message,
                batch_indexes,
            } = &error
            {
                // KIP-467: v8+ names the records that made the batch fail.
                if version >= 8 {
                    outcome.response.record_errors = batch_indexes
                        .iter()
                        .map(|&batch_index| {
                            BatchIndexAndErrorMessage::default()
                                .with_batch_index(batch_index)
                                .with_batch_index_error_message(Some(StrBytes::from_string(
                                    format!(
                                        "{message} in topic partition {}-{index}.",
                                        partition.topic
                                    ),
                                )))
                        })
                        .collect();
                }
            }
            outcome
        }
    }
}

fn build_response(
    topics: Vec<(kafka_protocol::messages::TopicName, Vec<PartitionOutcome>)>,
) -> ProduceResponse {
    ProduceResponse::default().with_responses(
        topics
            .into_iter()
            .map(|(name, outcomes)| {
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(outcomes.into_iter().map(|o| o.response).collect())
            })
            .collect(),
    )
}
