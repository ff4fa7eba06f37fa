use std::fs;

use super::*;
use crate::testing::{
    append_stored, assert_every_offset_reads_back, batch, encode_batch, read_all_records,
    read_first_batch, stamped, StoredBatch, TestCompression,
};

fn config(segment_bytes: u64, index_interval_bytes: u32) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes,
        ..LogConfig::default()
    }
}

fn segment_log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn log_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Log>();
    assert_send_sync::<ReadSlice>();
    assert_send_sync::<SyncTarget>();
}

#[test]
fn append_then_read_round_trips_bytes_except_offset_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    let first = batch(3, 20, 100);
    let mut bytes = first.clone();
    let info = log.append(&mut bytes, 5, 0).unwrap();
    assert_eq!(
        info,
        AppendInfo {
            base_offset: 0,
            last_offset: 2,
            max_timestamp: 100,
            records_count: 3,
            batch_bytes: first.len(),
            duplicate: false
        }
    );
    let second = batch(1, 5, 200);
    let info = log.append(&mut second.clone(), 6, 0).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (3, 3));
    let slice = log.read(0, 1 << 20, i64::MAX).unwrap().unwrap();
    let mut expected = stamped(&first, 0, 5);
    expected.extend_from_slice(&stamped(&second, 3, 6));
    assert_eq!(slice.read_to_vec().unwrap(), expected);
    assert_eq!((slice.first_offset, slice.next_offset), (0, 4));
    assert_eq!(log.log_end_offset(), 4);
}

#[test]
fn read_in_the_middle_of_a_batch_returns_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    let stored: Vec<StoredBatch> = (0..5)
        .map(|i| append_stored(&mut log, &batch(4, 10, i), 0))
        .collect();
    let slice = log.read(9, 0, i64::MAX).unwrap().unwrap();
    assert_eq!((slice.first_offset, slice.next_offset), (8, 12));
    assert_eq!(slice.read_to_vec().unwrap(), stored[2].bytes);
}

#[test]
fn read_respects_max_bytes_but_returns_at_least_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 100)).unwrap();
    let stored: Vec<StoredBatch> = (0..20)
        .map(|i| append_stored(&mut log, &batch(2, 50, i), 0))
        .collect();
    let batch_bytes = stored[0].bytes.len();
    let slice = log.read(0, 1, i64::MAX).unwrap().unwrap();
    assert_eq!(slice.len, batch_bytes);
    assert_eq!(slice.next_offset, 2);
    let slice = log
        .read(4, batch_bytes * 3 + batch_bytes / 2, i64::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(slice.len, batch_bytes * 3);
    assert_eq!((slice.first_offset, slice.next_offset), (4, 10));
    let expected: Vec<u8> = stored[2..5].iter().flat_map(|b| b.bytes.clone()).collect();
    assert_eq!(slice.read_to_vec().unwrap(), expected);
    let slice = log.read(0, usize::MAX, i64::MAX).unwrap().unwrap();
    assert_eq!(slice.len, batch_bytes * 20);
    assert_eq!(slice.next_offset, 40);
}

#[test]
fn read_never_reaches_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    for i in 0..10 {
        append_stored(&mut log, &batch(2, 10, i), 0);
    }
    let slice = log.read(0, usize::MAX, 6).unwrap().unwrap();
    assert_eq!((slice.first_offset, slice.next_offset), (0, 6));
    let slice = log.read(3, usize::MAX, 6).unwrap().unwrap();
    assert_eq!((slice.first_offset, slice.next_offset), (2, 6));
    assert!(log.read(6, usize::MAX, 6).unwrap().is_none());
    assert!(log.read(20, usize::MAX, i64::MAX).unwrap().is_none());
    assert!(matches!(
        log.read(21, 1, i64::MAX),
        Err(LogError::OffsetOutOfRange { offset: 21, .. })
    ));
    assert!(matches!(
        log.read(-1, 1, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn rolls_by_size_and_reads_continue_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let one = batch(1, 100, 0);
    let mut log = Log::open(dir.path(), config(one.len() as u64 * 3, 0)).unwrap();
    let stored: Vec<StoredBatch> = (0..10).map(|_| append_stored(&mut log, &one, 0)).collect();
    assert_eq!(log.segment_count(), 4);
    assert_eq!(segment_log_files(dir.path()).len(), 4);
    assert!(dir.path().join("00000000000000000003.log").exists());
    // A read at a segment boundary is served from the next segment only.
    let slice = log.read(3, usize::MAX, i64::MAX).unwrap().unwrap();
    assert_eq!((slice.first_offset, slice.next_offset), (3, 6));
    assert_every_offset_reads_back(&log, &stored);
}

#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(10, 0)).unwrap();
    let stored: Vec<StoredBatch> = (0..3)
        .map(|_| append_stored(&mut log, &batch(2, 10, 0), 0))
        .collect();
    assert_eq!(log.segment_count(), 3);
    assert_every_offset_reads_back(&log, &stored);
}

#[test]
fn rolls_by_time_measured_from_the_first_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        LogConfig {
            segment_ms: 1_000,
            ..LogConfig::default()
        },
    )
    .unwrap();
    append_stored(&mut log, &batch(1, 1, 0), 10_000);
    append_stored(&mut log, &batch(1, 1, 0), 10_999);
    assert_eq!(log.segment_count(), 1);
    append_stored(&mut log, &batch(1, 1, 0), 11_000);
    assert_eq!(log.segment_count(), 2);
    append_stored(&mut log, &batch(1, 1, 0), 11_500);
    assert_eq!(log.segment_count(), 2);
    append_stored(&mut log, &batch(1, 1, 0), 12_000);
    assert_eq!(log.segment_count(), 3);
}

