//! Entry points of the fuzz targets `record_batch` and `log_recovery` (`fuzz/` at the
//! repository root). They live here, not in the fuzz crate, so that the regression tests
//! (`tests/fuzz_regressions.rs`, ordinary `cargo test` tests) run a saved input through
//! exactly the code the fuzzer ran. Each function panics when a property fails: that is
//! how a fuzzer learns of a finding; errors for bad input are the expected outcome.

use std::fs;
use std::path::Path;

use crate::batch::{
    validate_for_append, BatchHeader, ATTRIBUTE_LOG_APPEND_TIME, BATCH_HEADER_BYTES,
    BATCH_LENGTH_PREFIX_BYTES, CRC_START,
};
use crate::compression::CompressionType;
use crate::records::{decompress, decompressed_limit_bytes, prepare_batch_buf, walk_records};
use crate::segment::{file_name, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use crate::{BatchBuf, BatchPolicy, Log, LogConfig, LogError, Prepared, TimestampType};

/// Largest batch the fuzzed policies accept (`max.message.bytes` default).
const MAX_BATCH_BYTES: usize = 1_048_588;
/// The append time handed to `prepare_batch` (any fixed value: runs must be repeatable).
const NOW_MS: i64 = 1_700_000_000_000;

/// Flag bits of the first input byte of [`record_batch`].
const FLAG_LOG_APPEND_TIME: u8 = 1 << 3;
const FLAG_REQUIRE_KEYS: u8 = 1 << 4;
const FLAG_FIX_LENGTH: u8 = 1 << 5;
const FLAG_FIX_CRC: u8 = 1 << 6;

/// `record_batch` target: what the broker runs on a produced batch before it appends
/// (`prepare_batch_buf`: framing, CRC, counts, decompression, the per-record walk, the
/// topic's codec and timestamp policy).
///
/// Input: one flag byte, then the batch. Flag bits 0–2 pick `compression.type` (1 none,
/// 2 gzip, 3 snappy, 4 lz4, 5 zstd, otherwise the producer's), bit 3 LogAppendTime, bit 4
/// a compacted topic (keys required); bits 5 and 6 make the harness write the correct
/// batchLength and CRC first, so that mutations reach the checks behind them.
///
/// Properties of an accepted batch: the output is exactly one valid batch (length, CRC,
/// counts) whose header is the one returned; its records decompress and walk; the codec
/// and timestamp type are the policy's; an unchanged batch is byte-identical to the input.
pub fn record_batch(data: &[u8]) -> Result<Prepared, LogError> {
    let Some((&flags, batch)) = data.split_first() else {
        return Err(LogError::CorruptBatch("empty input".to_string()));
    };
    let mut batch = batch.to_vec();
    if flags & FLAG_FIX_LENGTH != 0 {
        fix_length(&mut batch);
    }
    if flags & FLAG_FIX_CRC != 0 {
        fix_crc(&mut batch);
    }
    let policy = BatchPolicy {
        max_batch_bytes: MAX_BATCH_BYTES,
        compression: match flags & 0b111 {
            1 => Some(CompressionType::None),
            2 => Some(CompressionType::Gzip),
            3 => Some(CompressionType::Snappy),
            4 => Some(CompressionType::Lz4),
            5 => Some(CompressionType::Zstd),
            _ => None,
        },
        timestamp_type: if flags & FLAG_LOG_APPEND_TIME != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        },
        require_keys: flags & FLAG_REQUIRE_KEYS != 0,
    };
    let original = batch.clone();
    let mut buf = BatchBuf::Shared(bytes::Bytes::from(batch));
    let prepared = prepare_batch_buf(&mut buf, &policy, NOW_MS)?;
    let out: &[u8] = &buf;
    let header = validate_for_append(out, policy.max_batch_bytes)
        .unwrap_or_else(|e| panic!("an accepted batch is invalid afterwards: {e}"));
    assert_eq!(
        header, prepared.header,
        "returned header differs from the bytes"
    );
    let codec = CompressionType::from_attributes(header.attributes)
        .unwrap_or_else(|e| panic!("accepted batch has a bad codec: {e}"));
    if let Some(wanted) = policy.compression {
        assert_eq!(codec, wanted, "compression.type not applied");
    }
    let body = &out[BATCH_HEADER_BYTES..];
    let summary = if codec == CompressionType::None {
        walk_records(body, &header)
    } else {
        let limit = decompressed_limit_bytes(policy.max_batch_bytes);
        let records = decompress(codec, body, limit)
            .unwrap_or_else(|e| panic!("accepted batch does not decompress: {e}"));
        walk_records(&records, &header)
    }
    .unwrap_or_else(|e| panic!("accepted batch's records do not walk: {e}"));
    if policy.require_keys {
        assert!(
            summary.keyless_indexes.is_empty(),
            "keyless record accepted"
        );
    }
    let log_append_time = header.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0;
    match policy.timestamp_type {
        TimestampType::LogAppendTime => {
            assert!(log_append_time, "LogAppendTime not stamped");
            assert_eq!(header.max_timestamp, NOW_MS);
        }
        TimestampType::CreateTime => assert!(!log_append_time, "LogAppendTime left set"),
    }
    if !prepared.rewritten {
        assert_eq!(
            out,
            &original[..],
            "batch changed but not reported rewritten"
        );
    }
    Ok(prepared)
}

