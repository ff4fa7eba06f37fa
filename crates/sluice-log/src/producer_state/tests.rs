use super::*;
use crate::batch::MAGIC_V2;
use crate::log::{Log, LogConfig};
use crate::testing;
use crate::testing::idempotent_batch;

fn header(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    records: i32,
    base_offset: i64,
) -> BatchHeader {
    BatchHeader {
        base_offset,
        batch_length: 100,
        partition_leader_epoch: 0,
        magic: MAGIC_V2,
        crc: 0,
        attributes: 0,
        last_offset_delta: records - 1,
        base_timestamp: 1_000,
        max_timestamp: 1_000 + base_offset,
        producer_id,
        producer_epoch: epoch,
        base_sequence,
        records_count: records,
    }
}

/// Appends `records`-record batches with consecutive sequences to the state, like the log.
fn feed(
    state: &mut ProducerStateManager,
    producer_id: i64,
    epoch: i16,
    batches: i32,
    records: i32,
) {
    for i in 0..batches {
        let h = header(
            producer_id,
            epoch,
            i * records,
            records,
            i64::from(i * records),
        );
        assert_eq!(state.check(&h).unwrap(), None);
        state.update(&h);
    }
}

#[test]
fn each_of_the_last_five_batches_is_a_duplicate_and_the_sixth_oldest_is_not() {
    let mut state = ProducerStateManager::new();
    feed(&mut state, 7, 0, 6, 2);
    for i in 1..6 {
        let retry = header(7, 0, i * 2, 2, 999);
        let original = state.check(&retry).unwrap().expect("duplicate");
        assert_eq!(original.first_offset, i64::from(i * 2));
        assert_eq!(original.last_offset, i64::from(i * 2 + 1));
    }
    // The first batch fell out of the cache: it is now simply out of order.
    let oldest = header(7, 0, 0, 2, 999);
    assert!(matches!(
        state.check(&oldest),
        Err(LogError::OutOfOrderSequence {
            sequence: 0,
            expected: 12,
            ..
        })
    ));
}

#[test]
fn next_sequence_is_accepted_and_a_gap_is_out_of_order() {
    let mut state = ProducerStateManager::new();
    feed(&mut state, 1, 0, 2, 3);
    assert_eq!(state.check(&header(1, 0, 6, 1, 6)).unwrap(), None);
    assert!(matches!(
        state.check(&header(1, 0, 7, 1, 6)),
        Err(LogError::OutOfOrderSequence {
            sequence: 7,
            expected: 6,
            ..
        })
    ));
    // A partial overlap with a cached batch is not a duplicate either.
    assert!(matches!(
        state.check(&header(1, 0, 3, 1, 6)),
        Err(LogError::OutOfOrderSequence { .. })
    ));
}

#[test]
fn sequences_wrap_from_i32_max_to_zero() {
    assert_eq!(increment_sequence(i32::MAX, 1), 0);
    assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
    let mut state = ProducerStateManager::new();
    let last = header(3, 0, i32::MAX - 1, 2, 0);
    state.update(&last);
    assert_eq!(
        state.producer(3).unwrap().batches[0].last_sequence,
        i32::MAX
    );
    assert_eq!(state.check(&header(3, 0, 0, 1, 2)).unwrap(), None);
    // A batch spanning the wrap: lastSeq = baseSeq + lastOffsetDelta wrapping.
    let spanning = header(4, 0, i32::MAX, 3, 0);
    state.update(&spanning);
    assert_eq!(state.producer(4).unwrap().batches[0].last_sequence, 1);
    assert_eq!(state.check(&header(4, 0, 2, 1, 3)).unwrap(), None);
    assert!(state
        .check(&header(4, 0, i32::MAX, 3, 9))
        .unwrap()
        .is_some());
}

#[test]
fn an_older_epoch_is_fenced_and_a_newer_one_must_start_at_zero() {
    let mut state = ProducerStateManager::new();
    feed(&mut state, 9, 3, 2, 1);
    assert!(matches!(
        state.check(&header(9, 2, 2, 1, 2)),
        Err(LogError::InvalidProducerEpoch {
            epoch: 2,
            current_epoch: 3,
            ..
        })
    ));
    // Even a "duplicate" of an old epoch's sequence is fenced.
    assert!(matches!(
        state.check(&header(9, 2, 0, 1, 2)),
        Err(LogError::InvalidProducerEpoch { .. })
    ));
    assert!(matches!(
        state.check(&header(9, 4, 5, 1, 2)),
        Err(LogError::OutOfOrderSequence { expected: 0, .. })
    ));
    let bumped = header(9, 4, 0, 1, 2);
    assert_eq!(state.check(&bumped).unwrap(), None);
    state.update(&bumped);
    let entry = state.producer(9).unwrap();
    assert_eq!(entry.epoch, 4);
    assert_eq!(
        entry.batches.len(),
        1,
        "a new epoch forgets the old batches"
    );
}

