//! `Log`: the segments of one partition, appends, reads, timestamp lookups, group-commit
//! durability and checkpoints.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

use crate::batch::{rewrite_header, validate_for_append, BatchHeader, BATCH_HEADER_BYTES};
use crate::checkpoint::{
    read_log_start_offset, read_recovery_point, sync_dir, write_log_start_offset,
    write_recovery_point,
};
use crate::leader_epoch::{EpochEntry, LeaderEpochCache};
use crate::producer_state::{load_snapshot, write_snapshot, ProducerStateManager};
use crate::recovery::{load_segment, RecoveryReport};
use crate::segment::{parse_log_file_name, Segment};
use crate::LogError;

/// Per-partition log settings (Kafka topic config names in the docs).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Roll when the active segment would exceed this (`segment.bytes`).
    pub segment_bytes: u64,
    /// Roll when the active segment's first append is older than this (`segment.ms`). The
    /// age counts from the first append this process made to the segment (`now_ms` given to
    /// `append`), so a segment reopened after a restart starts a new period.
    pub segment_ms: i64,
    /// Bytes of log between offset index entries (`index.interval.bytes`).
    pub index_interval_bytes: u32,
    /// Largest accepted batch (`max.message.bytes`).
    pub max_batch_bytes: usize,
    /// Delete segments whose newest record is older than this; -1 keeps them (`retention.ms`).
    pub retention_ms: i64,
    /// Delete the oldest segments while the log is larger than this; -1: no limit
    /// (`retention.bytes`).
    pub retention_bytes: i64,
    /// `cleanup.policy` contains `delete`: retention applies.
    pub cleanup_delete: bool,
    /// `cleanup.policy` contains `compact`: the cleaner keeps the last record per key, and
    /// keyless records are refused.
    pub cleanup_compact: bool,
    /// How long a tombstone survives once compaction has reached it (`delete.retention.ms`).
    pub delete_retention_ms: i64,
    /// Records younger than this are not compacted (`min.compaction.lag.ms`).
    pub min_compaction_lag_ms: i64,
    /// A record may stay uncompacted at most this long (`max.compaction.lag.ms`).
    pub max_compaction_lag_ms: i64,
    /// Share of the log that must be dirty before it is compacted (`min.cleanable.dirty.ratio`).
    pub min_cleanable_dirty_ratio: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            index_interval_bytes: 4096,
            max_batch_bytes: 1_048_588,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            cleanup_delete: true,
            cleanup_compact: false,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_dirty_ratio: 0.5,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub records_count: i32,
    pub batch_bytes: usize,
    /// The batch was a retry of an idempotent producer's batch already in the log: nothing
    /// was written and the offsets are those of the original.
    pub duplicate: bool,
}

/// A record timestamp and its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub timestamp: i64,
    pub offset: i64,
}

/// Whole batches of one segment file to copy out (or `sendfile`) outside the broker's lock.
#[derive(Debug, Clone)]
pub struct ReadSlice {
    pub file: Arc<File>,
    pub position: u64,
    pub len: usize,
    /// Base offset of the first batch in the slice.
    pub first_offset: i64,
    /// Offset after the last batch in the slice.
    pub next_offset: i64,
}

impl ReadSlice {
    /// Copies the slice with one positional read.
    pub fn read_to_vec(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; self.len];
        self.file.read_exact_at(&mut bytes, self.position)?;
        Ok(bytes)
    }
}

/// Files to fsync so that everything below `offset_end` is durable (group commit).
#[derive(Debug, Clone)]
pub struct SyncTarget {
    files: Vec<Arc<File>>,
    /// A directory whose entries (new segment files) must be made durable too.
    directory: Option<PathBuf>,
    pub offset_end: i64,
    /// [`Log::truncations`] when the target was taken: a truncation in between makes
    /// `offset_end` describe other data, which [`Log::mark_synced`] then ignores.
    pub generation: u64,
}

impl SyncTarget {
    /// fsyncs every file (data only) and the directory if segments were created.
    pub fn sync(&self) -> std::io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if let Some(directory) = &self.directory {
            File::open(directory)?.sync_all()?;
        }
        Ok(())
    }

    /// True when syncing would make more than `synced` offsets durable.
    pub fn is_needed(&self, synced: i64) -> bool {
        self.offset_end > synced
    }
}

