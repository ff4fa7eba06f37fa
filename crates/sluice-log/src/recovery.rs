//! Loading one segment at open: trust indexes up to the recovery point, scan batch by batch
//! (length sanity, magic, offsets that never go backwards, record counts that fit the
//! offset range, CRC32C from the recovery point on) and truncate the file at the first bad
//! byte.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::batch::{BatchHeader, BATCH_HEADER_BYTES};
use crate::index::OffsetIndex;
use crate::segment::{
    file_name, open_log_file, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use crate::time_index::TimeIndex;
use crate::{LogError, TimestampOffset};

/// What recovery did, for logs, metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found and kept.
    pub segments_loaded: usize,
    /// Batches whose CRC was checked (those at or after the recovery point).
    pub batches_verified: u64,
    /// Bytes cut off torn or corrupt segment tails.
    pub bytes_truncated: u64,
    /// Segments deleted because they followed a truncation or did not line up.
    pub segments_deleted: usize,
    /// Segments whose index files were unusable and were rebuilt by a full scan.
    pub indexes_rebuilt: usize,
    /// Offset of the producer state snapshot the producer state was loaded from.
    pub producer_snapshot_offset: Option<i64>,
    /// Producer snapshots deleted: beyond the recovered log end, or corrupt.
    pub producer_snapshots_deleted: usize,
    /// Batch headers read after the snapshot (or from the log start) to rebuild the state.
    pub producer_batches_replayed: u64,
    /// Idempotent producers known after recovery.
    pub producers_loaded: usize,
    /// Batch headers read to rebuild a missing or damaged `leader-epoch-checkpoint`
    /// (0 when it was read from the file).
    pub leader_epoch_batches_scanned: u64,
}

/// A loaded segment and whether its file had to be truncated.
pub struct LoadedSegment {
    pub segment: Segment,
    pub truncated: bool,
}

/// Where a scan stopped early, and why.
struct BadBatch {
    position: u32,
    expected_offset: i64,
    reason: String,
}

/// Loads the segment with `base_offset`, verifying every batch whose last offset is >=
/// `recovery_point`, truncating a torn or corrupt tail.
pub fn load_segment(
    dir: &Path,
    base_offset: i64,
    recovery_point: i64,
    index_interval_bytes: u32,
    report: &mut RecoveryReport,
) -> Result<LoadedSegment, LogError> {
    if let Some(loaded) = load_trusting_indexes(
        dir,
        base_offset,
        recovery_point,
        index_interval_bytes,
        report,
    )? {
        return Ok(loaded);
    }
    report.indexes_rebuilt += 1;
    let file = open_log_file(&dir.join(file_name(base_offset, LOG_SUFFIX)), false)?;
    let file_len = file.metadata()?.len();
    let mut segment = Segment::empty(dir, base_offset, file);
    let bad = scan(
        &mut segment,
        file_len,
        recovery_point,
        index_interval_bytes,
        report,
    )?;
    let truncated = match bad {
        Some(bad) => {
            truncate(&segment, file_len, &bad)?;
            report.bytes_truncated += file_len - u64::from(bad.position);
            true
        }
        None => false,
    };
    segment.indexes_dirty = true;
    Ok(LoadedSegment { segment, truncated })
}

/// Fast path: start from the index entry at or below the recovery point. None when the index
/// files are unusable or disagree with the log, so the caller rescans the whole segment.
fn load_trusting_indexes(
    dir: &Path,
    base_offset: i64,
    recovery_point: i64,
    index_interval_bytes: u32,
    report: &mut RecoveryReport,
) -> Result<Option<LoadedSegment>, LogError> {
    let file = open_log_file(&dir.join(file_name(base_offset, LOG_SUFFIX)), false)?;
    let file_len = file.metadata()?.len();
    let (offset_index, time_index) = match read_indexes(dir, base_offset, file_len) {
        Ok(indexes) => indexes,
        Err(reason) => {
            if recovery_point > base_offset {
                tracing::warn!(dir = %dir.display(), segment = base_offset, %reason, "index unusable; rebuilding by scanning the segment");
            }
            return Ok(None);
        }
    };
    let loaded_index_entries = (offset_index.len(), time_index.len());
    let mut segment = Segment::empty(dir, base_offset, file);
    start_at_index_floor(&mut segment, offset_index, time_index, recovery_point);
    let scan_start_offset = segment.next_offset;
    let bad = scan(
        &mut segment,
        file_len,
        recovery_point,
        index_interval_bytes,
        report,
    )?;
    let truncated = match bad {
        None => false,
        Some(bad)
            if bad.expected_offset < recovery_point || bad.expected_offset == scan_start_offset =>
        {
            tracing::warn!(dir = %dir.display(), segment = base_offset, position = bad.position, reason = %bad.reason, "index and log disagree before the recovery point; rescanning the whole segment");
            return Ok(None);
        }
        Some(bad) => {
            truncate(&segment, file_len, &bad)?;
            report.bytes_truncated += file_len - u64::from(bad.position);
            true
        }
    };
    segment.indexes_dirty =
        truncated || loaded_index_entries != (segment.offset_index.len(), segment.time_index.len());
    Ok(Some(LoadedSegment { segment, truncated }))
}

/// Reads both index files; Err(reason) when either is missing or malformed.
fn read_indexes(
    dir: &Path,
    base_offset: i64,
    file_len: u64,
) -> Result<(OffsetIndex, TimeIndex), String> {
    let read = |suffix: &str| {
        fs::read(dir.join(file_name(base_offset, suffix)))
            .map_err(|error| format!("{suffix}: {error}"))
    };
    let offset_index = OffsetIndex::from_bytes(&read(INDEX_SUFFIX)?, file_len)?;
    let time_index = TimeIndex::from_bytes(&read(TIME_INDEX_SUFFIX)?)?;
    Ok((offset_index, time_index))
}

