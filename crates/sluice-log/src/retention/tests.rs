use std::fs;
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::testing::{append_stored, assert_every_offset_reads_back, batch, StoredBatch};
use crate::LOG_START_OFFSET_FILE;

const HOUR_MS: i64 = 60 * 60 * 1000;

/// One 5-record batch per segment: segment.bytes is smaller than two batches.
fn one_batch_per_segment(retention_ms: i64, retention_bytes: i64) -> LogConfig {
    let batch_bytes = batch(5, 100, 0).len() as u64;
    LogConfig {
        segment_bytes: batch_bytes + batch_bytes / 2,
        index_interval_bytes: 1,
        retention_ms,
        retention_bytes,
        ..LogConfig::default()
    }
}

fn log_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".log"))
        .collect();
    names.sort();
    names
}

/// Appends one batch per timestamp (each lands in its own segment).
fn fill(log: &mut Log, timestamps_ms: &[i64]) -> Vec<StoredBatch> {
    timestamps_ms
        .iter()
        .map(|&timestamp_ms| append_stored(log, &batch(5, 100, timestamp_ms), timestamp_ms))
        .collect()
}

fn assert_out_of_range(log: &Log, offset: i64) {
    assert!(
        matches!(
            log.read(offset, 1 << 20, i64::MAX),
            Err(LogError::OffsetOutOfRange { .. })
        ),
        "read at {offset} should be out of range"
    );
}

#[test]
fn retention_ms_deletes_segments_whose_newest_record_expired() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), one_batch_per_segment(HOUR_MS, -1)).unwrap();
    let now_ms = 10 * HOUR_MS;
    let stored = fill(
        &mut log,
        &[
            now_ms - 5 * HOUR_MS,
            now_ms - 2 * HOUR_MS,
            now_ms - 10,
            now_ms,
        ],
    );
    assert_eq!(log.segment_count(), 4);
    let pending = log.apply_retention(now_ms).unwrap();
    let deleted: Vec<i64> = pending.segments.iter().map(|s| s.base_offset).collect();
    assert_eq!(deleted, vec![0, 5]);
    assert!(pending.segments.iter().all(|s| s.reason
        == DeletionReason::RetentionTime {
            retention_ms: HOUR_MS
        }));
    // Renamed out of the way at once, unlinked by the caller.
    assert_eq!(log_files(dir.path()).len(), 2);
    pending.unlink().unwrap();
    assert!(fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".deleted")));
    assert_eq!(log.log_start_offset(), 10);
    assert_out_of_range(&log, 9);
    assert_out_of_range(&log, 0);
    assert_every_offset_reads_back(&log, &stored[2..]);
    // Nothing more to do at the same time.
    assert!(log.apply_retention(now_ms).unwrap().is_empty());
}

#[test]
fn retention_bytes_keeps_the_partition_at_or_above_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let batch_bytes = batch(5, 100, 0).len() as i64;
    // 4 segments of one batch; limit 2.5 batches: deleting 1 leaves 3 >= 2.5; deleting a
    // second would leave 2 < 2.5, so it stays.
    let mut log = Log::open(dir.path(), one_batch_per_segment(-1, batch_bytes * 5 / 2)).unwrap();
    let stored = fill(&mut log, &[1, 2, 3, 4]);
    let pending = log.apply_retention(i64::MAX).unwrap();
    assert_eq!(pending.segments.len(), 1);
    assert_eq!(
        pending.segments[0].reason,
        DeletionReason::RetentionSize {
            retention_bytes: batch_bytes * 5 / 2
        }
    );
    pending.unlink().unwrap();
    assert_eq!(log.log_start_offset(), 5);
    assert_eq!(log_files(dir.path()).len(), 3);
    assert_every_offset_reads_back(&log, &stored[1..]);
    // Exactly at the limit: 3 batches, limit 2 batches -> one more goes (2 >= 2).
    log.set_config(one_batch_per_segment(-1, batch_bytes * 2));
    let pending = log.apply_retention(0).unwrap();
    assert_eq!(pending.segments.len(), 1);
    pending.unlink().unwrap();
    assert_eq!(log.log_start_offset(), 10);
}

