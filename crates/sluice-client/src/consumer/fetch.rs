//! Fetch requests for the consumer: one request per leader carrying every fetchable
//! partition led by it, and the decoding of its answer into [`ConsumerRecord`]s.

use std::sync::Arc;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::connection::ClientError;
use crate::fetcher::split_batches;
use crate::pipeline::PipelinedConnection;
use crate::record::{ConsumerRecord, Header, TopicPartition};

/// Fetch versions the consumer speaks: v4 carries RecordBatch v2 and the last stable
/// offset; v13 replaces topic names with topic ids.
pub(crate) const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=12;

/// The limits of one Fetch request (Kafka's consumer settings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchLimits {
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
}

/// The outcome of one fetch for one partition.
#[derive(Debug)]
pub(crate) enum PartitionFetch {
    /// Records at or after the fetch offset (control records left out) and where the next
    /// fetch continues (after the last complete batch).
    Records {
        records: Vec<ConsumerRecord>,
        next_offset: i64,
        bytes: usize,
    },
    /// A Kafka error code for the partition.
    Error(i16),
}

/// What a finished Fetch brought back: the leader asked, and per partition the offset
/// asked for and the outcome. `Err` when the request itself failed.
pub(crate) struct FetchOutcome {
    pub leader: String,
    pub asked: Vec<(TopicPartition, i64)>,
    pub result: Result<Vec<(TopicPartition, PartitionFetch)>, ClientError>,
}

/// Sends one Fetch for `partitions` (partition and offset) to `connection` and decodes the
/// answer; run as a task so a long poll does not hold the consumer.
pub(crate) async fn fetch(
    connection: Arc<PipelinedConnection>,
    leader: String,
    partitions: Vec<(TopicPartition, i64)>,
    limits: FetchLimits,
) -> FetchOutcome {
    let result = fetch_inner(&connection, &partitions, limits).await;
    FetchOutcome {
        leader,
        asked: partitions,
        result,
    }
}

async fn fetch_inner(
    connection: &PipelinedConnection,
    partitions: &[(TopicPartition, i64)],
    limits: FetchLimits,
) -> Result<Vec<(TopicPartition, PartitionFetch)>, ClientError> {
    let version = connection.version_for(ApiKey::Fetch, FETCH_VERSIONS)?;
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (tp, offset) in partitions {
        let partition = FetchPartition::default()
            .with_partition(tp.partition)
            .with_fetch_offset(*offset)
            .with_partition_max_bytes(limits.partition_max_bytes);
        match topics.iter_mut().find(|t| t.topic.as_str() == tp.topic) {
            Some(topic) => topic.partitions.push(partition),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(limits.max_wait_ms)
        .with_min_bytes(limits.min_bytes)
        .with_max_bytes(limits.max_bytes)
        .with_isolation_level(0)
        .with_topics(topics);
    let response: FetchResponse = connection.submit(version, &request).await?.wait().await?;
    if response.error_code != 0 {
        // A request-level error (a fetch session error): every partition shares it.
        return Ok(partitions
            .iter()
            .map(|(tp, _)| (tp.clone(), PartitionFetch::Error(response.error_code)))
            .collect());
    }
    let mut out = Vec::new();
    for topic in response.responses {
        let name = topic.topic.as_str().to_string();
        for data in topic.partitions {
            let tp = TopicPartition::new(name.clone(), data.partition_index);
            if data.error_code != 0 {
                out.push((tp, PartitionFetch::Error(data.error_code)));
                continue;
            }
            let Some(asked) = partitions.iter().find(|(p, _)| *p == tp).map(|(_, o)| *o) else {
                continue;
            };
            let bytes = data.records.unwrap_or_default();
            out.push((tp.clone(), decode_records(&tp, asked, &bytes)?));
        }
    }
    Ok(out)
}

/// Decodes the complete batches of one partition's answer into records at or after
/// `fetch_offset` (a batch may start before it), leaving out control records.
pub(crate) fn decode_records(
    tp: &TopicPartition,
    fetch_offset: i64,
    bytes: &bytes::Bytes,
) -> Result<PartitionFetch, ClientError> {
    let mut records = Vec::new();
    let mut next_offset = fetch_offset;
    for batch in split_batches(bytes) {
        next_offset = next_offset.max(batch.last_offset.saturating_add(1));
        if batch.last_offset < fetch_offset {
            continue;
        }
        for record in batch.records()? {
            if record.control || record.offset < fetch_offset {
                continue;
            }
            records.push(ConsumerRecord {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp,
                key: record.key,
                value: record.value,
                headers: record
                    .headers
                    .into_iter()
                    .map(|(key, value)| Header {
                        key: key.as_str().to_string(),
                        value,
                    })
                    .collect(),
            });
        }
    }
    Ok(PartitionFetch::Records {
        records,
        next_offset,
        bytes: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::{encode_batch, OutgoingRecord};
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::Compression;

    fn batch(base: i64, n: usize) -> Bytes {
        let records: Vec<OutgoingRecord> = (0..n)
            .map(|i| OutgoingRecord {
                timestamp_ms: 1000 + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{}", base + i as i64))),
            })
            .collect();
        let mut encoded = BytesMut::from(&encode_batch(&records, Compression::None).unwrap()[..]);
        encoded[0..8].copy_from_slice(&base.to_be_bytes());
        encoded.freeze()
    }

    #[test]
    fn records_before_the_fetch_offset_inside_a_batch_are_skipped() {
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&batch(0, 5));
        bytes.extend_from_slice(&batch(5, 3));
        let tp = TopicPartition::new("t", 0);
        let PartitionFetch::Records {
            records,
            next_offset,
            ..
        } = decode_records(&tp, 3, &bytes.freeze()).unwrap()
        else {
            panic!("expected records");
        };
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5, 6, 7]);
        assert_eq!(next_offset, 8);
        assert_eq!(records[0].value.as_deref(), Some(&b"v3"[..]));
    }

    #[test]
    fn a_partial_trailing_batch_is_left_for_the_next_fetch() {
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&batch(0, 2));
        let second = batch(2, 2);
        bytes.extend_from_slice(&second[..second.len() - 5]);
        let tp = TopicPartition::new("t", 0);
        let PartitionFetch::Records {
            records,
            next_offset,
            ..
        } = decode_records(&tp, 0, &bytes.freeze()).unwrap()
        else {
            panic!("expected records");
        };
        assert_eq!(records.len(), 2);
        assert_eq!(next_offset, 2);
    }
}
