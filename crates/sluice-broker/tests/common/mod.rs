//! What the socket-level tests share: a minimal client that sends one request at an
//! exact version and decodes the response at that version, checking that nothing is left.

#![allow(dead_code)] // each test binary uses a different part

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    create_topics_request, produce_request, produce_response, ApiKey, CreateTopicsRequest,
    CreateTopicsResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, TimestampType};
use sluice_broker::api::SUPPORTED_APIS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            correlation_id: 0,
        }
    }

    pub async fn send_raw(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).await.unwrap();
    }

    pub async fn read_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).await.ok()?;
        let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut frame).await.ok()?;
        Some(Bytes::from(frame))
    }

    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Resp {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("socket-test")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api_key.request_header_version(version))
            .unwrap();
        request.encode(&mut body, version).unwrap();
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.send_raw(&frame).await;
        let mut response = self.read_frame().await.expect("response frame");
        let header =
            ResponseHeader::decode(&mut response, api_key.response_header_version(version))
                .unwrap();
        assert_eq!(header.correlation_id, self.correlation_id);
        let decoded = Resp::decode(&mut response, version)
            .unwrap_or_else(|e| panic!("{api_key:?} v{version} response: {e}"));
        assert!(
            !response.has_remaining(),
            "{api_key:?} v{version}: {} bytes left",
            response.remaining()
        );
        decoded
    }
}

/// The versions of `api_key` the broker advertises.
pub fn versions(api_key: ApiKey) -> std::ops::RangeInclusive<i16> {
    let (_, min, max) = SUPPORTED_APIS
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .unwrap();
    *min..=*max
}

pub fn name(value: &str) -> TopicName {
    TopicName(StrBytes::from_string(value.to_string()))
}

/// Creates a topic with CreateTopics v7 and checks it worked.
pub async fn create_topic(client: &mut Client, topic: &str, partitions: i32) {
    let request = CreateTopicsRequest::default()
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(1)])
        .with_timeout_ms(5000);
    let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 7, &request).await;
    assert_eq!(response.topics[0].error_code, 0);
}

/// Starts a broker on a free port with its data in `dir`, plus `extra` settings.
pub async fn start_broker_in(
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> sluice_broker::RunningBroker {
    let mut pairs = vec![
        ("listeners".to_string(), "127.0.0.1:0".to_string()),
        ("log.dirs".to_string(), dir.display().to_string()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = sluice_broker::BrokerConfig::from_pairs(pairs).unwrap();
    sluice_broker::start(config).await.unwrap()
}

/// Starts a broker over a fresh temporary directory (kept alive by the returned handle).
pub async fn start_broker(
    extra: &[(&str, &str)],
) -> (sluice_broker::RunningBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker_in(dir.path(), extra).await;
    (broker, dir)
}

/// A plain record at offset delta `i` (no producer id).
pub fn record(i: usize, timestamp_ms: i64, key: Option<&str>, value: Bytes) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: i as i64,
        // The encoder starts a new batch where sequences are not consecutive.
        sequence: i as i32,
        timestamp: timestamp_ms,
        key: key.map(|k| Bytes::from(k.to_string())),
        value: Some(value),
        headers: Default::default(),
    }
}

/// Encodes `records` as one RecordBatch v2.
pub fn encode(records: &[Record], compression: Compression) -> Bytes {
    Bytes::from(sluice_log::testing::encode_records(records, compression))
}

/// Produces `records` to partition 0 of `topic` and returns that partition's answer.
pub async fn produce_to(
    client: &mut Client,
    version: i16,
    topic: &str,
    acks: i16,
    records: Bytes,
) -> produce_response::PartitionProduceResponse {
    let request = ProduceRequest::default()
        .with_acks(acks)
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

/// Creates a one-partition topic with topic settings `configs` and checks it worked.
pub async fn create_topic_with(client: &mut Client, topic: &str, configs: &[(&str, &str)]) {
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
