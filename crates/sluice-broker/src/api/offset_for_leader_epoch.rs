//! OffsetForLeaderEpoch (key 23): where a leader epoch ends in a partition's log.
//!
//! Followers ask it after a leader change to find where their log diverges (KIP-101,
//! KIP-279); consumers ask it to validate their position after a leader change (KIP-320),
//! and then see a log truncation instead of silently reading different records. The
//! answer comes from the log's leader epoch cache (`sluice_log::LeaderEpochCache`).

use bytes::Bytes;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;
use sluice_log::{UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};

use super::{ApiError, RequestContext};

pub fn handle(
    ctx: &RequestContext,
    request: OffsetForLeaderEpochRequest,
) -> Result<Bytes, ApiError> {
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let state = ctx.broker.replicas.topic(topic.topic.as_str());
            let partitions = topic
                .partitions
                .iter()
                .map(|wanted| {
                    let answer = EpochEndOffset::default().with_partition(wanted.partition);
                    let partition = match crate::replica_manager::leader_partition(
                        state.as_ref(),
                        wanted.partition,
                    ) {
                        Ok(partition) => partition,
                        Err(error) => return undefined(answer, error),
                    };
                    if let Err(error) = partition.check_leader_epoch(wanted.current_leader_epoch) {
                        return undefined(answer, error);
                    }
                    let (epoch, end_offset) = partition.end_offset_for_epoch(wanted.leader_epoch);
                    answer.with_leader_epoch(epoch).with_end_offset(end_offset)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    ctx.respond(&OffsetForLeaderEpochResponse::default().with_topics(topics))
}

fn undefined(answer: EpochEndOffset, error: ResponseError) -> EpochEndOffset {
    answer
        .with_error_code(error.code())
        .with_leader_epoch(UNDEFINED_EPOCH)
        .with_end_offset(UNDEFINED_EPOCH_OFFSET)
}
