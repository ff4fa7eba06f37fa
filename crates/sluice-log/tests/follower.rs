//! The follower side of replication: `Log::append_as_follower`, `Log::assign_epoch_start`
//! and the high watermark checkpoint, against a real leader log.

use std::fs;
use std::path::Path;

use sluice_log::testing::{
    batch, idempotent_batch, read_first_batch, replicate, stamped, with_last_offset_delta,
};
use sluice_log::{BatchHeader, FollowerAppend, Log, LogConfig, LogError, HIGH_WATERMARK_FILE};

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

/// Every `.log` file of a partition directory: name and bytes, sorted by name.
fn segment_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn epochs(log: &Log) -> Vec<(i32, i64)> {
    log.leader_epochs()
        .iter()
        .map(|entry| (entry.epoch, entry.start_offset))
        .collect()
}

fn assert_same_epoch_answers(leader: &Log, follower: &Log) {
    assert_eq!(epochs(leader), epochs(follower));
    for epoch in -1..8 {
        assert_eq!(
            leader.end_offset_for_epoch(epoch),
            follower.end_offset_for_epoch(epoch),
            "epoch {epoch}"
        );
    }
}

/// A leader log with several epochs, idempotent and plain batches, rolled segments.
fn leader_log(dir: &Path) -> Log {
    let mut leader = Log::open(dir, config(600)).unwrap();
    let mut sequence = 0;
    for (i, epoch) in [0, 0, 1, 1, 1, 3, 3, 4, 4, 4].into_iter().enumerate() {
        let mut bytes = if i % 3 == 0 {
            let bytes = idempotent_batch(42, 0, sequence, 3);
            sequence += 3;
            bytes
        } else {
            batch(1 + i % 4, 40, 1_000 + i as i64)
        };
        leader.append(&mut bytes, epoch, 0).unwrap();
    }
    leader
}

#[test]
fn copied_batches_are_byte_identical_with_offsets_and_epochs_kept() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = leader_log(leader_dir.path());
    assert!(leader.segment_count() > 2, "the leader rolled");
    let mut follower = Log::open(follower_dir.path(), config(600)).unwrap();
    // Small fetches (one batch each) and one large one give the same result.
    let fetches = replicate(&leader, &mut follower, 1);
    assert!(fetches >= 10);
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(follower.segment_count(), leader.segment_count());
    assert_eq!(
        segment_files(follower_dir.path()),
        segment_files(leader_dir.path())
    );
    assert_same_epoch_answers(&leader, &follower);

    let other_dir = tempfile::tempdir().unwrap();
    let mut other = Log::open(other_dir.path(), config(600)).unwrap();
    assert_eq!(
        replicate(&leader, &mut other, usize::MAX),
        leader.segment_count()
    );
    assert_eq!(
        segment_files(other_dir.path()),
        segment_files(leader_dir.path())
    );

    // And after a restart of the follower.
    follower.flush().unwrap();
    drop(follower);
    let follower = Log::open(follower_dir.path(), config(600)).unwrap();
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_same_epoch_answers(&leader, &follower);
}

#[test]
fn the_result_describes_what_was_written() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = Log::open(leader_dir.path(), config(1 << 20)).unwrap();
    leader.append(&mut batch(3, 10, 0), 2, 0).unwrap();
    leader.append(&mut batch(2, 10, 0), 2, 0).unwrap();
    let bytes = leader.read(0, usize::MAX, i64::MAX).unwrap().unwrap();
    let bytes = bytes.read_to_vec().unwrap();
    let mut follower = Log::open(follower_dir.path(), config(1 << 20)).unwrap();
    let appended = follower.append_as_follower(&bytes, 0).unwrap();
    assert_eq!(
        appended,
        FollowerAppend {
            first_offset: 0,
            last_offset: 4,
            batches: 2,
            records_count: 5,
            bytes: bytes.len(),
        }
    );
    assert_eq!(follower.log_end_offset(), 5);
    let nothing = follower.append_as_follower(&[], 0).unwrap();
    assert_eq!(
        nothing,
        FollowerAppend {
            first_offset: -1,
            last_offset: -1,
            batches: 0,
            records_count: 0,
            bytes: 0,
        }
    );
}

