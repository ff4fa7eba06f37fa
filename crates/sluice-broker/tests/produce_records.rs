//! Produce over a real socket against topics whose settings shape the stored batches:
//! keyless records on a compacted topic (INVALID_RECORD + KIP-467 `record_errors` from v8),
//! LogAppendTime (`log_append_time_ms`), `compression.type` (stored codec).

mod common;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use sluice_broker::BrokerConfig;

use common::{name, versions, Client};

fn batch(keys: &[Option<&str>], compression: Compression) -> Bytes {
    let records: Vec<Record> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: 1_000 + i as i64,
            key: key.map(|k| Bytes::from(k.to_string())),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

async fn start() -> (sluice_broker::RunningBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::from_pairs([
        ("listeners", "127.0.0.1:0".to_string()),
        ("log.dirs", dir.path().display().to_string()),
        ("num.partitions", "1".to_string()),
    ])
    .unwrap();
    let broker = sluice_broker::start(config).await.unwrap();
    (broker, dir)
}

async fn create_topic_with(client: &mut Client, topic: &str, configs: &[(&str, &str)]) {
    let request = CreateTopicsRequest::default()
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        create_topics_request::CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            )])
        .with_timeout_ms(5000);
    let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 7, &request).await;
    assert_eq!(response.topics[0].error_code, 0, "{response:?}");
}

async fn produce(
    client: &mut Client,
    version: i16,
    topic: &str,
    records: Bytes,
) -> produce_response::PartitionProduceResponse {
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records)),
            ])]);
    let mut response: ProduceResponse = client.call(ApiKey::Produce, version, &request).await;
    response.responses.remove(0).partition_responses.remove(0)
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
