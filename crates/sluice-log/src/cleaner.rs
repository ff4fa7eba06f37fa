//! Log compaction (Kafka's LogCleaner): keep the last record of every key, preserving offsets.
//!
//! Phases, so that the heavy I/O happens outside the broker's log mutex:
//! 1. [`Log::cleanable_snapshot`] (under the lock, cheap): the rolled segments wholly below the
//!    recovery point. Rolled segment files are immutable, so they can be read without the lock.
//! 2. [`clean`] (no lock): build a bounded offset map key-hash -> last offset over the dirty
//!    section (from the cleaner checkpoint to the first uncleanable offset), then recopy every
//!    segment up to the map's end into `<base>.cleaned` files, batch by batch, fsynced.
//! 3. [`Log::install_cleaned`] (under the lock): rename each cleaned file over its `.log` if the
//!    segment is still the one that was read (retention may have deleted it meanwhile), rebuild
//!    its indexes, and advance the `cleaner-offset-checkpoint`.
//!
//! Tombstones follow KIP-534: the first clean of a batch holding tombstones stamps the
//! delete-horizon attribute and stores `now + delete.retention.ms` in baseTimestamp; a later
//! clean drops its tombstones once that horizon has passed.

mod records;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{BatchHeader, ATTRIBUTE_LOG_APPEND_TIME, BATCH_HEADER_BYTES};
use crate::checkpoint::{sync_dir, write_atomically};
use crate::log::LogConfig;
use crate::segment::{file_name, open_log_file, Segment};
use crate::LogError;
use records::{decompressed_records, parse_records, rebuild_batch, RawRecord};

/// File (in the partition directory) holding the first dirty offset: everything below it has
/// been compacted once. Survives restarts so a clean is not redone from scratch.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
/// Suffix of a segment being cleaned; leftovers from a crash are removed on open.
pub const CLEANED_SUFFIX: &str = "cleaned";
/// Attribute bit 6 (KIP-534): baseTimestamp holds the delete horizon of the batch's tombstones.
pub const ATTRIBUTE_DELETE_HORIZON: i16 = 1 << 6;
/// Attribute bit 5: a control batch (transaction markers); the cleaner copies those as is.
const ATTRIBUTE_CONTROL: i16 = 1 << 5;
/// Memory one offset map entry is charged: a 16-byte key hash and an 8-byte offset, plus
/// the hash table's own overhead.
pub const OFFSET_MAP_ENTRY_BYTES: usize = 40;
/// Default offset map budget (Kafka's `log.cleaner.dedupe.buffer.size` is 128 MiB over all
/// cleaner threads; one cleaner here).
pub const DEFAULT_OFFSET_MAP_BYTES: usize = 64 * 1024 * 1024;

/// A rolled, fsynced segment as the cleaner reads it.
#[derive(Debug, Clone)]
pub struct SegmentSnapshot {
    pub base_offset: i64,
    pub file: Arc<File>,
    pub size_bytes: u32,
    pub next_offset: i64,
    /// Largest record timestamp in the segment, if it holds any batch.
    pub max_timestamp_ms: Option<i64>,
}

/// What the cleaner may read of one log, taken under the log's lock.
#[derive(Debug, Clone)]
pub struct CleanableSnapshot {
    pub dir: PathBuf,
    pub config: LogConfig,
    /// Rolled segments wholly below the recovery point, in offset order.
    pub segments: Vec<SegmentSnapshot>,
    /// Base offset of the first segment not in `segments` (the active one, or the first
    /// rolled one not yet fsynced).
    pub end_offset: i64,
    /// Everything below this has been cleaned before (the checkpoint, at least the log start).
    pub first_dirty_offset: i64,
}

/// How dirty a log is, for choosing what to clean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DirtyStats {
    pub clean_bytes: u64,
    pub dirty_bytes: u64,
    /// Offset where cleaning must stop (active segment, or records younger than
    /// `min.compaction.lag.ms`).
    pub first_uncleanable_offset: i64,
    /// Largest timestamp of the first dirty batch, if there is a dirty batch.
    pub first_dirty_timestamp_ms: Option<i64>,
}

