//! Validation and transformation of a produced RecordBatch before it enters the log, Kafka
//! `LogValidator`-style: pure functions over bytes, run by the broker before it takes the
//! partition's log lock so a slow decompression never blocks other appends.
//!
//! The common path (the producer's codec is kept, CreateTime, not compacted) validates in
//! place and never copies or re-encodes: uncompressed records are walked where they lie and
//! compressed ones are decompressed once into a scratch buffer that is walked and dropped.
//! Only a topic setting (`compression.type`, `message.timestamp.type`) changes the stored
//! bytes; a batch whose `maxTimestamp` disagrees with its records is corrected, as Kafka does.

use std::io::{Read, Write};

use crate::batch::{
    validate_for_append, BatchHeader, ATTRIBUTE_LOG_APPEND_TIME, BATCH_HEADER_BYTES,
    BATCH_LENGTH_PREFIX_BYTES, CRC_START,
};
use crate::compression::{CompressionType, TimestampType, ATTRIBUTE_COMPRESSION_MASK};
use crate::LogError;

/// How many times larger than `max.message.bytes` a batch's records may be once decompressed.
/// Kafka bounds only the compressed size; a broker that inflates records to validate them
/// must also bound what it inflates, or a few kilobytes of zeros ("compression bomb") cost
/// gigabytes. Real producers reach ratios of 5–20 on text; 64 leaves room for very
/// repetitive payloads.
pub const DECOMPRESSION_RATIO_LIMIT: usize = 64;
/// Decompressed records are always allowed at least this much, so a topic with a small
/// `max.message.bytes` can still take well-compressed batches.
pub const DECOMPRESSED_BYTES_FLOOR: usize = 1 << 20;
/// And never more than this, whatever `max.message.bytes` says: one produce request may
/// hold many batches and several requests run at once.
pub const DECOMPRESSED_BYTES_CAP: usize = 256 << 20;

/// Message of the per-record error for a keyless record on a compacted topic (Kafka's).
pub const KEYLESS_ON_COMPACTED_MESSAGE: &str = "Compacted topic cannot accept message without key";

const ATTRIBUTES_START: usize = 21;
const MAX_TIMESTAMP_START: usize = 35;
/// Block size of xerial-framed snappy, as snappy-java (and so Kafka) writes it.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;
/// xerial framing: 8 magic bytes, then version 1 and minimum compatible version 1 (i32 each).
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
const XERIAL_MAGIC_BYTES: usize = 8;
/// zstd level Kafka and librdkafka use by default.
const ZSTD_LEVEL: i32 = 3;
/// Largest zstd window a batch may ask for (2^27, zstd's own default limit).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Smallest window limit: streaming encoders pick the window from the level, not the data
/// (level 3 uses 2^21, level 19 2^23), so even tiny frames may declare 2^23.
const ZSTD_WINDOW_LOG_MIN: u32 = 23;

/// What the topic asks of every batch appended to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Largest batch accepted and stored (`max.message.bytes`).
    pub max_batch_bytes: usize,
    /// `compression.type`: `None` keeps the producer's codec; otherwise store with this one.
    pub compression: Option<CompressionType>,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `cleanup.policy` contains `compact`: every record needs a key.
    pub require_keys: bool,
}

impl BatchPolicy {
    /// The policy of a plain topic: producer codec, CreateTime, keys optional.
    pub fn new(max_batch_bytes: usize) -> BatchPolicy {
        BatchPolicy {
            max_batch_bytes,
            compression: None,
            timestamp_type: TimestampType::CreateTime,
            require_keys: false,
        }
    }
}

/// The outcome of [`prepare_batch`]: the header of the bytes now in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub header: BatchHeader,
    /// The records were re-encoded with another codec (`compression.type`).
    pub recompressed: bool,
    /// The header was rewritten (timestamp type, maxTimestamp, or re-encoding).
    pub rewritten: bool,
    /// The append time stamped into a LogAppendTime batch; the Produce response carries it.
    pub log_append_time_ms: Option<i64>,
}

/// How many decompressed bytes a batch's records may occupy under `max_batch_bytes`.
pub fn decompressed_limit_bytes(max_batch_bytes: usize) -> usize {
    max_batch_bytes
        .saturating_mul(DECOMPRESSION_RATIO_LIMIT)
        .clamp(DECOMPRESSED_BYTES_FLOOR, DECOMPRESSED_BYTES_CAP)
}

