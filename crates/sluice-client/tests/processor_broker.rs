//! The processing helper against the real in-process broker: records produced to a topic
//! with the low-level `BatchProducer`, read back with the `Fetcher`, fed to a `Processor`
//! whose dead letters are written by a sink adapter that does a real Produce with headers.

mod common;

use common::start_broker;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_client::dedup::{DedupKey, Deduplicator, MemoryDedup, RedbDedup, RedbDedupConfig};
use sluice_client::processor::{
    dead_letter_headers, replay_record, BoxFuture, DeadLetterSink, DedupConfig, HandlerError,
    ProcessorConfig, RetryConfig,
};
use sluice_client::topics::describe_topic;
use sluice_client::{
    ensure_topic, BatchProducer, ClientError, ConsumerRecord, FetchConfig, Fetcher, Header,
    Processor, ProducerConfig, ProducerRecord, RecordMetadata, TopicPartition,
};

const TIMEOUT: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One RecordBatch v2 of `records` with their headers (the low-level `encode_batch` has no
/// headers).
fn encode_with_headers(records: &[ProducerRecord]) -> Bytes {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: r.timestamp_ms.unwrap_or_else(now_ms),
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|h| (StrBytes::from_string(h.key.clone()), h.value.clone()))
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut buffer = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::Lz4,
    };
    RecordBatchEncoder::encode(&mut buffer, records.iter(), &options).unwrap();
    buffer.freeze()
}

/// The test's partitioner for records without a partition: the number in a `kN` key.
fn partition_for(record: &ProducerRecord, partitions: i32) -> i32 {
    let key = record.key.as_deref().unwrap_or_default();
    let number: i32 = std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.trim_start_matches('k').parse().ok())
        .unwrap_or(0);
    number % partitions
}

/// Produces records to the broker (one Produce per record, acks=all), creating topics on
/// first use; the dead-letter sink adapter of these tests.
struct BrokerSink {
    bootstrap: String,
    producers: tokio::sync::Mutex<HashMap<String, Arc<BatchProducer>>>,
}

impl BrokerSink {
    fn new(bootstrap: &str) -> BrokerSink {
        BrokerSink {
            bootstrap: bootstrap.to_string(),
            producers: Default::default(),
        }
    }

    async fn producer(&self, topic: &str) -> Result<Arc<BatchProducer>, ClientError> {
        let mut producers = self.producers.lock().await;
        if let Some(producer) = producers.get(topic) {
            return Ok(producer.clone());
        }
        let layout = ensure_topic(&self.bootstrap, topic, 1, -1, TIMEOUT).await?;
        let producer = Arc::new(BatchProducer::connect(layout, ProducerConfig::default()).await?);
        producers.insert(topic.to_string(), producer.clone());
        Ok(producer)
    }

    async fn produce(&self, record: ProducerRecord) -> Result<RecordMetadata, ClientError> {
        let producer = self.producer(&record.topic).await?;
        let partitions = producer.partitions().len() as i32;
        let partition = record
            .partition
            .unwrap_or_else(|| partition_for(&record, partitions));
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let record = ProducerRecord {
            timestamp_ms: Some(timestamp_ms),
            ..record
        };
        let ack = producer
            .send(partition, encode_with_headers(&[record]))
            .await?;
        let (_, result) = ack
            .wait()
            .await?
            .pop()
            .ok_or_else(|| ClientError::Protocol("no ack".into()))?;
        let offset = result?.ok_or_else(|| ClientError::Protocol("no offset".into()))?;
        Ok(RecordMetadata {
            partition,
            offset,
            timestamp_ms,
        })
    }
}

impl DeadLetterSink for BrokerSink {
    fn publish(
        &self,
        record: ProducerRecord,
    ) -> BoxFuture<'_, Result<RecordMetadata, ClientError>> {
        Box::pin(self.produce(record))
    }
}

