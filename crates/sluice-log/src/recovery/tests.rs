use std::fs;
use std::path::Path;

use crate::testing::{append_stored, assert_every_offset_reads_back, batch, StoredBatch};
use crate::{Log, LogConfig};

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 100,
        ..LogConfig::default()
    }
}

fn log_path(dir: &Path, base_offset: i64) -> std::path::PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

/// Writes `count` batches of 2 records, optionally flushes, and closes the log.
fn write_log(dir: &Path, log_config: &LogConfig, count: usize, flush: bool) -> Vec<StoredBatch> {
    let mut log = Log::open(dir, log_config.clone()).unwrap();
    let stored = (0..count)
        .map(|i| append_stored(&mut log, &batch(2, 30, i as i64), 0))
        .collect();
    if flush {
        log.flush().unwrap();
    }
    stored
}

#[test]
fn a_torn_last_batch_is_cut_at_every_byte_position() {
    let template = tempfile::tempdir().unwrap();
    let log_config = config(1 << 20);
    let stored = write_log(template.path(), &log_config, 5, false);
    let file_bytes = fs::read(log_path(template.path(), 0)).unwrap();
    let last_batch_start = file_bytes.len() - stored[4].bytes.len();
    for cut in last_batch_start..file_bytes.len() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(log_path(dir.path(), 0), &file_bytes[..cut]).unwrap();
        let mut log = Log::open(dir.path(), log_config.clone()).unwrap();
        assert_eq!(log.log_end_offset(), 8, "cut at {cut}");
        assert_eq!(
            log.recovery_report().bytes_truncated,
            (cut - last_batch_start) as u64
        );
        assert_eq!(
            fs::metadata(log_path(dir.path(), 0)).unwrap().len(),
            last_batch_start as u64
        );
        assert_every_offset_reads_back(&log, &stored[..4]);
        // The log keeps working where it was cut.
        let again = append_stored(&mut log, &batch(1, 3, 0), 0);
        assert_eq!(again.base_offset, 8);
    }
}

#[test]
fn a_torn_tail_after_a_checkpoint_is_cut_too() {
    let dir = tempfile::tempdir().unwrap();
    let log_config = config(1 << 20);
    let mut stored = write_log(dir.path(), &log_config, 5, true);
    {
        let mut log = Log::open(dir.path(), log_config.clone()).unwrap();
        stored.push(append_stored(&mut log, &batch(3, 30, 0), 0));
    }
    let path = log_path(dir.path(), 0);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let log = Log::open(dir.path(), log_config).unwrap();
    assert_every_offset_reads_back(&log, &stored[..5]);
}

#[test]
fn garbage_after_the_last_batch_is_truncated() {
    for garbage in [
        vec![0u8; 3],
        vec![0u8; 100],
        vec![0xab; 5000],
        batch(1, 10, 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log_config = config(1 << 20);
        let stored = write_log(dir.path(), &log_config, 4, false);
        let path = log_path(dir.path(), 0);
        let mut bytes = fs::read(&path).unwrap();
        let good_len = bytes.len();
        bytes.extend_from_slice(&garbage);
        fs::write(&path, &bytes).unwrap();
        let log = Log::open(dir.path(), log_config).unwrap();
        assert_every_offset_reads_back(&log, &stored);
        assert_eq!(fs::metadata(&path).unwrap().len(), good_len as u64);
    }
}

#[test]
fn a_flipped_byte_in_the_last_batch_fails_the_crc_and_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let log_config = config(1 << 20);
    let stored = write_log(dir.path(), &log_config, 4, false);
    let path = log_path(dir.path(), 0);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let log = Log::open(dir.path(), log_config).unwrap();
    assert_every_offset_reads_back(&log, &stored[..3]);
}

#[test]
fn corruption_in_an_early_segment_deletes_the_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let one_batch_bytes = batch(2, 30, 0).len() as u64;
    let log_config = config(one_batch_bytes * 2);
    let stored = write_log(dir.path(), &log_config, 6, false);
    assert!(log_path(dir.path(), 8).exists());
    let path = log_path(dir.path(), 4);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    fs::write(&path, &bytes).unwrap();
    let log = Log::open(dir.path(), log_config).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.recovery_report().segments_deleted, 1);
    assert!(!log_path(dir.path(), 8).exists());
    assert_every_offset_reads_back(&log, &stored[..3]);
}

