//! Retention (`retention.ms`, `retention.bytes`) and the log start offset (DeleteRecords).
//!
//! Deleting a segment is two steps so the expensive part can run outside the broker's
//! partition lock, as Kafka does: under the lock the segment leaves the in-memory list and
//! its files are renamed to `<name>.deleted` (cheap, and a restart ignores and removes such
//! files); the returned [`PendingDeletion`] unlinks them later. A fetch that already holds
//! the segment's `Arc<File>` keeps reading the unlinked file: POSIX keeps its data until the
//! last descriptor closes, so it never sees garbage. A `SyncTarget` holding it fsyncs an
//! unlinked file, which is harmless.

use std::fs;
use std::path::{Path, PathBuf};

use crate::checkpoint::{sync_dir, write_log_start_offset};
use crate::segment::{file_name, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use crate::{Log, LogConfig, LogError};

/// Suffix of segment files that were taken out of the log and await unlinking.
pub const DELETED_SUFFIX: &str = ".deleted";

/// Why a segment was deleted (for the log line per segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionReason {
    /// Its newest record is older than `retention.ms`.
    RetentionTime { retention_ms: i64 },
    /// The partition stays at or above `retention.bytes` without it.
    RetentionSize { retention_bytes: i64 },
    /// It lies entirely below the log start offset (DeleteRecords).
    LogStartOffset { log_start_offset: i64 },
}

impl std::fmt::Display for DeletionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeletionReason::RetentionTime { retention_ms } => {
                write!(f, "retention.ms={retention_ms} breached")
            }
            DeletionReason::RetentionSize { retention_bytes } => {
                write!(f, "retention.bytes={retention_bytes} breached")
            }
            DeletionReason::LogStartOffset { log_start_offset } => {
                write!(f, "below log start offset {log_start_offset}")
            }
        }
    }
}

/// One segment taken out of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedSegment {
    pub base_offset: i64,
    /// Offset after its last batch.
    pub next_offset: i64,
    pub size_bytes: u64,
    pub reason: DeletionReason,
}

/// Segments already out of the log whose renamed files still have to be unlinked.
#[derive(Debug, Default)]
#[must_use = "the renamed files stay on disk until unlink() runs"]
pub struct PendingDeletion {
    files: Vec<PathBuf>,
    pub segments: Vec<DeletedSegment>,
}

