//! DeleteTopics (key 20), by name or (v6) by topic id.

use bytes::Bytes;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::metadata::topic_name;
use super::{ApiError, RequestContext};
use crate::group::OFFSETS_TOPIC;

pub async fn handle(ctx: &RequestContext, request: DeleteTopicsRequest) -> Result<Bytes, ApiError> {
    let replicas = &ctx.broker.replicas;
    // v0-5 name topics in `topic_names`; v6 uses `topics` with a name or an id.
    let mut wanted: Vec<(Option<String>, Uuid)> = request
        .topic_names
        .iter()
        .map(|name| (Some(name.as_str().to_string()), Uuid::nil()))
        .collect();
    wanted.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.as_str().to_string()), t.topic_id)),
    );
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let response = async {
            let name = match name {
                Some(name) => Some(name),
                None => replicas.topic_by_id(id).map(|t| t.record.name.clone()),
            };
            let Some(name) = name else {
                return DeletableTopicResult::default()
                    .with_topic_id(id)
                    .with_error_code(ResponseError::UnknownTopicId.code());
            };
            let result = DeletableTopicResult::default().with_name(Some(topic_name(&name)));
            if name == OFFSETS_TOPIC {
                return result
                    .with_topic_id(id)
                    .with_error_code(ResponseError::InvalidTopicException.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "__consumer_offsets is internal: deleting it would lose every group's offsets",
                    )));
            }
            match replicas.delete_topic(&name).await {
                Ok(record) => result.with_topic_id(record.id),
                Err(error) => result
                    .with_topic_id(id)
                    .with_error_code(error.code())
                    .with_error_message(Some(StrBytes::from_string(error.to_string()))),
            }
        }
        .await;
        responses.push(response);
    }
    ctx.respond(&DeleteTopicsResponse::default().with_responses(responses))
}