impl DirtyStats {
    /// dirty / (clean + dirty), 0 for an empty log.
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }
}

/// One segment rewritten into `<base>.cleaned`, waiting to be swapped in.
#[derive(Debug)]
pub struct CleanedSegment {
    /// The segment as read (file identity and size), to detect that it changed meanwhile.
    pub original: SegmentSnapshot,
    /// The new segment, backed by the `.cleaned` file.
    segment: Segment,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
}

/// The result of [`clean`]: cleaned segments and the new checkpoint.
#[derive(Debug)]
pub struct CleanedLog {
    pub dir: PathBuf,
    pub segments: Vec<CleanedSegment>,
    /// The new first dirty offset (where the offset map ended).
    pub cleaned_up_to_offset: i64,
    /// Segments read and recopied (changed or not).
    pub segments_read: usize,
    /// Earliest delete horizon of tombstones still in the log, so the caller can clean again
    /// when it passes even without new dirty data.
    pub next_delete_horizon_ms: Option<i64>,
    /// Distinct keys in the offset map.
    pub keys_mapped: usize,
}

/// What [`Log::install_cleaned`](crate::Log::install_cleaned) swapped in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanSummary {
    pub segments_replaced: usize,
    /// Segments (not the first) the clean left empty, deleted.
    pub segments_deleted: usize,
    /// Segments whose cleaned copy was discarded because the log changed meanwhile.
    pub segments_skipped: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
}

/// Reads the cleaner checkpoint; missing or malformed means "nothing cleaned yet" (0).
pub fn read_cleaner_checkpoint(dir: &Path) -> Result<i64, LogError> {
    match fs::read_to_string(dir.join(CLEANER_CHECKPOINT_FILE)) {
        Ok(text) => Ok(text.trim().parse::<i64>().unwrap_or_else(|_| {
            tracing::warn!(dir = %dir.display(), "cleaner checkpoint is malformed; treating the whole log as dirty");
            0
        }).max(0)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => Ok(0),
        Err(error) => Err(error.into()),
    }
}

/// Writes the cleaner checkpoint atomically.
pub fn write_cleaner_checkpoint(dir: &Path, offset: i64) -> Result<(), LogError> {
    write_atomically(
        dir,
        CLEANER_CHECKPOINT_FILE,
        format!("{offset}\n").as_bytes(),
    )?;
    Ok(())
}

/// Path of the cleaned copy of segment `base_offset`.
pub fn cleaned_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(file_name(base_offset, CLEANED_SUFFIX))
}

/// Removes what an interrupted write left behind: `.cleaned` segments of a clean and
/// `.tmp` files of [`write_atomically`] (a crash, or a full disk that failed the write).
/// The files they would have replaced are intact: the rename is the commit point.
/// Returns how many were removed.
pub fn remove_cleaner_leftovers(dir: &Path) -> Result<usize, LogError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let what = match path.extension().and_then(|extension| extension.to_str()) {
            Some(CLEANED_SUFFIX) => "a cleaned segment left by an interrupted clean",
            Some(crate::checkpoint::TEMP_EXTENSION) => {
                "a temporary file left by an interrupted write"
            }
            _ => continue,
        };
        tracing::warn!(path = %path.display(), "removing {what}");
        fs::remove_file(&path)?;
        removed += 1;
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// 128-bit hash of a key (two SipHash passes with different prefixes). Like Kafka's MD5 map,
/// the map stores only this, so its memory does not depend on key sizes.
fn key_hash(key: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        let mut hasher = DefaultHasher::new();
        (i as u8).hash(&mut hasher);
        key.hash(&mut hasher);
        chunk.copy_from_slice(&hasher.finish().to_be_bytes());
    }
    out
}

