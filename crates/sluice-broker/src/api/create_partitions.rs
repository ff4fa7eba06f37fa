//! CreatePartitions (key 37): grow a topic.

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};
use crate::group::OFFSETS_TOPIC;

pub async fn handle(
    ctx: &RequestContext,
    request: CreatePartitionsRequest,
) -> Result<Bytes, ApiError> {
    let node = ctx.broker.node_id();
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let outcome = async {
            let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            let foreign_broker = topic.assignments.iter().flatten().any(|assignment| {
                assignment.broker_ids.len() != 1 || assignment.broker_ids[0].0 != node
            });
            if topic.name.as_str() == OFFSETS_TOPIC {
                return result
                    .with_error_code(ResponseError::InvalidTopicException.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "__consumer_offsets is internal: its partition count maps groups to partitions",
                    )));
            }
            if foreign_broker {
                return result
                    .with_error_code(ResponseError::InvalidReplicaAssignment.code())
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "every new partition must be assigned to broker {node} alone"
                    ))));
            }
            match ctx.broker.replicas.create_partitions(
                topic.name.as_str(),
                topic.count,
                request.validate_only,
            ).await {
                Ok(()) => result,
                Err(error) => result
                    .with_error_code(error.code())
                    .with_error_message(Some(StrBytes::from_string(error.to_string()))),
            }
        }
        .await;
        results.push(outcome);
    }
    ctx.respond(&CreatePartitionsResponse::default().with_results(results))
}
