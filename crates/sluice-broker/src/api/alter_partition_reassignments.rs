//! AlterPartitionReassignments (key 45): start or cancel moving partitions between brokers
//! (KIP-455). Any broker answers: it forwards the request to the controller quorum
//! ([`crate::replica_manager::ReplicaManager::alter_partition_reassignments`]) and answers
//! once its own image shows the change, with an error per partition as Kafka does.

use bytes::Bytes;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};

/// An error code and, for failures, the message that explains it.
type Outcome = (i16, Option<String>);

pub async fn handle(
    ctx: &RequestContext,
    request: AlterPartitionReassignmentsRequest,
) -> Result<Bytes, ApiError> {
    let entries: Vec<(String, i32, Option<Vec<i32>>)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|partition| {
                (
                    topic.name.to_string(),
                    partition.partition_index,
                    partition
                        .replicas
                        .as_ref()
                        .map(|replicas| replicas.iter().map(|id| id.0).collect()),
                )
            })
        })
        .collect();
    let (top_error, mut results): (Option<(i16, String)>, Vec<Outcome>) = match ctx
        .broker
        .replicas
        .alter_partition_reassignments(entries)
        .await
    {
        Ok(results) => (
            None,
            results
                .into_iter()
                .map(|r| match r {
                    Ok(()) => (0, None),
                    Err(error) => (error.code(), Some(error.to_string())),
                })
                .collect(),
        ),
        Err(error) => {
            tracing::warn!(%error, "partition reassignment failed");
            (Some((error.code(), error.to_string())), Vec::new())
        }
    };
    // A failure of the whole request is repeated on every partition: clients that only
    // look at partition results still see it.
    let mut results = results.drain(..);
    let responses = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let (code, message) = match &top_error {
                        Some((code, message)) => (*code, Some(message.clone())),
                        None => results.next().unwrap_or((
                            ResponseError::UnknownServerError.code(),
                            Some("no result for this partition".to_string()),
                        )),
                    };
                    ReassignablePartitionResponse::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(code)
                        .with_error_message(message.map(StrBytes::from_string))
                })
                .collect();
            ReassignableTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let mut response = AlterPartitionReassignmentsResponse::default().with_responses(responses);
    if let Some((code, message)) = top_error {
        response = response
            .with_error_code(code)
            .with_error_message(Some(StrBytes::from_string(message)));
    }
    ctx.respond(&response)
}