#[test]
fn idempotent_producer_state_is_carried_to_the_follower() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = Log::open(leader_dir.path(), config(1 << 20)).unwrap();
    for sequence in [0, 2, 4] {
        leader
            .append(&mut idempotent_batch(7, 1, sequence, 2), 0, 0)
            .unwrap();
    }
    let mut follower = Log::open(follower_dir.path(), config(1 << 20)).unwrap();
    replicate(&leader, &mut follower, usize::MAX);

    let duplicate = idempotent_batch(7, 1, 2, 2);
    let header = BatchHeader::parse(&duplicate).unwrap();
    let on_leader = leader.producer_state().check(&header).unwrap();
    let on_follower = follower.producer_state().check(&header).unwrap();
    assert!(on_leader.is_some(), "the leader sees a duplicate");
    assert_eq!(on_follower, on_leader);
    assert_eq!(on_follower.unwrap().first_offset, 2);

    let out_of_order = BatchHeader::parse(&idempotent_batch(7, 1, 9, 1)).unwrap();
    assert!(matches!(
        follower.producer_state().check(&out_of_order),
        Err(LogError::OutOfOrderSequence { expected: 6, .. })
    ));
    // Kept across a restart too (snapshot plus replay).
    follower.flush().unwrap();
    drop(follower);
    let follower = Log::open(follower_dir.path(), config(1 << 20)).unwrap();
    assert_eq!(follower.producer_state().check(&header).unwrap(), on_leader);
}

#[test]
fn the_follower_trusts_the_leader_about_sequences() {
    // The leader accepted these (e.g. its state had expired the producer); the follower
    // must store them even though its own check would refuse the second.
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = Log::open(follower_dir.path(), config(1 << 20)).unwrap();
    let mut records = stamped(&idempotent_batch(3, 0, 0, 2), 0, 0);
    records.extend_from_slice(&stamped(&idempotent_batch(3, 0, 50, 1), 2, 0));
    let appended = follower.append_as_follower(&records, 0).unwrap();
    assert_eq!(appended.batches, 2);
    assert_eq!(follower.log_end_offset(), 3);
    assert_eq!(follower.producer_state().producer(3).unwrap().epoch, 0);
}

#[test]
fn a_trailing_partial_batch_is_ignored() {
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = Log::open(follower_dir.path(), config(1 << 20)).unwrap();
    let first = stamped(&batch(2, 10, 0), 0, 1);
    let second = stamped(&batch(3, 10, 0), 2, 1);
    for cut in [1, 30, 61, 62, second.len() - 1] {
        let mut records = first.clone();
        records.extend_from_slice(&second[..cut]);
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
        let appended = log.append_as_follower(&records, 0).unwrap();
        assert_eq!(
            (appended.batches, appended.last_offset),
            (1, 1),
            "cut {cut}"
        );
        assert_eq!(log.log_end_offset(), 2);
        assert_eq!(segment_files(dir.path())[0].1, first, "cut {cut}");
    }
    // Only a partial batch: nothing written, no error.
    let appended = follower.append_as_follower(&first[..70], 0).unwrap();
    assert_eq!(appended.batches, 0);
    assert_eq!(follower.log_end_offset(), 0);
}

