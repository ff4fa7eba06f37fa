//! AlterConfigs (key 33): replace the whole set of overrides of a topic or a dynamic broker
//! layer. Shared with IncrementalAlterConfigs: which resource is meant, its current
//! overrides, and applying the new set.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::{ApiError, RequestContext};
use crate::broker::Broker;
use crate::config::DynamicLayer;
use crate::replica_manager::TopicError;

/// A resource whose configuration can be altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Topic(&'a str),
    Broker(DynamicLayer),
}

/// Why an alteration of one resource failed: a Kafka error code and a message.
pub type Refusal = (i16, String);

pub fn invalid_request(message: impl Into<String>) -> Refusal {
    (ResponseError::InvalidRequest.code(), message.into())
}

pub fn invalid_config(message: impl Into<String>) -> Refusal {
    (ResponseError::InvalidConfig.code(), message.into())
}

/// Which resource a (type, name) pair means on this broker.
pub fn target<'a>(
    broker: &Broker,
    resource_type: i8,
    name: &'a str,
) -> Result<Target<'a>, Refusal> {
    match resource_type {
        RESOURCE_TOPIC => Ok(Target::Topic(name)),
        RESOURCE_BROKER if name.is_empty() => Ok(Target::Broker(DynamicLayer::ClusterDefault)),
        RESOURCE_BROKER if name == broker.node_id().to_string() => {
            Ok(Target::Broker(DynamicLayer::Broker))
        }
        RESOURCE_BROKER => Err(invalid_request(format!(
            "this is broker {}, not broker '{name}'",
            broker.node_id()
        ))),
        other => Err(invalid_request(format!(
            "altering the configuration of resource type {other} is not supported"
        ))),
    }
}

/// The overrides a target has now: a topic's own settings, or one dynamic broker layer.
pub fn current_overrides(
    broker: &Broker,
    target: Target<'_>,
) -> Result<BTreeMap<String, String>, Refusal> {
    match target {
        Target::Topic(name) => broker
            .replicas
            .topic(name)
            .map(|topic| topic.record.configs.clone())
            .ok_or_else(|| {
                (
                    ResponseError::UnknownTopicOrPartition.code(),
                    format!("unknown topic '{name}'"),
                )
            }),
        Target::Broker(layer) => Ok(broker
            .config()
            .dynamic(layer)
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()),
    }
}

/// Validates `configs` as the complete new override set of `target` and, unless
/// `validate_only`, commits it through the controller and applies it.
///
/// The per-resource code of both alter APIs is synchronous; the controller round trip is
/// awaited in place (`block_in_place`: config changes are rare admin requests, and the
/// connection answers in order anyway).
pub fn apply(
    broker: &Broker,
    target: Target<'_>,
    configs: &BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), Refusal> {
    let replicas = &broker.replicas;
    let result = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            match target {
                Target::Topic(name) => {
                    replicas
                        .alter_topic_configs(name, configs, validate_only)
                        .await
                }
                Target::Broker(layer) => {
                    replicas
                        .alter_broker_configs(layer, configs, validate_only)
                        .await
                }
            }
        })
    });
    result.map_err(|error: TopicError| (error.code(), error.to_string()))
}

/// The body of both handlers: alter every resource (`alter_one` of the calling module) and
/// answer each. The two APIs' generated types differ but have the same fields.
macro_rules! handle_alter {
    ($ctx:expr, $request:expr, $api:literal, $response:ty, $resource_response:ty) => {{
        let request = $request;
        let outcomes = alter_each(
            $api,
            request
                .resources
                .iter()
                .map(|r| (r.resource_type, &r.resource_name)),
            |index, resource_type, name| {
                let entries = &request.resources[index].configs;
                alter_one(
                    &$ctx.broker,
                    resource_type,
                    name,
                    entries,
                    request.validate_only,
                )
            },
        );
        let responses = request
            .resources
            .into_iter()
            .zip(outcomes)
            .map(|(resource, outcome)| {
                let response = <$resource_response>::default()
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name);
                match outcome {
                    Ok(()) => response,
                    Err((code, message)) => response
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(message))),
                }
            })
            .collect();
        $ctx.respond(&<$response>::default().with_responses(responses))
    }};
}
pub(crate) use handle_alter;

/// Runs `alter` on every resource in request order; a resource named twice is refused.
pub fn alter_each<'a>(
    api: &str,
    resources: impl Iterator<Item = (i8, &'a StrBytes)>,
    mut alter: impl FnMut(usize, i8, &str) -> Result<(), Refusal>,
) -> Vec<Result<(), Refusal>> {
    let mut seen: Vec<(i8, &StrBytes)> = Vec::new();
    resources
        .enumerate()
        .map(|(index, (resource_type, name))| {
            let outcome = if seen.contains(&(resource_type, name)) {
                Err(invalid_request(
                    "the resource is named twice in the request",
                ))
            } else {
                seen.push((resource_type, name));
                alter(index, resource_type, name.as_str())
            };
            if let Err((_, message)) = &outcome {
                tracing::info!(api, resource = %name, %message, "configuration change refused");
            }
            outcome
        })
        .collect()
}

fn alter_one(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    entries: &[kafka_protocol::messages::alter_configs_request::AlterableConfig],
    validate_only: bool,
) -> Result<(), Refusal> {
    let target = target(broker, resource_type, name)?;
    // Unknown topics are reported before anything about their settings.
    current_overrides(broker, target)?;
    let mut configs = BTreeMap::new();
    for entry in entries {
        let key = entry.name.as_str();
        let Some(value) = &entry.value else {
            return Err(invalid_request(format!("null value for `{key}`")));
        };
        if configs.insert(key.to_string(), value.to_string()).is_some() {
            return Err(invalid_request(format!("`{key}` is given twice")));
        }
    }
    apply(broker, target, &configs, validate_only)
}

pub fn handle(ctx: &RequestContext, request: AlterConfigsRequest) -> Result<Bytes, ApiError> {
    handle_alter!(
        ctx,
        request,
        "AlterConfigs",
        AlterConfigsResponse,
        AlterConfigsResourceResponse
    )
}