#[test]
fn segment_age_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hour_ms = 3_600_000;
    let config = LogConfig {
        segment_ms: hour_ms,
        ..LogConfig::default()
    };
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    append_stored(&mut log, &batch(1, 1, 0), now_ms);
    drop(log);
    let mut log = Log::open(dir.path(), config).unwrap();
    append_stored(&mut log, &batch(1, 1, 0), now_ms + hour_ms / 2);
    assert_eq!(log.segment_count(), 1);
    // An hour after the first append before the restart, not after the restart.
    append_stored(&mut log, &batch(1, 1, 0), now_ms + hour_ms + 60_000);
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn index_lookups_find_every_offset_across_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(4_000, 300)).unwrap();
    let stored: Vec<StoredBatch> = (0..200)
        .map(|i| {
            append_stored(
                &mut log,
                &batch(1 + (i % 5), 10 + (i * 7) % 90, i as i64),
                0,
            )
        })
        .collect();
    assert!(log.segment_count() > 5);
    assert_every_offset_reads_back(&log, &stored);
    log.flush().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config(4_000, 300)).unwrap();
    assert_eq!(log.recovery_report().indexes_rebuilt, 0);
    assert_every_offset_reads_back(&log, &stored);
}

#[test]
fn find_offset_by_timestamp_handles_non_monotonic_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(300, 0)).unwrap();
    // offsets 0..3 | 3..5 | 5..8
    append_stored(
        &mut log,
        &encode_batch(&[100, 300, 200], 10, TestCompression::None),
        0,
    );
    append_stored(
        &mut log,
        &encode_batch(&[150, 120], 10, TestCompression::None),
        0,
    );
    append_stored(
        &mut log,
        &encode_batch(&[500, 400, 450], 10, TestCompression::None),
        0,
    );
    let find = |timestamp_ms| log.find_offset_by_timestamp(timestamp_ms).unwrap();
    let at = |timestamp, offset| Some(TimestampOffset { timestamp, offset });
    assert_eq!(find(0), at(100, 0));
    assert_eq!(find(100), at(100, 0));
    assert_eq!(find(101), at(300, 1));
    assert_eq!(find(300), at(300, 1));
    assert_eq!(find(301), at(500, 5));
    assert_eq!(find(460), at(500, 5));
    assert_eq!(find(501), None);
    assert_eq!(log.max_timestamp(), at(500, 5));
}

#[test]
fn find_offset_by_timestamp_decodes_compressed_batches() {
    for compression in [
        TestCompression::Gzip,
        TestCompression::Lz4,
        TestCompression::Zstd,
        TestCompression::Snappy,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
        append_stored(&mut log, &encode_batch(&[10, 20], 100, compression), 0);
        let stored = append_stored(
            &mut log,
            &encode_batch(&[30, 60, 40, 50], 100, compression),
            0,
        );
        assert_eq!(read_first_batch(&log, 3), stored.bytes);
        let found = log.find_offset_by_timestamp(45).unwrap();
        assert_eq!(
            found,
            Some(TimestampOffset {
                timestamp: 60,
                offset: 3
            }),
            "{compression:?}"
        );
        let found = log.find_offset_by_timestamp(25).unwrap();
        assert_eq!(
            found,
            Some(TimestampOffset {
                timestamp: 30,
                offset: 2
            })
        );
    }
}