#[test]
fn bad_batches_are_refused_with_nothing_of_them_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        LogConfig {
            max_batch_bytes: 500,
            ..config(1 << 20)
        },
    )
    .unwrap();
    let good = stamped(&batch(2, 10, 0), 0, 1);
    let mut bad_crc = stamped(&batch(2, 10, 0), 2, 1);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x40;
    let mut records = good.clone();
    records.extend_from_slice(&bad_crc);
    assert!(matches!(
        log.append_as_follower(&records, 0),
        Err(LogError::CorruptBatch(_))
    ));
    // The good batch before it stays; the log end says so.
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(segment_files(dir.path())[0].1, good);

    let mut bad_magic = stamped(&batch(1, 10, 0), 2, 1);
    bad_magic[16] = 1;
    assert!(matches!(
        log.append_as_follower(&bad_magic, 0),
        Err(LogError::InvalidBatch(_))
    ));
    let negative_delta = stamped(&with_last_offset_delta(&batch(1, 10, 0), -1), 2, 1);
    assert!(matches!(
        log.append_as_follower(&negative_delta, 0),
        Err(LogError::InvalidBatch(_))
    ));
    let too_many_records = stamped(&with_last_offset_delta(&batch(3, 10, 0), 1), 2, 1);
    assert!(matches!(
        log.append_as_follower(&too_many_records, 0),
        Err(LogError::InvalidBatch(_))
    ));
    let too_large = stamped(&batch(1, 600, 0), 2, 1);
    assert!(matches!(
        log.append_as_follower(&too_large, 0),
        Err(LogError::BatchTooLarge { .. })
    ));
    // A partial batch that could never fit is refused rather than ignored forever.
    assert!(matches!(
        log.append_as_follower(&too_large[..100], 0),
        Err(LogError::BatchTooLarge { .. })
    ));
    // Below the log end: the caller must truncate first.
    let overlapping = stamped(&batch(1, 10, 0), 1, 1);
    assert!(matches!(
        log.append_as_follower(&overlapping, 0),
        Err(LogError::InvalidBatch(_))
    ));
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(segment_files(dir.path())[0].1, good);
    // A failed log refuses everything.
    log.mark_failed("test");
    assert!(matches!(
        log.append_as_follower(&stamped(&batch(1, 10, 0), 2, 1), 0),
        Err(LogError::Io(_))
    ));
    assert_eq!(log.log_end_offset(), 2);
}

#[test]
fn a_forward_gap_is_written_and_survives_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    log.append_as_follower(&stamped(&batch(10, 5, 0), 0, 2), 0)
        .unwrap();
    assert_eq!(log.log_end_offset(), 10);
    // The leader compacted 10..99 away; its batch at 100 is copied as it is.
    let gap = stamped(&batch(1, 5, 0), 100, 2);
    // And a compacted batch: 2 records left of offsets 101..=105.
    let compacted = stamped(&with_last_offset_delta(&batch(2, 5, 0), 4), 101, 3);
    let mut records = gap.clone();
    records.extend_from_slice(&compacted);
    let appended = log.append_as_follower(&records, 0).unwrap();
    assert_eq!(
        (
            appended.first_offset,
            appended.last_offset,
            appended.records_count
        ),
        (100, 105, 3)
    );
    assert_eq!(log.log_end_offset(), 106);
    assert_eq!(read_first_batch(&log, 50), gap);
    assert_eq!(read_first_batch(&log, 103), compacted);
    assert_eq!(log.end_offset_for_epoch(2), (2, 101));
    // Not flushed: the recovery point is below the gap, so recovery checks it.
    assert!(log.recovery_point() < 100);
    drop(log);
    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(log.log_end_offset(), 106);
    assert!(log.recovery_report().batches_verified >= 3);
    assert_eq!(log.recovery_report().bytes_truncated, 0);
    assert_eq!(read_first_batch(&log, 10), gap);
    assert_eq!(read_first_batch(&log, 101), compacted);
    // The log goes on from there, as leader too.
    let info = log.append(&mut batch(1, 5, 0), 4, 0).unwrap();
    assert_eq!(info.base_offset, 106);
}

