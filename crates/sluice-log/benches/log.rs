//! Criterion benches of the storage hot paths: append (with and without a group-commit
//! fsync every N batches), read (`Log::read` plus the copy of the slice a plain fetch
//! makes) and batch validation (`prepare_batch`, uncompressed and lz4). Quick by design
//! (`cargo bench -p sluice-log`): small samples, one second of measurement each.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_log::{prepare_batch, BatchPolicy, Log, LogConfig};

const NOW_MS: i64 = 1_700_000_000_000;
/// Batches appended per measured iteration.
const APPENDS_PER_ITERATION: usize = 256;

/// One RecordBatch v2 of `records` records with `value_bytes`-byte values.
fn batch(records: usize, value_bytes: usize, compression: Compression) -> Vec<u8> {
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: NOW_MS,
            key: None,
            value: Some(Bytes::from(
                (0..value_bytes)
                    .map(|j| ((i * 7 + j) % 251) as u8)
                    .collect::<Vec<u8>>(),
            )),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buffer = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buffer, records.iter(), &options).expect("batch encodes");
    buffer.to_vec()
}

fn fresh_log() -> (tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(dir.path(), LogConfig::default()).expect("log opens");
    (dir, log)
}

fn append(c: &mut Criterion) {
    // A 1 KiB batch: one record of ~950 bytes plus framing.
    let template = batch(1, 950, Compression::None);
    let mut group = c.benchmark_group("log_append");
    group.throughput(Throughput::Bytes(
        (template.len() * APPENDS_PER_ITERATION) as u64,
    ));
    for sync_every in [0usize, 16] {
        let name = if sync_every == 0 {
            "1KiB_batches_no_fsync".to_string()
        } else {
            format!("1KiB_batches_fsync_every_{sync_every}")
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                fresh_log,
                |(dir, mut log)| {
                    let mut buffer = template.clone();
                    for i in 0..APPENDS_PER_ITERATION {
                        log.append(&mut buffer, 0, NOW_MS).expect("append");
                        if sync_every > 0 && (i + 1) % sync_every == 0 {
                            let target = log.sync_target();
                            target.sync().expect("fsync");
                            log.mark_synced(target.offset_end, target.generation);
                        }
                    }
                    (dir, log)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let (_dir, mut log) = fresh_log();
    let mut buffer = batch(16, 1000, Compression::None);
    let batches = 2048;
    for _ in 0..batches {
        log.append(&mut buffer, 0, NOW_MS).expect("append");
    }
    let log_end_offset = log.log_end_offset();
    let max_bytes = 64 * 1024;
    let mut group = c.benchmark_group("log_read");
    group.throughput(Throughput::Bytes(max_bytes as u64));
    let mut offset = 0i64;
    group.bench_function("read_64KiB_and_copy", |b| {
        b.iter(|| {
            let slice = log
                .read(offset, max_bytes, log_end_offset)
                .expect("read")
                .expect("data below the log end");
            let bytes = slice.read_to_vec().expect("pread");
            offset = if slice.next_offset >= log_end_offset {
                0
            } else {
                slice.next_offset
            };
            bytes.len()
        })
    });
    group.finish();
}

fn validate(c: &mut Criterion) {
    let policy = BatchPolicy::new(1_048_588);
    let mut group = c.benchmark_group("prepare_batch");
    for (name, compression) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
        // 16 records of 1 KiB: a typical 16 KiB producer batch.
        let template = batch(16, 1024, compression);
        group.throughput(Throughput::Bytes(16 * 1024));
        group.bench_function(format!("16x1KiB_{name}"), |b| {
            b.iter_batched(
                || template.clone(),
                |mut buffer| {
                    prepare_batch(&mut buffer, &policy, NOW_MS).expect("valid batch");
                    buffer
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = quick();
    targets = append, read, validate
}
criterion_main!(benches);
