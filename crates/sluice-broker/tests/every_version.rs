//! Every API version the broker advertises, exercised over a real socket: the request is
//! encoded at that version, the response decoded at that version and checked.
//!
//! This is what makes the ApiVersions answer honest: a version listed in
//! `SUPPORTED_APIS` without a passing case here is a bug.

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};
use sluice_broker::api::SUPPORTED_APIS;

use common::{create_topic, encode, name, produce_to, record, start_broker, versions, Client};

fn record_batch(values: &[&str], timestamp_ms: i64) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let key = format!("key-{i}");
            record(
                i,
                timestamp_ms + i as i64,
                Some(&key),
                Bytes::from(value.to_string()),
            )
        })
        .collect();
    encode(&records, Compression::None)
}

async fn start() -> (sluice_broker::RunningBroker, tempfile::TempDir) {
    start_broker(&[("num.partitions", "2")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_every_version_and_unknown_version() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    for version in versions(ApiKey::ApiVersions) {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("test"))
            .with_client_software_version(StrBytes::from_static_str("1"));
        let response: ApiVersionsResponse =
            client.call(ApiKey::ApiVersions, version, &request).await;
        assert_eq!(response.error_code, 0, "v{version}");
        assert_eq!(response.api_keys.len(), SUPPORTED_APIS.len());
    }
    // An ApiVersions version from the future: a v0 answer with UNSUPPORTED_VERSION.
    let mut frame = BytesMut::new();
    frame.put_i32(8);
    frame.put_i16(ApiKey::ApiVersions as i16);
    frame.put_i16(99);
    frame.put_i32(777);
    client.send_raw(&frame).await;
    let mut response = client.read_frame().await.unwrap();
    assert_eq!(response.get_i32(), 777);
    let decoded = ApiVersionsResponse::decode(&mut response, 0).unwrap();
    assert_eq!(decoded.error_code, 35);
    assert!(decoded
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_every_version_with_auto_creation() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    for version in versions(ApiKey::Metadata) {
        let topic = format!("auto-{version}");
        let mut request = MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(name(&topic))),
        ]));
        if version >= 4 {
            request = request.with_allow_auto_topic_creation(true);
        }
        let response: MetadataResponse = client.call(ApiKey::Metadata, version, &request).await;
        assert_eq!(response.brokers.len(), 1, "v{version}");
        assert_eq!(response.brokers[0].host.as_str(), "127.0.0.1");
        // Bound to port 0: clients are told the port the OS chose.
        assert_eq!(
            response.brokers[0].port,
            i32::from(broker.local_addr.port())
        );
        let t = &response.topics[0];
        assert_eq!(t.error_code, 0, "v{version}");
        assert_eq!(t.partitions.len(), 2, "v{version}: num.partitions default");
        assert_eq!(t.partitions[0].leader_id.0, 1);
        if version >= 10 {
            assert!(!t.topic_id.is_nil());
        }
        // Without permission to create, an unknown topic is UNKNOWN_TOPIC_OR_PARTITION.
        if version >= 4 {
            let request = MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(name("never-created")))]))
                .with_allow_auto_topic_creation(false);
            let response: MetadataResponse = client.call(ApiKey::Metadata, version, &request).await;
            assert_eq!(response.topics[0].error_code, 3, "v{version}");
        }
    }
    // All topics: null list (v1+), empty list in v0.
    let all: MetadataResponse = client
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        )
        .await;
    // Every topic: the auto-created ones and the internal __consumer_offsets.
    assert_eq!(all.topics.len(), versions(ApiKey::Metadata).count() + 1);
    assert!(all
        .topics
        .iter()
        .any(|t| t.is_internal
            && t.name.as_deref().map(|n| n.as_str()) == Some("__consumer_offsets")));
    let all_v0: MetadataResponse = client
        .call(
            ApiKey::Metadata,
            0,
            &MetadataRequest::default().with_topics(Some(vec![])),
        )
        .await;
    assert_eq!(all_v0.topics.len(), all.topics.len());
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_admin_every_version() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    for version in versions(ApiKey::CreateTopics) {
        let topic = format!("created-{version}");
        let request = CreateTopicsRequest::default()
            .with_topics(vec![create_topics_request::CreatableTopic::default()
                .with_name(name(&topic))
                .with_num_partitions(3)
                .with_replication_factor(1)
                .with_configs(vec![
                    create_topics_request::CreatableTopicConfig::default()
                        .with_name(StrBytes::from_static_str("segment.bytes"))
                        .with_value(Some(StrBytes::from_static_str("1048576"))),
                ])])
            .with_timeout_ms(5000);
        let response: CreateTopicsResponse =
            client.call(ApiKey::CreateTopics, version, &request).await;
        assert_eq!(response.topics[0].error_code, 0, "v{version}");
        if version >= 5 {
            assert_eq!(response.topics[0].num_partitions, 3);
        }
        // Again: TOPIC_ALREADY_EXISTS.
        let again: CreateTopicsResponse =
            client.call(ApiKey::CreateTopics, version, &request).await;
        assert_eq!(again.topics[0].error_code, 36, "v{version}");
    }
    // Bad requests get their Kafka error codes.
    let bad =
        |topic: &str, partitions: i32, rf: i16, config: Option<(&'static str, &'static str)>| {
            let mut t = create_topics_request::CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(rf);
            if let Some((k, v)) = config {
                t = t.with_configs(vec![create_topics_request::CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str(k))
                    .with_value(Some(StrBytes::from_static_str(v)))]);
            }
            CreateTopicsRequest::default().with_topics(vec![t])
        };
    for (request, code) in [
        (bad("bad name", 1, 1, None), 17),
        (bad("zero-partitions", 0, 1, None), 37),
        (bad("three-replicas", 1, 3, None), 38),
        (bad("bad-config", 1, 1, Some(("segment.bytes", "-1"))), 40),
        (
            bad("unknown-config", 1, 1, Some(("no.such.config", "1"))),
            40,
        ),
    ] {
        let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 7, &request).await;
        assert_eq!(response.topics[0].error_code, code);
        assert!(response.topics[0].error_message.is_some());
    }
    for version in versions(ApiKey::CreatePartitions) {
        let topic = format!("created-{}", 2 + version);
        let request = CreatePartitionsRequest::default()
            .with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(name(&topic))
                    .with_count(5),
            ])
            .with_timeout_ms(5000);
        let response: CreatePartitionsResponse = client
            .call(ApiKey::CreatePartitions, version, &request)
            .await;
        assert_eq!(response.results[0].error_code, 0, "v{version}");
        // Shrinking is refused.
        let request = CreatePartitionsRequest::default().with_topics(vec![
            create_partitions_request::CreatePartitionsTopic::default()
                .with_name(name(&topic))
                .with_count(2),
        ]);
        let response: CreatePartitionsResponse = client
            .call(ApiKey::CreatePartitions, version, &request)
            .await;
        assert_eq!(response.results[0].error_code, 37, "v{version}");
    }
    let metadata: MetadataResponse = client
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(name("created-2")))])),
        )
        .await;
    assert_eq!(metadata.topics[0].partitions.len(), 5);
    for version in versions(ApiKey::DescribeConfigs) {
        let request = DescribeConfigsRequest::default()
            .with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("created-2"))
                    .with_configuration_keys(None),
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(StrBytes::from_static_str("1"))
                    .with_configuration_keys(None),
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("missing")),
            ])
            .with_include_synonyms(true)
            .with_include_documentation(version >= 3);
        let response: DescribeConfigsResponse = client
            .call(ApiKey::DescribeConfigs, version, &request)
            .await;
        let topic = &response.results[0];
        assert_eq!(topic.error_code, 0);
        let segment = topic
            .configs
            .iter()
            .find(|c| c.name.as_str() == "segment.bytes")
            .unwrap();
        assert_eq!(
            segment.value.as_deref().map(|v| v.to_string()),
            Some("1048576".into())
        );
        assert_eq!(segment.config_source, 1, "topic override");
        let brokers = &response.results[1];
        assert_eq!(brokers.error_code, 0);
        let partitions = brokers
            .configs
            .iter()
            .find(|c| c.name.as_str() == "num.partitions")
            .unwrap();
        assert_eq!(
            partitions.value.as_deref().map(|v| v.to_string()),
            Some("2".into())
        );
        assert_eq!(response.results[2].error_code, 3);
    }
    for version in versions(ApiKey::DescribeCluster) {
        let request = DescribeClusterRequest::default().with_endpoint_type(1);
        let response: DescribeClusterResponse = client
            .call(ApiKey::DescribeCluster, version, &request)
            .await;
        assert_eq!(response.error_code, 0);
        assert_eq!(response.brokers.len(), 1);
        assert_eq!(response.controller_id.0, 1);
        assert!(!response.cluster_id.is_empty());
    }
    // The internal offsets topic can be neither deleted nor grown.
    let internal: DeleteTopicsResponse = client
        .call(
            ApiKey::DeleteTopics,
            6,
            &DeleteTopicsRequest::default()
                .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(name("__consumer_offsets")))]),
        )
        .await;
    assert_eq!(internal.responses[0].error_code, 17);
    let grow: CreatePartitionsResponse = client
        .call(
            ApiKey::CreatePartitions,
            3,
            &CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(name("__consumer_offsets"))
                    .with_count(60),
            ]),
        )
        .await;
    assert_eq!(grow.results[0].error_code, 17);
    for version in versions(ApiKey::DeleteTopics) {
        let topic = format!("created-{}", version + 1);
        let request = if version >= 6 {
            DeleteTopicsRequest::default()
                .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(name(&topic)))])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![name(&topic)])
        };
        let response: DeleteTopicsResponse =
            client.call(ApiKey::DeleteTopics, version, &request).await;
        assert_eq!(response.responses[0].error_code, 0, "v{version}");
        let again: DeleteTopicsResponse =
            client.call(ApiKey::DeleteTopics, version, &request).await;
        assert_eq!(again.responses[0].error_code, 3, "v{version}");
    }
    broker.shutdown().await;
}

