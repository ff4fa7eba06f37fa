//! Test helpers: valid RecordBatch v2 bytes built with kafka-protocol's encoder.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

pub use kafka_protocol::records::Compression as TestCompression;

/// Encodes one batch holding one record per timestamp, each with a value of `value_bytes`
/// bytes (filled with a pattern derived from the record index) and the given compression.
pub fn encode_batch(
    timestamps_ms: &[i64],
    value_bytes: usize,
    compression: Compression,
) -> Vec<u8> {
    let records: Vec<Record> = timestamps_ms
        .iter()
        .enumerate()
        .map(|(i, &timestamp)| record(i, timestamp, value_bytes))
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    if let Err(error) = RecordBatchEncoder::encode(&mut buf, records.iter(), &options) {
        panic!("test batch does not encode: {error}");
    }
    buf.to_vec()
}

/// An uncompressed batch of `records_count` records, all at `timestamp_ms`.
pub fn batch(records_count: usize, value_bytes: usize, timestamp_ms: i64) -> Vec<u8> {
    encode_batch(
        &vec![timestamp_ms; records_count],
        value_bytes,
        Compression::None,
    )
}

fn record(index: usize, timestamp: i64, value_bytes: usize) -> Record {
    let value: Vec<u8> = (0..value_bytes).map(|j| (index * 31 + j) as u8).collect();
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: index as i64,
        // offset - sequence must be constant for the encoder to keep one batch.
        sequence: index as i32 - 1,
        timestamp,
        key: Some(Bytes::from(format!("key-{index}"))),
        value: Some(Bytes::from(value)),
        headers: IndexMap::new(),
    }
}