/// Validates `batch` (exactly one RecordBatch v2 as a client sent it) and applies the topic's
/// policy in place: re-encodes the records when `compression.type` names another codec,
/// stamps LogAppendTime, corrects a wrong CreateTime maxTimestamp. On the common path the
/// buffer is not touched. Errors: `CorruptBatch` for broken framing, CRC or compressed
/// payload; `InvalidBatch` for semantic problems (bad offset deltas, codec 5–7, records
/// that inflate past [`decompressed_limit_bytes`]); `InvalidRecords` for keyless records
/// on a compacted topic; `BatchTooLarge` when the (re-encoded) batch exceeds the limit.
pub fn prepare_batch(
    batch: &mut Vec<u8>,
    policy: &BatchPolicy,
    now_ms: i64,
) -> Result<Prepared, LogError> {
    let mut buf = BatchBuf::Owned(std::mem::take(batch));
    let result = prepare_batch_buf(&mut buf, policy, now_ms);
    *batch = buf.into_vec();
    result
}

/// A produced batch that is copied only if the topic's policy must change it: the request's
/// buffer is shared (`Bytes`) and stays untouched on the common path.
#[derive(Debug, Clone)]
pub enum BatchBuf {
    Shared(bytes::Bytes),
    Owned(Vec<u8>),
}

impl std::ops::Deref for BatchBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BatchBuf::Shared(bytes) => bytes,
            BatchBuf::Owned(vec) => vec,
        }
    }
}

impl BatchBuf {
    /// The bytes to change, copied out of a shared buffer first.
    pub fn to_mut(&mut self) -> &mut Vec<u8> {
        match self {
            BatchBuf::Owned(vec) => vec,
            BatchBuf::Shared(bytes) => {
                *self = BatchBuf::Owned(bytes.to_vec());
                self.to_mut()
            }
        }
    }

    /// True while the bytes are still the shared buffer (never copied).
    pub fn is_shared(&self) -> bool {
        matches!(self, BatchBuf::Shared(_))
    }

    pub fn into_vec(self) -> Vec<u8> {
        match self {
            BatchBuf::Shared(bytes) => bytes.to_vec(),
            BatchBuf::Owned(vec) => vec,
        }
    }
}

/// [`prepare_batch`] on a [`BatchBuf`]: a shared buffer is copied only when the batch
/// changes (re-encoding, LogAppendTime, a corrected maxTimestamp).
pub fn prepare_batch_buf(
    batch: &mut BatchBuf,
    policy: &BatchPolicy,
    now_ms: i64,
) -> Result<Prepared, LogError> {
    let mut header = validate_for_append(batch, policy.max_batch_bytes)?;
    let codec = CompressionType::from_attributes(header.attributes)?;
    let target = policy.compression.unwrap_or(codec);
    let mut recompressed = false;
    let summary = if codec == CompressionType::None {
        let summary = walk_records(&batch[BATCH_HEADER_BYTES..], &header)?;
        check_keys(&summary, policy)?;
        if target != codec {
            let body = compress(target, &batch[BATCH_HEADER_BYTES..])?;
            rebuild(
                batch.to_mut(),
                &mut header,
                target,
                &body,
                policy.max_batch_bytes,
            )?;
            recompressed = true;
        }
        summary
    } else {
        let limit = decompressed_limit_bytes(policy.max_batch_bytes);
        let records = decompress(codec, &batch[BATCH_HEADER_BYTES..], limit)?;
        let summary = walk_records(&records, &header)?;
        check_keys(&summary, policy)?;
        if target != codec {
            let body = match target {
                CompressionType::None => records,
                other => compress(other, &records)?,
            };
            rebuild(
                batch.to_mut(),
                &mut header,
                target,
                &body,
                policy.max_batch_bytes,
            )?;
            recompressed = true;
        }
        summary
    };
    let (attributes, max_timestamp, log_append_time_ms) = match policy.timestamp_type {
        TimestampType::LogAppendTime => (
            header.attributes | ATTRIBUTE_LOG_APPEND_TIME,
            now_ms,
            Some(now_ms),
        ),
        TimestampType::CreateTime => (
            header.attributes & !ATTRIBUTE_LOG_APPEND_TIME,
            header
                .base_timestamp
                .saturating_add(summary.max_timestamp_delta),
            None,
        ),
    };
    let rewritten =
        recompressed || attributes != header.attributes || max_timestamp != header.max_timestamp;
    if rewritten {
        let batch = batch.to_mut();
        header.attributes = attributes;
        header.max_timestamp = max_timestamp;
        batch[ATTRIBUTES_START..ATTRIBUTES_START + 2].copy_from_slice(&attributes.to_be_bytes());
        batch[MAX_TIMESTAMP_START..MAX_TIMESTAMP_START + 8]
            .copy_from_slice(&max_timestamp.to_be_bytes());
        header.crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[17..CRC_START].copy_from_slice(&header.crc.to_be_bytes());
    }
    Ok(Prepared {
        header,
        recompressed,
        rewritten,
        log_append_time_ms,
    })
}