#[test]
fn a_corrupt_batch_after_a_gap_is_still_cut_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    log.append_as_follower(&stamped(&batch(2, 5, 0), 0, 1), 0)
        .unwrap();
    log.append_as_follower(&stamped(&batch(2, 5, 0), 50, 1), 0)
        .unwrap();
    let good_len = fs::metadata(dir.path().join("00000000000000000000.log"))
        .unwrap()
        .len();
    log.append_as_follower(&stamped(&batch(2, 5, 0), 80, 1), 0)
        .unwrap();
    drop(log);
    let path = dir.path().join("00000000000000000000.log");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(log.log_end_offset(), 52);
    assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
}

#[test]
fn a_gap_beyond_the_relative_offset_range_rolls_at_the_batch() {
    let huge = 10 + (1i64 << 32) + 5;
    for empty_active in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
        if !empty_active {
            log.append_as_follower(&stamped(&batch(10, 5, 0), 0, 1), 0)
                .unwrap();
        }
        let far = stamped(&batch(2, 5, 0), huge, 1);
        log.append_as_follower(&far, 0).unwrap();
        assert_eq!(log.log_end_offset(), huge + 2);
        assert_eq!(log.segment_count(), 2, "empty active: {empty_active}");
        let names: Vec<String> = segment_files(dir.path())
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names[1], format!("{huge:020}.log"));
        // A read in the gap (or in the empty first segment) returns the batch after it.
        assert_eq!(read_first_batch(&log, 20), far);
        let next = stamped(&batch(1, 5, 0), huge + 2, 2);
        log.append_as_follower(&next, 0).unwrap();
        drop(log);
        // Recovery (recovery point below everything) keeps the segment after the gap.
        let log = Log::open(dir.path(), config(1 << 20)).unwrap();
        assert_eq!(log.log_end_offset(), huge + 3);
        assert_eq!(log.segment_count(), 2);
        assert_eq!(log.recovery_report().segments_deleted, 0);
        assert_eq!(read_first_batch(&log, huge + 1), far);
        assert_eq!(read_first_batch(&log, huge + 2), next);
        assert_eq!(log.end_offset_for_epoch(1), (1, huge + 2));
    }
}

#[test]
fn a_segment_after_a_gap_that_does_not_start_at_its_base_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    log.append_as_follower(&stamped(&batch(2, 5, 0), 0, 1), 0)
        .unwrap();
    drop(log);
    // A stray segment at 100 whose first batch is at 120 (never written by a roll).
    fs::write(
        dir.path().join(format!("{:020}.log", 100)),
        stamped(&batch(1, 5, 0), 120, 1),
    )
    .unwrap();
    let log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.recovery_report().segments_deleted, 1);
    assert!(!dir.path().join(format!("{:020}.log", 100)).exists());
}

#[test]
fn divergent_follower_batches_are_repaired_by_truncation() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = Log::open(leader_dir.path(), config(400)).unwrap();
    let mut follower = Log::open(follower_dir.path(), config(400)).unwrap();
    for _ in 0..4 {
        leader.append(&mut batch(2, 20, 0), 1, 0).unwrap();
    }
    replicate(&leader, &mut follower, 300);
    // The old leader (now the follower) had written epoch-2 batches nobody else got...
    for base in [8, 10, 12] {
        follower
            .append_as_follower(&stamped(&batch(2, 20, 0), base, 2), 0)
            .unwrap();
    }
    // ...while the new leader wrote epoch 3 from offset 8.
    for _ in 0..5 {
        leader.append(&mut batch(3, 20, 0), 3, 0).unwrap();
    }
    // OffsetForLeaderEpoch(2) on the leader: epoch 1 ends at 8.
    let (epoch, end_offset) = leader.end_offset_for_epoch(2);
    assert_eq!((epoch, end_offset), (1, 8));
    let (_, follower_end) = follower.end_offset_for_epoch(epoch);
    assert_eq!(
        follower.truncate_to(end_offset.min(follower_end)).unwrap(),
        8
    );
    replicate(&leader, &mut follower, 300);
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(
        segment_files(follower_dir.path()),
        segment_files(leader_dir.path())
    );
    assert_same_epoch_answers(&leader, &follower);
}