#[test]
fn find_offset_by_timestamp_uses_time_indexes_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(2_000, 200)).unwrap();
    for i in 0..300i64 {
        append_stored(
            &mut log,
            &encode_batch(&[i * 10, i * 10 + 5], 20, TestCompression::None),
            0,
        );
    }
    assert!(log.segment_count() > 3);
    for target in [0, 7, 1234, 1235, 1236, 2990, 2995] {
        let found = log.find_offset_by_timestamp(target).unwrap().unwrap();
        let expected_offset = if target % 10 == 0 {
            target / 5
        } else if target % 10 <= 5 {
            target / 10 * 2 + 1
        } else {
            target / 10 * 2 + 2
        };
        assert_eq!(found.offset, expected_offset, "target {target}");
        assert!(found.timestamp >= target);
    }
    assert_eq!(log.find_offset_by_timestamp(2996).unwrap(), None);
    log.flush().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config(2_000, 200)).unwrap();
    assert_eq!(
        log.find_offset_by_timestamp(1236).unwrap().unwrap().offset,
        248
    );
    assert_eq!(log.max_timestamp().unwrap().timestamp, 2995);
}

type ErrorCheck = fn(&LogError) -> bool;

#[test]
fn invalid_appends_are_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        LogConfig {
            max_batch_bytes: 500,
            ..LogConfig::default()
        },
    )
    .unwrap();
    let stored = append_stored(&mut log, &batch(1, 10, 0), 0);
    let good = batch(2, 10, 0);
    let mut bad_crc = good.clone();
    bad_crc[70] ^= 1;
    let mut bad_magic = good.clone();
    bad_magic[16] = 0;
    let mut lying_length = good.clone();
    lying_length[8..12].copy_from_slice(&(i32::MAX).to_be_bytes());
    let mut two = good.clone();
    two.extend_from_slice(&good);
    let cases: Vec<(Vec<u8>, ErrorCheck)> = vec![
        (bad_crc, |e| matches!(e, LogError::CorruptBatch(_))),
        (bad_magic, |e| matches!(e, LogError::InvalidBatch(_))),
        (batch(1, 600, 0), |e| {
            matches!(e, LogError::BatchTooLarge { max: 500, .. })
        }),
        (good[..30].to_vec(), |e| {
            matches!(e, LogError::CorruptBatch(_))
        }),
        (Vec::new(), |e| matches!(e, LogError::CorruptBatch(_))),
        (lying_length, |e| matches!(e, LogError::CorruptBatch(_))),
        (two, |e| matches!(e, LogError::InvalidBatch(_))),
    ];
    let file_len = || {
        fs::metadata(dir.path().join("00000000000000000000.log"))
            .unwrap()
            .len()
    };
    let len_before = file_len();
    for (mut bytes, is_expected) in cases {
        let error = log.append(&mut bytes, 1, 0).unwrap_err();
        assert!(is_expected(&error), "{error:?}");
        assert_eq!(log.log_end_offset(), 1);
        assert_eq!(file_len(), len_before);
    }
    assert_every_offset_reads_back(&log, &[stored]);
}

#[test]
fn sync_target_keeps_rolled_segments_until_marked_synced() {
    let dir = tempfile::tempdir().unwrap();
    let one = batch(1, 100, 0);
    let mut log = Log::open(dir.path(), config(one.len() as u64, 0)).unwrap();
    assert_eq!(log.synced_offset(), 0);
    assert!(!log.sync_target().is_needed(log.synced_offset()));
    append_stored(&mut log, &one, 0);
    append_stored(&mut log, &one, 0);
    let target = log.sync_target();
    assert_eq!(target.offset_end, 2);
    assert_eq!(target.files.len(), 2);
    assert!(target.directory.is_some());
    assert!(target.is_needed(log.synced_offset()));
    append_stored(&mut log, &one, 0);
    target.sync().unwrap();
    log.mark_synced(target.offset_end, target.generation);
    assert_eq!(log.synced_offset(), 2);
    let target = log.sync_target();
    assert_eq!((target.offset_end, target.files.len()), (3, 1));
    assert!(target.directory.is_some());
    target.sync().unwrap();
    log.mark_synced(target.offset_end, target.generation);
    let target = log.sync_target();
    assert_eq!(target.files.len(), 1);
    assert!(target.directory.is_none());
    assert!(!target.is_needed(log.synced_offset()));
    log.checkpoint().unwrap();
    assert_eq!(log.recovery_point(), 3);
    assert_eq!(
        fs::read_to_string(dir.path().join(crate::RECOVERY_POINT_FILE))
            .unwrap()
            .trim(),
        "3"
    );
}

#[test]
fn reopen_after_clean_flush_does_not_scan_below_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    let stored: Vec<StoredBatch> = (0..10)
        .map(|i| append_stored(&mut log, &batch(3, 30, i), 0))
        .collect();
    log.flush().unwrap();
    assert_eq!((log.synced_offset(), log.recovery_point()), (30, 30));
    drop(log);
    // Flip a payload byte of the first batch: only a CRC scan would notice.
    let path = dir.path().join("00000000000000000000.log");
    let mut bytes = fs::read(&path).unwrap();
    bytes[70] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    assert_eq!(log.recovery_report().batches_verified, 0);
    assert_eq!(log.recovery_report().bytes_truncated, 0);
    assert_eq!(log.log_end_offset(), 30);
    assert_eq!(read_first_batch(&log, 29), stored[9].bytes);
}