fn check_keys(summary: &RecordsSummary, policy: &BatchPolicy) -> Result<(), LogError> {
    if policy.require_keys && !summary.keyless_indexes.is_empty() {
        return Err(LogError::InvalidRecords {
            message: KEYLESS_ON_COMPACTED_MESSAGE.to_string(),
            batch_indexes: summary.keyless_indexes.clone(),
        });
    }
    Ok(())
}

/// Replaces the records of `batch` with `body` encoded by `codec`; the header keeps every
/// field but the codec bits and batchLength (the CRC is recomputed by the caller).
fn rebuild(
    batch: &mut Vec<u8>,
    header: &mut BatchHeader,
    codec: CompressionType,
    body: &[u8],
    max_batch_bytes: usize,
) -> Result<(), LogError> {
    let total_bytes = BATCH_HEADER_BYTES.saturating_add(body.len());
    if total_bytes > max_batch_bytes {
        return Err(LogError::BatchTooLarge {
            size: total_bytes,
            max: max_batch_bytes,
        });
    }
    let batch_length = i32::try_from(total_bytes - BATCH_LENGTH_PREFIX_BYTES).map_err(|_| {
        LogError::BatchTooLarge {
            size: total_bytes,
            max: max_batch_bytes,
        }
    })?;
    let attributes = (header.attributes & !ATTRIBUTE_COMPRESSION_MASK) | codec.attribute_bits();
    batch.truncate(BATCH_HEADER_BYTES);
    batch.extend_from_slice(body);
    batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
    batch[ATTRIBUTES_START..ATTRIBUTES_START + 2].copy_from_slice(&attributes.to_be_bytes());
    header.batch_length = batch_length;
    header.attributes = attributes;
    Ok(())
}

/// What a walk over a batch's records found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordsSummary {
    /// Largest timestampDelta of the batch (records_count >= 1, so there is one).
    pub max_timestamp_delta: i64,
    /// Batch indexes of the records with a null key (empty, unallocated, on the usual path).
    pub keyless_indexes: Vec<i32>,
}

/// Walks the uncompressed records of a batch without allocating per record: each record's
/// length prefix must frame exactly its fields, offset deltas must be 0..n-1, there must be
/// exactly `records_count` records and no trailing bytes.
pub fn walk_records(records: &[u8], header: &BatchHeader) -> Result<RecordsSummary, LogError> {
    let mut cursor = Cursor::new(records);
    let mut summary = RecordsSummary {
        max_timestamp_delta: i64::MIN,
        keyless_indexes: Vec::new(),
    };
    for index in 0..header.records_count {
        let length = cursor.varint()?;
        let length = usize::try_from(length)
            .map_err(|_| corrupt(format!("record {index} has negative length {length}")))?;
        let body = cursor.take(length).map_err(|_| {
            corrupt(format!(
                "record {index} of {length} bytes does not fit in the {} bytes left \
                 (recordsCount {} says more records than the batch holds?)",
                cursor.remaining(),
                header.records_count
            ))
        })?;
        let mut record = Cursor::new(body);
        record.take(1)?; // attributes: unused in v2
        let timestamp_delta = record.varlong()?;
        let offset_delta = record.varint()?;
        if offset_delta != index {
            return Err(LogError::InvalidBatch(format!(
                "record {index} has offset delta {offset_delta}; deltas must be 0..{}",
                header.records_count
            )));
        }
        if !record.nullable_bytes()? {
            summary.keyless_indexes.push(index);
        }
        record.nullable_bytes()?; // value
        let headers_count = record.varint()?;
        if headers_count < 0 {
            return Err(corrupt(format!(
                "record {index} has a negative header count {headers_count}"
            )));
        }
        for _ in 0..headers_count {
            let key_length = record.varint()?;
            let key_length = usize::try_from(key_length).map_err(|_| {
                corrupt(format!(
                    "record {index} has a header key of length {key_length}"
                ))
            })?;
            record.take(key_length)?;
            record.nullable_bytes()?;
        }
        if record.remaining() != 0 {
            return Err(corrupt(format!(
                "record {index} says {length} bytes but its fields use {}",
                length - record.remaining()
            )));
        }
        summary.max_timestamp_delta = summary.max_timestamp_delta.max(timestamp_delta);
    }
    if cursor.remaining() != 0 {
        return Err(corrupt(format!(
            "{} bytes follow the {} records the batch declares",
            cursor.remaining(),
            header.records_count
        )));
    }
    Ok(summary)
}