/// The segmented log of one partition. Not internally synchronized: the broker wraps it in a
/// mutex and does the expensive I/O (reads, fsync) outside through `ReadSlice`/`SyncTarget`.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Sorted by base offset, never empty; the last one is active. Contiguous except for gaps
    /// the cleaner leaves below the recovery point and follower rolls at a batch beyond the
    /// log end (a compacted leader's gap).
    segments: Vec<Segment>,
    synced_offset: i64,
    recovery_point: i64,
    /// Rolled segments that may hold unsynced data: (offset end, file).
    unsynced_rolled_segments: Vec<(i64, Arc<File>)>,
    /// Base offset of the newest segment file whose directory entry is not yet fsynced.
    unsynced_directory_base_offset: Option<i64>,
    recovery_report: RecoveryReport,
    /// First offset readable; may sit inside the first segment after DeleteRecords. Never
    /// below the first segment's base (see `log_start_offset()`), checkpointed in
    /// `log-start-offset` when advanced.
    log_start_offset: i64,
    /// Idempotent producers' epochs and last batches (duplicate and sequence checks).
    producer_state: ProducerStateManager,
    /// Log end offset covered by the newest producer snapshot written or loaded.
    producer_snapshot_offset: Option<i64>,
    /// Times the log was cut back by [`Log::truncate_to`] (see [`SyncTarget::generation`]).
    truncations: u64,
    /// First offset of every leader epoch in the log (OffsetForLeaderEpoch).
    leader_epochs: LeaderEpochCache,
    /// Why the log refuses appends until the broker restarts: a failed write could not be
    /// cut back (the segment may end in a torn batch) or an fsync failed (the kernel may
    /// have dropped unsynced pages). Reads keep working; recovery at the next open repairs it.
    failed: Option<String>,
    /// The partition's high watermark as the broker last set it (None until set or loaded),
    /// checkpointed in `high-watermark-checkpoint` (see `follower.rs`).
    high_watermark: Option<i64>,
    /// What `high-watermark-checkpoint` said when the log was opened (unclamped).
    high_watermark_at_open: Option<i64>,
    /// The value the checkpoint file holds now, so unchanged values are not rewritten.
    high_watermark_written: Option<i64>,
}