#[test]
fn reopen_removes_temporary_files_of_interrupted_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    let stored: Vec<StoredBatch> = (0..5)
        .map(|i| append_stored(&mut log, &batch(2, 30, i), 0))
        .collect();
    log.flush().unwrap();
    drop(log);
    // What a crash (or a full disk) in the middle of checkpoint and index writes leaves.
    for name in [
        "recovery-point.tmp",
        "00000000000000000000.index.tmp",
        "00000000000000000010.snapshot.tmp",
    ] {
        fs::write(dir.path().join(name), b"half-writ").unwrap();
    }
    let log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(log.recovery_point(), 10);
    assert_every_offset_reads_back(&log, &stored);
}

#[test]
fn reopen_without_flush_scans_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(2_000, 100)).unwrap();
    let stored: Vec<StoredBatch> = (0..50)
        .map(|i| append_stored(&mut log, &batch(2, 40, i), 0))
        .collect();
    drop(log);
    let log = Log::open(dir.path(), config(2_000, 100)).unwrap();
    assert_eq!(log.recovery_report().batches_verified, 50);
    assert_eq!(log.recovery_point(), 100);
    assert_every_offset_reads_back(&log, &stored);
}

#[test]
fn appends_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut stored = Vec::new();
    for round in 0..3 {
        let mut log = Log::open(dir.path(), config(1_000, 0)).unwrap();
        for i in 0..10 {
            stored.push(append_stored(
                &mut log,
                &batch(1 + i % 3, 50, round * 100 + i as i64),
                0,
            ));
        }
        if round == 1 {
            log.flush().unwrap();
        }
        assert_every_offset_reads_back(&log, &stored);
    }
}

#[test]
fn delete_removes_the_partition_directory() {
    let dir = tempfile::tempdir().unwrap();
    let partition_dir = dir.path().join("topic-0");
    let mut log = Log::open(&partition_dir, LogConfig::default()).unwrap();
    append_stored(&mut log, &batch(1, 1, 0), 0);
    log.delete().unwrap();
    assert!(!partition_dir.exists());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn batches_strategy() -> impl Strategy<Value = Vec<(usize, usize)>> {
        prop::collection::vec((1usize..6, 0usize..300), 1..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn every_offset_reads_back_after_reopen(
            shapes in batches_strategy(),
            segment_bytes in 100u64..3_000,
            index_interval_bytes in 0u32..1_000,
            flush in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let log_config = config(segment_bytes, index_interval_bytes);
            let mut log = Log::open(dir.path(), log_config.clone()).unwrap();
            let stored: Vec<StoredBatch> = shapes
                .iter()
                .enumerate()
                .map(|(i, &(records, value_bytes))| append_stored(&mut log, &batch(records, value_bytes, i as i64), 0))
                .collect();
            assert_every_offset_reads_back(&log, &stored);
            if flush {
                log.flush().unwrap();
            }
            drop(log);
            let log = Log::open(dir.path(), log_config).unwrap();
            assert_every_offset_reads_back(&log, &stored);
        }

        #[test]
        fn truncating_the_last_segment_anywhere_leaves_a_prefix(
            shapes in batches_strategy(),
            segment_bytes in 100u64..3_000,
            cut_fraction in 0.0f64..1.0,
            flush in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let log_config = config(segment_bytes, 200);
            let mut log = Log::open(dir.path(), log_config.clone()).unwrap();
            let stored: Vec<StoredBatch> = shapes
                .iter()
                .enumerate()
                .map(|(i, &(records, value_bytes))| append_stored(&mut log, &batch(records, value_bytes, i as i64), 0))
                .collect();
            if flush {
                log.flush().unwrap();
            }
            drop(log);
            let last = segment_log_files(dir.path()).pop().unwrap();
            let len = fs::metadata(&last).unwrap().len();
            let cut = (len as f64 * cut_fraction) as u64;
            fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(cut).unwrap();
            let log = Log::open(dir.path(), log_config).unwrap();
            let kept = stored.iter().take_while(|b| b.last_offset < log.log_end_offset()).count();
            prop_assert_eq!(stored.get(kept).map_or(log.log_end_offset(), |b| b.base_offset), log.log_end_offset());
            assert_every_offset_reads_back(&log, &stored[..kept]);
        }
    }
}

#[test]
fn append_batch_leaves_the_buffer_untouched_and_stores_the_rewritten_header() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    let mut expected = Vec::new();
    for i in 0..4i64 {
        let sent = batch(2, 100 + i as usize, 1_000 + i);
        let before = sent.clone();
        let info = log.append_batch(&sent, 9, 0).unwrap();
        assert_eq!(sent, before, "the caller's buffer is not written to");
        assert_eq!(info.base_offset, 2 * i);
        expected.extend_from_slice(&stamped(&sent, 2 * i, 9));
    }
    let slice = log.read(0, 1 << 20, i64::MAX).unwrap().unwrap();
    assert_eq!(slice.read_to_vec().unwrap(), expected);
    drop(log);
    // And recovery (which checks CRCs) accepts what the vectored writes stored.
    let log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    assert_eq!(log.log_end_offset(), 8);
    assert_eq!(log.recovery_report().bytes_truncated, 0);
    assert_eq!(log.recovery_report().batches_verified, 4);
}

