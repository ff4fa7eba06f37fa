//! CreateTopics (key 19).

use bytes::Bytes;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::describe_configs::topic_config_entries;
use super::{ApiError, RequestContext};
use crate::replica_manager::{NewTopic, TopicError};

pub async fn handle(ctx: &RequestContext, request: CreateTopicsRequest) -> Result<Bytes, ApiError> {
    let broker = &ctx.broker;
    let config = broker.config();
    let mut seen = std::collections::HashSet::new();
    let duplicates: std::collections::HashSet<String> = request
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.as_str().to_string()))
        .map(|t| t.name.as_str().to_string())
        .collect();
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.as_str();
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        if duplicates.contains(name) {
            results.push(
                result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "topic '{name}' appears more than once in the request"
                    )))),
            );
            continue;
        }
        let mut assignments = Vec::new();
        let outcome = if !topic.assignments.is_empty() {
            validate_assignments(topic).map(|manual| {
                let partitions = i32::try_from(manual.len()).unwrap_or(i32::MAX);
                let replication_factor = manual.first().map_or(1, |replicas| {
                    i16::try_from(replicas.len()).unwrap_or(i16::MAX)
                });
                assignments = manual;
                (partitions, replication_factor)
            })
        } else {
            Ok((
                if topic.num_partitions == -1 {
                    config.num_partitions()
                } else {
                    topic.num_partitions
                },
                if topic.replication_factor == -1 {
                    config.default_replication_factor()
                } else {
                    topic.replication_factor
                },
            ))
        };
        let outcome = match outcome {
            Ok((partitions, replication_factor)) => {
                let configs = topic
                    .configs
                    .iter()
                    .map(|c| (c.name.as_str(), c.value.as_deref().unwrap_or("")))
                    .collect();
                let new = NewTopic {
                    name,
                    partitions,
                    replication_factor,
                    configs,
                };
                broker
                    .replicas
                    .create_topic_with_assignments(&new, assignments, request.validate_only)
                    .await
            }
            Err(error) => Err(error),
        };
        results.push(match outcome {
            Ok(record) => {
                let configs = topic_config_entries(&config, &record.configs, None)
                    .into_iter()
                    .map(|entry| {
                        CreatableTopicConfigs::default()
                            .with_name(StrBytes::from_string(entry.name.to_string()))
                            .with_value(Some(StrBytes::from_string(entry.value)))
                            .with_config_source(entry.source)
                    })
                    .collect();
                let result = result
                    .with_topic_id(record.id)
                    .with_num_partitions(record.partitions)
                    .with_replication_factor(record.replication_factor);
                if ctx.version() >= 5 {
                    result.with_configs(Some(configs))
                } else {
                    result
                }
            }
            Err(error) => result
                .with_error_code(error.code())
                .with_error_message(Some(StrBytes::from_string(error.to_string())))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        });
    }
    let response = CreateTopicsResponse::default().with_topics(results);
    ctx.respond(&response)
}

/// Manual replica assignments must name partitions 0..n in order, each with the same number
/// of distinct replicas, as Kafka (INVALID_REPLICA_ASSIGNMENT otherwise; the controller checks
/// that the brokers are registered). Returns the replicas per partition.
fn validate_assignments(
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<Vec<Vec<i32>>, TopicError> {
    if topic.num_partitions != -1 || topic.replication_factor != -1 {
        return Err(TopicError::InvalidRequest(
            "with manual assignments, numPartitions and replicationFactor must be -1".to_string(),
        ));
    }
    let mut replicas = Vec::with_capacity(topic.assignments.len());
    for (expected, assignment) in topic.assignments.iter().enumerate() {
        if usize::try_from(assignment.partition_index).ok() != Some(expected) {
            return Err(TopicError::InvalidPartitions(
                "partitions of a manual assignment must be numbered 0..n".to_string(),
            ));
        }
        let ids: Vec<i32> = assignment.broker_ids.iter().map(|id| id.0).collect();
        let distinct: std::collections::BTreeSet<i32> = ids.iter().copied().collect();
        let same_count = replicas
            .first()
            .is_none_or(|first: &Vec<i32>| first.len() == ids.len());
        if ids.is_empty() || distinct.len() != ids.len() || !same_count {
            return Err(TopicError::Controller {
                code: ResponseError::InvalidReplicaAssignment.code(),
                message: format!(
                    "partition {expected}: replicas {ids:?} must be distinct, non-empty and as many as every other partition's"
                ),
            });
        }
        replicas.push(ids);
    }
    if i32::try_from(replicas.len()).is_err() {
        return Err(TopicError::InvalidPartitions(
            "too many partitions".to_string(),
        ));
    }
    Ok(replicas)
}