impl Log {
    /// Opens or creates the partition directory and recovers it (see crate docs).
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log, LogError> {
        fs::create_dir_all(dir)?;
        crate::retention::remove_leftover_deleted_files(dir)?;
        crate::cleaner::remove_cleaner_leftovers(dir)?;
        // Everything the cleaner has cleaned was below the recovery point when it did, so its
        // checkpoint is a floor too: a lost recovery-point file must not make recovery
        // mistake the cleaner's offset gaps for corruption.
        let recovery_point =
            read_recovery_point(dir)?.max(crate::cleaner::read_cleaner_checkpoint(dir)?);
        let mut report = RecoveryReport::default();
        let mut segments = load_segments(dir, recovery_point, &config, &mut report)?;
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0)?);
        }
        if let Some(active) = segments.last_mut().filter(|segment| !segment.is_empty()) {
            // `segment.ms` counts from the first append; across a restart that is the
            // active file's creation time (before: it restarted at the first append after
            // every restart, so a broker restarted more often than segment.ms never rolled).
            active.first_append_ms = file_created_ms(&active.file);
        }
        let mut log = Log {
            dir: dir.to_path_buf(),
            config,
            segments,
            synced_offset: 0,
            recovery_point: 0,
            unsynced_rolled_segments: Vec::new(),
            unsynced_directory_base_offset: None,
            recovery_report: report,
            log_start_offset: 0,
            producer_state: ProducerStateManager::new(),
            producer_snapshot_offset: None,
            leader_epochs: LeaderEpochCache::empty(dir),
            truncations: 0,
            failed: None,
            high_watermark: None,
            high_watermark_at_open: None,
            high_watermark_written: None,
        };
        log.load_high_watermark();
        log.log_start_offset = read_log_start_offset(dir)?
            .unwrap_or(0)
            .min(log.log_end_offset());
        log.load_producer_state()?;
        log.load_leader_epochs()?;
        log.finish_recovery(recovery_point)?;
        Ok(log)
    }

    /// Restores the producer state: the newest snapshot at or below the recovered log end
    /// (later ones describe a truncated tail and are deleted), then every batch header after
    /// it up to the log end. Without a snapshot, from the log start.
    fn load_producer_state(&mut self) -> Result<(), LogError> {
        let log_end_offset = self.log_end_offset();
        let loaded = load_snapshot(&self.dir, log_end_offset)?;
        self.recovery_report.producer_snapshots_deleted =
            loaded.deleted_beyond_log_end + loaded.corrupt;
        let start_offset = match loaded.state {
            Some((offset, state)) => {
                self.producer_state = state;
                self.producer_snapshot_offset = Some(offset);
                self.recovery_report.producer_snapshot_offset = Some(offset);
                offset
            }
            None => self.log_start_offset(),
        };
        self.producer_state.remove_below(self.log_start_offset());
        let mut batches_replayed = 0u64;
        for segment in self
            .segments
            .iter()
            .filter(|segment| segment.next_offset > start_offset)
        {
            let Some((mut position, _)) = segment.find_batch_ending_at_or_after(start_offset)?
            else {
                continue;
            };
            while position < segment.size_bytes {
                let header = segment.read_header_at(position)?;
                if header.producer_id >= 0 {
                    self.producer_state.update(&header);
                }
                batches_replayed += 1;
                position =
                    position.saturating_add(u32::try_from(header.total_size()).unwrap_or(u32::MAX));
            }
        }
        self.recovery_report.producer_batches_replayed = batches_replayed;
        self.recovery_report.producers_loaded = self.producer_state.producer_count();
        Ok(())
    }

    /// Why appends are refused (see [`Log::mark_failed`]), if they are.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Refuses every later append with `LogError::Io` (KAFKA_STORAGE_ERROR) instead of
    /// risking a write after an unknown tail; used when an fsync fails. Only a restart (with
    /// recovery) clears it. The first reason is kept.
    pub fn mark_failed(&mut self, reason: impl Into<String>) {
        if self.failed.is_none() {
            self.failed = Some(reason.into());
        }
    }

    /// Idempotent producers known to this partition (tests, metrics).
    pub fn producer_state(&self) -> &ProducerStateManager {
        &self.producer_state
    }

    /// Forgets producers idle for `expiration_ms` (`producer.id.expiration.ms`); returns
    /// how many.
    pub fn remove_expired_producers(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        self.producer_state.remove_expired(now_ms, expiration_ms)
    }

    /// Makes everything recovery kept durable and checkpoints it, so the next open starts
    /// from the log end.
    /// Loads the leader epoch cache and drops entries past the recovered log end; a
    /// missing or damaged file (a log written before Sluice kept one) is rebuilt from the
    /// batch headers, once.
    fn load_leader_epochs(&mut self) -> Result<(), LogError> {
        let log_end_offset = self.log_end_offset();
        if let Some(mut cache) = LeaderEpochCache::load(&self.dir)? {
            // An entry starting exactly at the log end stays: a leader records its epoch
            // there before it has data of it (`assign_epoch_start`), and OffsetForLeaderEpoch
            // for the epoch before must keep ending there after a restart.
            if cache.truncate_from_end(log_end_offset.saturating_add(1)) {
                cache.persist()?;
            }
            self.leader_epochs = cache;
            return Ok(());
        }
        let mut cache = LeaderEpochCache::empty(&self.dir);
        let mut scanned = 0u64;
        let log_start_offset = self.log_start_offset();
        // Epochs never decrease along a log: when the first and the last batch share one,
        // every batch has it (every log of a single-node Sluice before this file existed),
        // and two header reads replace a scan of the whole log.
        let first = self
            .segments
            .iter()
            .find(|segment| segment.next_offset > log_start_offset)
            .map(|segment| segment.find_batch_ending_at_or_after(log_start_offset))
            .transpose()?
            .flatten();
        let last = self
            .segments
            .iter()
            .rev()
            .find(|segment| !segment.is_empty())
            .map(|segment| segment.find_batch_ending_at_or_after(segment.next_offset - 1))
            .transpose()?
            .flatten();
        let uniform = match (&first, &last) {
            (Some((_, first)), Some((_, last))) => (first.partition_leader_epoch
                == last.partition_leader_epoch)
                .then_some((first.partition_leader_epoch, first.base_offset)),
            _ => None,
        };
        if let Some((epoch, base_offset)) = uniform {
            cache.assign(epoch, base_offset);
            scanned = 2;
        } else {
            for segment in &self.segments {
                let mut position = match segment.find_batch_ending_at_or_after(log_start_offset)? {
                    Some((position, _)) => position,
                    None => continue,
                };
                while position < segment.size_bytes {
                    let header = segment.read_header_at(position)?;
                    cache.assign(header.partition_leader_epoch, header.base_offset);
                    scanned += 1;
                    position = position
                        .saturating_add(u32::try_from(header.total_size()).unwrap_or(u32::MAX));
                }
            }
        }
        // A new, empty log needs no file yet (the first append writes it): creating a
        // topic of many partitions costs no extra fsyncs.
        let damaged = self.dir.join(crate::LEADER_EPOCH_CHECKPOINT_FILE).exists();
        if !cache.entries().is_empty() || damaged {
            cache.persist()?;
        }
        if scanned > 0 {
            tracing::info!(dir = %self.dir.display(), batches = scanned, epochs = cache.entries().len(), "rebuilt the leader epoch cache from the log");
        }
        self.recovery_report.leader_epoch_batches_scanned = scanned;
        self.leader_epochs = cache;
        Ok(())
    }

    /// The leader epochs of this log and where each starts, oldest first.
    pub fn leader_epochs(&self) -> &[EpochEntry] {
        self.leader_epochs.entries()
    }

    /// OffsetForLeaderEpoch for this log: the largest epoch at most `epoch` and the
    /// offset where it ends (see [`LeaderEpochCache::end_offset_for`]).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.leader_epochs
            .end_offset_for(epoch, self.log_end_offset())
    }

    fn finish_recovery(&mut self, recovery_point: i64) -> Result<(), LogError> {
        let log_end_offset = self.log_end_offset();
        for segment in &self.segments {
            if segment.next_offset > recovery_point || segment.is_empty() {
                segment.file.sync_all()?;
            }
        }
        sync_dir(&self.dir)?;
        self.synced_offset = log_end_offset;
        self.recovery_point = recovery_point
            .max(self.log_start_offset())
            .min(log_end_offset);
        self.recovery_report.segments_loaded = self.segments.len();
        tracing::debug!(dir = %self.dir.display(), log_start_offset = self.log_start_offset(), log_end_offset, report = ?self.recovery_report, "log opened");
        self.checkpoint()
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What recovery did when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery_report
    }

    /// First readable offset: the DeleteRecords start if it is inside the first segment,
    /// else the first segment's base offset.
    pub fn log_start_offset(&self) -> i64 {
        self.segments
            .first()
            .map_or(0, |segment| segment.base_offset)
            .max(self.log_start_offset)
    }

    /// The next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.segments
            .last()
            .map_or(0, |segment| segment.next_offset)
    }

    /// Offset below which everything is checkpointed as fsynced.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active_segment(&mut self) -> Result<&mut Segment, LogError> {
        self.segments
            .last_mut()
            .ok_or_else(|| LogError::Io(std::io::Error::other("log has no segment")))
    }

    /// Validates one RecordBatch v2, assigns offsets from the log end, stamps the leader
    /// epoch, rolls if needed and appends it with one write (no fsync). `batch` is rewritten
    /// in place with its offset and epoch too; see [`Log::append_batch`] for a shared buffer.
    pub fn append(
        &mut self,
        batch: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let info = self.append_batch(batch, leader_epoch, now_ms)?;
        if !info.duplicate {
            rewrite_header(batch, info.base_offset, leader_epoch);
        }
        Ok(info)
    }

    /// [`Log::append`] without touching `batch`: baseOffset and partitionLeaderEpoch (both
    /// outside the CRC) are rewritten in a copy of the 61-byte header on the stack, which
    /// is written together with the rest of the batch, straight from the caller's buffer
    /// (the produce request), by one vectored write.
    pub fn append_batch(
        &mut self,
        batch: &[u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        if let Some(reason) = &self.failed {
            return Err(LogError::Io(std::io::Error::other(format!(
                "log {} refuses appends until restart: {reason}",
                self.dir.display()
            ))));
        }
        let mut header = validate_for_append(batch, self.config.max_batch_bytes)?;
        if header.producer_id >= 0 {
            if let Some(original) = self.producer_state.check(&header)? {
                tracing::debug!(dir = %self.dir.display(), producer_id = header.producer_id, base_sequence = header.base_sequence, base_offset = original.first_offset, "duplicate batch of an idempotent producer; not written");
                return Ok(AppendInfo {
                    base_offset: original.first_offset,
                    last_offset: original.last_offset,
                    max_timestamp: original.max_timestamp,
                    records_count: header.records_count,
                    batch_bytes: 0,
                    duplicate: true,
                });
            }
        }
        let base_offset = self.log_end_offset();
        let last_offset = base_offset
            .checked_add(i64::from(header.last_offset_delta))
            .ok_or_else(|| LogError::InvalidBatch("offsets overflow i64".to_string()))?;
        self.maybe_roll(batch.len(), last_offset, base_offset, now_ms)?;
        let (head, body) = batch.split_at(BATCH_HEADER_BYTES.min(batch.len()));
        let mut head_rewritten = [0u8; BATCH_HEADER_BYTES];
        head_rewritten.copy_from_slice(
            head.get(..BATCH_HEADER_BYTES).ok_or_else(|| {
                LogError::CorruptBatch("batch shorter than its header".to_string())
            })?,
        );
        rewrite_header(&mut head_rewritten, base_offset, leader_epoch);
        header.base_offset = base_offset;
        header.partition_leader_epoch = leader_epoch;
        self.write_placed_batch(&header, last_offset, |segment, index_interval_bytes| {
            segment.append_parts(&head_rewritten, body, &header, index_interval_bytes, now_ms)
        })?;
        Ok(AppendInfo {
            base_offset,
            last_offset,
            max_timestamp: header.max_timestamp,
            records_count: header.records_count,
            batch_bytes: batch.len(),
            duplicate: false,
        })
    }

    /// What every append shares once the batch is validated, placed (`header` has its final
    /// base offset and epoch) and the active segment rolled: the leader epoch entry it opens,
    /// durable before the batch is (the file must never lack the epoch of data on disk; an
    /// entry past the end after a crash is dropped at open), the write, and the producer
    /// state. A failed write is cut back by the segment; if it could not be, the log is
    /// marked failed, since a torn tail the file length keeps would make a restart see
    /// garbage after acknowledged data.
    pub(crate) fn write_placed_batch(
        &mut self,
        header: &BatchHeader,
        last_offset: i64,
        write: impl FnOnce(&mut Segment, u32) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let base_offset = header.base_offset;
        if self
            .leader_epochs
            .assign(header.partition_leader_epoch, base_offset)
        {
            if let Err(error) = self.leader_epochs.persist() {
                self.leader_epochs.truncate_from_end(base_offset);
                return Err(error);
            }
        }
        let index_interval_bytes = self.config.index_interval_bytes;
        let segment = self.active_segment()?;
        if let Err(error) = write(segment, index_interval_bytes) {
            if let Err(reason) = segment.ensure_committed_length() {
                let reason = format!("a failed write ({error}) could not be cut back: {reason}");
                tracing::error!(dir = %self.dir.display(), %reason, "log marked failed");
                self.mark_failed(reason);
            }
            return Err(error);
        }
        debug_assert_eq!(self.log_end_offset(), last_offset + 1);
        if header.producer_id >= 0 {
            self.producer_state.update(header);
        }
        Ok(())
    }

    fn should_roll(
        &self,
        active: &Segment,
        batch_bytes: usize,
        last_offset: i64,
        now_ms: i64,
    ) -> bool {
        let offsets_overflow = active.relative_offset(last_offset).is_none();
        if active.is_empty() {
            // Only a follower's batch after a huge forward gap can overflow an empty
            // segment's relative offsets.
            return offsets_overflow;
        }
        let size_after_bytes = u64::from(active.size_bytes).saturating_add(batch_bytes as u64);
        let too_big =
            size_after_bytes > self.config.segment_bytes || size_after_bytes > u64::from(u32::MAX);
        let too_old = active.first_append_ms.is_some_and(|first_append_ms| {
            now_ms.saturating_sub(first_append_ms) >= self.config.segment_ms
        });
        too_big || too_old || offsets_overflow
    }

    /// Rolls to a new segment starting at `roll_offset` (the batch's base offset: the log
    /// end for a leader append, possibly beyond it after a follower's forward gap) when the
    /// batch does not fit the active segment.
    fn maybe_roll(
        &mut self,
        batch_bytes: usize,
        last_offset: i64,
        roll_offset: i64,
        now_ms: i64,
    ) -> Result<(), LogError> {
        let Some(active) = self.segments.last() else {
            return Err(LogError::Io(std::io::Error::other("log has no segment")));
        };
        if !self.should_roll(active, batch_bytes, last_offset, now_ms) {
            return Ok(());
        }
        let base_offset = roll_offset.max(active.next_offset);
        let rolled = (active.next_offset, Arc::clone(&active.file));
        let segment = Segment::create(&self.dir, base_offset).map_err(|error| {
            Segment::remove_failed_create(&self.dir, base_offset);
            roll_error(error)
        })?;
        tracing::debug!(dir = %self.dir.display(), segment = base_offset, "rolled to a new segment");
        self.unsynced_rolled_segments.push(rolled);
        self.unsynced_directory_base_offset = Some(base_offset);
        self.segments.push(segment);
        Ok(())
    }

    fn out_of_range(&self, offset: i64) -> LogError {
        LogError::OffsetOutOfRange {
            offset,
            log_start_offset: self.log_start_offset(),
            log_end_offset: self.log_end_offset(),
        }
    }

    /// Index of the segment holding `offset` (which must be < log end).
    fn segment_index_for(&self, offset: i64) -> usize {
        let count = self
            .segments
            .partition_point(|segment| segment.base_offset <= offset);
        let mut index = count.saturating_sub(1);
        // A read starting at the end of a segment (or in a compaction gap after its last
        // batch, or in a segment the cleaner emptied) continues in the next one.
        while index + 1 < self.segments.len()
            && (self.segments[index].next_offset <= offset || self.segments[index].is_empty())
        {
            index += 1;
        }
        index
    }

    /// Locates whole batches for a fetch at `offset` (see crate docs): the batch containing
    /// `offset`, then more whole batches up to `max_bytes`, never at or past
    /// `max_offset_exclusive`, within one segment.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset_exclusive: i64,
    ) -> Result<Option<ReadSlice>, LogError> {
        if offset < self.log_start_offset() || offset > self.log_end_offset() {
            return Err(self.out_of_range(offset));
        }
        if offset == self.log_end_offset() || offset >= max_offset_exclusive {
            return Ok(None);
        }
        let segment = &self.segments[self.segment_index_for(offset)];
        let Some((position, header)) = segment.find_batch_ending_at_or_after(offset)? else {
            debug_assert!(false, "offset {offset} below the log end has no batch");
            return Ok(None);
        };
        let (end_position, end_offset) = segment.position_of_offset_end(max_offset_exclusive)?;
        let max_bytes = u32::try_from(max_bytes).unwrap_or(u32::MAX);
        let limit = position.saturating_add(max_bytes);
        let (slice_end, next_offset) = if end_position <= limit {
            (end_position, end_offset)
        } else {
            match segment.last_boundary_within(position, header.base_offset, limit)? {
                (boundary, _) if boundary == position => {
                    let first_batch_end = position
                        .saturating_add(u32::try_from(header.total_size()).unwrap_or(u32::MAX));
                    (first_batch_end, header.next_offset())
                }
                found => found,
            }
        };
        debug_assert!(slice_end > position && slice_end <= segment.size_bytes);
        Ok(Some(ReadSlice {
            file: Arc::clone(&segment.file),
            position: u64::from(position),
            len: (slice_end - position) as usize,
            first_offset: header.base_offset,
            next_offset,
        }))
    }

    /// Largest batch maxTimestamp in the log and the base offset of the first batch carrying
    /// it. For the exact record offset (ListOffsets MAX_TIMESTAMP),
    /// `find_offset_by_timestamp(max.timestamp)` decodes that batch.
    pub fn max_timestamp(&self) -> Option<TimestampOffset> {
        let mut max: Option<TimestampOffset> = None;
        for candidate in self
            .segments
            .iter()
            .filter_map(|segment| segment.max_timestamp)
        {
            if max.is_none_or(|max| candidate.timestamp > max.timestamp) {
                max = Some(candidate);
            }
        }
        max
    }

    /// First offset at or after the log start whose record timestamp is >= `timestamp_ms`,
    /// and that timestamp.
    pub fn find_offset_by_timestamp(
        &self,
        timestamp_ms: i64,
    ) -> Result<Option<TimestampOffset>, LogError> {
        for segment in &self.segments {
            if segment
                .max_timestamp
                .is_none_or(|max| max.timestamp < timestamp_ms)
            {
                continue;
            }
            if let Some(found) = find_in_segment(segment, timestamp_ms, self.log_start_offset())? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Files to fsync to make everything up to the current log end durable. Cheap.
    pub fn sync_target(&self) -> SyncTarget {
        let mut files: Vec<Arc<File>> = self
            .unsynced_rolled_segments
            .iter()
            .map(|(_, file)| Arc::clone(file))
            .collect();
        if let Some(active) = self.segments.last() {
            files.push(Arc::clone(&active.file));
        }
        SyncTarget {
            files,
            directory: self
                .unsynced_directory_base_offset
                .map(|_| self.dir.clone()),
            offset_end: self.log_end_offset(),
            generation: self.truncations,
        }
    }

    /// Records that everything below `offset_end` is on disk (after `SyncTarget::sync` of
    /// a target taken at `generation`; stale after a truncation, then ignored).
    pub fn mark_synced(&mut self, offset_end: i64, generation: u64) {
        if generation != self.truncations {
            return;
        }
        if self.failed.is_some() {
            // After a failed fsync a later successful one proves nothing (the kernel may
            // have dropped the pages): the recovery point stays, so a restart checks the tail.
            return;
        }
        let offset_end = offset_end.min(self.log_end_offset());
        if offset_end <= self.synced_offset {
            return;
        }
        self.synced_offset = offset_end;
        self.unsynced_rolled_segments
            .retain(|(segment_offset_end, _)| *segment_offset_end > offset_end);
        if self
            .unsynced_directory_base_offset
            .is_some_and(|base_offset| offset_end > base_offset)
        {
            self.unsynced_directory_base_offset = None;
        }
    }

    /// Everything below this offset is known to be on disk.
    pub fn synced_offset(&self) -> i64 {
        self.synced_offset
    }

    /// Writes changed index files and the recovery point (= synced offset), atomically.
    pub fn checkpoint(&mut self) -> Result<(), LogError> {
        for segment in &mut self.segments {
            segment.write_indexes()?;
        }
        write_recovery_point(&self.dir, self.synced_offset)?;
        self.recovery_point = self.synced_offset;
        if self
            .leader_epochs
            .truncate_from_start(self.log_start_offset())
        {
            self.leader_epochs.persist()?;
        }
        self.checkpoint_high_watermark()?;
        self.snapshot_producer_state()
    }

    /// Writes a producer state snapshot at the log end when it moved since the last one
    /// (the newest two are kept: a crash may lose the tail the newest one covers).
    ///
    /// Written even when no idempotent producer is known: the (tiny) empty snapshot tells the
    /// next open that nothing below its offset needs replaying. Without it every open read
    /// the header of every batch from the log start (minutes for a 10 GiB log).
    fn snapshot_producer_state(&mut self) -> Result<(), LogError> {
        let log_end_offset = self.log_end_offset();
        if self.producer_snapshot_offset == Some(log_end_offset) {
            return Ok(());
        }
        write_snapshot(&self.dir, log_end_offset, &self.producer_state)?;
        self.producer_snapshot_offset = Some(log_end_offset);
        Ok(())
    }

    /// fsyncs everything, marks it synced and checkpoints (clean shutdown).
    pub fn flush(&mut self) -> Result<(), LogError> {
        let target = self.sync_target();
        target.sync()?;
        sync_dir(&self.dir)?;
        self.mark_synced(target.offset_end, target.generation);
        self.checkpoint()
    }

    /// Cuts the log back so that nothing at or after `offset` remains (Kafka's
    /// `truncateTo`: a follower dropping what diverges from a new leader's log). The cut
    /// falls at the start of the batch containing `offset`, so the new log end may be
    /// below `offset`; it is returned. Later segments are deleted, the producer state is
    /// reloaded from the newest snapshot at or below the new end, leader epochs past it are
    /// dropped, and the recovery point is checkpointed. An `offset` at or past the log end
    /// cuts no data (only leader epochs starting at or after it are dropped); one below the
    /// log start empties the log to start there ([`Log::reset_to`]).
    pub fn truncate_to(&mut self, offset: i64) -> Result<i64, LogError> {
        if offset >= self.log_end_offset() {
            // No data to cut, but an epoch this replica started as leader at its log end
            // (`assign_epoch_start`) conflicts with the new leader's batches that will
            // follow there: drop it, as Kafka's `truncateTo` does.
            if self.leader_epochs.truncate_from_end(offset) {
                self.leader_epochs.persist()?;
            }
            return Ok(self.log_end_offset());
        }
        if offset < self.log_start_offset() {
            self.reset_to(offset)?;
            return Ok(offset);
        }
        self.truncations += 1;
        let mut removed = Vec::new();
        while self.segments.len() > 1
            && self
                .segments
                .last()
                .is_some_and(|segment| segment.base_offset >= offset)
        {
            if let Some(segment) = self.segments.pop() {
                removed.push(segment.base_offset);
            }
        }
        let active = self.active_segment()?;
        if let Some((position, header)) = active.find_batch_ending_at_or_after(offset)? {
            active.truncate_to(position, header.base_offset)?;
        }
        for base_offset in removed {
            Segment::delete_files(&self.dir, base_offset)?;
        }
        self.after_truncation()?;
        Ok(self.log_end_offset())
    }

    /// Empties the log and makes `offset` its start and end (Kafka's
    /// `truncateFullyAndStartAt`: a follower whose log has nothing in common with the
    /// leader's, or is entirely below the leader's log start).
    pub fn reset_to(&mut self, offset: i64) -> Result<(), LogError> {
        if offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset(),
                log_end_offset: self.log_end_offset(),
            });
        }
        self.truncations += 1;
        let fresh = Segment::create(&self.dir, offset)
            .inspect_err(|_| Segment::remove_failed_create(&self.dir, offset))?;
        let old: Vec<i64> = self
            .segments
            .drain(..)
            .map(|segment| segment.base_offset)
            .filter(|base_offset| *base_offset != offset)
            .collect();
        self.segments.push(fresh);
        for base_offset in old {
            Segment::delete_files(&self.dir, base_offset)?;
        }
        write_log_start_offset(&self.dir, offset)?;
        self.log_start_offset = offset;
        for snapshot in crate::producer_state::list_snapshots(&self.dir)? {
            match fs::remove_file(
                self.dir
                    .join(crate::producer_state::snapshot_file_name(snapshot)),
            ) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.leader_epochs = LeaderEpochCache::empty(&self.dir);
        self.leader_epochs.persist()?;
        self.after_truncation()
    }

    /// What every cut-back shares: durable directory, nothing unsynced beyond the new end,
    /// producer state and leader epochs matching the remaining batches, and a checkpoint.
    fn after_truncation(&mut self) -> Result<(), LogError> {
        sync_dir(&self.dir)?;
        let log_end_offset = self.log_end_offset();
        // Deleted segments need no fsync, the cut one was fsynced by the cut; rolled ones
        // that remain still do. The directory (creations, deletions) was just synced.
        self.unsynced_rolled_segments
            .retain(|(segment_offset_end, _)| *segment_offset_end <= log_end_offset);
        self.unsynced_directory_base_offset = None;
        self.synced_offset = self.synced_offset.min(log_end_offset);
        self.recovery_point = self.recovery_point.min(log_end_offset);
        self.producer_state = ProducerStateManager::new();
        self.producer_snapshot_offset = None;
        self.clamp_high_watermark();
        self.load_producer_state()?;
        if self.leader_epochs.truncate_from_end(log_end_offset) {
            self.leader_epochs.persist()?;
        }
        write_recovery_point(&self.dir, self.recovery_point)?;
        for segment in &mut self.segments {
            segment.write_indexes()?;
        }
        tracing::info!(dir = %self.dir.display(), log_end_offset, "log truncated");
        Ok(())
    }

    /// The segments, oldest first (retention and the cleaner decide over them).
    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Rolls to a new empty active segment at the log end, unless the active one is empty.
    pub(crate) fn roll(&mut self) -> Result<(), LogError> {
        let Some(active) = self.segments.last() else {
            return Err(LogError::Io(std::io::Error::other("log has no segment")));
        };
        if active.is_empty() {
            return Ok(());
        }
        let base_offset = active.next_offset;
        let rolled = (active.next_offset, Arc::clone(&active.file));
        let segment = Segment::create(&self.dir, base_offset).map_err(|error| {
            Segment::remove_failed_create(&self.dir, base_offset);
            roll_error(error)
        })?;
        tracing::debug!(dir = %self.dir.display(), segment = base_offset, "rolled to a new segment for retention");
        self.unsynced_rolled_segments.push(rolled);
        self.unsynced_directory_base_offset = Some(base_offset);
        self.segments.push(segment);
        Ok(())
    }

    /// Takes the `count` oldest segments out of the log (never the last one); the log start
    /// moves up to the first remaining segment. The caller deletes their files.
    pub(crate) fn take_leading_segments(&mut self, count: usize) -> Vec<Segment> {
        let count = count.min(self.segments.len().saturating_sub(1));
        let taken: Vec<Segment> = self.segments.drain(..count).collect();
        self.log_start_offset = self.log_start_offset();
        self.forget_producers_below_log_start();
        taken
    }

    /// Sets the in-memory log start offset (already checkpointed by the caller).
    pub(crate) fn set_log_start_offset(&mut self, log_start_offset: i64) {
        self.log_start_offset = log_start_offset;
        self.forget_producers_below_log_start();
    }

    /// Producers whose last batch is below the log start are forgotten, as Kafka does when
    /// retention or DeleteRecords moves the start: their state described deleted data (an
    /// active producer that comes back is handled like an expired one).
    fn forget_producers_below_log_start(&mut self) {
        let log_start_offset = self.log_start_offset();
        self.producer_state.remove_below(log_start_offset);
    }

    /// The segments, for the cleaner to swap a cleaned one in (or drop an emptied one).
    pub(crate) fn segments_mut(&mut self) -> &mut Vec<Segment> {
        &mut self.segments
    }

    /// Deletes the partition directory (topic deletion).
    pub fn delete(self) -> Result<(), LogError> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}