/// Key hash -> offset of the key's last record in the mapped range, bounded in entries.
struct OffsetMap {
    offsets: HashMap<[u8; 16], i64>,
    capacity: usize,
}

impl OffsetMap {
    fn new(budget_bytes: usize) -> OffsetMap {
        OffsetMap {
            offsets: HashMap::new(),
            capacity: (budget_bytes / OFFSET_MAP_ENTRY_BYTES).max(1),
        }
    }

    fn latest(&self, key: &[u8]) -> Option<i64> {
        self.offsets.get(&key_hash(key)).copied()
    }
}

/// Iterates the batches of a snapshot segment from its file.
struct BatchReader<'a> {
    segment: &'a SegmentSnapshot,
    position: u32,
}

impl<'a> BatchReader<'a> {
    fn new(segment: &'a SegmentSnapshot) -> BatchReader<'a> {
        BatchReader {
            segment,
            position: 0,
        }
    }

    /// The next batch's header and bytes, or None at the segment end.
    fn next_batch(&mut self) -> Result<Option<(BatchHeader, Vec<u8>)>, LogError> {
        if self.position >= self.segment.size_bytes {
            return Ok(None);
        }
        let remaining = self.segment.size_bytes - self.position;
        if (remaining as usize) < BATCH_HEADER_BYTES {
            return Err(LogError::CorruptBatch(format!(
                "segment {} has a torn header at {}",
                self.segment.base_offset, self.position
            )));
        }
        let mut header_bytes = [0u8; BATCH_HEADER_BYTES];
        self.segment
            .file
            .read_exact_at(&mut header_bytes, u64::from(self.position))?;
        let header = BatchHeader::parse(&header_bytes)?;
        let size = u32::try_from(header.total_size())
            .ok()
            .filter(|size| *size <= remaining)
            .ok_or_else(|| {
                LogError::CorruptBatch(format!(
                    "segment {}: batch at {} runs past the end",
                    self.segment.base_offset, self.position
                ))
            })?;
        let mut bytes = vec![0u8; size as usize];
        self.segment
            .file
            .read_exact_at(&mut bytes, u64::from(self.position))?;
        self.position += size;
        Ok(Some((header, bytes)))
    }
}

impl CleanableSnapshot {
    /// Computes dirty/clean bytes and the first uncleanable offset at `now_ms`.
    pub fn dirty_stats(&self, now_ms: i64) -> Result<DirtyStats, LogError> {
        let min_lag_ms = self.config.min_compaction_lag_ms.max(0);
        let mut first_uncleanable_offset = self.end_offset;
        for segment in &self.segments {
            // Kafka: a segment with records younger than min.compaction.lag.ms is not cleanable,
            // and neither is anything after it.
            if min_lag_ms > 0
                && segment
                    .max_timestamp_ms
                    .is_some_and(|max| max > now_ms.saturating_sub(min_lag_ms))
            {
                first_uncleanable_offset = segment.base_offset;
                break;
            }
        }
        let mut stats = DirtyStats {
            clean_bytes: 0,
            dirty_bytes: 0,
            first_uncleanable_offset,
            first_dirty_timestamp_ms: None,
        };
        for segment in &self.segments {
            if segment.base_offset >= first_uncleanable_offset {
                break;
            }
            if segment.next_offset <= self.first_dirty_offset {
                stats.clean_bytes += u64::from(segment.size_bytes);
            } else {
                stats.dirty_bytes += u64::from(segment.size_bytes);
                if stats.first_dirty_timestamp_ms.is_none() {
                    let mut reader = BatchReader::new(segment);
                    while let Some((header, _)) = reader.next_batch()? {
                        if header.last_offset() >= self.first_dirty_offset {
                            stats.first_dirty_timestamp_ms = Some(header.max_timestamp);
                            break;
                        }
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Kafka's rule: clean when the dirty ratio reaches `min.cleanable.dirty.ratio`, or the
    /// oldest dirty record is older than `max.compaction.lag.ms`, or a tombstone delete
    /// horizon (`pending_horizon_ms`) has passed.
    pub fn should_clean(
        &self,
        stats: &DirtyStats,
        now_ms: i64,
        pending_horizon_ms: Option<i64>,
    ) -> bool {
        if !self.config.cleanup_compact {
            return false;
        }
        if pending_horizon_ms.is_some_and(|horizon| horizon <= now_ms) {
            return true;
        }
        if stats.dirty_bytes == 0 {
            return false;
        }
        let overdue = stats.first_dirty_timestamp_ms.is_some_and(|timestamp| {
            self.config.max_compaction_lag_ms < i64::MAX
                && now_ms.saturating_sub(timestamp) > self.config.max_compaction_lag_ms
        });
        overdue || stats.dirty_ratio() >= self.config.min_cleanable_dirty_ratio
    }
}

/// Builds the offset map over `[first_dirty, end)`; returns where it stopped (the base of the
/// first batch whose new keys did not fit, or `end`).
fn build_offset_map(
    snapshot: &CleanableSnapshot,
    map: &mut OffsetMap,
    end: i64,
) -> Result<i64, LogError> {
    let first_dirty = snapshot.first_dirty_offset;
    for segment in &snapshot.segments {
        if segment.base_offset >= end {
            break;
        }
        if segment.next_offset <= first_dirty {
            continue;
        }
        let mut reader = BatchReader::new(segment);
        while let Some((header, bytes)) = reader.next_batch()? {
            if header.last_offset() < first_dirty || header.attributes & ATTRIBUTE_CONTROL != 0 {
                continue;
            }
            let plain = decompressed_records(&bytes, &header)?;
            let records = parse_records(&plain, &header)?;
            let mut batch_keys: Vec<([u8; 16], i64)> = Vec::with_capacity(records.len());
            for record in &records {
                let offset = header
                    .base_offset
                    .saturating_add(i64::from(record.offset_delta));
                if let (Some(key), true) = (record.key, offset >= first_dirty) {
                    batch_keys.push((key_hash(key), offset));
                }
            }
            let new_keys = batch_keys
                .iter()
                .filter(|(hash, _)| !map.offsets.contains_key(hash))
                .count();
            if map.offsets.len() + new_keys > map.capacity && !map.offsets.is_empty() {
                tracing::info!(dir = %snapshot.dir.display(), offset = header.base_offset, keys = map.offsets.len(), "offset map is full; cleaning up to here");
                return Ok(header.base_offset.max(first_dirty));
            }
            for (hash, offset) in batch_keys {
                map.offsets.insert(hash, offset);
            }
        }
    }
    Ok(end)
}

/// Producer id -> base offset of its last batch in the snapshot (header reads only).
fn last_batch_of_each_producer(
    snapshot: &CleanableSnapshot,
) -> Result<HashMap<i64, i64>, LogError> {
    let mut last = HashMap::new();
    for segment in &snapshot.segments {
        let mut position = 0u32;
        while position < segment.size_bytes {
            let mut header_bytes = [0u8; BATCH_HEADER_BYTES];
            segment
                .file
                .read_exact_at(&mut header_bytes, u64::from(position))?;
            let header = BatchHeader::parse(&header_bytes)?;
            if header.producer_id >= 0 {
                last.insert(header.producer_id, header.base_offset);
            }
            position = u32::try_from(header.total_size())
                .ok()
                .and_then(|size| position.checked_add(size))
                .filter(|end| *end <= segment.size_bytes)
                .ok_or_else(|| {
                    LogError::CorruptBatch(format!(
                        "segment {}: batch at {position} runs past the end",
                        segment.base_offset
                    ))
                })?;
        }
    }
    Ok(last)
}

/// What happened to one batch.
enum BatchOutcome {
    Unchanged,
    Dropped {
        records: u64,
    },
    Rewritten {
        bytes: Vec<u8>,
        records_removed: u64,
    },
}

/// Decides which records of one batch survive and rebuilds it if anything changes.
fn clean_batch(
    header: &BatchHeader,
    bytes: &[u8],
    map: &OffsetMap,
    now_ms: i64,
    delete_retention_ms: i64,
    next_horizon_ms: &mut Option<i64>,
    last_batch_of_producer: &HashMap<i64, i64>,
) -> Result<BatchOutcome, LogError> {
    if header.attributes & ATTRIBUTE_CONTROL != 0 {
        return Ok(BatchOutcome::Unchanged);
    }
    let plain = decompressed_records(bytes, header)?;
    let records = parse_records(&plain, header)?;
    let horizon_ms =
        (header.attributes & ATTRIBUTE_DELETE_HORIZON != 0).then_some(header.base_timestamp);
    let horizon_passed = horizon_ms.is_some_and(|horizon| horizon <= now_ms);
    let retained: Vec<RawRecord<'_>> = records
        .iter()
        .filter(|record| {
            let Some(key) = record.key else {
                // Compacted logs cannot hold keyless records (Kafka drops them as invalid).
                return false;
            };
            let offset = header
                .base_offset
                .saturating_add(i64::from(record.offset_delta));
            let is_latest = map.latest(key).is_none_or(|latest| offset >= latest);
            is_latest && !(record.value_is_null && horizon_passed)
        })
        .cloned()
        .collect();
    let removed = (records.len() - retained.len()) as u64;
    if retained.is_empty() {
        // Kafka keeps an emptied batch when it is its producer's last one, so the producer's
        // last sequence and epoch can still be rebuilt from the log (idempotence).
        let keep_for_producer = header.producer_id >= 0
            && last_batch_of_producer.get(&header.producer_id) == Some(&header.base_offset);
        if !keep_for_producer {
            return Ok(BatchOutcome::Dropped { records: removed });
        }
        if removed == 0 {
            return Ok(BatchOutcome::Unchanged);
        }
    }
    let has_tombstones = retained.iter().any(|record| record.value_is_null);
    if has_tombstones {
        let horizon = horizon_ms.unwrap_or_else(|| now_ms.saturating_add(delete_retention_ms));
        *next_horizon_ms = Some(next_horizon_ms.map_or(horizon, |next| next.min(horizon)));
    }
    let set_horizon = has_tombstones && horizon_ms.is_none();
    if removed == 0 && !set_horizon {
        return Ok(BatchOutcome::Unchanged);
    }
    let (attributes, base_timestamp) = if set_horizon {
        (
            header.attributes | ATTRIBUTE_DELETE_HORIZON,
            now_ms.saturating_add(delete_retention_ms),
        )
    } else {
        (header.attributes, header.base_timestamp)
    };
    let max_timestamp = if header.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0 {
        header.max_timestamp
    } else {
        retained
            .iter()
            .map(|record| header.base_timestamp.saturating_add(record.timestamp_delta))
            .max()
            .unwrap_or(header.max_timestamp)
    };
    let bytes = rebuild_batch(header, &retained, attributes, base_timestamp, max_timestamp)?;
    Ok(BatchOutcome::Rewritten {
        bytes,
        records_removed: removed,
    })
}

/// Recopies one segment into `<base>.cleaned`; None when nothing in it changes.
fn clean_segment(
    snapshot: &CleanableSnapshot,
    segment: &SegmentSnapshot,
    map: &OffsetMap,
    now_ms: i64,
    next_horizon_ms: &mut Option<i64>,
    last_batch_of_producer: &HashMap<i64, i64>,
) -> Result<Option<CleanedSegment>, LogError> {
    let mut kept: Vec<(BatchHeader, Vec<u8>)> = Vec::new();
    let mut changed = false;
    let mut records_removed = 0u64;
    let mut reader = BatchReader::new(segment);
    while let Some((header, bytes)) = reader.next_batch()? {
        match clean_batch(
            &header,
            &bytes,
            map,
            now_ms,
            snapshot.config.delete_retention_ms,
            next_horizon_ms,
            last_batch_of_producer,
        )? {
            BatchOutcome::Unchanged => kept.push((header, bytes)),
            BatchOutcome::Dropped { records } => {
                changed = true;
                records_removed += records;
            }
            BatchOutcome::Rewritten {
                bytes,
                records_removed: removed,
            } => {
                changed = true;
                records_removed += removed;
                kept.push((BatchHeader::parse(&bytes)?, bytes));
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    let path = cleaned_path(&snapshot.dir, segment.base_offset);
    let file = open_log_file(&path, true)?;
    file.set_len(0)?;
    let mut cleaned = Segment::empty(&snapshot.dir, segment.base_offset, file);
    for (header, bytes) in &kept {
        cleaned.append(bytes, header, snapshot.config.index_interval_bytes, now_ms)?;
    }
    cleaned.first_append_ms = None;
    cleaned.file.sync_all()?;
    Ok(Some(CleanedSegment {
        original: segment.clone(),
        bytes_before: u64::from(segment.size_bytes),
        bytes_after: u64::from(cleaned.size_bytes),
        records_removed,
        segment: cleaned,
    }))
}

/// Cleans the log described by `snapshot` (no lock needed; see module docs). Returns None
/// when there is nothing cleanable. `offset_map_bytes` bounds the offset map.
pub fn clean(
    snapshot: &CleanableSnapshot,
    now_ms: i64,
    offset_map_bytes: usize,
) -> Result<Option<CleanedLog>, LogError> {
    let stats = snapshot.dirty_stats(now_ms)?;
    let end = stats.first_uncleanable_offset;
    if snapshot
        .segments
        .first()
        .is_none_or(|first| first.base_offset >= end)
    {
        return Ok(None);
    }
    let mut map = OffsetMap::new(offset_map_bytes);
    let map_end = build_offset_map(snapshot, &mut map, end)?;
    let last_batch_of_producer = last_batch_of_each_producer(snapshot)?;
    let mut cleaned_segments = Vec::new();
    let mut next_delete_horizon_ms = None;
    let mut segments_read = 0;
    let result = (|| {
        for segment in &snapshot.segments {
            if segment.base_offset >= map_end {
                break;
            }
            segments_read += 1;
            if let Some(cleaned) = clean_segment(
                snapshot,
                segment,
                &map,
                now_ms,
                &mut next_delete_horizon_ms,
                &last_batch_of_producer,
            )? {
                cleaned_segments.push(cleaned);
            }
        }
        Ok::<(), LogError>(())
    })();
    if let Err(error) = result {
        for cleaned in &cleaned_segments {
            let _ = fs::remove_file(cleaned_path(&snapshot.dir, cleaned.original.base_offset));
        }
        return Err(error);
    }
    if !cleaned_segments.is_empty() {
        sync_dir(&snapshot.dir)?;
    }
    Ok(Some(CleanedLog {
        dir: snapshot.dir.clone(),
        segments: cleaned_segments,
        cleaned_up_to_offset: map_end.max(snapshot.first_dirty_offset),
        segments_read,
        next_delete_horizon_ms,
        keys_mapped: map.offsets.len(),
    }))
}

/// The cleaner's two steps that need the log (under the broker's lock); the fields stay
/// private to `log.rs`, these go through its crate-internal accessors.
impl crate::Log {
    /// The rolled segments wholly below the recovery point, for the cleaner to read without
    /// the lock (see `cleaner`). Cheap: clones `Arc<File>`s and reads the cleaner checkpoint.
    pub fn cleanable_snapshot(&self) -> Result<CleanableSnapshot, LogError> {
        let active_base_offset = self.log_end_offset();
        let mut segments = Vec::new();
        let mut end_offset = self
            .segments()
            .last()
            .map_or(active_base_offset, |active| active.base_offset);
        for (i, segment) in self.segments().iter().enumerate() {
            let next_base_offset = self.segments().get(i + 1).map(|next| next.base_offset);
            // Cleanable: rolled (not last) and fully below the recovery point (fsynced).
            let Some(next_base_offset) = next_base_offset else {
                break;
            };
            if next_base_offset > self.recovery_point() {
                end_offset = segment.base_offset;
                break;
            }
            segments.push(SegmentSnapshot {
                base_offset: segment.base_offset,
                file: Arc::clone(&segment.file),
                size_bytes: segment.size_bytes,
                next_offset: segment.next_offset,
                max_timestamp_ms: segment.max_timestamp.map(|max| max.timestamp),
            });
        }
        let first_dirty_offset = read_cleaner_checkpoint(self.dir())?.max(self.log_start_offset());
        Ok(CleanableSnapshot {
            dir: self.dir().to_path_buf(),
            config: self.config().clone(),
            segments,
            end_offset,
            first_dirty_offset,
        })
    }

    /// Swaps cleaned segments in (see `cleaner`): each one only if the segment it was made
    /// from is still in the log, unchanged; otherwise its `.cleaned` file is discarded. Index
    /// files are removed before the rename so a crash in between rebuilds them from the log.
    pub fn install_cleaned(&mut self, cleaned: CleanedLog) -> Result<CleanSummary, LogError> {
        let mut summary = CleanSummary::default();
        for cleaned_segment in cleaned.segments {
            let base_offset = cleaned_segment.original.base_offset;
            let cleaned_file = cleaned_path(self.dir(), base_offset);
            let position = self.segments().iter().position(|segment| {
                segment.base_offset == base_offset
                    && Arc::ptr_eq(&segment.file, &cleaned_segment.original.file)
                    && segment.size_bytes == cleaned_segment.original.size_bytes
            });
            let is_active = position.is_some_and(|i| i + 1 == self.segments().len());
            let Some(position) = position.filter(|_| !is_active) else {
                tracing::info!(dir = %self.dir().display(), segment = base_offset, "segment changed while it was cleaned; discarding the cleaned copy");
                fs::remove_file(&cleaned_file)?;
                summary.segments_skipped += 1;
                continue;
            };
            summary.segments_replaced += 1;
            summary.bytes_before += cleaned_segment.bytes_before;
            summary.bytes_after += cleaned_segment.bytes_after;
            summary.records_removed += cleaned_segment.records_removed;
            if cleaned_segment.bytes_after == 0 && position > 0 {
                // Nothing left: drop the segment instead of keeping an empty file (the gap
                // is below the recovery point). The first one stays: it holds the log start.
                fs::remove_file(&cleaned_file)?;
                Segment::delete_files(self.dir(), base_offset)?;
                sync_dir(self.dir())?;
                self.segments_mut().remove(position);
                summary.segments_deleted += 1;
                continue;
            }
            for suffix in [
                crate::segment::INDEX_SUFFIX,
                crate::segment::TIME_INDEX_SUFFIX,
            ] {
                match fs::remove_file(
                    self.dir()
                        .join(crate::segment::file_name(base_offset, suffix)),
                ) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error.into()),
                }
            }
            fs::rename(
                &cleaned_file,
                self.dir().join(crate::segment::file_name(
                    base_offset,
                    crate::segment::LOG_SUFFIX,
                )),
            )?;
            sync_dir(self.dir())?;
            let mut segment = cleaned_segment.into_segment();
            segment.indexes_dirty = true;
            segment.write_indexes()?;
            self.segments_mut()[position] = segment;
        }
        write_cleaner_checkpoint(self.dir(), cleaned.cleaned_up_to_offset)?;
        Ok(summary)
    }
}

impl CleanedSegment {
    /// The new segment (for [`Log::install_cleaned`](crate::Log::install_cleaned)).
    pub(crate) fn into_segment(self) -> Segment {
        self.segment
    }
}

#[cfg(test)]
mod tests;
