//! Raw RecordBatch v2 record bodies for the cleaner: decompress a batch's records section,
//! parse each record just enough to know its offset, key and whether it is a tombstone, and
//! rebuild a batch from the survivors.
//!
//! The cleaner must keep the batch's base offset, lastOffsetDelta, producer fields and codec
//! while dropping records (Kafka preserves them so producer state can be rebuilt), which
//! kafka-protocol's encoder cannot do (it derives the header from the records). So records
//! are handled here as bytes: each survivor is copied as is, except that its timestamp delta
//! is re-encoded when the batch's baseTimestamp changes (KIP-534 delete horizon).

use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{
    Compressor, Decompressor, Gzip, Lz4, None as NoCompression, Snappy, Zstd,
};

use crate::batch::{BatchHeader, BATCH_HEADER_BYTES, CRC_START};
use crate::{CompressionType, LogError};

/// One record of a batch, borrowed from the decompressed records section.
#[derive(Debug, Clone)]
pub struct RawRecord<'a> {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    /// True when the value is null (a tombstone).
    pub value_is_null: bool,
    /// Everything after the timestamp delta (offset delta, key, value, headers), verbatim.
    pub tail: &'a [u8],
}

fn corrupt(header: &BatchHeader, what: &str) -> LogError {
    LogError::CorruptBatch(format!("batch at offset {}: {what}", header.base_offset))
}

/// Reads a zigzag varint (up to 64 bits) from `bytes` at `*position`.
fn read_varlong(bytes: &[u8], position: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *bytes.get(*position)?;
        *position += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// Appends `value` as a zigzag varint.
pub fn write_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The records section of `batch`, decompressed with the batch's codec.
pub fn decompressed_records(batch: &[u8], header: &BatchHeader) -> Result<Bytes, LogError> {
    let records = batch
        .get(BATCH_HEADER_BYTES..header.total_size())
        .ok_or_else(|| corrupt(header, "shorter than its length"))?;
    let mut input = Bytes::copy_from_slice(records);
    let copy = |buf: &mut Bytes| Ok(buf.clone());
    let result = match CompressionType::from_attributes(header.attributes)? {
        CompressionType::None => return Ok(input),
        CompressionType::Gzip => Gzip::decompress(&mut input, copy),
        CompressionType::Snappy => Snappy::decompress(&mut input, copy),
        CompressionType::Lz4 => Lz4::decompress(&mut input, copy),
        CompressionType::Zstd => Zstd::decompress(&mut input, copy),
    };
    result.map_err(|error| corrupt(header, &format!("does not decompress: {error}")))
}

/// Splits a decompressed records section into `records_count` records.
pub fn parse_records<'a>(
    records: &'a [u8],
    header: &BatchHeader,
) -> Result<Vec<RawRecord<'a>>, LogError> {
    let count = usize::try_from(header.records_count).unwrap_or(0);
    let mut parsed = Vec::with_capacity(count.min(records.len()));
    let mut position = 0usize;
    for _ in 0..count {
        let length = read_varlong(records, &mut position)
            .and_then(|length| usize::try_from(length).ok())
            .ok_or_else(|| corrupt(header, "bad record length"))?;
        let end = position
            .checked_add(length)
            .filter(|end| *end <= records.len())
            .ok_or_else(|| corrupt(header, "record runs past the batch"))?;
        let body = &records[position..end];
        parsed.push(parse_record(body).ok_or_else(|| corrupt(header, "malformed record"))?);
        position = end;
    }
    Ok(parsed)
}

fn parse_record(body: &[u8]) -> Option<RawRecord<'_>> {
    let attributes = i8::from_be_bytes([*body.first()?]);
    let mut position = 1usize;
    let timestamp_delta = read_varlong(body, &mut position)?;
    let tail_start = position;
    let offset_delta = i32::try_from(read_varlong(body, &mut position)?).ok()?;
    let key_length = read_varlong(body, &mut position)?;
    let key = if key_length < 0 {
        None
    } else {
        let end = position.checked_add(usize::try_from(key_length).ok()?)?;
        let key = body.get(position..end)?;
        position = end;
        Some(key)
    };
    let value_length = read_varlong(body, &mut position)?;
    if value_length >= 0 {
        let end = position.checked_add(usize::try_from(value_length).ok()?)?;
        body.get(position..end)?;
    }
    Some(RawRecord {
        attributes,
        timestamp_delta,
        offset_delta,
        key,
        value_is_null: value_length < 0,
        tail: &body[tail_start..],
    })
}