#[test]
fn time_and_size_retention_combine() {
    let dir = tempfile::tempdir().unwrap();
    let batch_bytes = batch(5, 100, 0).len() as i64;
    let mut log = Log::open(dir.path(), one_batch_per_segment(HOUR_MS, batch_bytes * 3)).unwrap();
    let now_ms = 100 * HOUR_MS;
    // 5 segments: size removes 2 (leaving 3 batches), then time removes the third (expired).
    fill(
        &mut log,
        &[now_ms, now_ms, now_ms - 2 * HOUR_MS, now_ms, now_ms],
    );
    let pending = log.apply_retention(now_ms).unwrap();
    let reasons: Vec<DeletionReason> = pending.segments.iter().map(|s| s.reason).collect();
    assert_eq!(
        reasons,
        vec![
            DeletionReason::RetentionSize {
                retention_bytes: batch_bytes * 3
            },
            DeletionReason::RetentionSize {
                retention_bytes: batch_bytes * 3
            },
            DeletionReason::RetentionTime {
                retention_ms: HOUR_MS
            },
        ]
    );
    pending.unlink().unwrap();
    assert_eq!(log.log_start_offset(), 15);
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn an_expired_active_segment_is_rolled_and_deleted_leaving_an_empty_log_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), one_batch_per_segment(HOUR_MS, -1)).unwrap();
    fill(&mut log, &[0, 1]);
    assert_eq!(log.segment_count(), 2);
    let pending = log.apply_retention(2 * HOUR_MS).unwrap();
    assert_eq!(pending.segments.len(), 2);
    pending.unlink().unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (10, 10));
    assert_eq!(log_files(dir.path()), vec![format!("{:020}.log", 10)]);
    assert_out_of_range(&log, 9);
    assert!(log.read(10, 1 << 20, i64::MAX).unwrap().is_none());
    // The empty active segment is never deleted, and appends continue at the end.
    assert!(log.apply_retention(100 * HOUR_MS).unwrap().is_empty());
    let stored = append_stored(&mut log, &batch(2, 10, 3 * HOUR_MS), 3 * HOUR_MS);
    assert_eq!(stored.base_offset, 10);
    // Reopen: the start is where the segments are.
    drop(log);
    let log = Log::open(dir.path(), one_batch_per_segment(HOUR_MS, -1)).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (10, 12));
}

#[test]
fn nothing_is_deleted_without_the_delete_policy_or_with_infinite_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), one_batch_per_segment(-1, -1)).unwrap();
    fill(&mut log, &[0, 1, 2]);
    assert!(log.apply_retention(i64::MAX).unwrap().is_empty());
    log.set_config(LogConfig {
        cleanup_delete: false,
        cleanup_compact: true,
        ..one_batch_per_segment(0, 0)
    });
    assert!(log.apply_retention(i64::MAX).unwrap().is_empty());
    assert_eq!(log.segment_count(), 3);
    assert_eq!(log.log_start_offset(), 0);
    assert_eq!(log_files(dir.path()).len(), 3);
}

#[test]
fn delete_records_inside_a_segment_moves_the_start_and_persists_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), one_batch_per_segment(-1, -1)).unwrap();
    let stored = fill(&mut log, &[0, 1, 2]);
    let (start, pending) = log.delete_records(7).unwrap();
    assert_eq!(start, 7);
    // The first segment (0..5) is entirely below 7 and goes; 5..10 stays.
    assert_eq!(pending.segments.len(), 1);
    assert_eq!(
        pending.segments[0].reason,
        DeletionReason::LogStartOffset {
            log_start_offset: 7
        }
    );
    pending.unlink().unwrap();
    assert_eq!(log.log_start_offset(), 7);
    assert_out_of_range(&log, 6);
    assert_out_of_range(&log, 5);
    // A read at the start returns the whole batch containing it.
    let slice = log.read(7, 1 << 20, i64::MAX).unwrap().unwrap();
    assert_eq!(slice.first_offset, 5);
    assert_eq!(
        slice.read_to_vec().unwrap()[..stored[1].bytes.len()],
        stored[1].bytes[..]
    );
    // Never backwards.
    let (start, pending) = log.delete_records(3).unwrap();
    assert_eq!(start, 7);
    assert!(pending.is_empty());
    assert_eq!(
        fs::read_to_string(dir.path().join(LOG_START_OFFSET_FILE))
            .unwrap()
            .trim(),
        "7"
    );
    drop(log);
    let log = Log::open(dir.path(), one_batch_per_segment(-1, -1)).unwrap();
    assert_eq!(log.log_start_offset(), 7);
    assert_out_of_range(&log, 6);
    assert_eq!(
        log.read(7, 1 << 20, i64::MAX)
            .unwrap()
            .unwrap()
            .first_offset,
        5
    );
}

