use std::collections::BTreeMap;

use super::*;
use crate::testing::{keyed_batch, read_all_records, ReadRecord, TestCompression};
use crate::{Log, LogConfig};

/// Every batch goes to its own segment (segment.bytes = 1 rolls before each append).
fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1,
        index_interval_bytes: 1,
        cleanup_compact: true,
        cleanup_delete: false,
        delete_retention_ms: 500,
        min_cleanable_dirty_ratio: 0.01,
        ..LogConfig::default()
    }
}

fn append(log: &mut Log, entries: &[(Option<&str>, Option<&str>)], compression: TestCompression) {
    let mut bytes = keyed_batch(entries, 100, compression);
    log.append(&mut bytes, 1, 0).unwrap();
}

/// Snapshot, clean and install at `now_ms` with `map_bytes`.
fn run_clean(log: &mut Log, now_ms: i64, map_bytes: usize) -> Option<(CleanSummary, i64)> {
    log.flush().unwrap();
    let snapshot = log.cleanable_snapshot().unwrap();
    let cleaned = clean(&snapshot, now_ms, map_bytes).unwrap()?;
    let up_to = cleaned.cleaned_up_to_offset;
    Some((log.install_cleaned(cleaned).unwrap(), up_to))
}

/// What a compacted read must return: last record per key below `clean_end`, all after.
fn expected_after_compaction(all: &[ReadRecord], clean_end: i64) -> Vec<ReadRecord> {
    let mut last: BTreeMap<Option<String>, i64> = BTreeMap::new();
    for (offset, key, _) in all.iter().filter(|(offset, _, _)| *offset < clean_end) {
        last.insert(key.clone(), *offset);
    }
    all.iter()
        .filter(|(offset, key, _)| *offset >= clean_end || last.get(key) == Some(offset))
        .cloned()
        .collect()
}

#[test]
fn keeps_the_last_value_per_key_with_original_offsets_and_leaves_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compact_config()).unwrap();
    for round in 0..6 {
        let values: Vec<String> = (0..3).map(|k| format!("v{round}-{k}")).collect();
        append(
            &mut log,
            &[
                (Some("a"), Some(&values[0])),
                (Some("b"), Some(&values[1])),
                (Some("c"), Some(&values[2])),
            ],
            TestCompression::None,
        );
    }
    append(
        &mut log,
        &[(Some("a"), Some("active"))],
        TestCompression::None,
    );
    let active_base = log.log_end_offset() - 1;
    let active_bytes = crate::testing::read_first_batch(&log, active_base);
    let before = read_all_records(&log);
    assert_eq!(before.len(), 19);
    assert_eq!(log.segment_count(), 7);
    let (summary, up_to) = run_clean(&mut log, 1_000, DEFAULT_OFFSET_MAP_BYTES).unwrap();
    assert_eq!(up_to, active_base, "cleaned up to the active segment");
    // Segment 0 (kept empty: it holds the log start), 5 (unchanged) and the active one remain.
    assert_eq!(summary.segments_deleted, 4);
    assert_eq!(log.segment_count(), 3);
    assert_eq!(summary.records_removed, 15);
    assert!(summary.bytes_after < summary.bytes_before);
    let after = read_all_records(&log);
    assert_eq!(after, expected_after_compaction(&before, active_base));
    assert_eq!(
        after,
        vec![
            (15, Some("a".into()), Some("v5-0".into())),
            (16, Some("b".into()), Some("v5-1".into())),
            (17, Some("c".into()), Some("v5-2".into())),
            (18, Some("a".into()), Some("active".into())),
        ]
    );
    assert_eq!(
        crate::testing::read_first_batch(&log, active_base),
        active_bytes,
        "the active segment is never rewritten"
    );
    assert_eq!(
        log.log_start_offset(),
        0,
        "cleaning never moves the log start"
    );
    assert_eq!(log.log_end_offset(), 19);
}