fn corrupt(message: String) -> LogError {
    LogError::CorruptBatch(message)
}

/// A read position over record bytes; every read is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, position: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], LogError> {
        let end = self
            .position
            .checked_add(length)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "a field of {length} bytes runs past the end of its record ({} left)",
                    self.remaining()
                ))
            })?;
        let out = &self.bytes[self.position..end];
        self.position = end;
        Ok(out)
    }

    /// An unsigned LEB128 of at most `max_bytes` bytes.
    fn unsigned(&mut self, max_bytes: u32) -> Result<u64, LogError> {
        let mut value: u64 = 0;
        for i in 0..max_bytes {
            let byte = *self
                .bytes
                .get(self.position)
                .ok_or_else(|| corrupt("a varint runs past the end of its record".to_string()))?;
            self.position += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(corrupt(format!(
            "a varint is longer than {max_bytes} bytes"
        )))
    }

    /// A zigzag varint (i32).
    fn varint(&mut self) -> Result<i32, LogError> {
        let raw = self.unsigned(5)?;
        let raw = u32::try_from(raw).map_err(|_| corrupt("a varint overflows i32".to_string()))?;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    /// A zigzag varlong (i64).
    fn varlong(&mut self) -> Result<i64, LogError> {
        let raw = self.unsigned(10)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// A varint length then that many bytes, -1 for null; returns whether it was non-null.
    fn nullable_bytes(&mut self) -> Result<bool, LogError> {
        let length = self.varint()?;
        if length == -1 {
            return Ok(false);
        }
        let length =
            usize::try_from(length).map_err(|_| corrupt(format!("a field has length {length}")))?;
        self.take(length)?;
        Ok(true)
    }
}

/// Decompresses a batch's records, refusing to produce more than `limit_bytes`.
pub fn decompress(
    codec: CompressionType,
    payload: &[u8],
    limit_bytes: usize,
) -> Result<Vec<u8>, LogError> {
    let broken = |error: std::io::Error| {
        corrupt(format!(
            "{codec:?} payload of {} bytes does not decompress: {error}",
            payload.len()
        ))
    };
    match codec {
        CompressionType::None => {
            if payload.len() > limit_bytes {
                return Err(too_big(limit_bytes));
            }
            Ok(payload.to_vec())
        }
        CompressionType::Gzip => {
            read_bounded(flate2::read::MultiGzDecoder::new(payload), limit_bytes)
                .map_err(|e| e.map_io(broken))
        }
        CompressionType::Snappy => snappy_decompress(payload, limit_bytes),
        CompressionType::Lz4 => {
            let decoder = lz4::Decoder::new(payload).map_err(broken)?;
            read_bounded(decoder, limit_bytes).map_err(|e| e.map_io(broken))
        }
        CompressionType::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(payload).map_err(broken)?;
            decoder
                .window_log_max(zstd_window_log_max(limit_bytes))
                .map_err(broken)?;
            read_bounded(decoder, limit_bytes).map_err(|e| e.map_io(broken))
        }
    }
}

/// A window larger than the whole decompressed output is never needed, so a frame asking
/// for one (beyond what ordinary encoder levels declare) is refused before zstd allocates it.
fn zstd_window_log_max(limit_bytes: usize) -> u32 {
    let needed = usize::BITS - limit_bytes.saturating_sub(1).leading_zeros();
    needed.clamp(ZSTD_WINDOW_LOG_MIN, ZSTD_WINDOW_LOG_MAX)
}

fn too_big(limit_bytes: usize) -> LogError {
    LogError::InvalidBatch(format!(
        "records decompress to more than {limit_bytes} bytes \
         ({DECOMPRESSION_RATIO_LIMIT}x max.message.bytes, at most {DECOMPRESSED_BYTES_CAP})"
    ))
}

enum BoundedReadError {
    Io(std::io::Error),
    TooBig(LogError),
}

impl BoundedReadError {
    fn map_io(self, f: impl FnOnce(std::io::Error) -> LogError) -> LogError {
        match self {
            BoundedReadError::Io(error) => f(error),
            BoundedReadError::TooBig(error) => error,
        }
    }
}

fn read_bounded(reader: impl Read, limit_bytes: usize) -> Result<Vec<u8>, BoundedReadError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(BoundedReadError::Io)?;
    if out.len() > limit_bytes {
        return Err(BoundedReadError::TooBig(too_big(limit_bytes)));
    }
    Ok(out)
}