#[test]
fn delete_records_across_segments_and_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), one_batch_per_segment(-1, -1)).unwrap();
    fill(&mut log, &[0, 1, 2, 3]);
    assert!(matches!(
        log.delete_records(21),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    let (start, pending) = log.delete_records(16).unwrap();
    assert_eq!(start, 16);
    assert_eq!(
        pending
            .segments
            .iter()
            .map(|s| s.base_offset)
            .collect::<Vec<_>>(),
        vec![0, 5, 10]
    );
    pending.unlink().unwrap();
    assert_eq!(log_files(dir.path()), vec![format!("{:020}.log", 15)]);
    // Up to the log end: the active segment stays (it is in use) but nothing is readable.
    let (start, pending) = log.delete_records(20).unwrap();
    assert_eq!(start, 20);
    assert!(pending.is_empty());
    assert_out_of_range(&log, 19);
    assert!(log.read(20, 1 << 20, i64::MAX).unwrap().is_none());
    let next = append_stored(&mut log, &batch(1, 1, 5), 5);
    assert_eq!(next.base_offset, 20);
    assert_eq!(
        log.read(20, 1 << 20, i64::MAX)
            .unwrap()
            .unwrap()
            .first_offset,
        20
    );
}

#[test]
fn the_start_checkpoint_is_clamped_to_the_log_after_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_batch_per_segment(-1, -1);
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    fill(&mut log, &[0, 1, 2]);
    let (start, pending) = log.delete_records(13).unwrap();
    assert_eq!(start, 13);
    pending.unlink().unwrap();
    drop(log);
    // Tear the last batch (offsets 10..15): the log ends at 10 after recovery.
    let last = dir.path().join(format!("{:020}.log", 10));
    let len = fs::metadata(&last).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let log = Log::open(dir.path(), config.clone()).unwrap();
    assert_eq!(log.log_end_offset(), 10);
    assert_eq!(log.log_start_offset(), 10);
    // A checkpoint below the first segment is raised to it.
    drop(log);
    fs::write(dir.path().join(LOG_START_OFFSET_FILE), "2\n").unwrap();
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.log_start_offset(), 10);
}

#[test]
fn in_flight_reads_and_sync_targets_survive_segment_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), one_batch_per_segment(HOUR_MS, -1)).unwrap();
    let stored = fill(&mut log, &[0, 1, 2]);
    // A fetch located its bytes and a group commit took its files before retention ran.
    let slice = log.read(0, 1 << 20, i64::MAX).unwrap().unwrap();
    let target = log.sync_target();
    let pending = log.apply_retention(10 * HOUR_MS).unwrap();
    assert_eq!(pending.segments.len(), 3);
    pending.unlink().unwrap();
    assert!(!dir.path().join(format!("{:020}.log", 0)).exists());
    // The unlinked file still serves exactly the original batch, and fsync works.
    assert_eq!(slice.read_to_vec().unwrap(), stored[0].bytes);
    target.sync().unwrap();
    log.mark_synced(target.offset_end, target.generation);
    let after = log.sync_target();
    after.sync().unwrap();
    log.mark_synced(after.offset_end, after.generation);
    // Checkpoints only touch the remaining segment.
    log.checkpoint().unwrap();
    assert_eq!(log.synced_offset(), 15);
    assert_eq!(log_files(dir.path()), vec![format!("{:020}.log", 15)]);
}