#[test]
fn a_segment_that_does_not_follow_its_predecessor_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log_config = config(1 << 20);
    let stored = write_log(dir.path(), &log_config, 3, false);
    fs::write(log_path(dir.path(), 100), batch(1, 1, 0)).unwrap();
    let log = Log::open(dir.path(), log_config).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert!(!log_path(dir.path(), 100).exists());
    assert_every_offset_reads_back(&log, &stored);
}

type Corruption = Box<dyn Fn(&Path)>;

#[test]
fn missing_or_corrupt_indexes_are_rebuilt() {
    let corruptions: Vec<(&str, Corruption)> = vec![
        (
            "missing",
            Box::new(|path: &Path| fs::remove_file(path).unwrap()),
        ),
        (
            "odd size",
            Box::new(|path: &Path| fs::write(path, [1u8; 7]).unwrap()),
        ),
        (
            "not monotonic",
            Box::new(|path: &Path| fs::write(path, [0u8; 24]).unwrap()),
        ),
        (
            "past the log end",
            Box::new(|path: &Path| {
                let mut entry = 5u32.to_be_bytes().to_vec();
                entry.extend_from_slice(&u32::MAX.to_be_bytes());
                fs::write(path, entry).unwrap()
            }),
        ),
        (
            "lying position",
            Box::new(|path: &Path| {
                let mut entry = 5u32.to_be_bytes().to_vec();
                entry.extend_from_slice(&7u32.to_be_bytes());
                fs::write(path, entry).unwrap()
            }),
        ),
    ];
    for suffix in ["index", "timeindex"] {
        for (name, corrupt) in &corruptions {
            let dir = tempfile::tempdir().unwrap();
            let log_config = config(3_000);
            let stored = write_log(dir.path(), &log_config, 60, true);
            corrupt(&dir.path().join(format!("{:020}.{suffix}", 0)));
            let log = Log::open(dir.path(), log_config.clone()).unwrap();
            assert_eq!(log.recovery_report().bytes_truncated, 0, "{suffix} {name}");
            assert_every_offset_reads_back(&log, &stored);
            assert_eq!(log.max_timestamp().unwrap().timestamp, 59);
            assert_eq!(log.find_offset_by_timestamp(3).unwrap().unwrap().offset, 6);
        }
    }
}

#[test]
fn recovery_checkpoints_so_the_next_open_scans_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log_config = config(2_000);
    let stored = write_log(dir.path(), &log_config, 30, false);
    let log = Log::open(dir.path(), log_config.clone()).unwrap();
    assert_eq!(log.recovery_report().batches_verified, 30);
    drop(log);
    let log = Log::open(dir.path(), log_config).unwrap();
    assert_eq!(log.recovery_report().batches_verified, 0);
    assert_eq!(log.recovery_report().indexes_rebuilt, 0);
    assert_every_offset_reads_back(&log, &stored);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the files hold, open never panics and serves only what it validated.
        #[test]
        fn opening_arbitrary_files_never_panics(
            valid_batches in 0usize..5,
            garbage in prop::collection::vec(any::<u8>(), 0..300),
            index_bytes in prop::collection::vec(any::<u8>(), 0..40),
            time_index_bytes in prop::collection::vec(any::<u8>(), 0..40),
            recovery_point in -5i64..20,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut log_bytes = Vec::new();
            let mut base_offset = 0i64;
            for i in 0..valid_batches {
                let mut one = batch(1 + i, 5, i as i64);
                crate::batch::rewrite_header(&mut one, base_offset, 0);
                base_offset += 1 + i as i64;
                log_bytes.extend_from_slice(&one);
            }
            log_bytes.extend_from_slice(&garbage);
            fs::write(log_path(dir.path(), 0), &log_bytes).unwrap();
            fs::write(dir.path().join(format!("{:020}.index", 0)), &index_bytes).unwrap();
            fs::write(dir.path().join(format!("{:020}.timeindex", 0)), &time_index_bytes).unwrap();
            fs::write(dir.path().join(crate::RECOVERY_POINT_FILE), recovery_point.to_string()).unwrap();
            let log = Log::open(dir.path(), config(1 << 20)).unwrap();
            prop_assert!(log.log_end_offset() >= base_offset);
            for offset in 0..log.log_end_offset() {
                let slice = log.read(offset, 0, i64::MAX).unwrap().unwrap();
                let bytes = slice.read_to_vec().unwrap();
                prop_assert!(crate::validate_for_append(&bytes, usize::MAX).is_ok());
            }
            let _ = log.find_offset_by_timestamp(2).unwrap();
        }

        #[test]
        fn validating_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = crate::validate_for_append(&bytes, 1 << 20);
            let _ = crate::BatchHeader::parse(&bytes);
        }
    }
}
