//! ListOffsets (key 2): earliest, latest, max timestamp, or first offset at a timestamp.

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use super::produce::log_error_code;
use super::{ApiError, RequestContext};
use crate::partition::Partition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub fn handle(ctx: &RequestContext, request: ListOffsetsRequest) -> Result<Bytes, ApiError> {
    let version = ctx.version();
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let state = ctx.broker.replicas.topic(topic.name.as_str());
            let partitions = topic
                .partitions
                .iter()
                .map(|wanted| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(wanted.partition_index);
                    match crate::replica_manager::leader_partition(
                        state.as_ref(),
                        wanted.partition_index,
                    ) {
                        Err(error) => response
                            .with_error_code(error.code())
                            .with_timestamp(-1)
                            .with_offset(-1),
                        Ok(partition) => {
                            match partition.check_leader_epoch(wanted.current_leader_epoch) {
                                Ok(()) => lookup(&partition, wanted.timestamp, version, response),
                                Err(error) => response
                                    .with_error_code(error.code())
                                    .with_timestamp(-1)
                                    .with_offset(-1),
                            }
                        }
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ctx.respond(&ListOffsetsResponse::default().with_topics(topics))
}

fn lookup(
    partition: &Partition,
    timestamp: i64,
    version: i16,
    response: ListOffsetsPartitionResponse,
) -> ListOffsetsPartitionResponse {
    let found = match timestamp {
        LATEST => Ok(Some((-1, partition.high_watermark()))),
        EARLIEST => Ok(Some((-1, partition.log_start_offset()))),
        // The log knows the largest timestamp and its batch; the record is found by
        // looking that timestamp up.
        MAX_TIMESTAMP if version >= 7 => match partition.max_timestamp() {
            Some(max) => partition
                .find_offset_by_timestamp(max.timestamp)
                .map(|found| found.map(|t| (t.timestamp, t.offset))),
            None => Ok(None),
        },
        t if t >= 0 => partition
            .find_offset_by_timestamp(t)
            .map(|found| found.map(|t| (t.timestamp, t.offset))),
        _ => {
            return response
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_timestamp(-1)
                .with_offset(-1)
        }
    };
    match found {
        Ok(Some((timestamp, offset))) => {
            let response = response.with_timestamp(timestamp).with_offset(offset);
            if version >= 4 {
                response.with_leader_epoch(partition.leader_epoch())
            } else {
                response
            }
        }
        Ok(None) => response.with_timestamp(-1).with_offset(-1),
        Err(error) => {
            tracing::error!(topic = %partition.topic, partition = partition.index, %error, "offset lookup failed");
            response
                .with_error_code(log_error_code(&error))
                .with_timestamp(-1)
                .with_offset(-1)
        }
    }
}