#[test]
fn reopen_after_clean_flush_replays_no_batches_without_idempotent_producers() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1_000, 100)).unwrap();
    let stored: Vec<StoredBatch> = (0..40)
        .map(|i| append_stored(&mut log, &batch(2, 40, i), 0))
        .collect();
    assert!(log.segment_count() > 2);
    log.flush().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config(1_000, 100)).unwrap();
    let report = log.recovery_report();
    assert_eq!(report.producer_snapshot_offset, Some(80));
    assert_eq!(report.producer_batches_replayed, 0);
    assert_eq!(report.batches_verified, 0);
    assert_eq!(report.indexes_rebuilt, 0);
    assert_eq!(report.producers_loaded, 0);
    assert_every_offset_reads_back(&log, &stored);
}

#[test]
fn after_a_crash_only_what_follows_the_recovery_point_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    let stored: Vec<StoredBatch> = (0..20)
        .map(|i| {
            let stored = append_stored(&mut log, &batch(1, 30, i), 0);
            if i == 9 {
                log.flush().unwrap();
            }
            stored
        })
        .collect();
    assert_eq!(log.recovery_point(), 10);
    // A crash: the last ten batches were never checkpointed.
    drop(log);
    let path = dir.path().join("00000000000000000000.log");
    let mut bytes = fs::read(&path).unwrap();
    let position = |index: usize| -> usize { stored[..index].iter().map(|s| s.bytes.len()).sum() };
    // A payload byte of batch 2 (checkpointed: must not be read) and of batch 15 (after the
    // recovery point: its CRC must catch it).
    bytes[position(2) + 70] ^= 0xff;
    bytes[position(15) + 70] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    let report = log.recovery_report();
    assert_eq!(log.log_end_offset(), 15);
    assert_eq!(report.bytes_truncated, (position(20) - position(15)) as u64);
    assert_eq!(report.batches_verified, 5);
    assert_eq!(report.producer_snapshot_offset, Some(10));
    assert_eq!(report.producer_batches_replayed, 5);
    // The checkpointed batch was trusted, not read: its flipped byte is still there.
    assert_ne!(read_first_batch(&log, 2), stored[2].bytes);
    assert_every_offset_reads_back(&log, &stored[3..15]);
}

/// Swaps the active segment's file handle (to inject write failures: a read-only handle
/// makes `pwritev` and `ftruncate` fail like a broken disk would).
fn swap_active_file(log: &mut Log, file: File) -> Arc<File> {
    let active = log.segments.last_mut().unwrap();
    std::mem::replace(&mut active.file, Arc::new(file))
}

fn active_path(log: &Log) -> PathBuf {
    let active = log.segments.last().unwrap();
    log.dir()
        .join(crate::segment::file_name(active.base_offset, "log"))
}

#[test]
fn failed_write_leaves_the_log_unchanged_and_appends_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let first = append_stored(&mut log, &batch(3, 20, 100), 0);
    let end = log.log_end_offset();
    let path = active_path(&log);
    let len_bytes = fs::metadata(&path).unwrap().len();
    let writable = swap_active_file(&mut log, File::open(&path).unwrap());

    let error = log.append(&mut batch(2, 10, 200), 0, 0).unwrap_err();
    assert!(matches!(error, LogError::Io(_)), "{error:?}");
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.failure(), None);
    assert_eq!(fs::metadata(&path).unwrap().len(), len_bytes);

    log.segments.last_mut().unwrap().file = writable;
    let second = append_stored(&mut log, &batch(2, 10, 200), 0);
    assert_eq!(second.base_offset, end);
    assert_every_offset_reads_back(&log, &[first.clone(), second.clone()]);
    log.flush().unwrap();
    drop(log);
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_every_offset_reads_back(&log, &[first, second]);
}