/// Flag bits of the first input byte of [`log_recovery`].
const FLAG_RECOVERY_FIX_CRC: u8 = 1 << 0;
const FLAG_RECOVERY_INDEX: u8 = 1 << 1;
const FLAG_RECOVERY_TIME_INDEX: u8 = 1 << 2;
const FLAG_RECOVERY_POINT: u8 = 1 << 3;
const FLAG_RECOVERY_SECOND_SEGMENT: u8 = 1 << 4;

/// `log_recovery` target: `data` becomes the files of one partition directory `dir`
/// (which must be empty), then the log is opened as the broker opens it at start-up.
///
/// Input: one flag byte; with bit 3 an 8-byte recovery point; with bits 1 and 2 a 2-byte
/// length and that many bytes of offset index, then of time index; with bit 4 a 4-byte base
/// offset of a second segment and a 2-byte length of the first; the rest is the first
/// segment (base offset 0), then the second. Bit 0 makes the harness correct the CRC of every batch the
/// length fields frame, so that mutations reach the checks behind the CRC.
///
/// Properties: opening never panics; without a recovery point (everything is verified)
/// the segment file afterwards holds only whole batches with valid CRCs and increasing
/// offsets (forward gaps allowed, as a follower copies them from a compacted leader)
/// ending at the log end offset; every read of the recovered log returns whole
/// batches with valid CRCs; an append afterwards succeeds and reads back byte for byte.
pub fn log_recovery(dir: &Path, data: &[u8]) -> Result<(), LogError> {
    let Some((&flags, mut rest)) = data.split_first() else {
        return Ok(());
    };
    let mut recovery_point = None;
    if flags & FLAG_RECOVERY_POINT != 0 {
        let Some((bytes, tail)) = rest.split_first_chunk::<8>() else {
            return Ok(());
        };
        recovery_point = Some(i64::from_be_bytes(*bytes));
        rest = tail;
    }
    let take_file = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (file, tail) = tail.split_at(len);
        *rest = tail;
        Some(file.to_vec())
    };
    let index = if flags & FLAG_RECOVERY_INDEX != 0 {
        take_file(&mut rest)
    } else {
        None
    };
    let time_index = if flags & FLAG_RECOVERY_TIME_INDEX != 0 {
        take_file(&mut rest)
    } else {
        None
    };
    let mut second = None;
    if flags & FLAG_RECOVERY_SECOND_SEGMENT != 0 {
        let Some((base, tail)) = rest.split_first_chunk::<4>() else {
            return Ok(());
        };
        let base = i64::from(u32::from_be_bytes(*base));
        rest = tail;
        let Some(first) = take_file(&mut rest) else {
            return Ok(());
        };
        if base > 0 {
            second = Some((base, rest.to_vec()));
        }
        write_segment(dir, 0, first, flags & FLAG_RECOVERY_FIX_CRC != 0)?;
    } else {
        write_segment(dir, 0, rest.to_vec(), flags & FLAG_RECOVERY_FIX_CRC != 0)?;
    }
    if let Some((base, bytes)) = second {
        write_segment(dir, base, bytes, flags & FLAG_RECOVERY_FIX_CRC != 0)?;
    }
    if let Some(index) = index {
        fs::write(dir.join(file_name(0, INDEX_SUFFIX)), index)?;
    }
    if let Some(time_index) = time_index {
        fs::write(dir.join(file_name(0, TIME_INDEX_SUFFIX)), time_index)?;
    }
    if let Some(point) = recovery_point {
        crate::checkpoint::write_recovery_point(dir, point)?;
    }
    let config = LogConfig {
        // Small segments: appends after recovery may roll.
        segment_bytes: 64 * 1024,
        index_interval_bytes: 128,
        ..LogConfig::default()
    };
    let mut log = Log::open(dir, config)?;
    let end = log.log_end_offset();
    let start = log.log_start_offset();
    if recovery_point.is_none() {
        check_segment_files(dir, end);
    }
    if recovery_point.is_none() {
        // Every batch readable from the start has a valid CRC and sits in order.
        let mut offset = start;
        while offset < end {
            let slice = log
                .read(offset, 1 << 20, end)
                .unwrap_or_else(|e| panic!("read at {offset} of a recovered log: {e}"))
                .unwrap_or_else(|| panic!("nothing at {offset} below the log end {end}"));
            let bytes = slice
                .read_to_vec()
                .unwrap_or_else(|e| panic!("reading a slice: {e}"));
            let next = check_batches(&bytes, offset)
                .unwrap_or_else(|e| panic!("read at {offset} returned bad batches: {e}"));
            assert_eq!(next, slice.next_offset, "slice next offset");
            assert!(next > offset, "read at {offset} made no progress");
            offset = next;
        }
    }
    let batch = minimal_batch(b"after recovery");
    match log.append(&mut batch.clone(), 0, NOW_MS) {
        Ok(info) => {
            assert!(!info.duplicate);
            assert_eq!(
                info.base_offset, end,
                "append after recovery not at the log end"
            );
            let slice = log
                .read(info.base_offset, 1 << 20, info.base_offset + 1)
                .unwrap_or_else(|e| panic!("read back of the append: {e}"))
                .unwrap_or_else(|| panic!("the append does not read back"));
            let bytes = slice
                .read_to_vec()
                .unwrap_or_else(|e| panic!("reading a slice: {e}"));
            assert_eq!(
                &bytes[CRC_START..],
                &batch[CRC_START..],
                "append reads back"
            );
        }
        // Only a log whose offsets cannot grow may refuse (end near i64::MAX).
        Err(error) => assert!(
            end > i64::MAX - (1 << 31),
            "append after recovery failed at log end {end}: {error}"
        ),
    }
    Ok(())
}