#[test]
fn an_unknown_producer_may_start_at_any_sequence() {
    let state = ProducerStateManager::new();
    assert_eq!(state.check(&header(5, 0, 1234, 1, 0)).unwrap(), None);
    assert_eq!(state.check(&header(5, 7, 0, 1, 0)).unwrap(), None);
}

#[test]
fn idempotent_batches_need_a_sequence_and_an_epoch() {
    let state = ProducerStateManager::new();
    assert!(matches!(
        state.check(&header(5, 0, -1, 1, 0)),
        Err(LogError::InvalidBatch(_))
    ));
    assert!(matches!(
        state.check(&header(5, -1, 0, 1, 0)),
        Err(LogError::InvalidBatch(_))
    ));
}

#[test]
fn expiration_removes_idle_producers_only() {
    let mut state = ProducerStateManager::new();
    state.update(&header(1, 0, 0, 1, 0)); // max timestamp 1000
    state.update(&header(2, 0, 0, 1, 5_000)); // max timestamp 6000
    assert_eq!(state.remove_expired(7_000, 5_000), 1);
    assert!(state.producer(1).is_none());
    assert!(state.producer(2).is_some());
}

#[test]
fn snapshot_round_trips_and_detects_corruption() {
    let mut state = ProducerStateManager::new();
    feed(&mut state, 1, 0, 7, 2);
    feed(&mut state, i64::MAX, i16::MAX, 1, 1);
    let bytes = state.to_snapshot_bytes();
    assert_eq!(
        ProducerStateManager::from_snapshot_bytes(&bytes).unwrap(),
        state
    );
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(ProducerStateManager::from_snapshot_bytes(&flipped).is_err());
    assert!(ProducerStateManager::from_snapshot_bytes(&bytes[..bytes.len() - 3]).is_err());
    assert!(ProducerStateManager::from_snapshot_bytes(b"").is_err());
}

#[test]
fn only_the_newest_two_snapshots_are_kept_and_later_ones_are_dropped_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = ProducerStateManager::new();
    for offset in [10, 20, 30] {
        state.update(&header(1, 0, offset as i32, 1, offset));
        write_snapshot(dir.path(), offset + 1, &state).unwrap();
    }
    assert_eq!(list_snapshots(dir.path()).unwrap(), vec![21, 31]);
    let loaded = load_snapshot(dir.path(), 25).unwrap();
    assert_eq!(loaded.deleted_beyond_log_end, 1);
    let (offset, loaded_state) = loaded.state.unwrap();
    assert_eq!(offset, 21);
    assert_eq!(loaded_state.producer(1).unwrap().batches.len(), 2);
    // A corrupt snapshot is ignored (and deleted).
    fs::write(dir.path().join(snapshot_file_name(21)), b"garbage").unwrap();
    let loaded = load_snapshot(dir.path(), 25).unwrap();
    assert_eq!(loaded.corrupt, 1);
    assert!(loaded.state.is_none());
}

fn append(
    log: &mut Log,
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    records: usize,
) -> Result<crate::AppendInfo, LogError> {
    let mut batch = idempotent_batch(producer_id, epoch, base_sequence, records);
    log.append(&mut batch, 0, 1_000)
}

#[test]
fn log_append_deduplicates_and_answers_with_the_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let first = append(&mut log, 42, 0, 0, 3).unwrap();
    let second = append(&mut log, 42, 0, 3, 2).unwrap();
    assert_eq!((first.base_offset, second.base_offset), (0, 3));
    let retry = append(&mut log, 42, 0, 0, 3).unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.base_offset, retry.last_offset), (0, 2));
    assert_eq!(log.log_end_offset(), 5, "a duplicate writes nothing");
    assert!(matches!(
        append(&mut log, 42, 0, 9, 1),
        Err(LogError::OutOfOrderSequence { .. })
    ));
    assert_eq!(log.log_end_offset(), 5, "a refused batch writes nothing");
    // Non-idempotent batches are untouched by all this.
    let mut plain = testing::batch(1, 10, 1_000);
    assert!(!log.append(&mut plain, 0, 1_000).unwrap().duplicate);
}

