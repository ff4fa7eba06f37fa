//! A partition-aware batch producer: the caller picks the partition and hands over whole
//! record batches; the producer encodes them as RecordBatch v2 (kafka-protocol's
//! `RecordBatchEncoder`, any codec), routes each to its partition's leader and keeps up to
//! `max_in_flight` Produce requests outstanding per leader connection. Partitioning
//! policy, accumulation and retries belong to the callers (the bench tool).
//!
//! [`Producer`] (in `client.rs`) is the SDK's full Kafka producer on top of the same
//! encoding: partitioner, accumulator, idempotence, retries, flush and close.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;

use crate::connection::ClientError;

mod client;
mod options;

use crate::pipeline::{PendingResponse, PipelinedConnection};
use crate::topics::TopicLayout;
pub use client::{kafka_error, DeliveryFuture, Producer};
pub use options::ProducerOptions;

/// Produce versions this producer speaks: v3 introduced RecordBatch v2; v13 replaces topic
/// names with ids.
const PRODUCE_VERSIONS: std::ops::RangeInclusive<i16> = 3..=12;

/// How the producer talks to the brokers.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// 0 (no response), 1 (leader) or -1 (all in-sync replicas).
    pub acks: i16,
    pub compression: Compression,
    /// Produce requests outstanding per leader connection.
    pub max_in_flight: usize,
    /// Connect and response timeout; also the Produce request's `timeout_ms`.
    pub timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: -1,
            compression: Compression::None,
            max_in_flight: 5,
            timeout: Duration::from_secs(30),
        }
    }
}

/// One record to encode: a create timestamp, an optional key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

/// Encodes `records` as one RecordBatch v2 without a producer id (not idempotent).
pub fn encode_batch(
    records: &[OutgoingRecord],
    compression: Compression,
) -> Result<Bytes, ClientError> {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(index, record)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: index as i64,
            // offset - sequence must be constant for the encoder to keep one batch, and the
            // base sequence (of offset 0) must be -1 without a producer id.
            sequence: index as i32 - 1,
            timestamp: record.timestamp_ms,
            key: record.key.clone(),
            value: record.value.clone(),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buffer = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buffer, records.iter(), &options)
        .map_err(|e| ClientError::Protocol(format!("encoding a record batch: {e}")))?;
    Ok(buffer.freeze())
}

/// The outcome of one partition's batch: its base offset (`None` with acks=0) or the
/// broker's error for it.
pub type PartitionAck = (i32, Result<Option<i64>, ClientError>);

/// The acknowledgement of one Produce request (one batch per partition in it).
pub struct ProduceAck {
    partitions: Vec<i32>,
    /// `None` with acks=0: the broker sends nothing back.
    response: Option<PendingResponse<ProduceResponse>>,
}

impl ProduceAck {
    /// Waits for the broker's answer: per partition of the request, in the order they were
    /// given, the batch's base offset or the partition's error. The outer error is the
    /// request's (connection lost, timeout): none of its batches is known to be written.
    pub async fn wait(self) -> Result<Vec<PartitionAck>, ClientError> {
        let Some(response) = self.response else {
            return Ok(self.partitions.into_iter().map(|p| (p, Ok(None))).collect());
        };
        let response = response.wait().await?;
        let answers: BTreeMap<i32, (i16, i64)> = response
            .responses
            .iter()
            .flat_map(|topic| topic.partition_responses.iter())
            .map(|p| (p.index, (p.error_code, p.base_offset)))
            .collect();
        Ok(self
            .partitions
            .into_iter()
            .map(|partition| {
                let result = match answers.get(&partition) {
                    None => Err(ClientError::Protocol(format!(
                        "Produce response without partition {partition}"
                    ))),
                    Some(&(0, base_offset)) => Ok(Some(base_offset)),
                    Some(&(code, _)) => {
                        let name = ResponseError::try_from_code(code)
                            .map(|e| e.to_string())
                            .unwrap_or_default();
                        Err(ClientError::Protocol(format!(
                            "Produce to partition {partition}: error {code} ({name})"
                        )))
                    }
                };
                (partition, result)
            })
            .collect())
    }
}

/// The batches of one Produce request: the leader's connection, its Produce version and
/// (partition, batch) pairs.
type LeaderRequest<'a> = (&'a Arc<PipelinedConnection>, i16, Vec<(i32, Bytes)>);