#[test]
fn reads_inside_gaps_return_the_next_batch_and_reopen_keeps_the_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compact_config()).unwrap();
    for round in 0..5 {
        let value = format!("v{round}");
        append(
            &mut log,
            &[(Some("k"), Some(&value))],
            TestCompression::None,
        );
        append(
            &mut log,
            &[(Some(&format!("unique{round}")), Some("x"))],
            TestCompression::None,
        );
    }
    append(
        &mut log,
        &[(Some("k"), Some("tail"))],
        TestCompression::None,
    );
    run_clean(&mut log, 1_000, DEFAULT_OFFSET_MAP_BYTES).unwrap();
    let after = read_all_records(&log);
    // k's values at 0, 2, 4, 6 are gone; 8 is its last below the active segment.
    assert!(after
        .iter()
        .all(|(offset, _, _)| ![0, 2, 4, 6].contains(offset)));
    let slice = log.read(2, 1 << 20, i64::MAX).unwrap().unwrap();
    assert_eq!(
        slice.first_offset, 3,
        "a read in a gap starts at the next batch"
    );
    let found = log.find_offset_by_timestamp(0).unwrap().unwrap();
    assert_eq!(
        found.offset, 1,
        "timestamp lookup skips the gap at offset 0"
    );
    drop(log);
    let log = Log::open(dir.path(), compact_config()).unwrap();
    assert_eq!(log.recovery_report().segments_deleted, 0);
    assert_eq!(log.recovery_report().bytes_truncated, 0);
    assert_eq!(read_all_records(&log), after);
    assert_eq!(log.log_end_offset(), 11);
    // Reopen without index files: the full rescan accepts the gaps too.
    drop(log);
    for entry in fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|ext| ext == "index" || ext == "timeindex")
        {
            fs::remove_file(path).unwrap();
        }
    }
    let log = Log::open(dir.path(), compact_config()).unwrap();
    assert_eq!(log.recovery_report().segments_deleted, 0);
    assert_eq!(read_all_records(&log), after);
    // Even with the recovery-point file lost, the cleaner checkpoint vouches for the gaps.
    drop(log);
    fs::remove_file(dir.path().join(crate::RECOVERY_POINT_FILE)).unwrap();
    let log = Log::open(dir.path(), compact_config()).unwrap();
    assert_eq!(log.recovery_report().segments_deleted, 0);
    assert_eq!(log.recovery_report().bytes_truncated, 0);
    assert_eq!(read_all_records(&log), after);
}

#[test]
fn tombstones_survive_until_the_delete_horizon_then_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compact_config()).unwrap();
    append(
        &mut log,
        &[(Some("gone"), Some("v1"))],
        TestCompression::None,
    );
    append(
        &mut log,
        &[(Some("kept"), Some("v1"))],
        TestCompression::None,
    );
    append(&mut log, &[(Some("gone"), None)], TestCompression::None);
    append(
        &mut log,
        &[(Some("other"), Some("active"))],
        TestCompression::None,
    );
    let (_, _) = run_clean(&mut log, 1_000, DEFAULT_OFFSET_MAP_BYTES).unwrap();
    assert_eq!(
        read_all_records(&log),
        vec![
            (1, Some("kept".into()), Some("v1".into())),
            (2, Some("gone".into()), None),
            (3, Some("other".into()), Some("active".into())),
        ]
    );
    // The tombstone's batch carries the delete horizon (KIP-534).
    let batch = crate::testing::read_first_batch(&log, 2);
    let header = BatchHeader::parse(&batch).unwrap();
    assert_ne!(header.attributes & ATTRIBUTE_DELETE_HORIZON, 0);
    assert_eq!(header.base_timestamp, 1_500);
    header.verify_crc(&batch).unwrap();
    // Before the horizon: a second clean keeps it and reports the horizon.
    let snapshot = log.cleanable_snapshot().unwrap();
    let stats = snapshot.dirty_stats(1_400).unwrap();
    assert!(!snapshot.should_clean(&stats, 1_400, Some(1_500)));
    assert!(snapshot.should_clean(&stats, 1_500, Some(1_500)));
    let cleaned = clean(&snapshot, 1_400, DEFAULT_OFFSET_MAP_BYTES)
        .unwrap()
        .unwrap();
    assert_eq!(cleaned.next_delete_horizon_ms, Some(1_500));
    assert!(cleaned.segments.is_empty(), "nothing to change yet");
    log.install_cleaned(cleaned).unwrap();
    assert_eq!(read_all_records(&log).len(), 3);
    // After the horizon: gone.
    run_clean(&mut log, 1_500, DEFAULT_OFFSET_MAP_BYTES).unwrap();
    assert_eq!(
        read_all_records(&log),
        vec![
            (1, Some("kept".into()), Some("v1".into())),
            (3, Some("other".into()), Some("active".into())),
        ]
    );
}