/// When `file` was created (its modification time where the file system keeps no birth
/// time), in milliseconds since the epoch.
fn file_created_ms(file: &File) -> Option<i64> {
    let metadata = file.metadata().ok()?;
    let time = metadata.created().or_else(|_| metadata.modified()).ok()?;
    let since_epoch = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since_epoch.as_millis()).ok()
}

/// Lists segment base offsets in `dir`, sorted.
/// Says that a segment roll failed (the log is unchanged and still appends to the old
/// active segment once space returns).
fn roll_error(error: LogError) -> LogError {
    match error {
        LogError::Io(io) => LogError::Io(std::io::Error::new(
            io.kind(),
            format!("could not roll to a new segment: {io}"),
        )),
        other => other,
    }
}

fn segment_base_offsets(dir: &Path) -> Result<Vec<i64>, LogError> {
    let mut base_offsets = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(base_offset) = entry.file_name().to_str().and_then(parse_log_file_name) {
            base_offsets.push(base_offset);
        }
    }
    base_offsets.sort_unstable();
    Ok(base_offsets)
}

/// Loads every segment in order; after a truncation or a gap, the later segments are deleted.
fn load_segments(
    dir: &Path,
    recovery_point: i64,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<Vec<Segment>, LogError> {
    let base_offsets = segment_base_offsets(dir)?;
    let mut segments: Vec<Segment> = Vec::with_capacity(base_offsets.len());
    for (i, &base_offset) in base_offsets.iter().enumerate() {
        let previous_end = segments.last().map(|segment| segment.next_offset);
        // Segments never overlap. A forward gap between them is left by the cleaner (below
        // the recovery point) or by a follower that rolled at a batch of a compacted
        // leader: that segment starts with a batch at its base offset.
        let follows = previous_end.is_none_or(|end| end <= base_offset);
        let gap_above_recovery_point =
            previous_end.is_some_and(|end| end < base_offset && base_offset > recovery_point);
        if !follows {
            tracing::warn!(dir = %dir.display(), segment = base_offset, previous_end, "segment does not follow the previous one; deleting it and later segments");
            delete_segments(dir, &base_offsets[i..], report)?;
            break;
        }
        let loaded = load_segment(
            dir,
            base_offset,
            recovery_point,
            config.index_interval_bytes,
            report,
        )?;
        if gap_above_recovery_point && !starts_at_its_base(&loaded.segment)? {
            tracing::warn!(dir = %dir.display(), segment = base_offset, previous_end, "segment after a gap does not start with a batch at its base offset; deleting it and later segments");
            drop(loaded);
            delete_segments(dir, &base_offsets[i..], report)?;
            break;
        }
        segments.push(loaded.segment);
        if loaded.truncated {
            delete_segments(dir, &base_offsets[i + 1..], report)?;
            break;
        }
    }
    Ok(segments)
}

/// True when the segment's first batch starts at the segment's base offset.
fn starts_at_its_base(segment: &Segment) -> Result<bool, LogError> {
    if segment.is_empty() {
        return Ok(false);
    }
    Ok(segment.read_header_at(0)?.base_offset == segment.base_offset)
}

fn delete_segments(
    dir: &Path,
    base_offsets: &[i64],
    report: &mut RecoveryReport,
) -> Result<(), LogError> {
    for &base_offset in base_offsets {
        tracing::warn!(dir = %dir.display(), segment = base_offset, "deleting segment after the recovered log end");
        Segment::delete_files(dir, base_offset)?;
        report.segments_deleted += 1;
    }
    if !base_offsets.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Within a segment whose max timestamp reaches `timestamp_ms`: skip via the time index, walk
/// batch headers to the first batch with maxTimestamp >= target, decode it for the record.
fn find_in_segment(
    segment: &Segment,
    timestamp_ms: i64,
    min_offset: i64,
) -> Result<Option<TimestampOffset>, LogError> {
    let start_offset = segment
        .base_offset
        .saturating_add(i64::from(segment.time_index.search_start(timestamp_ms)))
        .max(min_offset);
    let Some((mut position, _)) = segment.find_batch_ending_at_or_after(start_offset)? else {
        return Ok(None);
    };
    while position < segment.size_bytes {
        let header = segment.read_header_at(position)?;
        if header.max_timestamp >= timestamp_ms {
            let batch = segment.read_batch_at(position, &header)?;
            if let Some(found) = find_in_batch(batch, &header, timestamp_ms, min_offset)? {
                return Ok(Some(found));
            }
        }
        position = position.saturating_add(u32::try_from(header.total_size()).unwrap_or(u32::MAX));
    }
    Ok(None)
}

/// The first record of `batch` with timestamp >= `timestamp_ms`.
fn find_in_batch(
    batch: Vec<u8>,
    header: &BatchHeader,
    timestamp_ms: i64,
    min_offset: i64,
) -> Result<Option<TimestampOffset>, LogError> {
    if header.is_log_append_time() {
        // Every record carries the batch's maxTimestamp.
        return Ok(Some(TimestampOffset {
            timestamp: header.max_timestamp,
            offset: header.base_offset.max(min_offset),
        }));
    }
    let mut bytes = Bytes::from(batch);
    // The records were encoded by a client; a decoder bug (e.g. arithmetic overflow on hostile
    // deltas in a debug build) must not take the broker down.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        RecordBatchDecoder::decode(&mut bytes)
    }))
    .map_err(|_| {
        LogError::CorruptBatch(format!(
            "decoder panicked on batch at offset {}",
            header.base_offset
        ))
    })?;
    let record_set = decoded.map_err(|error| {
        LogError::CorruptBatch(format!(
            "batch at offset {} does not decode: {error}",
            header.base_offset
        ))
    })?;
    Ok(record_set
        .records
        .iter()
        .find(|record| record.timestamp >= timestamp_ms && record.offset >= min_offset)
        .map(|record| TimestampOffset {
            timestamp: record.timestamp,
            offset: record.offset,
        }))
}

mod follower;
pub use follower::FollowerAppend;

#[cfg(test)]
mod tests;
