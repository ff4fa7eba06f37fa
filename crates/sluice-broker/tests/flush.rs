//! Group commit over a real socket with each `log.flush.method`: one acks=all Produce
//! request carrying a batch for every partition is answered only once all of them are on
//! disk (a partition whose fsync did not finish would answer REQUEST_TIMED_OUT), the records
//! survive a restart, and the method can change at run time.

mod common;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use common::{create_topic, name, start_broker_in, Client};

const PARTITIONS: i32 = 4;
const RECORDS: usize = 10;

/// One acks=all request with a 10-record batch for each partition; returns per partition
/// (error code, base offset).
async fn produce_everywhere(client: &mut Client, topic: &str) -> Vec<(i32, i16, i64)> {
    let batch = Bytes::from(sluice_log::testing::batch(RECORDS, 100, 1_000));
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(
                (0..PARTITIONS)
                    .map(|index| {
                        produce_request::PartitionProduceData::default()
                            .with_index(index)
                            .with_records(Some(batch.clone()))
                    })
                    .collect(),
            )]);
    let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request).await;
    let mut answers: Vec<(i32, i16, i64)> = response.responses[0]
        .partition_responses
        .iter()
        .map(|p| (p.index, p.error_code, p.base_offset))
        .collect();
    answers.sort();
    answers
}

fn expected(base_offset: i64) -> Vec<(i32, i16, i64)> {
    (0..PARTITIONS).map(|p| (p, 0, base_offset)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_covers_every_partition_of_a_request_with_each_flush_method() {
    for method in ["fdatasync", "syncfs"] {
        let dir = tempfile::tempdir().unwrap();
        let settings = [("log.flush.method", method)];
        let broker = start_broker_in(dir.path(), &settings).await;
        let mut client = Client::connect(broker.local_addr).await;
        create_topic(&mut client, "commits", PARTITIONS).await;
        assert_eq!(
            produce_everywhere(&mut client, "commits").await,
            expected(0),
            "{method}"
        );
        assert_eq!(
            produce_everywhere(&mut client, "commits").await,
            expected(RECORDS as i64),
            "{method}"
        );
        broker.shutdown().await;

        let broker = start_broker_in(dir.path(), &settings).await;
        let mut client = Client::connect(broker.local_addr).await;
        assert_eq!(
            produce_everywhere(&mut client, "commits").await,
            expected(2 * RECORDS as i64),
            "{method}: the acknowledged records are still there after a restart"
        );
        broker.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_method_is_a_dynamic_broker_setting() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker_in(dir.path(), &[]).await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "switching", PARTITIONS).await;
    let set = |value: &str| {
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(StrBytes::from_static_str("1"))
                .with_configs(vec![
                    incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("log.flush.method"))
                        .with_config_operation(0)
                        .with_value(Some(StrBytes::from_string(value.to_string()))),
                ]),
        ])
    };
    let refused: IncrementalAlterConfigsResponse = client
        .call(ApiKey::IncrementalAlterConfigs, 1, &set("fsync"))
        .await;
    assert_eq!(refused.responses[0].error_code, 40, "INVALID_CONFIG");
    let mut base = 0;
    for method in ["syncfs", "fdatasync", "syncfs"] {
        let changed: IncrementalAlterConfigsResponse = client
            .call(ApiKey::IncrementalAlterConfigs, 1, &set(method))
            .await;
        assert_eq!(changed.responses[0].error_code, 0, "{method}");
        assert_eq!(
            produce_everywhere(&mut client, "switching").await,
            expected(base),
            "{method}"
        );
        base += RECORDS as i64;
    }
    broker.shutdown().await;
}