/// Snappy in either framing: xerial (`\x82SNAPPY\0` header, then big-endian u32
/// length-prefixed raw blocks; the Java client) or one raw block (librdkafka).
fn snappy_decompress(payload: &[u8], limit_bytes: usize) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::new();
    if payload.len() >= XERIAL_MAGIC_BYTES && payload[..XERIAL_MAGIC_BYTES] == XERIAL_HEADER[..8] {
        let mut cursor = Cursor::new(payload);
        cursor
            .take(XERIAL_HEADER.len())
            .map_err(|_| corrupt("xerial snappy header is truncated".to_string()))?;
        while cursor.remaining() > 0 {
            let length = cursor
                .take(4)
                .map_err(|_| corrupt("xerial snappy block length is truncated".to_string()))?;
            let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
            let block = cursor
                .take(usize::try_from(length).unwrap_or(usize::MAX))
                .map_err(|_| {
                    corrupt(format!(
                        "xerial snappy block of {length} bytes is truncated"
                    ))
                })?;
            snappy_block(block, &mut out, limit_bytes)?;
        }
    } else {
        snappy_block(payload, &mut out, limit_bytes)?;
    }
    Ok(out)
}

/// Appends one raw snappy block to `out`, checking its declared size before allocating.
fn snappy_block(block: &[u8], out: &mut Vec<u8>, limit_bytes: usize) -> Result<(), LogError> {
    let broken = |error: snap::Error| corrupt(format!("snappy block does not decompress: {error}"));
    let length = snap::raw::decompress_len(block).map_err(broken)?;
    if out.len().saturating_add(length) > limit_bytes {
        return Err(too_big(limit_bytes));
    }
    let start = out.len();
    out.resize(start + length, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(broken)?;
    out.truncate(start + written);
    Ok(())
}

/// Compresses records with `codec` the way the Java broker writes them (gzip default level,
/// xerial snappy in 32 KiB blocks, lz4 frame with independent 64 KiB blocks, zstd level 3).
pub fn compress(codec: CompressionType, records: &[u8]) -> Result<Vec<u8>, LogError> {
    let failed = |error: std::io::Error| {
        LogError::InvalidBatch(format!(
            "re-encoding records with {codec:?} failed: {error}"
        ))
    };
    match codec {
        CompressionType::None => Ok(records.to_vec()),
        CompressionType::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(records.len() / 2),
                flate2::Compression::default(),
            );
            encoder.write_all(records).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        CompressionType::Snappy => {
            let mut out = Vec::with_capacity(XERIAL_HEADER.len() + records.len() / 2);
            out.extend_from_slice(XERIAL_HEADER);
            let mut encoder = snap::raw::Encoder::new();
            for chunk in records.chunks(XERIAL_BLOCK_BYTES) {
                let block = encoder.compress_vec(chunk).map_err(|error| {
                    LogError::InvalidBatch(format!("snappy compression failed: {error}"))
                })?;
                let length = u32::try_from(block.len())
                    .map_err(|_| LogError::InvalidBatch("snappy block exceeds u32".to_string()))?;
                out.extend_from_slice(&length.to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(out)
        }
        CompressionType::Lz4 => {
            let mut encoder = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .build(Vec::with_capacity(records.len() / 2))
                .map_err(failed)?;
            encoder.write_all(records).map_err(failed)?;
            let (out, result) = encoder.finish();
            result.map_err(failed)?;
            Ok(out)
        }
        CompressionType::Zstd => zstd::stream::encode_all(records, ZSTD_LEVEL).map_err(failed),
    }
}

#[cfg(test)]
mod tests;