#[test]
fn failed_write_that_cannot_be_cut_back_marks_the_log_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let first = append_stored(&mut log, &batch(3, 20, 100), 0);
    let end = log.log_end_offset();
    let path = active_path(&log);
    // A torn tail the (read-only, so failing) handle can neither overwrite nor truncate.
    let writable = swap_active_file(&mut log, File::open(&path).unwrap());
    writable
        .write_all_at(b"torn", fs::metadata(&path).unwrap().len())
        .unwrap();

    let error = log.append(&mut batch(2, 10, 200), 0, 0).unwrap_err();
    assert!(matches!(error, LogError::Io(_)), "{error:?}");
    assert!(log.failure().is_some());
    assert_eq!(log.log_end_offset(), end);

    // Even with a working handle again, a failed log refuses appends but still reads.
    log.segments.last_mut().unwrap().file = writable;
    let error = log.append(&mut batch(2, 10, 200), 0, 0).unwrap_err();
    assert!(matches!(error, LogError::Io(_)), "{error:?}");
    assert_eq!(log.log_end_offset(), end);
    assert_every_offset_reads_back(&log, std::slice::from_ref(&first));

    // A restart recovers: the torn tail is cut and appends continue at the old end.
    drop(log);
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.failure(), None);
    assert_eq!(log.log_end_offset(), end);
    let second = append_stored(&mut log, &batch(2, 10, 200), 0);
    assert_eq!(second.base_offset, end);
    assert_every_offset_reads_back(&log, &[first, second]);
}

#[test]
fn failed_roll_leaves_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(100, 4096)).unwrap();
    let first = append_stored(&mut log, &batch(3, 40, 100), 0);
    let end = log.log_end_offset();
    // A directory where the next segment file must go makes its creation fail.
    let blocker = dir.path().join(crate::segment::file_name(end, "log"));
    fs::create_dir(&blocker).unwrap();

    let error = log.append(&mut batch(2, 40, 200), 0, 0).unwrap_err();
    assert!(matches!(error, LogError::Io(_)), "{error:?}");
    assert!(error.to_string().contains("roll"), "{error}");
    assert_eq!((log.log_end_offset(), log.segment_count()), (end, 1));
    assert_eq!(log.failure(), None);

    fs::remove_dir(&blocker).unwrap();
    let second = append_stored(&mut log, &batch(2, 40, 200), 0);
    assert_eq!((second.base_offset, log.segment_count()), (end, 2));
    assert_every_offset_reads_back(&log, &[first, second]);
}

#[test]
fn marked_failed_log_refuses_appends_with_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let first = append_stored(&mut log, &batch(1, 20, 100), 0);
    log.mark_failed("fsync failed: test");
    log.mark_failed("second reason is not kept");
    assert_eq!(log.failure(), Some("fsync failed: test"));
    let error = log.append(&mut batch(1, 20, 100), 0, 0).unwrap_err();
    assert!(error.to_string().contains("fsync failed: test"), "{error}");
    assert_every_offset_reads_back(&log, std::slice::from_ref(&first));
    // Nothing is marked synced any more: the recovery point stays where it was.
    let synced = log.synced_offset();
    log.flush().unwrap();
    assert_eq!(log.synced_offset(), synced);
    drop(log);
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_every_offset_reads_back(&log, &[first]);
}

fn append_with_epoch(log: &mut Log, epoch: i32) -> i64 {
    let mut bytes = batch(2, 20, 0);
    log.append(&mut bytes, epoch, 0).unwrap().base_offset
}

fn epoch_pairs(log: &Log) -> Vec<(i32, i64)> {
    log.leader_epochs()
        .iter()
        .map(|e| (e.epoch, e.start_offset))
        .collect()
}

#[test]
fn leader_epochs_follow_appends_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    for epoch in [0, 0, 3, 3, 5] {
        append_with_epoch(&mut log, epoch);
    }
    assert_eq!(epoch_pairs(&log), [(0, 0), (3, 4), (5, 8)]);
    assert_eq!(log.end_offset_for_epoch(5), (5, 10));
    assert_eq!(log.end_offset_for_epoch(3), (3, 8));
    assert_eq!(log.end_offset_for_epoch(4), (3, 8));
    assert_eq!(log.end_offset_for_epoch(6), (-1, -1));
    // Written before the batches, without waiting for a flush: a reopen after a crash
    // (no flush, no checkpoint) knows every epoch.
    drop(log);
    let log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    assert_eq!(epoch_pairs(&log), [(0, 0), (3, 4), (5, 8)]);
    assert_eq!(log.recovery_report().leader_epoch_batches_scanned, 0);
}

