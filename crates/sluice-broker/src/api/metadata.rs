//! Metadata (key 3): brokers, topics and partition leaders; creates unknown topics when
//! `auto.create.topics.enable` is on and the client allows it.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{ApiError, RequestContext};
use crate::broker::Broker;
use crate::replica_manager::{NewTopic, TopicError, TopicState};

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub async fn handle(ctx: &RequestContext, request: MetadataRequest) -> Result<Bytes, ApiError> {
    let broker = &ctx.broker;
    let version = ctx.version();
    let brokers = live_brokers(broker)
        .into_iter()
        .map(|(id, host, port, rack)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port))
                .with_rack(rack.map(StrBytes::from_string))
        })
        .collect();
    // v0: an empty list means every topic; v1+: null means every topic.
    let wanted = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(topics),
    };
    let allow_auto_create = version < 4 || request.allow_auto_topic_creation;
    let topics = match wanted {
        None => broker
            .replicas
            .all_topics()
            .iter()
            .map(|topic| describe_topic(broker, topic))
            .collect(),
        Some(requested) => {
            let mut topics = Vec::with_capacity(requested.len());
            for wanted in &requested {
                topics.push(match &wanted.name {
                    Some(name) => lookup_or_create(broker, name.as_str(), allow_auto_create).await,
                    None => match broker.replicas.topic_by_id(wanted.topic_id) {
                        Some(topic) => describe_topic(broker, &topic),
                        None => MetadataResponseTopic::default()
                            .with_topic_id(wanted.topic_id)
                            .with_error_code(ResponseError::UnknownTopicId.code()),
                    },
                });
            }
            topics
        }
    };
    let response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id().to_string())))
        .with_controller_id(BrokerId(broker.node_id()))
        .with_topics(topics);
    ctx.respond(&response)
}

async fn lookup_or_create(
    broker: &Arc<Broker>,
    name: &str,
    allow_auto_create: bool,
) -> MetadataResponseTopic {
    if let Some(topic) = broker.replicas.topic(name) {
        return describe_topic(broker, &topic);
    }
    let error_topic = |code: i16| {
        MetadataResponseTopic::default()
            .with_name(Some(topic_name(name)))
            .with_error_code(code)
    };
    if !(allow_auto_create && broker.config().auto_create_topics_enable()) {
        return error_topic(ResponseError::UnknownTopicOrPartition.code());
    }
    let new = NewTopic {
        name,
        partitions: broker.config().num_partitions(),
        replication_factor: broker.config().default_replication_factor(),
        configs: Vec::new(),
    };
    match broker.replicas.create_topic(&new, false).await {
        Ok(_) | Err(TopicError::AlreadyExists(_)) => match broker.replicas.topic(name) {
            Some(topic) => describe_topic(broker, &topic),
            None => error_topic(ResponseError::UnknownTopicOrPartition.code()),
        },
        Err(error) => {
            tracing::info!(topic = name, %error, "auto topic creation refused");
            error_topic(error.code())
        }
    }
}

/// The brokers clients may talk to: every registered, unfenced broker of the image as
/// `(id, host, port, rack)`, sorted by id; this broker is always listed (it answers).
pub fn live_brokers(broker: &Broker) -> Vec<(i32, String, u16, Option<String>)> {
    let image = broker.replicas.image();
    let node_id = broker.node_id();
    let mut brokers: Vec<(i32, String, u16, Option<String>)> = image
        .brokers
        .values()
        .filter(|b| !b.fenced || b.broker_id == node_id)
        .filter_map(|b| {
            let endpoint = b.endpoints.first()?;
            Some((
                b.broker_id,
                endpoint.host.clone(),
                endpoint.port,
                b.rack.clone(),
            ))
        })
        .collect();
    if !brokers.iter().any(|(id, ..)| *id == node_id) {
        let (host, port) = broker.config().advertised();
        brokers.push((node_id, host, port, broker.config().broker_rack()));
        brokers.sort_by_key(|(id, ..)| *id);
    }
    brokers
}

/// A topic's partitions as the controller's image has them: leader (or LEADER_NOT_AVAILABLE
/// while offline), leader epoch, replicas and ISR.
fn describe_topic(broker: &Arc<Broker>, topic: &TopicState) -> MetadataResponseTopic {
    let image = broker.replicas.image();
    let registrations = image
        .topics
        .get(&topic.record.id)
        .map(|t| t.partitions.as_slice())
        .unwrap_or_default();
    let ids = |nodes: &[i32]| nodes.iter().map(|id| BrokerId(*id)).collect::<Vec<_>>();
    let partitions = registrations
        .iter()
        .zip(0..)
        .map(|(registration, index)| {
            let response = MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(BrokerId(registration.leader))
                .with_leader_epoch(registration.leader_epoch)
                .with_replica_nodes(ids(&registration.replicas))
                .with_isr_nodes(ids(&registration.isr));
            if registration.leader < 0 {
                response.with_error_code(ResponseError::LeaderNotAvailable.code())
            } else {
                response
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.record.name)))
        .with_topic_id(topic.record.id)
        .with_is_internal(topic.record.name == crate::group::OFFSETS_TOPIC)
        .with_partitions(partitions)
}
