//! ListPartitionReassignments (key 46): the reassignments in progress, from this broker's
//! copy of the controller's image. As in Kafka, a named topic that does not exist and a
//! partition that is not moving are left out of the answer rather than being errors.

use bytes::Bytes;
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_controller::image::TopicImage;

use super::{ApiError, RequestContext};

pub fn handle(
    ctx: &RequestContext,
    request: ListPartitionReassignmentsRequest,
) -> Result<Bytes, ApiError> {
    let image = ctx.broker.replicas.image();
    let wanted: Vec<(&TopicImage, Option<&[i32]>)> = match &request.topics {
        None => image.topics.values().map(|t| (t, None)).collect(),
        Some(topics) => topics
            .iter()
            .filter_map(|t| {
                image
                    .topic_by_name(t.name.as_str())
                    .map(|image_topic| (image_topic, Some(t.partition_indexes.as_slice())))
            })
            .collect(),
    };
    let ids = |nodes: &[i32]| nodes.iter().map(|id| BrokerId(*id)).collect::<Vec<_>>();
    let mut topics: Vec<OngoingTopicReassignment> = wanted
        .into_iter()
        .filter_map(|(topic, indexes)| {
            let partitions: Vec<OngoingPartitionReassignment> = topic
                .partitions
                .iter()
                .zip(0..)
                .filter(|(state, index)| {
                    state.is_reassigning() && indexes.is_none_or(|wanted| wanted.contains(index))
                })
                .map(|(state, index)| {
                    OngoingPartitionReassignment::default()
                        .with_partition_index(index)
                        .with_replicas(ids(&state.replicas))
                        .with_adding_replicas(ids(&state.adding_replicas))
                        .with_removing_replicas(ids(&state.removing_replicas))
                })
                .collect();
            (!partitions.is_empty()).then(|| {
                OngoingTopicReassignment::default()
                    .with_name(TopicName(StrBytes::from_string(topic.name.clone())))
                    .with_partitions(partitions)
            })
        })
        .collect();
    topics.sort_by(|a, b| a.name.0.cmp(&b.name.0));
    topics.dedup_by(|a, b| a.name == b.name);
    ctx.respond(&ListPartitionReassignmentsResponse::default().with_topics(topics))
}