#[test]
fn compressed_batches_keep_their_codec_offsets_and_producer_fields() {
    for compression in [
        TestCompression::Gzip,
        TestCompression::Snappy,
        TestCompression::Lz4,
        TestCompression::Zstd,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), compact_config()).unwrap();
        append(
            &mut log,
            &[
                (Some("a"), Some("old")),
                (Some("b"), Some("b-only")),
                (Some("a"), Some("new")),
                (Some("c"), Some("old")),
            ],
            compression,
        );
        append(
            &mut log,
            &[(Some("c"), Some("newer"))],
            TestCompression::None,
        );
        append(
            &mut log,
            &[(Some("z"), Some("active"))],
            TestCompression::None,
        );
        let original = BatchHeader::parse(&crate::testing::read_first_batch(&log, 0)).unwrap();
        run_clean(&mut log, 1_000, DEFAULT_OFFSET_MAP_BYTES).unwrap();
        let batch = crate::testing::read_first_batch(&log, 0);
        let header = BatchHeader::parse(&batch).unwrap();
        header.verify_crc(&batch).unwrap();
        assert_eq!(
            header.attributes & crate::ATTRIBUTE_COMPRESSION_MASK,
            original.attributes & crate::ATTRIBUTE_COMPRESSION_MASK,
            "{compression:?}"
        );
        assert_eq!(header.base_offset, 0);
        assert_eq!(header.last_offset_delta, original.last_offset_delta);
        assert_eq!(header.records_count, 2);
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (
                original.producer_id,
                original.producer_epoch,
                original.base_sequence
            )
        );
        assert_eq!(
            read_all_records(&log),
            vec![
                (1, Some("b".into()), Some("b-only".into())),
                (2, Some("a".into()), Some("new".into())),
                (4, Some("c".into()), Some("newer".into())),
                (5, Some("z".into()), Some("active".into())),
            ],
            "{compression:?}"
        );
    }
}

#[test]
fn a_full_offset_map_cleans_only_up_to_where_it_filled() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compact_config()).unwrap();
    for i in 0..6 {
        let key = format!("key{i}");
        append(&mut log, &[(Some(&key), Some("v1"))], TestCompression::None);
    }
    append(
        &mut log,
        &[(Some("key0"), Some("v2"))],
        TestCompression::None,
    );
    append(
        &mut log,
        &[(Some("key5"), Some("v2"))],
        TestCompression::None,
    );
    append(
        &mut log,
        &[(Some("x"), Some("active"))],
        TestCompression::None,
    );
    // Room for 3 keys: the map covers offsets 0..3 only.
    let (_, up_to) = run_clean(&mut log, 1_000, 3 * OFFSET_MAP_ENTRY_BYTES).unwrap();
    assert_eq!(up_to, 3);
    assert_eq!(read_cleaner_checkpoint(dir.path()).unwrap(), 3);
    assert_eq!(
        read_all_records(&log).len(),
        9,
        "no key repeats within 0..3"
    );
    // Next rounds continue from the checkpoint until the whole dirty section is done.
    let mut rounds = 0;
    while read_cleaner_checkpoint(dir.path()).unwrap() < 8 {
        run_clean(&mut log, 1_000, 3 * OFFSET_MAP_ENTRY_BYTES).unwrap();
        rounds += 1;
        assert!(rounds < 5);
    }
    // Each round only compares against keys of its own dirty range, so key0@0 is removed
    // only by a round whose map saw key0@6; at the end both old values are gone.
    let after = read_all_records(&log);
    assert!(!after.contains(&(5, Some("key5".into()), Some("v1".into()))));
    assert!(after.contains(&(7, Some("key5".into()), Some("v2".into()))));
    assert!(!after.contains(&(0, Some("key0".into()), Some("v1".into()))));
}