/// Every record of `topic` from `from` (per partition) to the high watermark, and the high
/// watermarks.
async fn fetch_all(
    bootstrap: &str,
    topic: &str,
    from: &BTreeMap<i32, i64>,
) -> (Vec<ConsumerRecord>, BTreeMap<i32, i64>) {
    let layout = describe_topic(bootstrap, topic, TIMEOUT).await.unwrap();
    let fetcher = Fetcher::connect(
        &layout,
        FetchConfig {
            max_wait_ms: 10,
            ..FetchConfig::default()
        },
    )
    .await
    .unwrap();
    let mut records = Vec::new();
    let mut watermarks = BTreeMap::new();
    for partition in layout.partitions() {
        let mut offset = from.get(&partition).copied().unwrap_or(0);
        loop {
            let fetched = fetcher
                .fetch(&[(partition, offset)])
                .await
                .unwrap()
                .wait()
                .await
                .unwrap()
                .pop()
                .unwrap();
            for batch in &fetched.batches {
                for record in batch.records().unwrap() {
                    if record.offset < offset {
                        continue;
                    }
                    records.push(ConsumerRecord {
                        topic: topic.to_string(),
                        partition,
                        offset: record.offset,
                        timestamp_ms: record.timestamp,
                        key: record.key,
                        value: record.value,
                        headers: record
                            .headers
                            .into_iter()
                            .map(|(key, value)| Header {
                                key: key.to_string(),
                                value,
                            })
                            .collect(),
                    });
                }
            }
            offset = fetched.next_offset(offset);
            if offset >= fetched.high_watermark {
                watermarks.insert(partition, fetched.high_watermark);
                break;
            }
        }
    }
    (records, watermarks)
}

fn text(bytes: &Option<Bytes>) -> String {
    String::from_utf8(bytes.as_deref().unwrap_or_default().to_vec()).unwrap()
}

fn message_id(record: &ConsumerRecord) -> String {
    text(&record.header("message-id").unwrap().value)
}

