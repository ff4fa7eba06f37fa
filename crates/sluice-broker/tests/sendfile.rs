//! Fetch responses sent with `sendfile` (the default) against the `pread` fallback
//! (`socket.sendfile.enable=false`), over a real socket: identical bytes for every Fetch
//! version, a large response read slowly (short sends, EAGAIN), and a fetch racing the
//! deletion of the segment files it is being served from.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::{create_topic, encode, name, record, start_broker, versions, Client};

const TOPIC: &str = "zc";

/// A batch of `count` records of `value_bytes` each, values derived from `seed`.
fn record_batch(seed: usize, count: usize, value_bytes: usize) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| {
            let value: Vec<u8> = (0..value_bytes)
                .map(|j| ((seed * 7 + i * 13 + j) % 251) as u8)
                .collect();
            record(i, 1_000 + seed as i64, Some("k"), Bytes::from(value))
        })
        .collect();
    encode(&records, Compression::None)
}

/// Produces `batches` batches to every partition (acks=1), the same on every broker.
async fn fill(client: &mut Client, partitions: i32, batches: usize, value_bytes: usize) {
    for seed in 0..batches {
        let request = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(name(TOPIC))
                .with_partition_data(
                    (0..partitions)
                        .map(|index| {
                            produce_request::PartitionProduceData::default()
                                .with_index(index)
                                .with_records(Some(record_batch(
                                    seed + index as usize,
                                    4,
                                    value_bytes,
                                )))
                        })
                        .collect(),
                )]);
        let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request).await;
        for partition in &response.responses[0].partition_responses {
            assert_eq!(partition.error_code, 0);
        }
    }
}

fn fetch_request(version: i16, partitions: i32, partition_max_bytes: i32) -> FetchRequest {
    let topic = fetch_request::FetchTopic::default()
        .with_topic(name(TOPIC))
        .with_partitions(
            (0..partitions)
                .map(|index| {
                    fetch_request::FetchPartition::default()
                        .with_partition(index)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(partition_max_bytes)
                })
                .collect(),
        );
    // An unknown topic too: an error partition between file ranges.
    let unknown = fetch_request::FetchTopic::default()
        .with_topic(name("no-such-topic"))
        .with_partitions(vec![fetch_request::FetchPartition::default()
            .with_partition(0)
            .with_partition_max_bytes(1024)]);
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(i32::MAX)
        .with_isolation_level(if version % 2 == 0 { 1 } else { 0 })
        .with_topics(vec![topic, unknown])
}

/// The request as a complete frame (size prefix included).
fn request_frame(version: i16, correlation_id: i32, request: &FetchRequest) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sendfile-test")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, ApiKey::Fetch.request_header_version(version))
        .unwrap();
    request.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    frame.freeze()
}

/// Reads one whole response frame (without its size prefix).
async fn read_response(stream: &mut TcpStream) -> Bytes {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).await.unwrap();
    let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut frame).await.unwrap();
    Bytes::from(frame)
}

/// Decodes a Fetch response frame and checks every batch of every partition (CRC
/// included) and that nothing is left over. Returns the record count per partition.
fn decode_fetch(version: i16, mut frame: Bytes) -> Vec<usize> {
    let header =
        ResponseHeader::decode(&mut frame, ApiKey::Fetch.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 1);
    let response = FetchResponse::decode(&mut frame, version).unwrap();
    assert!(frame.is_empty(), "v{version}: {} bytes left", frame.len());
    assert_eq!(response.responses.len(), 2);
    assert_eq!(
        response.responses[1].partitions[0].error_code,
        kafka_protocol::ResponseError::UnknownTopicOrPartition.code()
    );
    response.responses[0]
        .partitions
        .iter()
        .map(|partition| {
            assert_eq!(partition.error_code, 0);
            let mut records = partition.records.clone().unwrap_or_default();
            let mut count = 0;
            while !records.is_empty() {
                count += RecordBatchDecoder::decode(&mut records)
                    .unwrap_or_else(|e| panic!("v{version}: {e}"))
                    .records
                    .len();
            }
            count
        })
        .collect()
}

