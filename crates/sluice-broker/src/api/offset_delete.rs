//! OffsetDelete (key 47): deletes committed offsets of a group; refused per partition
//! (GROUP_SUBSCRIBED_TO_TOPIC) while live members subscribe to the topic.

use bytes::Bytes;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use super::{ApiError, RequestContext};

pub fn handle(ctx: &RequestContext, request: OffsetDeleteRequest) -> Result<Bytes, ApiError> {
    let topics: Vec<(String, Vec<i32>)> = request
        .topics
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let response = match ctx
        .broker
        .groups
        .delete_offsets(request.group_id.as_str(), &topics)
    {
        Err(code) => OffsetDeleteResponse::default().with_error_code(code),
        Ok(results) => OffsetDeleteResponse::default().with_topics(
            request
                .topics
                .iter()
                .zip(results)
                .map(|(t, (_, partitions))| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, code)| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    };
    ctx.respond(&response)
}
