//! Back-pressure over a real socket: a client that pipelines many requests and reads
//! nothing for a while makes the broker pause reading (`connection.max.inflight.response.bytes`);
//! once it reads, every response arrives, complete and in request order, for sendfile and
//! pread fetches and for responses encoded at once.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use common::{create_topic, encode, name, record, start_broker, Client};

const TOPIC: &str = "bp";

fn frame<R: Encodable>(api_key: ApiKey, version: i16, correlation_id: i32, request: &R) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("limits-test")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, api_key.request_header_version(version))
        .unwrap();
    request.encode(&mut body, version).unwrap();
    let mut out = BytesMut::new();
    out.put_i32(body.len() as i32);
    out.extend_from_slice(&body);
    out.freeze()
}

async fn fill(client: &mut Client, batches: usize, value_bytes: usize) {
    for seed in 0..batches {
        let records: Vec<Record> = (0..4)
            .map(|i| {
                let value = vec![(seed % 251) as u8; value_bytes];
                record(i, 1_000, Some("k"), Bytes::from(value))
            })
            .collect();
        let request = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(name(TOPIC))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(encode(&records, Compression::None))),
                ])]);
        let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request).await;
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
}

fn fetch_request(offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(64 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name(TOPIC))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(256 * 1024)])])
}

/// Records in a Fetch v4 response (after its correlation id).
fn fetched_records(mut body: Bytes) -> usize {
    let response = FetchResponse::decode(&mut body, 4).unwrap();
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    let mut records = partition.records.clone().unwrap_or_default();
    RecordBatchDecoder::decode_all(&mut records)
        .unwrap()
        .iter()
        .map(|set| set.records.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_responses_survive_back_pressure_whole_and_in_order() {
    for sendfile in ["true", "false"] {
        let (broker, _dir) = start_broker(&[
            ("socket.sendfile.enable", sendfile),
            ("connection.max.inflight.response.bytes", "65536"),
            ("queued.max.requests", "8"),
        ])
        .await;
        let mut client = Client::connect(broker.local_addr).await;
        create_topic(&mut client, TOPIC, 1).await;
        // 64 batches of 4 x 4 KiB: fetches of 256 KiB each exceed the in-flight limit.
        fill(&mut client, 64, 4096).await;

        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(8 * 1024).unwrap();
        let stream = socket.connect(broker.local_addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        const REQUESTS: i32 = 120;
        let sender = tokio::spawn(async move {
            for id in 0..REQUESTS {
                let bytes = if id % 3 == 2 {
                    frame(ApiKey::ApiVersions, 0, id, &ApiVersionsRequest::default())
                } else {
                    frame(ApiKey::Fetch, 4, id, &fetch_request(i64::from(id % 40) * 4))
                };
                write.write_all(&bytes).await.unwrap();
            }
            write
        });
        // Read nothing for a while: the broker must stop reading, not buffer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for id in 0..REQUESTS {
            let mut size = [0u8; 4];
            read.read_exact(&mut size).await.unwrap();
            let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
            read.read_exact(&mut body).await.unwrap();
            let mut body = Bytes::from(body);
            let header = ResponseHeader::decode(&mut body, 0).unwrap();
            assert_eq!(header.correlation_id, id, "sendfile={sendfile}");
            if id % 3 == 2 {
                let response = ApiVersionsResponse::decode(&mut body, 0).unwrap();
                assert_eq!(response.error_code, 0);
            } else {
                // Whole batches from the requested offset up to 256 KiB: 15 or 16 of them.
                let records = fetched_records(body);
                assert!(records >= 4 * 15, "id {id}: {records} records");
            }
        }
        let _write = sender.await.unwrap();
        broker.shutdown().await;
    }
}