/// Writes a segment file, with every batch its length fields frame given a correct CRC
/// when `fix_crcs`.
fn write_segment(
    dir: &Path,
    base: i64,
    mut bytes: Vec<u8>,
    fix_crcs: bool,
) -> Result<(), LogError> {
    if fix_crcs {
        let mut position = 0;
        while let Some(batch) = bytes.get_mut(position..) {
            let Ok(header) = BatchHeader::parse(batch) else {
                break;
            };
            let size = header.total_size();
            if size < BATCH_HEADER_BYTES || size > batch.len() {
                break;
            }
            fix_crc(&mut batch[..size]);
            position += size;
        }
    }
    fs::write(dir.join(file_name(base, LOG_SUFFIX)), &bytes)?;
    Ok(())
}

/// The segment files after recovery: each starts with a batch at its base offset (or is
/// empty), holds only whole CRC-valid batches, continues where the previous one ended, and
/// the last one ends at the log end offset `end`.
fn check_segment_files(dir: &Path, end: i64) {
    let mut segments: Vec<(i64, std::path::PathBuf)> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != LOG_SUFFIX {
                return None;
            }
            let base = path.file_stem()?.to_str()?.parse().ok()?;
            Some((base, path))
        })
        .collect();
    segments.sort();
    let mut expected: Option<i64> = None;
    for (base, path) in segments {
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("segment after recovery: {e}"));
        if bytes.is_empty() {
            if let Some(want) = expected {
                assert_eq!(base, want, "empty segment {base} does not continue the log");
            }
            expected = Some(base);
            continue;
        }
        let header = BatchHeader::parse(&bytes)
            .unwrap_or_else(|e| panic!("recovered segment {base} starts with garbage: {e}"));
        assert!(
            header.base_offset >= base,
            "segment {base} starts below its base"
        );
        if let Some(want) = expected {
            // A forward gap between segments (a follower's roll at a compacted leader's
            // batch) is kept only when the later segment starts with a batch at its base.
            assert!(
                base >= want,
                "segment {base} overlaps the log before it ({want})"
            );
            if base > want {
                assert_eq!(
                    header.base_offset, base,
                    "segment {base} after a gap starts elsewhere"
                );
            }
        }
        let next = check_batches(&bytes, base)
            .unwrap_or_else(|e| panic!("recovered segment {base} holds bad bytes: {e}"));
        expected = Some(next);
    }
    if let Some(last) = expected {
        assert_eq!(last, end, "segments end vs log end offset");
    }
}