#[test]
fn state_survives_reopen_through_a_snapshot_and_the_headers_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
        append(&mut log, 1, 0, 0, 2).unwrap();
        log.flush().unwrap(); // snapshot at offset 2
        append(&mut log, 1, 0, 2, 2).unwrap();
        append(&mut log, 2, 0, 0, 1).unwrap();
        let target = log.sync_target();
        target.sync().unwrap(); // on disk but not checkpointed: replayed from headers
    }
    // Offset 0: the (empty) snapshot the first open's checkpoint wrote.
    assert_eq!(list_snapshots(dir.path()).unwrap(), vec![0, 2]);
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let report = log.recovery_report().clone();
    assert_eq!(report.producer_snapshot_offset, Some(2));
    assert_eq!(report.producer_batches_replayed, 2);
    assert_eq!(report.producers_loaded, 2);
    let retry = append(&mut log, 1, 0, 2, 2).unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.base_offset, 2);
    assert!(append(&mut log, 2, 0, 0, 1).unwrap().duplicate);
    assert_eq!(append(&mut log, 1, 0, 4, 1).unwrap().base_offset, 5);
}

#[test]
fn state_is_rebuilt_from_the_log_start_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
        for seq in 0..7 {
            append(&mut log, 5, 1, seq, 1).unwrap();
        }
        log.flush().unwrap();
    }
    for offset in list_snapshots(dir.path()).unwrap() {
        fs::remove_file(dir.path().join(snapshot_file_name(offset))).unwrap();
    }
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.recovery_report().producer_snapshot_offset, None);
    assert_eq!(log.recovery_report().producer_batches_replayed, 7);
    assert!(append(&mut log, 5, 1, 6, 1).unwrap().duplicate);
    assert!(
        append(&mut log, 5, 1, 1, 1).is_err(),
        "only the last five are cached"
    );
    assert!(matches!(
        append(&mut log, 5, 0, 7, 1),
        Err(LogError::InvalidProducerEpoch { .. })
    ));
}

#[test]
fn a_snapshot_beyond_a_truncated_log_end_is_dropped_and_the_state_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let segment_path = dir.path().join("00000000000000000000.log");
    let size_after_two;
    {
        let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
        append(&mut log, 8, 0, 0, 1).unwrap();
        append(&mut log, 8, 0, 1, 1).unwrap();
        log.flush().unwrap(); // snapshot at 2
        size_after_two = fs::metadata(&segment_path).unwrap().len();
        append(&mut log, 8, 0, 2, 1).unwrap();
        log.flush().unwrap(); // snapshot at 3
    }
    assert_eq!(list_snapshots(dir.path()).unwrap(), vec![2, 3]);
    // The third batch is lost (a torn tail): the log ends at 2 after recovery.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&segment_path)
        .unwrap();
    file.set_len(size_after_two + 10).unwrap();
    drop(file);
    crate::checkpoint::write_recovery_point(dir.path(), 0).unwrap();
    let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.recovery_report().producer_snapshot_offset, Some(2));
    assert!(log.recovery_report().producer_snapshots_deleted >= 1);
    // Sequence 2 was lost with the tail, so it is new again, not a duplicate.
    let again = append(&mut log, 8, 0, 2, 1).unwrap();
    assert!(!again.duplicate);
    assert_eq!(again.base_offset, 2);
}

proptest::proptest! {
    /// A producer that sends new batches and retries any of its last five in any order gets
    /// every retry answered with the original offsets and every new batch accepted, so the
    /// log holds each record exactly once, in sequence order — also across the i32 wrap.
    #[test]
    fn retries_of_the_last_five_are_always_deduplicated(
        start_sequence in proptest::prop_oneof![0..1000i32, (i32::MAX - 50)..=i32::MAX],
        ops in proptest::collection::vec((1..4i32, 0..8usize), 1..60),
    ) {
        let mut state = ProducerStateManager::new();
        let mut log_end = 0i64;
        let mut next_sequence = start_sequence;
        let mut sent: Vec<(i32, i32, i64)> = Vec::new(); // (base sequence, records, base offset)
        for (records, retry_back) in ops {
            if retry_back > 0 && retry_back <= sent.len().min(BATCHES_PER_PRODUCER) {
                let (sequence, count, offset) = sent[sent.len() - retry_back];
                let original = state.check(&header(11, 0, sequence, count, 0)).unwrap();
                proptest::prop_assert_eq!(original.map(|b| b.first_offset), Some(offset));
                continue;
            }
            let h = header(11, 0, next_sequence, records, log_end);
            proptest::prop_assert_eq!(state.check(&h).unwrap(), None);
            state.update(&h);
            sent.push((next_sequence, records, log_end));
            log_end += i64::from(records);
            next_sequence = increment_sequence(next_sequence, records);
        }
    }
}
