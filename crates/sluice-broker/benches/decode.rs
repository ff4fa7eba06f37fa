//! Criterion benches of request decoding with kafka-protocol, as the broker's connection
//! reader does it (header, then body): a Produce request carrying one 16 KiB batch, a Fetch
//! request of 8 partitions and a Metadata request. `cargo bench -p sluice-broker`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, MetadataRequest, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

/// Header and body of `request` at `version`, as they follow the size prefix on the wire.
fn encoded<R: Request>(request: &R, version: i16) -> Bytes {
    let api = ApiKey::try_from(R::KEY).expect("known API");
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("bench")));
    let mut bytes = BytesMut::new();
    header
        .encode(&mut bytes, api.request_header_version(version))
        .expect("header encodes");
    request
        .encode(&mut bytes, version)
        .expect("request encodes");
    bytes.freeze()
}

/// Decodes header and body the way the broker does.
fn decode<R: Request + Decodable>(frame: &Bytes, version: i16) -> R {
    let api = ApiKey::try_from(R::KEY).expect("known API");
    let mut bytes = frame.clone();
    let header = RequestHeader::decode(&mut bytes, api.request_header_version(version))
        .expect("header decodes");
    R::decode(&mut bytes, header.request_api_version).expect("request decodes")
}

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("bench-topic"))
}

fn produce(c: &mut Criterion) {
    // The records are opaque bytes to the decoder (a 16 KiB batch is copied or sliced).
    let records = Bytes::from(vec![0x5au8; 16 * 1024]);
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let version = 9;
    let frame = encoded(&request, version);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("produce_v9_one_16KiB_batch", |b| {
        b.iter(|| decode::<ProduceRequest>(&frame, version))
    });
    group.finish();
}

fn fetch(c: &mut Criterion) {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(52_428_800)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic())
            .with_partitions(
                (0..8)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(1_000_000 + i64::from(p))
                            .with_partition_max_bytes(1_048_576)
                    })
                    .collect(),
            )]);
    let version = 12;
    let frame = encoded(&request, version);
    c.bench_function("decode/fetch_v12_8_partitions", |b| {
        b.iter(|| decode::<FetchRequest>(&frame, version))
    });
}

fn metadata(c: &mut Criterion) {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic()))
        ]))
        .with_allow_auto_topic_creation(false);
    let version = 12;
    let frame = encoded(&request, version);
    c.bench_function("decode/metadata_v12_one_topic", |b| {
        b.iter(|| decode::<MetadataRequest>(&frame, version))
    });
}

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = quick();
    targets = produce, fetch, metadata
}
criterion_main!(benches);
