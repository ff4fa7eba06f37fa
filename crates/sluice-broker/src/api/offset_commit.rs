//! OffsetCommit (key 8): validated against the group's generation and member, written
//! to `__consumer_offsets`, answered once fsynced. Metadata strings round-trip unchanged.

use std::time::Duration;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};
use crate::group::OffsetToCommit;
use crate::server::Dispatched;

/// Longest an OffsetCommit waits for its fsync.
const COMMIT_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

pub fn handle(ctx: RequestContext, request: OffsetCommitRequest) -> Result<Dispatched, ApiError> {
    let offsets: Vec<OffsetToCommit> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| OffsetToCommit {
                topic: t.name.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            })
        })
        .collect();
    let (codes, wait) = ctx.broker.groups.commit(
        request.group_id.as_str(),
        request.generation_id_or_member_epoch,
        request.member_id.as_str(),
        request.group_instance_id.as_deref(),
        &offsets,
    );
    let build = move |codes: Vec<i16>| {
        let mut codes = codes.into_iter();
        OffsetCommitResponse::default().with_topics(
            request
                .topics
                .iter()
                .map(|t| {
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(codes.next().unwrap_or(0))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    };
    match wait {
        None => Ok(Dispatched::Now(Some(ctx.respond(&build(codes))?))),
        Some((partition, offset_end)) => Ok(Dispatched::Later(Box::pin(async move {
            let deadline = tokio::time::Instant::now() + COMMIT_SYNC_TIMEOUT;
            let codes = if partition.wait_synced(offset_end, deadline).await {
                codes
            } else {
                tracing::warn!(
                    partition = partition.index,
                    offset_end,
                    "offset commit not on disk within the timeout"
                );
                codes
                    .into_iter()
                    .map(|c| {
                        if c == 0 {
                            ResponseError::RequestTimedOut.code()
                        } else {
                            c
                        }
                    })
                    .collect()
            };
            ctx.respond(&build(codes)).map(Some)
        }))),
    }
}