#[test]
fn leftover_deleted_files_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), one_batch_per_segment(HOUR_MS, -1)).unwrap();
    fill(&mut log, &[0, 10 * HOUR_MS]);
    // Crash between rename and unlink: the renamed files stay behind.
    let pending = log.apply_retention(10 * HOUR_MS).unwrap();
    assert_eq!(pending.segments.len(), 1);
    drop(pending);
    drop(log);
    assert!(dir.path().join(format!("{:020}.log.deleted", 0)).exists());
    let log = Log::open(dir.path(), one_batch_per_segment(HOUR_MS, -1)).unwrap();
    assert!(!dir.path().join(format!("{:020}.log.deleted", 0)).exists());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (5, 10));
}

fn summaries(sizes: &[u64], timestamps: &[i64]) -> Vec<SegmentSummary> {
    let mut base_offset = 0;
    sizes
        .iter()
        .zip(timestamps)
        .map(|(&size_bytes, &timestamp)| {
            let next_offset = base_offset + if size_bytes == 0 { 0 } else { 10 };
            let summary = SegmentSummary {
                base_offset,
                next_offset,
                size_bytes,
                largest_timestamp_ms: (size_bytes > 0).then_some(timestamp),
            };
            base_offset = next_offset;
            summary
        })
        .collect()
}

proptest! {
    /// Whatever the settings: only a prefix goes, an empty active segment never goes, size
    /// retention never takes the log below retention.bytes, and every segment taken by
    /// time really expired.
    #[test]
    fn plans_respect_the_retention_invariants(
        sizes in proptest::collection::vec(0u64..1000, 1..8),
        ages in proptest::collection::vec(0i64..100, 8),
        retention_ms in -1i64..100,
        retention_bytes in -1i64..5000,
    ) {
        let mut sizes = sizes;
        let last = sizes.len() - 1;
        for size in &mut sizes[..last] {
            *size = (*size).max(1); // rolled segments are never empty
        }
        let now_ms = 1000;
        let timestamps: Vec<i64> = ages.iter().map(|age| now_ms - age).collect();
        let segments = summaries(&sizes, &timestamps);
        let config = LogConfig { retention_ms, retention_bytes, ..LogConfig::default() };
        let reasons = plan_deletions(&segments, &config, 0, now_ms);
        prop_assert!(reasons.len() <= segments.len());
        if reasons.len() == segments.len() {
            prop_assert!(segments[last].size_bytes > 0);
        }
        let total: u64 = sizes.iter().sum();
        let mut deleted_bytes = 0u64;
        for (segment, reason) in segments.iter().zip(&reasons) {
            deleted_bytes += segment.size_bytes;
            match reason {
                DeletionReason::RetentionSize { .. } => {
                    prop_assert!(retention_bytes >= 0);
                    prop_assert!(total - deleted_bytes >= retention_bytes as u64);
                }
                DeletionReason::RetentionTime { .. } => {
                    prop_assert!(retention_ms >= 0);
                    prop_assert!(now_ms - segment.largest_timestamp_ms.unwrap() > retention_ms);
                }
                DeletionReason::LogStartOffset { .. } => prop_assert!(false, "start is 0"),
            }
        }
        let disabled = LogConfig { cleanup_delete: false, ..config };
        prop_assert!(plan_deletions(&segments, &disabled, 0, now_ms).is_empty());
    }
}

#[test]
fn timestamp_lookups_never_answer_below_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), one_batch_per_segment(-1, -1)).unwrap();
    // Two batches of 5 records, each record stamped with the batch timestamp.
    fill(&mut log, &[100, 200]);
    let (start, pending) = log.delete_records(7).unwrap();
    pending.unlink().unwrap();
    assert_eq!(start, 7);
    let found = log.find_offset_by_timestamp(0).unwrap().unwrap();
    assert_eq!(found.offset, 7);
    let found = log.find_offset_by_timestamp(201).unwrap();
    assert_eq!(found, None);
}