async fn produce(client: &mut Client, version: i16, topic: &str, acks: i16, batch: Bytes) -> i64 {
    let partition = produce_to(client, version, topic, acks, batch).await;
    assert_eq!(
        partition.error_code, 0,
        "produce v{version}: {:?}",
        partition.error_message
    );
    partition.base_offset
}

async fn fetch(
    client: &mut Client,
    version: i16,
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
) -> fetch_response::PartitionData {
    fetch_in_epoch(client, version, topic, offset, max_wait_ms, -1).await
}

/// A fetch naming the leader epoch the client believes current (v9+; -1: unchecked).
async fn fetch_in_epoch(
    client: &mut Client,
    version: i16,
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
    current_leader_epoch: i32,
) -> fetch_response::PartitionData {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_current_leader_epoch(current_leader_epoch)
                .with_partition_max_bytes(1 << 20)])]);
    let response: FetchResponse = client.call(ApiKey::Fetch, version, &request).await;
    assert_eq!(response.error_code, 0);
    response.responses[0].partitions[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_fetch_list_offsets_every_version() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "data", 1).await;
    let mut expected_offset = 0;
    for version in versions(ApiKey::Produce) {
        for acks in [1, -1] {
            let base = produce(
                &mut client,
                version,
                "data",
                acks,
                record_batch(&["a", "b", "c"], 1_000 * (expected_offset + 1)),
            )
            .await;
            assert_eq!(base, expected_offset, "produce v{version} acks={acks}");
            expected_offset += 3;
        }
    }
    for version in versions(ApiKey::Fetch) {
        // Offset 1 is in the middle of the first batch: the whole batch comes back.
        let data = fetch(&mut client, version, "data", 1, 0).await;
        assert_eq!(data.error_code, 0, "fetch v{version}");
        assert_eq!(data.high_watermark, expected_offset);
        let mut records = data.records.clone().unwrap();
        let sets = RecordBatchDecoder::decode_all(&mut records).unwrap();
        let offsets: Vec<i64> = sets
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.offset))
            .collect();
        assert_eq!(
            offsets,
            (0..expected_offset).collect::<Vec<_>>(),
            "v{version}"
        );
        assert_eq!(
            sets[0].records[1].value.as_deref(),
            Some(&b"b"[..]),
            "v{version}"
        );
        // Beyond the end: OFFSET_OUT_OF_RANGE.
        let data = fetch(&mut client, version, "data", expected_offset + 10, 0).await;
        assert_eq!(data.error_code, 1, "fetch v{version}");
        if version >= 9 {
            // KIP-320: the client's leader epoch must be the partition's (0 on one node).
            let data = fetch_in_epoch(&mut client, version, "data", 0, 0, 0).await;
            assert_eq!(data.error_code, 0, "fetch v{version}");
            let data = fetch_in_epoch(&mut client, version, "data", 0, 0, 2).await;
            assert_eq!(
                data.error_code, 75,
                "UNKNOWN_LEADER_EPOCH, fetch v{version}"
            );
        }
    }
    for version in versions(ApiKey::ListOffsets) {
        let query = |timestamp: i64| {
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(name("data"))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(timestamp),
                    ])])
        };
        let mut answers = Vec::new();
        let mut timestamps = vec![-2, -1, 4_001, 1_000_000];
        if version >= 7 {
            timestamps.push(-3);
        }
        for timestamp in timestamps {
            let response: ListOffsetsResponse = client
                .call(ApiKey::ListOffsets, version, &query(timestamp))
                .await;
            let p = &response.topics[0].partitions[0];
            assert_eq!(p.error_code, 0, "v{version} ts {timestamp}");
            answers.push((p.offset, p.timestamp));
        }
        if version >= 4 {
            let mut request = query(-1);
            request.topics[0].partitions[0].current_leader_epoch = 4;
            let response: ListOffsetsResponse =
                client.call(ApiKey::ListOffsets, version, &request).await;
            let p = &response.topics[0].partitions[0];
            assert_eq!(
                p.error_code, 75,
                "UNKNOWN_LEADER_EPOCH, list offsets v{version}"
            );
        }
        assert_eq!(answers[0].0, 0, "earliest v{version}");
        assert_eq!(answers[1].0, expected_offset, "latest v{version}");
        // The batch at base offset b is stamped 1000(b+1), +1, +2: 4001 is offset 4.
        assert_eq!(answers[2], (4, 4_001), "by timestamp v{version}");
        assert_eq!(answers[3].0, -1, "after every record v{version}");
        if version >= 7 {
            let last_batch_base = expected_offset - 3;
            assert_eq!(
                answers[4].0,
                expected_offset - 1,
                "max timestamp v{version}"
            );
            assert_eq!(answers[4].1, 1_000 * (last_batch_base + 1) + 2);
        }
    }
    for version in versions(ApiKey::OffsetForLeaderEpoch) {
        let query = |topic: &str, current_leader_epoch: i32, leader_epoch: i32| {
            OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                        .with_topic(name(topic))
                        .with_partitions(vec![
                            offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                                .with_partition(0)
                                .with_current_leader_epoch(current_leader_epoch)
                                .with_leader_epoch(leader_epoch),
                        ]),
                ])
        };
        let mut ask = async |topic: &str, current: i32, epoch: i32| {
            let response: OffsetForLeaderEpochResponse = client
                .call(
                    ApiKey::OffsetForLeaderEpoch,
                    version,
                    &query(topic, current, epoch),
                )
                .await;
            let p = &response.topics[0].partitions[0];
            (p.error_code, p.leader_epoch, p.end_offset)
        };
        // Every batch of a single node is written in epoch 0: it ends at the log end.
        assert_eq!(
            ask("data", 0, 0).await,
            (0, 0, expected_offset),
            "v{version}"
        );
        assert_eq!(
            ask("data", -1, 0).await,
            (0, 0, expected_offset),
            "v{version}"
        );
        // A newer epoch than the log has is unknown.
        assert_eq!(ask("data", 0, 3).await, (0, -1, -1), "v{version}");
        // The requester's current epoch is checked (KIP-320): newer is UNKNOWN_LEADER_EPOCH.
        assert_eq!(ask("data", 5, 0).await, (75, -1, -1), "v{version}");
        assert_eq!(ask("no-such-topic", 0, 0).await, (3, -1, -1), "v{version}");
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetch_wakes_on_append_and_times_out_when_idle() {
    let (broker, _dir) = start().await;
    let addr = broker.local_addr;
    let mut client = Client::connect(addr).await;
    create_topic(&mut client, "poll", 1).await;
    // Nothing arrives: the fetch waits about max_wait_ms, then answers empty.
    let started = std::time::Instant::now();
    let data = fetch(&mut client, 12, "poll", 0, 500).await;
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(data.records.as_ref().map(|r| r.len()), Some(0));
    // A record produced while the fetch waits wakes it well before max_wait_ms.
    let waiter = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        let started = std::time::Instant::now();
        let data = fetch(&mut client, 12, "poll", 0, 20_000).await;
        (started.elapsed(), data)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(&mut client, 9, "poll", 1, record_batch(&["wake"], 1)).await;
    let (elapsed, data) = waiter.await.unwrap();
    assert!(
        elapsed < Duration::from_secs(10),
        "woken by the append, not the timeout"
    );
    assert!(!data.records.unwrap().is_empty());
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_get_kafka_error_codes() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "strict", 1).await;
    let good = record_batch(&["x"], 1);
    let produce_code = |records: Bytes| {
        ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(name("strict"))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ])])
    };
    let mut bad_crc = good.to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    let mut bad_magic = good.to_vec();
    bad_magic[16] = 1;
    let mut too_long = good.to_vec();
    too_long[8..12].copy_from_slice(&10_000i32.to_be_bytes());
    for (bytes, codes) in [
        (bad_crc, &[2][..]),
        (bad_magic, &[2, 87][..]),
        (too_long, &[2, 87][..]),
        (vec![1, 2, 3], &[2, 87][..]),
    ] {
        let response: ProduceResponse = client
            .call(ApiKey::Produce, 9, &produce_code(Bytes::from(bytes)))
            .await;
        let code = response.responses[0].partition_responses[0].error_code;
        assert!(codes.contains(&code), "got {code}, wanted one of {codes:?}");
    }
    // Unknown partition, unknown topic.
    let mut unknown = produce_code(good.clone());
    unknown.topic_data[0].partition_data[0].index = 7;
    let response: ProduceResponse = client.call(ApiKey::Produce, 9, &unknown).await;
    assert_eq!(response.responses[0].partition_responses[0].error_code, 3);
    // Nothing bad reached the log: the good batch lands at offset 0.
    assert_eq!(produce(&mut client, 9, "strict", 1, good).await, 0);
    broker.shutdown().await;
}

