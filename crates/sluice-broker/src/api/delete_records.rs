//! DeleteRecords (key 21): moves a partition's log start offset forward (KIP-107).
//!
//! Per partition: offset -1 means the high watermark; beyond the high watermark is
//! OFFSET_OUT_OF_RANGE; an unknown topic or partition is UNKNOWN_TOPIC_OR_PARTITION.
//! Otherwise the new start is checkpointed (fsync) before the answer, whole segments below
//! it are deleted, and `low_watermark` is the new log start offset.

use bytes::Bytes;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use sluice_log::LogError;

use super::produce::log_error_code;
use super::{ApiError, RequestContext};
use crate::partition::Partition;

/// The offset meaning "up to the high watermark".
const HIGH_WATERMARK: i64 = -1;

pub fn handle(ctx: &RequestContext, request: DeleteRecordsRequest) -> Result<Bytes, ApiError> {
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let state = ctx.broker.replicas.topic(topic.name.as_str());
            let partitions = topic
                .partitions
                .iter()
                .map(|wanted| {
                    let result = DeleteRecordsPartitionResult::default()
                        .with_partition_index(wanted.partition_index);
                    match crate::replica_manager::leader_partition(
                        state.as_ref(),
                        wanted.partition_index,
                    ) {
                        Err(error) => result.with_error_code(error.code()).with_low_watermark(-1),
                        Ok(partition) => delete(&partition, wanted.offset, result),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ctx.respond(&DeleteRecordsResponse::default().with_topics(topics))
}

fn delete(
    partition: &Partition,
    offset: i64,
    result: DeleteRecordsPartitionResult,
) -> DeleteRecordsPartitionResult {
    let offset = if offset == HIGH_WATERMARK {
        partition.high_watermark()
    } else {
        offset
    };
    // Checkpoint fsync and renames: keep them off the async worker's hot path.
    match tokio::task::block_in_place(|| partition.delete_records(offset)) {
        Ok(log_start_offset) => result.with_low_watermark(log_start_offset),
        Err(error) => {
            if !matches!(error, LogError::OffsetOutOfRange { .. }) {
                tracing::error!(topic = %partition.topic, partition = partition.index, offset, %error, "DeleteRecords failed");
            }
            result
                .with_error_code(log_error_code(&error))
                .with_low_watermark(-1)
        }
    }
}
