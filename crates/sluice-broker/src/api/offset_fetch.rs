//! OffsetFetch (key 9): v1-v7 one group, v8+ several. Null topics (v2+) means every
//! committed offset; an unknown group or partition gives offset -1 with no error, as
//! Kafka. `require_stable` (v7+) needs no waiting: there are no transactions yet.

use bytes::Bytes;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::{ApiError, RequestContext};
use crate::group::CommittedOffset;

/// Bound on the groups of one v8+ request.
const GROUPS_MAX: usize = 10_000;

type Found = Vec<(String, Vec<(i32, Option<CommittedOffset>)>)>;

fn values(offset: Option<CommittedOffset>) -> (i64, i32, StrBytes) {
    match offset {
        Some(o) => (o.offset, o.leader_epoch, StrBytes::from_string(o.metadata)),
        None => (-1, -1, StrBytes::default()),
    }
}

pub fn handle(ctx: &RequestContext, request: OffsetFetchRequest) -> Result<Bytes, ApiError> {
    let groups = &ctx.broker.groups;
    let response = if ctx.version() >= 8 {
        let results = request
            .groups
            .iter()
            .take(GROUPS_MAX)
            .map(|g| {
                let topics = g.topics.as_ref().map(|topics| {
                    topics
                        .iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                if let Err(code) = groups.check_coordinator(g.group_id.as_str()) {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(code);
                }
                let found: Found = groups.fetch_offsets(g.group_id.as_str(), topics);
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(
                        found
                            .into_iter()
                            .map(|(topic, partitions)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(StrBytes::from_string(topic)))
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|(p, o)| {
                                                let (offset, epoch, metadata) = values(o);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(Some(metadata))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetFetchResponse::default().with_groups(results)
    } else {
        let topics = request.topics.as_ref().map(|topics| {
            topics
                .iter()
                .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                .collect()
        });
        if let Err(code) = groups.check_coordinator(request.group_id.as_str()) {
            return ctx.respond(&coordinator_error(ctx.version(), code, topics));
        }
        let found: Found = groups.fetch_offsets(request.group_id.as_str(), topics);
        OffsetFetchResponse::default().with_topics(
            found
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic)))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, o)| {
                                    let (offset, epoch, metadata) = values(o);
                                    let r = OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_metadata(Some(metadata));
                                    if ctx.version() >= 5 {
                                        r.with_committed_leader_epoch(epoch)
                                    } else {
                                        r
                                    }
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    };
    ctx.respond(&response)
}

/// A v1-v7 answer for a group not coordinated here: the top-level error (v2+), or per
/// partition (v1, which has no top-level error).
fn coordinator_error(
    version: i16,
    code: i16,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> OffsetFetchResponse {
    if version >= 2 {
        return OffsetFetchResponse::default().with_error_code(code);
    }
    OffsetFetchResponse::default().with_topics(
        topics
            .unwrap_or_default()
            .into_iter()
            .map(|(topic, partitions)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic)))
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|p| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(-1)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}