#[test]
fn crash_leftovers_are_removed_on_open_and_the_log_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compact_config()).unwrap();
    append(&mut log, &[(Some("a"), Some("1"))], TestCompression::None);
    append(&mut log, &[(Some("a"), Some("2"))], TestCompression::None);
    append(
        &mut log,
        &[(Some("b"), Some("active"))],
        TestCompression::None,
    );
    log.flush().unwrap();
    let before = read_all_records(&log);
    // A clean that wrote its cleaned files but crashed before swapping them in.
    let snapshot = log.cleanable_snapshot().unwrap();
    let cleaned = clean(&snapshot, 1_000, DEFAULT_OFFSET_MAP_BYTES)
        .unwrap()
        .unwrap();
    assert!(cleaned_path(dir.path(), 0).exists());
    std::mem::forget(cleaned);
    drop(log);
    let log = Log::open(dir.path(), compact_config()).unwrap();
    assert!(!cleaned_path(dir.path(), 0).exists());
    assert_eq!(read_all_records(&log), before);
}

#[test]
fn a_segment_replaced_meanwhile_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compact_config()).unwrap();
    append(&mut log, &[(Some("a"), Some("1"))], TestCompression::None);
    append(&mut log, &[(Some("a"), Some("2"))], TestCompression::None);
    append(
        &mut log,
        &[(Some("b"), Some("active"))],
        TestCompression::None,
    );
    log.flush().unwrap();
    let snapshot = log.cleanable_snapshot().unwrap();
    let stale = clean(&snapshot, 1_000, DEFAULT_OFFSET_MAP_BYTES)
        .unwrap()
        .unwrap();
    // Another clean gets there first and replaces segment 0's file.
    let fresh = clean(&snapshot, 1_000, DEFAULT_OFFSET_MAP_BYTES)
        .unwrap()
        .unwrap();
    log.install_cleaned(fresh).unwrap();
    std::fs::write(cleaned_path(dir.path(), 0), b"stale").unwrap();
    let summary = log.install_cleaned(stale).unwrap();
    assert_eq!(summary.segments_replaced, 0);
    assert_eq!(summary.segments_skipped, 1);
    assert!(!cleaned_path(dir.path(), 0).exists());
    assert_eq!(read_all_records(&log).len(), 2);
}

#[test]
fn dirty_ratio_and_min_compaction_lag_decide_what_is_cleanable() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        min_compaction_lag_ms: 1_000,
        min_cleanable_dirty_ratio: 0.5,
        ..compact_config()
    };
    let mut log = Log::open(dir.path(), config).unwrap();
    // Timestamps 100 (from keyed_batch); segments are younger than the lag until now >= 1100.
    append(&mut log, &[(Some("a"), Some("1"))], TestCompression::None);
    append(&mut log, &[(Some("a"), Some("2"))], TestCompression::None);
    append(&mut log, &[(Some("a"), Some("3"))], TestCompression::None);
    log.flush().unwrap();
    let snapshot = log.cleanable_snapshot().unwrap();
    assert_eq!(
        snapshot.segments.len(),
        2,
        "the active segment is not cleanable"
    );
    let young = snapshot.dirty_stats(500).unwrap();
    assert_eq!(young.first_uncleanable_offset, 0);
    assert!(!snapshot.should_clean(&young, 500, None));
    assert!(clean(&snapshot, 500, DEFAULT_OFFSET_MAP_BYTES)
        .unwrap()
        .is_none());
    let old = snapshot.dirty_stats(5_000).unwrap();
    assert_eq!(old.first_uncleanable_offset, 2);
    assert!((old.dirty_ratio() - 1.0).abs() < f64::EPSILON);
    assert!(snapshot.should_clean(&old, 5_000, None));
    run_clean(&mut log, 5_000, DEFAULT_OFFSET_MAP_BYTES).unwrap();
    let snapshot = log.cleanable_snapshot().unwrap();
    let stats = snapshot.dirty_stats(5_000).unwrap();
    assert_eq!(stats.dirty_bytes, 0);
    assert!(!snapshot.should_clean(&stats, 5_000, None));
    assert_eq!(
        read_all_records(&log),
        vec![
            (1, Some("a".into()), Some("2".into())),
            (2, Some("a".into()), Some("3".into()))
        ]
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the writes, segment sizes and map budget: after cleaning, the log holds
        /// exactly the last record per key below the cleaned offset plus everything after
        /// it, at their original offsets, and it reads the same after a reopen.
        #[test]
        fn cleaning_equals_the_last_value_per_key_model(
            writes in proptest::collection::vec(
                proptest::collection::vec((0u8..6, proptest::option::weighted(0.9, 0u8..50)), 1..4),
                2..30,
            ),
            segment_bytes in 1u64..400,
            map_keys in 1usize..8,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig { segment_bytes, ..compact_config() };
            let mut log = Log::open(dir.path(), config.clone()).unwrap();
            for batch in &writes {
                let keys: Vec<String> = batch.iter().map(|(key, _)| format!("key{key}")).collect();
                let values: Vec<Option<String>> =
                    batch.iter().map(|(_, value)| value.map(|v| format!("value{v}"))).collect();
                let entries: Vec<(Option<&str>, Option<&str>)> = keys
                    .iter()
                    .zip(&values)
                    .map(|(key, value)| (Some(key.as_str()), value.as_deref()))
                    .collect();
                append(&mut log, &entries, TestCompression::None);
            }
            let before = read_all_records(&log);
            // Tombstones stay (the horizon is in the future), so the model is exact.
            if let Some((_, up_to)) = run_clean(&mut log, 1_000, map_keys * OFFSET_MAP_ENTRY_BYTES) {
                let after = read_all_records(&log);
                prop_assert_eq!(&after, &expected_after_compaction(&before, up_to));
                drop(log);
                let log = Log::open(dir.path(), config).unwrap();
                prop_assert_eq!(log.recovery_report().segments_deleted, 0);
                prop_assert_eq!(read_all_records(&log), after);
            }
        }
    }
}