#[test]
fn leader_epoch_checkpoint_lost_or_damaged_is_rebuilt_from_the_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(300, 0)).unwrap();
    for epoch in [1, 1, 1, 2, 2, 4] {
        append_with_epoch(&mut log, epoch);
    }
    log.flush().unwrap();
    assert!(log.segment_count() > 1);
    drop(log);
    let file = dir.path().join(crate::LEADER_EPOCH_CHECKPOINT_FILE);
    for damage in [None, Some("0\n3\n1 0\n")] {
        match damage {
            None => fs::remove_file(&file).unwrap(),
            Some(text) => fs::write(&file, text).unwrap(),
        }
        let log = Log::open(dir.path(), config(300, 0)).unwrap();
        assert_eq!(epoch_pairs(&log), [(1, 0), (2, 6), (4, 10)]);
        assert_eq!(log.recovery_report().leader_epoch_batches_scanned, 6);
    }
}

#[test]
fn a_lost_checkpoint_of_a_single_epoch_log_is_rebuilt_from_two_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(300, 0)).unwrap();
    for _ in 0..8 {
        append_with_epoch(&mut log, 0);
    }
    log.flush().unwrap();
    drop(log);
    fs::remove_file(dir.path().join(crate::LEADER_EPOCH_CHECKPOINT_FILE)).unwrap();
    let log = Log::open(dir.path(), config(300, 0)).unwrap();
    assert_eq!(epoch_pairs(&log), [(0, 0)]);
    assert_eq!(log.recovery_report().leader_epoch_batches_scanned, 2);
}

#[test]
fn leader_epochs_past_a_torn_tail_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    append_with_epoch(&mut log, 0);
    append_with_epoch(&mut log, 0);
    log.flush().unwrap();
    append_with_epoch(&mut log, 7);
    append_with_epoch(&mut log, 9);
    assert_eq!(epoch_pairs(&log), [(0, 0), (7, 4), (9, 6)]);
    drop(log);
    // Neither the epoch-7 nor the epoch-9 batch fully reached the disk.
    let batch_bytes = batch(2, 20, 0).len() as u64;
    let path = dir.path().join("00000000000000000000.log");
    let len = fs::metadata(&path).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - batch_bytes - 10).unwrap();
    drop(file);
    let log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    assert_eq!(log.log_end_offset(), 4);
    // Epoch 9 started past the recovered end: dropped. Epoch 7 starts exactly at it and
    // stays, as an entry `assign_epoch_start` wrote before any data would (this broker
    // led epoch 7 from offset 4 on; nothing of an older epoch lies past 4).
    assert_eq!(epoch_pairs(&log), [(0, 0), (7, 4)]);
    assert_eq!(log.end_offset_for_epoch(0), (0, 4));
    assert_eq!(log.end_offset_for_epoch(7), (7, 4));
    assert_eq!(log.end_offset_for_epoch(9), (-1, -1));
    let text = fs::read_to_string(dir.path().join(crate::LEADER_EPOCH_CHECKPOINT_FILE)).unwrap();
    assert_eq!(text, "0\n2\n0 0\n7 4\n");
}

#[test]
fn leader_epochs_below_the_log_start_are_dropped_at_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    for epoch in [0, 0, 2, 2, 3] {
        append_with_epoch(&mut log, epoch);
    }
    let (_, deleted) = log.delete_records(6).unwrap();
    deleted.unlink().unwrap();
    log.flush().unwrap();
    assert_eq!(epoch_pairs(&log), [(2, 6), (3, 8)]);
    drop(log);
    let log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    assert_eq!(epoch_pairs(&log), [(2, 6), (3, 8)]);
}

/// Appends `count` batches of two records each, epoch `epoch`, timestamps 1000 × base.
fn append_two_record_batches(log: &mut Log, count: usize, epoch: i32) {
    for _ in 0..count {
        let base = log.log_end_offset();
        let mut bytes = batch(2, 20, 1_000 * (base + 1));
        log.append(&mut bytes, epoch, 0).unwrap();
    }
}

#[test]
fn truncate_to_cuts_at_the_batch_holding_the_offset_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    append_two_record_batches(&mut log, 10, 0);
    assert_eq!(log.log_end_offset(), 20);
    // Offset 7 is inside the batch 6..=7: the whole batch goes.
    assert_eq!(log.truncate_to(7).unwrap(), 6);
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(
        log.truncate_to(50).unwrap(),
        6,
        "past the end: nothing to do"
    );
    let offsets: Vec<i64> = read_all_records(&log).iter().map(|r| r.0).collect();
    assert_eq!(offsets, (0..6).collect::<Vec<_>>());
    // Timestamps of the removed batches are gone; earlier ones are found.
    assert_eq!(log.max_timestamp().unwrap().timestamp, 5_000);
    assert!(log.find_offset_by_timestamp(7_000).unwrap().is_none());
    assert_eq!(
        log.find_offset_by_timestamp(3_000).unwrap().unwrap().offset,
        2
    );
    append_two_record_batches(&mut log, 2, 1);
    assert_eq!(log.log_end_offset(), 10);
    drop(log);
    let log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    assert_eq!(log.log_end_offset(), 10);
    assert_eq!(log.recovery_report().bytes_truncated, 0);
    let offsets: Vec<i64> = read_all_records(&log).iter().map(|r| r.0).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    assert_eq!(epoch_pairs(&log), [(0, 0), (1, 6)]);
}

