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
    encode_records(&records, compression)
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

/// The bytes the log stores for `batch` appended at `base_offset` with `leader_epoch`.
pub fn stamped(batch: &[u8], base_offset: i64, leader_epoch: i32) -> Vec<u8> {
    let mut bytes = batch.to_vec();
    bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
    bytes[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    bytes
}

/// A batch stored in a log by a test: its offsets and the exact bytes on disk.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub bytes: Vec<u8>,
}

/// Appends `batch` (leader epoch 7) and returns what the log should now hold for it.
pub fn append_stored(log: &mut crate::Log, batch: &[u8], now_ms: i64) -> StoredBatch {
    let mut bytes = batch.to_vec();
    let info = match log.append(&mut bytes, 7, now_ms) {
        Ok(info) => info,
        Err(error) => panic!("append failed: {error}"),
    };
    assert_eq!(bytes, stamped(batch, info.base_offset, 7));
    StoredBatch {
        base_offset: info.base_offset,
        last_offset: info.last_offset,
        bytes,
    }
}

/// The first whole batch a fetch at `offset` returns.
pub fn read_first_batch(log: &crate::Log, offset: i64) -> Vec<u8> {
    let slice = match log.read(offset, 0, i64::MAX) {
        Ok(Some(slice)) => slice,
        other => panic!("read at {offset} gave {other:?}"),
    };
    match slice.read_to_vec() {
        Ok(bytes) => bytes,
        Err(error) => panic!("read_to_vec failed: {error}"),
    }
}

/// Checks that every offset of every stored batch reads back exactly that batch.
pub fn assert_every_offset_reads_back(log: &crate::Log, stored: &[StoredBatch]) {
    for batch in stored {
        for offset in batch.base_offset..=batch.last_offset {
            assert_eq!(
                read_first_batch(log, offset),
                batch.bytes,
                "offset {offset}"
            );
        }
    }
    let log_end_offset = stored
        .last()
        .map_or(log.log_start_offset(), |b| b.last_offset + 1);
    assert_eq!(log.log_end_offset(), log_end_offset);
}

/// Encodes one batch of keyed records (`None` key: keyless; `None` value: a tombstone), all
/// at `timestamp_ms`, with `compression`.
pub fn keyed_batch(
    entries: &[(Option<&str>, Option<&str>)],
    timestamp_ms: i64,
    compression: Compression,
) -> Vec<u8> {
    let records: Vec<Record> = entries
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            key: key.map(|key| Bytes::from(key.to_string())),
            value: value.map(|value| Bytes::from(value.to_string())),
            ..record(i, timestamp_ms, 0)
        })
        .collect();
    encode_records(&records, compression)
}

/// A record as read back from a log: offset, key, value (UTF-8, lossy).
pub type ReadRecord = (i64, Option<String>, Option<String>);

/// Reads every record of the log from its start by fetching batch after batch, decoding
/// them with kafka-protocol's decoder (as a client would).
pub fn read_all_records(log: &crate::Log) -> Vec<ReadRecord> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let slice = match log.read(offset, 1 << 20, i64::MAX) {
            Ok(Some(slice)) => slice,
            Ok(None) => break,
            Err(error) => panic!("read at {offset} failed: {error}"),
        };
        let mut bytes = Bytes::from(slice.read_to_vec().unwrap_or_default());
        let record_sets = match kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes)
        {
            Ok(sets) => sets,
            Err(error) => panic!("batches at {offset} do not decode: {error}"),
        };
        for set in record_sets {
            for record in set.records {
                out.push((
                    record.offset,
                    record
                        .key
                        .map(|key| String::from_utf8_lossy(&key).into_owned()),
                    record
                        .value
                        .map(|value| String::from_utf8_lossy(&value).into_owned()),
                ));
            }
        }
        assert!(
            slice.next_offset > offset,
            "read made no progress at {offset}"
        );
        offset = slice.next_offset;
    }
    out
}

/// Encodes `records` (offsets 0..n, one producer) as one batch with `compression`.
pub fn encode_records(records: &[Record], compression: Compression) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    if let Err(error) = RecordBatchEncoder::encode(&mut buf, records.iter(), &options) {
        panic!("test records do not encode: {error}");
    }
    buf.to_vec()
}

/// `template`'s header over a new records section `body`, with codec bits `codec_bits`
/// (0–7, including invalid ones), batchLength and CRC fixed up: for crafting batches whose
/// header is consistent but whose records are not.
pub fn recode_batch(template: &[u8], codec_bits: i16, body: &[u8]) -> Vec<u8> {
    let mut bytes = template[..crate::BATCH_HEADER_BYTES].to_vec();
    bytes.extend_from_slice(body);
    let batch_length = (bytes.len() - 12) as i32;
    bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = (i16::from_be_bytes([bytes[21], bytes[22]]) & !0b111) | codec_bits;
    bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// A real batch of `records` records stamped with producer id, epoch and base sequence.
pub fn idempotent_batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    records: usize,
) -> Vec<u8> {
    let mut bytes = batch(records, 10, 1_000);
    bytes[43..51].copy_from_slice(&producer_id.to_be_bytes());
    bytes[51..53].copy_from_slice(&epoch.to_be_bytes());
    bytes[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// The files of a fuzz corpus or findings directory (not its `.md` notes), sorted, with
/// their bytes; none when the directory does not exist. For the fuzz regression tests.
pub fn fuzz_inputs(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut inputs: Vec<(std::path::PathBuf, Vec<u8>)> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file() && path.extension().is_none_or(|e| e != "md"))
        .filter_map(|path| std::fs::read(&path).ok().map(|bytes| (path, bytes)))
        .collect();
    inputs.sort();
    inputs
}

/// `batch` with lastOffsetDelta set to `last_offset_delta` and the CRC fixed: a batch as
/// compaction leaves it (fewer records than its offset range), e.g. to copy into a
/// follower.
pub fn with_last_offset_delta(batch: &[u8], last_offset_delta: i32) -> Vec<u8> {
    let mut bytes = batch.to_vec();
    bytes[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// Copies everything `leader` has from `follower`'s log end on into `follower`, as a
/// replica fetcher does: reads of at most `max_bytes` (whole batches), each appended with
/// `append_as_follower`. Returns the number of fetches.
pub fn replicate(leader: &crate::Log, follower: &mut crate::Log, max_bytes: usize) -> usize {
    let mut fetches = 0;
    while follower.log_end_offset() < leader.log_end_offset() {
        let offset = follower.log_end_offset();
        let slice = match leader.read(offset, max_bytes, i64::MAX) {
            Ok(Some(slice)) => slice,
            other => panic!("leader read at {offset} gave {other:?}"),
        };
        let bytes = match slice.read_to_vec() {
            Ok(bytes) => bytes,
            Err(error) => panic!("read_to_vec failed: {error}"),
        };
        if let Err(error) = follower.append_as_follower(&bytes, 0) {
            panic!("follower append at {offset} failed: {error}");
        }
        fetches += 1;
    }
    fetches
}
