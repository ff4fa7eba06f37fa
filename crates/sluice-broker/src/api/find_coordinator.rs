//! FindCoordinator (key 10): a group's coordinator is the leader of its partition of
//! `__consumer_offsets` (`hash(group) % partitions`, Kafka's `partitionFor`), from the
//! controller's image; COORDINATOR_NOT_AVAILABLE while that partition has no leader. On a
//! single node that is always this node. v4+ batches keys (`coordinator_keys`);
//! transaction coordinators do not exist yet (key type 1 gets COORDINATOR_NOT_AVAILABLE).

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::metadata::live_brokers;
use super::{ApiError, RequestContext};
use crate::group::store::partition_for;
use crate::group::OFFSETS_TOPIC;

const KEY_TYPE_GROUP: i8 = 0;

/// The broker `(id, host, port)` coordinating `group`, if its offsets partition has a live
/// leader.
fn coordinator_of(ctx: &RequestContext, group: &str) -> Option<(i32, String, u16)> {
    let image = ctx.broker.replicas.image();
    let topic = image.topic_by_name(OFFSETS_TOPIC)?;
    let partitions = i32::try_from(topic.partitions.len()).ok()?;
    let partition = partition_for(group, partitions);
    let leader = image.partition(&topic.topic_id, partition)?.leader;
    live_brokers(&ctx.broker)
        .into_iter()
        .find(|(id, ..)| *id == leader)
        .map(|(id, host, port, _)| (id, host, port))
}

/// Error code, message and coordinator `(id, host, port)` for one key.
type Answer = (i16, Option<&'static str>, Option<(i32, String, u16)>);

pub fn handle(ctx: &RequestContext, request: FindCoordinatorRequest) -> Result<Bytes, ApiError> {
    let answer = |key: &StrBytes| -> Answer {
        if request.key_type != KEY_TYPE_GROUP {
            return (
                ResponseError::CoordinatorNotAvailable.code(),
                Some("transaction coordinators are not supported yet"),
                None,
            );
        }
        if key.is_empty() {
            return (
                ResponseError::InvalidRequest.code(),
                Some("empty group id"),
                None,
            );
        }
        match coordinator_of(ctx, key.as_str()) {
            Some(coordinator) => (0, None, Some(coordinator)),
            None => (
                ResponseError::CoordinatorNotAvailable.code(),
                Some("the group's offsets partition has no leader"),
                None,
            ),
        }
    };
    let response = if ctx.version() >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let (code, message, coordinator) = answer(key);
                let c = Coordinator::default()
                    .with_key(key.clone())
                    .with_error_code(code)
                    .with_error_message(message.map(StrBytes::from_static_str));
                match coordinator {
                    Some((node, host, port)) => c
                        .with_node_id(BrokerId(node))
                        .with_host(StrBytes::from_string(host))
                        .with_port(i32::from(port)),
                    None => c.with_node_id(BrokerId(-1)).with_port(-1),
                }
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let (code, message, coordinator) = answer(&request.key);
        let mut r = FindCoordinatorResponse::default().with_error_code(code);
        if ctx.version() >= 1 {
            r = r.with_error_message(message.map(StrBytes::from_static_str));
        }
        match coordinator {
            Some((node, host, port)) => r
                .with_node_id(BrokerId(node))
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port)),
            None => r.with_node_id(BrokerId(-1)).with_port(-1),
        }
    };
    ctx.respond(&response)
}