#[test]
fn a_new_leader_records_its_epoch_start() {
    // Empty log: epoch 3 starts at 0; OffsetForLeaderEpoch(2) ends there.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    log.assign_epoch_start(3).unwrap();
    assert_eq!(epochs(&log), [(3, 0)]);
    assert_eq!(log.end_offset_for_epoch(2), (2, 0));
    drop(log);
    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(epochs(&log), [(3, 0)], "persisted across reopen");
    assert_eq!(log.end_offset_for_epoch(2), (2, 0));
    assert_eq!(log.end_offset_for_epoch(3), (3, 0));
    // An older or equal epoch changes nothing.
    log.assign_epoch_start(2).unwrap();
    log.assign_epoch_start(3).unwrap();
    assert_eq!(epochs(&log), [(3, 0)]);
    // Data of epoch 3, then leadership of epoch 5 at the log end.
    log.append(&mut batch(4, 5, 0), 3, 0).unwrap();
    log.assign_epoch_start(5).unwrap();
    assert_eq!(epochs(&log), [(3, 0), (5, 4)]);
    assert_eq!(log.end_offset_for_epoch(3), (3, 4));
    assert_eq!(log.end_offset_for_epoch(4), (3, 4));
    drop(log);
    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(epochs(&log), [(3, 0), (5, 4)]);
    assert_eq!(log.end_offset_for_epoch(4), (3, 4));
    // A batch of epoch 5 does not add an entry; a flushed reopen keeps the same answers.
    log.append(&mut batch(1, 5, 0), 5, 0).unwrap();
    assert_eq!(epochs(&log), [(3, 0), (5, 4)]);
    log.flush().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(epochs(&log), [(3, 0), (5, 4)]);
    assert_eq!(log.end_offset_for_epoch(5), (5, 5));
}

#[test]
fn the_high_watermark_is_checkpointed_and_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(HIGH_WATERMARK_FILE);
    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(log.checkpointed_high_watermark(), None);
    assert_eq!(log.high_watermark(), None);
    assert!(!path.exists(), "nothing written before a value is set");
    for _ in 0..5 {
        log.append(&mut batch(2, 5, 0), 0, 0).unwrap();
    }
    log.set_high_watermark(6);
    assert_eq!(log.high_watermark(), Some(6));
    log.set_high_watermark(100);
    assert_eq!(log.high_watermark(), Some(10), "clamped to the log end");
    log.set_high_watermark(-3);
    assert_eq!(log.high_watermark(), Some(0), "clamped to the log start");
    log.set_high_watermark(6);
    assert!(!path.exists(), "memory only until checkpoint");
    log.checkpoint().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "0\n6\n");
    // Unchanged: not rewritten (the file's mtime would move; check by removing it).
    fs::remove_file(&path).unwrap();
    log.checkpoint().unwrap();
    assert!(!path.exists());
    log.set_high_watermark(8);
    log.flush().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "0\n8\n");
    drop(log);

    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(log.checkpointed_high_watermark(), Some(8));
    assert_eq!(log.high_watermark(), Some(8));
    // Truncation clamps the value in memory and on the next checkpoint.
    assert_eq!(log.truncate_to(4).unwrap(), 4);
    assert_eq!(log.high_watermark(), Some(4));
    assert_eq!(log.checkpointed_high_watermark(), Some(4));
    log.checkpoint().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "0\n4\n");
    log.reset_to(20).unwrap();
    assert_eq!(log.high_watermark(), Some(20));
    log.checkpoint().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "0\n20\n");
    drop(log);

    // A file beyond the log end (the log lost its tail) is clamped when read.
    fs::write(&path, "0\n500\n").unwrap();
    let log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(log.checkpointed_high_watermark(), Some(20));
    drop(log);
    // Malformed: ignored with a warning, the log opens.
    for garbage in ["", "0\n", "0\nx\n", "7\n5\n", "\u{0}\u{1}"] {
        fs::write(&path, garbage).unwrap();
        let log = Log::open(dir.path(), config(1 << 20)).unwrap();
        assert_eq!(log.checkpointed_high_watermark(), None, "{garbage:?}");
        assert_eq!(log.high_watermark(), None);
    }
}