/// Walks whole batches covering `bytes` exactly; returns the offset after the last one.
/// The first batch must end at or after `offset`; later ones must follow, with forward
/// gaps allowed (compacted batches, also copied by a follower); counts must fit the offset
/// range (fewer records than it after compaction, even none).
fn check_batches(bytes: &[u8], offset: i64) -> Result<i64, String> {
    let mut position = 0;
    let mut expected: Option<i64> = None;
    while position < bytes.len() {
        let batch = &bytes[position..];
        let header = BatchHeader::parse(batch).map_err(|e| format!("at {position}: {e}"))?;
        header
            .verify_crc(batch)
            .map_err(|e| format!("at {position}: {e}"))?;
        if header.last_offset_delta < 0
            || header.records_count < 0
            || header.records_count - 1 > header.last_offset_delta
        {
            return Err(format!(
                "at {position}: recordsCount {} does not fit lastOffsetDelta {}",
                header.records_count, header.last_offset_delta
            ));
        }
        match expected {
            None if header.last_offset() < offset => {
                return Err(format!(
                    "first batch {}..={} ends before {offset}",
                    header.base_offset,
                    header.last_offset()
                ))
            }
            Some(want) if header.base_offset < want => {
                return Err(format!("batch at {} follows {want}", header.base_offset))
            }
            _ => {}
        }
        expected = Some(header.next_offset());
        position += header.total_size();
    }
    expected.ok_or_else(|| "no batch".to_string())
}

/// One uncompressed record with `value` and no key, as a valid batch.
fn minimal_batch(value: &[u8]) -> Vec<u8> {
    let mut record = vec![0u8]; // attributes
    record.push(0); // timestampDelta 0
    record.push(0); // offsetDelta 0
    record.push(1); // key length -1 (zigzag)
    let value_len = i64::try_from(value.len()).unwrap_or(0);
    push_varint(&mut record, value_len);
    record.extend_from_slice(value);
    record.push(0); // no headers
    let mut batch = vec![0u8; BATCH_HEADER_BYTES];
    push_varint(&mut batch, i64::try_from(record.len()).unwrap_or(0));
    batch.extend_from_slice(&record);
    batch[16] = 2; // magic
    batch[27..35].copy_from_slice(&NOW_MS.to_be_bytes()); // baseTimestamp
    batch[35..43].copy_from_slice(&NOW_MS.to_be_bytes()); // maxTimestamp
    batch[43..51].copy_from_slice(&(-1i64).to_be_bytes()); // producerId
    batch[51..53].copy_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
    batch[53..57].copy_from_slice(&(-1i32).to_be_bytes()); // baseSequence
    batch[57..61].copy_from_slice(&1i32.to_be_bytes()); // recordsCount
    fix_length(&mut batch);
    fix_crc(&mut batch);
    batch
}