/// Positions `segment` at the last offset index entry at or below `recovery_point`, keeping
/// the index entries before it.
fn start_at_index_floor(
    segment: &mut Segment,
    mut offset_index: OffsetIndex,
    mut time_index: TimeIndex,
    recovery_point: i64,
) {
    let relative_recovery_point = recovery_point
        .saturating_sub(segment.base_offset)
        .clamp(0, i64::from(u32::MAX));
    let relative_recovery_point = u32::try_from(relative_recovery_point).unwrap_or(u32::MAX);
    let floor = offset_index.floor_by_offset(relative_recovery_point);
    offset_index.truncate_to_position(floor.position);
    time_index.truncate_to_offset(floor.relative_offset);
    segment.max_timestamp = time_index.last().map(|entry| TimestampOffset {
        timestamp: entry.timestamp_ms,
        offset: segment
            .base_offset
            .saturating_add(i64::from(entry.relative_offset)),
    });
    segment.offset_index = offset_index;
    segment.time_index = time_index;
    segment.size_bytes = floor.position;
    segment.next_offset = segment
        .base_offset
        .saturating_add(i64::from(floor.relative_offset));
    segment.bytes_since_index_entry = 0;
}

/// Walks batches from the segment's current end to `file_len`, tracking each good one.
/// Returns the first bad batch, if any.
fn scan(
    segment: &mut Segment,
    file_len: u64,
    recovery_point: i64,
    index_interval_bytes: u32,
    report: &mut RecoveryReport,
) -> Result<Option<BadBatch>, LogError> {
    while u64::from(segment.size_bytes) < file_len {
        let position = segment.size_bytes;
        match check_batch_at(segment, position, file_len, recovery_point)? {
            Ok((header, size_bytes, verified)) => {
                report.batches_verified += u64::from(verified);
                segment.track_batch(position, &header, size_bytes, index_interval_bytes);
            }
            Err(reason) => {
                return Ok(Some(BadBatch {
                    position,
                    expected_offset: segment.next_offset,
                    reason,
                }))
            }
        }
    }
    Ok(None)
}

/// Checks the batch at `position`: Ok(Err(reason)) for bad data, Err for I/O errors.
fn check_batch_at(
    segment: &Segment,
    position: u32,
    file_len: u64,
    recovery_point: i64,
) -> Result<Result<(BatchHeader, u32, bool), String>, LogError> {
    let remaining = file_len - u64::from(position);
    if remaining < BATCH_HEADER_BYTES as u64 {
        return Ok(Err(format!("torn batch header: {remaining} bytes left")));
    }
    let mut header_bytes = [0u8; BATCH_HEADER_BYTES];
    segment
        .file
        .read_exact_at(&mut header_bytes, u64::from(position))?;
    let header = match BatchHeader::parse(&header_bytes) {
        Ok(header) => header,
        Err(error) => return Ok(Err(error.to_string())),
    };
    let total_size = header.total_size() as u64;
    if total_size > remaining {
        return Ok(Err(format!(
            "torn batch: needs {total_size} bytes, {remaining} left"
        )));
    }
    let Some(size_bytes) = u32::try_from(total_size)
        .ok()
        .filter(|size| position.checked_add(*size).is_some())
    else {
        return Ok(Err("batch would push the segment past 4 GiB".to_string()));
    };
    // No batch, not even one the cleaner emptied, ends before it starts: a negative
    // lastOffsetDelta would place the batch "below the recovery point" and skip its CRC
    // (found by the log_recovery fuzz target).
    if header.last_offset_delta < 0 {
        return Ok(Err(format!(
            "negative lastOffsetDelta {}",
            header.last_offset_delta
        )));
    }
    // Offsets only move forward, but not necessarily contiguously: the cleaner removes
    // batches (a forward gap) and records inside batches (fewer records than
    // lastOffsetDelta + 1, even none), and a follower copies such batches from a compacted
    // leader, also above the recovery point, where the CRC check below vouches for them.
    // An overlap is never accepted.
    if header.base_offset < segment.next_offset {
        return Ok(Err(format!(
            "base offset {} does not follow the previous batch end {}",
            header.base_offset, segment.next_offset
        )));
    }
    // Every batch of a segment fits its 32-bit relative offsets (appends roll before one
    // would not); a base offset beyond that is a damaged header (it is outside the CRC).
    if segment.relative_offset(header.last_offset()).is_none() {
        return Ok(Err(format!(
            "batch offsets {}..={} do not fit segment {}",
            header.base_offset,
            header.last_offset(),
            segment.base_offset
        )));
    }
    // Zero records: a producer's last batch, emptied but kept for its sequence state.
    if header.records_count < 0 || header.records_count - 1 > header.last_offset_delta {
        return Ok(Err(format!(
            "recordsCount {} and lastOffsetDelta {} are inconsistent",
            header.records_count, header.last_offset_delta
        )));
    }
    let verify = header.last_offset() >= recovery_point;
    if verify {
        let bytes = segment.read_batch_at(position, &header)?;
        if let Err(error) = header.verify_crc(&bytes) {
            return Ok(Err(error.to_string()));
        }
    }
    Ok(Ok((header, size_bytes, verify)))
}

/// Cuts the segment file at the bad batch and makes the cut durable.
fn truncate(segment: &Segment, file_len: u64, bad: &BadBatch) -> Result<(), LogError> {
    tracing::warn!(
        dir = %segment.dir.display(),
        segment = segment.base_offset,
        position = bad.position,
        bytes_removed = file_len - u64::from(bad.position),
        reason = %bad.reason,
        "truncating segment at a torn or corrupt batch"
    );
    segment.file.set_len(u64::from(bad.position))?;
    segment.file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests;