/// Sends encoded batches of one topic to the partitions' leaders.
pub struct BatchProducer {
    topic: TopicName,
    layout: TopicLayout,
    /// Per partition, the (shared) pipelined connection to its leader and the Produce version.
    routes: BTreeMap<i32, (Arc<PipelinedConnection>, i16)>,
    config: ProducerConfig,
}

impl BatchProducer {
    /// Opens one pipelined connection per leader of `layout`'s partitions.
    pub async fn connect(
        layout: TopicLayout,
        config: ProducerConfig,
    ) -> Result<BatchProducer, ClientError> {
        let routes = layout
            .connect_leaders(
                ApiKey::Produce,
                PRODUCE_VERSIONS,
                config.timeout,
                config.max_in_flight,
            )
            .await?;
        Ok(BatchProducer {
            topic: TopicName(StrBytes::from_string(layout.topic.clone())),
            layout,
            routes,
            config,
        })
    }

    /// The topic's partitions.
    pub fn partitions(&self) -> Vec<i32> {
        self.layout.partitions()
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// Sends one encoded batch (from [`encode_batch`]) to `partition`'s leader; see
    /// [`BatchProducer::send_many`].
    pub async fn send(&self, partition: i32, batch: Bytes) -> Result<ProduceAck, ClientError> {
        let mut acks = self.send_many(vec![(partition, batch)]).await?;
        acks.pop()
            .ok_or_else(|| ClientError::Protocol("no request was sent".to_string()))
    }

    /// Sends encoded batches (at most one per partition) as one Produce request per leader,
    /// as Kafka's producers do: the broker appends them together and, with acks=all, waits
    /// for one group commit per partition instead of one request round trip per batch.
    /// Returns once the requests are written (waiting while `max_in_flight` requests are
    /// outstanding on a connection); each ack resolves when its broker answers.
    pub async fn send_many(
        &self,
        batches: Vec<(i32, Bytes)>,
    ) -> Result<Vec<ProduceAck>, ClientError> {
        // Group by leader connection, keeping the order of first appearance.
        let mut requests: Vec<LeaderRequest<'_>> = Vec::new();
        for (partition, batch) in batches {
            let (connection, version) = self
                .routes
                .get(&partition)
                .ok_or_else(|| ClientError::Protocol(format!("unknown partition {partition}")))?;
            match requests
                .iter_mut()
                .find(|(c, _, _)| Arc::ptr_eq(c, connection))
            {
                Some((_, _, group)) => group.push((partition, batch)),
                None => requests.push((connection, *version, vec![(partition, batch)])),
            }
        }
        let timeout_ms = i32::try_from(self.config.timeout.as_millis()).unwrap_or(i32::MAX);
        let mut acks = Vec::with_capacity(requests.len());
        for (connection, version, group) in requests {
            let partitions: Vec<i32> = group.iter().map(|(p, _)| *p).collect();
            let partition_data = group
                .into_iter()
                .map(|(index, batch)| {
                    PartitionProduceData::default()
                        .with_index(index)
                        .with_records(Some(batch))
                })
                .collect();
            let request = ProduceRequest::default()
                .with_acks(self.config.acks)
                .with_timeout_ms(timeout_ms)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(self.topic.clone())
                    .with_partition_data(partition_data)]);
            let response = if self.config.acks == 0 {
                connection
                    .submit_without_response(version, &request)
                    .await?;
                None
            } else {
                Some(connection.submit(version, &request).await?)
            };
            acks.push(ProduceAck {
                partitions,
                response,
            });
        }
        Ok(acks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn encoded_batches_decode_to_the_same_records_with_every_codec() {
        let records: Vec<OutgoingRecord> = (0..10)
            .map(|i| OutgoingRecord {
                timestamp_ms: 1_000 + i,
                key: None,
                value: Some(Bytes::from(vec![i as u8; 100])),
            })
            .collect();
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut bytes = encode_batch(&records, codec).unwrap();
            let decoded = RecordBatchDecoder::decode(&mut bytes).unwrap();
            assert_eq!(decoded.records.len(), 10, "{codec:?}");
            for (i, record) in decoded.records.iter().enumerate() {
                assert_eq!(record.offset, i as i64);
                assert_eq!(record.timestamp, 1_000 + i as i64);
                assert_eq!(record.value, records[i].value);
                assert_eq!(record.producer_id, -1);
            }
        }
    }
}
