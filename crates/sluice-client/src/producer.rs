//! A partition-aware batch producer: the caller picks the partition and hands over whole
//! record batches; the producer encodes them as RecordBatch v2 (kafka-protocol's
//! `RecordBatchEncoder`, any codec), routes each to its partition's leader and keeps up to
//! `max_in_flight` Produce requests outstanding per leader connection. Partitioning
//! policy, accumulation and retries belong to the callers (the bench tool, later the SDK's
//! full Producer).

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
use crate::pipeline::{PendingResponse, PipelinedConnection};
use crate::topics::TopicLayout;

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

/// The acknowledgement of one produced batch.
pub enum ProduceAck {
    Pending {
        partition: i32,
        response: PendingResponse<ProduceResponse>,
    },
    /// acks=0: the broker sends nothing back.
    NotRequested,
}

impl ProduceAck {
    /// Waits for the broker's answer: the batch's base offset, or `None` with acks=0.
    pub async fn wait(self) -> Result<Option<i64>, ClientError> {
        let (partition, response) = match self {
            ProduceAck::NotRequested => return Ok(None),
            ProduceAck::Pending {
                partition,
                response,
            } => (partition, response.wait().await?),
        };
        let answer = response
            .responses
            .iter()
            .flat_map(|topic| topic.partition_responses.iter())
            .find(|p| p.index == partition)
            .ok_or_else(|| {
                ClientError::Protocol(format!("Produce response without partition {partition}"))
            })?;
        if answer.error_code != 0 {
            let name = ResponseError::try_from_code(answer.error_code)
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(ClientError::Protocol(format!(
                "Produce to partition {partition}: error {} ({name})",
                answer.error_code
            )));
        }
        Ok(Some(answer.base_offset))
    }
}

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

    /// Sends one encoded batch (from [`encode_batch`]) to `partition`'s leader. Returns once
    /// the request is written (waiting while `max_in_flight` requests are outstanding); the
    /// returned ack resolves when the broker answers.
    pub async fn send(&self, partition: i32, batch: Bytes) -> Result<ProduceAck, ClientError> {
        let (connection, version) = self
            .routes
            .get(&partition)
            .ok_or_else(|| ClientError::Protocol(format!("unknown partition {partition}")))?;
        let timeout_ms = i32::try_from(self.config.timeout.as_millis()).unwrap_or(i32::MAX);
        let request = ProduceRequest::default()
            .with_acks(self.config.acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(self.topic.clone())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch))])]);
        if self.config.acks == 0 {
            connection
                .submit_without_response(*version, &request)
                .await?;
            return Ok(ProduceAck::NotRequested);
        }
        let response = connection.submit(*version, &request).await?;
        Ok(ProduceAck::Pending {
            partition,
            response,
        })
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
