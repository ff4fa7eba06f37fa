//! ListPartitionReassignments (key 46): the reassignments in progress, from this broker's
//! copy of the controller's image. As in Kafka, a named topic that does not exist and a
//! partition that is not moving are left out of the answer rather than being errors.

use std::collections::BTreeMap;

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
    // Topic name -> its image and the partitions asked about (None: all). A topic named
    // twice in the request is answered once, for the union of its partitions.
    let mut wanted: BTreeMap<&str, (&TopicImage, Option<Vec<i32>>)> = BTreeMap::new();
    match &request.topics {
        None => {
            for topic in image.topics.values() {
                wanted.insert(topic.name.as_str(), (topic, None));
            }
        }
        Some(topics) => {
            for asked in topics {
                let Some(topic) = image.topic_by_name(asked.name.as_str()) else {
                    continue;
                };
                wanted
                    .entry(topic.name.as_str())
                    .or_insert((topic, Some(Vec::new())))
                    .1
                    .get_or_insert_with(Vec::new)
                    .extend(asked.partition_indexes.iter().copied());
            }
        }
    }
    let ids = |nodes: &[i32]| nodes.iter().map(|id| BrokerId(*id)).collect::<Vec<_>>();
    let topics: Vec<OngoingTopicReassignment> = wanted
        .into_values()
        .filter_map(|(topic, indexes)| {
            let partitions: Vec<OngoingPartitionReassignment> = topic
                .partitions
                .iter()
                .zip(0..)
                .filter(|(state, index)| {
                    state.is_reassigning()
                        && indexes.as_ref().is_none_or(|wanted| wanted.contains(index))
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
    ctx.respond(&ListPartitionReassignmentsResponse::default().with_topics(topics))
}