#[test]
fn truncate_to_deletes_later_segments_and_fixes_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(300, 0)).unwrap();
    append_two_record_batches(&mut log, 6, 0);
    append_two_record_batches(&mut log, 6, 3);
    let segments_before = segment_log_files(dir.path()).len();
    assert!(segments_before >= 4, "{segments_before}");
    assert_eq!(epoch_pairs(&log), [(0, 0), (3, 12)]);
    log.flush().unwrap();
    // Into the first epoch-3 batch: epoch 3 disappears, and so do later segments.
    assert_eq!(log.truncate_to(13).unwrap(), 12);
    assert_eq!(epoch_pairs(&log), [(0, 0)]);
    assert_eq!(log.end_offset_for_epoch(0), (0, 12));
    assert!(segment_log_files(dir.path()).len() < segments_before);
    assert!(log.recovery_point() <= 12);
    drop(log);
    let log = Log::open(dir.path(), config(300, 0)).unwrap();
    assert_eq!(log.log_end_offset(), 12);
    assert_eq!(log.recovery_report().segments_deleted, 0);
    assert_eq!(epoch_pairs(&log), [(0, 0)]);
    let offsets: Vec<i64> = read_all_records(&log).iter().map(|r| r.0).collect();
    assert_eq!(offsets, (0..12).collect::<Vec<_>>());
}

#[test]
fn truncate_to_rolls_producer_state_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    for sequence in [0, 2, 4, 6] {
        let mut bytes = crate::testing::idempotent_batch(9, 0, sequence, 2);
        log.append(&mut bytes, 0, 0).unwrap();
    }
    log.flush().unwrap();
    // The snapshot written by the flush covers offset 8; cutting to 4 must forget the
    // batches with sequences 4 and 6.
    assert_eq!(log.truncate_to(4).unwrap(), 4);
    let mut next = crate::testing::idempotent_batch(9, 0, 4, 2);
    let info = log.append(&mut next, 0, 0).unwrap();
    assert!(!info.duplicate, "sequence 4 is new again after the cut");
    assert_eq!(info.base_offset, 4);
    // And a sequence past the remaining ones is still a gap.
    let mut gap = crate::testing::idempotent_batch(9, 0, 10, 2);
    assert!(log.append(&mut gap, 0, 0).is_err());
}

#[test]
fn a_sync_target_taken_before_a_truncation_marks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    append_two_record_batches(&mut log, 5, 0);
    let stale = log.sync_target();
    log.truncate_to(4).unwrap();
    append_two_record_batches(&mut log, 3, 0);
    stale.sync().unwrap();
    log.mark_synced(stale.offset_end, stale.generation);
    assert_eq!(log.synced_offset(), 0, "the stale target is ignored");
    let fresh = log.sync_target();
    fresh.sync().unwrap();
    log.mark_synced(fresh.offset_end, fresh.generation);
    assert_eq!(log.synced_offset(), 10);
}

#[test]
fn reset_to_empties_the_log_and_starts_it_at_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(300, 0)).unwrap();
    append_two_record_batches(&mut log, 8, 2);
    log.flush().unwrap();
    log.reset_to(100).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 100));
    assert!(log.leader_epochs().is_empty());
    assert_eq!(segment_log_files(dir.path()).len(), 1);
    append_two_record_batches(&mut log, 1, 4);
    drop(log);
    let log = Log::open(dir.path(), config(300, 0)).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 102));
    assert_eq!(epoch_pairs(&log), [(4, 100)]);
    // truncate_to below the log start is a reset too.
    let mut log = log;
    assert_eq!(log.truncate_to(50).unwrap(), 50);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (50, 50));
}

#[test]
fn producers_whose_batches_are_deleted_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    let mut first = crate::testing::idempotent_batch(1, 0, 0, 2);
    log.append(&mut first, 0, 0).unwrap();
    let mut second = crate::testing::idempotent_batch(2, 0, 0, 2);
    log.append(&mut second, 0, 0).unwrap();
    assert_eq!(log.producer_state().producer_count(), 2);
    let (_, deleted) = log.delete_records(2).unwrap();
    deleted.unlink().unwrap();
    assert_eq!(
        log.producer_state().producer_count(),
        1,
        "producer 1 only wrote below 2"
    );
    log.flush().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config(1 << 20, 0)).unwrap();
    assert_eq!(log.producer_state().producer_count(), 1);
}
