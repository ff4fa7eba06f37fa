//! ElectLeaders (key 43, v0–2): move leadership back to each partition's preferred replica
//! (the first of its replica list), as `kafka-leader-election.sh --election-type preferred`
//! and `AdminClient.electLeaders` ask.
//!
//! Per partition, from this broker's image: UNKNOWN_TOPIC_OR_PARTITION, ELECTION_NOT_NEEDED
//! when the preferred replica already leads, PREFERRED_LEADER_NOT_AVAILABLE when it is not
//! in the ISR or cannot lead (fenced, shutting down). The rest are elected in one
//! controller proposal (a new leader epoch each) and answered once this broker's image
//! shows them. Unclean election on request (type 1) is refused with INVALID_REQUEST: a
//! partition with no in-sync replica is electable uncleanly only through the topic's
//! `unclean.leader.election.enable`.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{ApiError, RequestContext};

const PREFERRED: i8 = 0;

pub async fn handle(ctx: &RequestContext, request: ElectLeadersRequest) -> Result<Bytes, ApiError> {
    let image = ctx.broker.replicas.image();
    // (topic, partition) -> Some(topic id) to elect, or the error to answer.
    let wanted: Vec<(String, i32)> = match &request.topic_partitions {
        Some(topics) => topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.to_string(), *p)))
            .collect(),
        None => image
            .topics
            .values()
            .flat_map(|t| (0..t.partitions.len()).map(move |p| (t.name.clone(), p)))
            .filter_map(|(name, p)| i32::try_from(p).ok().map(|p| (name, p)))
            .collect(),
    };
    let mut outcomes: BTreeMap<(String, i32), Result<Uuid, (ResponseError, String)>> =
        BTreeMap::new();
    for (name, index) in wanted {
        let outcome = if request.election_type != PREFERRED {
            Err((
                ResponseError::InvalidRequest,
                "unclean election on request is not supported; set unclean.leader.election.enable on the topic".to_string(),
            ))
        } else {
            preferred_outcome(&image, &name, index)
        };
        outcomes.insert((name, index), outcome);
    }
    let electing: Vec<(Uuid, i32)> = outcomes
        .iter()
        .filter_map(|((_, index), outcome)| outcome.as_ref().ok().map(|id| (*id, *index)))
        .collect();
    let mut failure: Option<(ResponseError, String)> = None;
    if !electing.is_empty() {
        if let Err(error) = ctx.broker.replicas.elect_preferred_leaders(electing).await {
            failure = Some((
                ResponseError::try_from_code(error.code())
                    .unwrap_or(ResponseError::UnknownServerError),
                error.to_string(),
            ));
        }
    }
    let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
    for ((name, index), outcome) in outcomes {
        let (code, message) = match outcome {
            Ok(_) => match &failure {
                None => (0, None),
                Some((error, message)) => (error.code(), Some(message.clone())),
            },
            Err((error, message)) => (error.code(), Some(message)),
        };
        by_topic.entry(name).or_default().push(
            PartitionResult::default()
                .with_partition_id(index)
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string)),
        );
    }
    let results = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            ReplicaElectionResult::default()
                .with_topic(TopicName(StrBytes::from_string(name)))
                .with_partition_result(partitions)
        })
        .collect();
    ctx.respond(&ElectLeadersResponse::default().with_replica_election_results(results))
}

/// Whether the preferred replica of `name`-`index` can be elected now.
fn preferred_outcome(
    image: &sluice_controller::MetadataImage,
    name: &str,
    index: i32,
) -> Result<Uuid, (ResponseError, String)> {
    let unknown = || {
        (
            ResponseError::UnknownTopicOrPartition,
            format!("unknown topic-partition {name}-{index}"),
        )
    };
    let topic = image.topic_by_name(name).ok_or_else(unknown)?;
    let state = image
        .partition(&topic.topic_id, index)
        .ok_or_else(unknown)?;
    let preferred = state.replicas.first().copied().ok_or_else(unknown)?;
    if state.leader == preferred {
        return Err((
            ResponseError::ElectionNotNeeded,
            format!("broker {preferred} already leads {name}-{index}"),
        ));
    }
    if !state.isr.contains(&preferred) || !image.is_broker_eligible(preferred) {
        return Err((
            ResponseError::PreferredLeaderNotAvailable,
            format!(
                "preferred replica {preferred} of {name}-{index} is not in sync or cannot lead"
            ),
        ));
    }
    Ok(topic.topic_id)
}
