//! DeleteRecords (every advertised version) and the retention task, over a real socket:
//! the low watermark moves, ListOffsets EARLIEST and Fetch follow, reads below the start are
//! OFFSET_OUT_OF_RANGE, and the segment files really go.

mod common;

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::records::{Compression, Record};
use kafka_protocol::ResponseError;

use common::{create_topic, encode, name, produce_to, record, start_broker, versions, Client};

/// A batch of `count` records stamped `timestamp_ms`.
fn record_batch(count: usize, timestamp_ms: i64) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| record(i, timestamp_ms, None, Bytes::from(vec![b'v'; 100])))
        .collect();
    encode(&records, Compression::None)
}

async fn start(extra: &[(&str, &str)]) -> (sluice_broker::RunningBroker, tempfile::TempDir) {
    // One 5-record batch per segment.
    start_broker(&[&[("log.segment.bytes", "600")], extra].concat()).await
}

async fn produce(
    client: &mut Client,
    topic: &str,
    batch: Bytes,
) -> produce_response::PartitionProduceResponse {
    let partition = produce_to(client, 9, topic, -1, batch).await;
    assert_eq!(partition.error_code, 0);
    partition
}

async fn delete_records(
    client: &mut Client,
    version: i16,
    topic: &str,
    partition: i32,
    offset: i64,
) -> delete_records_response::DeleteRecordsPartitionResult {
    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![delete_records_request::DeleteRecordsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![
                delete_records_request::DeleteRecordsPartition::default()
                    .with_partition_index(partition)
                    .with_offset(offset),
            ])]);
    let response: DeleteRecordsResponse =
        client.call(ApiKey::DeleteRecords, version, &request).await;
    assert_eq!(response.topics.len(), 1);
    assert_eq!(response.topics[0].name, name(topic));
    response.topics[0].partitions[0].clone()
}

async fn earliest(client: &mut Client, topic: &str) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-2),
            ])]);
    let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 7, &request).await;
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    partition.offset
}

async fn fetch(client: &mut Client, topic: &str, offset: i64) -> fetch_response::PartitionData {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request).await;
    response.responses[0].partitions[0].clone()
}

fn log_files(dir: &std::path::Path, topic: &str) -> usize {
    std::fs::read_dir(dir.join(format!("{topic}-0")))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_every_version() {
    let (broker, dir) = start(&[]).await;
    let mut client = Client::connect(broker.local_addr).await;
    for version in versions(ApiKey::DeleteRecords) {
        let topic = format!("dr-{version}");
        create_topic(&mut client, &topic, 1).await;
        for _ in 0..4 {
            produce(&mut client, &topic, record_batch(5, 1_000)).await;
        }
        assert_eq!(log_files(dir.path(), &topic), 4);
        // Inside the second segment: the first goes, the start sits mid-segment.
        let result = delete_records(&mut client, version, &topic, 0, 7).await;
        assert_eq!(
            (result.error_code, result.low_watermark),
            (0, 7),
            "v{version}"
        );
        assert_eq!(log_files(dir.path(), &topic), 3);
        assert_eq!(earliest(&mut client, &topic).await, 7);
        let below = fetch(&mut client, &topic, 6).await;
        assert_eq!(below.error_code, ResponseError::OffsetOutOfRange.code());
        assert_eq!(below.log_start_offset, 7);
        let at = fetch(&mut client, &topic, 7).await;
        assert_eq!(at.error_code, 0);
        assert_eq!(at.log_start_offset, 7);
        assert!(!at.records.unwrap().is_empty());
        // Never backwards.
        let result = delete_records(&mut client, version, &topic, 0, 2).await;
        assert_eq!((result.error_code, result.low_watermark), (0, 7));
        // Beyond the high watermark.
        let result = delete_records(&mut client, version, &topic, 0, 21).await;
        assert_eq!(result.error_code, ResponseError::OffsetOutOfRange.code());
        // Unknown partition.
        let result = delete_records(&mut client, version, &topic, 3, 0).await;
        assert_eq!(
            result.error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );
        // -1: up to the high watermark.
        let result = delete_records(&mut client, version, &topic, 0, -1).await;
        assert_eq!((result.error_code, result.low_watermark), (0, 20));
        assert_eq!(earliest(&mut client, &topic).await, 20);
        // Produce v5+ carries the new start.
        let produced = produce(&mut client, &topic, record_batch(1, 1_000)).await;
        assert_eq!((produced.base_offset, produced.log_start_offset), (20, 20));
    }
    let result = delete_records(&mut client, 2, "no-such-topic", 0, 0).await;
    assert_eq!(
        result.error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_task_deletes_expired_segments() {
    let (broker, dir) = start(&[
        ("log.retention.check.interval.ms", "50"),
        ("log.retention.ms", "3600000"),
    ])
    .await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "old", 1).await;
    // Two segments with records from 2001, then one from now (the active one stays).
    produce(&mut client, "old", record_batch(5, 1_000_000_000_000)).await;
    produce(&mut client, "old", record_batch(5, 1_000_000_000_000)).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    produce(&mut client, "old", record_batch(5, now_ms)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while earliest(&mut client, "old").await != 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log_files(dir.path(), "old"), 1);
    assert_eq!(
        fetch(&mut client, "old", 0).await.error_code,
        ResponseError::OffsetOutOfRange.code()
    );
    assert_eq!(fetch(&mut client, "old", 10).await.error_code, 0);
    broker.shutdown().await;
}