impl PendingDeletion {
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Unlinks the renamed files (slow on big files: call it outside the partition lock).
    /// A file already gone is fine; the first other error is returned after trying all.
    pub fn unlink(self) -> Result<(), LogError> {
        let mut first_error = None;
        for path in &self.files {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot unlink deleted segment file");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

/// What the retention planner needs to know about a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size_bytes: u64,
    /// Largest record timestamp (or the file's modification time when the records carry
    /// none, as Kafka does); None when empty.
    pub largest_timestamp_ms: Option<i64>,
}

impl SegmentSummary {
    fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }
}

/// Decides which oldest segments go, one reason each, in Kafka's order: segments below the
/// log start offset (always), then `retention.bytes` and `retention.ms` (only with
/// `cleanup.policy` delete). Only a prefix is ever deleted. The last segment counts only when
/// it is not empty (the caller rolls first when it goes); an empty one before it (a
/// follower's roll over a huge offset gap leaves one) has no records to keep and never
/// holds back the time limit.
pub fn plan_deletions(
    segments: &[SegmentSummary],
    config: &LogConfig,
    log_start_offset: i64,
    now_ms: i64,
) -> Vec<DeletionReason> {
    let mut reasons = Vec::new();
    let deletable = |index: usize| {
        let last = index + 1 == segments.len();
        !(last && segments[index].is_empty())
    };
    // Below the log start offset: the next segment starts at or below it (never the last).
    while reasons.len() + 1 < segments.len()
        && segments[reasons.len() + 1].base_offset <= log_start_offset
    {
        reasons.push(DeletionReason::LogStartOffset { log_start_offset });
    }
    if !config.cleanup_delete {
        return reasons;
    }
    if config.retention_bytes >= 0 {
        let retention_bytes = config.retention_bytes as u64;
        let total_bytes: u64 = segments[reasons.len()..]
            .iter()
            .map(|segment| segment.size_bytes)
            .sum();
        if total_bytes >= retention_bytes {
            let mut excess_bytes = total_bytes - retention_bytes;
            while reasons.len() < segments.len()
                && deletable(reasons.len())
                && segments[reasons.len()].size_bytes <= excess_bytes
            {
                excess_bytes -= segments[reasons.len()].size_bytes;
                reasons.push(DeletionReason::RetentionSize {
                    retention_bytes: config.retention_bytes,
                });
            }
        }
    }
    if config.retention_ms >= 0 {
        while reasons.len() < segments.len()
            && deletable(reasons.len())
            && (segments[reasons.len()].is_empty()
                || segments[reasons.len()]
                    .largest_timestamp_ms
                    .is_some_and(|largest| now_ms.saturating_sub(largest) > config.retention_ms))
        {
            reasons.push(DeletionReason::RetentionTime {
                retention_ms: config.retention_ms,
            });
        }
    }
    reasons
}

/// Removes `*.deleted` files a crash left behind (their segments were already out of the log).
pub fn remove_leftover_deleted_files(dir: &Path) -> Result<(), LogError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.ends_with(DELETED_SUFFIX))
        {
            tracing::info!(path = %entry.path().display(), "removing segment file left over from an interrupted deletion");
            match fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

/// Renames a segment's files to `*.deleted`; returns the new paths of those that existed.
fn rename_for_deletion(dir: &Path, base_offset: i64) -> Result<Vec<PathBuf>, LogError> {
    let mut renamed = Vec::with_capacity(3);
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let name = file_name(base_offset, suffix);
        let to = dir.join(format!("{name}{DELETED_SUFFIX}"));
        match fs::rename(dir.join(&name), &to) {
            Ok(()) => renamed.push(to),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(renamed)
}

fn largest_timestamp_ms(segment: &crate::segment::Segment) -> Option<i64> {
    let largest = segment.max_timestamp?.timestamp;
    if largest >= 0 {
        return Some(largest);
    }
    // Records without timestamps: fall back to the file's modification time (Kafka does).
    let modified = segment
        .file
        .metadata()
        .and_then(|meta| meta.modified())
        .ok()?;
    let since_epoch = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since_epoch.as_millis()).ok()
}

impl Log {
    /// Applies retention at `now_ms` (see [`plan_deletions`]): takes the expired segments
    /// out of the log, rolling first when the active segment goes too, and renames their
    /// files. Cheap enough for the partition lock; unlink the result outside it.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<PendingDeletion, LogError> {
        let summaries: Vec<SegmentSummary> = self
            .segments()
            .iter()
            .map(|segment| SegmentSummary {
                base_offset: segment.base_offset,
                next_offset: segment.next_offset,
                size_bytes: u64::from(segment.size_bytes),
                largest_timestamp_ms: if segment.is_empty() {
                    None
                } else {
                    largest_timestamp_ms(segment)
                },
            })
            .collect();
        let reasons = plan_deletions(&summaries, self.config(), self.log_start_offset(), now_ms);
        if reasons.is_empty() {
            return Ok(PendingDeletion::default());
        }
        if reasons.len() == summaries.len() {
            // The active segment itself expired: roll so it can go and the log keeps an
            // (empty) active segment at its end.
            self.roll()?;
            sync_dir(self.dir())?;
        }
        self.delete_leading(&summaries, &reasons)
    }

    /// DeleteRecords: moves the log start offset up to `offset` (never back), persists it
    /// before returning, and takes out the segments entirely below it. Returns the new log
    /// start offset. `offset` beyond the log end is OFFSET_OUT_OF_RANGE.
    pub fn delete_records(&mut self, offset: i64) -> Result<(i64, PendingDeletion), LogError> {
        let log_end_offset = self.log_end_offset();
        if offset < 0 || offset > log_end_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset(),
                log_end_offset,
            });
        }
        if offset > self.log_start_offset() {
            write_log_start_offset(self.dir(), offset)?;
            self.set_log_start_offset(offset);
        }
        let start = self.log_start_offset();
        let summaries: Vec<SegmentSummary> = self
            .segments()
            .iter()
            .map(|segment| SegmentSummary {
                base_offset: segment.base_offset,
                next_offset: segment.next_offset,
                size_bytes: u64::from(segment.size_bytes),
                largest_timestamp_ms: None,
            })
            .collect();
        let reasons: Vec<DeletionReason> = plan_deletions(
            &summaries,
            &LogConfig {
                cleanup_delete: false,
                ..self.config().clone()
            },
            start,
            0,
        );
        let pending = self.delete_leading(&summaries, &reasons)?;
        Ok((self.log_start_offset(), pending))
    }

    /// Renames the files of the first `reasons.len()` segments and takes them out of the
    /// log. A rename failure stops there: the segments already renamed still go.
    fn delete_leading(
        &mut self,
        summaries: &[SegmentSummary],
        reasons: &[DeletionReason],
    ) -> Result<PendingDeletion, LogError> {
        let mut pending = PendingDeletion::default();
        let mut failure = None;
        for (summary, reason) in summaries.iter().zip(reasons) {
            match rename_for_deletion(self.dir(), summary.base_offset) {
                Ok(files) => {
                    pending.files.extend(files);
                    pending.segments.push(DeletedSegment {
                        base_offset: summary.base_offset,
                        next_offset: summary.next_offset,
                        size_bytes: summary.size_bytes,
                        reason: *reason,
                    });
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let taken = self.take_leading_segments(pending.segments.len());
        debug_assert_eq!(taken.len(), pending.segments.len());
        drop(taken);
        if !pending.is_empty() {
            sync_dir(self.dir())?;
        }
        match failure {
            Some(error) => {
                // Keep what was renamed consistent: unlink it now rather than leak files.
                let _ = pending.unlink();
                Err(error)
            }
            None => Ok(pending),
        }
    }
}

#[cfg(test)]
mod tests;
