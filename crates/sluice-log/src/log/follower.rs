//! The follower side of replication: appending batches copied from the leader exactly as
//! the leader stores them, the epoch start a new leader records, and the high watermark
//! checkpoint.

use super::Log;
use crate::batch::{BatchHeader, BATCH_HEADER_BYTES};
use crate::checkpoint::{read_high_watermark, write_high_watermark};
use crate::LogError;

/// What [`Log::append_as_follower`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerAppend {
    /// Base offset of the first batch written; -1 when no whole batch was given.
    pub first_offset: i64,
    /// Last offset of the last batch written; -1 when no whole batch was given.
    pub last_offset: i64,
    /// Whole batches written.
    pub batches: usize,
    /// Records in them (a compacted batch holds fewer than its offset range).
    pub records_count: i64,
    /// Bytes written.
    pub bytes: usize,
}

impl FollowerAppend {
    fn nothing() -> FollowerAppend {
        FollowerAppend {
            first_offset: -1,
            last_offset: -1,
            batches: 0,
            records_count: 0,
            bytes: 0,
        }
    }
}

/// Checks one whole batch copied from a leader: framing, magic, size limit, CRC, and
/// counts as the leader may hold them (compaction leaves fewer records than the offset
/// range, even none). No topic policy: the leader applied it when it accepted the batch.
fn validate_replicated(batch: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, LogError> {
    let header = BatchHeader::parse(batch)?;
    if header.last_offset_delta < 0 {
        return Err(LogError::InvalidBatch(format!(
            "batch at offset {} has a negative lastOffsetDelta {}",
            header.base_offset, header.last_offset_delta
        )));
    }
    if batch.len() > max_batch_bytes {
        return Err(LogError::BatchTooLarge {
            size: batch.len(),
            max: max_batch_bytes,
        });
    }
    header.verify_crc(batch)?;
    if header.records_count < 0 || header.records_count - 1 > header.last_offset_delta {
        return Err(LogError::InvalidBatch(format!(
            "batch at offset {}: recordsCount {} does not fit lastOffsetDelta {}",
            header.base_offset, header.records_count, header.last_offset_delta
        )));
    }
    Ok(header)
}

impl Log {
    /// Appends batches fetched from the leader (the `records` of a fetch response
    /// partition) exactly as the leader stores them: baseOffset, partitionLeaderEpoch and
    /// every other byte are kept, so the follower's segments are byte-identical to the
    /// leader's. Kafka's follower append (`appendAsFollower`) trusts the leader: no
    /// offset assignment, no recompression or timestamp rewrite, no idempotent-producer
    /// duplicate or sequence check (the producer state is still updated, so that this
    /// replica can check sequences once it leads).
    ///
    /// A trailing partial batch (the leader's fetch cut it at `max_bytes`) is ignored.
    /// Each whole batch must have magic 2, a valid CRC, lastOffsetDelta >= 0, at most
    /// `max_batch_bytes`, and a base offset at or above the log end: a forward gap is fine
    /// (the leader's log was compacted), an overlap is `LogError::InvalidBatch` (the caller
    /// truncates first). Batches before a refused one stay written; the log end says where
    /// the log is.
    pub fn append_as_follower(
        &mut self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<FollowerAppend, LogError> {
        self.refuse_if_failed()?;
        let mut appended = FollowerAppend::nothing();
        let mut rest = records;
        while rest.len() >= BATCH_HEADER_BYTES {
            let total_size = BatchHeader::parse(rest)?.total_size();
            let Some(batch) = rest.get(..total_size) else {
                // A partial batch at the end of the fetch response; one that could never
                // be accepted must not make the fetcher retry it forever in silence.
                if appended.batches == 0 && total_size > self.config.max_batch_bytes {
                    return Err(LogError::BatchTooLarge {
                        size: total_size,
                        max: self.config.max_batch_bytes,
                    });
                }
                break;
            };
            rest = &rest[total_size..];
            let header = self.append_replicated_batch(batch, now_ms)?;
            if appended.batches == 0 {
                appended.first_offset = header.base_offset;
            }
            appended.last_offset = header.last_offset();
            appended.batches += 1;
            appended.records_count += i64::from(header.records_count);
            appended.bytes += batch.len();
        }
        if !rest.is_empty() {
            tracing::trace!(dir = %self.dir.display(), bytes = rest.len(), "ignored a partial batch at the end of replicated records");
        }
        Ok(appended)
    }

    /// Writes one whole batch copied from the leader (see [`Log::append_as_follower`]).
    fn append_replicated_batch(
        &mut self,
        batch: &[u8],
        now_ms: i64,
    ) -> Result<BatchHeader, LogError> {
        let header = validate_replicated(batch, self.config.max_batch_bytes)?;
        let log_end_offset = self.log_end_offset();
        if header.base_offset < log_end_offset {
            return Err(LogError::InvalidBatch(format!(
                "replicated batch at base offset {} is below the log end offset {log_end_offset}: truncate first",
                header.base_offset
            )));
        }
        let last_offset = header
            .base_offset
            .checked_add(i64::from(header.last_offset_delta))
            .ok_or_else(|| LogError::InvalidBatch("offsets overflow i64".to_string()))?;
        // The new segment (if any) starts at the batch, not at the log end: after a forward
        // gap the batch's offsets may not fit the old segment's relative offsets at all.
        self.maybe_roll(batch.len(), last_offset, header.base_offset, now_ms)?;
        self.write_placed_batch(&header, last_offset, |segment, index_interval_bytes| {
            segment.append(batch, &header, index_interval_bytes, now_ms)
        })?;
        Ok(header)
    }

    /// The error every append gets once the log is marked failed.
    fn refuse_if_failed(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(reason) => Err(LogError::Io(std::io::Error::other(format!(
                "log {} refuses appends until restart: {reason}",
                self.dir.display()
            )))),
            None => Ok(()),
        }
    }

    /// Records that leader epoch `epoch` starts at the current log end, durably (Kafka's
    /// `maybeAssignEpochStartOffset`, done by a broker that becomes leader with `epoch`),
    /// unless the cache already knows `epoch` or a newer one. Written even for an empty
    /// log: OffsetForLeaderEpoch for an older epoch must then end at this offset, also
    /// after a restart, though no batch of `epoch` exists yet.
    pub fn assign_epoch_start(&mut self, epoch: i32) -> Result<(), LogError> {
        let log_end_offset = self.log_end_offset();
        let before = self.leader_epochs.entries().to_vec();
        if self.leader_epochs.assign(epoch, log_end_offset) {
            if let Err(error) = self.leader_epochs.persist() {
                self.leader_epochs = crate::leader_epoch::LeaderEpochCache::empty(&self.dir);
                for entry in before {
                    self.leader_epochs.assign(entry.epoch, entry.start_offset);
                }
                return Err(error);
            }
            tracing::debug!(dir = %self.dir.display(), epoch, start_offset = log_end_offset, "leader epoch starts at the log end");
        }
        Ok(())
    }

    /// Sets the partition's high watermark (memory only; [`Log::checkpoint`] persists it),
    /// clamped to `[log start, log end]`.
    pub fn set_high_watermark(&mut self, offset: i64) {
        self.high_watermark = Some(self.clamp_to_log(offset));
    }

    /// The high watermark last set (or loaded at open), clamped to `[log start, log end]`;
    /// None when it was never set and no checkpoint was found.
    pub fn high_watermark(&self) -> Option<i64> {
        self.high_watermark.map(|offset| self.clamp_to_log(offset))
    }

    /// What `high-watermark-checkpoint` said when the log was opened, clamped to
    /// `[log start, log end]`; None when there was no (usable) file. A restarting replica
    /// starts from it instead of 0 or the log end (either would be wrong: consumers could
    /// not read committed data, or could read uncommitted data).
    pub fn checkpointed_high_watermark(&self) -> Option<i64> {
        self.high_watermark_at_open
            .map(|offset| self.clamp_to_log(offset))
    }

    fn clamp_to_log(&self, offset: i64) -> i64 {
        offset
            .min(self.log_end_offset())
            .max(self.log_start_offset())
    }

    /// Reads the checkpoint at open (before recovery's own checkpoint, which would
    /// otherwise find nothing to keep).
    pub(super) fn load_high_watermark(&mut self) {
        let loaded = read_high_watermark(&self.dir);
        self.high_watermark_at_open = loaded;
        self.high_watermark = loaded;
        self.high_watermark_written = loaded;
    }

    /// After a cut: the high watermark never exceeds the log end.
    pub(super) fn clamp_high_watermark(&mut self) {
        self.high_watermark = self.high_watermark();
    }

    /// Writes the high watermark when it changed since the last write (clamped: retention
    /// may have moved the log start above it).
    pub(super) fn checkpoint_high_watermark(&mut self) -> Result<(), LogError> {
        let Some(high_watermark) = self.high_watermark() else {
            return Ok(());
        };
        if self.high_watermark_written == Some(high_watermark) {
            return Ok(());
        }
        write_high_watermark(&self.dir, high_watermark)?;
        self.high_watermark_written = Some(high_watermark);
        Ok(())
    }
}