fn push_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

/// Writes batchLength for a batch that is all of `batch`.
fn fix_length(batch: &mut [u8]) {
    if batch.len() >= BATCH_LENGTH_PREFIX_BYTES {
        let length = i32::try_from(batch.len() - BATCH_LENGTH_PREFIX_BYTES).unwrap_or(i32::MAX);
        batch[8..12].copy_from_slice(&length.to_be_bytes());
    }
}

/// Writes the CRC32C of `batch[21..]` into the header.
fn fix_crc(batch: &mut [u8]) {
    if batch.len() >= CRC_START {
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[17..CRC_START].copy_from_slice(&crc.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimal_batch_is_accepted_unchanged() {
        let mut input = vec![0u8];
        input.extend_from_slice(&minimal_batch(b"v"));
        let prepared = record_batch(&input).unwrap();
        assert!(!prepared.rewritten);
        assert_eq!(prepared.header.records_count, 1);
    }

    #[test]
    fn a_policy_recompresses_and_stamps() {
        // zstd, LogAppendTime.
        let mut input = vec![5 | FLAG_LOG_APPEND_TIME];
        input.extend_from_slice(&minimal_batch(b"value"));
        let prepared = record_batch(&input).unwrap();
        assert!(prepared.recompressed);
        assert_eq!(prepared.log_append_time_ms, Some(NOW_MS));
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_log_appends_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut input = vec![0u8];
        let batch = minimal_batch(b"one");
        input.extend_from_slice(&batch);
        input.extend_from_slice(&batch[..30]);
        log_recovery(dir.path(), &input).unwrap();
        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(log.log_end_offset(), 2);
    }

    #[test]
    fn a_second_segment_that_lines_up_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = minimal_batch(b"one");
        let mut second = minimal_batch(b"two");
        second[0..8].copy_from_slice(&1i64.to_be_bytes());
        let mut input = vec![FLAG_RECOVERY_SECOND_SEGMENT];
        input.extend_from_slice(&1u32.to_be_bytes());
        input.extend_from_slice(&u16::try_from(first.len()).unwrap().to_be_bytes());
        input.extend_from_slice(&first);
        input.extend_from_slice(&second);
        log_recovery(dir.path(), &input).unwrap();
        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(log.log_end_offset(), 3, "two segments and the append");
        assert!(log.segment_count() >= 2);
    }

    #[test]
    fn a_forward_gap_with_valid_crcs_is_kept() {
        // As a follower copies batches from a compacted leader: 0, then 5..=7 holding
        // two records.
        let dir = tempfile::tempdir().unwrap();
        let first = minimal_batch(b"one");
        let mut second = minimal_batch(b"two");
        second[0..8].copy_from_slice(&5i64.to_be_bytes());
        second[23..27].copy_from_slice(&2i32.to_be_bytes());
        fix_crc(&mut second);
        let mut input = vec![0u8];
        input.extend_from_slice(&first);
        input.extend_from_slice(&second);
        log_recovery(dir.path(), &input).unwrap();
        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(
            log.log_end_offset(),
            9,
            "both batches kept, append after them"
        );
    }

    #[test]
    fn crc_repair_lets_a_stale_batch_through() {
        let dir = tempfile::tempdir().unwrap();
        let mut batch = minimal_batch(b"one");
        batch[30] ^= 0xff; // inside the CRC-covered part: stale CRC
        let mut input = vec![FLAG_RECOVERY_FIX_CRC];
        input.extend_from_slice(&batch);
        log_recovery(dir.path(), &input).unwrap();
        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(
            log.log_end_offset(),
            2,
            "repaired batch kept, append after it"
        );
    }
}