/// Serializes one record with `timestamp_delta` (the rest verbatim).
fn encode_record(out: &mut Vec<u8>, record: &RawRecord<'_>, timestamp_delta: i64) {
    let mut body = Vec::with_capacity(record.tail.len() + 11);
    body.push(record.attributes.to_be_bytes()[0]);
    write_varlong(&mut body, timestamp_delta);
    body.extend_from_slice(record.tail);
    write_varlong(out, body.len() as i64);
    out.extend_from_slice(&body);
}

/// Builds a batch from `header` (base offset, lastOffsetDelta, producer fields kept) holding
/// `records`, with `attributes`, `base_timestamp` and `max_timestamp`, compressed with the
/// original codec; record timestamps are re-based onto `base_timestamp`.
pub fn rebuild_batch(
    header: &BatchHeader,
    records: &[RawRecord<'_>],
    attributes: i16,
    base_timestamp: i64,
    max_timestamp: i64,
) -> Result<Vec<u8>, LogError> {
    let mut plain = Vec::new();
    for record in records {
        let timestamp = header.base_timestamp.saturating_add(record.timestamp_delta);
        encode_record(&mut plain, record, timestamp.saturating_sub(base_timestamp));
    }
    let mut compressed = BytesMut::new();
    let fill = |buf: &mut BytesMut| {
        buf.extend_from_slice(&plain);
        Ok(())
    };
    let result = match CompressionType::from_attributes(attributes)? {
        CompressionType::None => NoCompression::compress(&mut compressed, fill),
        CompressionType::Gzip => Gzip::compress(&mut compressed, fill),
        CompressionType::Snappy => Snappy::compress(&mut compressed, fill),
        CompressionType::Lz4 => Lz4::compress(&mut compressed, fill),
        CompressionType::Zstd => Zstd::compress(&mut compressed, fill),
    };
    result.map_err(|error| corrupt(header, &format!("does not recompress: {error}")))?;
    let total_size = BATCH_HEADER_BYTES + compressed.len();
    let batch_length = i32::try_from(total_size - 12)
        .map_err(|_| corrupt(header, "cleaned batch does not fit i32"))?;
    let records_count =
        i32::try_from(records.len()).map_err(|_| corrupt(header, "too many records"))?;
    let mut batch = Vec::with_capacity(total_size);
    batch.extend_from_slice(&header.base_offset.to_be_bytes());
    batch.extend_from_slice(&batch_length.to_be_bytes());
    batch.extend_from_slice(&header.partition_leader_epoch.to_be_bytes());
    batch.push(header.magic.to_be_bytes()[0]);
    batch.extend_from_slice(&0u32.to_be_bytes());
    batch.extend_from_slice(&attributes.to_be_bytes());
    batch.extend_from_slice(&header.last_offset_delta.to_be_bytes());
    batch.extend_from_slice(&base_timestamp.to_be_bytes());
    batch.extend_from_slice(&max_timestamp.to_be_bytes());
    batch.extend_from_slice(&header.producer_id.to_be_bytes());
    batch.extend_from_slice(&header.producer_epoch.to_be_bytes());
    batch.extend_from_slice(&header.base_sequence.to_be_bytes());
    batch.extend_from_slice(&records_count.to_be_bytes());
    batch.extend_from_slice(&compressed);
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varlong_round_trips(value in any::<i64>()) {
            let mut out = Vec::new();
            write_varlong(&mut out, value);
            let mut position = 0;
            prop_assert_eq!(read_varlong(&out, &mut position), Some(value));
            prop_assert_eq!(position, out.len());
        }
    }
}
