//! Topic lookup and creation through standard APIs only (Metadata, CreateTopics), so the
//! producer and fetcher work against any Kafka-compatible broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::connection::{ClientError, Connection};
use crate::pipeline::PipelinedConnection;

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const TOPIC_ALREADY_EXISTS: i16 = 36;

/// Pause between Metadata polls while a new topic's leaders are elected.
const METADATA_RETRY: Duration = Duration::from_millis(100);

fn kafka_error(what: &str, code: i16) -> ClientError {
    let name = ResponseError::try_from_code(code)
        .map(|e| e.to_string())
        .unwrap_or_else(|| "NONE".to_string());
    ClientError::Protocol(format!("{what}: error {code} ({name})"))
}

/// A topic's partitions and the address of each partition's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    pub topic: String,
    /// Partition index to leader address (`host:port`).
    pub leaders: BTreeMap<i32, String>,
}

/// Per partition, the (shared) pipelined connection to its leader and the version of the
/// API it will be used for.
pub type LeaderRoutes = BTreeMap<i32, (Arc<PipelinedConnection>, i16)>;

impl TopicLayout {
    /// Opens one pipelined connection per distinct leader and negotiates `api` on it.
    pub async fn connect_leaders(
        &self,
        api: ApiKey,
        ours: std::ops::RangeInclusive<i16>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<LeaderRoutes, ClientError> {
        let mut by_leader: BTreeMap<&str, (Arc<PipelinedConnection>, i16)> = BTreeMap::new();
        let mut routes = BTreeMap::new();
        for (partition, leader) in &self.leaders {
            if !by_leader.contains_key(leader.as_str()) {
                let connection =
                    PipelinedConnection::connect(leader, timeout, max_in_flight).await?;
                let version = connection.version_for(api, ours.clone())?;
                by_leader.insert(leader, (Arc::new(connection), version));
            }
            if let Some(route) = by_leader.get(leader.as_str()) {
                routes.insert(*partition, route.clone());
            }
        }
        Ok(routes)
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.leaders.keys().copied().collect()
    }
}

enum Lookup {
    Found(TopicLayout),
    Missing,
    /// The topic exists but some partition has no leader yet.
    NotReady,
}

/// A Metadata request for `topics` (`None`: every topic; empty: only brokers and
/// controller). With `allow_auto_creation` a broker that auto-creates topics creates
/// missing ones (Metadata v4+), as the Java producer asks; admin and consumers do not.
pub fn metadata_request(topics: Option<&[String]>, allow_auto_creation: bool) -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(topics.map(|topics| {
            topics
                .iter()
                .map(|t| {
                    metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                })
                .collect()
        }))
        .with_allow_auto_topic_creation(allow_auto_creation)
}

async fn lookup(
    connection: &mut Connection,
    topic: &str,
) -> Result<(Lookup, Option<String>), ClientError> {
    let request = metadata_request(Some(&[topic.to_string()]), false);
    let (_, response) = connection.send(1..=12, &request).await?;
    let brokers: HashMap<i32, String> = response
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let controller = brokers.get(&response.controller_id.0).cloned();
    let Some(found) = response.topics.into_iter().next() else {
        return Ok((Lookup::Missing, controller));
    };
    match found.error_code {
        NONE => {}
        UNKNOWN_TOPIC_OR_PARTITION => return Ok((Lookup::Missing, controller)),
        LEADER_NOT_AVAILABLE => return Ok((Lookup::NotReady, controller)),
        code => return Err(kafka_error(&format!("Metadata for {topic}"), code)),
    }
    let mut leaders = BTreeMap::new();
    for partition in found.partitions {
        match brokers.get(&partition.leader_id.0) {
            Some(address) if partition.error_code == NONE => {
                leaders.insert(partition.partition_index, address.clone());
            }
            _ => return Ok((Lookup::NotReady, controller)),
        }
    }
    if leaders.is_empty() {
        return Ok((Lookup::NotReady, controller));
    }
    Ok((
        Lookup::Found(TopicLayout {
            topic: topic.to_string(),
            leaders,
        }),
        controller,
    ))
}

/// The layout of an existing topic.
pub async fn describe_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<TopicLayout, ClientError> {
    let mut connection = Connection::connect(bootstrap, timeout).await?;
    let deadline = Instant::now() + timeout;
    loop {
        match lookup(&mut connection, topic).await?.0 {
            Lookup::Found(layout) => return Ok(layout),
            Lookup::Missing => {
                return Err(kafka_error(
                    &format!("topic {topic}"),
                    UNKNOWN_TOPIC_OR_PARTITION,
                ))
            }
            Lookup::NotReady if Instant::now() < deadline => {
                tokio::time::sleep(METADATA_RETRY).await
            }
            Lookup::NotReady => {
                return Err(ClientError::Timeout(timeout, format!("leaders of {topic}")))
            }
        }
    }
}

/// The layout of `topic`, created first (CreateTopics at the controller) with `partitions`
/// and `replication_factor` (-1: the broker default) when it does not exist. Waits until
/// every partition has a leader. An existing topic keeps its partition count.
pub async fn ensure_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    timeout: Duration,
) -> Result<TopicLayout, ClientError> {
    let mut connection = Connection::connect(bootstrap, timeout).await?;
    let deadline = Instant::now() + timeout;
    let mut created = false;
    loop {
        let (found, controller) = lookup(&mut connection, topic).await?;
        match found {
            Lookup::Found(layout) => return Ok(layout),
            Lookup::Missing if !created => {
                let controller = controller.unwrap_or_else(|| bootstrap.to_string());
                create_topic(&controller, topic, partitions, replication_factor, timeout).await?;
                created = true;
            }
            Lookup::Missing | Lookup::NotReady => {
                if Instant::now() >= deadline {
                    return Err(ClientError::Timeout(timeout, format!("leaders of {topic}")));
                }
                tokio::time::sleep(METADATA_RETRY).await;
            }
        }
    }
}

async fn create_topic(
    controller: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    timeout: Duration,
) -> Result<(), ClientError> {
    let mut connection = Connection::connect(controller, timeout).await?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let request = CreateTopicsRequest::default()
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)])
        .with_timeout_ms(timeout_ms);
    // v4+ accepts -1 for the replication factor (the broker default).
    let (_, response) = connection.send(4..=7, &request).await?;
    for result in response.topics {
        if result.error_code != NONE && result.error_code != TOPIC_ALREADY_EXISTS {
            let message = result
                .error_message
                .map(|m| format!(": {}", m.as_str()))
                .unwrap_or_default();
            return Err(kafka_error(
                &format!("CreateTopics {topic}{message}"),
                result.error_code,
            ));
        }
    }
    tracing::debug!(topic, partitions, "created topic");
    Ok(())
}
