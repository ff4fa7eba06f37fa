//! A fetcher with explicit assignment: the caller names partitions and offsets, the fetcher
//! sends single-partition Fetch requests to each leader over a pipelined connection, so
//! fetches of different partitions are in flight at once on one socket. No group, no
//! offset commits: the SDK's full Consumer builds those on top.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, RecordBatchDecoder};
use kafka_protocol::ResponseError;

use crate::connection::ClientError;
use crate::pipeline::{PendingResponse, PipelinedConnection};
use crate::topics::TopicLayout;

/// Fetch versions this fetcher speaks: v4 carries RecordBatch v2 and the last stable
/// offset; v13 replaces topic names with ids.
const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=12;

/// Bytes of a RecordBatch v2 header (up to and including recordsCount).
pub const BATCH_HEADER_BYTES: usize = 61;

/// Fetch request limits.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// How long the broker may hold a fetch waiting for `min_bytes`.
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    /// Response limit (`fetch.max.bytes`).
    pub max_bytes: i32,
    /// Limit per partition (`max.partition.fetch.bytes`).
    pub partition_max_bytes: i32,
    /// 0: read uncommitted, 1: read committed.
    pub isolation_level: i8,
    /// Fetch requests outstanding per leader connection.
    pub max_in_flight: usize,
    /// Connect and response timeout (must exceed `max_wait_ms`).
    pub timeout: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 52_428_800,
            partition_max_bytes: 1_048_576,
            isolation_level: 0,
            max_in_flight: 16,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The header fields of one complete batch in a fetch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub records_count: i32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    /// The whole batch, header included.
    pub bytes: Bytes,
}

impl FetchedBatch {
    /// Decodes (and decompresses) the records.
    pub fn records(&self) -> Result<Vec<Record>, ClientError> {
        let mut bytes = self.bytes.clone();
        RecordBatchDecoder::decode(&mut bytes)
            .map(|set| set.records)
            .map_err(|e| ClientError::Protocol(format!("decoding a fetched batch: {e}")))
    }
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(word)
}

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(word)
}

/// Splits a fetch response's records into complete batches from their headers alone (no
/// decompression). A partial batch at the end (brokers cut responses at the byte limit) is
/// left out; a malformed length ends the walk.
pub fn split_batches(records: &Bytes) -> Vec<FetchedBatch> {
    let mut batches = Vec::new();
    let mut position = 0usize;
    while records.len() - position >= BATCH_HEADER_BYTES {
        let header = &records[position..];
        let Ok(length) = usize::try_from(be_i32(header, 8)) else {
            break;
        };
        let total = length.saturating_add(12);
        if total < BATCH_HEADER_BYTES || total > header.len() {
            break;
        }
        let base_offset = be_i64(header, 0);
        batches.push(FetchedBatch {
            base_offset,
            last_offset: base_offset.saturating_add(i64::from(be_i32(header, 23))),
            first_timestamp_ms: be_i64(header, 27),
            max_timestamp_ms: be_i64(header, 35),
            records_count: be_i32(header, 57),
            bytes: records.slice(position..position + total),
        });
        position += total;
    }
    batches
}

/// What one partition's fetch returned.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub partition: i32,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Complete batches only.
    pub batches: Vec<FetchedBatch>,
}

impl FetchedPartition {
    /// Where the next fetch continues: after the last complete batch, or `offset` when
    /// nothing complete came back.
    pub fn next_offset(&self, offset: i64) -> i64 {
        self.batches
            .last()
            .map_or(offset, |b| b.last_offset.saturating_add(1).max(offset))
    }
}

/// A fetch written to the broker, not answered yet.
pub struct PendingFetch {
    partitions: Vec<i32>,
    response: PendingResponse<FetchResponse>,
}

impl PendingFetch {
    /// The answer of every partition asked for, in the order asked.
    pub async fn wait(self) -> Result<Vec<FetchedPartition>, ClientError> {
        let response = self.response.wait().await?;
        if response.error_code != 0 {
            return Err(fetch_error(-1, response.error_code));
        }
        let mut answers: BTreeMap<i32, _> = response
            .responses
            .into_iter()
            .flat_map(|topic| topic.partitions.into_iter())
            .map(|p| (p.partition_index, p))
            .collect();
        let mut fetched = Vec::with_capacity(self.partitions.len());
        for partition in self.partitions {
            let answer = answers.remove(&partition).ok_or_else(|| {
                ClientError::Protocol(format!("Fetch response without partition {partition}"))
            })?;
            if answer.error_code != 0 {
                return Err(fetch_error(partition, answer.error_code));
            }
            fetched.push(FetchedPartition {
                partition,
                high_watermark: answer.high_watermark,
                log_start_offset: answer.log_start_offset,
                batches: answer
                    .records
                    .map(|records| split_batches(&records))
                    .unwrap_or_default(),
            });
        }
        Ok(fetched)
    }
}