fn original(i: usize) -> ProducerRecord {
    let key = i % 10;
    ProducerRecord::new("orders", format!("order {i}"))
        .with_key(format!("k{key}"))
        .with_partition((key % 3) as i32)
        .with_header("message-id", format!("m{i}"))
        .with_header("trace", format!("t{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_records_reach_the_dlq_with_headers_the_rest_commit_and_replays_dedup() {
    let (broker, _dir, bootstrap) = start_broker(&[]).await;
    ensure_topic(&bootstrap, "orders", 3, -1, TIMEOUT)
        .await
        .unwrap();
    let sink = Arc::new(BrokerSink::new(&bootstrap));
    for i in 0..60 {
        sink.produce(original(i)).await.unwrap();
    }
    let (records, watermarks) = fetch_all(&bootstrap, "orders", &BTreeMap::new()).await;
    assert_eq!(records.len(), 60);

    // k3 and k7 fail on every attempt while `failing` is set; k5 fails each record's first
    // attempt; handlers sleep a pseudo-random while.
    let failing = Arc::new(AtomicBool::new(true));
    let handled: Arc<Mutex<Vec<ConsumerRecord>>> = Arc::default();
    let first_attempts: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let handler = {
        let (failing, handled, first_attempts) =
            (failing.clone(), handled.clone(), first_attempts.clone());
        move |record: ConsumerRecord| {
            let (failing, handled, first_attempts) =
                (failing.clone(), handled.clone(), first_attempts.clone());
            async move {
                let key = text(&record.key);
                let delay_us =
                    (record.offset as u64 * 7919 + record.partition as u64 * 104_729) % 3_000;
                tokio::time::sleep(Duration::from_micros(delay_us)).await;
                if failing.load(Ordering::SeqCst) && (key == "k3" || key == "k7") {
                    return Err(HandlerError::new(format!(
                        "rejecting {key} at {}",
                        record.offset
                    )));
                }
                if key == "k5" && first_attempts.lock().unwrap().insert(message_id(&record)) {
                    return Err(HandlerError::new("flaky"));
                }
                handled.lock().unwrap().push(record);
                Ok(())
            }
        }
    };
    let dedup = Arc::new(MemoryDedup::new(1_000));
    let config = ProcessorConfig {
        concurrency: 4,
        max_in_flight_records: 16,
        retry: RetryConfig {
            max_attempts: 3,
            retry_backoff_ms: 2,
            backoff_multiplier: 2.0,
            retry_backoff_max_ms: 10,
            jitter: 0.2,
        },
        dedup: Some(DedupConfig {
            store: dedup.clone(),
            key: DedupKey::Header("message-id".to_string()),
        }),
        ..ProcessorConfig::default()
    };
    let started_ms = now_ms();
    let processor = Processor::new(config, handler, sink.clone());
    for record in records.clone() {
        processor.submit(record).await.unwrap();
    }
    processor.drain().await.unwrap();
    let finished_ms = now_ms();

    // The rest were handled, once each, in offset order per key.
    let expected_failing: BTreeSet<(i32, i64)> = records
        .iter()
        .filter(|r| matches!(text(&r.key).as_str(), "k3" | "k7"))
        .map(|r| (r.partition, r.offset))
        .collect();
    assert_eq!(expected_failing.len(), 12);
    {
        let handled = handled.lock().unwrap();
        let handled_ids: BTreeSet<String> = handled.iter().map(message_id).collect();
        let expected_ids: BTreeSet<String> = records
            .iter()
            .filter(|r| !expected_failing.contains(&(r.partition, r.offset)))
            .map(message_id)
            .collect();
        assert_eq!(handled.len(), 48);
        assert_eq!(handled_ids, expected_ids);
        let mut last: HashMap<String, i64> = HashMap::new();
        for record in handled.iter() {
            if let Some(previous) = last.insert(text(&record.key), record.offset) {
                assert!(previous < record.offset, "key order broken");
            }
        }
    }
    // Committed up to the log end of every partition.
    let committable = processor.committable();
    for (partition, high_watermark) in &watermarks {
        assert_eq!(
            committable[&TopicPartition::new("orders", *partition)],
            *high_watermark
        );
    }
    let metrics = processor.metrics();
    assert_eq!(
        (metrics.handled, metrics.dead_lettered, metrics.deduplicated),
        (48, 12, 0)
    );
    assert_eq!(
        metrics.retried,
        12 * 2 + 6,
        "2 retries per dead letter, 1 per k5 record"
    );

    // Exactly the failing records are in orders.dlq, with their original key, value and
    // headers and correct dead-letter headers.
    let (letters, _) = fetch_all(&bootstrap, "orders.dlq", &BTreeMap::new()).await;
    assert_eq!(letters.len(), 12);
    let by_origin: HashMap<(i32, i64), &ConsumerRecord> = records
        .iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    let mut dead: BTreeSet<(i32, i64)> = BTreeSet::new();
    for letter in &letters {
        let info = dead_letter_headers(letter).unwrap();
        assert_eq!(info.topic, "orders");
        assert_eq!(info.attempts, 3);
        let origin = by_origin[&(info.partition, info.offset)];
        assert_eq!(
            info.error,
            format!("rejecting {} at {}", text(&origin.key), origin.offset)
        );
        assert!(info.failed_at_ms >= started_ms && info.failed_at_ms <= finished_ms);
        assert_eq!((&letter.key, &letter.value), (&origin.key, &origin.value));
        assert_eq!(letter.headers[..2], origin.headers[..]);
        let names: Vec<&str> = letter.headers[2..].iter().map(|h| h.key.as_str()).collect();
        assert_eq!(
            names,
            [
                "sluice.dlq.topic",
                "sluice.dlq.partition",
                "sluice.dlq.offset",
                "sluice.dlq.attempts",
                "sluice.dlq.error",
                "sluice.dlq.failed.at.ms"
            ]
        );
        dead.insert((info.partition, info.offset));
    }
    assert_eq!(dead, expected_failing);

    // Replay the dead letters (the handler works now) and redeliver two handled records:
    // the replays restore the originals and are handled, the duplicates are skipped.
    failing.store(false, Ordering::SeqCst);
    for letter in &letters {
        let replay = replay_record(letter, None).unwrap();
        assert_eq!(replay.topic, "orders");
        assert!(replay
            .headers
            .iter()
            .all(|h| !h.key.starts_with("sluice.dlq.")));
        sink.produce(replay).await.unwrap();
    }
    sink.produce(original(0)).await.unwrap();
    sink.produce(original(11)).await.unwrap();
    let (new_records, new_watermarks) = fetch_all(&bootstrap, "orders", &watermarks).await;
    assert_eq!(new_records.len(), 14);
    for replayed in new_records
        .iter()
        .filter(|r| !["m0", "m11"].contains(&message_id(r).as_str()))
    {
        let info_origin = letters
            .iter()
            .map(|l| (dead_letter_headers(l).unwrap(), l))
            .find(|(_, l)| l.header("message-id") == replayed.header("message-id"))
            .map(|(info, _)| by_origin[&(info.partition, info.offset)])
            .unwrap();
        assert_eq!(
            replayed.partition, info_origin.partition,
            "keyed replay lands on its partition"
        );
        assert_eq!(
            (&replayed.key, &replayed.value, &replayed.headers),
            (&info_origin.key, &info_origin.value, &info_origin.headers)
        );
    }
    handled.lock().unwrap().clear();
    for record in new_records {
        processor.submit(record).await.unwrap();
    }
    processor.drain().await.unwrap();
    let replay_ids: BTreeSet<String> = handled.lock().unwrap().iter().map(message_id).collect();
    let dead_ids: BTreeSet<String> = expected_failing
        .iter()
        .map(|o| message_id(by_origin[o]))
        .collect();
    assert_eq!(replay_ids, dead_ids);
    let metrics = processor.metrics();
    assert_eq!((metrics.handled, metrics.deduplicated), (60, 2));
    let committable = processor.committable();
    for (partition, high_watermark) in &new_watermarks {
        assert_eq!(
            committable[&TopicPartition::new("orders", *partition)],
            *high_watermark
        );
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_dedup_reopened_from_its_file_suppresses_a_replayed_record() {
    let (broker, dir, bootstrap) = start_broker(&[]).await;
    ensure_topic(&bootstrap, "payments", 1, -1, TIMEOUT)
        .await
        .unwrap();
    let sink = Arc::new(BrokerSink::new(&bootstrap));
    let payment = |i: usize| {
        ProducerRecord::new("payments", format!("payment {i}"))
            .with_key(format!("k{i}"))
            .with_partition(0)
            .with_header("message-id", format!("p{i}"))
    };
    for i in 0..5 {
        sink.produce(payment(i)).await.unwrap();
    }
    let store_path = dir.path().join("dedup").join("payments.redb");
    std::fs::create_dir_all(store_path.parent().unwrap()).unwrap();
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let handled = handled.clone();
        move |record: ConsumerRecord| {
            let handled = handled.clone();
            async move {
                handled.lock().unwrap().push(message_id(&record));
                Ok::<(), HandlerError>(())
            }
        }
    };
    let config_with = |store: Arc<dyn Deduplicator>| ProcessorConfig {
        dedup: Some(DedupConfig {
            store,
            key: DedupKey::Header("message-id".to_string()),
        }),
        ..ProcessorConfig::default()
    };

    let (records, watermarks) = fetch_all(&bootstrap, "payments", &BTreeMap::new()).await;
    {
        let store = Arc::new(RedbDedup::open(&store_path, RedbDedupConfig::default()).unwrap());
        let processor = Processor::new(config_with(store.clone()), handler.clone(), sink.clone());
        for record in records {
            processor.submit(record).await.unwrap();
        }
        processor.drain().await.unwrap();
        assert_eq!(processor.metrics().handled, 5);
        assert_eq!(store.len().unwrap(), 5);
        // Releases the processor's hold on the store so the file can be opened again.
        processor.close().await.unwrap();
    }
    // A "restart": the store is reopened from its file by a new processor, and two payments
    // are delivered again next to a new one.
    sink.produce(payment(1)).await.unwrap();
    sink.produce(payment(3)).await.unwrap();
    sink.produce(payment(5)).await.unwrap();
    let store = Arc::new(RedbDedup::open(&store_path, RedbDedupConfig::default()).unwrap());
    let processor = Processor::new(config_with(store), handler, sink.clone());
    let (replayed, end) = fetch_all(&bootstrap, "payments", &watermarks).await;
    assert_eq!(replayed.len(), 3);
    for record in replayed {
        processor.submit(record).await.unwrap();
    }
    processor.drain().await.unwrap();
    let metrics = processor.metrics();
    assert_eq!((metrics.handled, metrics.deduplicated), (1, 2));
    assert_eq!(handled.lock().unwrap().last().unwrap(), "p5");
    assert_eq!(handled.lock().unwrap().len(), 6);
    assert_eq!(
        processor.committable()[&TopicPartition::new("payments", 0)],
        end[&0]
    );
    broker.shutdown().await;
}

/// (partition, key, offset) of handled records, in the order they finished.
type Finished = Arc<Mutex<Vec<(i32, Option<Bytes>, i64)>>>;

/// A deterministic pseudo-random number (splitmix64) for delays and key choice.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_holds_for_many_keys_under_random_delays() {
    let (broker, _dir, bootstrap) = start_broker(&[]).await;
    ensure_topic(&bootstrap, "events", 4, -1, TIMEOUT)
        .await
        .unwrap();
    let layout = describe_topic(&bootstrap, "events", TIMEOUT).await.unwrap();
    let producer = BatchProducer::connect(layout, ProducerConfig::default())
        .await
        .unwrap();
    // 1,200 records over 40 keys (and keyless ones), written in batches of 20 per partition.
    let mut pending: BTreeMap<i32, Vec<ProducerRecord>> = BTreeMap::new();
    for i in 0..1_200u64 {
        let dice = mix(i);
        let key = (dice % 41) as i32;
        let partition = key % 4;
        let mut record = ProducerRecord::new("events", format!("{i}")).with_partition(partition);
        if key < 40 {
            record = record.with_key(format!("k{key}"));
        }
        pending.entry(partition).or_default().push(record);
        if pending[&partition].len() == 20 {
            let batch = pending.remove(&partition).unwrap();
            let ack = producer
                .send(partition, encode_with_headers(&batch))
                .await
                .unwrap();
            ack.wait().await.unwrap()[0].1.as_ref().unwrap();
        }
    }
    for (partition, batch) in pending {
        let ack = producer
            .send(partition, encode_with_headers(&batch))
            .await
            .unwrap();
        ack.wait().await.unwrap()[0].1.as_ref().unwrap();
    }
    let (records, watermarks) = fetch_all(&bootstrap, "events", &BTreeMap::new()).await;
    assert_eq!(records.len(), 1_200);

    let processor_cell: Arc<std::sync::OnceLock<Processor>> = Arc::default();
    let finished: Finished = Arc::default();
    let failed_once: Arc<Mutex<BTreeSet<(i32, i64)>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let (cell, finished, failed_once, violations) = (
            processor_cell.clone(),
            finished.clone(),
            failed_once.clone(),
            violations.clone(),
        );
        move |record: ConsumerRecord| {
            let (cell, finished, failed_once, violations) = (
                cell.clone(),
                finished.clone(),
                failed_once.clone(),
                violations.clone(),
            );
            async move {
                // The record is unfinished: the committable offset must not pass it.
                if let Some(processor) = cell.get() {
                    let committable = processor.committable();
                    let at = committable.get(&record.topic_partition()).copied();
                    if at.is_some_and(|c| c > record.offset) {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("{at:?} passed {}", record.offset));
                    }
                }
                let dice = mix(record.offset as u64 * 131 + record.partition as u64);
                tokio::time::sleep(Duration::from_micros(dice % 1_500)).await;
                // One record in eleven fails its first attempt (retried, then it succeeds).
                if dice.is_multiple_of(11)
                    && failed_once
                        .lock()
                        .unwrap()
                        .insert((record.partition, record.offset))
                {
                    return Err(HandlerError::new("transient"));
                }
                finished.lock().unwrap().push((
                    record.partition,
                    record.key.clone(),
                    record.offset,
                ));
                Ok(())
            }
        }
    };
    let config = ProcessorConfig {
        concurrency: 8,
        max_in_flight_records: 64,
        retry: RetryConfig {
            max_attempts: 3,
            retry_backoff_ms: 1,
            backoff_multiplier: 2.0,
            retry_backoff_max_ms: 5,
            jitter: 0.2,
        },
        ..ProcessorConfig::default()
    };
    let processor = Processor::new(config, handler, Arc::new(BrokerSink::new(&bootstrap)));
    let _ = processor_cell.set(processor.clone());
    for record in records {
        processor.submit(record).await.unwrap();
    }
    processor.drain().await.unwrap();

    assert!(
        violations.lock().unwrap().is_empty(),
        "{:?}",
        violations.lock().unwrap()
    );
    let finished = finished.lock().unwrap().clone();
    assert_eq!(finished.len(), 1_200);
    let mut last: HashMap<(i32, Option<Bytes>), i64> = HashMap::new();
    for (partition, key, offset) in finished {
        if let Some(previous) = last.insert((partition, key.clone()), offset) {
            assert!(
                previous < offset,
                "{partition}/{key:?}: {offset} after {previous}"
            );
        }
    }
    let metrics = processor.metrics();
    assert_eq!((metrics.handled, metrics.dead_lettered), (1_200, 0));
    assert!(metrics.retried > 0);
    let committable = processor.committable();
    for (partition, high_watermark) in &watermarks {
        assert_eq!(
            committable[&TopicPartition::new("events", *partition)],
            *high_watermark
        );
    }
    broker.shutdown().await;
}
