//! Produce over a real socket against topics whose settings shape the stored batches:
//! keyless records on a compacted topic (INVALID_RECORD + KIP-467 `record_errors` from v8),
//! LogAppendTime (`log_append_time_ms`), `compression.type` (stored codec).

mod common;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};
use kafka_protocol::ResponseError;

use common::{create_topic_with, encode, name, produce_to, record, start_broker, versions, Client};

fn batch(keys: &[Option<&str>], compression: Compression) -> Bytes {
    let records: Vec<Record> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| record(i, 1_000 + i as i64, *key, Bytes::from(format!("value-{i}"))))
        .collect();
    encode(&records, compression)
}

async fn start() -> (sluice_broker::RunningBroker, tempfile::TempDir) {
    start_broker(&[("num.partitions", "1")]).await
}

async fn produce(
    client: &mut Client,
    version: i16,
    topic: &str,
    records: Bytes,
) -> produce_response::PartitionProduceResponse {
    produce_to(client, version, topic, 1, records).await
}

async fn fetch_first_batch(client: &mut Client, topic: &str) -> Bytes {
    let request = FetchRequest::default()
        .with_max_wait_ms(10)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let response: FetchResponse = client.call(ApiKey::Fetch, 4, &request).await;
    response.responses[0].partitions[0].records.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_on_a_compacted_topic_get_record_errors_from_v8() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic_with(&mut client, "compacted", &[("cleanup.policy", "compact")]).await;
    for version in versions(ApiKey::Produce) {
        let keys = [Some("a"), None, Some("b"), None];
        let response = produce(
            &mut client,
            version,
            "compacted",
            batch(&keys, Compression::Lz4),
        )
        .await;
        assert_eq!(
            response.error_code,
            ResponseError::InvalidRecord.code(),
            "v{version}"
        );
        if version >= 8 {
            assert_eq!(
                response.error_message.as_deref(),
                Some("Compacted topic cannot accept message without key")
            );
            let indexes: Vec<i32> = response
                .record_errors
                .iter()
                .map(|e| e.batch_index)
                .collect();
            assert_eq!(indexes, vec![1, 3], "v{version}");
            assert!(response.record_errors[0]
                .batch_index_error_message
                .as_deref()
                .unwrap()
                .starts_with("Compacted topic cannot accept message without key"));
        }
        let keyed = produce(
            &mut client,
            version,
            "compacted",
            batch(&[Some("k")], Compression::None),
        )
        .await;
        assert_eq!(keyed.error_code, 0, "v{version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_append_time_is_reported_and_stored() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic_with(
        &mut client,
        "lat",
        &[
            ("message.timestamp.type", "LogAppendTime"),
            ("compression.type", "zstd"),
        ],
    )
    .await;
    create_topic_with(&mut client, "ct", &[]).await;
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for version in versions(ApiKey::Produce) {
        let response = produce(
            &mut client,
            version,
            "lat",
            batch(&[Some("k"), None], Compression::Gzip),
        )
        .await;
        assert_eq!(response.error_code, 0, "v{version}");
        if version >= 2 {
            assert!(
                response.log_append_time_ms >= before_ms,
                "v{version}: {response:?}"
            );
        }
        let response = produce(
            &mut client,
            version,
            "ct",
            batch(&[Some("k")], Compression::Snappy),
        )
        .await;
        assert_eq!(response.error_code, 0, "v{version}");
        assert_eq!(response.log_append_time_ms, -1, "v{version}");
    }
    let mut stored = fetch_first_batch(&mut client, "lat").await;
    let attributes = i16::from_be_bytes([stored[21], stored[22]]);
    assert_eq!(attributes & 0b111, 4, "stored as zstd");
    assert_ne!(attributes & 0b1000, 0, "LogAppendTime bit");
    let decoded = RecordBatchDecoder::decode(&mut stored).unwrap();
    assert_eq!(decoded.records.len(), 2);
    assert_eq!(decoded.records[1].key, None);
    assert_eq!(decoded.records[0].value.as_deref(), Some(&b"value-0"[..]));
    let mut plain = fetch_first_batch(&mut client, "ct").await;
    assert_eq!(
        i16::from_be_bytes([plain[21], plain[22]]) & 0b1111,
        2,
        "snappy, CreateTime"
    );
    assert_eq!(
        RecordBatchDecoder::decode(&mut plain).unwrap().records[0].timestamp,
        1_000
    );
}