fn fetch_error(partition: i32, code: i16) -> ClientError {
    let name = ResponseError::try_from_code(code)
        .map(|e| e.to_string())
        .unwrap_or_default();
    ClientError::Protocol(format!(
        "Fetch of partition {partition}: error {code} ({name})"
    ))
}

/// Fetches partitions of one topic from their leaders.
pub struct Fetcher {
    topic: TopicName,
    routes: BTreeMap<i32, (Arc<PipelinedConnection>, i16)>,
    config: FetchConfig,
}

impl Fetcher {
    /// Opens one pipelined connection per leader of `layout`'s partitions.
    pub async fn connect(
        layout: &TopicLayout,
        config: FetchConfig,
    ) -> Result<Fetcher, ClientError> {
        let routes = layout
            .connect_leaders(
                ApiKey::Fetch,
                FETCH_VERSIONS,
                config.timeout,
                config.max_in_flight,
            )
            .await?;
        Ok(Fetcher {
            topic: TopicName(StrBytes::from_string(layout.topic.clone())),
            routes,
            config,
        })
    }

    /// The partitions grouped by leader: one multi-partition fetch per group is what a
    /// Kafka consumer sends. (Responses on a connection come back in request order, so a
    /// long-polling fetch of an idle partition would delay the answers of the others
    /// behind it; fetching a leader's partitions together avoids that.)
    pub fn leader_groups(&self) -> Vec<Vec<i32>> {
        let mut groups: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (partition, (connection, _)) in &self.routes {
            groups
                .entry(connection.address())
                .or_default()
                .push(*partition);
        }
        groups.into_values().collect()
    }

    /// Sends one sessionless fetch (every request names its partitions) of `positions`
    /// (partition, offset), which must share a leader; await the returned
    /// [`PendingFetch`] for the records. Calls for different partitions are pipelined on
    /// the leader's connection.
    pub async fn fetch(&self, positions: &[(i32, i64)]) -> Result<PendingFetch, ClientError> {
        let Some((first, _)) = positions.first() else {
            return Err(ClientError::Protocol("a fetch of no partition".to_string()));
        };
        let route = |partition: &i32| {
            self.routes
                .get(partition)
                .ok_or_else(|| ClientError::Protocol(format!("unknown partition {partition}")))
        };
        let (connection, version) = route(first)?;
        let mut partitions = Vec::with_capacity(positions.len());
        for (partition, offset) in positions {
            if !Arc::ptr_eq(&route(partition)?.0, connection) {
                return Err(ClientError::Protocol(format!(
                    "partitions {first} and {partition} have different leaders"
                )));
            }
            partitions.push(
                FetchPartition::default()
                    .with_partition(*partition)
                    .with_fetch_offset(*offset)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(self.config.partition_max_bytes),
            );
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(self.config.max_wait_ms)
            .with_min_bytes(self.config.min_bytes)
            .with_max_bytes(self.config.max_bytes)
            .with_isolation_level(self.config.isolation_level)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(self.topic.clone())
                .with_partitions(partitions)]);
        let response = connection.submit(*version, &request).await?;
        Ok(PendingFetch {
            partitions: positions.iter().map(|(p, _)| *p).collect(),
            response,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::{encode_batch, OutgoingRecord};
    use kafka_protocol::records::Compression;

    fn batch_at(base_offset: i64, count: usize) -> Bytes {
        let records: Vec<OutgoingRecord> = (0..count)
            .map(|i| OutgoingRecord {
                timestamp_ms: 5_000 + i as i64,
                key: None,
                value: Some(Bytes::from_static(b"value")),
            })
            .collect();
        let mut bytes = encode_batch(&records, Compression::Lz4).unwrap().to_vec();
        bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
        Bytes::from(bytes)
    }

    #[test]
    fn split_batches_reads_headers_and_drops_a_partial_tail() {
        let first = batch_at(0, 3);
        let second = batch_at(3, 2);
        let mut joined = first.to_vec();
        joined.extend_from_slice(&second);
        joined.extend_from_slice(&second[..second.len() - 5]);
        let batches = split_batches(&Bytes::from(joined));
        assert_eq!(batches.len(), 2);
        assert_eq!((batches[0].base_offset, batches[0].last_offset), (0, 2));
        assert_eq!(batches[0].records_count, 3);
        assert_eq!(batches[0].first_timestamp_ms, 5_000);
        assert_eq!(batches[0].max_timestamp_ms, 5_002);
        assert_eq!((batches[1].base_offset, batches[1].last_offset), (3, 4));
        assert_eq!(batches[1].records().unwrap().len(), 2);
        let fetched = FetchedPartition {
            partition: 0,
            high_watermark: 5,
            log_start_offset: 0,
            batches,
        };
        assert_eq!(fetched.next_offset(0), 5);
    }

    #[test]
    fn split_batches_stops_at_a_malformed_length() {
        let mut bytes = batch_at(0, 1).to_vec();
        bytes[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(split_batches(&Bytes::from(bytes)).is_empty());
        assert!(split_batches(&Bytes::from_static(&[0u8; 10])).is_empty());
    }
}