/// `batch` as if written by idempotent producer `producer_id` (epoch 0) at `sequence`.
fn from_producer(mut batch: Vec<u8>, producer_id: i64, sequence: i32) -> Vec<u8> {
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&0i16.to_be_bytes());
    batch[53..57].copy_from_slice(&sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[crate::batch::CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}

#[test]
fn a_producers_last_batch_is_kept_empty_and_earlier_ones_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), compact_config()).unwrap();
    let produced = |key: &str, value: &str, producer_id: i64, sequence: i32| {
        from_producer(
            keyed_batch(&[(Some(key), Some(value))], 100, TestCompression::None),
            producer_id,
            sequence,
        )
    };
    log.append(&mut produced("a", "1", 5, 0), 1, 0).unwrap();
    log.append(&mut produced("b", "1", 6, 0), 1, 0).unwrap();
    log.append(&mut produced("b", "2", 6, 1), 1, 0).unwrap();
    append(&mut log, &[(Some("a"), Some("2"))], TestCompression::None);
    append(&mut log, &[(Some("b"), Some("3"))], TestCompression::None);
    append(
        &mut log,
        &[(Some("z"), Some("active"))],
        TestCompression::None,
    );
    let (summary, _) = run_clean(&mut log, 1_000, DEFAULT_OFFSET_MAP_BYTES).unwrap();
    assert_eq!(summary.records_removed, 3);
    // Producer 5's only batch and producer 6's last batch stay, empty; 6's first one goes.
    let kept = BatchHeader::parse(&crate::testing::read_first_batch(&log, 0)).unwrap();
    assert_eq!(
        (kept.base_offset, kept.records_count, kept.producer_id),
        (0, 0, 5)
    );
    let next = BatchHeader::parse(&crate::testing::read_first_batch(&log, 1)).unwrap();
    assert_eq!(
        (next.base_offset, next.records_count, next.producer_id),
        (2, 0, 6)
    );
    let expected = vec![
        (3, Some("a".into()), Some("2".into())),
        (4, Some("b".into()), Some("3".into())),
        (5, Some("z".into()), Some("active".into())),
    ];
    assert_eq!(read_all_records(&log), expected);
    // Cleaning again changes nothing (the empty batches are stable), and they reopen.
    let (again, _) = run_clean(&mut log, 1_000, DEFAULT_OFFSET_MAP_BYTES).unwrap();
    assert_eq!(again.segments_replaced, 0);
    drop(log);
    for entry in fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "index") {
            fs::remove_file(path).unwrap();
        }
    }
    let log = Log::open(dir.path(), compact_config()).unwrap();
    assert_eq!(log.recovery_report().segments_deleted, 0);
    assert_eq!(log.recovery_report().bytes_truncated, 0);
    assert_eq!(read_all_records(&log), expected);
}