#[test]
fn an_empty_segment_left_by_a_gap_roll_does_not_hold_back_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    let huge = 1i64 << 33;
    // An empty log rolls over the gap, keeping its empty first segment.
    log.append_as_follower(&stamped(&batch(2, 5, 1_000), huge, 1), 0)
        .unwrap();
    assert_eq!(log.segment_count(), 2);
    let now_ms = 1_000 + LogConfig::default().retention_ms + 1;
    let deleted = log.apply_retention(now_ms).unwrap();
    deleted.unlink().unwrap();
    assert_eq!(log.log_start_offset(), huge + 2, "both segments expired");
    assert_eq!(log.log_end_offset(), huge + 2);
}

#[test]
fn a_demoted_leader_drops_its_empty_epoch_when_truncating_to_its_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(1 << 20)).unwrap();
    log.append(&mut batch(4, 5, 0), 3, 0).unwrap();
    // Led epoch 5 from offset 4 but wrote nothing; the new leader (epoch 6) has epoch-4
    // batches from offset 4 on and answers OffsetForLeaderEpoch(5) with (4, 9).
    log.assign_epoch_start(5).unwrap();
    assert_eq!(epochs(&log), [(3, 0), (5, 4)]);
    assert_eq!(log.truncate_to(9.min(log.log_end_offset())).unwrap(), 4);
    assert_eq!(epochs(&log), [(3, 0)], "the conflicting entry is gone");
    log.append_as_follower(&stamped(&batch(5, 5, 0), 4, 4), 0)
        .unwrap();
    assert_eq!(epochs(&log), [(3, 0), (4, 4)]);
    assert_eq!(log.end_offset_for_epoch(4), (4, 9));
    drop(log);
    let log = Log::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(epochs(&log), [(3, 0), (4, 4)]);
}

mod arbitrary_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever a (buggy or hostile) leader sends: an error or a write, never a panic;
        /// whatever was written reads back as CRC-valid batches and survives a reopen.
        #[test]
        fn follower_appends_of_mutated_records_never_corrupt_the_log(
            base in 0i64..1_000,
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut log = Log::open(dir.path(), config(400)).unwrap();
            let mut records = stamped(&batch(2, 30, 5), base, 1);
            records.extend_from_slice(&stamped(&idempotent_batch(9, 0, 0, 3), base + 2, 2));
            records.extend_from_slice(&stamped(&batch(1, 30, 5), base + 40, 2));
            for (index, value) in flips {
                let at = index.index(records.len());
                records[at] ^= value;
            }
            records.truncate(cut.index(records.len() + 1));
            let _ = log.append_as_follower(&records, 0);
            let end = log.log_end_offset();
            let mut offset = log.log_start_offset();
            while offset < end {
                let slice = log.read(offset, usize::MAX, i64::MAX).unwrap().unwrap();
                let bytes = slice.read_to_vec().unwrap();
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let header = BatchHeader::parse(rest).unwrap();
                    header.verify_crc(rest).unwrap();
                    rest = &rest[header.total_size()..];
                }
                prop_assert!(slice.next_offset > offset);
                offset = slice.next_offset;
            }
            drop(log);
            let log = Log::open(dir.path(), config(400)).unwrap();
            prop_assert_eq!(log.log_end_offset(), end);
            prop_assert_eq!(log.recovery_report().bytes_truncated, 0);
        }
    }
}