fn idempotent_batch(values: &[&str], producer_id: i64, epoch: i16, base_sequence: i32) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            producer_id,
            producer_epoch: epoch,
            sequence: base_sequence + i as i32,
            ..record(i, 1_000, None, Bytes::from(value.to_string()))
        })
        .collect();
    encode(&records, Compression::None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_producer_id_every_version_and_idempotent_produce() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    let mut last_producer_id = -1;
    for version in versions(ApiKey::InitProducerId) {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response: InitProducerIdResponse =
            client.call(ApiKey::InitProducerId, version, &request).await;
        assert_eq!(response.error_code, 0, "v{version}");
        assert_eq!(response.producer_epoch, 0, "v{version}");
        assert!(response.producer_id.0 > last_producer_id, "v{version}");
        last_producer_id = response.producer_id.0;
        let transactional =
            request.with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("txn"))));
        let refused: InitProducerIdResponse = client
            .call(ApiKey::InitProducerId, version, &transactional)
            .await;
        assert_eq!(refused.error_code, 53, "v{version}");
    }
    let topic = "idempotent";
    create_topic(&mut client, topic, 1).await;
    let pid = last_producer_id;
    let first = produce(
        &mut client,
        9,
        topic,
        -1,
        idempotent_batch(&["a", "b"], pid, 0, 0),
    )
    .await;
    let second = produce(
        &mut client,
        9,
        topic,
        -1,
        idempotent_batch(&["c"], pid, 0, 2),
    )
    .await;
    let retry = produce(
        &mut client,
        9,
        topic,
        -1,
        idempotent_batch(&["a", "b"], pid, 0, 0),
    )
    .await;
    assert_eq!((first, second, retry), (0, 2, 0));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_leaders_every_version() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "elect", 2).await;
    for version in versions(ApiKey::ElectLeaders) {
        let partitions = |topic: &str| {
            elect_leaders_request::TopicPartitions::default()
                .with_topic(name(topic))
                .with_partitions(vec![0, 1])
        };
        let request = ElectLeadersRequest::default()
            .with_topic_partitions(Some(vec![partitions("elect"), partitions("missing")]))
            .with_timeout_ms(10_000);
        let response: ElectLeadersResponse =
            client.call(ApiKey::ElectLeaders, version, &request).await;
        let codes: Vec<(String, i32, i16)> = response
            .replica_election_results
            .iter()
            .flat_map(|t| {
                t.partition_result
                    .iter()
                    .map(|p| (t.topic.to_string(), p.partition_id, p.error_code))
            })
            .collect();
        // A single node already leads everything (ELECTION_NOT_NEEDED = 84).
        assert_eq!(
            codes,
            vec![
                ("elect".to_string(), 0, 84),
                ("elect".to_string(), 1, 84),
                ("missing".to_string(), 0, 3),
                ("missing".to_string(), 1, 3),
            ],
            "v{version}"
        );
        if version >= 1 {
            let unclean = request.clone().with_election_type(1);
            let response: ElectLeadersResponse =
                client.call(ApiKey::ElectLeaders, version, &unclean).await;
            assert!(response
                .replica_election_results
                .iter()
                .flat_map(|t| &t.partition_result)
                .all(|p| p.error_code == 42));
        }
    }
}