async fn start(
    sendfile: &str,
    extra: &[(&str, &str)],
) -> (sluice_broker::RunningBroker, tempfile::TempDir) {
    start_broker(&[&[("socket.sendfile.enable", sendfile)], extra].concat()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_with_sendfile_on_and_off_returns_identical_bytes_for_every_version() {
    const PARTITIONS: i32 = 3;
    let mut frames: Vec<Vec<Bytes>> = Vec::new();
    for sendfile in ["true", "false"] {
        let (broker, _dir) = start(sendfile, &[]).await;
        let mut client = Client::connect(broker.local_addr).await;
        create_topic(&mut client, TOPIC, PARTITIONS).await;
        fill(&mut client, PARTITIONS, 20, 300).await;
        let mut stream = TcpStream::connect(broker.local_addr).await.unwrap();
        let mut per_version = Vec::new();
        for version in versions(ApiKey::Fetch) {
            // Partition budgets that cut the log at different batches.
            let request = fetch_request(version, PARTITIONS, 2_000 + 3_000 * i32::from(version));
            stream
                .write_all(&request_frame(version, 1, &request))
                .await
                .unwrap();
            let frame = read_response(&mut stream).await;
            let counts = decode_fetch(version, frame.clone());
            assert!(counts.iter().all(|&count| count > 0), "{counts:?}");
            per_version.push(frame);
        }
        frames.push(per_version);
        broker.shutdown().await;
    }
    for (index, version) in versions(ApiKey::Fetch).enumerate() {
        assert!(
            frames[0][index] == frames[1][index],
            "v{version}: sendfile and pread responses differ"
        );
    }
}

/// A client whose receive buffer is small, so that a large response fills the broker's
/// socket buffer and `sendfile` returns short counts and EAGAIN.
async fn slow_client(addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fetch_read_slowly_arrives_whole() {
    const PARTITIONS: i32 = 2;
    for sendfile in ["true", "false"] {
        let (broker, _dir) = start(sendfile, &[]).await;
        let mut client = Client::connect(broker.local_addr).await;
        create_topic(&mut client, TOPIC, PARTITIONS).await;
        // 2 partitions x 40 batches x 4 records x 16 KiB: about 5 MiB in one response.
        fill(&mut client, PARTITIONS, 40, 16 * 1024).await;
        let mut stream = slow_client(broker.local_addr).await;
        let request = fetch_request(12, PARTITIONS, 64 << 20);
        stream
            .write_all(&request_frame(12, 1, &request))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let frame = read_response(&mut stream).await;
        assert!(frame.len() > 5_000_000, "{} bytes", frame.len());
        assert_eq!(
            decode_fetch(12, frame),
            vec![160, 160],
            "sendfile={sendfile}"
        );
        broker.shutdown().await;
    }
}

fn segment_files(dir: &std::path::Path, partition: i32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(format!("{TOPIC}-{partition}")))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_racing_segment_deletion_is_served_from_the_unlinked_files() {
    const PARTITIONS: i32 = 4;
    for sendfile in ["true", "false"] {
        // About 1 MiB segments: the first segment of every partition is deleted below.
        let (broker, dir) = start(sendfile, &[("log.segment.bytes", "1048576")]).await;
        let mut client = Client::connect(broker.local_addr).await;
        create_topic(&mut client, TOPIC, PARTITIONS).await;
        fill(&mut client, PARTITIONS, 40, 16 * 1024).await;
        let first_segment = format!("{:020}.log", 0);
        for partition in 0..PARTITIONS {
            let files = segment_files(dir.path(), partition);
            assert!(files.len() >= 2 && files[0] == first_segment, "{files:?}");
        }
        // The same fetch twice: read at once for reference, then read slowly while the
        // segment files it is served from are deleted.
        let request = fetch_request(11, PARTITIONS, 64 << 20);
        let mut reference_stream = TcpStream::connect(broker.local_addr).await.unwrap();
        reference_stream
            .write_all(&request_frame(11, 1, &request))
            .await
            .unwrap();
        let reference = read_response(&mut reference_stream).await;
        let counts = decode_fetch(11, reference.clone());
        assert!(counts.iter().all(|&count| count >= 4), "{counts:?}");

        let mut stream = slow_client(broker.local_addr).await;
        stream
            .write_all(&request_frame(11, 1, &request))
            .await
            .unwrap();
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).await.unwrap();
        // The response is being written: now delete the segments it comes from.
        let high_watermark = {
            let response: ListOffsetsResponse = client
                .call(
                    ApiKey::ListOffsets,
                    7,
                    &ListOffsetsRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                            .with_name(name(TOPIC))
                            .with_partitions(
                                (0..PARTITIONS)
                                    .map(|index| {
                                        list_offsets_request::ListOffsetsPartition::default()
                                            .with_partition_index(index)
                                            .with_timestamp(-1)
                                    })
                                    .collect(),
                            )]),
                )
                .await;
            response.topics[0]
                .partitions
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<i64>>()
        };
        let delete = DeleteRecordsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![delete_records_request::DeleteRecordsTopic::default()
                .with_name(name(TOPIC))
                .with_partitions(
                    (0..PARTITIONS)
                        .map(|index| {
                            delete_records_request::DeleteRecordsPartition::default()
                                .with_partition_index(index)
                                .with_offset(high_watermark[index as usize])
                        })
                        .collect(),
                )]);
        let deleted: DeleteRecordsResponse = client.call(ApiKey::DeleteRecords, 2, &delete).await;
        for partition in &deleted.topics[0].partitions {
            assert_eq!(partition.error_code, 0);
        }
        for partition in 0..PARTITIONS {
            let files = segment_files(dir.path(), partition);
            assert!(!files.contains(&first_segment), "{files:?}");
        }
        let mut rest = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut rest).await.unwrap();
        assert!(
            rest[..] == reference[..],
            "sendfile={sendfile}: the racing fetch differs from the reference"
        );
        broker.shutdown().await;
    }
}
